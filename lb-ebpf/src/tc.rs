//! tc on the host side of pod interfaces: the per-packet path.
//!
//! Ingress: parse -> service lookup -> conntrack (or backend selection) ->
//! DNAT; packets that are not to a VIP are checked against reverse
//! conntrack entries (replies from backends) and SNATed back to the VIP;
//! ICMP errors about translated flows are translated back.
//! Egress: only ICMP errors the node itself sends about translated flows
//! (fragmentation needed when forwarding to a backend), which never pass
//! an ingress hook.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use lb_common::{IPPROTO_TCP, Stat};

use crate::{
    conntrack,
    icmp::{self, Outcome},
    lb::{self, Frontend},
    nat::{self, Side},
    parse::{self, IcmpError, Packet, Parsed, Skip},
    reject,
    stats::count,
};

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
        Err(Skip::NotOurs) | Err(Skip::Malformed) => (OK, Stat::Pass),
    };
    count(stat);
    #[cfg(feature = "upgrade-probe")]
    crate::stats::count_slot(lb_common::STAT_SLOT_PROBE);
    verdict
}

#[classifier]
pub fn flb_tc_egress(ctx: TcContext) -> i32 {
    if let Ok(Parsed::IcmpError(e)) = parse::parse(&ctx) {
        let (verdict, stat) = icmp_error(&ctx, &e);
        // Everything else leaving towards a pod is not ours to count.
        if !matches!(stat, Stat::Pass) {
            count(stat);
        }
        return verdict;
    }
    OK
}

#[inline(always)]
fn icmp_error(ctx: &TcContext, e: &IcmpError) -> (i32, Stat) {
    match icmp::translate(ctx, e) {
        Ok(Outcome::Translated) => (OK, Stat::IcmpTranslated),
        Ok(Outcome::NotOurs) => (OK, Stat::Pass),
        Err(()) => (SHOT, Stat::DropInternal),
    }
}

#[inline(always)]
fn process(ctx: &TcContext, p: &Packet) -> (i32, Stat) {
    if let Some(fe) = lb::lookup_frontend(p.daddr, p.dport, p.proto) {
        return to_service(ctx, p, &fe);
    }
    if let Some(rev) = conntrack::lookup_reverse(p) {
        return match nat::rewrite(ctx, p, Side::Source, rev.addr, rev.port) {
            Ok(()) => (OK, Stat::RevNat),
            Err(()) => (SHOT, Stat::DropInternal),
        };
    }
    (OK, Stat::Pass)
}

#[inline(always)]
fn to_service(ctx: &TcContext, p: &Packet, fe: &Frontend) -> (i32, Stat) {
    if p.fragment {
        // Later fragments carry no ports: translating only some pieces of
        // a datagram would corrupt it, so fragments to a VIP are dropped.
        return (SHOT, Stat::DropMalformed);
    }
    if let Some(ct) = conntrack::lookup_forward(p)
        && (!p.is_syn() || lb::still_serves(fe, &ct))
    {
        return match nat::rewrite(ctx, p, Side::Destination, ct.addr, ct.port) {
            Ok(()) => (OK, Stat::DnatEstablished),
            Err(()) => (SHOT, Stat::DropInternal),
        };
    }
    let Some((backend_id, be)) = lb::select_backend(fe) else {
        let answer = if p.proto == IPPROTO_TCP {
            reject::tcp_rst(ctx, p)
        } else {
            reject::icmp_port_unreachable(ctx, p)
        };
        return match answer {
            Ok(v) => (v, Stat::RejectNoBackend),
            Err(()) => (SHOT, Stat::DropNoBackend),
        };
    };
    if conntrack::create(p, be.addr, be.port, fe.svc_id, backend_id).is_err() {
        return (SHOT, Stat::DropInternal);
    }
    match nat::rewrite(ctx, p, Side::Destination, be.addr, be.port) {
        Ok(()) => (OK, Stat::DnatNew),
        Err(()) => (SHOT, Stat::DropInternal),
    }
}

/// Returns at once: the baseline that benchmarks subtract to report the
/// cost our datapath adds per packet. Never attached by the agent.
#[classifier]
pub fn flb_tc_pass(_ctx: TcContext) -> i32 {
    OK
}
