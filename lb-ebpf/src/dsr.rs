//! Direct server return (`--lb-mode dsr|hybrid`): the ingress node sends
//! an external flow's packets to the backend on another node unchanged
//! inside a tunnel header of their own family (IPIP for IPv4, IPv6-in-IPv6
//! for IPv6: outer destination the backend itself, so the pod routes lead
//! there; the backend's port rides in the IPv4 identification field, or
//! the low 16 bits of the IPv6 flow label). The backend's node takes the
//! inner packet out, DNATs it to the backend, and records the reverse
//! translation, so that the backend's replies leave from there straight
//! to the client, from the frontend address the client used: the client's
//! address is kept and replies skip the ingress node.
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    programs::TcContext,
};
use lb_common::{CFG_DSR_TCP, CFG_DSR_UDP, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP};

use crate::checksum::{finish, sum_words};
use crate::family::Family;
use crate::lb;
use crate::maps::NODE_ADDRS;
use crate::parse::{L3_OFF, ptr_at};

const IP_LEN: usize = 20;
const IP6_LEN: usize = 40;

/// The outer header's protocol for flows of family `A`.
#[inline(always)]
pub fn tunnel_proto<A: Family>() -> u8 {
    if A::IS_V6 { IPPROTO_IPV6 } else { IPPROTO_IPIP }
}

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
pub fn ours<A: Family>(outer_dst: A) -> bool {
    lb::config().is_some_and(|c| c.flags & (CFG_DSR_TCP | CFG_DSR_UDP) != 0)
        && unsafe { NODE_ADDRS.get(outer_dst.mapped()) }.is_none()
}

/// Wraps the packet in an outer header of its family from this node
/// (`node`) to the backend `be_addr`, carrying the backend's port.
#[inline(always)]
pub fn encapsulate<A: Family>(
    ctx: &TcContext,
    node: A,
    be_addr: A,
    be_port: u16,
) -> Result<(), ()> {
    if A::IS_V6 {
        return encapsulate6(ctx, node.mapped().addr, be_addr.mapped().addr, be_port);
    }
    match (node.v4(), be_addr.v4()) {
        (Some(node), Some(be_addr)) => encapsulate4(ctx, node, be_addr, be_port),
        _ => Err(()),
    }
}

/// IPIP: the backend's port in the identification field.
#[inline(always)]
fn encapsulate4(ctx: &TcContext, node: u32, be_addr: u32, be_port: u16) -> Result<(), ()> {
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

/// IPv6-in-IPv6: the backend's port in the flow label's low 16 bits
/// (its own flow's label, which no router needs to keep stable for us:
/// the tunnel's path is the one to the backend). IPv6 routers never
/// fragment: the inner packet's path MTU discovery applies.
#[inline(always)]
fn encapsulate6(
    ctx: &TcContext,
    node: [u32; 4],
    be_addr: [u32; 4],
    be_port: u16,
) -> Result<(), ()> {
    let inner = unsafe { ptr_at::<[u8; 8], _>(ctx, L3_OFF)?.read_unaligned() };
    let inner_len = u16::from_be_bytes([inner[4], inner[5]]) + IP6_LEN as u16;
    ctx.adjust_room(
        IP6_LEN as i32,
        BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 as u64,
    )
    .map_err(|_| ())?;
    let mut h = [0u8; IP6_LEN];
    h[0] = 0x60;
    h[2..4].copy_from_slice(&be_port.to_ne_bytes());
    h[4..6].copy_from_slice(&inner_len.to_be_bytes());
    h[6] = IPPROTO_IPV6;
    h[7] = 64;
    for i in 0..4 {
        h[8 + 4 * i..12 + 4 * i].copy_from_slice(&node[i].to_ne_bytes());
        h[24 + 4 * i..28 + 4 * i].copy_from_slice(&be_addr[i].to_ne_bytes());
    }
    ctx.store(L3_OFF, &h, 0).map_err(|_| ())
}

/// Takes the outer header of family `A` off.
#[inline(always)]
pub fn decapsulate<A: Family>(ctx: &TcContext) -> Result<(), ()> {
    ctx.adjust_room(-(A::HDR_LEN as i32), BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| ())
}
