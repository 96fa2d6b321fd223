//! Desired state -> map entries -> the ordered writes that turn what the
//! maps hold into that, frontend by frontend: a change to one Service
//! plans writes for its frontends only. Pure: no syscalls here, so it is
//! unit-tested without a kernel; `datapath::maps` executes the plan.
//!
//! Write order keeps every intermediate state valid for a reader:
//! backends first, then a frontend's slots, then its master entry (the
//! commit point), then surplus slots; removed frontends lose their master
//! first; unused backends go last.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    BACKEND_FLAG_LOCAL, BackendOf, MemberKey, SLOT_FLAG_TERMINATING, SVC_FLAG_NONE, SVC_NAME_LEN,
    SchedValue, ServiceKeyOf, ServiceValue, SvcInfo, ipv4_from_net, ipv4_to_net, ipv6_from_net,
    ipv6_to_net, port_from_net, port_to_net,
};

use crate::model::{BackendAddr, Desired, FrontendKey, FrontendState, Proto};
use crate::sched::Scheduler;

/// A key of the services map of either family (IPv4 and IPv6 frontends
/// live in maps of their own; one plan covers both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SvcKey {
    V4(lb_common::ServiceKey),
    V6(lb_common::ServiceKey6),
}

impl SvcKey {
    pub fn slot(&self) -> u16 {
        match self {
            SvcKey::V4(k) => k.slot,
            SvcKey::V6(k) => k.slot,
        }
    }

    /// The same frontend's key for `slot` (0: its master).
    pub fn with_slot(&self, slot: u16) -> SvcKey {
        match *self {
            SvcKey::V4(k) => SvcKey::V4(ServiceKeyOf { slot, ..k }),
            SvcKey::V6(k) => SvcKey::V6(ServiceKeyOf { slot, ..k }),
        }
    }
}

/// A Maglev table entry as the agent tracks it: the frontend it belongs
/// to and its position in `MAP_MAGLEV` (the table's base plus the index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub svc_id: u32,
    pub index: u32,
}

/// The Maglev array's blocks in use in one plan: the tables the maps
/// hold (a table that goes frees its block for the next plan only: its
/// entries are cleared after this one's writes) and those placed now.
struct MaglevBlocks(BTreeMap<u32, u32>);

impl MaglevBlocks {
    fn of(sched: &BTreeMap<u32, SchedValue>) -> Self {
        MaglevBlocks(
            sched
                .values()
                .filter(|v| v.alg == lb_common::SCHED_MAGLEV)
                .map(|v| (v.base, v.table_size))
                .collect(),
        )
    }

    /// The lowest free block of `size` entries, taken; None when the array
    /// has no such room.
    fn take(&mut self, size: u32) -> Option<u32> {
        let mut at = 0u32;
        for (&base, &len) in &self.0 {
            if base >= at && base - at >= size {
                break;
            }
            at = at.max(base + len);
        }
        (at + size <= lb_common::DEFAULT_MAGLEV_MAX).then(|| {
            self.0.insert(at, size);
            at
        })
    }
}

/// A backends map entry of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendEntry {
    V4(lb_common::Backend),
    V6(lb_common::Backend6),
}

impl BackendEntry {
    pub fn addr(&self) -> IpAddr {
        match self {
            BackendEntry::V4(b) => IpAddr::V4(Ipv4Addr::from(ipv4_from_net(b.addr))),
            BackendEntry::V6(b) => IpAddr::V6(Ipv6Addr::from(ipv6_from_net(b.addr))),
        }
    }

    /// Port (network order), protocol and flags, as in the entry.
    pub fn rest(&self) -> (u16, u8, u8) {
        match self {
            BackendEntry::V4(b) => (b.port, b.proto, b.flags),
            BackendEntry::V6(b) => (b.port, b.proto, b.flags),
        }
    }
}

/// What the maps hold (or should hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<SvcKey, ServiceValue>,
    pub backends: BTreeMap<u32, BackendEntry>,
    pub info: BTreeMap<u32, SvcInfo>,
    /// Schedulers other than random, by frontend id.
    pub sched: BTreeMap<u32, SchedValue>,
    /// Maglev table entries: (frontend id, position in the array) -> slot.
    pub maglev: BTreeMap<MaglevKey, u32>,
    /// Backends' slots in frontends with session affinity.
    pub members: BTreeMap<MemberKey, u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, BackendEntry),
    /// Boxed: the name is 64 bytes and there is one per frontend, while
    /// the other ops are a tenth of that and number ten per frontend.
    PutInfo(u32, Box<SvcInfo>),
    PutService(SvcKey, ServiceValue),
    DelService(SvcKey),
    DelInfo(u32),
    DelBackend(u32),
    PutSched(u32, SchedValue),
    DelSched(u32),
    PutMaglev(MaglevKey, u32),
    DelMaglev(MaglevKey),
    PutMember(MemberKey, u32),
    DelMember(MemberKey),
}

impl Op {
    /// What the write would change, for people: the frontend or id it
    /// touches.
    pub fn describe(&self) -> String {
        let fe = |k: &SvcKey| match frontend_of(k) {
            Some(fk) if k.slot() == 0 => format!("frontend {fk}"),
            Some(fk) => format!("frontend {fk} backend slot {}", k.slot()),
            None => format!("unreadable service key {k:?}"),
        };
        match self {
            Op::PutBackend(id, _) => format!("backend {id} missing or different"),
            Op::PutInfo(id, i) => {
                format!("service name {id} ({}) missing or different", info_name(i))
            }
            Op::PutService(k, _) => format!("{} missing or different", fe(k)),
            Op::DelService(k) => format!("{} held but not desired", fe(k)),
            Op::DelInfo(id) => format!("service name {id} held but not desired"),
            Op::DelBackend(id) => format!("backend {id} held but referenced by no frontend"),
            Op::PutSched(id, _) => format!("scheduler of frontend id {id} missing or different"),
            Op::DelSched(id) => format!("scheduler of frontend id {id} held but not desired"),
            Op::PutMaglev(k, _) => format!(
                "Maglev entry {} of frontend id {} missing or different",
                k.index, k.svc_id
            ),
            Op::DelMaglev(k) => format!(
                "Maglev entry {} of frontend id {} held but not desired",
                k.index, k.svc_id
            ),
            Op::PutMember(k, _) => format!(
                "slot of backend {} in frontend id {} missing or different",
                k.backend_id, k.svc_id
            ),
            Op::DelMember(k) => format!(
                "slot of backend {} in frontend id {} held but not desired",
                k.backend_id, k.svc_id
            ),
        }
    }
}

pub fn service_key(fk: &FrontendKey, slot: u16) -> SvcKey {
    let (port, proto) = (port_to_net(fk.port), fk.proto.number());
    match fk.addr {
        IpAddr::V4(a) => SvcKey::V4(ServiceKeyOf::new(
            ipv4_to_net(a.octets()),
            port,
            slot,
            proto,
        )),
        IpAddr::V6(a) => SvcKey::V6(ServiceKeyOf::new(
            ipv6_to_net(a.octets()),
            port,
            slot,
            proto,
        )),
    }
}

/// The frontend a map key belongs to.
pub fn frontend_of(k: &SvcKey) -> Option<FrontendKey> {
    let (addr, port, proto) = match k {
        SvcKey::V4(k) => (
            IpAddr::V4(Ipv4Addr::from(ipv4_from_net(k.addr))),
            k.port,
            k.proto,
        ),
        SvcKey::V6(k) => (
            IpAddr::V6(Ipv6Addr::from(ipv6_from_net(k.addr))),
            k.port,
            k.proto,
        ),
    };
    Some(FrontendKey {
        addr,
        port: port_from_net(port),
        proto: Proto::from_number(proto)?,
    })
}

pub fn backend_entry(b: &BackendAddr, proto: Proto) -> BackendEntry {
    let (port, proto) = (port_to_net(b.port), proto.number());
    let flags = if b.local { BACKEND_FLAG_LOCAL } else { 0 };
    match b.addr {
        IpAddr::V4(a) => BackendEntry::V4(BackendOf {
            addr: ipv4_to_net(a.octets()),
            port,
            proto,
            flags,
        }),
        IpAddr::V6(a) => BackendEntry::V6(BackendOf {
            addr: ipv6_to_net(a.octets()),
            port,
            proto,
            flags,
        }),
    }
}

pub fn info_entry(name: &str) -> SvcInfo {
    let mut info = SvcInfo {
        name: [0; SVC_NAME_LEN],
    };
    let bytes = name.as_bytes();
    let n = bytes.len().min(SVC_NAME_LEN - 1);
    info.name[..n].copy_from_slice(&bytes[..n]);
    info
}

pub fn info_name(info: &SvcInfo) -> String {
    let end = info
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(SVC_NAME_LEN);
    String::from_utf8_lossy(&info.name[..end]).into_owned()
}

/// Smallest ids not in use, handed out in order.
#[derive(Debug)]
struct IdAllocator {
    used: BTreeSet<u32>,
    next: u32,
}

impl Default for IdAllocator {
    fn default() -> Self {
        Self::new(BTreeSet::new())
    }
}

impl IdAllocator {
    fn new(used: BTreeSet<u32>) -> Self {
        Self { used, next: 1 }
    }

    fn take(&mut self) -> u32 {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        self.used.insert(self.next);
        self.next
    }

    fn release(&mut self, id: u32) {
        self.used.remove(&id);
        self.next = self.next.min(id);
    }
}

/// Keeps the maps equal to the desired state. Holds the mirror of what
/// the maps contain and the indexes that make one frontend's plan cost
/// only that frontend: backend entry -> id, and how many slots use each.
#[derive(Debug, Default)]
pub struct Reconciler {
    mirror: MapState,
    be_ids: BTreeMap<BackendEntry, u32>,
    be_refs: BTreeMap<u32, u32>,
    be_alloc: IdAllocator,
    svc_alloc: IdAllocator,
    /// Entries no frontend refers to (found when adopting maps): removed
    /// by the next plan.
    orphan_backends: BTreeSet<u32>,
    orphan_info: BTreeSet<u32>,
    orphan_slots: Vec<SvcKey>,
}

impl Reconciler {
    /// Adopts what the maps hold, reusing its ids.
    pub fn new(mirror: MapState) -> Self {
        let mut be_ids = BTreeMap::new();
        for (id, b) in &mirror.backends {
            be_ids.entry(*b).or_insert(*id);
        }
        let mut be_refs: BTreeMap<u32, u32> = BTreeMap::new();
        let mut svc_ids = BTreeSet::new();
        let mut orphan_slots = Vec::new();
        for (k, v) in &mirror.services {
            if k.slot() == 0 {
                svc_ids.insert(v.svc_id);
                continue;
            }
            // A slot beyond its master's count (a previous writer stopped
            // between the two) is never read: remove it, do not count it.
            let master = mirror.services.get(&k.with_slot(0));
            if master.is_some_and(|m| k.slot() <= m.count) {
                *be_refs.entry(v.backend_id).or_default() += 1;
            } else {
                orphan_slots.push(*k);
            }
        }
        let orphan_backends = mirror
            .backends
            .keys()
            .filter(|id| !be_refs.contains_key(id))
            .copied()
            .collect();
        let orphan_info = mirror
            .info
            .keys()
            .filter(|id| !svc_ids.contains(id))
            .copied()
            .collect();
        Reconciler {
            be_alloc: IdAllocator::new(mirror.backends.keys().copied().collect()),
            svc_alloc: IdAllocator::new(svc_ids),
            be_ids,
            be_refs,
            orphan_backends,
            orphan_info,
            orphan_slots,
            mirror,
        }
    }

    /// What the maps hold (as far as writes succeeded).
    pub fn mirror(&self) -> &MapState {
        &self.mirror
    }

    /// For the executor of a plan: record each write that succeeded.
    pub fn mirror_mut(&mut self) -> &mut MapState {
        &mut self.mirror
    }

    /// Rebuilds the indexes from the mirror, after a plan's writes failed.
    pub fn resync(&mut self) {
        *self = Reconciler::new(std::mem::take(&mut self.mirror));
    }

    /// Every frontend the maps hold.
    pub fn frontends(&self) -> Vec<FrontendKey> {
        self.mirror
            .services
            .keys()
            .filter(|k| k.slot() == 0)
            .filter_map(frontend_of)
            .collect()
    }

    /// The writes that make the maps hold `desired` for each frontend in
    /// `changed` (a frontend absent from `desired` is removed). Indexes are
    /// updated as if every write succeeds; call `resync` if one fails.
    pub fn plan(
        &mut self,
        desired: &Desired,
        changed: impl IntoIterator<Item = FrontendKey>,
    ) -> Vec<Op> {
        let changed: BTreeSet<FrontendKey> = changed.into_iter().collect();
        let mut blocks = MaglevBlocks::of(&self.mirror.sched);
        let (mut put_be, mut put_info, mut fe_ops, mut del_info) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Scheduler state no frontend reads any more: after the masters.
        let mut late_ops = Vec::new();
        // Frontends that go away are removed first: that frees room in full
        // maps for the ones that come.
        let mut gone_ops = Vec::new();
        let mut dropped_refs = std::mem::take(&mut self.orphan_backends);
        let mut freed_svc = Vec::new();
        // Names no master refers to go, unless a frontend planned now
        // takes their id.
        let mut orphan_info = std::mem::take(&mut self.orphan_info);
        // Slots no master counts (a plan stopped by a failed write) go,
        // unless a frontend planned now takes them as they are.
        let mut orphan_slots: BTreeSet<SvcKey> =
            std::mem::take(&mut self.orphan_slots).into_iter().collect();
        for fk in changed {
            let master_key = service_key(&fk, 0);
            let old_master = self.mirror.services.get(&master_key).copied();
            let old_count = old_master.map_or(0, |m| m.count);
            let old_ids: Vec<u32> = (1..=old_count)
                .filter_map(|slot| {
                    self.mirror
                        .services
                        .get(&service_key(&fk, slot))
                        .map(|v| v.backend_id)
                })
                .collect();
            match desired.frontends.get(&fk) {
                Some(st) => {
                    let svc_id = old_master
                        .map(|m| m.svc_id)
                        .unwrap_or_else(|| self.svc_alloc.take());
                    orphan_info.remove(&svc_id);
                    let info = info_entry(&st.name);
                    if self.mirror.info.get(&svc_id) != Some(&info) {
                        put_info.push(Op::PutInfo(svc_id, Box::new(info)));
                    }
                    let mut ids = Vec::new();
                    for b in st
                        .backends
                        .iter()
                        .take(lb_common::MAX_BACKENDS_PER_SERVICE as usize)
                    {
                        let entry = backend_entry(b, fk.proto);
                        let id = match self.be_ids.get(&entry) {
                            Some(id) => *id,
                            None => {
                                let id = self.be_alloc.take();
                                self.be_ids.insert(entry, id);
                                put_be.push(Op::PutBackend(id, entry));
                                id
                            }
                        };
                        *self.be_refs.entry(id).or_default() += 1;
                        ids.push(id);
                    }
                    let count = ids.len() as u16;
                    let slots = stable_slots(&old_ids, &ids);
                    self.plan_sched(
                        svc_id,
                        st,
                        (&ids, &slots),
                        &mut blocks,
                        &mut fe_ops,
                        &mut late_ops,
                    );
                    let slots_now = slots.clone();
                    for (i, id) in slots.into_iter().enumerate() {
                        let k = service_key(&fk, i as u16 + 1);
                        let flags = if st.terminating {
                            SLOT_FLAG_TERMINATING
                        } else {
                            SVC_FLAG_NONE
                        };
                        let v = ServiceValue {
                            backend_id: id,
                            count: 0,
                            flags,
                            svc_id,
                        };
                        // An orphan slot this frontend needs is kept
                        // (or overwritten), not deleted.
                        orphan_slots.remove(&k);
                        if self.mirror.services.get(&k) != Some(&v) {
                            fe_ops.push(Op::PutService(k, v));
                        }
                    }
                    self.plan_members(
                        svc_id,
                        st.flags & lb_common::SVC_FLAG_AFFINITY != 0,
                        &slots_now,
                        &mut fe_ops,
                        &mut late_ops,
                    );
                    let master = ServiceValue {
                        // The master's backend_id field carries the
                        // affinity timeout (see `ServiceValue`).
                        backend_id: st.affinity_secs.map_or(0, lb_common::affinity_ticks),
                        count,
                        flags: st.flags,
                        svc_id,
                    };
                    if old_master != Some(master) {
                        fe_ops.push(Op::PutService(master_key, master));
                    }
                    for slot in count + 1..=old_count {
                        fe_ops.push(Op::DelService(service_key(&fk, slot)));
                    }
                }
                None => {
                    if let Some(m) = old_master {
                        // Master first: the frontend disappears atomically.
                        gone_ops.push(Op::DelService(master_key));
                        for slot in 1..=old_count {
                            gone_ops.push(Op::DelService(service_key(&fk, slot)));
                        }
                        if self.mirror.info.contains_key(&m.svc_id) {
                            del_info.push(Op::DelInfo(m.svc_id));
                        }
                        self.drop_sched(m.svc_id, &mut gone_ops);
                        self.drop_members(m.svc_id, &[], &mut gone_ops);
                        freed_svc.push(m.svc_id);
                    }
                }
            }
            for id in old_ids {
                if let Some(r) = self.be_refs.get_mut(&id) {
                    *r = r.saturating_sub(1);
                }
                dropped_refs.insert(id);
            }
        }
        // Ids are released only now, so none is reused within this plan.
        let mut del_be = Vec::new();
        for id in dropped_refs {
            if self.be_refs.get(&id).copied().unwrap_or(0) == 0 {
                self.be_refs.remove(&id);
                if let Some(b) = self.mirror.backends.get(&id)
                    && self.be_ids.get(b) == Some(&id)
                {
                    self.be_ids.remove(b);
                }
                self.be_alloc.release(id);
                del_be.push(Op::DelBackend(id));
            }
        }
        for id in freed_svc {
            self.svc_alloc.release(id);
        }
        gone_ops.extend(orphan_slots.into_iter().map(Op::DelService));
        del_info.splice(0..0, orphan_info.into_iter().map(Op::DelInfo));
        // One allocation of the final size: a first sync plans a write per
        // map entry, and growing the list would briefly hold it twice.
        let parts = [
            gone_ops, put_be, put_info, fe_ops, late_ops, del_info, del_be,
        ];
        let mut ops = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for part in parts {
            ops.extend(part);
        }
        ops
    }

    /// The scheduler writes of frontend `svc_id` in state `st`, whose
    /// backends (ids, in `ids`' order as `st.backends`) sit in `slots` (ids
    /// by slot): what the datapath reads goes in `before` (written before
    /// the master; a Maglev table before the scheduler entry that points
    /// to it), what it no longer reads in `after`.
    fn plan_sched(
        &self,
        svc_id: u32,
        st: &FrontendState,
        (ids, slots): (&[u32], &[u32]),
        blocks: &mut MaglevBlocks,
        before: &mut Vec<Op>,
        after: &mut Vec<Op>,
    ) {
        let held = self.mirror.sched.get(&svc_id).copied();
        let (alg, table_size) = (st.scheduler.alg(), st.scheduler.table_size());
        // A Maglev table keeps its block while its size stays.
        let base = match st.scheduler {
            Scheduler::Random => None,
            Scheduler::Maglev(m) => match held {
                Some(h) if h.alg == alg && h.table_size == m => Some(h.base),
                _ => match blocks.take(m) {
                    Some(b) => Some(b),
                    None => {
                        // The datapath falls back to random without it.
                        tracing::warn!(
                            service = %st.name,
                            "no room for another Maglev table (at most {} entries in all): random",
                            lb_common::DEFAULT_MAGLEV_MAX
                        );
                        None
                    }
                },
            },
            _ => Some(0),
        };
        let Some(base) = base else {
            if held.is_some() {
                after.push(Op::DelSched(svc_id));
            }
            self.drop_sched_tables(svc_id, 0..0, after);
            return;
        };
        let mut table_len = 0;
        if let Scheduler::Maglev(m) = st.scheduler {
            // Identities by slot: every node builds the same table.
            let ident: BTreeMap<u32, String> = ids
                .iter()
                .zip(&st.backends)
                .map(|(id, b)| (*id, std::net::SocketAddr::new(b.addr, b.port).to_string()))
                .collect();
            let by_slot: Vec<String> = slots.iter().map(|id| ident[id].clone()).collect();
            let table = crate::maglev::table(&by_slot, m);
            table_len = table.len() as u32;
            for (i, k) in table.iter().enumerate() {
                let key = MaglevKey {
                    svc_id,
                    index: base + i as u32,
                };
                let slot = k + 1;
                if self.mirror.maglev.get(&key) != Some(&slot) {
                    before.push(Op::PutMaglev(key, slot));
                }
            }
        }
        // The turn counter is the datapath's: only a different algorithm,
        // table size or place is a change.
        if held.map(|h| (h.alg, h.table_size, h.base)) != Some((alg, table_size, base)) {
            before.push(Op::PutSched(
                svc_id,
                SchedValue {
                    alg,
                    _pad: [0; 3],
                    table_size,
                    next: 0,
                    base,
                    _pad2: 0,
                },
            ));
        }
        // Entries outside the table (a smaller one, another block, none).
        self.drop_sched_tables(svc_id, base..base + table_len, after);
    }

    /// The membership writes of frontend `svc_id` (with session affinity
    /// when `affinity`), whose backends sit in `slots` (ids by slot): new
    /// or moved members in `before` (the master's writes), the rest go in
    /// `after` (none without affinity).
    fn plan_members(
        &self,
        svc_id: u32,
        affinity: bool,
        slots: &[u32],
        before: &mut Vec<Op>,
        after: &mut Vec<Op>,
    ) {
        let slots = if affinity { slots } else { &[] };
        for (i, id) in slots.iter().enumerate() {
            let k = MemberKey {
                svc_id,
                backend_id: *id,
            };
            let slot = i as u32 + 1;
            if self.mirror.members.get(&k) != Some(&slot) {
                before.push(Op::PutMember(k, slot));
            }
        }
        self.drop_members(svc_id, slots, after);
    }

    /// Deletes frontend `svc_id`'s members but those in `keep`.
    fn drop_members(&self, svc_id: u32, keep: &[u32], ops: &mut Vec<Op>) {
        let range = MemberKey {
            svc_id,
            backend_id: 0,
        }..=MemberKey {
            svc_id,
            backend_id: u32::MAX,
        };
        ops.extend(
            self.mirror
                .members
                .range(range)
                .filter(|(k, _)| !keep.contains(&k.backend_id))
                .map(|(k, _)| Op::DelMember(*k)),
        );
    }

    /// Deletes frontend `svc_id`'s scheduler and its table.
    fn drop_sched(&self, svc_id: u32, ops: &mut Vec<Op>) {
        if self.mirror.sched.contains_key(&svc_id) {
            ops.push(Op::DelSched(svc_id));
        }
        self.drop_sched_tables(svc_id, 0..0, ops);
    }

    /// Deletes frontend `svc_id`'s Maglev entries outside `keep`.
    fn drop_sched_tables(&self, svc_id: u32, keep: std::ops::Range<u32>, ops: &mut Vec<Op>) {
        let range = MaglevKey { svc_id, index: 0 }..=MaglevKey {
            svc_id,
            index: u32::MAX,
        };
        ops.extend(
            self.mirror
                .maglev
                .range(range)
                .filter(|(k, _)| !keep.contains(&k.index))
                .map(|(k, _)| Op::DelMaglev(*k)),
        );
    }

    /// The writes for everything: every desired frontend and every
    /// frontend the maps hold (first sync after adopting maps).
    pub fn plan_all(&mut self, desired: &Desired) -> Vec<Op> {
        let mut all: BTreeSet<FrontendKey> = desired.frontends.keys().copied().collect();
        all.extend(self.frontends());
        self.plan(desired, all)
    }
}

/// The backend ids `ids` in slots 1..=len: a backend that stays keeps
/// the slot it had (`old`: the ids by slot), new ones fill the slots
/// left free. A change then writes only the slots that change, and what
/// remembers a slot (a session's, a Maglev table's) stays right for
/// every backend that stays.
fn stable_slots(old: &[u32], ids: &[u32]) -> Vec<u32> {
    let wanted: BTreeSet<u32> = ids.iter().copied().collect();
    let mut placed = BTreeSet::new();
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .take(ids.len())
        .map(|id| (wanted.contains(id) && placed.insert(*id)).then_some(*id))
        .collect();
    slots.resize(ids.len(), None);
    let mut rest = ids.iter().filter(|id| !placed.contains(id));
    slots
        .into_iter()
        .map(|s| {
            s.or_else(|| rest.next().copied())
                .expect("as many ids as slots")
        })
        .collect()
}

/// What may still be written once some writes of a plan failed (a full
/// map, typically). A frontend whose slot or backend failed keeps its old
/// master, so readers keep its old, complete state; after any failure,
/// deletions wait (the next plan, from the mirror, collects what is left).
#[derive(Debug, Default)]
pub struct Guard {
    failed_backends: BTreeSet<u32>,
    /// Master keys of frontends with a failed write.
    broken: BTreeSet<SvcKey>,
    any_failed: bool,
}

impl Guard {
    pub fn allows(&self, op: &Op) -> bool {
        match op {
            Op::PutBackend(..)
            | Op::PutInfo(..)
            | Op::PutSched(..)
            | Op::PutMaglev(..)
            | Op::PutMember(..) => true,
            Op::PutService(k, v) => {
                let broken = self.broken.contains(&k.with_slot(0));
                let backend_missing = k.slot() != 0 && self.failed_backends.contains(&v.backend_id);
                !broken && !backend_missing
            }
            Op::DelService(_)
            | Op::DelInfo(_)
            | Op::DelBackend(_)
            | Op::DelSched(_)
            | Op::DelMaglev(_)
            | Op::DelMember(_) => !self.any_failed,
        }
    }

    /// Records that `op` failed, or was not allowed.
    pub fn not_written(&mut self, op: &Op) {
        self.any_failed = true;
        match op {
            Op::PutBackend(id, _) => {
                self.failed_backends.insert(*id);
            }
            Op::PutService(k, _) => {
                self.broken.insert(k.with_slot(0));
            }
            _ => {}
        }
    }
}

/// Applies `op` to an in-memory state (the mirror of what the maps hold).
pub fn apply_to(state: &mut MapState, op: &Op) {
    match op {
        Op::PutBackend(id, b) => {
            state.backends.insert(*id, *b);
        }
        Op::PutInfo(id, i) => {
            state.info.insert(*id, **i);
        }
        Op::PutService(k, v) => {
            state.services.insert(*k, *v);
        }
        Op::DelService(k) => {
            state.services.remove(k);
        }
        Op::DelInfo(id) => {
            state.info.remove(id);
        }
        Op::DelBackend(id) => {
            state.backends.remove(id);
        }
        Op::PutSched(id, v) => {
            state.sched.insert(*id, *v);
        }
        Op::DelSched(id) => {
            state.sched.remove(id);
        }
        Op::PutMaglev(k, slot) => {
            state.maglev.insert(*k, *slot);
        }
        Op::DelMaglev(k) => {
            state.maglev.remove(k);
        }
        Op::PutMember(k, slot) => {
            state.members.insert(*k, *slot);
        }
        Op::DelMember(k) => {
            state.members.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FrontendState;

    fn fk(last: u8, port: u16) -> FrontendKey {
        FrontendKey {
            addr: Ipv4Addr::new(10, 0, 1, last).into(),
            port,
            proto: Proto::Tcp,
        }
    }

    fn be(last: u8) -> BackendAddr {
        BackendAddr {
            addr: Ipv4Addr::new(10, 244, 0, last).into(),
            port: 9376,
            local: false,
        }
    }

    fn desired(entries: &[(FrontendKey, &[u8])]) -> Desired {
        let mut d = Desired::default();
        for (k, bs) in entries {
            d.frontends.insert(
                *k,
                FrontendState {
                    name: format!("default/svc{}", k.addr),
                    backends: bs.iter().map(|b| be(*b)).collect(),
                    ..Default::default()
                },
            );
        }
        d
    }

    /// What a datapath reader would find: frontend -> backends, by slot.
    fn held(m: &MapState) -> BTreeMap<FrontendKey, Vec<BackendAddr>> {
        let mut out = BTreeMap::new();
        for (k, v) in &m.services {
            if k.slot() != 0 {
                continue;
            }
            let bs = (1..=v.count)
                .map(|slot| {
                    let s = m.services[&k.with_slot(slot)];
                    let b = m.backends[&s.backend_id];
                    BackendAddr {
                        addr: b.addr(),
                        port: port_from_net(b.rest().0),
                        local: false,
                    }
                })
                .collect();
            out.insert(frontend_of(k).unwrap(), bs);
        }
        out
    }

    /// Plans for the `changed` frontends (all when None), applies the
    /// plan to the mirror and checks the maps hold exactly `d`.
    fn run(rec: &mut Reconciler, d: &Desired, changed: Option<Vec<FrontendKey>>) -> Vec<Op> {
        let ops = match changed {
            Some(c) => rec.plan(d, c),
            None => rec.plan_all(d),
        };
        for op in &ops {
            apply_to(rec.mirror_mut(), op);
        }
        // Slots are stable, not sorted: compare as sets (each backend once).
        let sorted = |m: BTreeMap<FrontendKey, Vec<BackendAddr>>| -> BTreeMap<FrontendKey, BTreeSet<(IpAddr, u16)>> {
            m.into_iter()
                .map(|(k, v)| {
                    let set: BTreeSet<(IpAddr, u16)> = v.iter().map(|b| (b.addr, b.port)).collect();
                    assert_eq!(set.len(), v.len(), "a backend in two slots of {k}");
                    (k, set)
                })
                .collect()
        };
        let want: BTreeMap<FrontendKey, Vec<BackendAddr>> = d
            .frontends
            .iter()
            .map(|(k, s)| (*k, s.backends.clone()))
            .collect();
        assert_eq!(sorted(held(rec.mirror())), sorted(want));
        // Nothing dangling: every backend and info entry is used.
        let used: BTreeSet<u32> = rec
            .mirror()
            .services
            .iter()
            .filter(|(k, _)| k.slot() != 0)
            .map(|(_, v)| v.backend_id)
            .collect();
        assert_eq!(used, rec.mirror().backends.keys().copied().collect());
        assert_eq!(rec.mirror().info.len(), d.frontends.len());
        ops
    }

    #[test]
    fn unchanged_state_needs_no_writes() {
        let d = desired(&[(fk(175, 80), &[5, 6, 7])]);
        let mut rec = Reconciler::default();
        run(&mut rec, &d, None);
        assert!(rec.plan_all(&d).is_empty());
    }

    #[test]
    fn backends_that_stay_keep_their_slots() {
        let mut rec = Reconciler::default();
        run(&mut rec, &desired(&[(fk(175, 80), &[5, 6, 7])]), None);
        let slot_of = |rec: &Reconciler, id: u32| {
            rec.mirror()
                .services
                .iter()
                .find(|(k, v)| k.slot() != 0 && v.backend_id == id)
                .map(|(k, _)| k.slot())
        };
        let ids: Vec<u32> = (1..=3)
            .map(|s| rec.mirror().services[&service_key(&fk(175, 80), s)].backend_id)
            .collect();
        // The first leaves: the last moves into its slot, the middle one
        // stays; one slot written, one deleted, the master.
        let ops = run(&mut rec, &desired(&[(fk(175, 80), &[6, 7])]), None);
        assert_eq!(slot_of(&rec, ids[1]), Some(2));
        assert_eq!(slot_of(&rec, ids[2]), Some(1));
        let slot_writes = ops
            .iter()
            .filter(|o| matches!(o, Op::PutService(k, _) if k.slot() != 0))
            .count();
        assert_eq!(slot_writes, 1, "{ops:?}");
        // A new one takes the free slot; the others stay.
        run(&mut rec, &desired(&[(fk(175, 80), &[4, 6, 7])]), None);
        assert_eq!(slot_of(&rec, ids[1]), Some(2));
        assert_eq!(slot_of(&rec, ids[2]), Some(1));
    }

    #[test]
    fn maglev_tables_come_before_the_master_and_go_after_it() {
        let mut d = desired(&[(fk(175, 80), &[5, 6, 7])]);
        let st = d.frontends.get_mut(&fk(175, 80)).unwrap();
        st.scheduler = Scheduler::Maglev(251);
        st.flags |= lb_common::SVC_FLAG_SCHED;
        let mut rec = Reconciler::default();
        let ops = run(&mut rec, &d, None);
        let master = ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot() == 0))
            .unwrap();
        let table: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i], Op::PutMaglev(..) | Op::PutSched(..)))
            .collect();
        assert_eq!(table.len(), 252, "the scheduler and 251 entries");
        assert!(table.iter().all(|&i| i < master));
        // Every entry names a slot in use; all three slots own a share.
        let slots: BTreeSet<u32> = rec.mirror().maglev.values().copied().collect();
        assert_eq!(slots, BTreeSet::from([1, 2, 3]));
        // Nothing to write when nothing changed.
        assert!(rec.plan_all(&d).is_empty());
        // One backend leaves: entries of the others keep their backend
        // (though the last backend's slot number may change).
        let owner = |rec: &Reconciler, i: u32| {
            let slot = rec.mirror().maglev[&MaglevKey {
                svc_id: 1,
                index: i,
            }];
            rec.mirror().services[&service_key(&fk(175, 80), slot as u16)].backend_id
        };
        let before: Vec<u32> = (0..251).map(|i| owner(&rec, i)).collect();
        let leaving = rec.mirror().services[&service_key(&fk(175, 80), 2)].backend_id;
        let mut d2 = desired(&[(fk(175, 80), &[5, 7])]);
        let st = d2.frontends.get_mut(&fk(175, 80)).unwrap();
        st.scheduler = Scheduler::Maglev(251);
        st.flags |= lb_common::SVC_FLAG_SCHED;
        let ops = run(&mut rec, &d2, None);
        assert!(
            ops.iter()
                .filter(|o| matches!(o, Op::PutMaglev(..)))
                .count()
                < 251
        );
        let moved = (0..251u32)
            .filter(|&i| before[i as usize] != leaving && owner(&rec, i) != before[i as usize])
            .count();
        assert!(
            moved <= 251 / 3 / 2,
            "{moved} entries of staying backends moved"
        );
        // Back to random: the table and scheduler go, after the master.
        let ops = run(&mut rec, &desired(&[(fk(175, 80), &[5, 7])]), None);
        let master = ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot() == 0))
            .unwrap();
        let gone: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i], Op::DelMaglev(..) | Op::DelSched(..)))
            .collect();
        assert_eq!(gone.len(), 252);
        assert!(gone.iter().all(|&i| i > master));
        assert!(rec.mirror().maglev.is_empty() && rec.mirror().sched.is_empty());
    }

    #[test]
    fn maglev_tables_take_their_own_blocks_and_move_whole_on_a_size_change() {
        let maglev = |d: &mut Desired, k: &FrontendKey, m: u32| {
            let st = d.frontends.get_mut(k).unwrap();
            st.scheduler = Scheduler::Maglev(m);
            st.flags |= lb_common::SVC_FLAG_SCHED;
        };
        let (a, b) = (fk(175, 80), fk(176, 80));
        let mut d = desired(&[(a, &[5, 6]), (b, &[7])]);
        maglev(&mut d, &a, 251);
        maglev(&mut d, &b, 251);
        let mut rec = Reconciler::default();
        run(&mut rec, &d, None);
        let place = |rec: &Reconciler| -> BTreeSet<(u32, u32)> {
            rec.mirror()
                .sched
                .values()
                .map(|v| (v.base, v.table_size))
                .collect()
        };
        assert_eq!(place(&rec), BTreeSet::from([(0, 251), (251, 251)]));
        assert_eq!(rec.mirror().maglev.len(), 502);
        // `a`'s table grows: written whole into a free block before its
        // scheduler points there, the old block cleared after the master.
        let a_id = rec.mirror().services[&service_key(&a, 0)].svc_id;
        let old_base = rec.mirror().sched[&a_id].base;
        maglev(&mut d, &a, 1021);
        let ops = run(&mut rec, &d, Some(vec![a]));
        let new_base = rec.mirror().sched[&a_id].base;
        assert_eq!(new_base, 502, "past both tables");
        let sched = ops
            .iter()
            .position(|o| matches!(o, Op::PutSched(..)))
            .unwrap();
        let puts: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i], Op::PutMaglev(..)))
            .collect();
        assert_eq!(puts.len(), 1021);
        assert!(puts.iter().all(|&i| i < sched));
        assert!(ops.iter().all(|o| match o {
            Op::DelMaglev(k) => (old_base..old_base + 251).contains(&k.index),
            _ => true,
        }));
        assert_eq!(rec.mirror().maglev.len(), 251 + 1021);
        // The block `a` left is free again: a third table takes it.
        let c = fk(177, 80);
        d.frontends
            .insert(c, desired(&[(c, &[8])]).frontends.remove(&c).unwrap());
        maglev(&mut d, &c, 251);
        run(&mut rec, &d, Some(vec![c]));
        let c_id = rec.mirror().services[&service_key(&c, 0)].svc_id;
        assert_eq!(rec.mirror().sched[&c_id].base, old_base);
    }

    #[test]
    fn affinity_frontends_keep_their_members_slots() {
        let with_affinity = |bs: &[u8], on: bool| {
            let mut d = desired(&[(fk(175, 80), bs)]);
            if on {
                let st = d.frontends.get_mut(&fk(175, 80)).unwrap();
                st.flags |= lb_common::SVC_FLAG_AFFINITY;
                st.affinity_secs = Some(10);
            }
            d
        };
        let mut rec = Reconciler::default();
        run(&mut rec, &with_affinity(&[5, 6, 7], true), None);
        let members = |rec: &Reconciler| -> Vec<(u32, u32)> {
            rec.mirror()
                .members
                .iter()
                .map(|(k, v)| (k.backend_id, *v))
                .collect()
        };
        let slot_ids = |rec: &Reconciler| -> Vec<(u32, u32)> {
            (1..=rec.mirror().services[&service_key(&fk(175, 80), 0)].count)
                .map(|s| {
                    let id = rec.mirror().services[&service_key(&fk(175, 80), s)].backend_id;
                    (id, s as u32)
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        assert_eq!(members(&rec), slot_ids(&rec));
        // The first backend goes: the last moves into its slot, and the
        // members say so before the master does; the gone one goes after.
        let ops = run(&mut rec, &with_affinity(&[6, 7], true), None);
        assert_eq!(members(&rec), slot_ids(&rec));
        let master = ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot() == 0))
            .unwrap();
        for (i, o) in ops.iter().enumerate() {
            match o {
                Op::PutMember(..) => assert!(i < master),
                Op::DelMember(..) => assert!(i > master),
                _ => {}
            }
        }
        // Affinity off: no members.
        run(&mut rec, &with_affinity(&[6, 7], false), None);
        assert!(rec.mirror().members.is_empty());
    }

    #[test]
    fn master_is_written_after_slots_and_backends() {
        let d = desired(&[(fk(175, 80), &[5, 6, 7])]);
        let ops = run(&mut Reconciler::default(), &d, None);
        let master_at = ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot() == 0))
            .unwrap();
        assert_eq!(master_at, ops.len() - 1);
        assert!(matches!(ops[0], Op::PutBackend(..)));
    }

    #[test]
    fn scaling_down_and_up_only_touches_that_service() {
        let d3 = desired(&[(fk(175, 80), &[5, 6, 7]), (fk(9, 53), &[8])]);
        let mut rec = Reconciler::default();
        run(&mut rec, &d3, None);
        let d1 = desired(&[(fk(175, 80), &[5]), (fk(9, 53), &[8])]);
        let ops = run(&mut rec, &d1, Some(vec![fk(175, 80)]));
        // master count 1, slots 2 and 3 removed, backends 6 and 7 removed.
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::DelService(_)))
                .count(),
            2
        );
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::DelBackend(_)))
                .count(),
            2
        );
        assert!(
            !ops.iter()
                .any(|o| matches!(o, Op::PutService(k, _) if frontend_of(k) == Some(fk(9, 53))))
        );
        // Master update comes before the surplus slots go.
        let master = ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot() == 0))
            .unwrap();
        let first_del = ops
            .iter()
            .position(|o| matches!(o, Op::DelService(_)))
            .unwrap();
        assert!(master < first_del);
        let ops = run(&mut rec, &d3, Some(vec![fk(175, 80)]));
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::PutBackend(..)))
                .count(),
            2
        );
    }

    #[test]
    fn shared_backends_stay_while_any_frontend_uses_them() {
        let d = desired(&[(fk(1, 80), &[5, 6]), (fk(2, 80), &[6, 7])]);
        let mut rec = Reconciler::default();
        run(&mut rec, &d, None);
        assert_eq!(
            rec.mirror().backends.len(),
            3,
            "10.244.0.6 is one backend entry"
        );
        // Frontend 1 drops 6 and takes 7, both still used by frontend 2.
        let d2 = desired(&[(fk(1, 80), &[5, 7]), (fk(2, 80), &[6, 7])]);
        let ops = run(&mut rec, &d2, Some(vec![fk(1, 80)]));
        assert!(
            !ops.iter()
                .any(|o| matches!(o, Op::DelBackend(_) | Op::PutBackend(..))),
            "{ops:?}"
        );
        let d3 = desired(&[(fk(1, 80), &[5, 7])]);
        let ops = run(&mut rec, &d3, Some(vec![fk(2, 80)]));
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::DelBackend(_)))
                .count(),
            1
        );
    }

    #[test]
    fn ids_survive_a_restart_and_orphans_are_collected() {
        let d = desired(&[(fk(175, 80), &[5, 6, 7])]);
        let mut rec = Reconciler::default();
        run(&mut rec, &d, None);
        // A new agent reads the maps back: nothing to write.
        let mut maps = rec.mirror().clone();
        let mut again = Reconciler::new(maps.clone());
        assert!(again.plan_all(&d).is_empty());
        // Leftovers nobody refers to are removed by the next plan: a
        // backend, an info entry, a slot past its master's count.
        maps.backends.insert(99, backend_entry(&be(99), Proto::Tcp));
        maps.info.insert(42, info_entry("gone"));
        let stray = service_key(&fk(175, 80), 4);
        maps.services.insert(
            stray,
            ServiceValue {
                backend_id: 99,
                count: 0,
                flags: SVC_FLAG_NONE,
                svc_id: 1,
            },
        );
        let mut adopt = Reconciler::new(maps);
        let ops = run(&mut adopt, &d, None);
        assert_eq!(
            ops,
            vec![Op::DelService(stray), Op::DelInfo(42), Op::DelBackend(99)]
        );
    }

    #[test]
    fn a_failed_write_keeps_the_frontend_on_its_old_master() {
        let d = desired(&[(fk(1, 80), &[5]), (fk(2, 80), &[6])]);
        let mut rec = Reconciler::default();
        run(&mut rec, &d, None);
        // Frontend 1 grows to two backends, frontend 2 is removed; the new
        // backend entry cannot be written (its map is full).
        let d2 = desired(&[(fk(1, 80), &[5, 7])]);
        let ops = rec.plan(&d2, [fk(1, 80), fk(2, 80)]);
        assert!(
            matches!(ops[0], Op::DelService(k) if k.slot() == 0),
            "removals first: {ops:?}"
        );
        let mut guard = Guard::default();
        let mut written = Vec::new();
        for op in &ops {
            let fails = matches!(op, Op::PutBackend(..));
            if !guard.allows(op) || fails {
                guard.not_written(op);
                continue;
            }
            written.push(op.clone());
            apply_to(rec.mirror_mut(), op);
        }
        // Frontend 1 still reads its old, complete state: count 1, slot 1.
        let m = rec.mirror().services[&service_key(&fk(1, 80), 0)];
        assert_eq!(m.count, 1);
        assert!(
            !written
                .iter()
                .any(|o| matches!(o, Op::PutService(k, _) if frontend_of(k) == Some(fk(1, 80))))
        );
        // Frontend 2 was removed before the failure; nothing else deleted after it.
        assert!(
            !rec.mirror()
                .services
                .contains_key(&service_key(&fk(2, 80), 0))
        );
        assert!(!written.iter().any(|o| matches!(o, Op::DelBackend(_))));
        // Next time, with room, it converges from the mirror.
        rec.resync();
        run(&mut rec, &d2, None);
    }

    #[test]
    fn a_frontend_whose_master_never_landed_is_completed() {
        // A plan stopped before the master (a full map): its slots are in
        // the maps, counted by no master.
        let d = desired(&[(fk(175, 80), &[5, 6, 7])]);
        let mut rec = Reconciler::default();
        for op in rec.plan_all(&d) {
            if !matches!(op, Op::PutService(k, _) if k.slot() == 0) {
                apply_to(rec.mirror_mut(), &op);
            }
        }
        rec.resync();
        // The next plan keeps those slots for the frontend, and writes the master.
        let ops = run(&mut rec, &d, None);
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert!(matches!(ops[0], Op::PutService(k, _) if k.slot() == 0));
    }

    #[test]
    fn removed_frontend_loses_master_first() {
        let d = desired(&[(fk(175, 80), &[5, 6])]);
        let mut rec = Reconciler::default();
        run(&mut rec, &d, None);
        let ops = run(&mut rec, &Desired::default(), Some(vec![fk(175, 80)]));
        assert!(matches!(ops[0], Op::DelService(k) if k.slot() == 0));
        assert!(matches!(ops.last(), Some(Op::DelBackend(_))));
    }
}
