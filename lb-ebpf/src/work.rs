//! Per-CPU work areas: a new flow's conntrack keys and values are built
//! in map memory rather than on the stack. The verifier allows 512 bytes
//! of stack for a whole call chain, and IPv6's 40-byte keys, twice over
//! with their values, do not fit beside the rest of the new-flow path.
//! A program runs to completion on its CPU (softirq, or bottom halves
//! disabled at tc egress), so no two packets share an area at once.
use lb_common::{CtKeyOf, CtValueOf};

use crate::lb::Frontend;
use crate::parse::IcmpError;
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
}
