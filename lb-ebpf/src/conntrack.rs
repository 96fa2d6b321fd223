//! Connection tracking: a forward entry (client -> VIP) pins a flow to its
//! backend, a reverse entry (backend -> client) lets replies be translated
//! back. Both live in one LRU map and one key space, so idle flows age out
//! under pressure and any packet needs a single lookup to learn which, if
//! either, it is. A SNATed flow's entries are flagged and point to its
//! `snat` entries, which hold what the conntrack value has no room for.
use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{CT_FLAG_DSR, CT_FLAG_EXTERNAL, CT_FLAG_REVERSE, CT_FLAG_SNAT, CtKeyOf, CtValueOf};

use crate::family::Family;
use crate::parse::Packet;
use crate::snat;

/// The entry, forward or reverse, that `p`'s tuple matches.
#[inline(always)]
pub fn lookup<A: Family>(p: &Packet<A>) -> Option<CtValueOf<A>> {
    unsafe { A::conntrack().get(key_of(p)) }.copied()
}

#[inline(always)]
pub fn key_of<A: Family>(p: &Packet<A>) -> CtKeyOf<A> {
    CtKeyOf::new(p.saddr, p.daddr, p.sport, p.dport, p.proto)
}

/// The key the reply to the packet `q` would match. An ICMP error
/// quotes a packet; the entry that explains it is the one its answer hits.
#[inline(always)]
pub fn reply_key<A: Family>(q: &Packet<A>) -> CtKeyOf<A> {
    CtKeyOf::new(q.daddr, q.saddr, q.dport, q.sport, q.proto)
}

#[inline(always)]
pub fn lookup_key<A: Family>(k: &CtKeyOf<A>) -> Option<CtValueOf<A>> {
    unsafe { A::conntrack().get(k) }.copied()
}

/// For a SYN that opens a connection no frontend translates (straight to
/// a pod, as the socket hooks send them): an entry under its reply's key
/// is a closed translated flow's reverse entry that the client's reused
/// port now collides with, and it would rewrite this connection's
/// replies to the old frontend. The newest connection wins.
#[inline(always)]
pub fn forget_reply_of<A: Family>(p: &Packet<A>) {
    let _ = A::conntrack().remove(reply_key(p));
}

/// What [`create`] does when the tuple already has a forward entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Replace,
    /// Leave it (and write nothing): the caller decides.
    Keep,
}

/// A new flow's backend and what else its entries carry.
pub struct NewFlow<A> {
    pub be_addr: A,
    pub be_port: u16,
    pub svc_id: u32,
    pub backend_id: u32,
    /// `CT_FLAG_EXTERNAL` or 0.
    pub flags: u16,
    /// SNAT to this node address, for a flow to a backend elsewhere.
    pub snat: Option<A>,
}

/// Why [`create`] failed.
pub enum Error {
    /// A map write failed.
    Internal,
    /// No free SNAT source port.
    SnatPorts,
}

const EEXIST: i64 = 17;

/// Records both directions of a new flow from `p` (client -> VIP) and
/// returns the source it leaves with (the client's own unless SNATed), or
/// None when `Existing::Keep` found the tuple tracked. The insert that
/// refuses a tracked tuple doubles as the lookup, so a new connection
/// costs no separate miss.
// The keys and values are passed by reference into the work area:
// passing them by value (as clippy suggests) copies them to the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn create<A: Family>(
    p: &Packet<A>,
    f: &NewFlow<A>,
    existing: Existing,
) -> Result<Option<(A, u16)>, Error> {
    let ct = A::conntrack();
    let Some(w) = A::work() else {
        return Err(Error::Internal);
    };
    // SAFETY: this CPU's area, used by this packet alone (see `work`).
    let w = unsafe { &mut *w };
    w.fwd = key_of(p);
    w.fwd_v = CtValueOf {
        addr: f.be_addr,
        port: f.be_port,
        flags: f.flags,
        svc_id: f.svc_id,
        backend_id: f.backend_id,
    };
    w.rev_v = CtValueOf {
        addr: p.daddr,
        port: p.dport,
        flags: f.flags | CT_FLAG_REVERSE,
        svc_id: f.svc_id,
        backend_id: f.backend_id,
    };
    let flags = match existing {
        Existing::Replace => BPF_ANY,
        Existing::Keep => BPF_NOEXIST,
    } as u64;
    let Some(snat_addr) = f.snat else {
        // Forward first is safe: no reply can come before this packet
        // leaves, after both writes.
        match ct.insert(&w.fwd, &w.fwd_v, flags) {
            Ok(()) => {}
            Err(e) if e as i64 == -EEXIST => return Ok(None),
            Err(_) => return Err(Error::Internal),
        }
        // A DSR flow's replies never come back here: no reverse entry.
        if f.flags & CT_FLAG_DSR == 0 {
            w.rev = CtKeyOf::new(f.be_addr, p.saddr, f.be_port, p.sport, p.proto);
            ct.insert(&w.rev, &w.rev_v, 0)
                .map_err(|_| Error::Internal)?;
        }
        return Ok(Some((p.saddr, p.sport)));
    };
    // SNAT: the reply tuple (backend -> node address:port) must be unique
    // among every flow's, so the reverse entry is claimed first, with a
    // port no other flow to this backend holds; then the translations;
    // the forward entry last, so that whoever finds it finds them too.
    // A tracked tuple is looked up first here: claiming a port for it
    // would overwrite the translation its flow uses.
    if existing == Existing::Keep && unsafe { ct.get(&w.fwd) }.is_some() {
        return Ok(None);
    }
    w.rev_v.flags |= CT_FLAG_SNAT;
    let claim = snat::Claim {
        be_addr: f.be_addr,
        be_port: f.be_port,
        proto: p.proto,
        snat_addr,
        rev_v: w.rev_v,
    };
    let port = match snat::claim_reverse(w, claim) {
        0 => return Err(Error::SnatPorts),
        port => port as u16,
    };
    w.rev = w.probe.claim.key(port);
    w.fwd_v.flags |= CT_FLAG_SNAT;
    if snat::record(&w.fwd, snat_addr, port, &w.rev, p.saddr, p.sport).is_err()
        || ct.insert(&w.fwd, &w.fwd_v, BPF_ANY as u64).is_err()
    {
        let _ = ct.remove(&w.rev);
        return Err(Error::Internal);
    }
    Ok(Some((snat_addr, port)))
}

/// On the backend's node, for a DSR packet `p` (client -> frontend) that
/// goes to the backend `be_addr:be_port`: the reverse entry its replies
/// take back to the frontend address, written once per flow.
#[inline(always)]
pub fn track_dsr_reply<A: Family>(
    p: &Packet<A>,
    be_addr: A,
    be_port: u16,
    svc_id: u32,
) -> Result<(), ()> {
    let ct = A::conntrack();
    let rev = CtKeyOf::new(be_addr, p.saddr, be_port, p.sport, p.proto);
    if unsafe { ct.get(rev) }.is_some_and(|v| v.addr == p.daddr && v.port == p.dport) {
        return Ok(());
    }
    let v = CtValueOf {
        addr: p.daddr,
        port: p.dport,
        flags: CT_FLAG_REVERSE | CT_FLAG_EXTERNAL | CT_FLAG_DSR,
        svc_id,
        backend_id: 0,
    };
    ct.insert(rev, v, 0).map_err(|_| ())
}
