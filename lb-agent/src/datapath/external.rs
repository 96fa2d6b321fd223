//! The maps behind traffic from outside the cluster: this node's
//! addresses (where NodePorts are served), the node-wide settings
//! (NodePort range, SNAT address and ports) and each LoadBalancer
//! frontend's `loadBalancerSourceRanges`. Each sync writes differences
//! only: additions before removals, so nothing that stays is ever
//! briefly missing.
use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use lb_common::{
    Config, In6, MAP_CONFIG, MAP_NODE_ADDRS, MAP_SOURCE_RANGES, NodeAddrKey,
    SOURCE_RANGE_FIXED_BITS, SourceRangeKey, ipv6_to_net, port_to_net,
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

    /// Opens the maps a running (or stopped) agent pinned, for the CLI.
    pub fn from_pins(dir: &std::path::Path) -> Result<Self> {
        let open = |name: &str| -> Result<aya::maps::Map> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Ok(aya::maps::Map::from_map_data(data)?)
        };
        Ok(Self {
            node_addrs: super::maps::open_pinned(dir, MAP_NODE_ADDRS)?,
            config: Array::try_from(open(MAP_CONFIG)?)
                .with_context(|| format!("map {MAP_CONFIG} has an unexpected layout"))?,
            ranges: LpmTrie::try_from(open(MAP_SOURCE_RANGES)?)
                .with_context(|| format!("map {MAP_SOURCE_RANGES} has an unexpected layout"))?,
        })
    }

    /// The node-wide settings, if the agent wrote them.
    pub fn config(&self) -> Option<Config> {
        self.config.get(&0, 0).ok()
    }

    /// Whether `a` is one of this node's addresses (NodePorts are served
    /// on them).
    pub fn is_node_addr(&self, a: IpAddr) -> bool {
        self.node_addrs
            .get(&NodeAddrKey { addr: mapped(a) }, 0)
            .is_ok()
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
    pub fn sync_node_addrs(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<bool> {
        let want: BTreeSet<NodeAddrKey> = addrs
            .iter()
            .map(|a| NodeAddrKey { addr: mapped(*a) })
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

/// An address as the family-independent maps key it: IPv4 v4-mapped
/// (`::ffff:a.b.c.d`), as the datapath does.
pub fn mapped(a: IpAddr) -> In6 {
    let v6 = match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    ipv6_to_net(v6.octets())
}

/// The LPM entry letting `c` reach frontend `addr:port/proto` (the
/// unspecified address for NodePort): the frontend matched in full, then
/// the prefix (an IPv4 one after the 96 bits of the v4-mapped prefix).
/// A prefix of the other family than the frontend's never matches.
fn range_entry(addr: IpAddr, port: u16, proto: u8, c: &Cidr) -> RangeEntry {
    let frontend = if addr.is_unspecified() {
        [0; 4]
    } else {
        mapped(addr)
    };
    let bits = if c.addr.is_ipv6() { 0 } else { 96 };
    (
        SOURCE_RANGE_FIXED_BITS + bits + c.len as u32,
        SourceRangeKey {
            port: port_to_net(port),
            proto,
            _pad: 0,
            frontend,
            source: mapped(c.network()),
        },
    )
}
