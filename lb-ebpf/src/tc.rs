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
    macros::{classifier, map},
    maps::ProgramArray,
    programs::TcContext,
};
use lb_common::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, In6, Stat, V6_SLOT_DSR, V6_SLOT_EGRESS,
    V6_SLOT_ICMP, V6_SLOT_INGRESS, V6_SLOT_REJECT, V6_SLOTS,
};

use crate::{
    dsr, events,
    family::Family,
    fib::{self, NextHop},
    flow::{self, Hook, Outcome},
    icmp,
    maps::{PKT6, WORK6},
    nat::{Nat, Tuple},
    parse::{self, IcmpError, L3_OFF, Packet, Parsed, Parsed6, Skip},
    reject,
    stats::count,
    work,
};

/// tc sends external packets to any next hop.
impl Hook for TcContext {
    const SAME_INTERFACE_ONLY: bool = false;

    #[inline(always)]
    fn dsr<A: Family>(&self, p: &Packet<A>, be_addr: A, be_port: u16, stat: Stat) -> Outcome {
        let Some(node) = crate::lb::config().and_then(A::snat_addr) else {
            // No address of ours to send from.
            return Outcome::Drop(Stat::DropSnat);
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
        match fib::lookup(self, &outer, dsr::tunnel_proto::<A>()) {
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
        Ok(Parsed::Ipv6) => {
            // Returns only if the agent has not filled the slot.
            unsafe { V6_TC.tail_call(&ctx, V6_SLOT_INGRESS) };
            (OK, Stat::Pass)
        }
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
        Ok(Parsed::Ipv6) => {
            unsafe { V6_TC.tail_call(&ctx, V6_SLOT_EGRESS) };
            return OK;
        }
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
        Ok(icmp::Outcome::External) => act(route_error::<A>(ctx), || (SHOT, Stat::DropInternal)),
        Ok(icmp::Outcome::NotOurs) => (OK, Stat::Pass),
        Err(()) => (SHOT, Stat::DropInternal),
    }
}

/// A translated ICMP error about an external flow, sent to its next hop
/// as the flow's own packets are.
#[inline(always)]
fn route_error<A: Family>(ctx: &TcContext) -> Outcome {
    let proto = if A::IS_V6 {
        IPPROTO_ICMPV6
    } else {
        IPPROTO_ICMP
    };
    // The addresses as translated.
    let Ok(addrs) = parse::ptr_at::<[A; 2], _>(ctx, L3_OFF + A::SRC_OFF) else {
        return Outcome::Drop(Stat::DropInternal);
    };
    let [saddr, daddr] = unsafe { addrs.read_unaligned() };
    let t = Tuple {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
    };
    let (ifindex, macs, ttl) = match fib::lookup(ctx, &t, proto) {
        NextHop::Found {
            ifindex, macs, ttl, ..
        } => (ifindex, Some(macs), ttl),
        NextHop::Unresolved { ifindex, ttl } => (ifindex, None, ttl),
        NextHop::Stack => return Outcome::ToStack(Stat::IcmpTranslated),
    };
    if ctx.route::<A>(proto, ttl, macs.as_ref()).is_err() {
        return Outcome::Drop(Stat::DropInternal);
    }
    Outcome::Redirect {
        stat: Stat::IcmpTranslated,
        ifindex,
        neigh: macs.is_none(),
    }
}

/// An IPIP packet: if it is DSR traffic for a backend behind this node,
/// out of its tunnel and on to the backend; else untouched.
#[inline(always)]
fn dsr_in(ctx: &TcContext, outer_dst: u32, id: u16) -> (i32, Stat) {
    if !dsr::ours(outer_dst) {
        return (OK, Stat::Pass);
    }
    if dsr::decapsulate::<u32>(ctx).is_err() {
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
    events::outcome4(
        ctx,
        p,
        act(flow::handle(ctx, p), || reject_no_backend(ctx, p)),
    )
}

/// The IPv6 programs, tail-called by the IPv4 hooks and by each other
/// (see `lb_common::MAP_V6_TC_PROGS`): never attached. The packet is
/// parsed once, into `PKT6`; each stage reads it there.
#[map(name = "flb_v6_tc")]
static V6_TC: ProgramArray = ProgramArray::with_max_entries(V6_SLOTS, 0);

/// IPv6 ingress: parses, then hands the packet to its stage.
#[classifier]
pub fn flb_tc_ingress6(ctx: TcContext) -> i32 {
    let (verdict, stat) = ingress6(&ctx);
    count(stat);
    verdict
}

#[inline(always)]
fn ingress6(ctx: &TcContext) -> (i32, Stat) {
    let (Some(p), Some(w)) = (PKT6.get_ptr_mut(0), WORK6.get_ptr_mut(0)) else {
        return (OK, Stat::Pass);
    };
    // SAFETY: this CPU's areas, for this packet alone (see `work`).
    let (p, w) = unsafe { (&mut *p, &mut *w) };
    let slot = match parse::parse6(ctx, p) {
        Ok(Parsed6::Flow) => match work::hand_over(w, flow::track(p)) {
            Ok(slot) => slot,
            Err(Outcome::NoBackend) => V6_SLOT_REJECT,
            Err(o) => return act(o, || (SHOT, Stat::DropNoBackend)),
        },
        Ok(Parsed6::Icmp) => V6_SLOT_ICMP,
        Ok(Parsed6::Tunnel { port }) if dsr::ours(p.daddr) => {
            w.dsr_backend = p.daddr;
            w.dsr_port = port;
            V6_SLOT_DSR
        }
        _ => return (OK, Stat::Pass),
    };
    stage6(ctx, slot)
}

/// Hands the packet to the IPv6 stage in `slot`.
#[inline(always)]
fn stage6(ctx: &TcContext, slot: u32) -> (i32, Stat) {
    // Returns only if the agent has not filled the slot.
    unsafe { V6_TC.tail_call(ctx, slot) };
    (SHOT, Stat::DropInternal)
}

/// A tracked IPv6 flow's packet (see `flow::track`).
#[classifier]
pub fn flb_tc_tracked6(ctx: TcContext) -> i32 {
    let (verdict, stat) = match work::staged6() {
        Some((p, w)) => act(flow::follow(&ctx, p, &w.ct), || (SHOT, Stat::DropInternal)),
        None => (OK, Stat::Pass),
    };
    count(stat);
    verdict
}

/// A new IPv6 flow (see `flow::track`).
#[classifier]
pub fn flb_tc_new6(ctx: TcContext) -> i32 {
    let (verdict, stat) = match work::staged6() {
        Some((p, w)) => events::outcome6(
            &ctx,
            p,
            act(flow::open_flow(&ctx, p, &w.fe), || {
                (SHOT, Stat::DropNoBackend)
            }),
        ),
        None => (OK, Stat::Pass),
    };
    count(stat);
    verdict
}

/// The answer to an IPv6 packet for a frontend without backends.
#[classifier]
pub fn flb_tc_reject6(ctx: TcContext) -> i32 {
    let (verdict, stat) = match work::staged6() {
        Some((p, _)) => {
            let answer = if p.proto == IPPROTO_TCP {
                reject::tcp_rst6(&ctx, p)
            } else {
                reject::icmp6_port_unreachable(&ctx, p)
            };
            events::outcome6(&ctx, p, answered(answer))
        }
        None => (OK, Stat::Pass),
    };
    count(stat);
    verdict
}

/// An ICMPv6 message, arriving or leaving: translated if it is an error
/// about one of ours.
#[classifier]
pub fn flb_tc_icmp6(ctx: TcContext) -> i32 {
    let (verdict, stat) = match work::staged6() {
        Some((p, w)) => match parse::icmp6_error(&ctx, p.saddr, p.daddr, p.l4_off) {
            Ok(e) => {
                // Its 120 bytes in the work area, not on the stack.
                w.icmp = e;
                icmp_error(&ctx, &w.icmp)
            }
            Err(_) => (OK, Stat::Pass),
        },
        None => (OK, Stat::Pass),
    };
    if !matches!(stat, Stat::Pass) {
        count(stat);
    }
    verdict
}

/// An IPv6 DSR packet for a backend behind this node (see `dsr`): out of
/// its tunnel and on to the backend.
#[classifier]
pub fn flb_tc_dsr6(ctx: TcContext) -> i32 {
    let (verdict, stat) = dsr_in6(&ctx);
    count(stat);
    verdict
}

#[inline(always)]
fn dsr_in6(ctx: &TcContext) -> (i32, Stat) {
    let (Some(p), Some(w)) = (PKT6.get_ptr_mut(0), WORK6.get_ptr_mut(0)) else {
        return (OK, Stat::Pass);
    };
    // SAFETY: see `work`.
    let (p, w) = unsafe { (&mut *p, &*w) };
    if dsr::decapsulate::<In6>(ctx).is_err() {
        return (SHOT, Stat::DropInternal);
    }
    count(Stat::DsrDecap);
    match parse::parse6(ctx, p) {
        Ok(Parsed6::Flow) => act(flow::deliver_dsr(ctx, p, w.dsr_backend, w.dsr_port), || {
            (SHOT, Stat::DropInternal)
        }),
        _ => (SHOT, Stat::DropMalformed),
    }
}

/// IPv6 egress: ICMPv6 errors leaving towards a pod.
#[classifier]
pub fn flb_tc_egress6(ctx: TcContext) -> i32 {
    let Some(p) = PKT6.get_ptr_mut(0) else {
        return OK;
    };
    // SAFETY: see `work`.
    match parse::parse6(&ctx, unsafe { &mut *p }) {
        Ok(Parsed6::Icmp) => {
            unsafe { V6_TC.tail_call(&ctx, V6_SLOT_ICMP) };
            OK
        }
        _ => OK,
    }
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
