//! The one place that touches raw packet offsets. Everything else gets a
//! bounds-checked pointer from `ptr_at` or a parsed `Packet`.
use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use lb_common::{IPPROTO_TCP, IPPROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

pub const ETH_LEN: usize = EthHdr::LEN;
/// Offset of the IPv4 header (untagged Ethernet).
pub const L3_OFF: usize = ETH_LEN;
pub const IP_SRC_OFF: usize = L3_OFF + 12;
pub const IP_DST_OFF: usize = L3_OFF + 16;
pub const IP_CSUM_OFF: usize = L3_OFF + 10;
/// Headers we may need in the linear area: Ethernet, IPv4 with options, TCP.
const MAX_HDR_LEN: u32 = (ETH_LEN + 60 + TcpHdr::LEN) as u32;

/// Returns a pointer to a `T` at `off`, or `Err` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + off) as *mut T)
}

/// Why a packet could not be parsed as IPv4 TCP/UDP.
pub enum Skip {
    /// Not IPv4, or not a protocol we translate: not ours.
    NotOurs,
    /// Claims to be IPv4 but its headers are broken or truncated.
    Malformed,
}

/// An IPv4 TCP or UDP packet's addressing, all fields in network order.
#[derive(Clone, Copy)]
pub struct Packet {
    pub l4_off: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// IHL in bytes (20 without options).
    pub ihl: usize,
    /// True for any fragment (MF set or a non-zero offset).
    pub fragment: bool,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

impl Packet {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == IPPROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Packet, Skip> {
    // Headers of a non-linear skb may sit outside the direct-access area.
    if ctx.data_end() - ctx.data() < MAX_HDR_LEN as usize && ctx.len() > MAX_HDR_LEN {
        let _ = ctx.pull_data(MAX_HDR_LEN);
    }
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|_| Skip::NotOurs)?;
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Err(Skip::NotOurs);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, L3_OFF).map_err(|_| Skip::Malformed)?;
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < Ipv4Hdr::LEN {
        return Err(Skip::Malformed);
    }
    let proto = ip.proto;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Skip::NotOurs);
    }
    let frags = u16::from_be_bytes(ip.frags);
    let fragment = frags & 0x3fff != 0;
    let saddr = u32::from_ne_bytes(ip.src_addr);
    let daddr = u32::from_ne_bytes(ip.dst_addr);
    let l4_off = L3_OFF + ihl;
    let mut pkt = Packet {
        l4_off,
        proto,
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        ihl,
        fragment,
        tcp_flags: 0,
    };
    if fragment && frags & 0x1fff != 0 {
        // Later fragments carry no L4 header.
        return Ok(pkt);
    }
    if proto == IPPROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l4_off).map_err(|_| Skip::Malformed)?;
        let tcp = unsafe { &*tcp };
        pkt.sport = u16::from_ne_bytes(tcp.source);
        pkt.dport = u16::from_ne_bytes(tcp.dest);
        // Byte 13 of the TCP header: CWR ECE URG ACK PSH RST SYN FIN.
        let b: *const [u8; 14] = ptr_at(ctx, l4_off).map_err(|_| Skip::Malformed)?;
        pkt.tcp_flags = unsafe { (*b)[13] };
    } else {
        let udp: *const UdpHdr = ptr_at(ctx, l4_off).map_err(|_| Skip::Malformed)?;
        let udp = unsafe { &*udp };
        pkt.sport = u16::from_ne_bytes(udp.src);
        pkt.dport = u16::from_ne_bytes(udp.dst);
    }
    Ok(pkt)
}
