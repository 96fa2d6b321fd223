//! Everything that touches the kernel: loading and pinning (`loader`),
//! attaching to interfaces and the cgroup (`attach`), executing map write
//! plans (`maps`, in batches: `batch`) and reading the maps back.
pub mod attach;
pub mod batch;
pub mod bpffs;
pub mod conntrack;
pub mod events;
pub mod external;
pub mod ifaces;
pub mod inventory;
pub mod loader;
pub mod maps;

/// The compiled kernel programs, built from `lb-ebpf` by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Program names in the object.
pub const PROG_TC_INGRESS: &str = "flb_tc_ingress";
/// tc egress: translates ICMP errors the node itself sends about flows.
pub const PROG_TC_EGRESS: &str = "flb_tc_egress";
/// A program that only returns TC_ACT_OK: the benchmarks' baseline.
pub const PROG_TC_PASS: &str = "flb_tc_pass";
/// XDP on wire-facing interfaces: traffic from outside the node.
pub const PROG_XDP: &str = "flb_xdp";
/// A program that only returns XDP_PASS: the benchmarks' baseline.
pub const PROG_XDP_PASS: &str = "flb_xdp_pass";
/// The benchmarks' harness (tc and XDP): restores the frame, then
/// tail-calls the program under test (see lb-ebpf's `bench`).
pub const PROG_BENCH_TC: &str = "flb_bench_tc";
pub const PROG_BENCH_XDP: &str = "flb_bench_xdp";
pub const PROG_CONNECT4: &str = "flb_connect4";
pub const PROG_SENDMSG4: &str = "flb_sendmsg4";
pub const PROG_RECVMSG4: &str = "flb_recvmsg4";
pub const PROG_GETPEERNAME4: &str = "flb_getpeername4";
pub const PROG_CONNECT6: &str = "flb_connect6";
pub const PROG_SENDMSG6: &str = "flb_sendmsg6";
pub const PROG_RECVMSG6: &str = "flb_recvmsg6";
pub const PROG_GETPEERNAME6: &str = "flb_getpeername6";
/// Counts a released socket's least-conn flow out (a `cgroup_sock` hook,
/// not an address hook like the rest).
pub const PROG_SOCK_RELEASE: &str = "flb_sock_release";
pub const SOCK_PROGRAMS: [&str; 8] = [
    PROG_CONNECT4,
    PROG_SENDMSG4,
    PROG_RECVMSG4,
    PROG_GETPEERNAME4,
    PROG_CONNECT6,
    PROG_SENDMSG6,
    PROG_RECVMSG6,
    PROG_GETPEERNAME6,
];
