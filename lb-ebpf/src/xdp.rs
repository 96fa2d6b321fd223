//! XDP on the node's wire-facing interfaces: the earliest point to
//! translate traffic that arrives from outside the node. Frames there come
//! from a NIC with complete checksums, so NAT can write the packet
//! directly and compute checksums itself (see `nat`).
//!
//! - To a frontend: DNAT to a backend (the stack then routes it to the
//!   local pod, or on to another node).
//! - Replies from backends on other nodes to local clients: SNAT back to
//!   the VIP (the reverse conntrack entry tc made when the client's first
//!   packet left its pod).
//!
//! Everything else passes untouched: ICMP errors are translated by tc on
//! the pod side (egress), and a frontend without backends is dropped here
//! (no reject is built at XDP).
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    maps::ProgramArray,
    programs::XdpContext,
};
use lb_common::{Stat, V6_SLOT_INGRESS, V6_SLOTS};

use crate::{
    events,
    family::Family,
    flow::{self, Hook, Outcome},
    maps::{PKT6, WORK6},
    parse::{self, Packet, Parsed, Parsed6},
    stats::count,
    work,
};

/// External flows whose next hop is out of the same interface (SNAT to
/// another node, replies back to the client) leave by XDP_TX; those to
/// local pods are left to tc (a redirect into a veth would need the pod
/// side to run XDP too).
impl Hook for XdpContext {
    const SAME_INTERFACE_ONLY: bool = true;

    /// Encapsulation is tc's (it grows the packet): left untranslated.
    #[inline(always)]
    fn dsr<A: Family>(&self, _p: &Packet<A>, _be_addr: A, _be_port: u16, _stat: Stat) -> Outcome {
        Outcome::Forward(Stat::Pass)
    }
}

#[xdp]
pub fn flb_xdp(ctx: XdpContext) -> u32 {
    let (verdict, stat) = match parse::parse(&ctx) {
        Ok(Parsed::Flow(p)) => events::outcome4(&ctx, &p, act(flow::handle(&ctx, &p))),
        Ok(Parsed::Ipv6) => {
            // Returns only if the agent has not filled the slot.
            unsafe { V6_XDP.tail_call(&ctx, V6_SLOT_INGRESS) };
            (XDP_PASS, Stat::Pass)
        }
        _ => (XDP_PASS, Stat::Pass),
    };
    count(stat);
    verdict
}

#[map(name = "flb_v6_xdp")]
static V6_XDP: ProgramArray = ProgramArray::with_max_entries(V6_SLOTS, 0);

/// XDP for IPv6 frames: parses, then hands the packet to its stage, as
/// at tc (never attached: tail-called).
#[xdp]
pub fn flb_xdp6(ctx: XdpContext) -> u32 {
    let (verdict, stat) = ingress6(&ctx);
    count(stat);
    verdict
}

#[inline(always)]
fn ingress6(ctx: &XdpContext) -> (u32, Stat) {
    let (Some(p), Some(w)) = (PKT6.get_ptr_mut(0), WORK6.get_ptr_mut(0)) else {
        return (XDP_PASS, Stat::Pass);
    };
    // SAFETY: this CPU's areas, for this packet alone (see `work`).
    let (p, w) = unsafe { (&mut *p, &mut *w) };
    if !matches!(parse::parse6(ctx, p), Ok(Parsed6::Flow)) {
        return (XDP_PASS, Stat::Pass);
    }
    let slot = match work::hand_over(w, flow::track(p)) {
        Ok(slot) => slot,
        Err(o) => return act(o),
    };
    // Returns only if the agent has not filled the slot.
    unsafe { V6_XDP.tail_call(ctx, slot) };
    (XDP_DROP, Stat::DropInternal)
}

/// A tracked IPv6 flow's packet (see `flow::track`).
#[xdp]
pub fn flb_xdp_tracked6(ctx: XdpContext) -> u32 {
    let (verdict, stat) = match work::staged6() {
        Some((p, w)) => act(flow::follow(&ctx, p, &w.ct)),
        None => (XDP_PASS, Stat::Pass),
    };
    count(stat);
    verdict
}

/// A new IPv6 flow (see `flow::track`).
#[xdp]
pub fn flb_xdp_new6(ctx: XdpContext) -> u32 {
    let (verdict, stat) = match work::staged6() {
        Some((p, w)) => events::outcome6(&ctx, p, act(flow::open_flow(&ctx, p, &w.fe))),
        None => (XDP_PASS, Stat::Pass),
    };
    count(stat);
    verdict
}

#[inline(always)]
fn act(outcome: Outcome) -> (u32, Stat) {
    match outcome {
        Outcome::Forward(stat) | Outcome::ToStack(stat) => (XDP_PASS, stat),
        Outcome::Redirect { stat, .. } => {
            count(Stat::XdpTx);
            (XDP_TX, stat)
        }
        Outcome::Drop(stat) => (XDP_DROP, stat),
        Outcome::NoBackend => (XDP_DROP, Stat::DropNoBackend),
    }
}

/// Returns at once: the baseline that benchmarks subtract to report the
/// cost our XDP program adds per packet. Never attached by the agent.
#[xdp]
pub fn flb_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}
