//! The agent's HTTP endpoint: `/metrics` (Prometheus text: datapath
//! outcome counters and programming state, including every frontend left
//! out of full maps), `/readyz` and `/status` (JSON, read by
//! `lb-agent status`). Read-only; bind it to loopback unless scraped.
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use lb_common::STAT_NAMES;
use tracing::{info, warn};

use crate::datapath::maps;
use crate::status::{Histogram, Shared, Status};

#[derive(Clone)]
struct App {
    status: Shared,
    pin_dir: PathBuf,
}

/// Binds `addr` and serves until the process exits.
pub async fn serve(addr: SocketAddr, status: Shared, pin_dir: PathBuf) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
    info!(%addr, "metrics, readiness and status served");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .with_state(App { status, pin_dir });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

async fn readyz(State(app): State<App>) -> (StatusCode, String) {
    let st = app.status.get();
    if !st.ready {
        (StatusCode::SERVICE_UNAVAILABLE, "not yet synced\n".into())
    } else if !st.source_failing.is_empty() {
        let what = st.source_failing.join(", ");
        let msg = format!(
            "{} watch failing ({what}); serving the last known state\n",
            st.source
        );
        (StatusCode::SERVICE_UNAVAILABLE, msg)
    } else {
        (StatusCode::OK, "ready\n".into())
    }
}

async fn status_json(State(app): State<App>) -> Json<Status> {
    Json(app.status.get())
}

async fn metrics(State(app): State<App>) -> String {
    let st = app.status.get();
    let stats = maps::read_stats(&app.pin_dir).unwrap_or_default();
    let traffic = maps::ServiceMaps::from_pins(&app.pin_dir)
        .and_then(|m| {
            Ok(crate::table::traffic(&m.read()?, &|id| {
                m.service_counters(id)
            }))
        })
        .unwrap_or_default();
    let mut text = render(&st, &stats);
    render_traffic(&mut text, &traffic);
    text
}

/// Per-frontend packets and bytes, labelled with the Service (its
/// `namespace/name:port`) and the frontend (`VIP:port/PROTO`).
fn render_traffic(o: &mut String, traffic: &[(String, String, lb_common::SvcCounters)]) {
    for (name, help, value) in [
        (
            "ferrolb_service_packets_total",
            "Packets the datapath translated for a frontend, both directions.",
            (|c: &lb_common::SvcCounters| c.packets) as fn(&lb_common::SvcCounters) -> u64,
        ),
        (
            "ferrolb_service_bytes_total",
            "Bytes (whole frames) the datapath translated for a frontend, both directions.",
            |c: &lb_common::SvcCounters| c.bytes,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (service, frontend, c) in traffic {
            let _ = writeln!(
                o,
                "{name}{{service=\"{}\",frontend=\"{}\"}} {}",
                label(service),
                label(frontend),
                value(c)
            );
        }
    }
}

/// Prometheus label values escape backslash, quote and newline.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(st: &Status, stats: &[u64]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP ferrolb_datapath_packets_total Packets seen by the datapath, by outcome.\n# TYPE ferrolb_datapath_packets_total counter"
    );
    for (name, v) in STAT_NAMES.iter().zip(stats) {
        let _ = writeln!(
            o,
            "ferrolb_datapath_packets_total{{outcome=\"{name}\"}} {v}"
        );
    }
    let gauges = [
        (
            "ferrolb_ready",
            "1 once the maps hold the first sync.",
            st.ready as usize,
        ),
        (
            "ferrolb_frontends",
            "Frontends (Service IP:port/protocol) desired.",
            st.frontends,
        ),
        (
            "ferrolb_frontends_not_programmed",
            "Frontends left out because a map is full; retried every second.",
            st.not_programmed.len(),
        ),
        (
            "ferrolb_objects_refused",
            "Objects refused in the last sync (invalid fields).",
            st.refused.len(),
        ),
        (
            "ferrolb_source_up",
            "1 while every watch of the source runs (0: serving the last known state).",
            st.source_failing.is_empty() as usize,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP ferrolb_frontend_not_programmed A frontend left out of full maps.\n# TYPE ferrolb_frontend_not_programmed gauge"
    );
    for l in &st.not_programmed {
        let _ = writeln!(
            o,
            "ferrolb_frontend_not_programmed{{service=\"{}\",frontend=\"{}\"}} 1",
            label(&l.service),
            label(&l.frontend)
        );
    }
    let _ = writeln!(
        o,
        "# HELP ferrolb_source_watch_failing A watch of the source that is failing now.\n# TYPE ferrolb_source_watch_failing gauge"
    );
    for w in &st.source_failing {
        let _ = writeln!(
            o,
            "ferrolb_source_watch_failing{{resource=\"{}\"}} 1",
            label(w)
        );
    }
    for (name, help, v) in [
        ("ferrolb_syncs_total", "Sync passes.", st.syncs),
        ("ferrolb_map_writes_total", "Map writes planned.", st.writes),
        (
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Services whose objects (Service or EndpointSlices) changed, as kube-proxy counts them.",
            st.service_changes,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    // Fill levels: of the maps the agent writes from what it wrote, of
    // those the datapath fills as last counted (no walk per scrape).
    let _ = writeln!(
        o,
        "# HELP ferrolb_map_entries Entries a map holds (maps the datapath fills: as last counted).\n# TYPE ferrolb_map_entries gauge"
    );
    let maps = || st.maps.iter().chain(&st.datapath_maps);
    for (name, n, _) in maps() {
        let _ = writeln!(o, "ferrolb_map_entries{{map=\"{name}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "# HELP ferrolb_map_max_entries Most entries a map can hold.\n# TYPE ferrolb_map_max_entries gauge"
    );
    for (name, _, max) in maps() {
        let _ = writeln!(o, "ferrolb_map_max_entries{{map=\"{name}\"}} {max}");
    }
    // kube-proxy's names, where the meaning is the same: a sync pass is
    // its proxy rules sync; programming runs from when the agent saw a
    // change (kube-proxy: the EndpointSlice's trigger time) to its maps.
    let _ = writeln!(
        o,
        "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds When the last sync pass ended.\n# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\nkubeproxy_sync_proxy_rules_last_timestamp_seconds {}",
        st.last_updated_ms as f64 / 1e3
    );
    histogram(
        &mut o,
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "How long a sync pass (source to map writes) took.",
        &st.sync_seconds,
    );
    histogram(
        &mut o,
        "kubeproxy_network_programming_duration_seconds",
        "From a change seen by the agent to the datapath's maps holding it.",
        &st.programming_seconds,
    );
    o
}

/// A histogram in the text format: cumulative buckets, sum and count.
fn histogram(o: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut acc = 0;
    for (i, le) in Histogram::BOUNDS.iter().enumerate() {
        acc += h.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {acc}");
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(o, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
}

/// `lb-agent status`: the agent's own view, fetched from its endpoint.
pub fn fetch_status(addr: SocketAddr) -> Result<Status> {
    let url = format!("http://{addr}/status");
    let mut resp = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url} (is the agent running with --metrics-addr {addr}?)"))?;
    resp.body_mut()
        .read_json::<Status>()
        .with_context(|| format!("reading {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::LeftOut;

    #[test]
    fn left_out_frontends_are_labelled_and_escaped() {
        let st = Status {
            ready: true,
            frontends: 3,
            not_programmed: vec![LeftOut {
                service: "default/my\"svc:http".into(),
                frontend: "10.0.0.9:80/TCP".into(),
                error: "map full".into(),
            }],
            ..Default::default()
        };
        let text = render(&st, &[5, 1]);
        assert!(
            text.contains("ferrolb_frontends_not_programmed 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferrolb_frontend_not_programmed{service=\"default/my\\\"svc:http\",frontend=\"10.0.0.9:80/TCP\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("ferrolb_datapath_packets_total{outcome=\"pass\"} 5"));
        assert!(text.contains("ferrolb_ready 1\n"));
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut st = Status::default();
        for v in [0.0005, 0.003, 0.003, 20.0] {
            st.sync_seconds.observe(v);
        }
        let text = render(&st, &[]);
        let name = "kubeproxy_sync_proxy_rules_duration_seconds";
        for (le, n) in [
            ("0.001", 1),
            ("0.002", 1),
            ("0.004", 3),
            ("16.384", 3),
            ("+Inf", 4),
        ] {
            let line = format!("{name}_bucket{{le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(text.contains(&format!("{name}_count 4\n")), "{text}");
        assert!(text.contains("# TYPE kubeproxy_network_programming_duration_seconds histogram"));
    }
}
