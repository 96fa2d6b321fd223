//! Service lookup and backend selection.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{Backend, CtValue, ServiceKey, ServiceValue};

use crate::maps::{BACKENDS, SERVICES};

/// A frontend's master entry, as found in the services map.
#[derive(Clone, Copy)]
pub struct Frontend {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub count: u16,
    pub svc_id: u32,
}

/// Looks up the master entry of VIP:port/proto.
#[inline(always)]
pub fn lookup_frontend(addr: u32, port: u16, proto: u8) -> Option<Frontend> {
    let v: &ServiceValue = unsafe { SERVICES.get(ServiceKey::new(addr, port, 0, proto)) }?;
    Some(Frontend {
        addr,
        port,
        proto,
        count: v.count,
        svc_id: v.svc_id,
    })
}

/// True while the backend a tracked flow was given still exists for the
/// same frontend. Checked on SYNs only: a new connection that reuses a
/// closed flow's tuple must not follow it to a backend that is gone.
#[inline(always)]
pub fn still_serves(fe: &Frontend, ct: &CtValue) -> bool {
    ct.svc_id == fe.svc_id
        && unsafe { BACKENDS.get(ct.backend_id) }
            .is_some_and(|b| b.addr == ct.addr && b.port == ct.port)
}

/// Picks one backend with equal probability, as kube-proxy's `statistic
/// --mode random` chains do. Returns the backend id and its address.
#[inline(always)]
pub fn select_backend(fe: &Frontend) -> Option<(u32, Backend)> {
    if fe.count == 0 {
        return None;
    }
    let slot = (unsafe { bpf_get_prandom_u32() } % fe.count as u32) as u16 + 1;
    let v: &ServiceValue =
        unsafe { SERVICES.get(ServiceKey::new(fe.addr, fe.port, slot, fe.proto)) }?;
    let id = v.backend_id;
    let be: &Backend = unsafe { BACKENDS.get(id) }?;
    Some((id, *be))
}
