//! `healthCheckNodePort` servers, with kube-proxy's semantics: for a
//! Service with `externalTrafficPolicy: Local`, the node answers on that
//! port 200 while it has local endpoints and 503 when it has none, with
//! the count as JSON, so that an external load balancer sends traffic
//! only to nodes that can serve it.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::model::HealthCheck;

type Checks = Arc<RwLock<BTreeMap<u16, HealthCheck>>>;

/// The listeners, one per healthCheckNodePort in the desired state.
#[derive(Default)]
pub struct HealthServers {
    checks: Checks,
    servers: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthServers {
    /// Serves exactly the ports of `want`, with their current counts.
    /// A port that cannot be bound is reported and tried again next time.
    pub async fn sync(&mut self, want: &BTreeMap<u16, HealthCheck>) {
        *self.checks.write().expect("health check lock") = want.clone();
        self.servers.retain(|port, task| {
            let keep = want.contains_key(port) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, hc) in want {
            if self.servers.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port));
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(service = %hc.service, port, error = %e,
                        "Service {}: field spec.healthCheckNodePort: cannot listen on {port}", hc.service);
                    continue;
                }
            };
            info!(service = %hc.service, port, "healthCheckNodePort served");
            let app = Router::new()
                .fallback(get(answer))
                .with_state((self.checks.clone(), *port));
            self.servers.insert(
                *port,
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                }),
            );
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for task in self.servers.values() {
            task.abort();
        }
    }
}

async fn answer(State((checks, port)): State<(Checks, u16)>) -> impl IntoResponse {
    let hc = checks
        .read()
        .expect("health check lock")
        .get(&port)
        .cloned();
    let Some(hc) = hc else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    };
    let body = serde_json::json!({
        "service": {"namespace": hc.service.namespace, "name": hc.service.name},
        "localEndpoints": hc.local_endpoints,
        "serviceProxyHealthy": true,
    });
    let code = if hc.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
