//! The service table the CLI prints, rebuilt from what the maps hold:
//! it shows what the datapath will do, not what the agent meant to do.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use lb_common::{
    HOP_CLOCK_SHIFT, SCHED_DEST_HASH, SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_RANDOM,
    SCHED_ROUND_ROBIN, SCHED_SOURCE_HASH, SLOT_FLAG_TERMINATING, SVC_FLAG_LEAST_CONN,
    SVC_FLAG_SCHED, SchedValue, port_from_net,
};

use crate::reconcile::{MapState, frontend_of, info_name};

pub struct Row {
    /// The frontend's id (counters, names).
    pub svc_id: u32,
    pub name: String,
    pub frontend: String,
    /// `sessionAffinity: ClientIP`: the timeout in seconds.
    pub affinity_secs: Option<u32>,
    /// The scheduler, as `--lb-algorithm` names it (Maglev with its
    /// table size).
    pub algorithm: String,
    pub backends: Vec<String>,
    /// Each backend's state, in `backends`' order: "ready", or
    /// "terminating" (serving while it terminates, programmed because no
    /// endpoint of the Service is ready).
    pub states: Vec<&'static str>,
    /// Least-conn frontends: each backend's active flows, as the datapath
    /// counts them (in `backends`' order); None for other algorithms,
    /// which count nothing.
    pub active: Option<Vec<u64>>,
}

/// Seconds from the clock ticks the master entry holds.
fn ticks_to_secs(ticks: u32) -> u32 {
    ((u64::from(ticks) << HOP_CLOCK_SHIFT) as f64 / 1e9).round() as u32
}

/// The rows, with least-conn's active flow counts from `active` (by
/// backend id).
pub fn rows(state: &MapState, active: &dyn Fn(u32) -> u64) -> Vec<Row> {
    let mut out: BTreeMap<(String, String), Row> = BTreeMap::new();
    for (k, v) in &state.services {
        if k.slot() != 0 {
            continue;
        }
        let Some(fk) = frontend_of(k) else { continue };
        let name = state
            .info
            .get(&v.svc_id)
            .map(info_name)
            .unwrap_or_else(|| format!("<id {}>", v.svc_id));
        let mut backends = Vec::new();
        let mut counts = Vec::new();
        let mut states = Vec::new();
        for slot in 1..=v.count {
            if let Some((s, b)) = state
                .services
                .get(&k.with_slot(slot))
                .and_then(|s| state.backends.get(&s.backend_id).map(|b| (s, b)))
            {
                let port = port_from_net(b.rest().0);
                backends.push(SocketAddr::new(b.addr(), port).to_string());
                counts.push(active(s.backend_id));
                states.push(if s.flags & SLOT_FLAG_TERMINATING != 0 {
                    "terminating"
                } else {
                    "ready"
                });
            }
        }
        let active = (v.flags & SVC_FLAG_LEAST_CONN != 0).then_some(counts);
        let affinity = (v.affinity_ticks() != 0).then(|| ticks_to_secs(v.affinity_ticks()));
        let algorithm = match state.sched.get(&v.svc_id) {
            Some(s) if v.flags & SVC_FLAG_SCHED != 0 => algorithm_name(s),
            _ => "random".to_string(),
        };
        let frontend = fk.to_string();
        let row = Row {
            svc_id: v.svc_id,
            name: name.clone(),
            frontend: frontend.clone(),
            affinity_secs: affinity,
            algorithm,
            backends,
            states,
            active,
        };
        out.insert((name, frontend), row);
    }
    out.into_values().collect()
}

/// A scheduler as the maps hold it, by name.
fn algorithm_name(s: &SchedValue) -> String {
    match s.alg {
        SCHED_ROUND_ROBIN => "round-robin".into(),
        SCHED_MAGLEV => format!("maglev/{}", s.table_size),
        SCHED_SOURCE_HASH => "source-hash".into(),
        SCHED_DEST_HASH => "dest-hash".into(),
        SCHED_LEAST_CONN => "least-conn".into(),
        SCHED_RANDOM => "random".into(),
        other => format!("<unknown {other}>"),
    }
}

pub fn render(state: &MapState, active: &dyn Fn(u32) -> u64) -> String {
    let rows = rows(state, active);
    let w0 = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(7);
    let w1 = rows
        .iter()
        .map(|r| r.frontend.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<w0$}  {:<w1$}  {:<12}  {:<16}  BACKENDS",
        "SERVICE", "FRONTEND", "ALGORITHM", "AFFINITY"
    );
    for r in rows {
        // Each backend, marked when it is terminating, with its active
        // flows under least-conn.
        let b = if r.backends.is_empty() {
            "<none: rejected>".to_string()
        } else {
            (0..r.backends.len())
                .map(|i| {
                    let mut b = r.backends[i].clone();
                    if r.states[i] != "ready" {
                        let _ = write!(b, "({})", r.states[i]);
                    }
                    if let Some(active) = &r.active {
                        let _ = write!(b, "({} active)", active[i]);
                    }
                    b
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let affinity = r
            .affinity_secs
            .map_or("-".to_string(), |t| format!("ClientIP {t}s"));
        let _ = writeln!(
            s,
            "{:<w0$}  {:<w1$}  {:<12}  {:<16}  {}",
            r.name, r.frontend, r.algorithm, affinity, b
        );
    }
    s
}

/// The same as JSON: an array of `{service, frontend, algorithm,
/// affinity_secs, backends, states, active_flows}` (`affinity_secs` null
/// without session affinity; `states` in `backends`' order, "ready" or
/// "terminating"; `active_flows`, in `backends`' order, null but for
/// least-conn).
pub fn json(state: &MapState, active: &dyn Fn(u32) -> u64) -> serde_json::Value {
    rows(state, active)
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "service": r.name,
                "frontend": r.frontend,
                "algorithm": r.algorithm,
                "affinity_secs": r.affinity_secs,
                "backends": r.backends,
                "states": r.states,
                "active_flows": r.active,
            })
        })
        .collect()
}

/// Each frontend's traffic, `counters` by frontend id: (service,
/// frontend, counters), in the service table's order.
pub fn traffic(
    state: &MapState,
    counters: &dyn Fn(u32) -> lb_common::SvcCounters,
) -> Vec<(String, String, lb_common::SvcCounters)> {
    rows(state, &|_| 0)
        .into_iter()
        .map(|r| (r.name, r.frontend, counters(r.svc_id)))
        .collect()
}
