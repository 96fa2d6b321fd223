//! kube-proxy REJECT parity: a packet to a VIP port without endpoints is
//! answered, never blackholed. TCP gets a RST, UDP an ICMP (ICMPv6) port
//! unreachable. The packet is rewritten in place into the answer and sent
//! back out of the interface it came in on.
use aya_ebpf::{
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use lb_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, In6};

use crate::checksum::{finish, sum_words};
use crate::parse::{ETH_LEN, L3_OFF, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, ptr_at};
use crate::tc::REDIRECT;

const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
const ICMP_LEN: usize = 8;
/// An ICMP error quotes the offending IP header and 8 bytes of its payload.
const QUOTE_LEN: usize = IP_LEN + 8;
const RST_FRAME: usize = ETH_LEN + IP_LEN + TCP_LEN;
const ICMP_FRAME: usize = ETH_LEN + IP_LEN + ICMP_LEN + QUOTE_LEN;
const IP6_LEN: usize = 40;
const QUOTE6_LEN: usize = IP6_LEN + 8;
const RST6_FRAME: usize = ETH_LEN + IP6_LEN + TCP_LEN;
const ICMP6_FRAME: usize = ETH_LEN + IP6_LEN + ICMP_LEN + QUOTE6_LEN;

/// Writes the swapped Ethernet header and a fresh IPv4 header (no options).
#[inline(always)]
fn write_l2_l3(out: &mut [u8], eth: &[u8; ETH_LEN], p: &Packet, proto: u8, tot_len: u16) {
    out[0..6].copy_from_slice(&eth[6..12]);
    out[6..12].copy_from_slice(&eth[0..6]);
    out[12] = 0x08;
    out[13] = 0x00;
    let ip = &mut out[L3_OFF..L3_OFF + IP_LEN];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
    ip[4] = 0;
    ip[5] = 0;
    ip[6] = 0x40; // DF
    ip[7] = 0;
    ip[8] = 64;
    ip[9] = proto;
    ip[10] = 0;
    ip[11] = 0;
    // The answer comes from the VIP the client talked to.
    ip[12..16].copy_from_slice(&p.daddr.to_ne_bytes());
    ip[16..20].copy_from_slice(&p.saddr.to_ne_bytes());
    let c = finish(sum_words(ip, 0));
    ip[10] = c[0];
    ip[11] = c[1];
}

/// Turns a TCP segment into the RST a closed port would send. A RST is
/// never answered (RFC 793); that and IP options yield `Err` (drop).
#[inline(always)]
pub fn tcp_rst(ctx: &TcContext, p: &Packet) -> Result<i32, ()> {
    if p.ihl != IP_LEN || p.fragment || p.tcp_flags & TCP_RST != 0 {
        return Err(());
    }
    let eth: *const [u8; ETH_LEN] = ptr_at(ctx, 0)?;
    let eth = unsafe { *eth };
    let ip: *const [u8; IP_LEN] = ptr_at(ctx, L3_OFF)?;
    let l4_len = (u16::from_be_bytes([unsafe { (*ip)[2] }, unsafe { (*ip)[3] }]) as u32)
        .saturating_sub(IP_LEN as u32);
    let mut out = [0u8; RST_FRAME];
    write_l2_l3(&mut out, &eth, p, IPPROTO_TCP, (IP_LEN + TCP_LEN) as u16);
    let acc = sum_words(&out[L3_OFF + 12..L3_OFF + 20], 0);
    write_rst(
        ctx,
        p,
        L3_OFF + IP_LEN,
        l4_len,
        &mut out[L3_OFF + IP_LEN..],
        acc,
    )?;
    send_back_with(ctx, &out)
}

/// The RST's TCP header, answering the segment at `l4_off` that has
/// `l4_len` bytes with its header; `acc` is the pseudo-header's address
/// sum. The offset is a constant (answers are built only for packets
/// without options or extension headers): the verifier follows it
/// where it could not follow one read back from a map (IPv6's stages).
#[inline(always)]
fn write_rst<A>(
    ctx: &TcContext,
    p: &Packet<A>,
    l4_off: usize,
    l4_len: u32,
    t: &mut [u8],
    acc: u32,
) -> Result<(), ()> {
    let tcp: *const [u8; TCP_LEN] = ptr_at(ctx, l4_off)?;
    let tcp = unsafe { *tcp };
    let doff = ((tcp[12] >> 4) as u32) * 4;
    let payload = l4_len.saturating_sub(doff);
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let t = &mut t[..TCP_LEN];
    t[0..2].copy_from_slice(&tcp[2..4]);
    t[2..4].copy_from_slice(&tcp[0..2]);
    let (rseq, rack, flags) = if p.tcp_flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let mut len = payload;
        if p.tcp_flags & TCP_SYN != 0 {
            len += 1;
        }
        if p.tcp_flags & TCP_FIN != 0 {
            len += 1;
        }
        (0, seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };
    t[4..8].copy_from_slice(&rseq.to_be_bytes());
    t[8..12].copy_from_slice(&rack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    // Pseudo header: addresses (in `acc`), protocol, TCP length.
    let c = finish(sum_words(t, acc + IPPROTO_TCP as u32 + TCP_LEN as u32));
    t[16] = c[0];
    t[17] = c[1];
    Ok(())
}

/// Turns a UDP datagram into ICMP destination unreachable / port
/// unreachable quoting its IP header and first 8 payload bytes.
#[inline(always)]
pub fn icmp_port_unreachable(ctx: &TcContext, p: &Packet) -> Result<i32, ()> {
    if p.ihl != IP_LEN || p.fragment {
        return Err(());
    }
    let eth: *const [u8; ETH_LEN] = ptr_at(ctx, 0)?;
    let eth = unsafe { *eth };
    let quote: *const [u8; QUOTE_LEN] = ptr_at(ctx, L3_OFF)?;
    let quote = unsafe { *quote };

    let mut out = [0u8; ICMP_FRAME];
    write_l2_l3(
        &mut out,
        &eth,
        p,
        IPPROTO_ICMP,
        (IP_LEN + ICMP_LEN + QUOTE_LEN) as u16,
    );
    let icmp_off = L3_OFF + IP_LEN;
    out[icmp_off] = 3; // destination unreachable
    out[icmp_off + 1] = 3; // port unreachable
    out[icmp_off + ICMP_LEN..].copy_from_slice(&quote);
    let c = finish(sum_words(&out[icmp_off..], 0));
    out[icmp_off + 2] = c[0];
    out[icmp_off + 3] = c[1];

    send_back_with(ctx, &out)
}

#[inline(always)]
fn send_back_with<const N: usize>(ctx: &TcContext, frame: &[u8; N]) -> Result<i32, ()> {
    // Resize first: the store below must land inside the packet.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, N as u32, 0) } != 0 {
        return Err(());
    }
    ctx.store(0, frame, 0).map_err(|_| ())?;
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let _ = unsafe { bpf_redirect(ifindex, 0) };
    Ok(REDIRECT)
}

/// Writes the swapped Ethernet header and a fresh IPv6 header from the
/// frontend the client asked to the client.
#[inline(always)]
fn write_l2_l3_6(out: &mut [u8], eth: &[u8; ETH_LEN], p: &Packet<In6>, next: u8, len: u16) {
    out[0..6].copy_from_slice(&eth[6..12]);
    out[6..12].copy_from_slice(&eth[0..6]);
    out[12] = 0x86;
    out[13] = 0xdd;
    let ip = &mut out[L3_OFF..L3_OFF + IP6_LEN];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&len.to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    for i in 0..4 {
        ip[8 + 4 * i..12 + 4 * i].copy_from_slice(&p.daddr[i].to_ne_bytes());
        ip[24 + 4 * i..28 + 4 * i].copy_from_slice(&p.saddr[i].to_ne_bytes());
    }
}

/// [`tcp_rst`] for IPv6 (no extension headers). The IPv6 answers are not
/// inlined: their buffers get a frame of their own, not the flow's.
#[inline(never)]
pub fn tcp_rst6(ctx: &TcContext, p: &Packet<In6>) -> Result<i32, ()> {
    if p.ihl != IP6_LEN || p.fragment || p.tcp_flags & TCP_RST != 0 {
        return Err(());
    }
    let eth: *const [u8; ETH_LEN] = ptr_at(ctx, 0)?;
    let eth = unsafe { *eth };
    let ip: *const [u8; 8] = ptr_at(ctx, L3_OFF)?;
    let l4_len = u16::from_be_bytes([unsafe { (*ip)[4] }, unsafe { (*ip)[5] }]) as u32;
    let mut out = [0u8; RST6_FRAME];
    write_l2_l3_6(&mut out, &eth, p, IPPROTO_TCP, TCP_LEN as u16);
    let acc = sum_words(&out[L3_OFF + 8..L3_OFF + IP6_LEN], 0);
    write_rst(
        ctx,
        p,
        L3_OFF + IP6_LEN,
        l4_len,
        &mut out[L3_OFF + IP6_LEN..],
        acc,
    )?;
    send_back_with(ctx, &out)
}

/// [`icmp_port_unreachable`] for IPv6: ICMPv6 destination unreachable,
/// port unreachable (RFC 4443), quoting the IPv6 header and 8 bytes.
#[inline(never)]
pub fn icmp6_port_unreachable(ctx: &TcContext, p: &Packet<In6>) -> Result<i32, ()> {
    if p.ihl != IP6_LEN || p.fragment {
        return Err(());
    }
    let eth: *const [u8; ETH_LEN] = ptr_at(ctx, 0)?;
    let eth = unsafe { *eth };
    let quote: *const [u8; QUOTE6_LEN] = ptr_at(ctx, L3_OFF)?;
    let quote = unsafe { *quote };
    let len = ICMP_LEN + QUOTE6_LEN;
    let mut out = [0u8; ICMP6_FRAME];
    write_l2_l3_6(&mut out, &eth, p, IPPROTO_ICMPV6, len as u16);
    let icmp_off = L3_OFF + IP6_LEN;
    out[icmp_off] = 1; // destination unreachable
    out[icmp_off + 1] = 4; // port unreachable
    out[icmp_off + ICMP_LEN..].copy_from_slice(&quote);
    // ICMPv6 sums a pseudo header too.
    let acc = sum_words(&out[L3_OFF + 8..L3_OFF + IP6_LEN], 0);
    let c = finish(sum_words(
        &out[icmp_off..],
        acc + IPPROTO_ICMPV6 as u32 + len as u32,
    ));
    out[icmp_off + 2] = c[0];
    out[icmp_off + 3] = c[1];
    send_back_with(ctx, &out)
}
