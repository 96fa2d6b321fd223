//! Building and checking raw Ethernet/IPv6/TCP/UDP/SCTP frames for the
//! BPF_PROG_TEST_RUN datapath tests, with extension headers.
use std::net::Ipv6Addr;

use crate::packet::{ETH, SCTP, fold, sctp_checksum, sum16};

pub const IP6: usize = 40;
pub const HOPOPTS: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const DSTOPTS: u8 = 60;

/// A frame description; `build` turns it into bytes with a valid L4
/// checksum.
#[derive(Clone, Debug)]
pub struct Frame6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub hop_limit: u8,
    pub payload: Vec<u8>,
    /// Extension headers between the IPv6 header and L4, in order: their
    /// type and body (the next-header byte is filled in; the length
    /// byte too, for all but the fragment header).
    pub ext: Vec<(u8, Vec<u8>)>,
}

impl Frame6 {
    pub fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8) -> Self {
        Frame6 {
            src: src.0,
            dst: dst.0,
            proto: 6,
            sport: src.1,
            dport: dst.1,
            tcp_flags: flags,
            hop_limit: 64,
            payload: Vec::new(),
            ext: Vec::new(),
        }
    }

    pub fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Self {
        Frame6 {
            proto: 17,
            payload: payload.to_vec(),
            ..Frame6::tcp(src, dst, 0)
        }
    }

    /// An SCTP packet whose chunks are `chunks`.
    pub fn sctp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), chunks: &[u8]) -> Self {
        Frame6 {
            proto: SCTP,
            payload: chunks.to_vec(),
            ..Frame6::tcp(src, dst, 0)
        }
    }

    /// With an extension header of `kind` (options: 8 bytes of padding;
    /// fragment: offset `frag_off` in 8-byte units, more fragments set).
    pub fn with_ext(mut self, kind: u8, frag_off: u16) -> Self {
        let body = if kind == FRAGMENT {
            let mut b = vec![0u8; 8];
            b[2..4].copy_from_slice(&((frag_off << 3) | 1).to_be_bytes());
            b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            b
        } else {
            // Next header, length 0 (8 bytes), PadN over the rest.
            vec![0, 0, 1, 4, 0, 0, 0, 0]
        };
        self.ext.push((kind, body));
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let l4_len = match self.proto {
            6 => 20,
            SCTP => 12,
            _ => 8,
        } + self.payload.len();
        let ext_len: usize = self.ext.iter().map(|(_, b)| b.len()).sum();
        let mut f = vec![0u8; ETH + IP6 + ext_len + l4_len];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let ip = &mut f[ETH..ETH + IP6];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((ext_len + l4_len) as u16).to_be_bytes());
        ip[6] = self.ext.first().map_or(self.proto, |(k, _)| *k);
        ip[7] = self.hop_limit;
        ip[8..24].copy_from_slice(&self.src.octets());
        ip[24..40].copy_from_slice(&self.dst.octets());
        let mut off = ETH + IP6;
        for (i, (_, body)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, |(k, _)| *k);
            f[off..off + body.len()].copy_from_slice(body);
            f[off] = next;
            off += body.len();
        }
        let l4 = &mut f[off..];
        l4[0..2].copy_from_slice(&self.sport.to_be_bytes());
        l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
        if self.proto == SCTP {
            l4[12..].copy_from_slice(&self.payload);
            let c = sctp_checksum(l4);
            l4[8..12].copy_from_slice(&c);
            return f;
        }
        if self.proto == 6 {
            l4[4..8].copy_from_slice(&1000u32.to_be_bytes());
            l4[12] = 0x50;
            l4[13] = self.tcp_flags;
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            l4[20..].copy_from_slice(&self.payload);
        } else {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4[8..].copy_from_slice(&self.payload);
        }
        let c = l4_checksum6(&f, off);
        let at = off + if self.proto == 6 { 16 } else { 6 };
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }
}

/// Offset of the L4 header: after the IPv6 header and the extension
/// headers this module builds.
pub fn l4_offset(f: &[u8]) -> (usize, u8) {
    let mut next = f[ETH + 6];
    let mut off = ETH + IP6;
    while matches!(next, HOPOPTS | ROUTING | DSTOPTS | FRAGMENT) {
        let len = if next == FRAGMENT {
            8
        } else {
            (f[off + 1] as usize + 1) * 8
        };
        next = f[off];
        off += len;
    }
    (off, next)
}

/// The L4 checksum a frame should carry (computed with its field zeroed).
pub fn l4_checksum6(f: &[u8], l4_off: usize) -> u16 {
    let (_, proto) = l4_offset(f);
    let mut l4 = f[l4_off..].to_vec();
    let at = if proto == 6 { 16 } else { 6 };
    l4[at] = 0;
    l4[at + 1] = 0;
    let mut acc = sum16(&f[ETH + 8..ETH + 40], 0);
    acc += proto as u32 + l4.len() as u32;
    let c = fold(sum16(&l4, acc));
    if c == 0 { 0xffff } else { c }
}

/// Checks the L4 checksum of a frame (IPv6 has no header checksum).
pub fn checksum_valid6(f: &[u8]) -> bool {
    let (off, proto) = l4_offset(f);
    if proto == SCTP {
        return f[off + 8..off + 12] == sctp_checksum(&f[off..]);
    }
    let at = off + if proto == 6 { 16 } else { 6 };
    u16::from_be_bytes([f[at], f[at + 1]]) == l4_checksum6(f, off)
}

/// (source, destination) address and port.
pub fn addrs6(f: &[u8]) -> ((Ipv6Addr, u16), (Ipv6Addr, u16)) {
    let (l4, _) = l4_offset(f);
    let a = |i: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[i..i + 16]).unwrap());
    (
        (a(ETH + 8), u16::from_be_bytes([f[l4], f[l4 + 1]])),
        (a(ETH + 24), u16::from_be_bytes([f[l4 + 2], f[l4 + 3]])),
    )
}

/// An ICMPv6 checksum, pseudo header included.
pub fn icmp6_checksum_valid(f: &[u8]) -> bool {
    let len = f.len() - ETH - IP6;
    let mut acc = sum16(&f[ETH + 8..ETH + 40], 0);
    acc += 58 + len as u32;
    fold(sum16(&f[ETH + IP6..], acc)) == 0
}

/// An ICMPv6 error from `src` to `dst` quoting `quoted` (a frame).
pub fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let quote = &quoted[ETH..];
    let mut f = vec![0u8; ETH + IP6 + 8];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    f[ETH] = 0x60;
    f[ETH + 4..ETH + 6].copy_from_slice(&((8 + quote.len()) as u16).to_be_bytes());
    f[ETH + 6] = 58;
    f[ETH + 7] = 64;
    f[ETH + 8..ETH + 24].copy_from_slice(&src.octets());
    f[ETH + 24..ETH + 40].copy_from_slice(&dst.octets());
    f[ETH + IP6] = ty;
    f[ETH + IP6 + 4..ETH + IP6 + 8].copy_from_slice(&rest);
    f.extend_from_slice(quote);
    let len = f.len() - ETH - IP6;
    let mut acc = sum16(&f[ETH + 8..ETH + 40], 0);
    acc += 58 + len as u32;
    let c = fold(sum16(&f[ETH + IP6..], acc));
    f[ETH + IP6 + 2..ETH + IP6 + 4].copy_from_slice(&c.to_be_bytes());
    f
}

/// The packet an ICMPv6 error frame quotes, as a frame of its own (so
/// `addrs6` and `checksum_valid6` apply to it).
pub fn quoted6(icmp: &[u8]) -> Vec<u8> {
    let mut f = icmp[..ETH].to_vec();
    f.extend_from_slice(&icmp[ETH + IP6 + 8..]);
    f
}
