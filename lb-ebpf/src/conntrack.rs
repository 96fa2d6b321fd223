//! Connection tracking: a forward entry (client -> VIP) pins a flow to its
//! backend, a reverse entry (backend -> client) lets replies be translated
//! back. Both live in one LRU map and one key space, so idle flows age out
//! under pressure and any packet needs a single lookup to learn which, if
//! either, it is.
use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{CT_FLAG_REVERSE, CtKey, CtValue};

use crate::maps::CONNTRACK;
use crate::parse::Packet;

/// The entry, forward or reverse, that `p`'s tuple matches.
#[inline(always)]
pub fn lookup(p: &Packet) -> Option<CtValue> {
    let k = CtKey::new(p.saddr, p.daddr, p.sport, p.dport, p.proto);
    unsafe { CONNTRACK.get(k) }.copied()
}

/// The entry the reply to the packet `q` would match. An ICMP error
/// quotes a packet; the entry that explains it is the one its answer hits.
#[inline(always)]
pub fn lookup_reply_to(q: &Packet) -> Option<CtValue> {
    let k = CtKey::new(q.daddr, q.saddr, q.dport, q.sport, q.proto);
    unsafe { CONNTRACK.get(k) }.copied()
}

/// What [`create`] does when the tuple already has a forward entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Replace,
    /// Leave it (and write nothing): the caller decides.
    Keep,
}

const EEXIST: i64 = 17;

/// Records both directions of a new flow from `p` (client -> VIP) to the
/// backend `be_addr:be_port`. Returns false when `Existing::Keep` found
/// the tuple tracked. The insert that refuses a tracked tuple doubles as
/// the lookup, so a new connection costs no separate miss.
#[inline(always)]
pub fn create(
    p: &Packet,
    be_addr: u32,
    be_port: u16,
    svc_id: u32,
    backend_id: u32,
    existing: Existing,
) -> Result<bool, ()> {
    let fwd = CtKey::new(p.saddr, p.daddr, p.sport, p.dport, p.proto);
    let fwd_v = CtValue {
        addr: be_addr,
        port: be_port,
        flags: 0,
        svc_id,
        backend_id,
    };
    let rev = CtKey::new(be_addr, p.saddr, be_port, p.sport, p.proto);
    let rev_v = CtValue {
        addr: p.daddr,
        port: p.dport,
        flags: CT_FLAG_REVERSE,
        svc_id,
        backend_id,
    };
    let flags = match existing {
        Existing::Replace => BPF_ANY,
        Existing::Keep => BPF_NOEXIST,
    };
    // Forward first is safe: no reply can come before this packet leaves,
    // after both writes.
    match CONNTRACK.insert(fwd, fwd_v, flags as u64) {
        Ok(()) => {}
        Err(e) if e as i64 == -EEXIST => return Ok(false),
        Err(_) => return Err(()),
    }
    CONNTRACK.insert(rev, rev_v, 0).map_err(|_| ())?;
    Ok(true)
}
