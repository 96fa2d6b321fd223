//! Desired state -> map entries -> the ordered writes that turn what the
//! maps hold into that. Pure: no syscalls here, so it is unit-tested
//! without a kernel; `datapath::maps` executes the plan.
//!
//! Write order keeps every intermediate state valid for a reader:
//! backends first, then a frontend's slots, then its master entry (the
//! commit point), then surplus slots; removed frontends lose their master
//! first; unused backends go last.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use lb_common::{
    Backend, SVC_FLAG_NONE, SVC_NAME_LEN, ServiceKey, ServiceValue, SvcInfo, ipv4_from_net,
    ipv4_to_net, port_from_net, port_to_net,
};

use crate::model::{BackendAddr, Desired, FrontendKey, Proto};

/// What the maps hold (or should hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub info: BTreeMap<u32, SvcInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    PutInfo(u32, SvcInfo),
    PutService(ServiceKey, ServiceValue),
    DelService(ServiceKey),
    DelInfo(u32),
    DelBackend(u32),
}

pub fn service_key(fk: &FrontendKey, slot: u16) -> ServiceKey {
    ServiceKey {
        addr: ipv4_to_net(fk.addr.octets()),
        port: port_to_net(fk.port),
        slot,
        proto: fk.proto.number(),
        _pad: [0; 3],
    }
}

/// The frontend a map key belongs to.
pub fn frontend_of(k: &ServiceKey) -> Option<FrontendKey> {
    Some(FrontendKey {
        addr: Ipv4Addr::from(ipv4_from_net(k.addr)),
        port: port_from_net(k.port),
        proto: Proto::from_number(k.proto)?,
    })
}

pub fn backend_entry(b: &BackendAddr, proto: Proto) -> Backend {
    Backend {
        addr: ipv4_to_net(b.addr.octets()),
        port: port_to_net(b.port),
        proto: proto.number(),
        flags: 0,
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
struct IdAllocator {
    used: BTreeSet<u32>,
    next: u32,
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
}

/// The map contents for `desired`, reusing the ids `current` already
/// gave to frontends and backends so unchanged entries stay identical.
pub fn target(desired: &Desired, current: &MapState) -> MapState {
    // Reuse existing ids only for what is still wanted.
    let mut be_ids: BTreeMap<Backend, u32> = BTreeMap::new();
    for (id, b) in &current.backends {
        be_ids.entry(*b).or_insert(*id);
    }
    let wanted_backends: BTreeSet<Backend> = desired
        .frontends
        .iter()
        .flat_map(|(fk, st)| st.backends.iter().map(|b| backend_entry(b, fk.proto)))
        .collect();
    be_ids.retain(|b, _| wanted_backends.contains(b));
    let mut be_alloc = IdAllocator::new(be_ids.values().copied().collect());

    let mut svc_ids: BTreeMap<FrontendKey, u32> = BTreeMap::new();
    for (k, v) in &current.services {
        if k.slot == 0
            && let Some(fk) = frontend_of(k)
            && desired.frontends.contains_key(&fk)
        {
            svc_ids.insert(fk, v.svc_id);
        }
    }
    let mut svc_alloc = IdAllocator::new(svc_ids.values().copied().collect());

    let mut out = MapState::default();
    for (fk, st) in &desired.frontends {
        let svc_id = *svc_ids.entry(*fk).or_insert_with(|| svc_alloc.take());
        let mut count: u16 = 0;
        for b in st
            .backends
            .iter()
            .take(lb_common::MAX_BACKENDS_PER_SERVICE as usize)
        {
            let entry = backend_entry(b, fk.proto);
            let id = *be_ids.entry(entry).or_insert_with(|| be_alloc.take());
            out.backends.insert(id, entry);
            count += 1;
            out.services.insert(
                service_key(fk, count),
                ServiceValue {
                    backend_id: id,
                    count: 0,
                    flags: SVC_FLAG_NONE,
                    svc_id,
                },
            );
        }
        out.services.insert(
            service_key(fk, 0),
            ServiceValue {
                backend_id: 0,
                count,
                flags: SVC_FLAG_NONE,
                svc_id,
            },
        );
        out.info.insert(svc_id, info_entry(&st.name));
    }
    out
}

/// The writes that turn `current` into `target`, in a reader-safe order.
pub fn plan(current: &MapState, target: &MapState) -> Vec<Op> {
    let mut ops = Vec::new();
    for (id, b) in &target.backends {
        if current.backends.get(id) != Some(b) {
            ops.push(Op::PutBackend(*id, *b));
        }
    }
    for (id, i) in &target.info {
        if current.info.get(id) != Some(i) {
            ops.push(Op::PutInfo(*id, *i));
        }
    }
    // Group slots by frontend: BTreeMap order puts slot 0 first per frontend.
    let by_frontend = |m: &BTreeMap<ServiceKey, ServiceValue>| {
        let mut g: BTreeMap<(u32, u16, u8), Vec<(ServiceKey, ServiceValue)>> = BTreeMap::new();
        for (k, v) in m {
            g.entry((k.addr, k.port, k.proto))
                .or_default()
                .push((*k, *v));
        }
        g
    };
    let cur = by_frontend(&current.services);
    let tgt = by_frontend(&target.services);
    for (fe, slots) in &tgt {
        let (master, rest) = slots.split_first().expect("frontend has a master slot");
        for (k, v) in rest {
            if current.services.get(k) != Some(v) {
                ops.push(Op::PutService(*k, *v));
            }
        }
        if current.services.get(&master.0) != Some(&master.1) {
            ops.push(Op::PutService(master.0, master.1));
        }
        if let Some(old) = cur.get(fe) {
            for (k, _) in old {
                if !target.services.contains_key(k) {
                    ops.push(Op::DelService(*k));
                }
            }
        }
    }
    for (fe, slots) in &cur {
        if !tgt.contains_key(fe) {
            // Master (slot 0) sorts first: the frontend disappears atomically.
            for (k, _) in slots {
                ops.push(Op::DelService(*k));
            }
        }
    }
    for id in current.info.keys() {
        if !target.info.contains_key(id) {
            ops.push(Op::DelInfo(*id));
        }
    }
    for id in current.backends.keys() {
        if !target.backends.contains_key(id) {
            ops.push(Op::DelBackend(*id));
        }
    }
    ops
}

/// Applies `op` to an in-memory state (the mirror of what the maps hold).
pub fn apply_to(state: &mut MapState, op: &Op) {
    match op {
        Op::PutBackend(id, b) => {
            state.backends.insert(*id, *b);
        }
        Op::PutInfo(id, i) => {
            state.info.insert(*id, *i);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FrontendState;

    fn fk(last: u8, port: u16) -> FrontendKey {
        FrontendKey {
            addr: Ipv4Addr::new(10, 0, 1, last),
            port,
            proto: Proto::Tcp,
        }
    }

    fn be(last: u8) -> BackendAddr {
        BackendAddr {
            addr: Ipv4Addr::new(10, 244, 0, last),
            port: 9376,
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
                },
            );
        }
        d
    }

    fn run(current: &MapState, d: &Desired) -> (MapState, Vec<Op>) {
        let t = target(d, current);
        let ops = plan(current, &t);
        let mut after = current.clone();
        for op in &ops {
            apply_to(&mut after, op);
        }
        assert_eq!(after, t, "plan must reach the target");
        (t, ops)
    }

    #[test]
    fn unchanged_state_needs_no_writes() {
        let d = desired(&[(fk(175, 80), &[5, 6, 7])]);
        let (t, _) = run(&MapState::default(), &d);
        let (_, ops) = run(&t, &d);
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn master_is_written_after_slots_and_backends() {
        let d = desired(&[(fk(175, 80), &[5, 6, 7])]);
        let (_, ops) = run(&MapState::default(), &d);
        let master_at = ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot == 0))
            .unwrap();
        assert_eq!(master_at, ops.len() - 1);
        assert!(matches!(ops[0], Op::PutBackend(..)));
    }

    #[test]
    fn scaling_down_and_up_only_touches_that_service() {
        let d3 = desired(&[(fk(175, 80), &[5, 6, 7]), (fk(9, 53), &[8])]);
        let (t3, _) = run(&MapState::default(), &d3);
        let d1 = desired(&[(fk(175, 80), &[5]), (fk(9, 53), &[8])]);
        let (t1, ops) = run(&t3, &d1);
        // master count 1, slots 2 and 3 removed, backends 6 and 7 removed.
        assert!(ops.contains(&Op::PutService(
            service_key(&fk(175, 80), 0),
            t1.services[&service_key(&fk(175, 80), 0)]
        )));
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
        assert!(!ops.iter().any(
            |o| matches!(o, Op::PutService(k, _) if k.addr == service_key(&fk(9, 53), 0).addr)
        ));
        // Master update comes before the surplus slots go.
        let master = ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot == 0))
            .unwrap();
        let first_del = ops
            .iter()
            .position(|o| matches!(o, Op::DelService(_)))
            .unwrap();
        assert!(master < first_del);
        let (_, ops) = run(&t1, &d3);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::PutBackend(..)))
                .count(),
            2
        );
    }

    #[test]
    fn ids_survive_a_restart() {
        let d = desired(&[(fk(175, 80), &[5, 6, 7])]);
        let (t, _) = run(&MapState::default(), &d);
        // A new agent reads the maps back and computes the same target.
        assert_eq!(target(&d, &t), t);
    }

    #[test]
    fn removed_frontend_loses_master_first() {
        let d = desired(&[(fk(175, 80), &[5, 6])]);
        let (t, _) = run(&MapState::default(), &d);
        let (_, ops) = run(&t, &Desired::default());
        assert!(matches!(ops[0], Op::DelService(k) if k.slot == 0));
        assert!(matches!(ops.last(), Some(Op::DelBackend(_))));
    }
}
