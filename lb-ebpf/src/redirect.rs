//! Sending a translated packet straight to its next hop (tc): a FIB
//! lookup gives the egress interface and MAC addresses, the packet is
//! redirected there. Needed for external flows, whose packets may carry
//! one of this node's addresses as source after translation (a NodePort
//! reply, a SNATed request): the stack would drop those on input as
//! martians. It also skips the stack's second routing pass.
use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use network_types::ip::Ipv4Hdr;

use crate::parse::{IP_CSUM_OFF, L3_OFF, ptr_at};

const AF_INET: u8 = 2;
const TTL_OFF: usize = L3_OFF + 8;

/// The verdict that sends the (translated) packet on, or None when the
/// stack must handle it: no forwarding route, a local destination, a
/// packet too big for the egress MTU (the stack answers "fragmentation
/// needed"), or a TTL that expires here (the stack answers "time
/// exceeded").
#[inline(always)]
pub fn to_next_hop(ctx: &TcContext) -> Option<i32> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, L3_OFF).ok()?;
    let (saddr, daddr, tos, ttl, proto) = unsafe {
        (
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
            (*ip).tos,
            (*ip).ttl,
            (*ip).proto,
        )
    };
    if ttl <= 1 {
        return None;
    }
    let mut fib: bpf_fib_lookup = unsafe { zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    // tot_len 0: the kernel checks the skb against the egress MTU itself,
    // GSO packets included.
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return None;
    }
    decrement_ttl(ctx, ttl, proto).ok()?;
    let verdict = if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        ctx.store(0, &macs, 0).ok()?;
        unsafe { bpf_redirect(fib.ifindex, 0) }
    } else {
        // The neighbour is not resolved yet: the kernel resolves it.
        unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) }
    };
    Some(verdict as i32)
}

/// A router's TTL decrement, with the IP checksum updated for the 16-bit
/// word (TTL, protocol) it sits in.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, ttl: u8, proto: u8) -> Result<(), ()> {
    let old = u16::from_ne_bytes([ttl, proto]);
    let new = u16::from_ne_bytes([ttl - 1, proto]);
    ctx.store(TTL_OFF, &(ttl - 1), 0).map_err(|_| ())?;
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 2)
        .map_err(|_| ())
}
