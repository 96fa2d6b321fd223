//! The maps behind traffic from outside the cluster: this node's
//! addresses (where NodePorts are served), the node-wide settings
//! (NodePort range, SNAT address and ports) and each LoadBalancer
//! frontend's `loadBalancerSourceRanges`. Each sync writes differences
//! only: additions before removals, so nothing that stays is ever
//! briefly missing.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use lb_common::{
    Config, MAP_CONFIG, MAP_NODE_ADDRS, MAP_SOURCE_RANGES, NodeAddrKey, SOURCE_RANGE_FIXED_BITS,
    SourceRangeKey, ipv4_to_net, port_to_net,
};

use crate::model::{Cidr, Desired};

pub struct ExternalMaps {
    node_addrs: HashMap<MapData, NodeAddrKey, u32>,
    config: Array<MapData, Config>,
    ranges: LpmTrie<MapData, SourceRangeKey, u32>,
}

/// One source-range entry: (prefix length, data).
type RangeEntry = (u32, SourceRangeKey);

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the object"))
}

impl ExternalMaps {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            node_addrs: super::maps::take(ebpf, MAP_NODE_ADDRS)?,
            config: Array::try_from(take_map(ebpf, MAP_CONFIG)?)
                .with_context(|| format!("map {MAP_CONFIG} has an unexpected layout"))?,
            ranges: LpmTrie::try_from(take_map(ebpf, MAP_SOURCE_RANGES)?)
                .with_context(|| format!("map {MAP_SOURCE_RANGES} has an unexpected layout"))?,
        })
    }

    pub fn set_config(&mut self, cfg: &Config) -> Result<()> {
        if self.config.get(&0, 0).ok().as_ref() == Some(cfg) {
            return Ok(());
        }
        self.config
            .set(0, cfg, 0)
            .with_context(|| format!("writing {MAP_CONFIG}"))
    }

    /// Makes the node-address map hold exactly `addrs`; returns whether
    /// anything changed.
    pub fn sync_node_addrs(&mut self, addrs: &BTreeSet<Ipv4Addr>) -> Result<bool> {
        let want: BTreeSet<NodeAddrKey> = addrs
            .iter()
            .map(|a| NodeAddrKey::v4(ipv4_to_net(a.octets())))
            .collect();
        let held: BTreeSet<NodeAddrKey> = self.node_addrs.keys().filter_map(|k| k.ok()).collect();
        for k in want.difference(&held) {
            self.node_addrs
                .insert(k, 0, 0)
                .with_context(|| format!("writing {MAP_NODE_ADDRS}"))?;
        }
        for k in held.difference(&want) {
            self.node_addrs
                .remove(k)
                .with_context(|| format!("removing from {MAP_NODE_ADDRS}"))?;
        }
        Ok(want != held)
    }

    /// Makes the source-range map hold exactly the desired frontends'
    /// ranges. Called before the frontends' masters are written (a flag
    /// on a master without its ranges would drop every source) and again
    /// after (ranges of frontends that went are removed).
    pub fn sync_source_ranges(&mut self, desired: &Desired, remove: bool) -> Result<()> {
        let want: BTreeSet<RangeEntry> = desired
            .frontends
            .iter()
            .flat_map(|(fk, st)| {
                st.source_ranges
                    .iter()
                    .map(move |c| range_entry(fk.addr, fk.port, fk.proto.number(), c))
            })
            .collect();
        let held: BTreeSet<RangeEntry> = self
            .ranges
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        for (len, data) in want.difference(&held) {
            self.ranges
                .insert(&Key::new(*len, *data), 1, 0)
                .with_context(|| format!("writing {MAP_SOURCE_RANGES}"))?;
        }
        if remove {
            for (len, data) in held.difference(&want) {
                self.ranges
                    .remove(&Key::new(*len, *data))
                    .with_context(|| format!("removing from {MAP_SOURCE_RANGES}"))?;
            }
        }
        Ok(())
    }
}

/// The LPM entry letting `c` reach frontend `addr:port/proto` (address
/// 0.0.0.0 for NodePort): the frontend matched in full, then the prefix.
fn range_entry(addr: Ipv4Addr, port: u16, proto: u8, c: &Cidr) -> RangeEntry {
    let frontend = if addr.is_unspecified() {
        [0; 4]
    } else {
        NodeAddrKey::v4(ipv4_to_net(addr.octets())).addr
    };
    let mask = if c.len == 0 {
        0
    } else {
        u32::MAX << (32 - c.len)
    };
    let source = Ipv4Addr::from(u32::from(c.addr) & mask);
    (
        SOURCE_RANGE_FIXED_BITS + 96 + c.len as u32,
        SourceRangeKey {
            port: port_to_net(port),
            proto,
            _pad: 0,
            frontend,
            source: NodeAddrKey::v4(ipv4_to_net(source.octets())).addr,
        },
    )
}
