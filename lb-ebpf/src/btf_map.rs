//! Pinned maps declared with BTF, so that `bpftool map dump` prints every
//! key and value by field name.
//!
//! A BTF map is a struct in the `.maps` section whose members encode the
//! map's attributes in their types (libbpf's `__uint(name, n)` is a
//! pointer to an array of `n` ints, `__type(name, T)` a pointer to `T`);
//! the loader reads them from the object's BTF and creates the map with
//! the key's and value's type ids. aya-ebpf 0.2.1 has BTF maps but no
//! `pinning` member, and the agent's restarts rely on maps pinned by
//! name; the aya releases that add it need a newer rustc. These are the
//! same definitions with `pinning` (aya-obj reads it), and the four map
//! kinds the pinned maps use, with the methods the datapath calls.
use core::{borrow::Borrow, ffi::c_void, ptr};

use aya_ebpf::{
    bindings::bpf_map_type::{
        BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE, BPF_MAP_TYPE_LRU_HASH,
        BPF_MAP_TYPE_PERCPU_ARRAY,
    },
    helpers::{bpf_map_delete_elem, bpf_map_lookup_elem, bpf_map_update_elem},
    maps::lpm_trie::Key as LpmKey,
};

/// libbpf's `LIBBPF_PIN_BY_NAME`: pinned under the loader's pin path by
/// the map's name, and reused from there when a pin exists.
const PIN_BY_NAME: usize = 1;
/// `BPF_F_NO_PREALLOC`, which the kernel requires of LPM tries.
const NO_PREALLOC: usize = 1;

macro_rules! btf_map {
    ($(#[$doc:meta])* $name:ident<$($g:ident),+>, key: $key:ty, value: $v:ident, kind: $kind:ident, flags: $flags:expr) => {
        $(#[$doc])*
        // repr(C): the members' order is the BTF definition's.
        #[repr(C)]
        pub struct $name<$($g),+, const MAX: usize> {
            r#type: *const [i32; $kind as usize],
            key: *const $key,
            value: *const $v,
            max_entries: *const [i32; MAX],
            map_flags: *const [i32; $flags],
            pinning: *const [i32; PIN_BY_NAME],
        }

        // The members are never dereferenced: they only carry types.
        unsafe impl<$($g),+, const MAX: usize> Sync for $name<$($g),+, MAX> {}

        impl<$($g),+, const MAX: usize> $name<$($g),+, MAX> {
            pub const fn new() -> Self {
                Self {
                    r#type: ptr::null(),
                    key: ptr::null(),
                    value: ptr::null(),
                    max_entries: ptr::null(),
                    map_flags: ptr::null(),
                    pinning: ptr::null(),
                }
            }

            /// The map as the helpers take it (relocated by the loader).
            #[inline(always)]
            fn map(&self) -> *mut c_void {
                ptr::from_ref(self).cast_mut().cast()
            }

            #[inline(always)]
            fn lookup(&self, key: &$key) -> Option<*mut $v> {
                let p = unsafe { bpf_map_lookup_elem(self.map(), ptr::from_ref(key).cast()) };
                (!p.is_null()).then_some(p.cast())
            }
        }
    };
}

macro_rules! hash_methods {
    ($name:ident) => {
        // One set of methods for both hash kinds: not every map uses all.
        #[allow(dead_code)]
        impl<K, V, const MAX: usize> $name<K, V, MAX> {
            /// # Safety
            /// An entry can be replaced or removed (and its memory reused)
            /// while the reference lives, as with aya-ebpf's hash maps.
            #[inline(always)]
            pub unsafe fn get(&self, key: impl Borrow<K>) -> Option<&V> {
                self.lookup(key.borrow()).map(|p| unsafe { &*p })
            }

            #[inline(always)]
            pub fn get_ptr_mut(&self, key: impl Borrow<K>) -> Option<*mut V> {
                self.lookup(key.borrow())
            }

            #[inline(always)]
            pub fn insert(
                &self,
                key: impl Borrow<K>,
                value: impl Borrow<V>,
                flags: u64,
            ) -> Result<(), i32> {
                let (k, v) = (ptr::from_ref(key.borrow()), ptr::from_ref(value.borrow()));
                match unsafe { bpf_map_update_elem(self.map(), k.cast(), v.cast(), flags) } {
                    0 => Ok(()),
                    e => Err(e as i32),
                }
            }

            #[inline(always)]
            pub fn remove(&self, key: impl Borrow<K>) -> Result<(), i32> {
                let k = ptr::from_ref(key.borrow());
                match unsafe { bpf_map_delete_elem(self.map(), k.cast()) } {
                    0 => Ok(()),
                    e => Err(e as i32),
                }
            }
        }
    };
}

macro_rules! array_methods {
    ($name:ident) => {
        #[allow(dead_code)]
        impl<V, const MAX: usize> $name<V, MAX> {
            #[inline(always)]
            pub fn get(&self, index: u32) -> Option<&V> {
                self.lookup(&index).map(|p| unsafe { &*p })
            }

            #[inline(always)]
            pub fn get_ptr_mut(&self, index: u32) -> Option<*mut V> {
                self.lookup(&index)
            }
        }
    };
}

btf_map!(HashMap<K, V>, key: K, value: V, kind: BPF_MAP_TYPE_HASH, flags: 0);
btf_map!(LruHashMap<K, V>, key: K, value: V, kind: BPF_MAP_TYPE_LRU_HASH, flags: 0);
btf_map!(Array<V>, key: u32, value: V, kind: BPF_MAP_TYPE_ARRAY, flags: 0);
btf_map!(
    /// One value per CPU and index.
    PerCpuArray<V>, key: u32, value: V, kind: BPF_MAP_TYPE_PERCPU_ARRAY, flags: 0
);
btf_map!(LpmTrie<K, V>, key: LpmKey<K>, value: V, kind: BPF_MAP_TYPE_LPM_TRIE, flags: NO_PREALLOC);

hash_methods!(HashMap);
hash_methods!(LruHashMap);
array_methods!(Array);
array_methods!(PerCpuArray);

impl<K, V, const MAX: usize> LpmTrie<K, V, MAX> {
    #[inline(always)]
    pub fn get(&self, key: impl Borrow<LpmKey<K>>) -> Option<&V> {
        self.lookup(key.borrow()).map(|p| unsafe { &*p })
    }
}
