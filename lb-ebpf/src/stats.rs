use lb_common::Stat;

use crate::maps::STATS;

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(v) = STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *v += 1 };
    }
}
