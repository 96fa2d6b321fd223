//! Session affinity (`sessionAffinity: ClientIP`): a client's new flows to
//! a frontend go to the backend its session holds, while the session's
//! last new flow was less than the frontend's timeout ago (kube-proxy's
//! `recent` match counts new connections too, not packets) and the
//! backend still serves the frontend (in the slot it was chosen from, or
//! in the one the agent moved it to, from `MEMBERS`): a backend that left
//! the Service (or an endpoint that stopped being ready) is never used,
//! and the flow starts a new session. One LRU map serves both
//! families and both paths (packets and sockets).
use lb_common::{AffinityKey, AffinityValue, BackendOf, MemberKey};

use crate::clock;
use crate::family::Family;
use crate::lb::{Frontend, Origin, at_slot};
use crate::maps::{AFFINITY, MEMBERS};
use crate::sched;

#[inline(always)]
pub fn select<A: Family, O: Origin>(fe: &Frontend<A>, o: &O) -> Option<(u32, BackendOf<A>)> {
    let client = o.client();
    let key = AffinityKey {
        svc_id: fe.svc_id,
        scope: client.scope,
        client: client.id,
    };
    let now = clock::ticks();
    if let Some(s) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: a map value; a concurrent refresh writes the same time.
        let s = unsafe { &mut *s };
        if now.wrapping_sub(s.last) <= fe.affinity
            && let Some((id, be, slot)) = session_backend(fe, s.backend_id, s.slot)
        {
            s.last = now;
            s.slot = slot;
            return Some((id, be));
        }
    }
    // A new session: the frontend's scheduler places it.
    let slot = sched::pick(fe, o)?;
    let (id, be) = at_slot(fe, slot)?;
    let session = AffinityValue {
        backend_id: id,
        slot,
        _pad: 0,
        last: now,
    };
    // A failed write costs the session, not the flow.
    let _ = AFFINITY.insert(key, session, 0);
    Some((id, be))
}

/// The session's backend `id` if it still serves `fe`: in the slot the
/// session remembers, or else in the one the frontend's membership map
/// gives (it moved), with that slot.
#[inline(always)]
fn session_backend<A: Family>(
    fe: &Frontend<A>,
    id: u32,
    slot: u16,
) -> Option<(u32, BackendOf<A>, u16)> {
    if slot <= fe.count
        && let Some((at, be)) = at_slot(fe, slot)
        && at == id
    {
        return Some((at, be, slot));
    }
    let key = MemberKey {
        svc_id: fe.svc_id,
        backend_id: id,
    };
    let moved = *unsafe { MEMBERS.get(key) }?;
    let moved = u16::try_from(moved).ok()?;
    if moved == 0 || moved > fe.count {
        return None;
    }
    let (at, be) = at_slot(fe, moved)?;
    (at == id).then_some((at, be, moved))
}
