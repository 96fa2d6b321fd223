//! The next hop of a translated packet, from the kernel's FIB: egress
//! interface and MAC addresses, so that external flows are sent on
//! without the stack. Needed, not only faster: after translation a
//! NodePort reply or a SNATed request carries one of this node's
//! addresses as source, which the stack drops on input as a martian.
//! The lookup is made for the translated addresses before the packet is
//! rewritten, so a hook that cannot use the answer can leave the packet
//! as it was.
use core::mem::{size_of, zeroed};

use crate::family::Family;
use crate::nat::Tuple;
use crate::parse::{Frame, L3_OFF, ptr_at};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    macros::map,
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use lb_common::{HOP_CACHE_TICKS, NatValueOf};

/// Where a translated packet goes.
pub enum NextHop {
    /// Out of `ifindex` with these destination and source MACs.
    Found {
        ifindex: u32,
        macs: [u8; 12],
        ttl: u8,
        /// The egress MTU, when the FIB said (0: not known).
        mtu: u16,
    },
    /// Out of `ifindex`; the neighbour is not resolved yet.
    Unresolved { ifindex: u32, ttl: u8 },
    /// The stack must handle it: no forwarding route, a local
    /// destination, a packet too big for the egress MTU (the stack answers
    /// "fragmentation needed") or a TTL that expires here (it answers
    /// "time exceeded").
    Stack,
}

/// A hook's context the FIB can be asked from.
pub trait Fib: EbpfContext + Frame {
    /// The interface the packet arrived on.
    fn arrival_ifindex(&self) -> u32;
}

impl Fib for TcContext {
    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }
}

impl Fib for XdpContext {
    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        unsafe { (*self.ctx).ingress_ifindex }
    }
}

/// The packet's hop count, IPv4 TOS or IPv6 flow information (the
/// first header word but the version, as the FIB takes it), and length
/// from its IP header.
#[inline(always)]
fn ip_meta<C: Frame, A: Family>(ctx: &C) -> Option<(u8, u32, u16)> {
    let b = unsafe { *ptr_at::<[u8; 12], _>(ctx, L3_OFF).ok()? };
    Some(if A::IS_V6 {
        (
            b[7],
            u32::from_ne_bytes([b[0] & 0x0f, b[1], b[2], b[3]]),
            u16::from_be_bytes([b[4], b[5]]).wrapping_add(A::HDR_LEN as u16),
        )
    } else {
        (b[8], b[1] as u32, u16::from_be_bytes([b[2], b[3]]))
    })
}

/// The FIB's parameter block, per CPU: 64 bytes the stack cannot spare
/// (the verifier allows 512 for a whole call chain).
#[map(name = "flb_fib_scratch")]
static SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// The next hop of the packet once rewritten to `t`. Not inlined: one
/// copy of the helper call for every caller.
#[inline(never)]
pub fn lookup<C: Fib, A: Family>(ctx: &C, t: &Tuple<A>, proto: u8) -> NextHop {
    let Some((ttl, tos, _)) = ip_meta::<C, A>(ctx) else {
        return NextHop::Stack;
    };
    if ttl <= 1 {
        return NextHop::Stack;
    }
    let Some(fib) = SCRATCH.get_ptr_mut(0) else {
        return NextHop::Stack;
    };
    let fib = unsafe {
        fib.write(zeroed());
        &mut *fib
    };
    fib.l4_protocol = proto;
    // tot_len stays 0: the kernel checks the packet against the egress
    // MTU itself (GSO packets included, at tc).
    A::fib_addrs(fib, t.saddr, t.daddr, tos);
    fib.ifindex = ctx.arrival_ifindex();
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            fib as *mut bpf_fib_lookup,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        NextHop::Found {
            ifindex: fib.ifindex,
            macs,
            ttl,
            mtu: unsafe { fib.__bindgen_anon_1.mtu_result },
        }
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        NextHop::Unresolved {
            ifindex: fib.ifindex,
            ttl,
        }
    } else {
        NextHop::Stack
    }
}

/// The next hop from a flow's cache while it is fresh, else from the FIB
/// (and then cached): an established flow's packets skip the FIB lookup,
/// the costliest step of their path. A packet longer than the cached
/// egress MTU (a GSO packet at tc, say) asks the FIB, which checks it.
#[inline(always)]
pub fn lookup_cached<C: Fib, A: Family>(
    ctx: &C,
    t: &Tuple<A>,
    proto: u8,
    cache: *mut NatValueOf<A>,
    now: u32,
) -> NextHop {
    let c = unsafe { &mut *cache };
    if c.hop_ifindex != 0 && now.wrapping_sub(c.hop_checked) < HOP_CACHE_TICKS {
        let Some((ttl, _, len)) = ip_meta::<C, A>(ctx) else {
            return NextHop::Stack;
        };
        if ttl > 1 && (c.hop_mtu == 0 || len <= c.hop_mtu) {
            return NextHop::Found {
                ifindex: c.hop_ifindex,
                macs: c.hop_macs,
                ttl,
                mtu: c.hop_mtu,
            };
        }
    }
    let hop = lookup(ctx, t, proto);
    if let NextHop::Found {
        ifindex, macs, mtu, ..
    } = hop
    {
        c.hop_ifindex = ifindex;
        c.hop_macs = macs;
        c.hop_mtu = mtu;
        c.hop_checked = now;
    }
    hop
}
