//! Liveness for kubelet probes and load balancers, with kube-proxy's
//! semantics (`--healthz-bind-address`, port 10256): healthy unless a
//! change has waited to be programmed longer than the health timeout (the
//! sync loop is stuck). `/healthz` and `/livez` answer 200 or 503 with
//! kube-proxy's JSON: `lastUpdated`, `currentTime`, `nodeEligible`.
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use k8s_openapi::jiff::Timestamp;
use tracing::{info, warn};

use crate::status::Shared;

/// Milliseconds since the Unix epoch, the unit of the status's times.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Healthy unless a change queued at `queued_at_ms` has waited longer
/// than `timeout` (kube-proxy: updates queued but not synced in time).
pub fn healthy(queued_at_ms: Option<u64>, now_ms: u64, timeout: Duration) -> bool {
    queued_at_ms.is_none_or(|q| now_ms.saturating_sub(q) <= timeout.as_millis() as u64)
}

#[derive(Clone)]
struct App {
    status: Shared,
    timeout: Duration,
}

/// Binds `addr` and serves until the process exits.
pub async fn serve(addr: SocketAddr, status: Shared, timeout: Duration) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--healthz-addr {addr}: cannot listen"))?;
    info!(%addr, "health served (/healthz, /livez)");
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .with_state(App { status, timeout });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "health endpoint stopped");
        }
    });
    Ok(())
}

fn time(ms: u64) -> String {
    Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

async fn health(State(app): State<App>) -> (StatusCode, Json<serde_json::Value>) {
    let st = app.status.get();
    let now = now_ms();
    let code = if healthy(st.queued_at_ms, now, app.timeout) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "lastUpdated": time(st.last_updated_ms),
        "currentTime": time(now),
        // A node being deleted or tainted for deletion is not eligible
        // for kube-proxy; this agent does not track that (yet).
        "nodeEligible": true,
    });
    (code, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_updates_make_it_unhealthy() {
        let t = Duration::from_secs(60);
        assert!(healthy(None, 1_000_000, t), "nothing queued");
        assert!(healthy(Some(1_000_000), 1_000_000 + 60_000, t), "within");
        assert!(!healthy(Some(1_000_000), 1_000_000 + 60_001, t), "stuck");
    }
}
