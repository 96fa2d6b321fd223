use lb_common::Stat;

use crate::maps::{STATS, SVC_STATS};

#[inline(always)]
pub fn count(stat: Stat) {
    count_slot(stat as u32);
}

#[inline(always)]
pub fn count_slot(slot: u32) {
    if let Some(v) = STATS.get_ptr_mut(slot) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *v += 1 };
    }
}

/// Counts a packet of `len` bytes translated for frontend `svc_id`. A
/// BPF subprogram: called on every translated packet, from several paths.
#[inline(never)]
pub fn service(svc_id: u32, len: u32) {
    if let Some(c) = SVC_STATS.get_ptr_mut(svc_id) {
        // Per-CPU slot: no other writer.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}
