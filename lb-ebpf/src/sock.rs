//! cgroup socket hooks for node-originated traffic: translation happens
//! once, when the socket is pointed at a VIP (connect, or each sendmsg of
//! an unconnected UDP socket); replies then need no per-packet work.
//! recvmsg/getpeername show the application the VIP it asked for. IPv6
//! sockets are served from the IPv6 maps, and from the IPv4 ones when they
//! talk to a v4-mapped address (`::ffff:10.0.1.175`, a dual-stack socket
//! reaching an IPv4 Service).
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_socket_cookie, generated::bpf_get_netns_cookie},
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use lb_common::{
    AFFINITY_BY_NETNS, IPPROTO_UDP, In6, SVC_FLAG_LEAST_CONN, SVC_FLAG_LOCAL_ONLY, SockKey,
    SockKey6, SockValue, SockValue6, Stat,
};

use crate::{
    family::Family,
    lb, least_conn,
    maps::{SOCK_REVNAT, SOCK_REVNAT6, SockRevnatMap},
    sched,
    stats::count,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const ALLOW: i32 = 1;
/// The syscall fails with EPERM: a VIP port without endpoints.
const REFUSE: i32 = 0;
const DIR_FORWARD: u8 = 0;
const DIR_REVERSE: u8 = 1;

/// A family's socket translation map and its entries.
trait SockFamily: Family {
    type Key;
    type Value: Copy;
    fn revnat() -> &'static SockRevnatMap<Self::Key, Self::Value>;
    fn key(cookie: u64, addr: Self, port: u16, dir: u8) -> Self::Key;
    fn value(addr: Self, port: u16) -> Self::Value;
    fn parts(v: &Self::Value) -> (Self, u16);
}

impl SockFamily for u32 {
    type Key = SockKey;
    type Value = SockValue;
    #[inline(always)]
    fn revnat() -> &'static SockRevnatMap<SockKey, SockValue> {
        &SOCK_REVNAT
    }
    #[inline(always)]
    fn key(cookie: u64, addr: u32, port: u16, dir: u8) -> SockKey {
        SockKey {
            cookie,
            addr,
            port,
            dir,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn value(addr: u32, port: u16) -> SockValue {
        SockValue {
            addr,
            port,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn parts(v: &SockValue) -> (u32, u16) {
        (v.addr, v.port)
    }
}

impl SockFamily for In6 {
    type Key = SockKey6;
    type Value = SockValue6;
    #[inline(always)]
    fn revnat() -> &'static SockRevnatMap<SockKey6, SockValue6> {
        &SOCK_REVNAT6
    }
    #[inline(always)]
    fn key(cookie: u64, addr: In6, port: u16, dir: u8) -> SockKey6 {
        SockKey6 {
            cookie,
            addr,
            port,
            dir,
            _pad: 0,
            _pad1: 0,
        }
    }
    #[inline(always)]
    fn value(addr: In6, port: u16) -> SockValue6 {
        SockValue6 {
            addr,
            port,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn parts(v: &SockValue6) -> (In6, u16) {
        (v.addr, v.port)
    }
}

/// What a connect or send to `vip:vport` becomes.
enum Forward<A> {
    /// Not a frontend (or not one refused here): untouched.
    Untouched,
    To(A, u16),
    Refuse,
}

/// Translates a VIP destination to a backend. `remember`: keep the choice
/// for the socket's later sends (unconnected UDP, through sendmsg). A
/// connect is made once per socket, so it records only the reverse entry
/// (getpeername, recvmsg): half the map writes and half the entries.
#[inline(always)]
fn forward<A: SockFamily>(
    ctx: &SockAddrContext,
    cookie: u64,
    vip: A,
    vport: u16,
    proto: u8,
    remember: bool,
) -> Forward<A> {
    // NodePorts too: the node (or a pod) reaching a node address's
    // NodePort is translated here, as kube-proxy serves it locally.
    let Some(fe) = lb::lookup(vip, vport, proto) else {
        return Forward::Untouched;
    };
    if fe.count == 0 && fe.flags & SVC_FLAG_LOCAL_ONLY != 0 {
        // externalTrafficPolicy Local without an endpoint here: not
        // refused at the socket; the packet goes its way (tc drops it if
        // it is to this node).
        return Forward::Untouched;
    }
    let map = A::revnat();
    // An unconnected UDP socket keeps talking to the backend it was given.
    // Only UDP sends (sendmsg is a UDP hook) leave such a choice: a TCP
    // connect need not look.
    let fwd = A::key(cookie, vip, vport, DIR_FORWARD);
    if proto == IPPROTO_UDP
        && let Some(v) = unsafe { map.get(&fwd) }
    {
        let (addr, port) = A::parts(v);
        return Forward::To(addr, port);
    }
    let origin = SockOrigin { ctx, cookie, vip };
    let Some((id, be)) = lb::select_backend(&fe, &origin) else {
        count(Stat::SockReject);
        return Forward::Refuse;
    };
    let rev = A::key(cookie, be.addr, be.port, DIR_REVERSE);
    if map.insert(&rev, A::value(vip, vport), 0).is_err()
        || (remember && map.insert(&fwd, A::value(be.addr, be.port), 0).is_err())
    {
        count(Stat::DropInternal);
        return Forward::Refuse;
    }
    if fe.flags & SVC_FLAG_LEAST_CONN != 0 {
        least_conn::sock_opened(cookie, id);
    }
    Forward::To(be.addr, be.port)
}

/// A socket's new flow, as the schedulers see it: connect() has no source
/// address yet, so its client (session affinity, source hashing) is the
/// socket's network namespace (a pod), and Maglev hashes the socket.
struct SockOrigin<'a, A> {
    ctx: &'a SockAddrContext,
    cookie: u64,
    vip: A,
}

impl<A: Family> lb::Origin for SockOrigin<'_, A> {
    #[inline(always)]
    fn client(&self) -> lb::Client {
        let ns = unsafe { bpf_get_netns_cookie(self.ctx.as_ptr()) };
        lb::Client {
            scope: AFFINITY_BY_NETNS,
            id: [ns as u32, (ns >> 32) as u32, 0, 0],
        }
    }
    #[inline(always)]
    fn flow_hash(&self) -> u32 {
        let c = self.cookie;
        sched::hash::words(&[c as u32, (c >> 32) as u32, 0, 0])
    }
    #[inline(always)]
    fn dst_hash(&self) -> u32 {
        sched::hash::words(&self.vip.mapped().addr)
    }
}

/// The VIP a socket's peer `addr:port` stands for, if it was translated.
#[inline(always)]
fn reverse<A: SockFamily>(cookie: u64, addr: A, port: u16) -> Option<(A, u16)> {
    unsafe { A::revnat().get(A::key(cookie, addr, port, DIR_REVERSE)) }.map(A::parts)
}

/// v4-mapped `mapped` with its IPv4 address replaced by `v4`.
#[inline(always)]
fn remapped(mapped: In6, v4: u32) -> In6 {
    [mapped[0], mapped[1], mapped[2], v4]
}

/// The IPv4 address inside a v4-mapped IPv6 one.
#[inline(always)]
fn unmapped(a: &In6) -> Option<u32> {
    (a[0] == 0 && a[1] == 0 && a[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])).then_some(a[3])
}

/// What a hook returns for a forward translation.
#[inline(always)]
fn verdict<A>(o: &Forward<A>) -> i32 {
    match o {
        Forward::Refuse => REFUSE,
        Forward::Untouched => ALLOW,
        Forward::To(..) => {
            count(Stat::SockTranslate);
            ALLOW
        }
    }
}

// Separate IPv4 and IPv6 bodies: the verifier refuses a v4 hook that so
// much as reads `user_ip6`, reachable or not.

#[inline(always)]
fn translate_forward4(ctx: &SockAddrContext, remember: bool) -> i32 {
    let sa = ctx.sock_addr;
    let (family, vip, vport, proto) = unsafe {
        (
            (*sa).user_family,
            (*sa).user_ip4,
            (*sa).user_port as u16,
            (*sa).protocol as u8,
        )
    };
    if family != AF_INET {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let to = forward(ctx, cookie, vip, vport, proto, remember);
    if let Forward::To(addr, port) = to {
        unsafe {
            (*sa).user_ip4 = addr;
            (*sa).user_port = port as u32;
        }
    }
    verdict(&to)
}

#[inline(always)]
fn translate_forward6(ctx: &SockAddrContext, remember: bool) -> i32 {
    let sa = ctx.sock_addr;
    let (family, vip, vport, proto) = unsafe {
        (
            (*sa).user_family,
            (*sa).user_ip6,
            (*sa).user_port as u16,
            (*sa).protocol as u8,
        )
    };
    if family != AF_INET6 {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let to = match unmapped(&vip) {
        Some(v4) => match forward(ctx, cookie, v4, vport, proto, remember) {
            Forward::To(addr, port) => Forward::To(remapped(vip, addr), port),
            Forward::Refuse => Forward::Refuse,
            Forward::Untouched => Forward::Untouched,
        },
        None => forward(ctx, cookie, vip, vport, proto, remember),
    };
    if let Forward::To(addr, port) = to {
        unsafe {
            (*sa).user_ip6 = addr;
            (*sa).user_port = port as u32;
        }
    }
    verdict(&to)
}

#[inline(always)]
fn translate_reverse4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (family, addr, port) =
        unsafe { ((*sa).user_family, (*sa).user_ip4, (*sa).user_port as u16) };
    if family != AF_INET {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some((addr, port)) = reverse(cookie, addr, port) {
        unsafe {
            (*sa).user_ip4 = addr;
            (*sa).user_port = port as u32;
        }
    }
    ALLOW
}

#[inline(always)]
fn translate_reverse6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (family, addr, port) =
        unsafe { ((*sa).user_family, (*sa).user_ip6, (*sa).user_port as u16) };
    if family != AF_INET6 {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let vip = match unmapped(&addr) {
        Some(v4) => reverse(cookie, v4, port).map(|(a, p)| (remapped(addr, a), p)),
        None => reverse(cookie, addr, port),
    };
    if let Some((addr, port)) = vip {
        unsafe {
            (*sa).user_ip6 = addr;
            (*sa).user_port = port as u32;
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn flb_connect4(ctx: SockAddrContext) -> i32 {
    translate_forward4(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn flb_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate_forward4(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn flb_recvmsg4(ctx: SockAddrContext) -> i32 {
    translate_reverse4(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn flb_getpeername4(ctx: SockAddrContext) -> i32 {
    translate_reverse4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn flb_connect6(ctx: SockAddrContext) -> i32 {
    translate_forward6(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn flb_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate_forward6(&ctx, true)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn flb_recvmsg6(ctx: SockAddrContext) -> i32 {
    translate_reverse6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn flb_getpeername6(ctx: SockAddrContext) -> i32 {
    translate_reverse6(&ctx)
}

/// A socket released: a least-conn flow given at the hooks counts out.
/// One lookup per released socket of the cgroup, whatever it talked to.
#[cgroup_sock(sock_release)]
pub fn flb_sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    least_conn::sock_released(cookie);
    ALLOW
}
