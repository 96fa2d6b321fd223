//! Purging tracked flows whose backend is gone. LRU ageing alone would
//! keep a UDP flow (or a reused TCP tuple) pinned to a deleted pod until
//! the entry is evicted; kube-proxy clears such entries too.
//!
//! A backend counts as gone when its address appears in no endpoint of
//! any Service, whatever its conditions: a pod that is not ready or is
//! terminating keeps its established flows (graceful draining), a pod
//! removed from every EndpointSlice loses them at once.
use std::collections::HashSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use lb_common::{CtKey, CtValue, MAP_CONNTRACK, ipv4_from_net};

use super::batch;
use super::maps::fd;
use crate::store::ObjectStore;

pub struct Conntrack {
    map: HashMap<MapData, CtKey, CtValue>,
}

impl Conntrack {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            map: super::maps::take(ebpf, MAP_CONNTRACK)?,
        })
    }

    /// Deletes every flow whose backend is not in `present` or whose
    /// frontend id is not in `frontends`; returns how many entries went.
    pub fn purge(
        &mut self,
        present: &HashSet<Ipv4Addr>,
        frontends: &HashSet<u32>,
    ) -> Result<usize> {
        let mut gone = Vec::new();
        // Batched reads: a full table is half a million entries, and one
        // lookup per entry would hold the sync loop for seconds.
        batch::for_each(fd(&self.map), 4096, |k: &CtKey, v: &CtValue| {
            // Forward entries hold the backend in the value, reverse
            // entries in the key (its source).
            let backend = if v.is_reverse() { k.saddr } else { v.addr };
            let backend = Ipv4Addr::from(ipv4_from_net(backend));
            if !present.contains(&backend) || !frontends.contains(&v.svc_id) {
                gone.push(*k);
            }
        })
        .context("reading the conntrack map")?;
        let mut rest = &gone[..];
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(4096)];
            match batch::delete(fd(&self.map), chunk) {
                Ok(()) => rest = &rest[chunk.len()..],
                // Evicted since we read it: fine, go on past it.
                Err(s) if s.error.raw_os_error() == Some(libc::ENOENT) => {
                    rest = &rest[s.done + 1..]
                }
                Err(s) => return Err(s.error).context("deleting from the conntrack map"),
            }
        }
        Ok(gone.len())
    }
}

/// Every endpoint address in `store`, in any condition.
pub fn endpoint_addresses(store: &ObjectStore) -> HashSet<Ipv4Addr> {
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
