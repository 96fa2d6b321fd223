//! What happens to a TCP/UDP packet, the same at tc and XDP: conntrack
//! lookup -> (on a miss) service lookup -> backend selection -> conntrack
//! entry -> NAT. The hook decides only how to act on the outcome.
use lb_common::{Backend, CtValue, Stat};

use crate::{
    conntrack::{self, Existing},
    lb::{self, Frontend},
    nat::{Nat, Side},
    parse::Packet,
};

/// The outcome of [`handle`] for the hook to act on.
pub enum Outcome {
    /// Let the packet go on, translated or not; the stat says which.
    Forward(Stat),
    /// Drop it.
    Drop(Stat),
    /// To a frontend without backends: the hook answers (or drops).
    NoBackend,
}

#[inline(always)]
pub fn handle<C: Nat>(ctx: &C, p: &Packet) -> Outcome {
    if p.fragment && lb::lookup_frontend(p.daddr, p.dport, p.proto).is_some() {
        // Later fragments carry no ports: translating only some pieces of
        // a datagram would corrupt it, so fragments to a VIP are dropped.
        return Outcome::Drop(Stat::DropMalformed);
    }
    if p.is_syn()
        && let Some(fe) = lb::lookup_frontend(p.daddr, p.dport, p.proto)
    {
        // A connection's first packet: the frontend lookup (a small,
        // cache-hot map) comes first, and the conntrack insert settles
        // whether the tuple is tracked.
        return syn_to_frontend(ctx, p, &fe);
    }
    // One lookup settles replies and packets of tracked flows, the bulk of
    // all traffic; only a miss goes on to the service lookup.
    if let Some(ct) = conntrack::lookup(p) {
        if ct.is_reverse() {
            return rewritten(ctx, p, Side::Source, ct.addr, ct.port, Stat::RevNat);
        }
        if !p.is_syn() {
            return established(ctx, p, &ct);
        }
    }
    if p.is_syn() {
        // Not to a frontend (looked up above): nothing to translate.
        return Outcome::Forward(Stat::Pass);
    }
    let Some(fe) = lb::lookup_frontend(p.daddr, p.dport, p.proto) else {
        return Outcome::Forward(Stat::Pass);
    };
    new_flow(ctx, p, &fe)
}

#[inline(always)]
fn established<C: Nat>(ctx: &C, p: &Packet, ct: &CtValue) -> Outcome {
    rewritten(
        ctx,
        p,
        Side::Destination,
        ct.addr,
        ct.port,
        Stat::DnatEstablished,
    )
}

#[inline(always)]
fn syn_to_frontend<C: Nat>(ctx: &C, p: &Packet, fe: &Frontend) -> Outcome {
    let Some(backend) = lb::select_backend(fe) else {
        return Outcome::NoBackend;
    };
    if let Some(done) = open(ctx, p, fe, backend, Existing::Keep) {
        return done;
    }
    // The tuple is tracked. A retransmitted SYN keeps its backend, but only
    // while that backend still serves the frontend: a new connection
    // reusing a closed flow's tuple must not follow it to a pod that is gone.
    if let Some(ct) = conntrack::lookup(p)
        && !ct.is_reverse()
        && lb::still_serves(fe, &ct)
    {
        return established(ctx, p, &ct);
    }
    open(ctx, p, fe, backend, Existing::Replace).unwrap_or(Outcome::Drop(Stat::DropInternal))
}

#[inline(always)]
fn new_flow<C: Nat>(ctx: &C, p: &Packet, fe: &Frontend) -> Outcome {
    let Some(backend) = lb::select_backend(fe) else {
        return Outcome::NoBackend;
    };
    open(ctx, p, fe, backend, Existing::Replace).unwrap_or(Outcome::Drop(Stat::DropInternal))
}

/// Tracks the flow to the chosen backend and rewrites the packet to it;
/// `None` when `Existing::Keep` found the tuple tracked.
#[inline(always)]
fn open<C: Nat>(
    ctx: &C,
    p: &Packet,
    fe: &Frontend,
    (id, be): (u32, Backend),
    existing: Existing,
) -> Option<Outcome> {
    match conntrack::create(p, be.addr, be.port, fe.svc_id, id, existing) {
        Ok(true) => Some(rewritten(
            ctx,
            p,
            Side::Destination,
            be.addr,
            be.port,
            Stat::DnatNew,
        )),
        Ok(false) => None,
        Err(()) => Some(Outcome::Drop(Stat::DropInternal)),
    }
}

#[inline(always)]
fn rewritten<C: Nat>(ctx: &C, p: &Packet, side: Side, addr: u32, port: u16, stat: Stat) -> Outcome {
    match ctx.rewrite(p, side, addr, port) {
        Ok(()) => Outcome::Forward(stat),
        Err(()) => Outcome::Drop(Stat::DropInternal),
    }
}
