//! The benchmark harness (`cargo xtask bench`), never attached by the agent.
//!
//! BPF_PROG_TEST_RUN with `repeat` runs a program many times on one packet
//! and times the loop in the kernel, caches warm, as at line rate. Our
//! programs rewrite that packet, so from the second run on they would take
//! another path. The harness first puts the frame back from
//! `BENCH_FRAME` (for the new-flow case with a source address never used
//! before), then tail-calls the program under test (`BENCH_TC_PROG`, `BENCH_XDP_PROG`). The
//! bench runs it once with our program and once with the pass program
//! there: the difference is what our program adds.
use aya_ebpf::{
    helpers::{bpf_skb_store_bytes, bpf_xdp_store_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, ProgramArray},
    programs::{TcContext, XdpContext},
};
use lb_common::{BENCH_FRAME_LEN, BenchFrame};

use crate::parse::{IP_SRC_OFF, ptr_at};
use crate::tc;

#[map(name = "flb_bench_frame")]
static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

// One per hook: a program array takes the type of the first program
// that uses it and refuses the other.
#[map(name = "flb_bench_tc_prog")]
static BENCH_TC_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map(name = "flb_bench_xdp_prog")]
static BENCH_XDP_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The template and, for a new flow, the source address for this run.
/// The template is written straight from the map value: a copy of it
/// on the stack would be a byte-loop memcpy on BPF.
#[inline(always)]
fn next_frame() -> Option<(*const u8, Option<u32>)> {
    let f = BENCH_FRAME.get_ptr_mut(0)?;
    let bytes = unsafe { (&raw const (*f).bytes).cast::<u8>() };
    if unsafe { (*f).fresh_source } == 0 {
        return Some((bytes, None));
    }
    let n = unsafe { (*f).next };
    unsafe { (*f).next = n.wrapping_add(1) };
    let src = unsafe { &(*f).bytes };
    let a = u32::from_be_bytes([
        src[IP_SRC_OFF],
        src[IP_SRC_OFF + 1],
        src[IP_SRC_OFF + 2],
        src[IP_SRC_OFF + 3],
    ]);
    Some((bytes, Some(a.wrapping_add(n).to_be())))
}

#[classifier]
pub fn flb_bench_tc(ctx: TcContext) -> i32 {
    if let Some((bytes, src)) = next_frame() {
        let skb = ctx.skb.skb.cast();
        let len = BENCH_FRAME_LEN as u32;
        let mut ok = unsafe { bpf_skb_store_bytes(skb, 0, bytes.cast(), len, 0) } == 0;
        if let Some(a) = src {
            ok &= ctx.store(IP_SRC_OFF, &a, 0).is_ok();
        }
        if ok {
            unsafe { BENCH_TC_PROG.tail_call(&ctx, 0) };
        }
    }
    tc::SHOT
}

#[xdp]
pub fn flb_bench_xdp(ctx: XdpContext) -> u32 {
    if let Some((bytes, src)) = next_frame() {
        let md = ctx.ctx.cast();
        let len = BENCH_FRAME_LEN as u32;
        let mut ok = unsafe { bpf_xdp_store_bytes(md, 0, bytes.cast_mut().cast(), len) } == 0;
        if let Some(a) = src {
            match ptr_at::<u32, _>(&ctx, IP_SRC_OFF) {
                Ok(p) => unsafe { p.write_unaligned(a) },
                Err(()) => ok = false,
            }
        }
        if ok {
            unsafe { BENCH_XDP_PROG.tail_call(&ctx, 0) };
        }
    }
    aya_ebpf::bindings::xdp_action::XDP_ABORTED
}
