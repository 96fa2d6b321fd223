//! cgroup socket hooks for node-originated traffic: translation happens
//! once, when the socket is pointed at a VIP (connect, or each sendmsg of
//! an unconnected UDP socket); replies then need no per-packet work.
//! recvmsg/getpeername show the application the VIP it asked for.
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use lb_common::{IPPROTO_UDP, SVC_FLAG_LOCAL_ONLY, SockKey, SockValue, Stat};

use crate::{lb, maps::SOCK_REVNAT, stats::count};

const AF_INET: u32 = 2;
const ALLOW: i32 = 1;
/// The syscall fails with EPERM: a VIP port without endpoints.
const REFUSE: i32 = 0;
const DIR_FORWARD: u8 = 0;
const DIR_REVERSE: u8 = 1;

#[inline(always)]
fn sock_key(cookie: u64, addr: u32, port: u16, dir: u8) -> SockKey {
    SockKey {
        cookie,
        addr,
        port,
        dir,
        _pad: 0,
    }
}

/// Translates a VIP destination to a backend. `remember`: keep the choice
/// for the socket's later sends (unconnected UDP, through sendmsg). A
/// connect is made once per socket, so it records only the reverse entry
/// (getpeername, recvmsg): half the map writes and half the entries.
#[inline(always)]
fn translate_forward(ctx: &SockAddrContext, remember: bool) -> i32 {
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
    // NodePorts too: the node (or a pod) reaching a node address's
    // NodePort is translated here, as kube-proxy serves it locally.
    let Some(fe) = lb::lookup(vip, vport, proto) else {
        return ALLOW;
    };
    if fe.count == 0 && fe.flags & SVC_FLAG_LOCAL_ONLY != 0 {
        // externalTrafficPolicy Local without an endpoint here: not
        // refused at the socket; the packet goes its way (tc drops it if
        // it is to this node).
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // An unconnected UDP socket keeps talking to the backend it was given.
    // Only UDP sends (sendmsg4 is a UDP hook) leave such a choice: a TCP
    // connect need not look.
    let fwd = sock_key(cookie, vip, vport, DIR_FORWARD);
    let earlier = if proto == IPPROTO_UDP {
        unsafe { SOCK_REVNAT.get(fwd) }
    } else {
        None
    };
    let (addr, port) = match earlier {
        Some(v) => (v.addr, v.port),
        None => {
            let Some((_, be)) = lb::select_backend(&fe) else {
                count(Stat::SockReject);
                return REFUSE;
            };
            let to_be = SockValue {
                addr: be.addr,
                port: be.port,
                _pad: 0,
            };
            let to_vip = SockValue {
                addr: vip,
                port: vport,
                _pad: 0,
            };
            let rev = sock_key(cookie, be.addr, be.port, DIR_REVERSE);
            if SOCK_REVNAT.insert(rev, to_vip, 0).is_err()
                || (remember && SOCK_REVNAT.insert(fwd, to_be, 0).is_err())
            {
                count(Stat::DropInternal);
                return REFUSE;
            }
            (be.addr, be.port)
        }
    };
    unsafe {
        (*sa).user_ip4 = addr;
        (*sa).user_port = port as u32;
    }
    count(Stat::SockTranslate);
    ALLOW
}

#[inline(always)]
fn translate_reverse(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (family, addr, port) =
        unsafe { ((*sa).user_family, (*sa).user_ip4, (*sa).user_port as u16) };
    if family != AF_INET {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(v) = unsafe { SOCK_REVNAT.get(sock_key(cookie, addr, port, DIR_REVERSE)) } {
        unsafe {
            (*sa).user_ip4 = v.addr;
            (*sa).user_port = v.port as u32;
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn flb_connect4(ctx: SockAddrContext) -> i32 {
    translate_forward(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn flb_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate_forward(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn flb_recvmsg4(ctx: SockAddrContext) -> i32 {
    translate_reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn flb_getpeername4(ctx: SockAddrContext) -> i32 {
    translate_reverse(&ctx)
}
