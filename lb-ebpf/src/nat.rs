//! Address/port rewriting with incremental checksum updates, one
//! implementation per hook: tc must go through helpers, XDP may write.
//! A rewrite sets both ends of the packet at once (DNAT, reverse NAT, or
//! both for SNATed flows); the checksum work is the same either way.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use lb_common::{IPPROTO_SCTP, IPPROTO_UDP};

use crate::checksum::{apply, delta16};
use crate::family::Family;
use crate::parse::{Frame, IP_CSUM_OFF, L3_OFF, Packet, ptr_at};

/// A packet's addressing after a rewrite, network order.
#[derive(Clone, Copy)]
pub struct Tuple<A = u32> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
}

impl<A: Copy> Tuple<A> {
    /// The packet as it is.
    #[inline(always)]
    pub fn of(p: &Packet<A>) -> Self {
        Tuple {
            saddr: p.saddr,
            daddr: p.daddr,
            sport: p.sport,
            dport: p.dport,
        }
    }

    #[inline(always)]
    pub fn src(self, addr: A, port: u16) -> Self {
        Tuple {
            saddr: addr,
            sport: port,
            ..self
        }
    }

    #[inline(always)]
    pub fn dst(self, addr: A, port: u16) -> Self {
        Tuple {
            daddr: addr,
            dport: port,
            ..self
        }
    }
}

/// Rewrites a parsed packet's addresses and ports to `to`.
pub trait Nat: Frame {
    fn rewrite<A: Family>(&self, p: &Packet<A>, to: &Tuple<A>) -> Result<(), ()>;
    /// What a router does before sending a packet on: TTL (hop limit)
    /// decremented (`ttl` is the packet's, `proto` its IP protocol), and
    /// the MACs of the next hop when known.
    fn route<A: Family>(&self, proto: u8, ttl: u8, macs: Option<&[u8; 12]>) -> Result<(), ()>;
}

/// The 16-bit word the IPv4 TTL shares with the protocol, before and
/// after the decrement (native order, as the checksum code takes it).
#[inline(always)]
fn ttl_words(proto: u8, ttl: u8) -> (u16, u16) {
    (
        u16::from_ne_bytes([ttl, proto]),
        u16::from_ne_bytes([ttl.wrapping_sub(1), proto]),
    )
}

/// What a rewrite changes, worked out once for both hooks. The deltas are
/// one's-complement sums of native-order values (see `checksum`).
struct Change {
    addrs: bool,
    ports: bool,
    addr_delta: u32,
    port_delta: u32,
    /// Later fragments have no L4 header to fix.
    has_l4: bool,
}

#[inline(always)]
fn change<A: Family>(p: &Packet<A>, t: &Tuple<A>) -> Change {
    let (mut addr_delta, mut port_delta) = (0, 0);
    if p.saddr != t.saddr {
        addr_delta += A::delta(p.saddr, t.saddr);
    }
    if p.daddr != t.daddr {
        addr_delta += A::delta(p.daddr, t.daddr);
    }
    if p.sport != t.sport {
        port_delta += delta16(p.sport, t.sport);
    }
    if p.dport != t.dport {
        port_delta += delta16(p.dport, t.dport);
    }
    Change {
        addrs: p.saddr != t.saddr || p.daddr != t.daddr,
        ports: p.sport != t.sport || p.dport != t.dport,
        addr_delta,
        port_delta,
        has_l4: !(p.fragment && p.sport == 0 && p.dport == 0),
    }
}

/// Where SCTP's checksum (CRC32c, little-endian) sits in its header.
const SCTP_CSUM_OFF: usize = 8;

/// An SCTP packet's checksum field `old` after its ports change from
/// `p`'s to `t`'s (see `lb_common::crc32c`): the SCTP length comes from
/// the IP header (a frame may carry padding past it).
#[inline(always)]
fn sctp_csum<C: Frame, A: Family>(
    ctx: &C,
    p: &Packet<A>,
    t: &Tuple<A>,
    old: [u8; 4],
) -> Result<[u8; 4], ()> {
    let (len_off, before_l4) = if A::IS_V6 {
        // Payload length: what follows the fixed header.
        (L3_OFF + 4, p.ihl - 40)
    } else {
        (L3_OFF + 2, p.ihl)
    };
    let ip_len = u16::from_be(unsafe { ptr_at::<u16, _>(ctx, len_off)?.read_unaligned() });
    let len = (ip_len as usize).checked_sub(before_l4).ok_or(())?;
    let word = |a: u16, b: u16| {
        let (a, b) = (a.to_ne_bytes(), b.to_ne_bytes());
        u32::from_le_bytes([a[0], a[1], b[0], b[1]])
    };
    let diff = word(p.sport, p.dport) ^ word(t.sport, t.dport);
    Ok((u32::from_le_bytes(old) ^ crc32c_delta(diff, len as u32)).to_le_bytes())
}

/// A BPF subprogram: the two carry-less multiplications are a few hundred
/// instructions, verified once rather than at every rewrite site.
#[inline(never)]
fn crc32c_delta(diff: u32, len: u32) -> u32 {
    lb_common::crc32c::delta(diff, len as u16)
}

/// The IPv4 header's checksum after the address change, computed here: it
/// is a plain checksum over the header, whatever the skb's checksum state.
#[inline(always)]
fn ip_csum<C: Frame>(ctx: &C, c: &Change) -> Result<u16, ()> {
    let csum = unsafe { ptr_at::<u16, _>(ctx, IP_CSUM_OFF)?.read_unaligned() };
    Ok(apply(csum, c.addr_delta))
}

/// The bytes a tc rewrite stores in one go: from the IPv4 checksum (IPv6
/// has none: from the source address) through the ports, which follow
/// when the IP header has no options (extension headers).
#[repr(C, packed)]
struct Head<A> {
    csum: u16,
    addrs: [A; 2],
    ports: [u16; 2],
}

/// tc: every write goes through a helper. A direct write anywhere in the
/// program makes the kernel unclone every packet it sees (TCP segments
/// are clones), which cost a fifth of TCP throughput. Helper calls are
/// the expensive part of a rewrite, so there are as few as possible: one
/// store for the IP checksum, both addresses and both ports (adjacent when
/// the IP header has no options), and the L4 checksum through the csum
/// helper, which alone knows whether the skb's checksum is partial: once
/// for the addresses (pseudo-header) and once for the ports, each as a
/// precomputed difference.
impl Nat for TcContext {
    #[inline(always)]
    fn rewrite<A: Family>(&self, p: &Packet<A>, t: &Tuple<A>) -> Result<(), ()> {
        let c = change(p, t);
        let head = Head {
            csum: if A::IS_V6 { 0 } else { ip_csum(self, &c)? },
            addrs: [t.saddr, t.daddr],
            ports: [t.sport, t.dport],
        };
        // IPv4 from the checksum, IPv6 from the addresses.
        let (from, skip) = if A::IS_V6 {
            (L3_OFF + A::SRC_OFF, 2)
        } else {
            (IP_CSUM_OFF, 0)
        };
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&head as *const Head<A> as *const u8).add(skip),
                core::mem::size_of::<Head<A>>() - skip,
            )
        };
        if c.has_l4 && p.l4_off == L3_OFF + A::HDR_LEN {
            store_bytes(self, from, bytes)?;
        } else {
            store_bytes(self, from, &bytes[..bytes.len() - 4])?;
            if c.has_l4 && c.ports {
                let ports = [t.sport, t.dport];
                self.store(p.l4_off, &ports, 0).map_err(|_| ())?;
            }
        }
        if !c.has_l4 {
            return Ok(());
        }
        if p.proto == IPPROTO_SCTP {
            if !c.ports {
                return Ok(());
            }
            let at = p.l4_off + SCTP_CSUM_OFF;
            let old: [u8; 4] = self.load(at).map_err(|_| ())?;
            let new = sctp_csum(self, p, t, old)?;
            return self.store(at, &new, 0).map_err(|_| ());
        }
        // UDP checksum 0 means "none": keep it 0, never produce 0 by accident.
        let udp_flag = if p.proto == IPPROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        let csum_off = p.l4_csum_off();
        // Size 0: `to` is a checksum difference, not a field value.
        if c.addrs {
            self.l4_csum_replace(
                csum_off,
                0,
                c.addr_delta as u64,
                udp_flag | BPF_F_PSEUDO_HDR as u64,
            )
            .map_err(|_| ())?;
        }
        if c.ports {
            self.l4_csum_replace(csum_off, 0, c.port_delta as u64, udp_flag)
                .map_err(|_| ())?;
        }
        Ok(())
    }

    #[inline(always)]
    fn route<A: Family>(&self, proto: u8, ttl: u8, macs: Option<&[u8; 12]>) -> Result<(), ()> {
        self.store(L3_OFF + A::TTL_OFF, &ttl.wrapping_sub(1), 0)
            .map_err(|_| ())?;
        if !A::IS_V6 {
            let (old, new) = ttl_words(proto, ttl);
            self.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 2)
                .map_err(|_| ())?;
        }
        if let Some(m) = macs {
            self.store(0, m, 0).map_err(|_| ())?;
        }
        Ok(())
    }
}

/// `bpf_skb_store_bytes` of a byte slice (the helper wrapper takes a
/// value; a slice's length is only known here).
#[inline(always)]
fn store_bytes(ctx: &TcContext, off: usize, bytes: &[u8]) -> Result<(), ()> {
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_store_bytes(
            ctx.skb.skb as *mut _,
            off as u32,
            bytes.as_ptr() as *const _,
            bytes.len() as u32,
            0,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

/// XDP: direct writes and checksums computed here. Frames at XDP come
/// from the wire and carry complete checksums (no CHECKSUM_PARTIAL state
/// to respect), so an incremental update is exact.
impl Nat for XdpContext {
    #[inline(always)]
    fn rewrite<A: Family>(&self, p: &Packet<A>, t: &Tuple<A>) -> Result<(), ()> {
        let c = change(p, t);
        if c.has_l4 && p.proto == IPPROTO_SCTP {
            if c.ports {
                let at = ptr_at::<[u8; 4], _>(self, p.l4_off + SCTP_CSUM_OFF)?;
                let new = sctp_csum(self, p, t, unsafe { at.read_unaligned() })?;
                let ports = ptr_at::<[u16; 2], _>(self, p.l4_off)?;
                unsafe {
                    at.write_unaligned(new);
                    ports.write_unaligned([t.sport, t.dport]);
                }
            }
        } else if c.has_l4 {
            let at = ptr_at::<u16, _>(self, p.l4_csum_off())?;
            let old = unsafe { at.read_unaligned() };
            // A zero UDP checksum means none was computed: it stays zero.
            if !(p.proto == IPPROTO_UDP && old == 0) {
                let mut new = apply(old, c.addr_delta + c.port_delta);
                if p.proto == IPPROTO_UDP && new == 0 {
                    new = 0xffff;
                }
                unsafe { at.write_unaligned(new) };
            }
            if c.ports {
                let ports = ptr_at::<[u16; 2], _>(self, p.l4_off)?;
                unsafe { ports.write_unaligned([t.sport, t.dport]) };
            }
        }
        // Unaligned: frames need not start 4-byte aligned.
        let addrs = ptr_at::<[A; 2], _>(self, L3_OFF + A::SRC_OFF)?;
        if !A::IS_V6 {
            let ip = ptr_at::<u16, _>(self, IP_CSUM_OFF)?;
            let ip_csum = apply(unsafe { ip.read_unaligned() }, c.addr_delta);
            unsafe { ip.write_unaligned(ip_csum) };
        }
        unsafe { addrs.write_unaligned([t.saddr, t.daddr]) };
        Ok(())
    }

    #[inline(always)]
    fn route<A: Family>(&self, proto: u8, ttl: u8, macs: Option<&[u8; 12]>) -> Result<(), ()> {
        if A::IS_V6 {
            unsafe { ptr_at::<u8, _>(self, L3_OFF + A::TTL_OFF)?.write(ttl.wrapping_sub(1)) };
        } else {
            let (old, new) = ttl_words(proto, ttl);
            let csum = ptr_at::<u16, _>(self, IP_CSUM_OFF)?;
            let word = ptr_at::<u16, _>(self, L3_OFF + A::TTL_OFF)?;
            unsafe {
                word.write_unaligned(new);
                csum.write_unaligned(apply(csum.read_unaligned(), delta16(old, new)));
            }
        }
        if let Some(m) = macs {
            unsafe { ptr_at::<[u8; 12], _>(self, 0)?.write_unaligned(*m) };
        }
        Ok(())
    }
}
