//! Building and checking raw Ethernet/IPv4/TCP/UDP/SCTP frames for the
//! BPF_PROG_TEST_RUN datapath tests.
use std::net::Ipv4Addr;

pub const ETH: usize = 14;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_RST: u8 = 0x04;
pub const SCTP: u8 = 132;

/// An INIT chunk (type 1, 20 bytes): what opens an SCTP association.
pub const SCTP_INIT: [u8; 20] = [
    1, 0, 0, 20, // type, flags, length
    0x12, 0x34, 0x56, 0x78, // initiate tag
    0, 1, 0, 0, // a_rwnd
    0, 10, 0, 10, // outbound, inbound streams
    0, 0, 0, 1, // initial TSN
];

/// The checksum an SCTP packet (`l4`, from its common header) should carry,
/// as stored: CRC-32C over it with the field zeroed, little-endian.
pub fn sctp_checksum(l4: &[u8]) -> [u8; 4] {
    let mut zeroed = l4.to_vec();
    zeroed[8..12].fill(0);
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI)
        .checksum(&zeroed)
        .to_le_bytes()
}

pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A frame description; `build` turns it into bytes with valid checksums.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub payload: Vec<u8>,
    /// UDP only: send checksum 0 ("no checksum").
    pub udp_zero_csum: bool,
}

impl Frame {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Frame {
            src: src.0,
            dst: dst.0,
            proto: 6,
            sport: src.1,
            dport: dst.1,
            tcp_flags: flags,
            seq: 1000,
            payload: Vec::new(),
            udp_zero_csum: false,
        }
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Self {
        Frame {
            proto: 17,
            payload: payload.to_vec(),
            ..Frame::tcp(src, dst, 0)
        }
    }

    /// An SCTP packet whose chunks are `chunks` (verification tag 0, as
    /// an INIT's).
    pub fn sctp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), chunks: &[u8]) -> Self {
        Frame {
            proto: SCTP,
            payload: chunks.to_vec(),
            ..Frame::tcp(src, dst, 0)
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let l4_len = match self.proto {
            6 => 20,
            SCTP => 12,
            _ => 8,
        } + self.payload.len();
        let mut f = vec![0u8; ETH + 20 + l4_len];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[ETH..ETH + 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let c = fold(sum16(ip, 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let l4 = &mut f[ETH + 20..];
        l4[0..2].copy_from_slice(&self.sport.to_be_bytes());
        l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
        if self.proto == SCTP {
            l4[12..].copy_from_slice(&self.payload);
            let c = sctp_checksum(l4);
            l4[8..12].copy_from_slice(&c);
            return f;
        }
        if self.proto == 6 {
            l4[4..8].copy_from_slice(&self.seq.to_be_bytes());
            l4[12] = 0x50;
            l4[13] = self.tcp_flags;
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            l4[20..].copy_from_slice(&self.payload);
        } else {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4[8..].copy_from_slice(&self.payload);
        }
        if !(self.proto == 17 && self.udp_zero_csum) {
            let c = l4_checksum(&f);
            let off = ETH + 20 + if self.proto == 6 { 16 } else { 6 };
            f[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        f
    }
}

/// The L4 checksum a frame should carry (computed with its field zeroed).
pub fn l4_checksum(f: &[u8]) -> u16 {
    let ihl = ((f[ETH] & 0x0f) as usize) * 4;
    let proto = f[ETH + 9];
    let tot = u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]) as usize;
    let mut l4 = f[ETH + ihl..ETH + tot].to_vec();
    let off = if proto == 6 { 16 } else { 6 };
    l4[off] = 0;
    l4[off + 1] = 0;
    let mut acc = sum16(&f[ETH + 12..ETH + 20], 0);
    acc += proto as u32 + l4.len() as u32;
    let c = fold(sum16(&l4, acc));
    if proto == 17 && c == 0 { 0xffff } else { c }
}

/// Checks the IPv4 header checksum and the L4 checksum of a frame.
pub fn checksums_valid(f: &[u8]) -> bool {
    let ihl = ((f[ETH] & 0x0f) as usize) * 4;
    if fold(sum16(&f[ETH..ETH + ihl], 0)) != 0 {
        return false;
    }
    let proto = f[ETH + 9];
    let off = ETH
        + ihl
        + if proto == 6 {
            16
        } else if proto == 17 {
            6
        } else {
            2
        };
    let stored = u16::from_be_bytes([f[off], f[off + 1]]);
    match proto {
        17 if stored == 0 => true,
        6 | 17 => stored == l4_checksum(f),
        SCTP => {
            let tot = u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]) as usize;
            let l4 = &f[ETH + ihl..ETH + tot];
            l4[8..12] == sctp_checksum(l4)
        }
        1 => {
            let tot = u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]) as usize;
            fold(sum16(&f[ETH + ihl..ETH + tot], 0)) == 0
        }
        _ => true,
    }
}

pub fn src(f: &[u8]) -> (Ipv4Addr, u16) {
    let l4 = ETH + ((f[ETH] & 0x0f) as usize) * 4;
    (
        Ipv4Addr::new(f[ETH + 12], f[ETH + 13], f[ETH + 14], f[ETH + 15]),
        u16::from_be_bytes([f[l4], f[l4 + 1]]),
    )
}

pub fn dst(f: &[u8]) -> (Ipv4Addr, u16) {
    let l4 = ETH + ((f[ETH] & 0x0f) as usize) * 4;
    (
        Ipv4Addr::new(f[ETH + 16], f[ETH + 17], f[ETH + 18], f[ETH + 19]),
        u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]),
    )
}

/// An ICMP error frame from `src` to `dst` (type `ty`, code `code`, the
/// 4 bytes after the checksum in `rest`, e.g. the next-hop MTU) quoting
/// the first `quote_len` bytes of the IP packet in `quoted` (a frame).
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (ty, code): (u8, u8),
    rest: [u8; 4],
    quoted: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let quote = &quoted[ETH..(ETH + quote_len).min(quoted.len())];
    let mut f = vec![0u8; ETH + 20 + 8];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let tot = 20 + 8 + quote.len();
    let ip = &mut f[ETH..ETH + 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(tot as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = fold(sum16(ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[ETH + 20] = ty;
    f[ETH + 21] = code;
    f[ETH + 24..ETH + 28].copy_from_slice(&rest);
    f.extend_from_slice(quote);
    let c = fold(sum16(&f[ETH + 20..], 0));
    f[ETH + 22..ETH + 24].copy_from_slice(&c.to_be_bytes());
    f
}

/// The packet an ICMP error frame quotes, as a frame of its own (so
/// `src`, `dst` and `checksums_valid` apply to it).
pub fn quoted(icmp: &[u8]) -> Vec<u8> {
    let ihl = ((icmp[ETH] & 0x0f) as usize) * 4;
    let mut f = icmp[..ETH].to_vec();
    f.extend_from_slice(&icmp[ETH + ihl + 8..]);
    f
}
