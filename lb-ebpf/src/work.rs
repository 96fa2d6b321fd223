//! Per-CPU work areas: a new flow's conntrack keys and values are built
//! in map memory rather than on the stack. The verifier allows 512 bytes
//! of stack for a whole call chain, and IPv6's 40-byte keys, twice over
//! with their values, do not fit beside the rest of the new-flow path.
//! A program runs to completion on its CPU (softirq, or bottom halves
//! disabled at tc egress), so no two packets share an area at once.
use lb_common::{CtKeyOf, CtValueOf, In6, V6_SLOT_NEW_FLOW, V6_SLOT_TRACKED};

use crate::flow::{Outcome, Step};
use crate::lb::Frontend;
use crate::maps::{PKT6, WORK6};
use crate::parse::{IcmpError, Packet};
use crate::snat::Probe;

#[repr(C)]
pub struct Work<A> {
    /// The flow's forward (client -> frontend) key and value.
    pub fwd: CtKeyOf<A>,
    pub fwd_v: CtValueOf<A>,
    /// Its reverse (backend -> client) key and value.
    pub rev: CtKeyOf<A>,
    pub rev_v: CtValueOf<A>,
    /// The frontend a new flow goes to, handed from the program that
    /// found it to the one that opens the flow (IPv6, see `flow::track`).
    pub fe: Frontend<A>,
    /// A tracked flow's entry, handed on the same way.
    pub ct: CtValueOf<A>,
    /// An ICMP error being translated.
    pub icmp: IcmpError<A>,
    /// A SNAT port search's state and the reply tuple it tries.
    pub probe: Probe<A>,
    pub probe_key: CtKeyOf<A>,
    /// The forward key of the flow that held a reclaimed port.
    pub probe_holder: CtKeyOf<A>,
    /// A DSR packet's backend, from its tunnel's outer header, handed to
    /// the stage that takes it out (IPv6).
    pub dsr_backend: A,
    pub dsr_port: u16,
}

/// This CPU's parsed IPv6 packet and work area, as the IPv6 ingress
/// program left them for the stage it tail-called (tc and XDP alike).
#[inline(always)]
pub fn staged6() -> Option<(&'static Packet<In6>, &'static mut Work<In6>)> {
    let (p, w) = (PKT6.get_ptr(0)?, WORK6.get_ptr_mut(0)?);
    // SAFETY: this CPU's areas, for this packet alone (see above).
    Some(unsafe { (&*p, &mut *w) })
}

/// Hands a dispatched IPv6 packet on: what its stage needs into the work
/// area, and the stage's slot; `Err` with the outcome when no stage is
/// needed.
#[inline(always)]
pub fn hand_over(w: &mut Work<In6>, step: Step<In6>) -> Result<u32, Outcome> {
    match step {
        Step::Done(o) => Err(o),
        Step::Tracked(ct) => {
            w.ct = ct;
            Ok(V6_SLOT_TRACKED)
        }
        Step::Open(fe) => {
            w.fe = fe;
            Ok(V6_SLOT_NEW_FLOW)
        }
    }
}
