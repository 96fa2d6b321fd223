//! The maps, declared once. Names and layouts come from `lb-common`; the
//! `name` literals must equal the `lb_common::MAP_*` constants (the agent
//! looks maps up by those constants and fails loudly if one is missing).
use crate::btf_map::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray};
use crate::events::Event;
use crate::parse::Packet;
use crate::work::Work;
use aya_ebpf::macros::{btf_map, map};
use lb_common::{
    AffinityKey, AffinityValue, BackendOf, Config, CtKeyOf, CtValueOf, DEFAULT_AFFINITY_MAX,
    DEFAULT_BACKENDS_MAX, DEFAULT_CONNTRACK_MAX, DEFAULT_MAGLEV_MAX, DEFAULT_SERVICES_MAX,
    DEFAULT_SNAT_MAX, DEFAULT_SOCK_REVNAT_MAX, DEFAULT_SVC_INFO_MAX, In6, MemberKey,
    NODE_ADDRS_MAX, NatValueOf, NodeAddrKey, SOURCE_RANGES_MAX, STAT_SLOTS, SchedValue,
    ServiceKeyOf, ServiceValue, SockKey, SockKey6, SockValue, SockValue6, SourceRangeKey,
    SvcCounters, SvcInfo,
};

// The layouts both families share, by the family's address type (see
// `family`): their sizes are the same for both.
pub type ServicesMap<A> = HashMap<ServiceKeyOf<A>, ServiceValue, { DEFAULT_SERVICES_MAX as usize }>;
pub type BackendsMap<A> = HashMap<u32, BackendOf<A>, { DEFAULT_BACKENDS_MAX as usize }>;
pub type ConntrackMap<A> = LruHashMap<CtKeyOf<A>, CtValueOf<A>, { DEFAULT_CONNTRACK_MAX as usize }>;
pub type SnatMap<A> = LruHashMap<CtKeyOf<A>, NatValueOf<A>, { DEFAULT_SNAT_MAX as usize }>;
pub type SockRevnatMap<K, V> = LruHashMap<K, V, { DEFAULT_SOCK_REVNAT_MAX as usize }>;

#[btf_map(name = "flb_svc_v1")]
pub static SERVICES: ServicesMap<u32> = HashMap::new();

#[btf_map(name = "flb_be_v1")]
pub static BACKENDS: BackendsMap<u32> = HashMap::new();

#[btf_map(name = "flb_ct_v2")]
pub static CONNTRACK: ConntrackMap<u32> = LruHashMap::new();

#[btf_map(name = "flb_sock_v1")]
pub static SOCK_REVNAT: SockRevnatMap<SockKey, SockValue> = LruHashMap::new();

// Read by the CLI only; declared here so it is created and pinned with the rest.
#[btf_map(name = "flb_info_v1")]
pub static SVC_INFO: HashMap<u32, SvcInfo, { DEFAULT_SVC_INFO_MAX as usize }> = HashMap::new();

#[btf_map(name = "flb_stats_v2")]
pub static STATS: PerCpuArray<u64, { STAT_SLOTS as usize }> = PerCpuArray::new();

/// Sized by the agent as the info map (one entry per frontend id).
#[btf_map(name = "flb_svcstats_v1")]
pub static SVC_STATS: PerCpuArray<SvcCounters, { DEFAULT_SVC_INFO_MAX as usize }> =
    PerCpuArray::new();

#[btf_map(name = "flb_nodeaddr_v1")]
pub static NODE_ADDRS: HashMap<NodeAddrKey, u32, { NODE_ADDRS_MAX as usize }> = HashMap::new();

#[btf_map(name = "flb_snat_v1")]
pub static SNAT: SnatMap<u32> = LruHashMap::new();

#[btf_map(name = "flb_cfg_v1")]
pub static CONFIG: Array<Config, 1> = Array::new();

#[btf_map(name = "flb_srcrange_v1")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32, { SOURCE_RANGES_MAX as usize }> =
    LpmTrie::new();

#[btf_map(name = "flb_aff_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { DEFAULT_AFFINITY_MAX as usize }> =
    LruHashMap::new();

#[btf_map(name = "flb_sched_v2")]
pub static SCHED: HashMap<u32, SchedValue, { DEFAULT_SVC_INFO_MAX as usize }> = HashMap::new();

/// Every Maglev table, one after another (4 MB at the default size).
#[btf_map(name = "flb_maglev_v2")]
pub static MAGLEV: Array<u32, { DEFAULT_MAGLEV_MAX as usize }> = Array::new();

/// One entry per backend slot of a frontend with affinity: sized as the
/// services maps.
#[btf_map(name = "flb_member_v1")]
pub static MEMBERS: HashMap<MemberKey, u32, { DEFAULT_SERVICES_MAX as usize }> = HashMap::new();

/// Sized as the backends maps: indexed by backend id.
#[btf_map(name = "flb_lc_v1")]
pub static LEAST_CONN: Array<u64, { DEFAULT_BACKENDS_MAX as usize }> = Array::new();

#[btf_map(name = "flb_lcsock_v1")]
pub static LC_SOCK: LruHashMap<u64, u32, { DEFAULT_SOCK_REVNAT_MAX as usize }> = LruHashMap::new();

// The IPv6 layouts, sized as their IPv4 counterparts (the agent's size
// flags set both).
#[btf_map(name = "flb_svc6_v1")]
pub static SERVICES6: ServicesMap<In6> = HashMap::new();

#[btf_map(name = "flb_be6_v1")]
pub static BACKENDS6: BackendsMap<In6> = HashMap::new();

#[btf_map(name = "flb_ct6_v1")]
pub static CONNTRACK6: ConntrackMap<In6> = LruHashMap::new();

#[btf_map(name = "flb_sock6_v1")]
pub static SOCK_REVNAT6: SockRevnatMap<SockKey6, SockValue6> = LruHashMap::new();

#[btf_map(name = "flb_snat6_v1")]
pub static SNAT6: SnatMap<In6> = LruHashMap::new();

// Per-CPU work areas (see `work`), never pinned (nor dumped: no BTF). The
// IPv6 packet being handled lives there too: off the stack, and handed on
// by tail call.
#[map(name = "flb_pkt6")]
pub static PKT6: aya_ebpf::maps::PerCpuArray<Packet<In6>> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

#[map(name = "flb_work4")]
pub static WORK4: aya_ebpf::maps::PerCpuArray<Work<u32>> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

#[map(name = "flb_work6")]
pub static WORK6: aya_ebpf::maps::PerCpuArray<Work<In6>> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

// This CPU's datapath event being logged (see `events`), never pinned.
#[map(name = "flb_event4")]
pub static EVENT4: aya_ebpf::maps::PerCpuArray<Event<u32>> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

#[map(name = "flb_event6")]
pub static EVENT6: aya_ebpf::maps::PerCpuArray<Event<In6>> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);
