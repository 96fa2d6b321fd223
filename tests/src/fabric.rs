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
