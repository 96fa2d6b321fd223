//! The address families. Every stage (conntrack, service lookup, SNAT,
//! NAT, FIB) is written once, generic over the address type; what differs
//! per family lives here: the maps of its layouts, where its header keeps
//! addresses and hop count, and how its addresses enter a checksum.
use aya_ebpf::bindings::bpf_fib_lookup;
use lb_common::{Config, In6, NodeAddrKey};

use crate::checksum::delta32;
use crate::maps::{
    BACKENDS, BACKENDS6, BackendsMap, CONNTRACK, CONNTRACK6, ConntrackMap, SERVICES, SERVICES6,
    SNAT, SNAT6, ServicesMap, SnatMap, WORK4, WORK6,
};
use crate::work::Work;

/// An address family, implemented by its address type: `u32` (IPv4) and
/// [`In6`] (IPv6), both in network order as on the wire.
pub trait Family: Copy + PartialEq + 'static {
    /// The unspecified address (a NodePort frontend's key).
    const ZERO: Self;
    /// The source of hairpin flows (`lb_common::HAIRPIN_V4`, `_V6`).
    const HAIRPIN: Self;
    const IS_V6: bool;
    /// Offsets from the IP header: source and destination address (the
    /// destination right after the source in both), hop count.
    const SRC_OFF: usize;
    const DST_OFF: usize;
    const TTL_OFF: usize;
    /// The fixed header's length.
    const HDR_LEN: usize;

    fn services() -> &'static ServicesMap<Self>;
    fn backends() -> &'static BackendsMap<Self>;
    fn conntrack() -> &'static ConntrackMap<Self>;
    fn snat() -> &'static SnatMap<Self>;
    /// This CPU's work area (see `work`).
    fn work() -> Option<*mut Work<Self>>;

    /// The family-independent key of the node address and source range
    /// maps (IPv4 v4-mapped).
    fn mapped(self) -> NodeAddrKey;
    /// What a checksum gains when address `old` becomes `new` (the
    /// one's-complement sum of native-order words, see `checksum`).
    fn delta(old: Self, new: Self) -> u32;
    /// The address SNATed flows of this family leave with, if known.
    fn snat_addr(cfg: &Config) -> Option<Self>;
    /// The address as IPv4, for what exists for IPv4 only (DSR's IPIP).
    fn v4(self) -> Option<u32>;
    /// Fills a FIB lookup's family, addresses and IPv4 TOS or IPv6 flow
    /// information.
    fn fib_addrs(fib: &mut bpf_fib_lookup, src: Self, dst: Self, tos: u32);
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

impl Family for u32 {
    const ZERO: Self = 0;
    const HAIRPIN: Self = lb_common::HAIRPIN_V4;
    const IS_V6: bool = false;
    const SRC_OFF: usize = 12;
    const DST_OFF: usize = 16;
    const TTL_OFF: usize = 8;
    const HDR_LEN: usize = 20;

    #[inline(always)]
    fn services() -> &'static ServicesMap<Self> {
        &SERVICES
    }
    #[inline(always)]
    fn backends() -> &'static BackendsMap<Self> {
        &BACKENDS
    }
    #[inline(always)]
    fn conntrack() -> &'static ConntrackMap<Self> {
        &CONNTRACK
    }
    #[inline(always)]
    fn snat() -> &'static SnatMap<Self> {
        &SNAT
    }
    #[inline(always)]
    fn work() -> Option<*mut Work<Self>> {
        WORK4.get_ptr_mut(0)
    }
    #[inline(always)]
    fn mapped(self) -> NodeAddrKey {
        NodeAddrKey::v4(self)
    }
    #[inline(always)]
    fn delta(old: Self, new: Self) -> u32 {
        delta32(old, new)
    }
    #[inline(always)]
    fn snat_addr(cfg: &Config) -> Option<Self> {
        (cfg.snat_v4 != 0).then_some(cfg.snat_v4)
    }
    #[inline(always)]
    fn v4(self) -> Option<u32> {
        Some(self)
    }
    #[inline(always)]
    fn fib_addrs(fib: &mut bpf_fib_lookup, src: Self, dst: Self, tos: u32) {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = tos as u8;
        fib.__bindgen_anon_3.ipv4_src = src;
        fib.__bindgen_anon_4.ipv4_dst = dst;
    }
}

impl Family for In6 {
    const ZERO: Self = [0; 4];
    const HAIRPIN: Self = lb_common::HAIRPIN_V6;
    const IS_V6: bool = true;
    const SRC_OFF: usize = 8;
    const DST_OFF: usize = 24;
    const TTL_OFF: usize = 7;
    const HDR_LEN: usize = 40;

    #[inline(always)]
    fn services() -> &'static ServicesMap<Self> {
        &SERVICES6
    }
    #[inline(always)]
    fn backends() -> &'static BackendsMap<Self> {
        &BACKENDS6
    }
    #[inline(always)]
    fn conntrack() -> &'static ConntrackMap<Self> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn snat() -> &'static SnatMap<Self> {
        &SNAT6
    }
    #[inline(always)]
    fn work() -> Option<*mut Work<Self>> {
        WORK6.get_ptr_mut(0)
    }
    #[inline(always)]
    fn mapped(self) -> NodeAddrKey {
        NodeAddrKey { addr: self }
    }
    #[inline(always)]
    fn delta(old: Self, new: Self) -> u32 {
        delta32(old[0], new[0])
            + delta32(old[1], new[1])
            + delta32(old[2], new[2])
            + delta32(old[3], new[3])
    }
    #[inline(always)]
    fn snat_addr(cfg: &Config) -> Option<Self> {
        (cfg.snat_v6 != [0; 4]).then_some(cfg.snat_v6)
    }
    #[inline(always)]
    fn v4(self) -> Option<u32> {
        None
    }
    #[inline(always)]
    fn fib_addrs(fib: &mut bpf_fib_lookup, src: Self, dst: Self, tos: u32) {
        fib.family = AF_INET6;
        fib.__bindgen_anon_2.flowinfo = tos;
        fib.__bindgen_anon_3.ipv6_src = src;
        fib.__bindgen_anon_4.ipv6_dst = dst;
    }
}
