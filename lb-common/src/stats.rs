//! Datapath counters: one per outcome, so "where did this packet go and
//! why" has an answer. Indexes into the per-CPU `MAP_STATS` array.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Not service traffic, passed untouched.
    Pass = 0,
    /// New flow to a VIP, DNATed to a freshly chosen backend.
    DnatNew = 1,
    /// Packet of a tracked flow, DNATed to its backend.
    DnatEstablished = 2,
    /// Reply from a backend, source rewritten back to the VIP.
    RevNat = 3,
    /// VIP port without endpoints: TCP RST or ICMP port unreachable sent.
    RejectNoBackend = 4,
    /// VIP port without endpoints, and no reject could be built: dropped.
    DropNoBackend = 5,
    /// Malformed or unsupported packet to a VIP: dropped.
    DropMalformed = 6,
    /// A map write or packet rewrite helper failed: dropped.
    DropInternal = 7,
    /// connect()/sendmsg() from the node translated at the socket.
    SockTranslate = 8,
    /// connect()/sendmsg() from the node to a VIP without endpoints refused.
    SockReject = 9,
    /// ICMP error about a translated flow, translated back (quote included).
    IcmpTranslated = 10,
    /// New external flow to a backend on another node, SNATed to this node.
    SnatNew = 11,
    /// Source outside the frontend's `loadBalancerSourceRanges`: dropped.
    DropSourceRange = 12,
    /// externalTrafficPolicy Local and no backend on this node: dropped.
    DropNoLocalBackend = 13,
    /// No free SNAT source port (or no SNAT address known): dropped.
    DropSnat = 14,
    /// Counted besides the packet's outcome: a translated external packet
    /// whose next hop the FIB could not give; handed to the stack instead.
    FibMiss = 15,
    /// Counted besides the packet's outcome: sent back out of the
    /// interface it came in on by XDP (XDP_TX).
    XdpTx = 16,
    /// New external flow sent by direct server return: encapsulated to the
    /// backend's node, which answers the client itself.
    DsrNew = 17,
    /// Counted besides the packet's outcome: a DSR packet decapsulated on
    /// the backend's node.
    DsrDecap = 18,
    /// New flow from a pod to a Service that chose that same pod: its
    /// source is SNATed to the hairpin address so the replies come back
    /// through here.
    HairpinNew = 19,
}

/// Counters in use.
pub const STAT_COUNT: u32 = 20;
/// Size of the stats map: room for counters later builds add, so adding
/// one never changes the pinned layout.
pub const STAT_SLOTS: u32 = 64;
/// The slot a test build of the datapath (feature `upgrade-probe`) counts
/// every tc ingress packet in: the upgrade test tells builds apart by it.
pub const STAT_SLOT_PROBE: u32 = STAT_SLOTS - 1;

pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "pass",
    "dnat_new",
    "dnat_established",
    "revnat",
    "reject_no_backend",
    "drop_no_backend",
    "drop_malformed",
    "drop_internal",
    "sock_translate",
    "sock_reject",
    "icmp_translated",
    "snat_new",
    "drop_source_range",
    "drop_no_local_backend",
    "drop_snat",
    "fib_miss",
    "xdp_tx",
    "dsr_new",
    "dsr_decap",
    "hairpin_new",
];

/// A frontend's traffic as the datapath translated it (per CPU in
/// [`crate::MAP_SVC_STATS`], by frontend id): packets and bytes (whole
/// frames), both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcCounters {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<SvcCounters>() == 16);
