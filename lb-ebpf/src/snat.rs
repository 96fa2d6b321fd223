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
//! The old flow's forward entries leave with its port, and a SYN on a
//! tracked tuple checks that its flow still holds one (`holds_port`):
//! otherwise a client reusing the tuple would send into the flow that
//! took the port over.
// Keys and values go to the map helpers by reference into the work area:
// by value (as clippy suggests) they would be copied to the stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, generated::bpf_loop},
};
use lb_common::{
    CT_FLAG_REVERSE, CT_FLAG_SNAT, CtKeyOf, CtValueOf, IPPROTO_TCP, NAT_CLOSING, NatValueOf,
    SNAT_CLOSED_TICKS, SNAT_IDLE_OTHER_TICKS, SNAT_IDLE_TCP_TICKS, SNAT_PORT_TRIES,
    SNAT_TOUCH_TICKS,
};

use crate::clock;
use crate::family::Family;
use crate::lb;
use crate::parse::{Packet, TCP_FIN, TCP_RST};
use crate::work::Work;

/// A port claim: the reply tuple's fixed parts and the reverse entry to
/// insert under it.
#[derive(Clone, Copy)]
pub struct Claim<A> {
    pub be_addr: A,
    pub be_port: u16,
    pub proto: u8,
    pub snat_addr: A,
    pub rev_v: CtValueOf<A>,
}

impl<A: Copy> Claim<A> {
    /// The reply tuple with SNAT port `port` (network order).
    #[inline(always)]
    pub fn key(&self, port: u16) -> CtKeyOf<A> {
        CtKeyOf::new(self.be_addr, self.snat_addr, self.be_port, port, self.proto)
    }
}

/// The probing loop's state, for `bpf_loop`'s callback: in the work
/// area (see `work`), as is the key each probe builds. On the stack they
/// would sit under the callback's frame, past the 512 bytes the verifier
/// allows a call chain with IPv6 keys.
#[repr(C)]
pub struct Probe<A> {
    pub claim: Claim<A>,
    /// The port to try next (host order), and the range it wraps in.
    port: u32,
    min: u32,
    max: u32,
    now: u32,
    closed: u32,
    /// The port claimed (network order), 0 while none.
    found: u32,
}

/// One probe: claims `s.port` if free or reclaimable. Run through
/// `bpf_loop`, so the verifier checks the body once, not once per try.
extern "C" fn probe<A: Family>(_i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` holds the work area's address (see `claim_reverse`),
    // which waits on this loop without touching it.
    let w = unsafe { &mut **(ctx as *mut *mut Work<A>) };
    let s = &mut w.probe;
    let nport = (s.port as u16).to_be();
    w.probe_key = s.claim.key(nport);
    let ct = A::conntrack();
    let claimed = ct
        .insert(&w.probe_key, &s.claim.rev_v, BPF_NOEXIST as u64)
        .is_ok()
        || match reclaimable(&w.probe_key, &mut w.probe_holder, s.now, s.closed) {
            Reclaim::No => false,
            Reclaim::Yes { holder } => {
                let ok = ct
                    .insert(&w.probe_key, &s.claim.rev_v, BPF_ANY as u64)
                    .is_ok();
                // The old flow's forward entries go with its port: a
                // client reusing that tuple starts a new flow instead of
                // sending into the one that holds the port now.
                if ok && holder {
                    let _ = ct.remove(&w.probe_holder);
                    let _ = A::snat().remove(&w.probe_holder);
                }
                ok
            }
        };
    if claimed {
        s.found = nport as u32;
        return 1;
    }
    // Taken (or the insert failed): the next port, wrapping.
    s.port = if s.port >= s.max { s.min } else { s.port + 1 };
    0
}

/// Claims a free source port on `snat_addr` towards the backend and
/// inserts the flow's reverse entry under it; returns the port (network
/// order), 0 when none is free.
#[inline(always)]
pub fn claim_reverse<A: Family>(w: &mut Work<A>, claim: Claim<A>) -> u32 {
    let Some(cfg) = lb::config() else {
        return 0;
    };
    let (min, max) = (cfg.snat_port_min as u32, cfg.snat_port_max as u32);
    if min == 0 || max < min {
        return 0;
    }
    // checked_rem: a `%` the compiler cannot prove safe would leave a
    // panic branch the verifier refuses.
    let span = max - min + 1;
    let port = min
        + unsafe { bpf_get_prandom_u32() }
            .checked_rem(span)
            .unwrap_or(0);
    w.probe = Probe {
        claim,
        port,
        min,
        max,
        now: clock::ticks(),
        closed: match cfg.snat_closed_ticks {
            0 => SNAT_CLOSED_TICKS,
            t => t,
        },
        found: 0,
    };
    let mut area: *mut Work<A> = w;
    unsafe {
        bpf_loop(
            SNAT_PORT_TRIES,
            probe::<A> as *mut core::ffi::c_void,
            // The state is in the work area; the helper takes a stack
            // pointer only, so it gets one to the area's address.
            &mut area as *mut *mut Work<A> as *mut core::ffi::c_void,
            0,
        )
    };
    unsafe { (*area).probe.found }
}

/// Whether a reply tuple's port may be taken, and whether a flow held it
/// whose forward key (left in `holder`) is to be removed with it.
enum Reclaim {
    No,
    Yes { holder: bool },
}

/// Whether the reply tuple `rev` is free to claim: held by a SNATed flow
/// that is over, i.e. closed (a FIN or RST either way) long enough ago
/// for the backend's TIME_WAIT to have ended, or idle both ways past its
/// protocol's lifetime, or whose translation the LRU already evicted. A
/// tuple of any other flow is never taken.
#[inline(always)]
fn reclaimable<A: Family>(
    rev: &CtKeyOf<A>,
    holder: &mut CtKeyOf<A>,
    now: u32,
    closed: u32,
) -> Reclaim {
    let Some(ct) = (unsafe { A::conntrack().get(rev) }) else {
        // Gone since the insert failed: free.
        return Reclaim::Yes { holder: false };
    };
    let snat_reverse = CT_FLAG_REVERSE | CT_FLAG_SNAT;
    if ct.flags & snat_reverse != snat_reverse {
        return Reclaim::No;
    }
    let snat = A::snat();
    let Some(r) = (unsafe { snat.get(rev) }) else {
        return Reclaim::Yes { holder: false };
    };
    // The forward side: client -> frontend, if it still uses this port
    // (a replaced flow's forward entry may have moved on to another).
    *holder = CtKeyOf::new(r.addr, ct.addr, r.port, ct.port, rev.proto);
    let f = unsafe { snat.get(&*holder) }.filter(|f| f.addr == rev.daddr && f.port == rev.dport);
    let (mut state, mut idle) = (r.state, now.wrapping_sub(r.seen));
    if let Some(f) = f {
        state |= f.state;
        idle = idle.min(now.wrapping_sub(f.seen));
    }
    let lifetime = if rev.proto == IPPROTO_TCP {
        SNAT_IDLE_TCP_TICKS
    } else {
        SNAT_IDLE_OTHER_TICKS
    };
    if (state & NAT_CLOSING != 0 && idle >= closed) || idle >= lifetime {
        Reclaim::Yes {
            holder: f.is_some(),
        }
    } else {
        Reclaim::No
    }
}

/// False when the tracked flow `fwd` (entry `ct`) is SNATed and has lost
/// its port: its translation or reverse entry is gone, or the reverse
/// entry translates to another client now. A new connection on such a
/// tuple must start over rather than send into another flow.
#[inline(always)]
pub fn holds_port<A: Family>(fwd: &CtKeyOf<A>, ct: &CtValueOf<A>) -> bool {
    ct.flags & CT_FLAG_SNAT == 0 || held_reverse(fwd, ct).is_some()
}

/// Frees the port of the tracked flow `fwd` (entry `ct`) before a new
/// flow replaces it on the same tuple, so that it does not wait out its
/// lifetime held by nothing.
#[inline(always)]
pub fn release<A: Family>(fwd: &CtKeyOf<A>, ct: &CtValueOf<A>) {
    if ct.flags & CT_FLAG_SNAT != 0
        && let Some(rev) = held_reverse(fwd, ct)
    {
        let _ = A::conntrack().remove(rev);
        let _ = A::snat().remove(rev);
    }
}

/// The reverse key of SNATed flow `fwd`, if that entry and its
/// translation are still this flow's.
#[inline(always)]
fn held_reverse<A: Family>(fwd: &CtKeyOf<A>, ct: &CtValueOf<A>) -> Option<CtKeyOf<A>> {
    let snat = A::snat();
    let n = unsafe { snat.get(fwd) }?;
    let rev = CtKeyOf::new(ct.addr, n.addr, ct.port, n.port, fwd.proto);
    let snat_reverse = CT_FLAG_REVERSE | CT_FLAG_SNAT;
    let ours = unsafe { A::conntrack().get(rev) }
        .is_some_and(|c| c.flags & snat_reverse == snat_reverse)
        && unsafe { snat.get(rev) }.is_some_and(|r| r.addr == fwd.saddr && r.port == fwd.sport);
    ours.then_some(rev)
}

/// Notes a packet of a SNATed flow on its translation: when it was last
/// seen (at most once per SNAT_TOUCH_TICKS), and a FIN or RST.
#[inline(always)]
pub fn touch<A>(n: *mut NatValueOf<A>, p: &Packet<A>, now: u32) {
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
pub fn record<A: Family>(
    fwd: &CtKeyOf<A>,
    snat_addr: A,
    snat_port: u16,
    rev: &CtKeyOf<A>,
    client: A,
    client_port: u16,
) -> Result<(), ()> {
    let now = clock::ticks();
    let snat = A::snat();
    snat.insert(rev, nat(client, client_port, now), 0)
        .map_err(|_| ())?;
    snat.insert(fwd, nat(snat_addr, snat_port, now), 0)
        .map_err(|_| ())
}

/// The translation kept for a SNATed flow's conntrack key, in the map:
/// its next-hop cache is refreshed in place.
#[inline(always)]
pub fn lookup<A: Family>(key: &CtKeyOf<A>) -> Option<*mut NatValueOf<A>> {
    A::snat().get_ptr_mut(key)
}

#[inline(always)]
fn nat<A>(addr: A, port: u16, now: u32) -> NatValueOf<A> {
    NatValueOf {
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
