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
    macros::xdp,
    programs::XdpContext,
};
use lb_common::Stat;

use crate::{
    family::Family,
    flow::{self, Hook, Outcome},
    parse::{self, Packet, Parsed},
    stats::count,
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
        Ok(Parsed::Flow(p)) => act(flow::handle(&ctx, &p)),
        _ => (XDP_PASS, Stat::Pass),
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
