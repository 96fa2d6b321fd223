//! Address/port rewriting with incremental checksum updates. Works for
//! CHECKSUM_PARTIAL skbs too: the helpers adjust the pseudo-header part.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::IPPROTO_UDP;

use crate::checksum::replace;
use crate::parse::{IP_CSUM_OFF, Packet, ptr_at};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub enum Side {
    Source,
    Destination,
}

/// Rewrites the source or destination address and port of `p`.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, p: &Packet, side: Side, addr: u32, port: u16) -> Result<(), ()> {
    let (port_off, old_addr, old_port) = match side {
        Side::Source => (p.l4_off, p.saddr, p.sport),
        Side::Destination => (p.l4_off + 2, p.daddr, p.dport),
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
    // The IP checksum is computed here and stored with the address in
    // one helper call (they are adjacent); only the L4 checksum needs the
    // csum helper, which alone knows whether the skb's checksum is partial.
    // No direct packet writes: one anywhere in the program makes the
    // kernel unclone every packet it sees (TCP segments are clones).
    if old_addr != addr {
        let new = addr.to_ne_bytes();
        let csum = unsafe { *ptr_at::<[u8; 2]>(ctx, IP_CSUM_OFF)? };
        let csum = replace(csum, &old_addr.to_ne_bytes(), &new);
        match side {
            // checksum, source
            Side::Source => {
                let mut b = [0u8; 6];
                b[..2].copy_from_slice(&csum);
                b[2..].copy_from_slice(&new);
                ctx.store(IP_CSUM_OFF, &b, 0).map_err(|_| ())?;
            }
            // checksum, source (unchanged), destination
            Side::Destination => {
                let mut b = [0u8; 10];
                b[..2].copy_from_slice(&csum);
                b[2..6].copy_from_slice(&p.saddr.to_ne_bytes());
                b[6..].copy_from_slice(&new);
                ctx.store(IP_CSUM_OFF, &b, 0).map_err(|_| ())?;
            }
        }
    }
    if has_l4 && old_port != port {
        ctx.store(port_off, &port, 0).map_err(|_| ())?;
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
