//! Atomic adds on map memory (round-robin turns, least-conn counts): the
//! BPF target has no `core::sync::atomic` read-modify-write types, and the
//! datapath is built for every BPF CPU version, so only the non-fetching
//! add (`BPF_ATOMIC` add, v1) is used. A host check of the crate uses
//! `AtomicU64` instead.

/// Adds `v` to the u64 at `p`, atomically (wrapping: `u64::MAX` takes one).
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn add(p: *mut u64, v: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn add(p: *mut u64, v: u64) {
    use core::sync::atomic::{AtomicU64, Ordering};
    unsafe { AtomicU64::from_ptr(p) }.fetch_add(v, Ordering::Relaxed);
}
