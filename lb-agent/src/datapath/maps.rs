//! The agent's handles on the service, backend and info maps: reading
//! them back (adoption after a restart) and executing write plans.
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap, Map, MapData, PerCpuArray},
};
use lb_common::{
    Backend, Backend6, MAP_BACKENDS, MAP_BACKENDS6, MAP_LEAST_CONN, MAP_MAGLEV, MAP_MEMBERS,
    MAP_SCHED, MAP_SERVICES, MAP_SERVICES6, MAP_STATS, MAP_SVC_INFO, MAP_SVC_STATS, MemberKey,
    STAT_COUNT, SchedValue, ServiceKey, ServiceKey6, ServiceValue, SvcCounters, SvcInfo,
};

use super::batch;
use crate::reconcile::{self, BackendEntry, MaglevKey, MapState, Op, SvcKey};

/// The frontend and backend maps of both families, and the names.
pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    services6: HashMap<MapData, ServiceKey6, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    backends6: HashMap<MapData, u32, Backend6>,
    info: HashMap<MapData, u32, SvcInfo>,
    sched: HashMap<MapData, u32, SchedValue>,
    /// Every Maglev table, by position (the agent tracks whose).
    maglev: Array<MapData, u32>,
    members: HashMap<MapData, MemberKey, u32>,
    /// Least-conn counts, by backend id: the datapath's, but reset here
    /// when an id is freed (its next backend starts from zero).
    least_conn: Array<MapData, u64>,
    /// Per-frontend traffic, per CPU: reset here when a frontend id is
    /// freed (its next frontend starts from zero).
    svc_stats: PerCpuArray<MapData, SvcCounters>,
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

pub(crate) fn open_pinned<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &str,
) -> Result<HashMap<MapData, K, V>> {
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

fn take_array<V: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Result<Array<MapData, V>> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    Array::try_from(map).with_context(|| format!("map {name} has an unexpected layout"))
}

fn open_pinned_array<V: aya::Pod>(dir: &Path, name: &str) -> Result<Array<MapData, V>> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
    Array::try_from(map).with_context(|| format!("map {} has an unexpected layout", path.display()))
}

impl ServiceMaps {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            services: take(ebpf, MAP_SERVICES)?,
            services6: take(ebpf, MAP_SERVICES6)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            backends6: take(ebpf, MAP_BACKENDS6)?,
            info: take(ebpf, MAP_SVC_INFO)?,
            sched: take(ebpf, MAP_SCHED)?,
            maglev: take_array(ebpf, MAP_MAGLEV)?,
            members: take(ebpf, MAP_MEMBERS)?,
            svc_stats: PerCpuArray::try_from(
                ebpf.take_map(MAP_SVC_STATS)
                    .with_context(|| format!("map {MAP_SVC_STATS} missing from the object"))?,
            )
            .with_context(|| format!("map {MAP_SVC_STATS} has an unexpected layout"))?,
            least_conn: take_array(ebpf, MAP_LEAST_CONN)?,
        })
    }

    /// Opens the maps a running agent pinned (for the CLI).
    pub fn from_pins(dir: &Path) -> Result<Self> {
        Ok(Self {
            services: open_pinned(dir, MAP_SERVICES)?,
            services6: open_pinned(dir, MAP_SERVICES6)?,
            backends: open_pinned(dir, MAP_BACKENDS)?,
            backends6: open_pinned(dir, MAP_BACKENDS6)?,
            info: open_pinned(dir, MAP_SVC_INFO)?,
            sched: open_pinned(dir, MAP_SCHED)?,
            maglev: open_pinned_array(dir, MAP_MAGLEV)?,
            members: open_pinned(dir, MAP_MEMBERS)?,
            svc_stats: {
                let path = dir.join(MAP_SVC_STATS);
                let data = MapData::from_pin(&path)
                    .with_context(|| format!("opening pinned map {}", path.display()))?;
                PerCpuArray::try_from(Map::from_map_data(data)?)
                    .with_context(|| format!("map {} has an unexpected layout", path.display()))?
            },
            least_conn: open_pinned_array(dir, MAP_LEAST_CONN)?,
        })
    }

    pub fn read(&self) -> Result<MapState> {
        let mut s = MapState::default();
        for e in self.services.iter() {
            let (k, v) = e.context("reading services map")?;
            s.services.insert(SvcKey::V4(k), v);
        }
        for e in self.services6.iter() {
            let (k, v) = e.context("reading IPv6 services map")?;
            s.services.insert(SvcKey::V6(k), v);
        }
        for e in self.backends.iter() {
            let (k, v) = e.context("reading backends map")?;
            s.backends.insert(k, BackendEntry::V4(v));
        }
        for e in self.backends6.iter() {
            let (k, v) = e.context("reading IPv6 backends map")?;
            s.backends.insert(k, BackendEntry::V6(v));
        }
        for e in self.info.iter() {
            let (k, v) = e.context("reading info map")?;
            s.info.insert(k, v);
        }
        for e in self.sched.iter() {
            let (k, v) = e.context("reading scheduler map")?;
            s.sched.insert(k, v);
        }
        batch::for_each(fd(&self.members), 4096, |k: &MemberKey, v: &u32| {
            s.members.insert(*k, *v);
        })
        .context("reading the members map")?;
        // The Maglev array's entries inside a Maglev scheduler's table
        // belong to its frontend; the rest are unused.
        let tables: BTreeMap<u32, (u32, u32)> = s
            .sched
            .iter()
            .filter(|(_, v)| v.alg == lb_common::SCHED_MAGLEV)
            .map(|(id, v)| (v.base, (*id, v.table_size)))
            .collect();
        batch::for_each(array_fd(&self.maglev), 65_536, |index: &u32, slot: &u32| {
            if *slot == 0 {
                return;
            }
            if let Some((&base, &(svc_id, size))) = tables.range(..=*index).next_back()
                && *index < base + size
            {
                s.maglev.insert(
                    MaglevKey {
                        svc_id,
                        index: *index,
                    },
                    *slot,
                );
            }
        })
        .context("reading Maglev map")?;
        Ok(s)
    }

    /// Executes `ops` in order, updating `mirror` for each write that
    /// succeeded. A failed write is reported and the rest go on, as far as
    /// `reconcile::Guard` says they still leave a consistent datapath.
    /// Consecutive writes of one kind go down as one batch: the same
    /// writes in the same order, a syscall per chunk instead of per entry.
    pub fn apply(&mut self, ops: &[Op], mirror: &mut MapState) -> Vec<ApplyError> {
        let mut errors = Vec::new();
        let mut guard = reconcile::Guard::default();
        let mut i = 0;
        while i < ops.len() {
            let op = &ops[i];
            if !guard.allows(op) {
                guard.not_written(op);
                if matches!(op, Op::PutService(..)) {
                    errors.push(ApplyError {
                        op: op.clone(),
                        error: "not written: an earlier write for it failed".into(),
                    });
                }
                i += 1;
                continue;
            }
            // The guard changes only when a write fails, which ends the
            // run: every op in it is allowed as if written one by one.
            let kind = Kind::of(op, mirror);
            let len = ops[i..]
                .iter()
                .take(BATCH_MAX)
                .position(|o| Kind::of(o, mirror) != kind || !guard.allows(o))
                .unwrap_or(ops.len().min(i + BATCH_MAX) - i);
            let run = &ops[i..i + len];
            let (done, failure) = self.write(kind, run);
            for op in &run[..done] {
                match op {
                    Op::DelBackend(id) => self.reset_count(*id),
                    Op::DelInfo(id) => self.reset_service_counters(*id),
                    _ => {}
                }
                reconcile::apply_to(mirror, op);
            }
            i += done;
            if let Some(error) = failure {
                guard.not_written(&ops[i]);
                errors.push(ApplyError {
                    op: ops[i].clone(),
                    error,
                });
                i += 1;
            }
        }
        errors
    }

    /// The least-conn count of a freed backend id, back to zero. A failure
    /// costs the id's next backend a head start, not a flow.
    fn reset_count(&mut self, id: u32) {
        if let Err(e) = self.least_conn.set(id, 0, 0) {
            tracing::debug!(id, error = %e, "resetting the least-conn count of a freed backend id");
        }
    }

    /// A freed frontend id's traffic counters, back to zero.
    fn reset_service_counters(&mut self, id: u32) {
        let zeros = aya::util::nr_cpus().map_err(|(_, e)| e).and_then(|n| {
            aya::maps::PerCpuValues::try_from(vec![SvcCounters::default(); n])
                .map_err(std::io::Error::other)
        });
        let r = zeros
            .map_err(anyhow::Error::from)
            .and_then(|z| Ok(self.svc_stats.set(id, z, 0)?));
        if let Err(e) = r {
            tracing::debug!(id, error = %e, "resetting the counters of a freed frontend id");
        }
    }

    /// Frontend `id`'s traffic, summed over CPUs.
    pub fn service_counters(&self, id: u32) -> SvcCounters {
        self.svc_stats
            .get(&id, 0)
            .map(|per_cpu| {
                per_cpu
                    .iter()
                    .fold(SvcCounters::default(), |a, c| SvcCounters {
                        packets: a.packets + c.packets,
                        bytes: a.bytes + c.bytes,
                    })
            })
            .unwrap_or_default()
    }

    /// Active flows by backend id (least-conn frontends' backends; zero
    /// for the rest).
    pub fn active_flows(&self, id: u32) -> u64 {
        self.least_conn.get(&id, 0).unwrap_or(0)
    }

    /// Writes a run of ops of one `kind`: how many were written, from the
    /// first, and why the next one failed.
    fn write(&mut self, kind: Kind, run: &[Op]) -> (usize, Option<String>) {
        let result = match kind {
            Kind::PutBackend(V6) => {
                let (k, v): (Vec<u32>, Vec<Backend6>) = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::PutBackend(id, BackendEntry::V6(b)) => Some((*id, *b)),
                        _ => None,
                    })
                    .unzip();
                batch::update(fd(&self.backends6), &k, &v)
            }
            Kind::PutBackend(_) => {
                let (k, v): (Vec<u32>, Vec<Backend>) = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::PutBackend(id, BackendEntry::V4(b)) => Some((*id, *b)),
                        _ => None,
                    })
                    .unzip();
                batch::update(fd(&self.backends), &k, &v)
            }
            Kind::PutInfo => {
                let (k, v): (Vec<u32>, Vec<SvcInfo>) = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::PutInfo(id, i) => Some((*id, **i)),
                        _ => None,
                    })
                    .unzip();
                batch::update(fd(&self.info), &k, &v)
            }
            Kind::PutService(V6) => {
                let (k, v): (Vec<ServiceKey6>, Vec<ServiceValue>) = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::PutService(SvcKey::V6(k), v) => Some((*k, *v)),
                        _ => None,
                    })
                    .unzip();
                batch::update(fd(&self.services6), &k, &v)
            }
            Kind::PutService(_) => {
                let (k, v): (Vec<ServiceKey>, Vec<ServiceValue>) = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::PutService(SvcKey::V4(k), v) => Some((*k, *v)),
                        _ => None,
                    })
                    .unzip();
                batch::update(fd(&self.services), &k, &v)
            }
            Kind::DelService(V6) => {
                let k: Vec<ServiceKey6> = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::DelService(SvcKey::V6(k)) => Some(*k),
                        _ => None,
                    })
                    .collect();
                batch::delete(fd(&self.services6), &k)
            }
            Kind::DelService(_) => {
                let k: Vec<ServiceKey> = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::DelService(SvcKey::V4(k)) => Some(*k),
                        _ => None,
                    })
                    .collect();
                batch::delete(fd(&self.services), &k)
            }
            Kind::DelInfo | Kind::DelBackend(_) => {
                let k: Vec<u32> = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::DelInfo(id) | Op::DelBackend(id) => Some(*id),
                        _ => None,
                    })
                    .collect();
                let map = match kind {
                    Kind::DelInfo => fd(&self.info),
                    Kind::DelBackend(V6) => fd(&self.backends6),
                    _ => fd(&self.backends),
                };
                batch::delete(map, &k)
            }
            Kind::PutSched => {
                let (k, v): (Vec<u32>, Vec<SchedValue>) = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::PutSched(id, v) => Some((*id, *v)),
                        _ => None,
                    })
                    .unzip();
                batch::update(fd(&self.sched), &k, &v)
            }
            Kind::DelSched => {
                let k: Vec<u32> = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::DelSched(id) => Some(*id),
                        _ => None,
                    })
                    .collect();
                batch::delete(fd(&self.sched), &k)
            }
            Kind::PutMember => {
                let (k, v): (Vec<MemberKey>, Vec<u32>) = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::PutMember(k, slot) => Some((*k, *slot)),
                        _ => None,
                    })
                    .unzip();
                batch::update(fd(&self.members), &k, &v)
            }
            Kind::DelMember => {
                let k: Vec<MemberKey> = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::DelMember(k) => Some(*k),
                        _ => None,
                    })
                    .collect();
                batch::delete(fd(&self.members), &k)
            }
            // An array's entries are not deleted: slot 0 is "none" (the
            // datapath then falls back to random).
            Kind::PutMaglev | Kind::DelMaglev => {
                let (k, v): (Vec<u32>, Vec<u32>) = run
                    .iter()
                    .filter_map(|o| match o {
                        Op::PutMaglev(k, slot) => Some((k.index, *slot)),
                        Op::DelMaglev(k) => Some((k.index, 0)),
                        _ => None,
                    })
                    .unzip();
                batch::update(array_fd(&self.maglev), &k, &v)
            }
        };
        match result {
            Ok(()) => (run.len(), None),
            Err(s) if s.unsupported() => self.write_each(kind, run),
            Err(s) => (s.done, Some(describe(kind, &s.error))),
        }
    }

    /// One syscall per op: kernels or map types without batch support.
    fn write_each(&mut self, kind: Kind, run: &[Op]) -> (usize, Option<String>) {
        for (n, op) in run.iter().enumerate() {
            let r = match op {
                Op::PutBackend(id, BackendEntry::V4(b)) => self.backends.insert(id, b, 0),
                Op::PutBackend(id, BackendEntry::V6(b)) => self.backends6.insert(id, b, 0),
                Op::PutInfo(id, i) => self.info.insert(id, **i, 0),
                Op::PutService(SvcKey::V4(k), v) => self.services.insert(k, v, 0),
                Op::PutService(SvcKey::V6(k), v) => self.services6.insert(k, v, 0),
                Op::DelService(SvcKey::V4(k)) => self.services.remove(k),
                Op::DelService(SvcKey::V6(k)) => self.services6.remove(k),
                Op::DelInfo(id) => self.info.remove(id),
                Op::DelBackend(id) if kind == Kind::DelBackend(V6) => self.backends6.remove(id),
                Op::DelBackend(id) => self.backends.remove(id),
                Op::PutSched(id, v) => self.sched.insert(id, v, 0),
                Op::DelSched(id) => self.sched.remove(id),
                Op::PutMaglev(k, slot) => self.maglev.set(k.index, slot, 0),
                Op::DelMaglev(k) => self.maglev.set(k.index, 0, 0),
                Op::PutMember(k, slot) => self.members.insert(k, slot, 0),
                Op::DelMember(k) => self.members.remove(k),
            };
            if let Err(e) = r {
                return (n, Some(format!("{e:#}")));
            }
        }
        (run.len(), None)
    }
}

/// At most this many entries per batch: bounds the copy the batch needs
/// (a few hundred KB) and how long one syscall holds the CPU.
const BATCH_MAX: usize = 8192;

/// Whether an op's map is the IPv6 one.
const V4: bool = false;
const V6: bool = true;

/// Which map an op writes and how: the unit of a batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    PutBackend(bool),
    PutInfo,
    PutService(bool),
    DelService(bool),
    DelInfo,
    DelBackend(bool),
    PutSched,
    DelSched,
    PutMaglev,
    DelMaglev,
    PutMember,
    DelMember,
}

impl Kind {
    /// `mirror` (what the maps hold) tells which map a backend id is in.
    fn of(op: &Op, mirror: &MapState) -> Kind {
        match op {
            Op::PutBackend(_, b) => Kind::PutBackend(matches!(b, BackendEntry::V6(_))),
            Op::PutInfo(..) => Kind::PutInfo,
            Op::PutService(k, _) => Kind::PutService(matches!(k, SvcKey::V6(_))),
            Op::DelService(k) => Kind::DelService(matches!(k, SvcKey::V6(_))),
            Op::DelInfo(_) => Kind::DelInfo,
            Op::DelBackend(id) => Kind::DelBackend(
                mirror
                    .backends
                    .get(id)
                    .map_or(V4, |b| matches!(b, BackendEntry::V6(_))),
            ),
            Op::PutSched(..) => Kind::PutSched,
            Op::DelSched(_) => Kind::DelSched,
            Op::PutMaglev(..) => Kind::PutMaglev,
            Op::DelMaglev(_) => Kind::DelMaglev,
            Op::PutMember(..) => Kind::PutMember,
            Op::DelMember(_) => Kind::DelMember,
        }
    }
}

/// The map's fd, for the batch calls.
pub(crate) fn fd<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> BorrowedFd<'_> {
    map.map().fd().as_fd()
}

pub(crate) fn array_fd<V: aya::Pod>(map: &Array<MapData, V>) -> BorrowedFd<'_> {
    map.map().fd().as_fd()
}

/// A failed write, for the operator: which map, and a full map said as such.
fn describe(kind: Kind, e: &std::io::Error) -> String {
    let map = match kind {
        Kind::PutBackend(V6) | Kind::DelBackend(V6) => MAP_BACKENDS6,
        Kind::PutBackend(_) | Kind::DelBackend(_) => MAP_BACKENDS,
        Kind::PutInfo | Kind::DelInfo => MAP_SVC_INFO,
        Kind::PutService(V6) | Kind::DelService(V6) => MAP_SERVICES6,
        Kind::PutService(_) | Kind::DelService(_) => MAP_SERVICES,
        Kind::PutSched | Kind::DelSched => MAP_SCHED,
        Kind::PutMaglev | Kind::DelMaglev => MAP_MAGLEV,
        Kind::PutMember | Kind::DelMember => MAP_MEMBERS,
    };
    let verb = match kind {
        Kind::PutBackend(_)
        | Kind::PutInfo
        | Kind::PutService(_)
        | Kind::PutSched
        | Kind::PutMaglev
        | Kind::PutMember => "writing",
        _ => "deleting from",
    };
    if e.raw_os_error() == Some(libc::E2BIG) {
        format!("{verb} map {map}: the map is full ({e})")
    } else {
        format!("{verb} map {map}: {e}")
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
