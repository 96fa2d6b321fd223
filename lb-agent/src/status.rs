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
