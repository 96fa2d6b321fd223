//! The agent's handles on the service, backend and info maps: reading
//! them back (adoption after a restart) and executing write plans.
use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray},
};
use lb_common::{
    Backend, MAP_BACKENDS, MAP_SERVICES, MAP_STATS, MAP_SVC_INFO, STAT_COUNT, ServiceKey,
    ServiceValue, SvcInfo,
};

use crate::reconcile::{self, MapState, Op};

pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    info: HashMap<MapData, u32, SvcInfo>,
}

/// A write that failed, with the frontend or backend it was for.
#[derive(Debug)]
pub struct ApplyError {
    pub op: Op,
    pub error: String,
}

pub(crate) fn take<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<HashMap<MapData, K, V>> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    HashMap::try_from(map).with_context(|| format!("map {name} has an unexpected layout"))
}

fn open_pinned<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is the agent running with this --pin-path?)",
            path.display()
        )
    })?;
    let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
    HashMap::try_from(map)
        .with_context(|| format!("map {} has an unexpected layout", path.display()))
}

impl ServiceMaps {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            services: take(ebpf, MAP_SERVICES)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            info: take(ebpf, MAP_SVC_INFO)?,
        })
    }

    /// Opens the maps a running agent pinned (for the CLI).
    pub fn from_pins(dir: &Path) -> Result<Self> {
        Ok(Self {
            services: open_pinned(dir, MAP_SERVICES)?,
            backends: open_pinned(dir, MAP_BACKENDS)?,
            info: open_pinned(dir, MAP_SVC_INFO)?,
        })
    }

    pub fn read(&self) -> Result<MapState> {
        let mut s = MapState::default();
        for e in self.services.iter() {
            let (k, v) = e.context("reading services map")?;
            s.services.insert(k, v);
        }
        for e in self.backends.iter() {
            let (k, v) = e.context("reading backends map")?;
            s.backends.insert(k, v);
        }
        for e in self.info.iter() {
            let (k, v) = e.context("reading info map")?;
            s.info.insert(k, v);
        }
        Ok(s)
    }

    /// Executes `ops` in order, updating `mirror` for each write that
    /// succeeded. A failed write is reported and the rest go on, as far as
    /// `reconcile::Guard` says they still leave a consistent datapath.
    pub fn apply(&mut self, ops: &[Op], mirror: &mut MapState) -> Vec<ApplyError> {
        let mut errors = Vec::new();
        let mut guard = reconcile::Guard::default();
        for op in ops {
            if !guard.allows(op) {
                guard.not_written(op);
                if matches!(op, Op::PutService(..)) {
                    errors.push(ApplyError {
                        op: op.clone(),
                        error: "not written: an earlier write for it failed".into(),
                    });
                }
                continue;
            }
            let r = match op {
                Op::PutBackend(id, b) => self.backends.insert(id, b, 0),
                Op::PutInfo(id, i) => self.info.insert(id, **i, 0),
                Op::PutService(k, v) => self.services.insert(k, v, 0),
                Op::DelService(k) => self.services.remove(k),
                Op::DelInfo(id) => self.info.remove(id),
                Op::DelBackend(id) => self.backends.remove(id),
            };
            match r {
                Ok(()) => reconcile::apply_to(mirror, op),
                Err(e) => {
                    guard.not_written(op);
                    errors.push(ApplyError {
                        op: op.clone(),
                        error: format!("{e:#}"),
                    })
                }
            }
        }
        errors
    }
}

/// Datapath counters summed over CPUs, in `lb_common::Stat` order.
pub fn read_stats(dir: &Path) -> Result<Vec<u64>> {
    let stats = open_stats(dir)?;
    (0..STAT_COUNT)
        .map(|i| Ok(stats.get(&i, 0)?.iter().sum()))
        .collect()
}

/// One slot of the stats map, summed over CPUs (slots past the named
/// counters included).
pub fn read_stat(dir: &Path, slot: u32) -> Result<u64> {
    Ok(open_stats(dir)?.get(&slot, 0)?.iter().sum())
}

fn open_stats(dir: &Path) -> Result<PerCpuArray<MapData, u64>> {
    let path = dir.join(MAP_STATS);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(PerCpuArray::try_from(Map::from_map_data(data)?)?)
}
