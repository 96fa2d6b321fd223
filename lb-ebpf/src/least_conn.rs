//! Least-conn: a new flow goes to the backend with the fewest active
//! flows, of up to `LC_SCAN` slots from a random one (ties go to the
//! first, so equal backends share new flows at random). The datapath keeps
//! the counts, one per backend id in `LEAST_CONN`: a flow counts in when
//! it is tracked (TCP; the entry is flagged `CT_FLAG_COUNTED`) or given a
//! backend at the socket hooks, and out at its first FIN or RST, or when
//! its socket is released. UDP flows seen only as packets have no end the
//! datapath can see, so they are not counted (they are placed by the
//! counts of the rest). A count taken back twice by racing CPUs, or lost
//! with an evicted entry, is off until the agent resets it with its
//! backend (counts compare signed, so a slip below zero only favours the
//! backend for a while).
use aya_ebpf::cty::c_void;
use aya_ebpf::helpers::{bpf_get_prandom_u32, generated::bpf_loop};
use lb_common::{
    CT_FLAG_COUNTED, CtKeyOf, IPPROTO_TCP, LC_SCAN, SVC_FLAG_LEAST_CONN, ServiceKeyOf, ServiceValue,
};

use crate::family::Family;
use crate::lb::Frontend;
use crate::maps::{LC_SOCK, LEAST_CONN};
use crate::nat::Tuple;
use crate::parse::{Packet, TCP_FIN, TCP_RST};

/// The scan's state, on the caller's stack, handed to each step.
#[repr(C)]
struct Scan<A> {
    addr: A,
    port: u16,
    proto: u8,
    count: u32,
    start: u32,
    best_slot: u32,
    best_load: i64,
}

/// The slot (1..=count) of the least loaded backend among up to `LC_SCAN`
/// slots from a random one. The steps run under `bpf_loop`: the verifier
/// checks the step once, where an unrolled loop's every exit would reach
/// the rest of the program in a state of its own (past its limit).
#[inline(always)]
pub fn pick<A: Family>(fe: &Frontend<A>) -> Option<u16> {
    let count = fe.count as u32;
    let mut scan = Scan {
        addr: fe.addr,
        port: fe.port,
        proto: fe.proto,
        count,
        start: unsafe { bpf_get_prandom_u32() },
        best_slot: 0,
        best_load: i64::MAX,
    };
    let steps = if count < LC_SCAN { count } else { LC_SCAN };
    unsafe {
        bpf_loop(
            steps,
            step::<A> as *mut c_void,
            &raw mut scan as *mut c_void,
            0,
        )
    };
    let slot = scan.best_slot;
    (slot >= 1 && slot <= count).then_some(slot as u16)
}

/// One slot of the scan: its backend's load, kept if the least so far.
extern "C" fn step<A: Family>(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `pick`'s `Scan<A>`, alive for the whole loop.
    let s = unsafe { &mut *(ctx as *mut Scan<A>) };
    let Some(slot) = s.start.wrapping_add(i as u32).checked_rem(s.count) else {
        return 1;
    };
    let slot = slot + 1;
    let key = ServiceKeyOf::new(s.addr, s.port, slot as u16, s.proto);
    let Some(v) = (unsafe { A::services().get(key) }) else {
        return 0;
    };
    let v: &ServiceValue = v;
    let load = LEAST_CONN.get(v.backend_id).map_or(0, |c| *c as i64);
    if load < s.best_load {
        s.best_load = load;
        s.best_slot = slot;
    }
    0
}

/// The flags a new flow's entries get: counted if its frontend is
/// least-conn. Computed without a branch: a branch here would send the
/// verifier down the whole new-flow path twice, past its limit. (UDP
/// entries carry the flag too; only TCP flows are counted, see
/// [`opened`].)
#[inline(always)]
pub fn flow_flags<A>(fe: &Frontend<A>) -> u16 {
    (fe.flags & SVC_FLAG_LEAST_CONN) >> LC_FLAG_SHIFT
}

const LC_FLAG_SHIFT: u32 = SVC_FLAG_LEAST_CONN.trailing_zeros() - CT_FLAG_COUNTED.trailing_zeros();
const _: () = assert!(SVC_FLAG_LEAST_CONN >> LC_FLAG_SHIFT == CT_FLAG_COUNTED);

/// Counts a new flow in for backend `id` if its entries were flagged
/// counted (`flags`: the flow's). Here and below, BPF subprograms: the
/// verifier walks each once, where inlined branches would multiply the
/// states of the paths around them (the IPv4 program is near its limit).
#[inline(never)]
pub fn opened(flags: u16, id: u32, proto: u8) {
    if flags & CT_FLAG_COUNTED != 0 && proto == IPPROTO_TCP {
        count_in(id);
    }
}

#[inline(always)]
fn count_in(id: u32) {
    if let Some(c) = LEAST_CONN.get_ptr_mut(id) {
        unsafe { crate::atomic::add(c, 1) };
    }
}

/// Counts a flow out of backend `id` (never below zero, but for a race).
#[inline(always)]
fn count_out(id: u32) {
    if let Some(c) = LEAST_CONN.get_ptr_mut(id)
        && unsafe { c.read_volatile() } != 0
    {
        unsafe { crate::atomic::add(c, u64::MAX) };
    }
}

/// A counted flow's packet from the client: a FIN or RST ends it.
#[inline(never)]
pub fn forward_segment<A: Family>(p: &Packet<A>) {
    if p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flow_ended(&CtKeyOf::new(p.saddr, p.daddr, p.sport, p.dport, p.proto));
    }
}

/// A counted flow's reply `p`, translated to `t` (frontend -> client): a
/// RST ends the flow (a FIN only half-closes it; the client's answers).
/// Its forward entry is `t` turned around.
#[inline(never)]
pub fn reply_segment<A: Family>(p: &Packet<A>, t: &Tuple<A>) {
    if p.proto == IPPROTO_TCP && p.tcp_flags & TCP_RST != 0 {
        flow_ended(&CtKeyOf::new(t.daddr, t.saddr, t.dport, t.sport, p.proto));
    }
}

/// Counts out the flow whose forward entry is `key`, once: the entry's
/// flag is cleared first.
#[inline(always)]
fn flow_ended<A: Family>(key: &CtKeyOf<A>) {
    let Some(v) = A::conntrack().get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value; a racing CPU may clear the same flag.
    let (flags, id) = unsafe { ((*v).flags, (*v).backend_id) };
    if flags & CT_FLAG_COUNTED == 0 {
        return;
    }
    unsafe { (*v).flags = flags & !CT_FLAG_COUNTED };
    count_out(id);
}

/// A socket given backend `id` at the socket hooks: counted until it is
/// released (a socket given another backend before counts that one out).
#[inline(always)]
pub fn sock_opened(cookie: u64, id: u32) {
    if let Some(old) = unsafe { LC_SOCK.get(cookie) } {
        count_out(*old);
    }
    if LC_SOCK.insert(cookie, id, 0).is_ok() {
        count_in(id);
    }
}

/// A socket released: its flow, if counted, counts out.
#[inline(always)]
pub fn sock_released(cookie: u64) {
    if let Some(id) = unsafe { LC_SOCK.get(cookie) }.copied() {
        let _ = LC_SOCK.remove(cookie);
        count_out(id);
    }
}
