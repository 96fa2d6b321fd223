//! Datapath events for the agent's log: a packet the datapath dropped
//! or rejected, with its flow, through aya-log (the agent logs them at
//! debug level, target `ferrolb::datapath`). The agent enables them at
//! load only when that level is on (`AYA_LOG_LEVEL`); otherwise the cost
//! is one load and a compare, on drop and reject paths only.
use aya_ebpf::{EbpfContext, maps::PerCpuArray};
use aya_log_ebpf::debug;
use lb_common::{In6, Stat};

use crate::maps::{EVENT4, EVENT6};
use crate::parse::Packet;

/// The event being logged, per CPU. The logging subprograms read it from
/// there rather than take it as arguments: called from many paths, each
/// with its own constant outcome, they would be verified again for each;
/// with no argument but the context, the verifier sees one state.
#[repr(C)]
pub struct Event<A> {
    pub stat: u32,
    pub proto: u32,
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
}

/// Fills this CPU's event.
#[inline(always)]
fn record<A: Copy>(events: &PerCpuArray<Event<A>>, p: &Packet<A>, stat: Stat) {
    if let Some(e) = events.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, written and read by this packet alone.
        unsafe {
            *e = Event {
                stat: stat as u32,
                proto: p.proto as u32,
                saddr: p.saddr,
                daddr: p.daddr,
                sport: p.sport,
                dport: p.dport,
            }
        }
    }
}

/// Outcomes worth an event: a policy's drops and rejects, which an
/// operator asks about ("why was my client refused?"). Translations are
/// counted, not logged; so are malformed packets and failed helpers,
/// which a flood of junk would turn into a flood of lines.
#[inline(always)]
fn eventful(stat: Stat) -> bool {
    matches!(
        stat,
        Stat::RejectNoBackend
            | Stat::DropNoBackend
            | Stat::DropSourceRange
            | Stat::DropNoLocalBackend
            | Stat::DropSnat
    )
}

/// An IPv4 packet's outcome. The message starts with `outcome=<counter
/// number>`: the agent names it (`lb_common::STAT_NAMES`), which costs
/// the datapath no string.
/// Takes and returns a program's (verdict, outcome).
#[inline(always)]
pub fn outcome4<C: EbpfContext, V>(ctx: &C, p: &Packet<u32>, r: (V, Stat)) -> (V, Stat) {
    if eventful(r.1) {
        record(&EVENT4, p, r.1);
        packet4(ctx);
    }
    r
}

// BPF subprograms: the logging code is not inlined into every path.
#[inline(never)]
fn packet4<C: EbpfContext>(ctx: &C) {
    let Some(e) = EVENT4.get_ptr(0) else { return };
    let e = unsafe { &*e };
    debug!(
        ctx,
        "outcome={} proto={} {:i}:{} -> {:i}:{}",
        e.stat,
        e.proto,
        u32::from_be(e.saddr),
        u16::from_be(e.sport),
        u32::from_be(e.daddr),
        u16::from_be(e.dport)
    );
}

/// The same for IPv6.
#[inline(always)]
pub fn outcome6<C: EbpfContext, V>(ctx: &C, p: &Packet<In6>, r: (V, Stat)) -> (V, Stat) {
    if eventful(r.1) {
        record(&EVENT6, p, r.1);
        packet6(ctx);
    }
    r
}

#[inline(never)]
fn packet6<C: EbpfContext>(ctx: &C) {
    let Some(e) = EVENT6.get_ptr(0) else { return };
    // The words hold the address bytes in wire order.
    let (s, d): ([u8; 16], [u8; 16]) = unsafe {
        (
            core::mem::transmute::<In6, [u8; 16]>((*e).saddr),
            core::mem::transmute::<In6, [u8; 16]>((*e).daddr),
        )
    };
    let e = unsafe { &*e };
    debug!(
        ctx,
        "outcome={} proto={} [{:i}]:{} -> [{:i}]:{}",
        e.stat,
        e.proto,
        s,
        u16::from_be(e.sport),
        d,
        u16::from_be(e.dport)
    );
}
