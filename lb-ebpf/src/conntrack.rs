//! Connection tracking: a forward entry (client -> VIP) pins a flow to its
//! backend, a reverse entry (backend -> client) lets replies be translated
//! back. Both live in one LRU map and one key space, so idle flows age out
//! under pressure and any packet needs a single lookup to learn which, if
//! either, it is.
use lb_common::{CT_FLAG_REVERSE, CtKey, CtValue};

use crate::maps::CONNTRACK;
use crate::parse::Packet;

#[inline(always)]
fn key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

/// The entry, forward or reverse, that `p`'s tuple matches.
#[inline(always)]
pub fn lookup(p: &Packet) -> Option<CtValue> {
    let k = key(p.saddr, p.daddr, p.sport, p.dport, p.proto);
    unsafe { CONNTRACK.get(k) }.copied()
}

/// The entry the reply to the packet `q` would match. An ICMP error
/// quotes a packet; the entry that explains it is the one its answer hits.
#[inline(always)]
pub fn lookup_reply_to(q: &Packet) -> Option<CtValue> {
    let k = key(q.daddr, q.saddr, q.dport, q.sport, q.proto);
    unsafe { CONNTRACK.get(k) }.copied()
}

/// Records both directions of a new flow from `p` (client -> VIP) to the
/// backend `be_addr:be_port`.
#[inline(always)]
pub fn create(
    p: &Packet,
    be_addr: u32,
    be_port: u16,
    svc_id: u32,
    backend_id: u32,
) -> Result<(), ()> {
    let fwd = key(p.saddr, p.daddr, p.sport, p.dport, p.proto);
    let fwd_v = CtValue {
        addr: be_addr,
        port: be_port,
        flags: 0,
        svc_id,
        backend_id,
    };
    let rev = key(be_addr, p.saddr, be_port, p.sport, p.proto);
    let rev_v = CtValue {
        addr: p.daddr,
        port: p.dport,
        flags: CT_FLAG_REVERSE,
        svc_id,
        backend_id,
    };
    // Reverse first: once the forward entry exists, replies must translate.
    CONNTRACK.insert(rev, rev_v, 0).map_err(|_| ())?;
    CONNTRACK.insert(fwd, fwd_v, 0).map_err(|_| ())
}
