//! Batched map access: `BPF_MAP_{LOOKUP,UPDATE,DELETE}_BATCH` (Linux
//! 5.6), which aya 0.14 does not wrap. A first sync writes one entry per
//! backend and slot, 220,000 at 10,000 Services, and a conntrack purge
//! reads every tracked flow: one syscall per chunk instead of two per
//! entry.
//!
//! The kernel applies a batch's elements in order and stops at the first
//! that fails, reporting how many it applied: a batch leaves the maps in
//! exactly the states the same writes one by one would, and a failure
//! names its element.
//!
//! `sys_bpf` is the raw syscall, shared with the single-element commands
//! aya 0.14 does not wrap either (conntrack's lookup-and-delete, the key
//! walk of LPM tries).
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`; the kernel zero-extends the
/// rest of the union up to its own size.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch that stopped early.
#[derive(Debug)]
pub struct Stopped {
    /// How many elements, from the first, were applied.
    pub done: usize,
    pub error: io::Error,
}

impl Stopped {
    /// The kernel refused the batch as a whole (no batch support for this
    /// map type or kernel): the caller writes one by one instead.
    pub fn unsupported(&self) -> bool {
        self.done == 0
            && matches!(
                self.error.raw_os_error(),
                Some(libc::EINVAL | libc::ENOTSUP | libc::ENOSYS)
            )
    }
}

/// The `bpf(2)` syscall with `attr` (a member of `union bpf_attr`; the
/// kernel zero-extends it to its own size).
///
/// # Safety
/// Every pointer `attr` holds must point at buffers of the sizes `cmd`
/// reads and writes, alive for the call.
pub(crate) unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: upheld by the caller.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The `map_elem` member of `union bpf_attr`, which the one-element
/// commands take (`value` is `next_key` for `BPF_MAP_GET_NEXT_KEY`).
#[repr(C)]
pub(crate) struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl ElemAttr {
    /// `key` null where the command allows it (the first key of a walk).
    pub(crate) fn new(map: BorrowedFd<'_>, key: *const u8, value: *mut u8) -> Self {
        ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key as u64,
            value: value as u64,
            flags: 0,
        }
    }
}

/// Runs `cmd` on `len` elements; `Err` carries how many were done.
fn call(cmd: libc::c_long, attr: &mut BatchAttr, len: usize) -> Result<(), Stopped> {
    attr.count = u32::try_from(len).expect("batch length fits u32");
    // SAFETY: `attr` points at buffers for `len` keys (and values) that
    // outlive the call; the kernel writes `attr.count` and the out token.
    unsafe { sys_bpf(cmd, attr) }.map_err(|error| Stopped {
        done: (attr.count as usize).min(len),
        error,
    })
}

/// Reads a hash map `chunk` entries per syscall into `keys` and `values`
/// (room for `chunk` of each), calling `got(n)` after each with how many
/// it holds. `Err` as for a batch (`unsupported()` on the first call when
/// the kernel has none for this map).
///
/// # Safety
/// `keys` and `values` must hold `chunk` of the map's keys and values.
unsafe fn walk(
    map: BorrowedFd<'_>,
    keys: *mut u8,
    values: *mut u8,
    chunk: usize,
    mut got: impl FnMut(usize),
) -> Result<(), Stopped> {
    // Hash maps resume at a bucket index; 8 bytes is room for any token.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys as u64,
            values: values as u64,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        match call(BPF_MAP_LOOKUP_BATCH, &mut attr, chunk) {
            Ok(()) => got(chunk.min(attr.count as usize)),
            // The walk is over.
            Err(s) if s.error.raw_os_error() == Some(libc::ENOENT) => {
                got(s.done);
                return Ok(());
            }
            Err(s) => return Err(s),
        }
        token_in = token_out;
        first = false;
    }
}

/// Calls `each` on every entry of a hash map, `chunk` entries per
/// syscall. Entries added or removed meanwhile may or may not be seen,
/// as with any walk of a live map.
pub fn for_each<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    chunk: usize,
    mut each: impl FnMut(&K, &V),
) -> io::Result<()> {
    // SAFETY: Pod types are plain data, valid when zeroed.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
    let (k, v) = (keys.as_mut_ptr(), values.as_mut_ptr());
    // SAFETY: room for `chunk` keys and values; each chunk is read
    // between two syscalls, the first `n` entries the kernel wrote.
    unsafe {
        walk(map, k.cast(), v.cast(), chunk, |n| {
            for i in 0..n {
                each(&*k.add(i), &*v.add(i));
            }
        })
    }
    .map_err(|s| s.error)
}

/// How many entries a hash map holds, read `chunk` at a time into
/// buffers of the map's key and value sizes (per-CPU maps' values are
/// not supported: their batches carry a value per CPU). `Err` as for a
/// batch: `unsupported()` when the kernel has no batch for this map.
pub fn count(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    chunk: usize,
) -> Result<usize, Stopped> {
    let mut keys = vec![0u8; key_size * chunk];
    let mut values = vec![0u8; value_size * chunk];
    let mut n = 0;
    // SAFETY: room for `chunk` keys and values of these sizes.
    unsafe {
        walk(map, keys.as_mut_ptr(), values.as_mut_ptr(), chunk, |got| {
            n += got
        })
    }?;
    Ok(n)
}

/// Writes `keys[i] -> values[i]` in order (flags `BPF_ANY`).
pub fn update<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), Stopped> {
    assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    call(BPF_MAP_UPDATE_BATCH, &mut attr, keys.len())
}

/// Deletes `keys` in order; a key not in the map stops the batch
/// (`ENOENT`), as a single delete would fail.
pub fn delete<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> Result<(), Stopped> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    call(BPF_MAP_DELETE_BATCH, &mut attr, keys.len())
}
