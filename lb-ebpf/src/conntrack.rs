//! Connection tracking: a forward entry (client -> VIP) pins a flow to its
//! backend, a reverse entry (backend -> client) lets replies be translated
//! back. Both live in one LRU map, so idle flows age out under pressure.
use lb_common::{CT_DIR_FORWARD, CT_DIR_REVERSE, CtKey, CtValue};

use crate::maps::CONNTRACK;
use crate::parse::Packet;

#[inline(always)]
fn key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, dir: u8) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        dir,
        _pad: [0; 2],
    }
}

/// The entry the reply to the packet `saddr:sport -> daddr:dport` would
/// match. An ICMP error quotes a packet; the entry that explains it is the
/// one its answer would hit.
#[inline(always)]
pub fn lookup_reply_to(q: &Packet, dir: u8) -> Option<CtValue> {
    let k = key(q.daddr, q.saddr, q.dport, q.sport, q.proto, dir);
    unsafe { CONNTRACK.get(k) }.copied()
}

/// The backend a tracked flow to a VIP was given.
#[inline(always)]
pub fn lookup_forward(p: &Packet) -> Option<CtValue> {
    let k = key(p.saddr, p.daddr, p.sport, p.dport, p.proto, CT_DIR_FORWARD);
    unsafe { CONNTRACK.get(k) }.copied()
}

/// The VIP:port a reply from a backend must appear to come from.
#[inline(always)]
pub fn lookup_reverse(p: &Packet) -> Option<CtValue> {
    let k = key(p.saddr, p.daddr, p.sport, p.dport, p.proto, CT_DIR_REVERSE);
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
    let fwd = key(p.saddr, p.daddr, p.sport, p.dport, p.proto, CT_DIR_FORWARD);
    let fwd_v = CtValue {
        addr: be_addr,
        port: be_port,
        flags: 0,
        svc_id,
        backend_id,
    };
    let rev = key(be_addr, p.saddr, be_port, p.sport, p.proto, CT_DIR_REVERSE);
    let rev_v = CtValue {
        addr: p.daddr,
        port: p.dport,
        flags: 0,
        svc_id,
        backend_id,
    };
    // Reverse first: once the forward entry exists, replies must translate.
    CONNTRACK.insert(rev, rev_v, 0).map_err(|_| ())?;
    CONNTRACK.insert(fwd, fwd_v, 0).map_err(|_| ())
}
