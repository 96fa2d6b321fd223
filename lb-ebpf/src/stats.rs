use lb_common::Stat;

use crate::maps::STATS;

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
