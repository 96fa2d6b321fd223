//! One sync pass, shared by the agent and the benchmarks: the Services
//! whose objects changed -> their desired frontends -> a plan for those
//! frontends only -> map writes.
use std::collections::BTreeSet;

use crate::datapath::maps::ServiceMaps;
use crate::model::{Cidr, FrontendKey, ModelCache};
use crate::reconcile::{self, MapState, Op, Reconciler};
use crate::store::{NsName, ObjectStore};

pub struct Pipeline {
    model: ModelCache,
    rec: Reconciler,
    service_cidrs: Vec<Cidr>,
    /// The first pass also visits what the maps held before we started.
    adopted: bool,
    /// Frontends whose writes failed (full maps): planned again each pass
    /// until they fit.
    retry: BTreeSet<FrontendKey>,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub frontends: usize,
    pub writes: usize,
    /// (frontend or entry, error) for each write that failed.
    pub failed: Vec<(String, String)>,
    /// Frontends left out, each naming its Service and field.
    pub refused: Vec<String>,
}

impl Pipeline {
    /// Starts from what the maps hold now (adopted, never flushed).
    pub fn new(maps_hold: MapState, service_cidrs: Vec<Cidr>) -> Self {
        Pipeline {
            model: ModelCache::default(),
            rec: Reconciler::new(maps_hold),
            service_cidrs,
            adopted: false,
            retry: BTreeSet::new(),
        }
    }

    /// Programs only the Services of proxy `name` and unlabelled ones
    /// (kube-proxy's `service.kubernetes.io/service-proxy-name`).
    pub fn with_service_proxy_name(mut self, name: Option<String>) -> Self {
        self.model = ModelCache::for_proxy(name);
        self
    }

    /// True while some frontends wait for room in the maps.
    pub fn pending(&self) -> bool {
        !self.retry.is_empty()
    }

    pub fn sync(
        &mut self,
        store: &ObjectStore,
        dirty: &BTreeSet<NsName>,
        maps: &mut ServiceMaps,
    ) -> Report {
        let up = self.model.update(store, dirty, &self.service_cidrs);
        let desired = self.model.desired();
        let mut changed = up.changed;
        changed.extend(std::mem::take(&mut self.retry));
        let ops = if self.adopted {
            self.rec.plan(desired, changed)
        } else {
            self.adopted = true;
            self.rec.plan_all(desired)
        };
        let errors = maps.apply(&ops, self.rec.mirror_mut());
        for e in &errors {
            if let Op::PutService(k, _) | Op::DelService(k) = &e.op
                && let Some(fk) = reconcile::frontend_of(k)
            {
                self.retry.insert(fk);
            }
        }
        let failed = errors
            .iter()
            .map(|e| {
                let what = match &e.op {
                    Op::PutService(k, _) | Op::DelService(k) => reconcile::frontend_of(k)
                        .and_then(|fk| {
                            desired
                                .frontends
                                .get(&fk)
                                .map(|s| format!("{} ({fk})", s.name))
                        })
                        .unwrap_or_else(|| format!("{k:?}")),
                    other => format!("{other:?}"),
                };
                (what, e.error.clone())
            })
            .collect::<Vec<_>>();
        if !failed.is_empty() {
            self.rec.resync();
        }
        Report {
            frontends: desired.frontends.len(),
            writes: ops.len(),
            failed,
            refused: up.refused,
        }
    }
}
