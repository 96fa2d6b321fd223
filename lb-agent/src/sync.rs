//! One sync pass, shared by the agent and the benchmarks: the Services
//! whose objects changed -> their desired frontends -> a plan for those
//! frontends only -> map writes.
use std::collections::BTreeSet;

use crate::datapath::maps::ServiceMaps;
use crate::model::{Cidr, ModelCache};
use crate::reconcile::{self, MapState, Op, Reconciler};
use crate::store::{NsName, ObjectStore};

pub struct Pipeline {
    model: ModelCache,
    rec: Reconciler,
    service_cidrs: Vec<Cidr>,
    /// The first pass also visits what the maps held before we started.
    adopted: bool,
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
        }
    }

    pub fn sync(
        &mut self,
        store: &ObjectStore,
        dirty: &BTreeSet<NsName>,
        maps: &mut ServiceMaps,
    ) -> Report {
        let up = self.model.update(store, dirty, &self.service_cidrs);
        let desired = self.model.desired();
        let ops = if self.adopted {
            self.rec.plan(desired, up.changed)
        } else {
            self.adopted = true;
            self.rec.plan_all(desired)
        };
        let errors = maps.apply(&ops, self.rec.mirror_mut());
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
