//! Purging tracked flows whose backend is gone. LRU ageing alone would
//! keep a UDP flow (or a reused TCP tuple) pinned to a deleted pod until
//! the entry is evicted; kube-proxy clears such entries too.
//!
//! A backend counts as gone when its address appears in no endpoint of
//! any Service, whatever its conditions: a pod that is not ready or is
//! terminating keeps its established flows (graceful draining), a pod
//! removed from every EndpointSlice loses them at once.
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::BorrowedFd;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use lb_common::{
    CtKey, CtKey6, CtKeyOf, CtValue, CtValue6, CtValueOf, In6, MAP_CONNTRACK, MAP_CONNTRACK6,
    ipv4_from_net, ipv6_from_net,
};

use super::batch;
use super::maps::fd;
use crate::store::ObjectStore;

/// Both families' conntrack maps.
pub struct Conntrack {
    v4: HashMap<MapData, CtKey, CtValue>,
    v6: HashMap<MapData, CtKey6, CtValue6>,
}

/// An address as stored in a map, back to an `IpAddr`.
trait MapAddr: Copy {
    fn ip(self) -> IpAddr;
}

impl MapAddr for u32 {
    fn ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(ipv4_from_net(self)))
    }
}

impl MapAddr for In6 {
    fn ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(ipv6_from_net(self)))
    }
}

impl Conntrack {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            v4: super::maps::take(ebpf, MAP_CONNTRACK)?,
            v6: super::maps::take(ebpf, MAP_CONNTRACK6)?,
        })
    }

    /// Opens the maps a running (or stopped) agent pinned, for the CLI.
    pub fn from_pins(dir: &std::path::Path) -> Result<Self> {
        Ok(Self {
            v4: super::maps::open_pinned(dir, MAP_CONNTRACK)?,
            v6: super::maps::open_pinned(dir, MAP_CONNTRACK6)?,
        })
    }

    /// The entry of the packet `src -> dst` (`proto`), if tracked.
    pub fn lookup(&self, src: SocketAddr, dst: SocketAddr, proto: u8) -> Option<Flow> {
        let port = |p: u16| lb_common::port_to_net(p);
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let k = CtKeyOf::new(
                    lb_common::ipv4_to_net(s.octets()),
                    lb_common::ipv4_to_net(d.octets()),
                    port(src.port()),
                    port(dst.port()),
                    proto,
                );
                let v = self.v4.get(&k, 0).ok()?;
                Some(Flow::of(FlowKey::V4(k), &k, &v))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let k = CtKeyOf::new(
                    lb_common::ipv6_to_net(s.octets()),
                    lb_common::ipv6_to_net(d.octets()),
                    port(src.port()),
                    port(dst.port()),
                    proto,
                );
                let v = self.v6.get(&k, 0).ok()?;
                Some(Flow::of(FlowKey::V6(k), &k, &v))
            }
            _ => None,
        }
    }

    /// Every tracked flow entry, both families.
    pub fn flows(&self) -> Result<Vec<Flow>> {
        let mut out = Vec::new();
        batch::for_each(fd(&self.v4), 4096, |k: &CtKey, v: &CtValue| {
            out.push(Flow::of(FlowKey::V4(*k), k, v));
        })
        .with_context(|| format!("reading {MAP_CONNTRACK}"))?;
        batch::for_each(fd(&self.v6), 4096, |k: &CtKey6, v: &CtValue6| {
            out.push(Flow::of(FlowKey::V6(*k), k, v));
        })
        .with_context(|| format!("reading {MAP_CONNTRACK6}"))?;
        Ok(out)
    }

    /// Deletes these entries (those gone meanwhile are skipped); returns
    /// how many were deleted.
    pub fn delete(&mut self, flows: &[Flow]) -> Result<usize> {
        let mut n = 0;
        for f in flows {
            let r = match f.key {
                FlowKey::V4(k) => self.v4.remove(&k),
                FlowKey::V6(k) => self.v6.remove(&k),
            };
            match r {
                Ok(()) => n += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("deleting a conntrack entry"),
            }
        }
        Ok(n)
    }

    /// Deletes every flow whose backend is not in `present` or whose
    /// frontend id is not in `frontends`; returns how many entries went.
    pub fn purge(&mut self, present: &HashSet<IpAddr>, frontends: &HashSet<u32>) -> Result<usize> {
        Ok(purge_map(&mut self.v4, MAP_CONNTRACK, present, frontends)?
            + purge_map(&mut self.v6, MAP_CONNTRACK6, present, frontends)?)
    }
}

/// A conntrack entry's key in its family's map.
#[derive(Clone, Copy, Debug)]
pub enum FlowKey {
    V4(CtKey),
    V6(CtKey6),
}

/// One conntrack entry, as people read it.
#[derive(Clone, Debug)]
pub struct Flow {
    pub key: FlowKey,
    /// A reverse entry (backend -> client), else a forward one (client
    /// -> frontend).
    pub reverse: bool,
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Forward: the backend the flow goes to; reverse: the frontend the
    /// replies are translated back to.
    pub to: SocketAddr,
    pub svc_id: u32,
    pub flags: u16,
}

impl Flow {
    fn of<A: MapAddr>(key: FlowKey, k: &CtKeyOf<A>, v: &CtValueOf<A>) -> Flow {
        let sock = |a: A, p: u16| SocketAddr::new(a.ip(), u16::from_be(p));
        Flow {
            key,
            reverse: v.is_reverse(),
            proto: k.proto,
            src: sock(k.saddr, k.sport),
            dst: sock(k.daddr, k.dport),
            to: sock(v.addr, v.port),
            svc_id: v.svc_id,
            flags: v.flags,
        }
    }

    /// Whether `addr` (and `port`, when given) is any of the flow's ends.
    pub fn touches(&self, addr: Option<IpAddr>, port: Option<u16>) -> bool {
        [self.src, self.dst, self.to]
            .iter()
            .any(|s| addr.is_none_or(|a| s.ip() == a) && port.is_none_or(|p| s.port() == p))
    }

    /// `snat`, `external`, `dsr`, comma-separated ("-" for none).
    pub fn flag_names(&self) -> String {
        let names: Vec<&str> = [
            (lb_common::CT_FLAG_SNAT, "snat"),
            (lb_common::CT_FLAG_EXTERNAL, "external"),
            (lb_common::CT_FLAG_DSR, "dsr"),
        ]
        .into_iter()
        .filter(|(f, _)| self.flags & f != 0)
        .map(|(_, n)| n)
        .collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join(",")
        }
    }
}

fn purge_map<A>(
    map: &mut HashMap<MapData, CtKeyOf<A>, CtValueOf<A>>,
    name: &str,
    present: &HashSet<IpAddr>,
    frontends: &HashSet<u32>,
) -> Result<usize>
where
    A: MapAddr + PartialEq,
    CtKeyOf<A>: aya::Pod,
    CtValueOf<A>: aya::Pod,
{
    let (mut gone, mut forward) = (Vec::new(), Vec::new());
    // Batched reads: a full table is half a million entries, and one
    // lookup per entry would hold the sync loop for seconds.
    batch::for_each(fd(map), 4096, |k: &CtKeyOf<A>, v: &CtValueOf<A>| {
        // Forward entries hold the backend in the value, reverse
        // entries in the key (its source).
        let backend = if v.is_reverse() { k.saddr } else { v.addr };
        if !present.contains(&backend.ip()) || !frontends.contains(&v.svc_id) {
            if v.is_reverse() {
                gone.push(*k);
            } else {
                forward.push((*k, *v));
            }
        }
    })
    .with_context(|| format!("reading {name}"))?;
    // A forward entry's key (client -> frontend) outlives its flow: a
    // client reusing its port for a new connection while the walk runs
    // gets a new entry under the same key, to a live backend, which a
    // delete by key would take from it (its next segment would then be
    // placed afresh, on another pod: a reset). So each is taken (read and
    // deleted in one step) and put back unless it is still the flow the
    // walk saw: one syscall for a stale entry, and no moment between a
    // check and a delete. A reverse entry's key names the gone backend:
    // no new flow takes it.
    let mut n = 0;
    for (k, v) in forward {
        match take::<_, CtValueOf<A>>(fd(map), &k) {
            Ok(Some(now)) if now == v => n += 1,
            // A new flow under the old key: back, unless the datapath
            // has already made it anew.
            Ok(Some(now)) => match map.insert(k, now, BPF_NOEXIST) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("restoring a flow in {name}")),
            },
            Ok(None) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting from {name}")),
        }
    }
    let mut rest = &gone[..];
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(4096)];
        match batch::delete(fd(map), chunk) {
            Ok(()) => rest = &rest[chunk.len()..],
            // Evicted since we read it: fine, go on past it.
            Err(s) if s.error.raw_os_error() == Some(libc::ENOENT) => rest = &rest[s.done + 1..],
            Err(s) => return Err(s.error).with_context(|| format!("deleting from {name}")),
        }
    }
    Ok(n + gone.len())
}

/// `BPF_NOEXIST`: an update that only creates.
const BPF_NOEXIST: u64 = 1;

/// Deletes `key`'s entry and returns what it held (None: no entry),
/// atomically (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, hash maps since Linux
/// 5.14; aya 0.14 has it for queues and stacks only).
fn take<K: aya::Pod, V: aya::Pod>(map: BorrowedFd<'_>, key: &K) -> std::io::Result<Option<V>> {
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut attr = batch::ElemAttr::new(map, (key as *const K).cast(), value.as_mut_ptr().cast());
    // SAFETY: the key and value buffers outlive the call and have the
    // map's key and value sizes (its Pod types).
    match unsafe { batch::sys_bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) } {
        // SAFETY: the kernel wrote a whole value; Pod types take any bytes.
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every endpoint address in `store`, in any condition.
pub fn endpoint_addresses(store: &ObjectStore) -> HashSet<IpAddr> {
    let slices = store
        .slices
        .values()
        .flat_map(|s| s.addresses.iter().map(|a| a.addr));
    let legacy = store
        .endpoints
        .values()
        .flat_map(|e| e.subsets.iter())
        .flat_map(|s| s.ready.iter().chain(s.not_ready.iter()).copied());
    slices.chain(legacy).collect()
}
