//! Where Kubernetes objects come from. Every source fills the same
//! `ObjectStore`; the model never knows which one did.
pub mod files;
pub mod kube;
pub mod manifest;

use std::collections::BTreeSet;

use crate::store::{NsName, ObjectStore};

/// The agent's source: manifests on disk (polled) or the API (pushed).
pub enum Source {
    Files(Box<files::FileSource>),
    Kube(Box<kube::KubeSource>),
}

impl Source {
    /// Waits until the source holds a complete first picture (the API
    /// listed every resource). Syncing earlier would remove map entries
    /// the API simply has not sent yet.
    pub async fn ready(&mut self) {
        if let Source::Kube(k) = self {
            while !k.ready() {
                k.next().await;
            }
        }
    }

    /// Waits for pushed changes and applies them to the store. Files are
    /// polled instead (`changed`), so for them this never returns.
    pub async fn event(&mut self) {
        match self {
            Source::Files(_) => std::future::pending().await,
            Source::Kube(k) => k.next().await,
        }
    }

    /// What feeds the agent, and which of its parts are failing now.
    pub fn health(&self) -> (&'static str, Vec<String>) {
        match self {
            Source::Files(_) => ("manifests", Vec::new()),
            Source::Kube(k) => ("kubernetes API", k.failing()),
        }
    }

    /// True when a sync has something new to program.
    pub fn changed(&self) -> bool {
        match self {
            Source::Files(f) => f.changed(),
            Source::Kube(k) => k.changed(),
        }
    }

    /// Brings the store up to date before a sync. Returns the problems
    /// found (objects refused keep their last good version), or an error
    /// when nothing could be read.
    pub fn refresh(&mut self) -> Result<Vec<String>, String> {
        match self {
            Source::Files(f) => match f.load() {
                Ok(r) => Ok(r.errors.iter().map(|e| e.to_string()).collect()),
                Err(e) => Err(e.to_string()),
            },
            // Events were applied (and refusals logged) as they came.
            Source::Kube(_) => Ok(Vec::new()),
        }
    }

    pub fn store(&self) -> &ObjectStore {
        match self {
            Source::Files(f) => f.store(),
            Source::Kube(k) => k.store(),
        }
    }

    pub fn take_dirty(&mut self) -> BTreeSet<NsName> {
        match self {
            Source::Files(f) => f.take_dirty(),
            Source::Kube(k) => k.take_dirty(),
        }
    }
}
