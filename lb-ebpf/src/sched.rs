//! Scheduling: which slot of a frontend a new flow (or a new session)
//! gets. Random unless the frontend carries `SVC_FLAG_SCHED`, whose
//! scheduler `MAP_SCHED` holds under the frontend's id: round-robin (one
//! counter across CPUs: exact turns for flows opened one after another),
//! Maglev (the frontend's
//! lookup table in `MAGLEV` from its `base`, built by the agent), source or destination hashing. A
//! missing entry or table slot falls back to random: a flow is never
//! dropped for want of scheduler state. Least-conn frontends carry their
//! own flag and need no scheduler entry (see `least_conn`).
use lb_common::{
    SCHED_DEST_HASH, SCHED_MAGLEV, SCHED_ROUND_ROBIN, SCHED_SOURCE_HASH, SVC_FLAG_LEAST_CONN,
    SVC_FLAG_SCHED,
};

use crate::family::Family;
use crate::lb::{Frontend, Origin, random_slot};
use crate::least_conn;
use crate::maps::{MAGLEV, SCHED};

#[inline(always)]
pub fn pick<A: Family, O: Origin>(fe: &Frontend<A>, o: &O) -> Option<u16> {
    match choose(fe, o) {
        0 => None,
        slot => Some(slot as u16),
    }
}

/// Gives back the turn [`pick`] spent on a SYN that did not take it: its
/// tuple was tracked, and it keeps that flow's backend. Sequential flows
/// then get exact round-robin turns even when a client reuses a port.
/// (With session affinity the turn went to a new session, which stays.)
#[inline(always)]
pub fn unpick<A: Family>(fe: &Frontend<A>) {
    give_back(fe.svc_id, fe.flags, fe.affinity);
}

/// [`unpick`]'s work. A BPF subprogram: its ways out leave the caller in
/// one state, so the verifier walks the rest of the path once.
#[inline(never)]
fn give_back(svc_id: u32, flags: u16, affinity: u32) {
    if flags & SVC_FLAG_SCHED == 0 || affinity != 0 {
        return;
    }
    if let Some(s) = SCHED.get_ptr_mut(svc_id)
        && unsafe { (*s).alg } == SCHED_ROUND_ROBIN
    {
        unsafe { crate::atomic::add(&raw mut (*s).next, u64::MAX) };
    }
}

/// [`pick`]'s choice as a slot, 0 for none. A BPF subprogram: every
/// algorithm's way out returns the same kind of state to the caller (a
/// scalar), so the verifier walks the rest of the new-flow path once, not
/// once per algorithm (inlined, the path is past its limit).
#[inline(never)]
fn choose<A: Family, O: Origin>(fe: &Frontend<A>, o: &O) -> u32 {
    match choose_inline(fe, o) {
        Some(s) => s as u32,
        None => 0,
    }
}

#[inline(always)]
fn choose_inline<A: Family, O: Origin>(fe: &Frontend<A>, o: &O) -> Option<u16> {
    let count = fe.count as u32;
    if fe.flags & SVC_FLAG_LEAST_CONN != 0 {
        return least_conn::pick(fe).or_else(|| random_slot(fe.count));
    }
    if fe.flags & SVC_FLAG_SCHED == 0 {
        return random_slot(fe.count);
    }
    let Some(s) = SCHED.get_ptr_mut(fe.svc_id) else {
        return random_slot(fe.count);
    };
    let turn = match unsafe { (*s).alg } {
        SCHED_ROUND_ROBIN => {
            // The turn is read, then counted up atomically: the datapath
            // is built for every BPF CPU version, and a fetching atomic
            // add needs v3. Sequential flows get exact turns; two CPUs
            // opening flows at the same instant may share one.
            let next = unsafe { &raw mut (*s).next };
            let turn = unsafe { next.read_volatile() };
            unsafe { crate::atomic::add(next, 1) };
            turn as u32
        }
        SCHED_MAGLEV => {
            let (size, base) = unsafe { ((*s).table_size, (*s).base) };
            let Some(index) = o.flow_hash().checked_rem(size) else {
                return random_slot(fe.count);
            };
            return match MAGLEV.get(base.wrapping_add(index)) {
                Some(&slot) if slot >= 1 && slot <= count => Some(slot as u16),
                _ => random_slot(fe.count),
            };
        }
        SCHED_SOURCE_HASH => hash::words(&o.client().id),
        SCHED_DEST_HASH => o.dst_hash(),
        _ => return random_slot(fe.count),
    };
    turn.checked_rem(count).map(|s| s as u16 + 1)
}

/// The hashes schedulers use, shared with the CLI's `explain`.
pub use lb_common::hash;
