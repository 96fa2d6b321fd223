//! The one place that touches raw packet offsets. Everything else gets a
//! bounds-checked pointer from `ptr_at` or a parsed `Packet`. Works on tc
//! (`TcContext`) and XDP (`XdpContext`) alike through [`Frame`].
use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use lb_common::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_SCTP, IPPROTO_TCP,
    IPPROTO_UDP, In6,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

pub const ETH_LEN: usize = EthHdr::LEN;
/// Offset of the IPv4 header (untagged Ethernet).
pub const L3_OFF: usize = ETH_LEN;
pub const IP_SRC_OFF: usize = L3_OFF + 12;
pub const IP_CSUM_OFF: usize = L3_OFF + 10;
/// An ICMP error with options in both IP headers and a full inner TCP header.
const MAX_ICMP_LEN: usize = ETH_LEN + 60 + 8 + 60 + TcpHdr::LEN;

/// A packet the programs can read: an skb (tc) or an XDP buffer.
pub trait Frame {
    /// Start and end of the directly accessible bytes, loaded afresh.
    /// Volatile loads: otherwise LLVM reuses an earlier, wider check on
    /// earlier loads of data/data_end and drops a later one, which the
    /// verifier (tracking each load separately) then rejects.
    fn span(&self) -> (usize, usize);
    /// Makes the first `len` bytes directly accessible if the packet has
    /// them elsewhere.
    fn ensure(&self, len: usize);
    /// The frame's length in bytes, headers included (per-Service byte
    /// counts).
    fn wire_len(&self) -> u32;
}

impl Frame for TcContext {
    #[inline(always)]
    fn span(&self) -> (usize, usize) {
        let skb = self.skb.skb;
        unsafe {
            (
                core::ptr::read_volatile(&raw const (*skb).data) as usize,
                core::ptr::read_volatile(&raw const (*skb).data_end) as usize,
            )
        }
    }

    /// Pulls when the skb's linear area is shorter than `len`. Only as
    /// much as the headers need: pulling payload in would cost a copy on
    /// every GRO packet.
    #[inline(always)]
    fn ensure(&self, len: usize) {
        if self.data_end() - self.data() < len {
            let have = self.len() as usize;
            let _ = self.pull_data(if have < len { have } else { len } as u32);
        }
    }

    #[inline(always)]
    fn wire_len(&self) -> u32 {
        self.len()
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn span(&self) -> (usize, usize) {
        let md = self.ctx;
        unsafe {
            (
                core::ptr::read_volatile(&raw const (*md).data) as usize,
                core::ptr::read_volatile(&raw const (*md).data_end) as usize,
            )
        }
    }

    /// XDP buffers without frags (the programs do not declare them) are
    /// linear: nothing to pull.
    #[inline(always)]
    fn ensure(&self, _len: usize) {}

    #[inline(always)]
    fn wire_len(&self) -> u32 {
        let (data, end) = self.span();
        end.wrapping_sub(data) as u32
    }
}

/// No header we read lies further into a packet than this (a mask; the
/// verifier ignores a bounds check on a pointer that may lie past 64 KiB
/// with its access, so it must stay well below).
const MAX_OFF: usize = 0xfff;

/// Returns a pointer to a `T` at `off`, or `Err` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T, C: Frame>(ctx: &C, off: usize) -> Result<*mut T, ()> {
    let (start, end) = ctx.span();
    // The mask bounds offsets the verifier cannot follow, such as one a
    // previous program left in a map (IPv6's stages); real ones are far
    // below it.
    let off = off & MAX_OFF;
    if start + off + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + off) as *mut T)
}

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Why a packet could not be parsed as IPv4 TCP/UDP.
pub enum Skip {
    /// Not IPv4, or not a protocol we translate: not ours.
    NotOurs,
    /// Claims to be IPv4 but its headers are broken or truncated.
    Malformed,
}

/// A TCP or UDP packet's addressing, all fields in network order; `A` is
/// its family's address type (`u32`: IPv4, `In6`: IPv6).
#[derive(Clone, Copy)]
pub struct Packet<A = u32> {
    pub l4_off: usize,
    pub proto: u8,
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    /// Bytes from the IP header to L4: IPv4's IHL (20 without options),
    /// IPv6's fixed header and the extension headers skipped.
    pub ihl: usize,
    /// True for any fragment (MF set or a non-zero offset).
    pub fragment: bool,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

impl<A> Packet<A> {
    /// A TCP connection's first packet (SYN without ACK).
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

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

/// An ICMP error (destination unreachable, time exceeded, parameter
/// problem) quoting an IPv4 TCP or UDP packet.
#[derive(Clone, Copy)]
pub struct IcmpError<A = u32> {
    pub saddr: A,
    pub daddr: A,
    /// Offset of the ICMP header; its checksum is at `icmp_off + 2`.
    pub icmp_off: usize,
    /// Offset of the quoted IPv4 header.
    pub inner_l3_off: usize,
    /// The quoted packet's addressing; `l4_off` is absolute.
    pub inner: Packet<A>,
    /// True when the quote reaches the inner L4 checksum (it may be cut
    /// after 8 bytes, which hold only the ports for TCP).
    pub inner_l4_csum: bool,
}

/// What the datapath may act on.
pub enum Parsed {
    Flow(Packet),
    IcmpError(IcmpError),
    /// An IPv6 frame: [`parse6`] reads it, in the hooks' IPv6 path (a
    /// frame of its own: IPv6's larger values would crowd the IPv4
    /// path's stack).
    Ipv6,
    /// IPv4 in IPv4 (a DSR packet, if it is to a backend here): the outer
    /// destination (the backend) and identification field (its port).
    Ipip {
        outer_dst: u32,
        id: u16,
    },
}

/// The fixed part of an IPv4 header at `off`, checked.
struct Ip {
    proto: u8,
    saddr: u32,
    daddr: u32,
    ihl: usize,
    frags: u16,
    id: u16,
}

#[inline(always)]
fn ipv4_at<C: Frame>(ctx: &C, off: usize) -> Result<Ip, Skip> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off).map_err(|_| Skip::Malformed)?;
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < Ipv4Hdr::LEN {
        return Err(Skip::Malformed);
    }
    Ok(Ip {
        proto: ip.proto,
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        ihl,
        frags: u16::from_be_bytes(ip.frags),
        id: u16::from_ne_bytes(ip.id),
    })
}

#[inline(always)]
pub fn parse<C: Frame>(ctx: &C) -> Result<Parsed, Skip> {
    // Headers of a non-linear skb may sit outside the direct-access area.
    ctx.ensure(L3_OFF + Ipv4Hdr::LEN);
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|_| Skip::NotOurs)?;
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv6 as u16 {
        return Ok(Parsed::Ipv6);
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return Err(Skip::NotOurs);
    }
    let ip = ipv4_at(ctx, L3_OFF)?;
    let fragment = ip.frags & 0x3fff != 0;
    let l4_off = L3_OFF + ip.ihl;
    if ip.proto == IPPROTO_ICMP {
        if fragment {
            return Err(Skip::NotOurs);
        }
        return icmp_error(ctx, &ip, l4_off).map(Parsed::IcmpError);
    }
    if ip.proto == IPPROTO_IPIP && !fragment && ip.ihl == Ipv4Hdr::LEN {
        return Ok(Parsed::Ipip {
            outer_dst: ip.daddr,
            id: ip.id,
        });
    }
    if !translated(ip.proto) {
        return Err(Skip::NotOurs);
    }
    let mut pkt = Packet {
        l4_off,
        proto: ip.proto,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: 0,
        dport: 0,
        ihl: ip.ihl,
        fragment,
        tcp_flags: 0,
    };
    if fragment && ip.frags & 0x1fff != 0 {
        // Later fragments carry no L4 header.
        return Ok(Parsed::Flow(pkt));
    }
    l4_ports(ctx, &mut pkt)?;
    Ok(Parsed::Flow(pkt))
}

/// Reads the ports (and TCP flags) of a packet whose L4 header is at
/// `p.l4_off`.
#[inline(always)]
fn l4_ports<C: Frame, A>(ctx: &C, p: &mut Packet<A>) -> Result<(), Skip> {
    let l4_off = p.l4_off;
    ctx.ensure(
        l4_off
            + if p.proto == IPPROTO_TCP {
                TcpHdr::LEN
            } else {
                UdpHdr::LEN
            },
    );
    if p.proto == IPPROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l4_off).map_err(|_| Skip::Malformed)?;
        let tcp = unsafe { &*tcp };
        p.sport = u16::from_ne_bytes(tcp.source);
        p.dport = u16::from_ne_bytes(tcp.dest);
        // Byte 13 of the TCP header: CWR ECE URG ACK PSH RST SYN FIN.
        let b: *const [u8; 14] = ptr_at(ctx, l4_off).map_err(|_| Skip::Malformed)?;
        p.tcp_flags = unsafe { (*b)[13] };
    } else {
        let udp: *const UdpHdr = ptr_at(ctx, l4_off).map_err(|_| Skip::Malformed)?;
        let udp = unsafe { &*udp };
        p.sport = u16::from_ne_bytes(udp.src);
        p.dport = u16::from_ne_bytes(udp.dst);
    }
    Ok(())
}

/// The transport protocols the datapath translates. SCTP's common
/// header starts with the ports as TCP's and UDP's do; its checksum
/// (CRC32c, bytes 8..12) covers no address, and `nat` updates it when
/// ports change. A quoted SCTP header's checksum (in an ICMP error) is
/// left alone: the quote may stop before it, and no one verifies it.
#[inline(always)]
pub fn translated(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

/// IPv6 next-header values met on the way to L4.
const IPV6_HOPOPTS: u8 = 0;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers skipped at most before giving up on a packet.
const IPV6_MAX_EXT: usize = 4;

/// An IPv6 header's fixed part at `off`, checked: next header and
/// addresses.
#[inline(always)]
fn ipv6_at<C: Frame>(ctx: &C, off: usize) -> Result<(u8, In6, In6), Skip> {
    let head: *const [u8; 8] = ptr_at(ctx, off).map_err(|_| Skip::Malformed)?;
    let head = unsafe { head.read_unaligned() };
    if head[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let addrs: *const [In6; 2] = ptr_at(ctx, off + 8).map_err(|_| Skip::Malformed)?;
    let [saddr, daddr] = unsafe { addrs.read_unaligned() };
    Ok((head[6], saddr, daddr))
}

/// An IPv6 TCP or UDP packet, or an ICMPv6 error about one. The rule for
/// extension headers: hop-by-hop and destination options are skipped
/// (up to [`IPV6_MAX_EXT`] headers), a fragment header marks the packet a
/// fragment (later fragments carry no ports); anything else (routing
/// headers, whose final destination is not the header's, AH, ESP, a
/// longer chain) is not ours and passes untranslated, so nothing is ever
/// translated by a misread header.
#[inline(always)]
pub fn parse6<C: Frame>(ctx: &C, out: &mut Packet<In6>) -> Result<Parsed6, Skip> {
    ctx.ensure(L3_OFF + Ipv6Hdr::LEN);
    let (mut next, saddr, daddr) = ipv6_at(ctx, L3_OFF)?;
    let mut off = L3_OFF + Ipv6Hdr::LEN;
    let (mut fragment, mut later) = (false, false);
    for _ in 0..IPV6_MAX_EXT {
        match next {
            IPV6_HOPOPTS | IPV6_DSTOPTS => {
                ctx.ensure(off + 2);
                let h: *const [u8; 2] = ptr_at(ctx, off).map_err(|_| Skip::Malformed)?;
                let (nh, len) = unsafe { ((*h)[0], (*h)[1]) };
                next = nh;
                off += (len as usize + 1) * 8;
            }
            IPV6_FRAGMENT if !fragment => {
                ctx.ensure(off + 8);
                let h: *const [u8; 8] = ptr_at(ctx, off).map_err(|_| Skip::Malformed)?;
                let h = unsafe { &*h };
                next = h[0];
                fragment = true;
                later = u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0;
                off += 8;
            }
            _ => break,
        }
    }
    out.saddr = saddr;
    out.daddr = daddr;
    out.l4_off = off;
    out.proto = next;
    out.sport = 0;
    out.dport = 0;
    out.ihl = off - L3_OFF;
    out.fragment = fragment;
    out.tcp_flags = 0;
    if next == IPPROTO_ICMPV6 && !fragment {
        return Ok(Parsed6::Icmp);
    }
    if next == IPPROTO_IPV6 && !fragment && off == L3_OFF + Ipv6Hdr::LEN {
        // The flow label's low 16 bits, as `dsr` wrote them.
        let head: *const [u8; 4] = ptr_at(ctx, L3_OFF).map_err(|_| Skip::Malformed)?;
        let head = unsafe { head.read_unaligned() };
        return Ok(Parsed6::Tunnel {
            port: u16::from_ne_bytes([head[2], head[3]]),
        });
    }
    if !translated(next) {
        return Err(Skip::NotOurs);
    }
    if !later {
        l4_ports(ctx, out)?;
    }
    Ok(Parsed6::Flow)
}

/// What the datapath may act on in an IPv6 frame.
pub enum Parsed6 {
    Flow,
    /// ICMPv6 at `l4_off`, for [`icmp6_error`] to read.
    Icmp,
    /// IPv6 in IPv6 without extension headers (a DSR packet, if it is to
    /// a backend here): the outer destination is the packet's `daddr`,
    /// `port` the backend's port from the flow label.
    Tunnel {
        port: u16,
    },
}

/// ICMPv6 errors that quote the packet they are about (RFC 4443).
const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_TIME_EXCEEDED: u8 = 3;
const ICMP6_PARAM_PROBLEM: u8 = 4;
/// An ICMPv6 error after up to 64 bytes of outer extension headers,
/// quoting a full inner TCP header.
const MAX_ICMP6_LEN: usize = ETH_LEN + 40 + 64 + 8 + 40 + TcpHdr::LEN;

/// An ICMPv6 error at `icmp_off` whose quote is an IPv6 TCP or UDP
/// packet without extension headers (anything else is not ours).
#[inline(always)]
pub fn icmp6_error<C: Frame>(
    ctx: &C,
    saddr: In6,
    daddr: In6,
    icmp_off: usize,
) -> Result<IcmpError<In6>, Skip> {
    ctx.ensure(MAX_ICMP6_LEN);
    let icmp: *const [u8; ICMP_HDR_LEN] = ptr_at(ctx, icmp_off).map_err(|_| Skip::NotOurs)?;
    let ty = unsafe { (*icmp)[0] };
    if !matches!(
        ty,
        ICMP6_DEST_UNREACH | ICMP6_PACKET_TOO_BIG | ICMP6_TIME_EXCEEDED | ICMP6_PARAM_PROBLEM
    ) {
        return Err(Skip::NotOurs);
    }
    let inner_l3_off = icmp_off + ICMP_HDR_LEN;
    let (proto, isaddr, idaddr) = ipv6_at(ctx, inner_l3_off)?;
    if !translated(proto) {
        return Err(Skip::NotOurs);
    }
    let l4_off = inner_l3_off + Ipv6Hdr::LEN;
    let ports: *const [u8; 8] = ptr_at(ctx, l4_off).map_err(|_| Skip::Malformed)?;
    let ports = unsafe { &*ports };
    let inner = Packet {
        l4_off,
        proto,
        saddr: isaddr,
        daddr: idaddr,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        ihl: Ipv6Hdr::LEN,
        fragment: false,
        tcp_flags: 0,
    };
    let inner_l4_csum = match proto {
        IPPROTO_TCP => ptr_at::<[u8; TcpHdr::LEN], _>(ctx, l4_off).is_ok(),
        IPPROTO_UDP => true,
        // SCTP's CRC32c: nobody checks a quote's (see `translated`).
        _ => false,
    };
    Ok(IcmpError {
        saddr,
        daddr,
        icmp_off,
        inner_l3_off,
        inner,
        inner_l4_csum,
    })
}

/// ICMP types that quote the packet they are about (RFC 792).
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMP_HDR_LEN: usize = 8;

#[inline(always)]
fn icmp_error<C: Frame>(ctx: &C, outer: &Ip, icmp_off: usize) -> Result<IcmpError, Skip> {
    // The quote sits deeper than the headers of a flow packet.
    ctx.ensure(MAX_ICMP_LEN);
    let icmp: *const [u8; ICMP_HDR_LEN] = ptr_at(ctx, icmp_off).map_err(|_| Skip::NotOurs)?;
    let ty = unsafe { (*icmp)[0] };
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED && ty != ICMP_PARAMETER_PROBLEM {
        return Err(Skip::NotOurs);
    }
    let inner_l3_off = icmp_off + ICMP_HDR_LEN;
    let ip = ipv4_at(ctx, inner_l3_off)?;
    if !translated(ip.proto) || ip.frags & 0x1fff != 0 {
        // Not about a flow we translate, or a later fragment (no ports).
        return Err(Skip::NotOurs);
    }
    let l4_off = inner_l3_off + ip.ihl;
    // RFC 792: at least 64 bits of the original datagram's payload.
    let ports: *const [u8; 8] = ptr_at(ctx, l4_off).map_err(|_| Skip::Malformed)?;
    let ports = unsafe { &*ports };
    let inner = Packet {
        l4_off,
        proto: ip.proto,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        ihl: ip.ihl,
        fragment: ip.frags & 0x3fff != 0,
        tcp_flags: 0,
    };
    let inner_l4_csum = match ip.proto {
        IPPROTO_TCP => ptr_at::<[u8; TcpHdr::LEN], _>(ctx, l4_off).is_ok(),
        IPPROTO_UDP => true,
        _ => false,
    };
    Ok(IcmpError {
        saddr: outer.saddr,
        daddr: outer.daddr,
        icmp_off,
        inner_l3_off,
        inner,
        inner_l4_csum,
    })
}
