//! The maps, declared once. Names and layouts come from `lb-common`; the
//! `name` literals must equal the `lb_common::MAP_*` constants (the agent
//! looks maps up by those constants and fails loudly if one is missing).
use crate::parse::Packet;
use crate::work::Work;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, Backend6, Config, CtKey, CtKey6, CtValue, CtValue6,
    DEFAULT_AFFINITY_MAX, DEFAULT_BACKENDS_MAX, DEFAULT_CONNTRACK_MAX, DEFAULT_MAGLEV_MAX,
    DEFAULT_SERVICES_MAX, DEFAULT_SNAT_MAX, DEFAULT_SOCK_REVNAT_MAX, DEFAULT_SVC_INFO_MAX, In6,
    MemberKey, NODE_ADDRS_MAX, NatValue, NatValue6, NodeAddrKey, SOURCE_RANGES_MAX, STAT_SLOTS,
    SchedValue, ServiceKey, ServiceKey6, ServiceValue, SockKey, SockKey6, SockValue, SockValue6,
    SourceRangeKey, SvcCounters, SvcInfo,
};

#[map(name = "flb_svc_v1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(DEFAULT_SERVICES_MAX, 0);

#[map(name = "flb_be_v1")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(DEFAULT_BACKENDS_MAX, 0);

#[map(name = "flb_ct_v2")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(DEFAULT_CONNTRACK_MAX, 0);

#[map(name = "flb_sock_v1")]
pub static SOCK_REVNAT: LruHashMap<SockKey, SockValue> =
    LruHashMap::pinned(DEFAULT_SOCK_REVNAT_MAX, 0);

// Read by the CLI only; declared here so it is created and pinned with the rest.
#[map(name = "flb_info_v1")]
pub static SVC_INFO: HashMap<u32, SvcInfo> = HashMap::pinned(DEFAULT_SVC_INFO_MAX, 0);

#[map(name = "flb_stats_v2")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_SLOTS, 0);

/// Sized by the agent as the info map (one entry per frontend id).
#[map(name = "flb_svcstats_v1")]
pub static SVC_STATS: PerCpuArray<SvcCounters> = PerCpuArray::pinned(DEFAULT_SVC_INFO_MAX, 0);

#[map(name = "flb_nodeaddr_v1")]
pub static NODE_ADDRS: HashMap<NodeAddrKey, u32> = HashMap::pinned(NODE_ADDRS_MAX, 0);

#[map(name = "flb_snat_v1")]
pub static SNAT: LruHashMap<CtKey, NatValue> = LruHashMap::pinned(DEFAULT_SNAT_MAX, 0);

#[map(name = "flb_cfg_v1")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "flb_srcrange_v1")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> = LpmTrie::pinned(SOURCE_RANGES_MAX, 0);

#[map(name = "flb_aff_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_AFFINITY_MAX, 0);

#[map(name = "flb_sched_v2")]
pub static SCHED: HashMap<u32, SchedValue> = HashMap::pinned(DEFAULT_SVC_INFO_MAX, 0);

/// Every Maglev table, one after another (4 MB at the default size).
#[map(name = "flb_maglev_v2")]
pub static MAGLEV: Array<u32> = Array::pinned(DEFAULT_MAGLEV_MAX, 0);

/// One entry per backend slot of a frontend with affinity: sized as the
/// services maps.
#[map(name = "flb_member_v1")]
pub static MEMBERS: HashMap<MemberKey, u32> = HashMap::pinned(DEFAULT_SERVICES_MAX, 0);

/// Sized as the backends maps: indexed by backend id.
#[map(name = "flb_lc_v1")]
pub static LEAST_CONN: Array<u64> = Array::pinned(DEFAULT_BACKENDS_MAX, 0);

#[map(name = "flb_lcsock_v1")]
pub static LC_SOCK: LruHashMap<u64, u32> = LruHashMap::pinned(DEFAULT_SOCK_REVNAT_MAX, 0);

// The IPv6 layouts, sized as their IPv4 counterparts (the agent's size
// flags set both).
#[map(name = "flb_svc6_v1")]
pub static SERVICES6: HashMap<ServiceKey6, ServiceValue> = HashMap::pinned(DEFAULT_SERVICES_MAX, 0);

#[map(name = "flb_be6_v1")]
pub static BACKENDS6: HashMap<u32, Backend6> = HashMap::pinned(DEFAULT_BACKENDS_MAX, 0);

#[map(name = "flb_ct6_v1")]
pub static CONNTRACK6: LruHashMap<CtKey6, CtValue6> = LruHashMap::pinned(DEFAULT_CONNTRACK_MAX, 0);

#[map(name = "flb_sock6_v1")]
pub static SOCK_REVNAT6: LruHashMap<SockKey6, SockValue6> =
    LruHashMap::pinned(DEFAULT_SOCK_REVNAT_MAX, 0);

#[map(name = "flb_snat6_v1")]
pub static SNAT6: LruHashMap<CtKey6, NatValue6> = LruHashMap::pinned(DEFAULT_SNAT_MAX, 0);

// Per-CPU work areas (see `work`), never pinned. The IPv6 packet being
// handled lives there too: off the stack, and handed on by tail call.
#[map(name = "flb_pkt6")]
pub static PKT6: PerCpuArray<Packet<In6>> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "flb_work4")]
pub static WORK4: PerCpuArray<Work<u32>> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "flb_work6")]
pub static WORK6: PerCpuArray<Work<In6>> = PerCpuArray::with_max_entries(1, 0);
