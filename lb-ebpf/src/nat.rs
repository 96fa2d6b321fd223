//! Address/port rewriting with incremental checksum updates, one
//! implementation per hook: tc must go through helpers, XDP may write.
//! A rewrite sets both ends of the packet at once (DNAT, reverse NAT, or
//! both for SNATed flows); the checksum work is the same either way.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use lb_common::IPPROTO_UDP;

use crate::checksum::{apply, delta16, delta32};
use crate::parse::{Frame, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, L3_OFF, Packet, ptr_at};

/// A packet's addressing after a rewrite, network order.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    /// The packet as it is.
    #[inline(always)]
    pub fn of(p: &Packet) -> Self {
        Tuple {
            saddr: p.saddr,
            daddr: p.daddr,
            sport: p.sport,
            dport: p.dport,
        }
    }

    #[inline(always)]
    pub fn src(self, addr: u32, port: u16) -> Self {
        Tuple {
            saddr: addr,
            sport: port,
            ..self
        }
    }

    #[inline(always)]
    pub fn dst(self, addr: u32, port: u16) -> Self {
        Tuple {
            daddr: addr,
            dport: port,
            ..self
        }
    }
}

/// Rewrites a parsed packet's addresses and ports to `to`.
pub trait Nat: Frame {
    fn rewrite(&self, p: &Packet, to: &Tuple) -> Result<(), ()>;
    /// What a router does before sending a packet on: TTL decremented
    /// (`ttl` is the packet's), and the MACs of the next hop when known.
    fn route(&self, p: &Packet, ttl: u8, macs: Option<&[u8; 12]>) -> Result<(), ()>;
}

const TTL_OFF: usize = L3_OFF + 8;

/// The 16-bit word the TTL shares with the protocol, before and after the
/// decrement (native order, as the checksum code takes it).
#[inline(always)]
fn ttl_words(p: &Packet, ttl: u8) -> (u16, u16) {
    (
        u16::from_ne_bytes([ttl, p.proto]),
        u16::from_ne_bytes([ttl.wrapping_sub(1), p.proto]),
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
fn change(p: &Packet, t: &Tuple) -> Change {
    let (mut addr_delta, mut port_delta) = (0, 0);
    if p.saddr != t.saddr {
        addr_delta += delta32(p.saddr, t.saddr);
    }
    if p.daddr != t.daddr {
        addr_delta += delta32(p.daddr, t.daddr);
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

/// The IP header's checksum after the address change, computed here: it
/// is a plain checksum over the header, whatever the skb's checksum state.
#[inline(always)]
fn ip_csum<C: Frame>(ctx: &C, c: &Change) -> Result<u16, ()> {
    let csum = unsafe { ptr_at::<u16, _>(ctx, IP_CSUM_OFF)?.read_unaligned() };
    Ok(apply(csum, c.addr_delta))
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
    fn rewrite(&self, p: &Packet, t: &Tuple) -> Result<(), ()> {
        let c = change(p, t);
        let csum = ip_csum(self, &c)?;
        if c.has_l4 && p.l4_off == L3_OFF + 20 {
            let mut b = [0u8; 14];
            b[..2].copy_from_slice(&csum.to_ne_bytes());
            b[2..6].copy_from_slice(&t.saddr.to_ne_bytes());
            b[6..10].copy_from_slice(&t.daddr.to_ne_bytes());
            b[10..12].copy_from_slice(&t.sport.to_ne_bytes());
            b[12..].copy_from_slice(&t.dport.to_ne_bytes());
            self.store(IP_CSUM_OFF, &b, 0).map_err(|_| ())?;
        } else {
            let mut b = [0u8; 10];
            b[..2].copy_from_slice(&csum.to_ne_bytes());
            b[2..6].copy_from_slice(&t.saddr.to_ne_bytes());
            b[6..].copy_from_slice(&t.daddr.to_ne_bytes());
            self.store(IP_CSUM_OFF, &b, 0).map_err(|_| ())?;
            if c.has_l4 && c.ports {
                let mut ports = [0u8; 4];
                ports[..2].copy_from_slice(&t.sport.to_ne_bytes());
                ports[2..].copy_from_slice(&t.dport.to_ne_bytes());
                self.store(p.l4_off, &ports, 0).map_err(|_| ())?;
            }
        }
        if !c.has_l4 {
            return Ok(());
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
    fn route(&self, p: &Packet, ttl: u8, macs: Option<&[u8; 12]>) -> Result<(), ()> {
        let (old, new) = ttl_words(p, ttl);
        self.store(TTL_OFF, &ttl.wrapping_sub(1), 0)
            .map_err(|_| ())?;
        self.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 2)
            .map_err(|_| ())?;
        if let Some(m) = macs {
            self.store(0, m, 0).map_err(|_| ())?;
        }
        Ok(())
    }
}

/// XDP: direct writes and checksums computed here. Frames at XDP come
/// from the wire and carry complete checksums (no CHECKSUM_PARTIAL state
/// to respect), so an incremental update is exact.
impl Nat for XdpContext {
    #[inline(always)]
    fn rewrite(&self, p: &Packet, t: &Tuple) -> Result<(), ()> {
        let c = change(p, t);
        let ip = ptr_at::<u16, _>(self, IP_CSUM_OFF)?;
        let ip_csum = apply(unsafe { ip.read_unaligned() }, c.addr_delta);
        if c.has_l4 {
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
        unsafe { ptr_at::<u32, _>(self, IP_SRC_OFF)?.write_unaligned(t.saddr) };
        unsafe { ptr_at::<u32, _>(self, IP_DST_OFF)?.write_unaligned(t.daddr) };
        unsafe { ip.write_unaligned(ip_csum) };
        Ok(())
    }

    #[inline(always)]
    fn route(&self, p: &Packet, ttl: u8, macs: Option<&[u8; 12]>) -> Result<(), ()> {
        let (old, new) = ttl_words(p, ttl);
        let csum = ptr_at::<u16, _>(self, IP_CSUM_OFF)?;
        let word = ptr_at::<u16, _>(self, TTL_OFF)?;
        unsafe {
            word.write_unaligned(new);
            csum.write_unaligned(apply(csum.read_unaligned(), delta16(old, new)));
        }
        if let Some(m) = macs {
            unsafe { ptr_at::<[u8; 12], _>(self, 0)?.write_unaligned(*m) };
        }
        Ok(())
    }
}
