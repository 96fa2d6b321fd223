//! Map names, sizes and layouts. The names carry a layout version: a change
//! to a layout is a new name, so a pinned map of an older layout is never
//! misread by a newer program.

/// Frontend (VIP:port/proto) slots: slot 0 is the master entry holding the
/// backend count, slots 1..=count hold backend ids. The master is written
/// last, so a reader never sees a half-written service.
pub const MAP_SERVICES: &str = "flb_svc_v1";
/// Backend id -> address.
pub const MAP_BACKENDS: &str = "flb_be_v1";
/// Connection tracking, forward and reverse entries (LRU). v2: one key
/// space for both directions (the direction is in the value), so any
/// packet needs one lookup.
pub const MAP_CONNTRACK: &str = "flb_ct_v2";
/// Socket-level reverse translation for node-originated traffic (LRU).
pub const MAP_SOCK_REVNAT: &str = "flb_sock_v1";
/// Frontend metadata for the CLI (service name), keyed by service id.
pub const MAP_SVC_INFO: &str = "flb_info_v1";
/// Per-CPU datapath counters, indexed by [`crate::stats::Stat`]. v2: sized
/// [`crate::stats::STAT_SLOTS`], so new counters need no layout change.
pub const MAP_STATS: &str = "flb_stats_v2";

/// The node's own addresses (NodePort is served on these), family
/// independent: [`NodeAddrKey`] holds IPv4 as v4-mapped IPv6.
pub const MAP_NODE_ADDRS: &str = "flb_nodeaddr_v1";
/// Source NAT of external flows forwarded to another node, by conntrack
/// key: for a forward key the node address and port the flow leaves
/// with, for a reverse key the client it came from (LRU).
pub const MAP_SNAT: &str = "flb_snat_v1";
/// Node-wide settings the agent writes once ([`Config`], one entry).
pub const MAP_CONFIG: &str = "flb_cfg_v1";
/// `loadBalancerSourceRanges` per frontend (LPM trie over
/// [`SourceRangeKey`]), family independent.
pub const MAP_SOURCE_RANGES: &str = "flb_srcrange_v1";
/// Session affinity (`sessionAffinity: ClientIP`): which backend a client
/// of a frontend was last given (LRU over [`AffinityKey`]), both families.
pub const MAP_AFFINITY: &str = "flb_aff_v1";
/// The scheduler of a frontend that has one other than random
/// ([`SVC_FLAG_SCHED`]): its algorithm and state, by frontend id. v2: the
/// Maglev table's place in [`MAP_MAGLEV`].
pub const MAP_SCHED: &str = "flb_sched_v2";
/// Maglev lookup tables, all frontends' in one array: entry
/// `base + index` of a frontend's table ([`SchedValue::base`]) holds the
/// backend slot for flows that hash to `index` (0: none). v2: an array
/// (v1, a hash map keyed by frontend and index, cost a cache miss or two
/// per new flow).
pub const MAP_MAGLEV: &str = "flb_maglev_v2";
/// Per frontend (by id), per CPU: packets and bytes translated
/// ([`crate::SvcCounters`]), for `lb-agent stats` and `/metrics`.
pub const MAP_SVC_STATS: &str = "flb_svcstats_v1";
/// Session affinity: the slot each backend holds in each frontend with
/// affinity ([`MemberKey`] -> slot), so that a session whose backend moved
/// to another slot (the last slot's backend fills a freed one) finds it.
pub const MAP_MEMBERS: &str = "flb_member_v1";
/// Least-conn: each backend's active flows (u64, by backend id, both
/// families: ids are one space), counted by the datapath for frontends
/// with [`SVC_FLAG_LEAST_CONN`].
pub const MAP_LEAST_CONN: &str = "flb_lc_v1";
/// Least-conn: the backend (id, u32) a socket was given at the socket
/// hooks, by socket cookie, so that its release counts the flow out.
pub const MAP_LC_SOCK: &str = "flb_lcsock_v1";

/// The IPv6 maps: the same layouts over [`In6`] addresses ([`ServiceKey6`],
/// [`Backend6`], [`CtKey6`], ...), beside the IPv4 ones so that IPv4 keys
/// stay small (a conntrack key is 16 bytes, not 40). Service ids, backend
/// ids, counters, node addresses, source ranges and settings are shared.
pub const MAP_SERVICES6: &str = "flb_svc6_v1";
pub const MAP_BACKENDS6: &str = "flb_be6_v1";
pub const MAP_CONNTRACK6: &str = "flb_ct6_v1";
pub const MAP_SOCK_REVNAT6: &str = "flb_sock6_v1";
pub const MAP_SNAT6: &str = "flb_snat6_v1";
/// The IPv6 programs the IPv4 hooks hand IPv6 frames to by tail call (a
/// program of their own: a fresh 512-byte stack, which IPv6's 40-byte
/// keys need). Per object, never pinned: each build calls its own.
pub const MAP_V6_TC_PROGS: &str = "flb_v6_tc";
pub const MAP_V6_XDP_PROGS: &str = "flb_v6_xdp";
/// Slots of [`MAP_V6_TC_PROGS`] and [`MAP_V6_XDP_PROGS`] (XDP has only
/// ingress, tracked and new flow). The IPv6 ingress program hands each
/// stage on by tail call too, for the same reason: a tracked flow's
/// packet, a new flow, a reject, an ICMPv6 error, a DSR packet to take
/// out of its tunnel (tc only).
pub const V6_SLOT_INGRESS: u32 = 0;
pub const V6_SLOT_EGRESS: u32 = 1;
pub const V6_SLOT_TRACKED: u32 = 2;
pub const V6_SLOT_NEW_FLOW: u32 = 3;
pub const V6_SLOT_REJECT: u32 = 4;
pub const V6_SLOT_ICMP: u32 = 5;
pub const V6_SLOT_DSR: u32 = 6;
pub const V6_SLOTS: u32 = 7;

/// Every map the programs declare, for pinning and cleanup.
pub const ALL_MAPS: [&str; 22] = [
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_CONNTRACK,
    MAP_SOCK_REVNAT,
    MAP_SVC_INFO,
    MAP_STATS,
    MAP_NODE_ADDRS,
    MAP_SNAT,
    MAP_CONFIG,
    MAP_SOURCE_RANGES,
    MAP_AFFINITY,
    MAP_SCHED,
    MAP_MAGLEV,
    MAP_LEAST_CONN,
    MAP_LC_SOCK,
    MAP_MEMBERS,
    MAP_SVC_STATS,
    MAP_SERVICES6,
    MAP_BACKENDS6,
    MAP_CONNTRACK6,
    MAP_SOCK_REVNAT6,
    MAP_SNAT6,
];

/// Default map sizes; the agent can override each with a flag.
pub const DEFAULT_SERVICES_MAX: u32 = 262_144;
pub const DEFAULT_BACKENDS_MAX: u32 = 262_144;
pub const DEFAULT_CONNTRACK_MAX: u32 = 524_288;
pub const DEFAULT_SOCK_REVNAT_MAX: u32 = 131_072;
pub const DEFAULT_SVC_INFO_MAX: u32 = 65_536;
pub const DEFAULT_SNAT_MAX: u32 = 262_144;
pub const NODE_ADDRS_MAX: u32 = 1024;
pub const SOURCE_RANGES_MAX: u32 = 65_536;
pub const DEFAULT_AFFINITY_MAX: u32 = 65_536;
/// Maglev table entries, all frontends together (allocated as used):
/// 64 frontends at the default table size.
pub const DEFAULT_MAGLEV_MAX: u32 = 1_048_576;
/// The Maglev table size (a prime) unless `--maglev-table-size` says
/// otherwise: Cilium's default, even within 1% for up to ~160 backends.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16_381;

/// kube-proxy's default `--service-node-port-range`.
pub const DEFAULT_NODEPORT_MIN: u16 = 30_000;
pub const DEFAULT_NODEPORT_MAX: u16 = 32_767;
/// Ports SNATed flows leave a node with: below Linux's default
/// `ip_local_port_range` (32768-60999), so they never collide with a
/// connection the node itself opened, and above the privileged ports
/// some clients bind (NFS); 29k ports per backend address and port.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 1_024;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 29_999;
/// Free source ports tried for one new SNATed flow before giving up.
pub const SNAT_PORT_TRIES: u32 = 16;

/// Most backends one frontend may have (slots 1..=MAX_BACKENDS_PER_SERVICE).
pub const MAX_BACKENDS_PER_SERVICE: u16 = 4096;

/// Service flags (ServiceValue::flags on the master slot).
pub const SVC_FLAG_NONE: u16 = 0;
/// Reached from outside the cluster (NodePort, externalIPs, LoadBalancer
/// ingress): packets are forwarded by redirect, and a flow to a backend on
/// another node is SNATed to this node's address (externalTrafficPolicy
/// Cluster) so that its replies come back through here.
pub const SVC_FLAG_EXTERNAL: u16 = 1;
/// externalTrafficPolicy Local: the backends are this node's only, the
/// client address is kept, and no local backend means drop (not reject).
pub const SVC_FLAG_LOCAL_ONLY: u16 = 2;
/// `loadBalancerSourceRanges` apply: sources outside them are dropped.
pub const SVC_FLAG_SOURCE_RANGES: u16 = 4;
/// `sessionAffinity: ClientIP`: a client's new flows go to the backend
/// its last one went to, while that was less than the master entry's
/// [`ServiceValue::affinity_ticks`] ago and the backend still serves.
pub const SVC_FLAG_AFFINITY: u16 = 8;

/// The source a pod's flow to its own Service gets when it lands on that
/// same pod (hairpin), network order: the pod must not see its own
/// address as the source (it would answer itself, not the node), and a
/// link-local address is never another host's. IPv4 169.254.7.1, IPv6
/// fd00:7:7:7::1 (a ULA no cluster uses for pods by convention here).
pub const HAIRPIN_V4: u32 = u32::from_ne_bytes([169, 254, 7, 1]);
pub const HAIRPIN_V6: [u32; 4] = [
    u32::from_ne_bytes([0xfd, 0x00, 0x00, 0x07]),
    u32::from_ne_bytes([0x00, 0x07, 0x00, 0x07]),
    0,
    u32::from_ne_bytes([0, 0, 0, 1]),
];

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_SECS: u32 = 10_800;

/// An affinity timeout in the datapath's clock ticks (2^[`HOP_CLOCK_SHIFT`]
/// ns; Kubernetes' largest timeout, 86400 s, is 82 million).
pub const fn affinity_ticks(secs: u32) -> u32 {
    ((secs as u64 * 1_000_000_000) >> HOP_CLOCK_SHIFT) as u32
}

/// [`AffinityKey::scope`]: who a session is bound to. Packets (tc, XDP)
/// carry the client's address; a socket's connect() has no source address
/// yet, so the socket hooks bind the client's network namespace (a pod),
/// as Cilium's socket LB does.
pub const AFFINITY_BY_ADDR: u32 = 0;
pub const AFFINITY_BY_NETNS: u32 = 1;

/// A scheduler other than random: [`MAP_SCHED`] holds it under the
/// frontend's id (random frontends pay no lookup for it).
pub const SVC_FLAG_SCHED: u16 = 16;

/// [`SchedValue::alg`]: how a new flow's backend slot is chosen.
pub const SCHED_RANDOM: u8 = 0;
/// The slots in turn, one counter across CPUs.
pub const SCHED_ROUND_ROBIN: u8 = 1;
/// Maglev consistent hashing of the flow (its source address and port
/// and protocol; a socket's cookie at the socket hooks) over the
/// frontend's [`MAP_MAGLEV`] table.
pub const SCHED_MAGLEV: u8 = 2;
/// A hash of the client (address, or network namespace at the sockets).
pub const SCHED_SOURCE_HASH: u8 = 3;
/// A hash of the destination address.
pub const SCHED_DEST_HASH: u8 = 4;
/// The backend with the fewest active flows, of up to [`LC_SCAN`] slots
/// from a random one. The frontend also carries [`SVC_FLAG_LEAST_CONN`]
/// (the datapath needs no [`MAP_SCHED`] lookup for it); this entry names
/// it for the CLI.
pub const SCHED_LEAST_CONN: u8 = 5;

/// Least-conn compares this many slots at most, from a random one: exact
/// for frontends with up to this many backends, the best of a random
/// window beyond (the cost of a new flow stays bounded).
pub const LC_SCAN: u32 = 16;

/// Least-conn: new flows go to the backend with the fewest active flows,
/// and the datapath counts them in [`MAP_LEAST_CONN`] (TCP until a FIN or
/// RST, socket-hook flows until the socket is released).
pub const SVC_FLAG_LEAST_CONN: u16 = 32;

/// A frontend's scheduler.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SchedValue {
    pub alg: u8,
    pub _pad: [u8; 3],
    /// Maglev: the table's size (a prime), entries 0..table_size.
    pub table_size: u32,
    /// Round-robin: the next turn (the datapath counts it up with an
    /// atomic add; 64 bits, the width that has one on every BPF CPU
    /// version).
    pub next: u64,
    /// Maglev: where the table starts in [`MAP_MAGLEV`].
    pub base: u32,
    pub _pad2: u32,
}

/// Backend flags. The backend runs on this node.
pub const BACKEND_FLAG_LOCAL: u8 = 1;

/// Flags of a backend slot's value (the master's are `SVC_FLAG_*`): the
/// slot's endpoint is serving but terminating, programmed because its
/// Service has no ready endpoint. For the CLI: the datapath treats it as
/// any slot. Kept off the backend entry, whose id would change with it
/// (and a new id purges the old one's flows).
pub const SLOT_FLAG_TERMINATING: u16 = 1;

/// Conntrack value flags. Without [`CT_FLAG_REVERSE`] an entry is a
/// forward one (client -> VIP: `addr:port` is the backend); with it, a
/// reverse one (backend -> client: `addr:port` is the VIP). The two never
/// share a key: a forward key's destination is a VIP, a reverse key's a
/// client, and VIPs do not originate traffic.
pub const CT_FLAG_REVERSE: u16 = 1;
/// The flow is SNATed: [`MAP_SNAT`] holds, under the same key, the other
/// end's translation (forward: node address and port; reverse: client).
pub const CT_FLAG_SNAT: u16 = 2;
/// A flow of an external frontend: its packets are redirected to their
/// next hop after translation (a NodePort reply's source is a node
/// address, which the stack would drop as martian on input).
pub const CT_FLAG_EXTERNAL: u16 = 4;
/// Direct server return: on the ingress node, a forward entry whose
/// packets go encapsulated (IPIP) to the backend, which answers the client
/// itself; on the backend's node, a reverse entry made on decapsulation.
pub const CT_FLAG_DSR: u16 = 8;
/// A forward entry whose flow is counted in [`MAP_LEAST_CONN`] (cleared
/// when the count is taken back, so that it is taken back once).
pub const CT_FLAG_COUNTED: u16 = 16;

/// [`Config::flags`]: external TCP (UDP) flows to backends on other nodes
/// use direct server return instead of SNAT (`--lb-mode dsr`, `hybrid`
/// sets TCP only).
pub const CFG_DSR_TCP: u32 = 1;
pub const CFG_DSR_UDP: u32 = 2;

/// Protocol number of IPv4-in-IPv4, the IPv4 DSR encapsulation.
pub const IPPROTO_IPIP: u8 = 4;
/// Next header of IPv6-in-IPv6, the IPv6 DSR encapsulation.
pub const IPPROTO_IPV6: u8 = 41;

/// Length of the service name stored for the CLI.
pub const SVC_NAME_LEN: usize = 64;

/// An IPv6 address as the datapath loads it: four words in network
/// order (the bytes as on the wire).
pub type In6 = [u32; 4];

/// The layouts below that hold an address are generic over it: `u32` for
/// IPv4, [`In6`] for IPv6, one definition for both families. Every field
/// after the address is 2-byte aligned or smaller and padded to a
/// multiple of 4, so neither instance has implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKeyOf<A> {
    /// VIP, network order.
    pub addr: A,
    /// Service port, network order.
    pub port: u16,
    /// 0 = master entry, 1..=count = backend slots.
    pub slot: u16,
    pub proto: u8,
    // Padding as scalars, not `[u8; 3]`: zeroing that array makes LLVM
    // call a byte-loop memset subprogram on BPF, for every key built.
    pub _pad0: u8,
    pub _pad1: u16,
}

pub type ServiceKey = ServiceKeyOf<u32>;
pub type ServiceKey6 = ServiceKeyOf<In6>;

impl<A> ServiceKeyOf<A> {
    #[inline(always)]
    pub const fn new(addr: A, port: u16, slot: u16, proto: u8) -> Self {
        ServiceKeyOf {
            addr,
            port,
            slot,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Backend id (backend slots). On the master entry: the affinity
    /// timeout in clock ticks under [`SVC_FLAG_AFFINITY`], else 0 (read it
    /// through [`ServiceValue::affinity_ticks`]).
    pub backend_id: u32,
    /// Number of backend slots in use (master entry only).
    pub count: u16,
    pub flags: u16,
    /// Stable id of this frontend (master entry only), key of `MAP_SVC_INFO`.
    pub svc_id: u32,
}

impl ServiceValue {
    /// A master entry's session affinity timeout in clock ticks (0: none).
    #[inline(always)]
    pub const fn affinity_ticks(&self) -> u32 {
        if self.flags & SVC_FLAG_AFFINITY != 0 {
            self.backend_id
        } else {
            0
        }
    }
}

/// A session: a frontend (`svc_id`) and its client, an address (v4-mapped
/// for IPv4) or a network namespace cookie (words 0 and 1), per `scope`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    pub svc_id: u32,
    pub scope: u32,
    pub client: [u32; 4],
}

/// A backend of a frontend with session affinity ([`MAP_MEMBERS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    pub svc_id: u32,
    pub backend_id: u32,
}

/// The backend a session was given: its id, the frontend slot it had
/// then (the datapath uses the session only while that slot still holds
/// it: a backend that left the Service, or whose slot moved, is never
/// used), and when the session last opened a flow, in clock ticks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub slot: u16,
    pub _pad: u16,
    pub last: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendOf<A> {
    /// Backend address, network order.
    pub addr: A,
    /// Backend (target) port, network order.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

pub type Backend = BackendOf<u32>;
pub type Backend6 = BackendOf<In6>;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    // Scalars for the reason given at `ServiceKey`.
    pub _pad0: u8,
    pub _pad1: u16,
}

pub type CtKey = CtKeyOf<u32>;
pub type CtKey6 = CtKeyOf<In6>;

impl<A> CtKeyOf<A> {
    #[inline(always)]
    pub const fn new(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8) -> Self {
        CtKeyOf {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValueOf<A> {
    /// Forward: backend address; reverse: VIP. Network order.
    pub addr: A,
    /// Forward: backend port; reverse: service port. Network order.
    pub port: u16,
    /// [`CT_FLAG_REVERSE`].
    pub flags: u16,
    pub svc_id: u32,
    pub backend_id: u32,
}

pub type CtValue = CtValueOf<u32>;
pub type CtValue6 = CtValueOf<In6>;

impl<A> CtValueOf<A> {
    #[inline(always)]
    pub fn is_reverse(&self) -> bool {
        self.flags & CT_FLAG_REVERSE != 0
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub cookie: u64,
    /// VIP (dir 0) or backend (dir 1) address, network order.
    pub addr: u32,
    pub port: u16,
    /// 0: VIP -> backend chosen for this socket; 1: backend -> VIP.
    pub dir: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockValue {
    /// VIP and service port the application asked for, network order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// [`SockKey`] for IPv6 sockets (its own type: the cookie's alignment
/// would pad a generic one differently per family).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey6 {
    pub cookie: u64,
    pub addr: In6,
    pub port: u16,
    pub dir: u8,
    pub _pad: u8,
    pub _pad1: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockValue6 {
    pub addr: In6,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SvcInfo {
    /// "namespace/name:port", NUL padded.
    pub name: [u8; SVC_NAME_LEN],
}

/// The other end's translation of a SNATed flow ([`CT_FLAG_SNAT`]), and
/// the next hop its packets in this direction take, as the FIB last said
/// (so that established packets skip the FIB lookup).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatValueOf<A> {
    /// Network order.
    pub addr: A,
    pub port: u16,
    /// Cached next hop: the egress MTU (0: unknown) ...
    pub hop_mtu: u16,
    /// ... egress interface (0: none cached yet) ...
    pub hop_ifindex: u32,
    /// ... destination then source MAC ...
    pub hop_macs: [u8; 12],
    /// ... and when the FIB gave it, in [`HOP_CLOCK_SHIFT`] units of
    /// monotonic ns: older than [`HOP_CACHE_TICKS`], it is asked again.
    pub hop_checked: u32,
    /// When this direction last carried a packet (same clock, refreshed
    /// at most every [`SNAT_TOUCH_TICKS`]): an idle flow's port can be
    /// given to another flow.
    pub seen: u32,
    /// [`NAT_CLOSING`]: a FIN or RST passed in this direction.
    pub state: u32,
}

pub type NatValue = NatValueOf<u32>;
pub type NatValue6 = NatValueOf<In6>;

/// [`NatValue::state`]: the flow is being closed.
pub const NAT_CLOSING: u32 = 1;
/// `seen` is rewritten at most this often (writes dirty a shared line).
pub const SNAT_TOUCH_TICKS: u32 = 1000;
/// A SNAT port is given to a new flow when the flow holding it was closed
/// this long ago (about 60 s: the backend's TIME_WAIT for the tuple has
/// ended, so the new flow's SYN is not taken for an old segment; the
/// agent's `--snat-closed-timeout-secs` sets another) ...
pub const SNAT_CLOSED_TICKS: u32 = 60 * 954;
/// ... or has been idle this long: TCP about 6 hours, others about 60 s
/// (Cilium's conntrack lifetimes).
pub const SNAT_IDLE_TCP_TICKS: u32 = 6 * 3600 * 954;
pub const SNAT_IDLE_OTHER_TICKS: u32 = 60 * 954;

/// A cached next hop is trusted for this many ticks of 2^20 ns (about a
/// second): a neighbour's new MAC or a route change reaches established
/// flows within that.
pub const HOP_CLOCK_SHIFT: u32 = 20;
pub const HOP_CACHE_TICKS: u32 = 1000;

/// An address of either family: IPv4 as v4-mapped IPv6 (`::ffff:a.b.c.d`),
/// so one key serves both and v6 needs no new layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddrKey {
    pub addr: [u32; 4],
}

impl NodeAddrKey {
    /// `addr` in network order.
    #[inline(always)]
    pub const fn v4(addr: u32) -> Self {
        NodeAddrKey {
            addr: [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr],
        }
    }
}

/// The data of an LPM key for [`MAP_SOURCE_RANGES`]: a frontend and a
/// source prefix. The prefix length covers the frontend fully (port,
/// proto, pad and address: [`SOURCE_RANGE_FIXED_BITS`]) plus the source
/// prefix (IPv4 prefixes count 96 more bits, for the v4-mapped part).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    /// Frontend port, network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    /// Frontend address (v4-mapped for IPv4, all-zero for NodePort).
    pub frontend: [u32; 4],
    /// Source address (v4-mapped for IPv4).
    pub source: [u32; 4],
}

pub const SOURCE_RANGE_FIXED_BITS: u32 = 32 + 128;

/// Node-wide datapath settings (slot 0 of [`MAP_CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// `--service-node-port-range`, host order; 0/0 disables NodePort.
    pub nodeport_min: u16,
    pub nodeport_max: u16,
    /// Source ports SNATed flows get, host order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// The address SNATed IPv4 flows leave with (network order); 0: none
    /// known, such flows go to local backends only.
    pub snat_v4: u32,
    /// How long a closed SNATed flow keeps its port, in clock ticks; 0:
    /// [`SNAT_CLOSED_TICKS`].
    pub snat_closed_ticks: u32,
    /// [`CFG_DSR_TCP`], [`CFG_DSR_UDP`].
    pub flags: u32,
    /// Reserved for IPv6 SNAT, so that v6 needs no new layout.
    pub snat_v6: [u32; 4],
}

/// Bench-only maps (`cargo xtask bench`), never pinned: the frame the
/// harness puts back before every run, and per hook the program it
/// tail-calls.
pub const MAP_BENCH_FRAME: &str = "flb_bench_frame";
pub const MAP_BENCH_TC_PROG: &str = "flb_bench_tc_prog";
pub const MAP_BENCH_XDP_PROG: &str = "flb_bench_xdp_prog";
/// Bytes of a frame the harness restores: Ethernet, IPv4 and TCP headers
/// without options, every byte a translation can change.
pub const BENCH_FRAME_LEN: usize = 54;
/// The same for an IPv6 frame (no extension headers).
pub const BENCH_FRAME6_LEN: usize = 74;

/// The harness's frame. With `fresh_source` set, each run gets the source
/// address `frame's + next` (IPv6: its last 32 bits) and bumps `next`:
/// every run is a new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BenchFrame {
    /// `BENCH_FRAME_LEN` bytes, or `BENCH_FRAME6_LEN` with `v6` set.
    pub bytes: [u8; BENCH_FRAME6_LEN],
    pub v6: u8,
    pub _pad: u8,
    pub fresh_source: u32,
    pub next: u32,
}

const _: () = {
    assert!(core::mem::size_of::<BenchFrame>() == 84);
    assert!(core::mem::size_of::<ServiceKey>() == 12);
    assert!(core::mem::size_of::<ServiceValue>() == 12);
    assert!(core::mem::size_of::<Backend>() == 8);
    assert!(core::mem::size_of::<CtKey>() == 16);
    assert!(core::mem::size_of::<CtValue>() == 16);
    assert!(core::mem::size_of::<SockKey>() == 16);
    assert!(core::mem::size_of::<SockValue>() == 8);
    assert!(core::mem::size_of::<SvcInfo>() == SVC_NAME_LEN);
    assert!(core::mem::size_of::<NatValue>() == 36);
    assert!(core::mem::size_of::<NodeAddrKey>() == 16);
    assert!(core::mem::size_of::<SourceRangeKey>() == 36);
    assert!(core::mem::size_of::<Config>() == 36);
    assert!(core::mem::size_of::<ServiceKey6>() == 24);
    assert!(core::mem::size_of::<Backend6>() == 20);
    assert!(core::mem::size_of::<CtKey6>() == 40);
    assert!(core::mem::size_of::<CtValue6>() == 28);
    assert!(core::mem::size_of::<NatValue6>() == 48);
    assert!(core::mem::size_of::<SockKey6>() == 32);
    assert!(core::mem::size_of::<SockValue6>() == 20);
    assert!(core::mem::size_of::<AffinityKey>() == 24);
    assert!(core::mem::size_of::<AffinityValue>() == 12);
    assert!(core::mem::size_of::<SchedValue>() == 24);
    assert!(core::mem::size_of::<MemberKey>() == 8);
};

#[cfg(feature = "user")]
mod user {
    use super::*;

    macro_rules! pod {
        ($($t:ty),*) => {$(
            // SAFETY: repr(C), only integer fields, explicit padding: every
            // bit pattern is valid and there are no implicit padding bytes.
            unsafe impl aya::Pod for $t {}
            unsafe impl bytemuck::Zeroable for $t {}
            unsafe impl bytemuck::Pod for $t {}
        )*};
    }
    pod!(
        ServiceKey,
        ServiceValue,
        Backend,
        CtKey,
        CtValue,
        SockKey,
        SockValue,
        SvcInfo,
        BenchFrame,
        NatValue,
        NodeAddrKey,
        SourceRangeKey,
        Config,
        ServiceKey6,
        Backend6,
        CtKey6,
        CtValue6,
        NatValue6,
        SockKey6,
        SockValue6,
        AffinityKey,
        AffinityValue,
        SchedValue,
        MemberKey,
        crate::SvcCounters
    );
}
