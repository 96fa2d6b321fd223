//! ferrolb kernel programs. Entry points are thin: each calls a `try_*`
//! function and maps its outcome to a verdict. The stages of a packet live
//! in their own modules: parse -> flow (conntrack -> lb: service lookup,
//! backend selection -> nat) -> reject; `tc` and `xdp` are the hooks.
#![no_std]
#![no_main]
// Atomic add on map memory (see `atomic`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod affinity;
mod atomic;
mod bench;
mod btf_map;
mod checksum;
mod clock;
mod conntrack;
mod dsr;
mod events;
mod family;
mod fib;
mod flow;
mod icmp;
mod lb;
mod least_conn;
mod maps;
mod nat;
mod parse;
mod reject;
mod sched;
mod snat;
mod sock;
mod stats;
mod tc;
mod work;
mod xdp;

// Only for the BPF target: host-side lint runs link std through the
// workspace's feature unification, which brings its own.
#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
