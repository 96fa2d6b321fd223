//! tc on the host side of pod interfaces: the per-packet path.
//!
//! Ingress: parse -> `flow` (conntrack, service lookup, backend selection,
//! NAT through the store and csum helpers); ICMP errors about translated
//! flows are translated back; packets to a VIP without backends are
//! answered (`reject`).
//! Egress: only ICMP errors the node itself sends about translated flows
//! (fragmentation needed when forwarding to a backend), which never pass
//! an ingress hook.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use lb_common::{IPPROTO_IPIP, IPPROTO_TCP, Stat};

use crate::{
    dsr,
    family::Family,
    fib::{self, NextHop},
    flow::{self, Hook, Outcome},
    icmp,
    nat::Tuple,
    parse::{self, IcmpError, Packet, Parsed, Skip},
    reject,
    stats::count,
};

/// tc sends external packets to any next hop.
impl Hook for TcContext {
    const SAME_INTERFACE_ONLY: bool = false;

    #[inline(always)]
    fn dsr<A: Family>(&self, p: &Packet<A>, be_addr: A, be_port: u16, stat: Stat) -> Outcome {
        // IPIP carries IPv4 only (flows of other families are never DSR).
        let Some(be_addr) = be_addr.v4() else {
            return Outcome::Drop(Stat::DropInternal);
        };
        let node = match crate::lb::config() {
            Some(c) if c.snat_v4 != 0 => c.snat_v4,
            // No address of ours to send from.
            _ => return Outcome::Drop(Stat::DropSnat),
        };
        if dsr::encapsulate(self, node, be_addr, be_port).is_err() {
            return Outcome::Drop(Stat::DropInternal);
        }
        // The outer packet's next hop: towards the backend's node.
        let outer = Tuple {
            saddr: node,
            daddr: be_addr,
            sport: p.sport,
            dport: p.dport,
        };
        match fib::lookup(self, &outer, IPPROTO_IPIP) {
            NextHop::Found { ifindex, macs, .. } => {
                if self.store(0, &macs, 0).is_err() {
                    return Outcome::Drop(Stat::DropInternal);
                }
                Outcome::Redirect {
                    stat,
                    ifindex,
                    neigh: false,
                }
            }
            NextHop::Unresolved { ifindex, .. } => Outcome::Redirect {
                stat,
                ifindex,
                neigh: true,
            },
            NextHop::Stack => Outcome::ToStack(stat),
        }
    }
}

// The bindings' type for these differs between the BPF and host targets.
#[allow(clippy::unnecessary_cast)]
pub const OK: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast)]
pub const SHOT: i32 = TC_ACT_SHOT as i32;
#[allow(clippy::unnecessary_cast)]
pub const REDIRECT: i32 = TC_ACT_REDIRECT as i32;

#[classifier]
pub fn flb_tc_ingress(ctx: TcContext) -> i32 {
    let (verdict, stat) = match parse::parse(&ctx) {
        Ok(Parsed::Flow(p)) => process(&ctx, &p),
        Ok(Parsed::IcmpError(e)) => icmp_error(&ctx, &e),
        Ok(Parsed::Ipip { outer_dst, id }) => dsr_in(&ctx, outer_dst, id),
        Err(Skip::NotOurs) | Err(Skip::Malformed) => (OK, Stat::Pass),
    };
    count(stat);
    #[cfg(feature = "upgrade-probe")]
    crate::stats::count_slot(lb_common::STAT_SLOT_PROBE);
    verdict
}

#[classifier]
pub fn flb_tc_egress(ctx: TcContext) -> i32 {
    let (verdict, stat) = match parse::parse(&ctx) {
        Ok(Parsed::IcmpError(e)) => icmp_error(&ctx, &e),
        // Everything else leaving towards a pod is not ours to count.
        _ => return OK,
    };
    if !matches!(stat, Stat::Pass) {
        count(stat);
    }
    verdict
}

#[inline(always)]
fn icmp_error<A: Family>(ctx: &TcContext, e: &IcmpError<A>) -> (i32, Stat) {
    match icmp::translate(ctx, e) {
        Ok(icmp::Outcome::Translated) => (OK, Stat::IcmpTranslated),
        Ok(icmp::Outcome::NotOurs) => (OK, Stat::Pass),
        Err(()) => (SHOT, Stat::DropInternal),
    }
}

/// An IPIP packet: if it is DSR traffic for a backend behind this node,
/// out of its tunnel and on to the backend; else untouched.
#[inline(always)]
fn dsr_in(ctx: &TcContext, outer_dst: u32, id: u16) -> (i32, Stat) {
    if !dsr::ours(outer_dst) {
        return (OK, Stat::Pass);
    }
    if dsr::decapsulate(ctx).is_err() {
        return (SHOT, Stat::DropInternal);
    }
    count(Stat::DsrDecap);
    match parse::parse(ctx) {
        Ok(Parsed::Flow(p)) => act(flow::deliver_dsr(ctx, &p, outer_dst, id), || {
            reject_no_backend(ctx, &p)
        }),
        _ => (SHOT, Stat::DropMalformed),
    }
}

#[inline(always)]
fn process(ctx: &TcContext, p: &Packet) -> (i32, Stat) {
    act(flow::handle(ctx, p), || reject_no_backend(ctx, p))
}

/// The answer to a packet for a frontend without backends.
#[inline(always)]
fn reject_no_backend(ctx: &TcContext, p: &Packet) -> (i32, Stat) {
    answered(if p.proto == IPPROTO_TCP {
        reject::tcp_rst(ctx, p)
    } else {
        reject::icmp_port_unreachable(ctx, p)
    })
}

/// The verdict for a reject: sent back, or dropped where no answer is
/// allowed (a RST, a fragment, IP options).
#[inline(always)]
fn answered(answer: Result<i32, ()>) -> (i32, Stat) {
    match answer {
        Ok(v) => (v, Stat::RejectNoBackend),
        Err(()) => (SHOT, Stat::DropNoBackend),
    }
}

/// The verdict for a flow's outcome; `no_backend` answers a packet to a
/// frontend without backends.
#[inline(always)]
fn act(outcome: Outcome, no_backend: impl FnOnce() -> (i32, Stat)) -> (i32, Stat) {
    match outcome {
        Outcome::Forward(stat) => (OK, stat),
        Outcome::Redirect {
            stat,
            ifindex,
            neigh,
        } => {
            let verdict = if neigh {
                unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) }
            } else {
                unsafe { bpf_redirect(ifindex, 0) }
            };
            (verdict as i32, stat)
        }
        Outcome::ToStack(stat) => {
            count(Stat::FibMiss);
            (OK, stat)
        }
        Outcome::Drop(stat) => (SHOT, stat),
        Outcome::NoBackend => no_backend(),
    }
}

/// Returns at once: the baseline that benchmarks subtract to report the
/// cost our datapath adds per packet. Never attached by the agent.
#[classifier]
pub fn flb_tc_pass(_ctx: TcContext) -> i32 {
    OK
}
