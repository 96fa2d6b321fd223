//! What happens to a TCP/UDP packet, the same at tc and XDP: conntrack
//! lookup -> (on a miss) service lookup -> backend selection -> conntrack
//! entry -> NAT. The hook decides only how to act on the outcome.
use lb_common::{CtValue, Stat};

use crate::{
    conntrack,
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
    // One lookup settles replies and packets of tracked flows, the bulk of
    // all traffic; only a miss (or a SYN) goes on to the service lookup.
    let ct = conntrack::lookup(p);
    let established = |ct: CtValue| {
        rewritten(
            ctx,
            p,
            Side::Destination,
            ct.addr,
            ct.port,
            Stat::DnatEstablished,
        )
    };
    if let Some(ct) = ct {
        if ct.is_reverse() {
            return rewritten(ctx, p, Side::Source, ct.addr, ct.port, Stat::RevNat);
        }
        if !p.is_syn() {
            return established(ct);
        }
    }
    let Some(fe) = lb::lookup_frontend(p.daddr, p.dport, p.proto) else {
        return Outcome::Forward(Stat::Pass);
    };
    // A SYN on a tracked tuple keeps its backend only while that backend
    // still serves the frontend: a new connection reusing a closed flow's
    // tuple must not follow it to a pod that is gone.
    if let Some(ct) = ct
        && lb::still_serves(&fe, &ct)
    {
        return established(ct);
    }
    new_flow(ctx, p, &fe)
}

#[inline(always)]
fn new_flow<C: Nat>(ctx: &C, p: &Packet, fe: &Frontend) -> Outcome {
    let Some((backend_id, be)) = lb::select_backend(fe) else {
        return Outcome::NoBackend;
    };
    if conntrack::create(p, be.addr, be.port, fe.svc_id, backend_id).is_err() {
        return Outcome::Drop(Stat::DropInternal);
    }
    rewritten(ctx, p, Side::Destination, be.addr, be.port, Stat::DnatNew)
}

#[inline(always)]
fn rewritten<C: Nat>(ctx: &C, p: &Packet, side: Side, addr: u32, port: u16, stat: Stat) -> Outcome {
    match ctx.rewrite(p, side, addr, port) {
        Ok(()) => Outcome::Forward(stat),
        Err(()) => Outcome::Drop(Stat::DropInternal),
    }
}
