//! What happens to a TCP/UDP packet, the same at tc and XDP: conntrack
//! lookup -> (on a miss) service lookup -> backend selection -> conntrack
//! entry (and SNAT, for external flows to other nodes) -> NAT. The hook
//! decides only how to act on the outcome.
use lb_common::{
    AFFINITY_BY_ADDR, BACKEND_FLAG_LOCAL, BackendOf, CT_FLAG_COUNTED, CT_FLAG_DSR,
    CT_FLAG_EXTERNAL, CT_FLAG_SNAT, CtValueOf, NatValueOf, SVC_FLAG_EXTERNAL, SVC_FLAG_LOCAL_ONLY,
    Stat,
};

use crate::{
    clock,
    conntrack::{self, Error, Existing, NewFlow},
    dsr,
    family::Family,
    fib::{self, Fib, NextHop},
    lb::{self, Frontend},
    least_conn,
    nat::{Nat, Tuple},
    parse::Packet,
    sched, snat, stats,
};

/// The outcome of [`handle`] for the hook to act on.
pub enum Outcome {
    /// Let the packet go on, translated or not; the stat says which.
    Forward(Stat),
    /// Translated and routed: send it out of `ifindex` (external flows,
    /// whose packets may carry a node address as source). `neigh`: the
    /// next hop's MAC is unknown, the kernel resolves it.
    Redirect {
        stat: Stat,
        ifindex: u32,
        neigh: bool,
    },
    /// Translated, but the FIB gave no next hop: the stack routes it.
    ToStack(Stat),
    /// Drop it.
    Drop(Stat),
    /// To a frontend without backends: the hook answers (or drops).
    NoBackend,
}

/// What a hook can do beyond rewriting.
pub trait Hook: Nat + Fib {
    /// External packets are sent on only out of the interface they came
    /// in on (XDP_TX); any other next hop is left to the next hook (tc),
    /// untranslated: it holds the same conntrack entries.
    const SAME_INTERFACE_ONLY: bool;

    /// Sends a DSR flow's packet to its backend, encapsulated; a hook that
    /// cannot leaves it untranslated to the next one (tc).
    fn dsr<A: Family>(&self, p: &Packet<A>, be_addr: A, be_port: u16, stat: Stat) -> Outcome;
}

#[inline(always)]
pub fn handle<C: Hook, A: Family>(ctx: &C, p: &Packet<A>) -> Outcome {
    if p.fragment && lb::lookup(p.daddr, p.dport, p.proto).is_some() {
        // Later fragments carry no ports: translating only some pieces of
        // a datagram would corrupt it, so fragments to a VIP are dropped.
        return Outcome::Drop(Stat::DropMalformed);
    }
    if p.is_syn()
        && let Some(fe) = lb::lookup(p.daddr, p.dport, p.proto)
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
            return reverse(ctx, p, &ct);
        }
        if !p.is_syn() {
            return established(ctx, p, &ct);
        }
    }
    if p.is_syn() {
        // Not to a frontend (looked up above): nothing to translate.
        return not_ours(p);
    }
    let Some(fe) = lb::lookup(p.daddr, p.dport, p.proto) else {
        return Outcome::Forward(Stat::Pass);
    };
    new_flow(ctx, p, &fe, Existing::Replace).unwrap_or(Outcome::Drop(Stat::DropInternal))
}

/// What [`track`] leaves to its caller.
pub enum Step<A> {
    Done(Outcome),
    /// A tracked flow's packet: [`follow`] takes it from here.
    Tracked(CtValueOf<A>),
    /// A new flow to this frontend: [`open_flow`] takes it from here.
    Open(Frontend<A>),
}

/// [`handle`] in three parts, for a family whose dispatch, tracked-flow
/// and new-flow paths do not fit one 512-byte stack together (IPv6): the
/// hook runs [`follow`] and [`open_flow`] in programs of their own,
/// reached by tail call. The tracked tuple is looked up first, SYNs
/// included (`handle` saves that lookup for IPv4); a frontend without
/// backends is settled here.
#[inline(always)]
pub fn track<A: Family>(p: &Packet<A>) -> Step<A> {
    let fe = if let Some(ct) = conntrack::lookup(p) {
        if ct.is_reverse() || (!p.is_syn() && !p.fragment) {
            return Step::Tracked(ct);
        }
        let Some(fe) = lb::lookup(p.daddr, p.dport, p.proto) else {
            return Step::Done(not_ours(p));
        };
        if !p.fragment && syn_keeps_flow(p, &fe, &ct) {
            return Step::Tracked(ct);
        }
        fe
    } else {
        match lb::lookup(p.daddr, p.dport, p.proto) {
            Some(fe) => fe,
            None => return Step::Done(not_ours(p)),
        }
    };
    if p.fragment {
        // As in `handle`: no piece of a datagram to a VIP is translated.
        return Step::Done(Outcome::Drop(Stat::DropMalformed));
    }
    if fe.count == 0 {
        return Step::Done(admit(p, &fe).unwrap_or_else(|| without_backends(&fe)));
    }
    Step::Open(fe)
}

/// A packet to no frontend, untracked: passed on untranslated (a SYN
/// first clears its reply tuple, as in [`handle`]).
#[inline(always)]
fn not_ours<A: Family>(p: &Packet<A>) -> Outcome {
    if p.is_syn() {
        conntrack::forget_reply_of(p);
    }
    Outcome::Forward(Stat::Pass)
}

/// A tracked flow's packet (see [`track`]).
#[inline(always)]
pub fn follow<C: Hook, A: Family>(ctx: &C, p: &Packet<A>, ct: &CtValueOf<A>) -> Outcome {
    if ct.is_reverse() {
        reverse(ctx, p, ct)
    } else {
        established(ctx, p, ct)
    }
}

/// The second half of [`track`]: a new flow to `fe`.
#[inline(always)]
pub fn open_flow<C: Hook, A: Family>(ctx: &C, p: &Packet<A>, fe: &Frontend<A>) -> Outcome {
    new_flow(ctx, p, fe, Existing::Replace).unwrap_or(Outcome::Drop(Stat::DropInternal))
}

/// The refusal of a packet its frontend's source ranges exclude, if they
/// do.
#[inline(always)]
fn admit<A: Family>(p: &Packet<A>, fe: &Frontend<A>) -> Option<Outcome> {
    if fe.flags & SVC_FLAG_EXTERNAL != 0 && !lb::source_allowed(fe, p.daddr, p.saddr) {
        return Some(Outcome::Drop(Stat::DropSourceRange));
    }
    None
}

/// A new flow to a frontend without backends (to answer).
#[inline(always)]
fn without_backends<A: Family>(fe: &Frontend<A>) -> Outcome {
    if fe.flags & SVC_FLAG_LOCAL_ONLY != 0 {
        // kube-proxy drops, not rejects: another node may have
        // endpoints, and the load balancer's health check steers.
        return Outcome::Drop(Stat::DropNoLocalBackend);
    }
    Outcome::NoBackend
}

/// The translation a SNATed flow's entry points to (in the map: its
/// next-hop cache is kept there).
#[inline(always)]
fn snat_of<A: Family>(
    p: &Packet<A>,
    ct: &CtValueOf<A>,
) -> Result<Option<*mut NatValueOf<A>>, Outcome> {
    if ct.flags & CT_FLAG_SNAT == 0 {
        return Ok(None);
    }
    match snat::lookup(&conntrack::key_of(p)) {
        Some(n) => Ok(Some(n)),
        // Evicted apart from its conntrack entry: nothing to answer with.
        None => Err(Outcome::Drop(Stat::DropSnat)),
    }
}

/// A reply from a backend: its source goes back to the frontend (and its
/// destination back to the client, if the flow was SNATed).
#[inline(always)]
fn reverse<C: Hook, A: Family>(ctx: &C, p: &Packet<A>, ct: &CtValueOf<A>) -> Outcome {
    let mut t = Tuple::of(p).src(ct.addr, ct.port);
    let nat = match snat_of(p, ct) {
        Ok(n) => n,
        Err(o) => return o,
    };
    if let Some(n) = nat {
        let (addr, port) = unsafe { ((*n).addr, (*n).port) };
        t = t.dst(addr, port);
    }
    if ct.flags & CT_FLAG_COUNTED != 0 {
        least_conn::reply_segment(p, &t);
    }
    counted(
        ctx,
        ct.svc_id,
        translated(ctx, p, &t, Stat::RevNat, ct.flags, nat),
    )
}

#[inline(always)]
fn established<C: Hook, A: Family>(ctx: &C, p: &Packet<A>, ct: &CtValueOf<A>) -> Outcome {
    if ct.flags & CT_FLAG_COUNTED != 0 {
        least_conn::forward_segment(p);
    }
    if ct.flags & CT_FLAG_DSR != 0 {
        return counted(
            ctx,
            ct.svc_id,
            ctx.dsr(p, ct.addr, ct.port, Stat::DnatEstablished),
        );
    }
    let mut t = Tuple::of(p).dst(ct.addr, ct.port);
    let nat = match snat_of(p, ct) {
        Ok(n) => n,
        Err(o) => return o,
    };
    if let Some(n) = nat {
        let (addr, port) = unsafe { ((*n).addr, (*n).port) };
        t = t.src(addr, port);
    }
    counted(
        ctx,
        ct.svc_id,
        translated(ctx, p, &t, Stat::DnatEstablished, ct.flags, nat),
    )
}

#[inline(always)]
fn syn_to_frontend<C: Hook, A: Family>(ctx: &C, p: &Packet<A>, fe: &Frontend<A>) -> Outcome {
    if let Some(done) = new_flow(ctx, p, fe, Existing::Keep) {
        return done;
    }
    // The tuple is tracked. A retransmitted SYN keeps its backend, but only
    // while that backend still serves the frontend: a new connection
    // reusing a closed flow's tuple must not follow it to a pod that is
    // gone, nor to a SNAT port another flow has taken since.
    if let Some(ct) = conntrack::lookup(p)
        && !ct.is_reverse()
        && syn_keeps_flow(p, fe, &ct)
    {
        return established(ctx, p, &ct);
    }
    new_flow(ctx, p, fe, Existing::Replace).unwrap_or(Outcome::Drop(Stat::DropInternal))
}

/// Whether a SYN on the tracked tuple of `ct` keeps that flow: only while
/// its backend still serves `fe` and, if SNATed, it still holds its port.
/// Else the flow is replaced, and its SNAT port, if it still has one, is
/// freed now.
#[inline(always)]
fn syn_keeps_flow<A: Family>(p: &Packet<A>, fe: &Frontend<A>, ct: &CtValueOf<A>) -> bool {
    let key = conntrack::key_of(p);
    if lb::still_serves(fe, ct) && snat::holds_port(&key, ct) {
        return true;
    }
    snat::release(&key, ct);
    false
}

/// A new flow to `fe`: admission (source ranges), backend choice, then
/// tracking and translation. `None` when `Existing::Keep` found the
/// tuple tracked, for the caller to settle.
#[inline(always)]
fn new_flow<C: Hook, A: Family>(
    ctx: &C,
    p: &Packet<A>,
    fe: &Frontend<A>,
    existing: Existing,
) -> Option<Outcome> {
    if let Some(refused) = admit(p, fe) {
        return Some(refused);
    }
    let Some((id, be)) = lb::select_backend(fe, p) else {
        return Some(without_backends(fe));
    };
    open(ctx, p, fe, id, &be, existing)
}

/// Tracks the flow to the chosen backend and rewrites the packet to it;
/// `None` when `Existing::Keep` found the tuple tracked.
#[inline(always)]
fn open<C: Hook, A: Family>(
    ctx: &C,
    p: &Packet<A>,
    fe: &Frontend<A>,
    id: u32,
    be: &BackendOf<A>,
    existing: Existing,
) -> Option<Outcome> {
    // A pod reaching its own Service, given itself: its source goes to
    // the hairpin address (it would answer its own address itself, not
    // through here), and the packets are routed back to it, as external
    // flows are (kube-proxy masquerades hairpin flows too). Not a pod on
    // another node reaching a NodePort here: the SNAT to this node that
    // any flow to a backend elsewhere gets serves it (its replies come
    // back here), and the hairpin address would not.
    let hairpin = be.addr == p.saddr
        && (fe.flags & SVC_FLAG_EXTERNAL == 0 || be.flags & BACKEND_FLAG_LOCAL != 0);
    let external = fe.flags & SVC_FLAG_EXTERNAL != 0 || hairpin;
    let elsewhere = fe.flags & SVC_FLAG_EXTERNAL != 0
        && fe.flags & SVC_FLAG_LOCAL_ONLY == 0
        && be.flags & BACKEND_FLAG_LOCAL == 0;
    // externalTrafficPolicy Cluster to a backend elsewhere: direct server
    // return where configured, else SNAT, so the reply returns through
    // this node (kube-proxy masquerades too).
    let direct = elsewhere && !hairpin && dsr::enabled_for(p.proto);
    let snat = if hairpin {
        Some(A::HAIRPIN)
    } else if elsewhere && !direct {
        match lb::config().and_then(A::snat_addr) {
            Some(a) => Some(a),
            None => return Some(Outcome::Drop(Stat::DropSnat)),
        }
    } else {
        None
    };
    let flow = NewFlow {
        be_addr: be.addr,
        be_port: be.port,
        svc_id: fe.svc_id,
        backend_id: id,
        flags: least_conn::flow_flags(fe)
            | match (external, direct) {
                (true, true) => CT_FLAG_EXTERNAL | CT_FLAG_DSR,
                (true, false) => CT_FLAG_EXTERNAL,
                _ => 0,
            },
        snat,
    };
    match conntrack::create(p, &flow, existing) {
        Ok(Some(_)) if direct => {
            least_conn::opened(flow.flags, id, p.proto);
            Some(counted(
                ctx,
                fe.svc_id,
                ctx.dsr(p, be.addr, be.port, Stat::DsrNew),
            ))
        }
        Ok(Some((saddr, sport))) => {
            least_conn::opened(flow.flags, id, p.proto);
            let t = Tuple::of(p).src(saddr, sport).dst(be.addr, be.port);
            let stat = match snat {
                _ if hairpin => Stat::HairpinNew,
                Some(_) => Stat::SnatNew,
                None => Stat::DnatNew,
            };
            Some(counted(
                ctx,
                fe.svc_id,
                rewritten(ctx, p, &t, stat, flow.flags),
            ))
        }
        Ok(None) => {
            sched::unpick(fe);
            None
        }
        Err(Error::SnatPorts) => Some(Outcome::Drop(Stat::DropSnat)),
        Err(Error::Internal) => Some(Outcome::Drop(Stat::DropInternal)),
    }
}

#[inline(always)]
fn rewritten<C: Hook, A: Family>(
    ctx: &C,
    p: &Packet<A>,
    t: &Tuple<A>,
    stat: Stat,
    ct_flags: u16,
) -> Outcome {
    translated(ctx, p, t, stat, ct_flags, None)
}

/// A tracked flow's packet rewritten to `t`; external ones are routed,
/// through the next hop cached in `nat` when the flow has one.
#[inline(always)]
fn translated<C: Hook, A: Family>(
    ctx: &C,
    p: &Packet<A>,
    t: &Tuple<A>,
    stat: Stat,
    ct_flags: u16,
    nat: Option<*mut NatValueOf<A>>,
) -> Outcome {
    if ct_flags & CT_FLAG_EXTERNAL != 0 {
        let hop = match nat {
            Some(n) => {
                let now = clock::ticks();
                snat::touch(n, p, now);
                fib::lookup_cached(ctx, t, p.proto, n, now)
            }
            None => fib::lookup(ctx, t, p.proto),
        };
        return routed(ctx, p, t, stat, hop);
    }
    match ctx.rewrite(p, t) {
        Ok(()) => Outcome::Forward(stat),
        Err(()) => Outcome::Drop(Stat::DropInternal),
    }
}

/// An external flow's packet: rewritten and sent to its next hop.
#[inline(always)]
fn routed<C: Hook, A: Family>(
    ctx: &C,
    p: &Packet<A>,
    t: &Tuple<A>,
    stat: Stat,
    hop: NextHop,
) -> Outcome {
    let (ifindex, macs, ttl) = match hop {
        NextHop::Found {
            ifindex, macs, ttl, ..
        } => (ifindex, Some(macs), ttl),
        NextHop::Unresolved { ifindex, ttl } if !C::SAME_INTERFACE_ONLY => (ifindex, None, ttl),
        NextHop::Stack if !C::SAME_INTERFACE_ONLY => {
            return match ctx.rewrite(p, t) {
                Ok(()) => Outcome::ToStack(stat),
                Err(()) => Outcome::Drop(Stat::DropInternal),
            };
        }
        _ => return Outcome::Forward(Stat::Pass),
    };
    if C::SAME_INTERFACE_ONLY && ifindex != ctx.arrival_ifindex() {
        return Outcome::Forward(Stat::Pass);
    }
    if ctx.rewrite(p, t).is_err() || ctx.route::<A>(p.proto, ttl, macs.as_ref()).is_err() {
        return Outcome::Drop(Stat::DropInternal);
    }
    Outcome::Redirect {
        stat,
        ifindex,
        neigh: macs.is_none(),
    }
}

/// On the backend's node, a DSR packet taken out of its tunnel: `p` is
/// client -> frontend as the client sent it, for backend
/// `be_addr:be_port`. It is DNATed to the backend and sent there, and the
/// reverse entry lets the replies leave from here as the frontend.
#[inline(always)]
pub fn deliver_dsr<C: Hook, A: Family>(
    ctx: &C,
    p: &Packet<A>,
    be_addr: A,
    be_port: u16,
) -> Outcome {
    // The frontend as the ingress node knew it: a VIP, or a NodePort of
    // another node's address.
    let fe = lb::lookup_frontend(p.daddr, p.dport, p.proto)
        .or_else(|| lb::lookup_frontend(A::ZERO, p.dport, p.proto));
    let Some(fe) = fe else {
        return Outcome::Drop(Stat::DropMalformed);
    };
    if conntrack::track_dsr_reply(p, be_addr, be_port, fe.svc_id).is_err() {
        return Outcome::Drop(Stat::DropInternal);
    }
    let t = Tuple::of(p).dst(be_addr, be_port);
    counted(
        ctx,
        fe.svc_id,
        translated(ctx, p, &t, Stat::DnatEstablished, CT_FLAG_EXTERNAL, None),
    )
}

/// `o`, counted for frontend `svc_id` (`stats::service`) when the packet
/// goes on translated: not when a hook leaves it untranslated to the
/// next one (XDP to tc, which counts it then) or drops it.
#[inline(always)]
fn counted<C: Hook>(ctx: &C, svc_id: u32, o: Outcome) -> Outcome {
    let delivered = match &o {
        Outcome::Forward(s) => *s != Stat::Pass,
        Outcome::Redirect { .. } | Outcome::ToStack(_) => true,
        Outcome::Drop(_) | Outcome::NoBackend => false,
    };
    if delivered {
        stats::service(svc_id, ctx.wire_len());
    }
    o
}

/// A packet's flow, as the schedulers see it: its client is its source
/// address; Maglev hashes the source address, port and protocol (not the
/// destination, which differs between nodes for a NodePort: every node
/// then maps a flow to the same backend).
impl<A: Family> lb::Origin for Packet<A> {
    #[inline(always)]
    fn client(&self) -> lb::Client {
        lb::Client {
            scope: AFFINITY_BY_ADDR,
            id: self.saddr.mapped().addr,
        }
    }
    #[inline(always)]
    fn flow_hash(&self) -> u32 {
        sched::hash::words_and(
            &self.saddr.mapped().addr,
            (self.sport as u32) << 8 | self.proto as u32,
        )
    }
    #[inline(always)]
    fn dst_hash(&self) -> u32 {
        sched::hash::words(&self.daddr.mapped().addr)
    }
}
