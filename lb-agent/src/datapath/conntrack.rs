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

use anyhow::Result;
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use lb_common::{CtKey, CtValue, MAP_CONNTRACK, ipv4_from_net};

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
        for e in self.map.iter() {
            // An entry evicted while we iterate ends the walk early; the
            // next purge finds the rest.
            let Ok((k, v)) = e else { break };
            // Forward entries hold the backend in the value, reverse
            // entries in the key (its source).
            let backend = if v.is_reverse() { k.saddr } else { v.addr };
            let backend = Ipv4Addr::from(ipv4_from_net(backend));
            if !present.contains(&backend) || !frontends.contains(&v.svc_id) {
                gone.push(k);
            }
        }
        for k in &gone {
            // Already evicted is fine.
            let _ = self.map.remove(k);
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
