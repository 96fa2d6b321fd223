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
//! Rewrites inside the ICMP payload are stores with incremental checksums
//! computed here: the ICMP checksum covers the quote, no csum helper applies.
use lb_common::{CT_FLAG_SNAT, IPPROTO_UDP};

use crate::checksum::replace;
use crate::conntrack;
use crate::parse::{IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, IcmpError, ptr_at};
use aya_ebpf::programs::TcContext;

/// Whether an error was about one of our flows.
pub enum Outcome {
    NotOurs,
    Translated,
}

#[inline(always)]
pub fn translate(ctx: &TcContext, e: &IcmpError) -> Result<Outcome, ()> {
    let q = &e.inner;
    let Some(ct) = conntrack::lookup_reply_to(q) else {
        return Ok(Outcome::NotOurs);
    };
    if ct.flags & CT_FLAG_SNAT != 0 {
        // Both ends of a SNATed flow changed; not translated (yet): the
        // error passes as it is.
        return Ok(Outcome::NotOurs);
    }
    if ct.is_reverse() {
        let from_backend = e.saddr == q.daddr;
        rewrite_quote(ctx, e, QuoteSide::Destination, ct.addr, ct.port)?;
        if from_backend {
            rewrite_outer(ctx, IP_SRC_OFF, ct.addr)?;
        }
        return Ok(Outcome::Translated);
    }
    if e.daddr == q.saddr {
        rewrite_quote(ctx, e, QuoteSide::Source, ct.addr, ct.port)?;
        rewrite_outer(ctx, IP_DST_OFF, ct.addr)?;
        return Ok(Outcome::Translated);
    }
    Ok(Outcome::NotOurs)
}

#[derive(Clone, Copy)]
enum QuoteSide {
    Source,
    Destination,
}

/// Reads 2 bytes at `off`.
#[inline(always)]
fn get2(ctx: &TcContext, off: usize) -> Result<[u8; 2], ()> {
    Ok(unsafe { *ptr_at::<[u8; 2], _>(ctx, off)? })
}

// Writes go through the store helper, never a direct packet write: one
// direct write anywhere makes the kernel unclone every packet the program
// sees (TCP segments are clones), which cost a fifth of TCP throughput.
#[inline(always)]
fn put2(ctx: &TcContext, off: usize, v: [u8; 2]) -> Result<(), ()> {
    ctx.store(off, &v, 0).map_err(|_| ())
}

#[inline(always)]
fn get4(ctx: &TcContext, off: usize) -> Result<[u8; 4], ()> {
    Ok(unsafe { *ptr_at::<[u8; 4], _>(ctx, off)? })
}

#[inline(always)]
fn put4(ctx: &TcContext, off: usize, v: [u8; 4]) -> Result<(), ()> {
    ctx.store(off, &v, 0).map_err(|_| ())
}

/// Sets one end of the quoted packet to `addr:port` (network order),
/// keeping the quoted IP checksum, the quoted L4 checksum (when quoted)
/// and the ICMP checksum right.
#[inline(always)]
fn rewrite_quote(
    ctx: &TcContext,
    e: &IcmpError,
    side: QuoteSide,
    addr: u32,
    port: u16,
) -> Result<(), ()> {
    let q = &e.inner;
    let (addr_off, port_off) = match side {
        QuoteSide::Source => (e.inner_l3_off + 12, q.l4_off),
        QuoteSide::Destination => (e.inner_l3_off + 16, q.l4_off + 2),
    };
    let icmp_csum_off = e.icmp_off + 2;
    let ip_csum_off = e.inner_l3_off + 10;
    let new_addr = addr.to_ne_bytes();
    let new_port = port.to_ne_bytes();
    let old_addr = get4(ctx, addr_off)?;
    let old_port = get2(ctx, port_off)?;
    let mut icmp_csum = get2(ctx, icmp_csum_off)?;

    let old_ip_csum = get2(ctx, ip_csum_off)?;
    let new_ip_csum = replace(old_ip_csum, &old_addr, &new_addr);
    icmp_csum = replace(icmp_csum, &old_addr, &new_addr);
    icmp_csum = replace(icmp_csum, &old_port, &new_port);
    icmp_csum = replace(icmp_csum, &old_ip_csum, &new_ip_csum);

    if e.inner_l4_csum {
        let l4_csum_off = q.l4_csum_off();
        let old = get2(ctx, l4_csum_off)?;
        // A zero UDP checksum means none was computed: it stays zero.
        if !(q.proto == IPPROTO_UDP && old == [0, 0]) {
            let mut new = replace(old, &old_addr, &new_addr);
            new = replace(new, &old_port, &new_port);
            if q.proto == IPPROTO_UDP && new == [0, 0] {
                new = [0xff, 0xff];
            }
            icmp_csum = replace(icmp_csum, &old, &new);
            put2(ctx, l4_csum_off, new)?;
        }
    }
    put4(ctx, addr_off, new_addr)?;
    put2(ctx, port_off, new_port)?;
    put2(ctx, ip_csum_off, new_ip_csum)?;
    put2(ctx, icmp_csum_off, icmp_csum)
}

/// Sets the outer source or destination address (the ICMP checksum does
/// not cover the outer header).
#[inline(always)]
fn rewrite_outer(ctx: &TcContext, off: usize, addr: u32) -> Result<(), ()> {
    let new = addr.to_ne_bytes();
    let old = get4(ctx, off)?;
    let csum = replace(get2(ctx, IP_CSUM_OFF)?, &old, &new);
    put4(ctx, off, new)?;
    put2(ctx, IP_CSUM_OFF, csum)
}
