//! Address/port rewriting with incremental checksum updates, one
//! implementation per hook: tc must go through helpers, XDP may write.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use lb_common::IPPROTO_UDP;

use crate::checksum::{apply, delta16, delta32};
use crate::parse::{Frame, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, L3_OFF, Packet, ptr_at};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub enum Side {
    Source,
    Destination,
}

/// Rewrites one end of a parsed packet.
pub trait Nat: Frame {
    fn rewrite(&self, p: &Packet, side: Side, addr: u32, port: u16) -> Result<(), ()>;
}

/// What a rewrite changes, worked out once for both hooks.
struct Change {
    old_addr: u32,
    old_port: u16,
    /// Offsets of the address and port being rewritten.
    addr_off: usize,
    port_off: usize,
    /// Later fragments have no L4 header to fix.
    has_l4: bool,
    /// The packet's addresses and ports after the rewrite.
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn change(p: &Packet, side: Side, addr: u32, port: u16) -> Change {
    let has_l4 = !(p.fragment && p.sport == 0 && p.dport == 0);
    let (mut saddr, mut daddr, mut sport, mut dport) = (p.saddr, p.daddr, p.sport, p.dport);
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Source => {
            (saddr, sport) = (addr, port);
            (p.saddr, p.sport, IP_SRC_OFF, p.l4_off)
        }
        Side::Destination => {
            (daddr, dport) = (addr, port);
            (p.daddr, p.dport, IP_DST_OFF, p.l4_off + 2)
        }
    };
    Change {
        old_addr,
        old_port,
        addr_off,
        port_off,
        has_l4,
        saddr,
        daddr,
        sport,
        dport,
    }
}

/// The IP header's checksum after `c`, computed here: it is a plain
/// checksum over the header, whatever the skb's checksum state.
#[inline(always)]
fn ip_csum<C: Frame>(ctx: &C, c: &Change, addr: u32) -> Result<u16, ()> {
    let csum = unsafe { ptr_at::<u16, _>(ctx, IP_CSUM_OFF)?.read_unaligned() };
    Ok(apply(csum, delta32(c.old_addr, addr)))
}

/// tc: every write goes through a helper. A direct write anywhere in the
/// program makes the kernel unclone every packet it sees (TCP segments
/// are clones), which cost a fifth of TCP throughput. Helper calls are
/// the expensive part of a rewrite, so there are as few as possible: one
/// store for the IP checksum, both addresses and both ports (adjacent when
/// the IP header has no options), and the L4 checksum through the csum
/// helper, which alone knows whether the skb's checksum is partial.
impl Nat for TcContext {
    #[inline(always)]
    fn rewrite(&self, p: &Packet, side: Side, addr: u32, port: u16) -> Result<(), ()> {
        let c = change(p, side, addr, port);
        let csum = ip_csum(self, &c, addr)?;
        if c.has_l4 && p.l4_off == L3_OFF + 20 {
            let mut b = [0u8; 14];
            b[..2].copy_from_slice(&csum.to_ne_bytes());
            b[2..6].copy_from_slice(&c.saddr.to_ne_bytes());
            b[6..10].copy_from_slice(&c.daddr.to_ne_bytes());
            b[10..12].copy_from_slice(&c.sport.to_ne_bytes());
            b[12..].copy_from_slice(&c.dport.to_ne_bytes());
            self.store(IP_CSUM_OFF, &b, 0).map_err(|_| ())?;
        } else {
            let mut b = [0u8; 10];
            b[..2].copy_from_slice(&csum.to_ne_bytes());
            b[2..6].copy_from_slice(&c.saddr.to_ne_bytes());
            b[6..].copy_from_slice(&c.daddr.to_ne_bytes());
            self.store(IP_CSUM_OFF, &b, 0).map_err(|_| ())?;
            if c.has_l4 && c.old_port != port {
                self.store(c.port_off, &port, 0).map_err(|_| ())?;
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
        if c.old_addr != addr {
            self.l4_csum_replace(
                csum_off,
                c.old_addr as u64,
                addr as u64,
                udp_flag | BPF_F_PSEUDO_HDR as u64 | 4,
            )
            .map_err(|_| ())?;
        }
        if c.old_port != port {
            self.l4_csum_replace(csum_off, c.old_port as u64, port as u64, udp_flag | 2)
                .map_err(|_| ())?;
        }
        Ok(())
    }
}

/// XDP: direct writes and checksums computed here. Frames at XDP come
/// from the wire and carry complete checksums (no CHECKSUM_PARTIAL state
/// to respect), so an incremental update is exact.
impl Nat for XdpContext {
    #[inline(always)]
    fn rewrite(&self, p: &Packet, side: Side, addr: u32, port: u16) -> Result<(), ()> {
        let c = change(p, side, addr, port);
        let addr_delta = delta32(c.old_addr, addr);
        let ip = ptr_at::<u16, _>(self, IP_CSUM_OFF)?;
        let ip_csum = apply(unsafe { ip.read_unaligned() }, addr_delta);
        if c.has_l4 {
            let at = ptr_at::<u16, _>(self, p.l4_csum_off())?;
            let old = unsafe { at.read_unaligned() };
            // A zero UDP checksum means none was computed: it stays zero.
            if !(p.proto == IPPROTO_UDP && old == 0) {
                let mut new = apply(old, addr_delta + delta16(c.old_port, port));
                if p.proto == IPPROTO_UDP && new == 0 {
                    new = 0xffff;
                }
                unsafe { at.write_unaligned(new) };
            }
            unsafe { ptr_at::<u16, _>(self, c.port_off)?.write_unaligned(port) };
        }
        // Unaligned: frames need not start 4-byte aligned.
        unsafe { ptr_at::<u32, _>(self, c.addr_off)?.write_unaligned(addr) };
        unsafe { ip.write_unaligned(ip_csum) };
        Ok(())
    }
}
