//! Service lookup and backend selection.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    BackendOf, Config, CtValueOf, SOURCE_RANGE_FIXED_BITS, SVC_FLAG_SOURCE_RANGES, ServiceKeyOf,
    ServiceValue, SourceRangeKey,
};

use crate::family::Family;
use crate::maps::{CONFIG, NODE_ADDRS, SOURCE_RANGES};
use crate::{affinity, sched};
use aya_ebpf::maps::lpm_trie::Key;

/// A frontend's master entry, as found in the services map.
#[derive(Clone, Copy)]
pub struct Frontend<A = u32> {
    /// The key's address: the VIP, or 0 for a NodePort frontend (served
    /// on every node address).
    pub addr: A,
    pub port: u16,
    pub proto: u8,
    pub count: u16,
    pub flags: u16,
    pub svc_id: u32,
    /// Session affinity timeout in clock ticks; 0: none.
    pub affinity: u32,
}

/// Looks up the master entry of VIP:port/proto.
#[inline(always)]
pub fn lookup_frontend<A: Family>(addr: A, port: u16, proto: u8) -> Option<Frontend<A>> {
    let v: &ServiceValue = unsafe { A::services().get(ServiceKeyOf::new(addr, port, 0, proto)) }?;
    Some(Frontend {
        addr,
        port,
        proto,
        count: v.count,
        flags: v.flags,
        svc_id: v.svc_id,
        affinity: v.affinity_ticks(),
    })
}

/// The node-wide settings, if the agent wrote them.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// The frontend a packet to `addr:port` reaches: a VIP's, or a NodePort's
/// when `addr` is one of this node's addresses and `port` is in the
/// NodePort range (checked first: an array read, so traffic that is no
/// Service's pays no hash lookup for it).
#[inline(always)]
pub fn lookup<A: Family>(addr: A, port: u16, proto: u8) -> Option<Frontend<A>> {
    if let Some(fe) = lookup_frontend(addr, port, proto) {
        return Some(fe);
    }
    let cfg = config()?;
    let host_port = u16::from_be(port);
    if host_port < cfg.nodeport_min || host_port > cfg.nodeport_max {
        return None;
    }
    unsafe { NODE_ADDRS.get(addr.mapped()) }?;
    // The wildcard entry (address 0); replies use the address the client
    // asked for, from the packet.
    lookup_frontend(A::ZERO, port, proto)
}

/// True when `saddr` may reach `fe` under its `loadBalancerSourceRanges`
/// (always, for a frontend without them).
#[inline(always)]
pub fn source_allowed<A: Family>(fe: &Frontend<A>, daddr: A, saddr: A) -> bool {
    if fe.flags & SVC_FLAG_SOURCE_RANGES == 0 {
        return true;
    }
    let frontend = if fe.addr == A::ZERO {
        [0; 4]
    } else {
        daddr.mapped().addr
    };
    let key = Key::new(
        SOURCE_RANGE_FIXED_BITS + 128,
        SourceRangeKey {
            port: fe.port,
            proto: fe.proto,
            _pad: 0,
            frontend,
            source: saddr.mapped().addr,
        },
    );
    SOURCE_RANGES.get(key).is_some()
}

/// True while the backend a tracked flow was given still exists for the
/// same frontend. Checked on SYNs only: a new connection that reuses a
/// closed flow's tuple must not follow it to a backend that is gone.
#[inline(always)]
pub fn still_serves<A: Family>(fe: &Frontend<A>, ct: &CtValueOf<A>) -> bool {
    ct.svc_id == fe.svc_id
        && unsafe { A::backends().get(ct.backend_id) }
            .is_some_and(|b| b.addr == ct.addr && b.port == ct.port)
}

/// Who a new flow comes from, for session affinity: an address (packets)
/// or a network namespace (sockets), as [`lb_common::AffinityKey`] keeps
/// them.
pub struct Client {
    pub scope: u32,
    pub id: [u32; 4],
}

/// What the choice of a new flow's backend may depend on, computed only
/// when the frontend's scheduler asks for it.
pub trait Origin {
    /// Who a session binds (session affinity, source hashing).
    fn client(&self) -> Client;
    /// Maglev's hash of the flow.
    fn flow_hash(&self) -> u32;
    /// A hash of the destination address (dest-hash).
    fn dst_hash(&self) -> u32;
}

/// Picks the backend of a new flow from `o`: the one its session holds,
/// for a frontend with session affinity, else the frontend's scheduler's
/// choice (random by default, as kube-proxy's `statistic --mode random`
/// chains). Returns the backend id and its address.
#[inline(always)]
pub fn select_backend<A: Family, O: Origin>(
    fe: &Frontend<A>,
    o: &O,
) -> Option<(u32, BackendOf<A>)> {
    if fe.count == 0 {
        return None;
    }
    if fe.affinity != 0 {
        return affinity::select(fe, o);
    }
    at_slot(fe, sched::pick(fe, o)?)
}

/// One of slots 1..=count with equal probability. The count is checked
/// here: read back from map memory after a helper call, the compiler
/// cannot know it is not zero, and a division by zero would be a panic.
#[inline(always)]
pub fn random_slot(count: u16) -> Option<u16> {
    let r = unsafe { bpf_get_prandom_u32() };
    r.checked_rem(count as u32).map(|s| s as u16 + 1)
}

/// The backend in slot `slot` of `fe`: its id and address.
#[inline(always)]
pub fn at_slot<A: Family>(fe: &Frontend<A>, slot: u16) -> Option<(u32, BackendOf<A>)> {
    let v: &ServiceValue =
        unsafe { A::services().get(ServiceKeyOf::new(fe.addr, fe.port, slot, fe.proto)) }?;
    let id = v.backend_id;
    let be: &BackendOf<A> = unsafe { A::backends().get(id) }?;
    Some((id, *be))
}
