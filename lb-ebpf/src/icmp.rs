//! ICMP errors about translated flows, translated back (what Linux
//! conntrack does for RELATED packets). Without this a client never learns
//! the path MTU to a Service, and a port unreachable from a backend names
//! an address the client never talked to.
//!
//! Two cases, told apart by which conntrack entry the quoted packet's
//! answer would hit:
//! - the quote is client -> backend (a DNATed packet), found by its
//!   reverse entry: the quote's destination goes back to the VIP, and so
//!   does the outer source when the backend itself sent the error;
//! - the quote is VIP -> client (a reply as the client saw it), found by
//!   its forward entry: the quote's source goes to the backend, and the
//!   outer destination (the VIP) too, so the backend receives it.
//!
//! A SNATed flow (external, to a backend on another node) changed at both
//! ends: its SNAT entry under the same key holds the other end, so the
//! quote's other end is restored too (client, or this node's address and
//! port), and in the first case the outer destination (this node) becomes
//! the client. That is what lets path MTU discovery work across a
//! NodePort either way.
//!
//! Rewrites inside the ICMP payload are stores with incremental checksums
//! computed here: the ICMP checksum covers the quote, no csum helper applies.
//! ICMPv6 alike, but its checksum covers the outer addresses too (a
//! pseudo header) and the quoted header has no checksum of its own.
use core::mem::size_of;

use lb_common::{CT_FLAG_EXTERNAL, CT_FLAG_SNAT, IPPROTO_UDP};

use crate::checksum::replace;
use crate::conntrack;
use crate::family::Family;
use crate::parse::{IP_CSUM_OFF, IcmpError, L3_OFF, ptr_at};
use crate::snat;
use aya_ebpf::programs::TcContext;

/// Whether an error was about one of our flows.
pub enum Outcome {
    NotOurs,
    Translated,
    /// Translated, about an external flow: for the caller to route. The
    /// stack would drop it whenever its source became this node's address
    /// (a NodePort's): a local source on an arriving packet is a martian.
    External,
}

#[inline(always)]
pub fn translate<A: Family>(ctx: &TcContext, e: &IcmpError<A>) -> Result<Outcome, ()> {
    let q = &e.inner;
    // The key in the work area: the IPv6 stage's stack has no room left.
    let Some(w) = A::work() else {
        return Ok(Outcome::NotOurs);
    };
    let key = unsafe { &mut (*w).fwd };
    *key = conntrack::reply_key(q);
    let Some(ct) = conntrack::lookup_key(key) else {
        return Ok(Outcome::NotOurs);
    };
    let snat = if ct.flags & CT_FLAG_SNAT != 0 {
        match snat::lookup(key) {
            Some(n) => Some(unsafe { ((*n).addr, (*n).port) }),
            // Evicted apart from its conntrack entry: nothing to restore.
            None => return Ok(Outcome::NotOurs),
        }
    } else {
        None
    };
    if ct.is_reverse() {
        rewrite_quote(ctx, e, QuoteSide::Destination, ct.addr, ct.port)?;
        if e.saddr == q.daddr {
            // From the backend itself.
            rewrite_outer(ctx, e, A::SRC_OFF, ct.addr)?;
        }
        if let Some((client, client_port)) = snat {
            rewrite_quote(ctx, e, QuoteSide::Source, client, client_port)?;
            rewrite_outer(ctx, e, A::DST_OFF, client)?;
        }
    } else if e.daddr == q.saddr {
        rewrite_quote(ctx, e, QuoteSide::Source, ct.addr, ct.port)?;
        rewrite_outer(ctx, e, A::DST_OFF, ct.addr)?;
        if let Some((node, node_port)) = snat {
            rewrite_quote(ctx, e, QuoteSide::Destination, node, node_port)?;
        }
    } else {
        return Ok(Outcome::NotOurs);
    }
    if ct.flags & CT_FLAG_EXTERNAL != 0 {
        return Ok(Outcome::External);
    }
    Ok(Outcome::Translated)
}

#[derive(Clone, Copy)]
enum QuoteSide {
    Source,
    Destination,
}

/// Reads a `T` (bytes as in the packet) at `off`.
#[inline(always)]
fn get<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    Ok(unsafe { ptr_at::<T, _>(ctx, off)?.read_unaligned() })
}

// Writes go through the store helper, never a direct packet write: one
// direct write anywhere makes the kernel unclone every packet the program
// sees (TCP segments are clones), which cost a fifth of TCP throughput.
#[inline(always)]
fn put<T>(ctx: &TcContext, off: usize, v: &T) -> Result<(), ()> {
    ctx.store(off, v, 0).map_err(|_| ())
}

/// A value's bytes, for the checksum updates.
#[inline(always)]
fn bytes<T>(v: &T) -> &[u8] {
    unsafe { core::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }
}

/// Sets one end of the quoted packet to `addr:port` (network order),
/// keeping the quoted IPv4 checksum, the quoted L4 checksum (when quoted)
/// and the ICMP checksum right.
#[inline(always)]
fn rewrite_quote<A: Family>(
    ctx: &TcContext,
    e: &IcmpError<A>,
    side: QuoteSide,
    addr: A,
    port: u16,
) -> Result<(), ()> {
    let q = &e.inner;
    let (addr_off, port_off) = match side {
        QuoteSide::Source => (e.inner_l3_off + A::SRC_OFF, q.l4_off),
        QuoteSide::Destination => (e.inner_l3_off + A::DST_OFF, q.l4_off + 2),
    };
    let icmp_csum_off = e.icmp_off + 2;
    let old_addr: A = get(ctx, addr_off)?;
    let old_port: u16 = get(ctx, port_off)?;
    let (old_a, new_a) = (bytes(&old_addr), bytes(&addr));
    let (old_p, new_p) = (old_port.to_ne_bytes(), port.to_ne_bytes());
    let mut icmp_csum: [u8; 2] = get(ctx, icmp_csum_off)?;
    icmp_csum = replace(icmp_csum, old_a, new_a);
    icmp_csum = replace(icmp_csum, &old_p, &new_p);

    if !A::IS_V6 {
        let ip_csum_off = e.inner_l3_off + 10;
        let old_ip_csum: [u8; 2] = get(ctx, ip_csum_off)?;
        let new_ip_csum = replace(old_ip_csum, old_a, new_a);
        icmp_csum = replace(icmp_csum, &old_ip_csum, &new_ip_csum);
        put(ctx, ip_csum_off, &new_ip_csum)?;
    }
    if e.inner_l4_csum {
        let l4_csum_off = q.l4_csum_off();
        let old: [u8; 2] = get(ctx, l4_csum_off)?;
        // A zero UDP checksum means none was computed: it stays zero.
        if !(q.proto == IPPROTO_UDP && old == [0, 0]) {
            let mut new = replace(old, old_a, new_a);
            new = replace(new, &old_p, &new_p);
            if q.proto == IPPROTO_UDP && new == [0, 0] {
                new = [0xff, 0xff];
            }
            icmp_csum = replace(icmp_csum, &old, &new);
            put(ctx, l4_csum_off, &new)?;
        }
    }
    put(ctx, addr_off, &addr)?;
    put(ctx, port_off, &port)?;
    put(ctx, icmp_csum_off, &icmp_csum)
}

/// Sets the outer source or destination address (at `off` in the IP
/// header). The IPv4 header checksum covers it, the ICMP checksum does
/// not; for IPv6 it is the other way round.
#[inline(always)]
fn rewrite_outer<A: Family>(
    ctx: &TcContext,
    e: &IcmpError<A>,
    off: usize,
    addr: A,
) -> Result<(), ()> {
    let off = L3_OFF + off;
    let old: A = get(ctx, off)?;
    let csum_off = if A::IS_V6 {
        e.icmp_off + 2
    } else {
        IP_CSUM_OFF
    };
    let csum = replace(get(ctx, csum_off)?, bytes(&old), bytes(&addr));
    put(ctx, off, &addr)?;
    put(ctx, csum_off, &csum)
}
