//! The datapath's coarse clock: ticks of 2^HOP_CLOCK_SHIFT ns (about a
//! millisecond) in 32 bits, compared with wrapping differences. Coarse
//! time is a plain read, unlike the exact clock.
use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::HOP_CLOCK_SHIFT;

#[inline(always)]
pub fn ticks() -> u32 {
    (unsafe { bpf_ktime_get_coarse_ns() } >> HOP_CLOCK_SHIFT) as u32
}
