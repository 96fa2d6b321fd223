//! The network between simulated nodes and the clients outside the
//! cluster: one namespace holding a Linux bridge, like the L2 segment a
//! rack's nodes and its load balancer share. Nodes and clients are
//! plugged in with a veth each. Nothing here routes out of the machine.
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;

use crate::netns::NetNs;

/// The fabric's prefix length (addresses are the caller's).
pub const PREFIX_LEN: u8 = 24;

pub struct Fabric {
    pub ns: NetNs,
    ports: AtomicU32,
}

impl Fabric {
    /// A bridge `br0` in a new namespace `NAME`.
    pub fn new(name: &str) -> Result<Self> {
        let ns = NetNs::new(name)?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Fabric {
            ns,
            ports: AtomicU32::new(0),
        })
    }

    /// Plugs `ns` into the bridge through its interface `ifname`, with
    /// `addr` on it.
    pub fn plug(&self, ns: &NetNs, ifname: &str, addr: Ipv4Addr) -> Result<()> {
        let port = format!("port{}", self.ports.fetch_add(1, Ordering::SeqCst));
        self.ns.veth_to(&port, ns, ifname)?;
        self.ns.ip(&["link", "set", &port, "master", "br0"])?;
        self.ns.ip(&["link", "set", &port, "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{addr}/{PREFIX_LEN}"),
            "dev",
            ifname,
        ])?;
        ns.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }
}

/// A node's network without any peer running: a namespace where the
/// kernel's FIB and neighbour table answer as on node-b of the two-node
/// tests, for programs run through BPF_PROG_TEST_RUN (their FIB lookups
/// resolve in the caller's namespace). `wire0` (MAC [`WIRE_MAC`]) holds
/// [`NODE`] on 192.168.50.0/24, with [`PEER_NODE`] (its pods
/// 10.244.1.0/24 behind it), [`CLIENT`] and [`OUTSIDER`] as static
/// neighbours; `pod0` leads to the local pod [`LOCAL_POD`].
pub mod static_node {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use anyhow::{Context, Result};

    use crate::netns::NetNs;

    pub const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
    pub const PEER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
    pub const OUTSIDER: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 101);
    pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    pub const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
    pub const WIRE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    pub const PEER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
    pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
    /// The same places in IPv6 (the node's wire is dual-stack).
    pub const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 2);
    pub const PEER_NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
    pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x64);
    pub const REMOTE_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 5);

    fn mac(m: [u8; 6]) -> String {
        m.map(|b| format!("{b:02x}")).join(":")
    }

    /// Creates the namespace `name`; returns it and `wire0`'s ifindex.
    pub fn create(name: &str) -> Result<(NetNs, u32)> {
        let ns = NetNs::new(name)?;
        ns.ip(&[
            "link", "add", "wire0", "type", "veth", "peer", "name", "wire1",
        ])?;
        ns.ip(&[
            "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
        ])?;
        ns.ip(&["link", "set", "wire0", "address", &mac(WIRE_MAC)])?;
        for l in ["wire0", "wire1", "pod0", "pod1"] {
            ns.ip(&["link", "set", l, "up"])?;
        }
        ns.ip(&["addr", "add", &format!("{NODE}/24"), "dev", "wire0"])?;
        ns.ip(&["addr", "add", "10.244.2.1/32", "dev", "pod0"])?;
        ns.ip(&[
            "route",
            "add",
            "10.244.1.0/24",
            "via",
            &PEER_NODE.to_string(),
        ])?;
        ns.ip(&["route", "add", &format!("{LOCAL_POD}/32"), "dev", "pod0"])?;
        let outsider_mac = [0x02, 0, 0, 0, 0, 0x65];
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE6}/64"),
            "dev",
            "wire0",
            "nodad",
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "fd00:244:1::/64",
            "via",
            &PEER_NODE6.to_string(),
        ])?;
        // `ip neigh` takes the family from the address.
        let neighbours: [(std::net::IpAddr, _, _); 6] = [
            (PEER_NODE.into(), PEER_NODE_MAC, "wire0"),
            (CLIENT.into(), CLIENT_MAC, "wire0"),
            (OUTSIDER.into(), outsider_mac, "wire0"),
            (LOCAL_POD.into(), POD_MAC, "pod0"),
            (PEER_NODE6.into(), PEER_NODE_MAC, "wire0"),
            (CLIENT6.into(), CLIENT_MAC, "wire0"),
        ];
        for (addr, m, dev) in neighbours {
            ns.ip(&[
                "neigh",
                "add",
                &addr.to_string(),
                "lladdr",
                &mac(m),
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))??;
        ns.run(|| std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1"))??;
        let line = ns.ip(&["-o", "link", "show", "wire0"])?;
        let ifindex = line
            .split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .context("wire0's ifindex")?;
        Ok((ns, ifindex))
    }
}
