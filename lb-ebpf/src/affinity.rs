//! Session affinity (`sessionAffinity: ClientIP`): a client's new flows to
//! a frontend go to the backend its session holds, while the session's
//! last new flow was less than the frontend's timeout ago (kube-proxy's
//! `recent` match counts new connections too, not packets) and the
//! backend still sits in the frontend slot it was chosen from: a backend
//! that left the Service (or an endpoint that stopped being ready) is
//! never used, and the flow starts a new session. One LRU map serves both
//! families and both paths (packets and sockets).
use lb_common::{AffinityKey, AffinityValue, BackendOf};

use crate::clock;
use crate::family::Family;
use crate::lb::{Frontend, Origin, at_slot};
use crate::maps::AFFINITY;
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
            && s.slot <= fe.count
            && let Some((id, be)) = at_slot(fe, s.slot)
            && id == s.backend_id
        {
            s.last = now;
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
