//! Direct server return (`--lb-mode dsr|hybrid`): the ingress node sends
//! an external flow's packets to the backend on another node unchanged
//! inside IPv4 (IPIP: outer destination the backend itself, so the pod
//! routes lead there; the outer identification field carries the
//! backend's port). The backend's node takes the inner packet out, DNATs
//! it to the backend, and records the reverse translation, so that the
//! backend's replies leave from there straight to the client, from the
//! frontend address the client used: the client's address is kept and
//! replies skip the ingress node.
use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    programs::TcContext,
};
use lb_common::{CFG_DSR_TCP, CFG_DSR_UDP, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, NodeAddrKey};

use crate::checksum::{finish, sum_words};
use crate::lb;
use crate::maps::NODE_ADDRS;
use crate::parse::{L3_OFF, ptr_at};

const IP_LEN: usize = 20;

/// True when flows of `proto` to other nodes' backends go by DSR.
#[inline(always)]
pub fn enabled_for(proto: u8) -> bool {
    let Some(cfg) = lb::config() else {
        return false;
    };
    match proto {
        IPPROTO_TCP => cfg.flags & CFG_DSR_TCP != 0,
        IPPROTO_UDP => cfg.flags & CFG_DSR_UDP != 0,
        _ => false,
    }
}

/// True when an IPIP packet to `outer_dst` is one to take out here: DSR
/// is on, and the outer destination is not this node itself (a tunnel of
/// someone else's ends there) but a backend behind it.
#[inline(always)]
pub fn ours(outer_dst: u32) -> bool {
    lb::config().is_some_and(|c| c.flags & (CFG_DSR_TCP | CFG_DSR_UDP) != 0)
        && unsafe { NODE_ADDRS.get(NodeAddrKey::v4(outer_dst)) }.is_none()
}

/// Wraps the packet in an outer IPv4 header from this node (`node`) to
/// the backend `be_addr`, its port in the identification field.
#[inline(always)]
pub fn encapsulate(ctx: &TcContext, node: u32, be_addr: u32, be_port: u16) -> Result<(), ()> {
    let inner_len = unsafe { ptr_at::<[u8; 4], _>(ctx, L3_OFF)?.read_unaligned() };
    let inner_len = u16::from_be_bytes([inner_len[2], inner_len[3]]);
    ctx.adjust_room(
        IP_LEN as i32,
        BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64,
    )
    .map_err(|_| ())?;
    let mut h = [0u8; IP_LEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(inner_len + IP_LEN as u16).to_be_bytes());
    h[4..6].copy_from_slice(&be_port.to_ne_bytes());
    // Don't fragment: the inner packet's own path MTU discovery applies.
    h[6] = 0x40;
    h[8] = 64;
    h[9] = IPPROTO_IPIP;
    h[12..16].copy_from_slice(&node.to_ne_bytes());
    h[16..20].copy_from_slice(&be_addr.to_ne_bytes());
    let csum = finish(sum_words(&h, 0));
    h[10..12].copy_from_slice(&csum);
    ctx.store(L3_OFF, &h, 0).map_err(|_| ())
}

/// Takes the outer IPv4 header off.
#[inline(always)]
pub fn decapsulate(ctx: &TcContext) -> Result<(), ()> {
    ctx.adjust_room(-(IP_LEN as i32), BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| ())
}
