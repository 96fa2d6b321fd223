//! What the agent knows about itself, shared between the sync loop (the
//! only writer) and the metrics endpoint and CLI (readers).
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::sync::LeftOut;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// True once the first sync has written the maps.
    pub ready: bool,
    /// Frontends (Service IP:port/protocol) in the desired state.
    pub frontends: usize,
    /// Frontends the maps could not take (full maps), retried each second.
    pub not_programmed: Vec<LeftOut>,
    /// Sync passes and map writes since start.
    pub syncs: u64,
    pub writes: u64,
    /// Manifest or API objects refused in the last pass (each names its
    /// object and field).
    pub refused: Vec<String>,
    /// "manifests" or "kubernetes API".
    pub source: String,
    /// Watches failing right now (the datapath keeps the last state).
    pub source_failing: Vec<String>,
    /// When the oldest change not yet programmed was seen (Unix ms);
    /// `None` when every change is programmed (see `healthz`).
    #[serde(default)]
    pub queued_at_ms: Option<u64>,
    /// When the last sync pass ended (Unix ms).
    #[serde(default)]
    pub last_updated_ms: u64,
    /// How long sync passes took (seconds).
    #[serde(default)]
    pub sync_seconds: Histogram,
    /// From a change seen to its map writes done (seconds): the oldest
    /// change each pass programmed.
    #[serde(default)]
    pub programming_seconds: Histogram,
    /// Services (with their EndpointSlices) changed, summed over passes.
    #[serde(default)]
    pub service_changes: u64,
    /// The maps the agent writes: (name, entries held, most entries).
    #[serde(default)]
    pub maps: Vec<(String, usize, u32)>,
    /// The maps the datapath fills, as last counted (every
    /// `--map-fill-interval-secs`): (name, entries held, most entries).
    #[serde(default)]
    pub datapath_maps: Vec<(String, usize, u32)>,
}

/// A Prometheus histogram's state: counts per bucket of
/// [`Histogram::BOUNDS`] (not cumulative), sum and count.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Upper bounds, seconds: 1 ms doubling to ~16 s, as kube-proxy's sync
    /// duration buckets.
    pub const BOUNDS: [f64; 15] = [
        0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
        8.192, 16.384,
    ];

    pub fn observe(&mut self, v: f64) {
        if self.counts.len() != Self::BOUNDS.len() {
            self.counts = vec![0; Self::BOUNDS.len()];
        }
        if let Some(i) = Self::BOUNDS.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// The shared handle.
#[derive(Clone, Default)]
pub struct Shared(Arc<Mutex<Status>>);

impl Shared {
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn get(&self) -> Status {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
