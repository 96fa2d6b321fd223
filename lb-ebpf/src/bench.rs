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
use lb_common::{BENCH_FRAME_LEN, BENCH_FRAME6_LEN, BenchFrame};

use crate::parse::{IP_SRC_OFF, L3_OFF, ptr_at};
use crate::tc;

#[map(name = "flb_bench_frame")]
static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

// One per hook: a program array takes the type of the first program
// that uses it and refuses the other.
#[map(name = "flb_bench_tc_prog")]
static BENCH_TC_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map(name = "flb_bench_xdp_prog")]
static BENCH_XDP_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// One run's frame: the template, its length, and for a new flow the
/// source word to write at `src_off`.
struct Next {
    bytes: *const u8,
    v6: bool,
    src: Option<(usize, u32)>,
}

/// Where the source word the harness varies lies: the IPv4 source, or
/// the last 32 bits of the IPv6 one.
const IP6_SRC_WORD_OFF: usize = L3_OFF + 8 + 12;

/// The template and, for a new flow, the source address for this run.
/// The template is written straight from the map value: a copy of it
/// on the stack would be a byte-loop memcpy on BPF.
#[inline(always)]
fn next_frame() -> Option<Next> {
    let f = BENCH_FRAME.get_ptr_mut(0)?;
    let bytes = unsafe { (&raw const (*f).bytes).cast::<u8>() };
    let v6 = unsafe { (*f).v6 } != 0;
    if unsafe { (*f).fresh_source } == 0 {
        return Some(Next {
            bytes,
            v6,
            src: None,
        });
    }
    let n = unsafe { (*f).next };
    unsafe { (*f).next = n.wrapping_add(1) };
    let off = if v6 { IP6_SRC_WORD_OFF } else { IP_SRC_OFF };
    let src = unsafe { &(*f).bytes };
    let a = u32::from_be_bytes([src[off], src[off + 1], src[off + 2], src[off + 3]]);
    Some(Next {
        bytes,
        v6,
        src: Some((off, a.wrapping_add(n).to_be())),
    })
}

#[classifier]
pub fn flb_bench_tc(ctx: TcContext) -> i32 {
    if let Some(f) = next_frame() {
        let skb = ctx.skb.skb.cast();
        // Two constant lengths: the verifier checks each store's bounds.
        let stored = if f.v6 {
            unsafe { bpf_skb_store_bytes(skb, 0, f.bytes.cast(), BENCH_FRAME6_LEN as u32, 0) }
        } else {
            unsafe { bpf_skb_store_bytes(skb, 0, f.bytes.cast(), BENCH_FRAME_LEN as u32, 0) }
        };
        let mut ok = stored == 0;
        if let Some((off, a)) = f.src {
            ok &= ctx.store(off, &a, 0).is_ok();
        }
        if ok {
            unsafe { BENCH_TC_PROG.tail_call(&ctx, 0) };
        }
    }
    tc::SHOT
}

#[xdp]
pub fn flb_bench_xdp(ctx: XdpContext) -> u32 {
    if let Some(f) = next_frame() {
        let md = ctx.ctx.cast();
        let bytes = f.bytes.cast_mut().cast();
        let stored = if f.v6 {
            unsafe { bpf_xdp_store_bytes(md, 0, bytes, BENCH_FRAME6_LEN as u32) }
        } else {
            unsafe { bpf_xdp_store_bytes(md, 0, bytes, BENCH_FRAME_LEN as u32) }
        };
        let mut ok = stored == 0;
        if let Some((off, a)) = f.src {
            match ptr_at::<u32, _>(&ctx, off) {
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
