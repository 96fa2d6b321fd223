//! One sync pass, shared by the agent and the benchmarks: the Services
//! whose objects changed -> their desired frontends -> a plan for those
//! frontends only -> map writes.
use std::collections::{BTreeMap, BTreeSet};

use crate::datapath::maps::ServiceMaps;
use crate::model::{Desired, FrontendKey, ModelCache, ModelConfig, Update};
use crate::reconcile::{self, MapState, Op, Reconciler};
use crate::store::{NsName, ObjectStore};

pub struct Pipeline {
    model: ModelCache,
    rec: Reconciler,
    /// The first pass also visits what the maps held before we started.
    adopted: bool,
    /// Frontends whose writes failed (full maps): planned again each pass
    /// until they fit, and reported meanwhile.
    left_out: BTreeMap<FrontendKey, LeftOut>,
}

/// A frontend the maps could not take.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeftOut {
    /// "namespace/name:port" of its Service.
    pub service: String,
    pub frontend: String,
    pub error: String,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub frontends: usize,
    pub writes: usize,
    /// Of the writes, how many removed a backend, a slot or a frontend.
    pub removals: usize,
    /// (frontend or entry, error) for each write that failed.
    pub failed: Vec<(String, String)>,
    /// Frontends left out, each naming its Service and field.
    pub refused: Vec<String>,
}

impl Pipeline {
    /// Starts from what the maps hold now (adopted, never flushed).
    pub fn new(maps_hold: MapState, cfg: ModelConfig) -> Self {
        Pipeline {
            model: ModelCache::new(cfg),
            rec: Reconciler::new(maps_hold),
            adopted: false,
            left_out: BTreeMap::new(),
        }
    }

    /// The desired state as of the last pass.
    pub fn desired(&self) -> &Desired {
        self.model.desired()
    }

    /// True while some frontends wait for room in the maps.
    pub fn pending(&self) -> bool {
        !self.left_out.is_empty()
    }

    /// The frontends not programmed right now, and why.
    pub fn left_out(&self) -> impl Iterator<Item = &LeftOut> {
        self.left_out.values()
    }

    /// The ids of the frontends the maps hold.
    pub fn frontend_ids(&self) -> std::collections::HashSet<u32> {
        self.rec
            .mirror()
            .services
            .iter()
            .filter(|(k, _)| k.slot() == 0)
            .map(|(_, v)| v.svc_id)
            .collect()
    }

    /// Entries the maps the agent writes hold, by map name (as the
    /// agent last wrote them).
    pub fn map_entries(&self) -> Vec<(String, usize)> {
        let m = self.rec.mirror();
        let v6 = m
            .services
            .keys()
            .filter(|k| matches!(k, crate::reconcile::SvcKey::V6(_)))
            .count();
        let be6 = m
            .backends
            .values()
            .filter(|b| matches!(b, crate::reconcile::BackendEntry::V6(_)))
            .count();
        [
            (lb_common::MAP_SERVICES, m.services.len() - v6),
            (lb_common::MAP_SERVICES6, v6),
            (lb_common::MAP_BACKENDS, m.backends.len() - be6),
            (lb_common::MAP_BACKENDS6, be6),
            (lb_common::MAP_SVC_INFO, m.info.len()),
            (lb_common::MAP_SCHED, m.sched.len()),
            (lb_common::MAP_MAGLEV, m.maglev.len()),
            (lb_common::MAP_MEMBERS, m.members.len()),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect()
    }

    /// Frontends in the desired state.
    pub fn frontends(&self) -> usize {
        self.model.desired().frontends.len()
    }

    pub fn sync(
        &mut self,
        store: &ObjectStore,
        dirty: &BTreeSet<NsName>,
        maps: &mut ServiceMaps,
    ) -> Report {
        let update = self.update(store, dirty);
        self.apply(update, maps)
    }

    /// The first half of a pass: the model follows the store. What it
    /// wants is then `desired()`, not yet written.
    pub fn update(&mut self, store: &ObjectStore, dirty: &BTreeSet<NsName>) -> Update {
        self.model.update(store, dirty)
    }

    /// The second half: the writes that make the maps hold `desired()`
    /// for what `up` changed (and whatever was left out before).
    pub fn apply(&mut self, up: Update, maps: &mut ServiceMaps) -> Report {
        let desired = self.model.desired();
        let mut changed = up.changed;
        let retried = std::mem::take(&mut self.left_out);
        changed.extend(retried.keys().copied());
        let ops = if self.adopted {
            self.rec.plan(desired, changed)
        } else {
            self.adopted = true;
            self.rec.plan_all(desired)
        };
        let errors = maps.apply(&ops, self.rec.mirror_mut());
        let mut failed = Vec::new();
        for e in &errors {
            let fk = match &e.op {
                Op::PutService(k, _) | Op::DelService(k) => reconcile::frontend_of(k),
                _ => None,
            };
            let Some(fk) = fk else {
                failed.push((format!("{:?}", e.op), e.error.clone()));
                continue;
            };
            let service = desired
                .frontends
                .get(&fk)
                .map(|s| s.name.clone())
                .unwrap_or_else(|| "(removed Service)".to_string());
            failed.push((format!("{service} ({fk})"), e.error.clone()));
            self.left_out.entry(fk).or_insert(LeftOut {
                service,
                frontend: fk.to_string(),
                error: e.error.clone(),
            });
        }
        if !failed.is_empty() {
            self.rec.resync();
        }
        Report {
            frontends: desired.frontends.len(),
            writes: ops.len(),
            removals: ops
                .iter()
                .filter(|o| matches!(o, Op::DelService(_) | Op::DelBackend(_)))
                .count(),
            failed,
            refused: up.refused,
        }
    }
}
