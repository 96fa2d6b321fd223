//! Source NAT for external flows forwarded to a backend on another node
//! (externalTrafficPolicy Cluster): the flow leaves with this node's
//! address and a source port of its own, so the backend's replies come
//! back here to be translated back. Ports are allocated in the datapath:
//! a random port in the configured range, claimed by inserting the reply
//! tuple's conntrack entry only if no flow holds it (collision-free
//! without a lock), a few tries before giving up. A port comes back when
//! the flow holding it was closed a while ago or has been idle long
//! (`reclaimable`): conntrack entries themselves only leave the LRU map
//! under pressure, so without this a busy backend would run out of ports.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use lb_common::{
    CT_FLAG_REVERSE, CT_FLAG_SNAT, CtKey, CtValue, IPPROTO_TCP, NAT_CLOSING, NatValue,
    SNAT_CLOSED_TICKS, SNAT_IDLE_OTHER_TICKS, SNAT_IDLE_TCP_TICKS, SNAT_PORT_TRIES,
    SNAT_TOUCH_TICKS,
};

use crate::clock;
use crate::conntrack::Error;
use crate::lb;
use crate::maps::{CONNTRACK, SNAT};
use crate::parse::{Packet, TCP_FIN, TCP_RST};

/// Claims a free source port on `snat_addr` towards the backend and
/// inserts the flow's reverse entry under it.
#[inline(always)]
pub fn claim_reverse(
    p: &Packet,
    be_addr: u32,
    be_port: u16,
    snat_addr: u32,
    rev_v: &CtValue,
) -> Result<(CtKey, u16), Error> {
    let cfg = lb::config().ok_or(Error::SnatPorts)?;
    let (min, max) = (cfg.snat_port_min as u32, cfg.snat_port_max as u32);
    if min == 0 || max < min {
        return Err(Error::SnatPorts);
    }
    // checked_rem: a `%` the compiler cannot prove safe would leave a
    // panic branch the verifier refuses.
    let span = max - min + 1;
    let mut port = min
        + unsafe { bpf_get_prandom_u32() }
            .checked_rem(span)
            .unwrap_or(0);
    let now = clock::ticks();
    let closed = match cfg.snat_closed_ticks {
        0 => SNAT_CLOSED_TICKS,
        t => t,
    };
    for _ in 0..SNAT_PORT_TRIES {
        let nport = (port as u16).to_be();
        let rev = CtKey::new(be_addr, snat_addr, be_port, nport, p.proto);
        if CONNTRACK.insert(rev, *rev_v, BPF_NOEXIST as u64).is_ok()
            || (reclaimable(&rev, now, closed)
                && CONNTRACK.insert(rev, *rev_v, BPF_ANY as u64).is_ok())
        {
            return Ok((rev, nport));
        }
        // Taken (or the insert failed): the next port, wrapping.
        port = if port >= max { min } else { port + 1 };
    }
    Err(Error::SnatPorts)
}

/// True when the reply tuple `rev` is held by a SNATed flow that is
/// over: closed long enough ago for the backend's TIME_WAIT to have
/// ended, or idle past its protocol's lifetime, or whose translation the
/// LRU already evicted. A tuple of any other flow is never taken.
#[inline(always)]
fn reclaimable(rev: &CtKey, now: u32, closed: u32) -> bool {
    let Some(ct) = (unsafe { CONNTRACK.get(rev) }) else {
        // Gone since the insert failed: free.
        return true;
    };
    let snat_reverse = CT_FLAG_REVERSE | CT_FLAG_SNAT;
    if ct.flags & snat_reverse != snat_reverse {
        return false;
    }
    let Some(n) = (unsafe { SNAT.get(rev) }) else {
        return true;
    };
    let idle = now.wrapping_sub(n.seen);
    let lifetime = if rev.proto == IPPROTO_TCP {
        SNAT_IDLE_TCP_TICKS
    } else {
        SNAT_IDLE_OTHER_TICKS
    };
    (n.state & NAT_CLOSING != 0 && idle >= closed) || idle >= lifetime
}

/// Notes a packet of a SNATed flow on its translation: when it was last
/// seen (at most once per SNAT_TOUCH_TICKS), and a FIN or RST.
#[inline(always)]
pub fn touch(n: *mut NatValue, p: &Packet, now: u32) {
    let n = unsafe { &mut *n };
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && p.proto == IPPROTO_TCP {
        n.state |= NAT_CLOSING;
        n.seen = now;
    } else if now.wrapping_sub(n.seen) >= SNAT_TOUCH_TICKS {
        n.seen = now;
    }
}

/// Records both translations: the forward key's source (node address and
/// port), the reverse key's destination (the client).
#[inline(always)]
pub fn record(
    fwd: &CtKey,
    snat_addr: u32,
    snat_port: u16,
    rev: &CtKey,
    client: u32,
    client_port: u16,
) -> Result<(), ()> {
    let now = clock::ticks();
    SNAT.insert(rev, nat(client, client_port, now), 0)
        .map_err(|_| ())?;
    SNAT.insert(fwd, nat(snat_addr, snat_port, now), 0)
        .map_err(|_| ())
}

/// The translation kept for a SNATed flow's conntrack key, in the map:
/// its next-hop cache is refreshed in place.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut NatValue> {
    SNAT.get_ptr_mut(key)
}

#[inline(always)]
fn nat(addr: u32, port: u16, now: u32) -> NatValue {
    NatValue {
        addr,
        port,
        hop_mtu: 0,
        hop_ifindex: 0,
        hop_macs: [0; 12],
        hop_checked: 0,
        seen: now,
        state: 0,
    }
}
