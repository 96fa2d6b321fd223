//! Address/port rewriting with incremental checksum updates. Works for
//! CHECKSUM_PARTIAL skbs too: the helpers adjust the pseudo-header part.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::IPPROTO_UDP;

use crate::parse::{IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, Packet};

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
    if old_addr != addr {
        if has_l4 {
            ctx.l4_csum_replace(
                csum_off,
                old_addr as u64,
                addr as u64,
                udp_flag | BPF_F_PSEUDO_HDR as u64 | 4,
            )
            .map_err(|_| ())?;
        }
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, addr as u64, 4)
            .map_err(|_| ())?;
        ctx.store(ip_off, &addr, 0).map_err(|_| ())?;
    }
    if has_l4 && old_port != port {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, udp_flag | 2)
            .map_err(|_| ())?;
        ctx.store(port_off, &port, 0).map_err(|_| ())?;
    }
    Ok(())
}
