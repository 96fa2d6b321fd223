//! Source NAT for external flows forwarded to a backend on another node
//! (externalTrafficPolicy Cluster): the flow leaves with this node's
//! address and a source port of its own, so the backend's replies come
//! back here to be translated back. Ports are allocated in the datapath:
//! a random port in the configured range, claimed by inserting the reply
//! tuple's conntrack entry only if no flow holds it (collision-free
//! without a lock), a few tries before giving up.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use lb_common::{CtKey, CtValue, NatValue, SNAT_PORT_TRIES};

use crate::conntrack::Error;
use crate::lb;
use crate::maps::{CONNTRACK, SNAT};
use crate::parse::Packet;

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
    for _ in 0..SNAT_PORT_TRIES {
        let nport = (port as u16).to_be();
        let rev = CtKey::new(be_addr, snat_addr, be_port, nport, p.proto);
        if CONNTRACK.insert(rev, *rev_v, BPF_NOEXIST as u64).is_ok() {
            return Ok((rev, nport));
        }
        // Taken (or the insert failed): the next port, wrapping.
        port = if port >= max { min } else { port + 1 };
    }
    Err(Error::SnatPorts)
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
    SNAT.insert(rev, nat(client, client_port), 0)
        .map_err(|_| ())?;
    SNAT.insert(fwd, nat(snat_addr, snat_port), 0)
        .map_err(|_| ())
}

/// The translation kept for a SNATed flow's conntrack key, in the map:
/// its next-hop cache is refreshed in place.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut NatValue> {
    SNAT.get_ptr_mut(key)
}

#[inline(always)]
fn nat(addr: u32, port: u16) -> NatValue {
    NatValue {
        addr,
        port,
        hop_mtu: 0,
        hop_ifindex: 0,
        hop_macs: [0; 12],
        hop_checked: 0,
        _pad1: 0,
    }
}
