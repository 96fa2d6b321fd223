//! Address/port rewriting with incremental checksum updates. Works for
//! CHECKSUM_PARTIAL skbs too: the helpers adjust the pseudo-header part.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::IPPROTO_UDP;

use crate::checksum::replace;
use crate::parse::{IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, Packet, ptr_at};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub enum Side {
    Source,
    Destination,
}

/// Rewrites the source or destination address and port of `p`.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, p: &Packet, side: Side, addr: u32, port: u16) -> Result<(), ()> {
    let (ip_off, port_off, old_addr, old_port) = match side {
        Side::Source => (IP_SRC_OFF, p.l4_off, p.saddr, p.sport),
        Side::Destination => (IP_DST_OFF, p.l4_off + 2, p.daddr, p.dport),
    };
    let csum_off = p.l4_csum_off();
    // UDP checksum 0 means "none": keep it 0, and never produce 0 by accident.
    let udp_flag = if p.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    // Later fragments have no L4 header to fix.
    let has_l4 = !(p.fragment && p.sport == 0 && p.dport == 0);
    // Addresses, ports and the IP checksum are plain stores with a
    // software checksum update; only the L4 checksum needs the helper,
    // which alone knows whether the skb's checksum is partial.
    if old_addr != addr {
        let new = addr.to_ne_bytes();
        let csum: *mut [u8; 2] = ptr_at(ctx, IP_CSUM_OFF)?;
        let a: *mut [u8; 4] = ptr_at(ctx, ip_off)?;
        unsafe {
            *csum = replace(*csum, &old_addr.to_ne_bytes(), &new);
            *a = new;
        }
    }
    if has_l4 && old_port != port {
        let pp: *mut [u8; 2] = ptr_at(ctx, port_off)?;
        unsafe { *pp = port.to_ne_bytes() };
    }
    if has_l4 && old_addr != addr {
        ctx.l4_csum_replace(
            csum_off,
            old_addr as u64,
            addr as u64,
            udp_flag | BPF_F_PSEUDO_HDR as u64 | 4,
        )
        .map_err(|_| ())?;
    }
    if has_l4 && old_port != port {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, udp_flag | 2)
            .map_err(|_| ())?;
    }
    Ok(())
}
