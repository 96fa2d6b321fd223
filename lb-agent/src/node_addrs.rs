//! This node's own addresses: where NodePorts are served (kube-proxy's
//! `nodePortAddresses`), and the one SNATed flows leave with.
use std::collections::BTreeSet;
use std::ffi::CStr;
use std::net::Ipv4Addr;

use anyhow::{Result, bail};

use crate::model::Cidr;

/// (interface, address) of every IPv4 address configured on this node.
pub fn list() -> Result<Vec<(String, Ipv4Addr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        bail!("getifaddrs: {}", std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null()
            || unsafe { (*ifa.ifa_addr).sa_family } != libc::AF_INET as libc::sa_family_t
        {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        out.push((name, addr));
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The addresses NodePorts are served on: every non-loopback address, or
/// those inside `only` when given (`--nodeport-addresses`).
pub fn nodeport_addrs(all: &[(String, Ipv4Addr)], only: &[Cidr]) -> BTreeSet<Ipv4Addr> {
    all.iter()
        .map(|(_, a)| *a)
        .filter(|a| !a.is_loopback())
        .filter(|a| only.is_empty() || only.iter().any(|c| c.contains(*a)))
        .collect()
}

/// The interface of the IPv4 default route, from /proc/net/route.
pub fn default_route_interface() -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    text.lines().skip(1).find_map(|l| {
        let mut f = l.split_whitespace();
        let (iface, dest) = (f.next()?, f.next()?);
        (dest == "00000000").then(|| iface.to_string())
    })
}

/// The address SNATed flows leave with: `--node-ip` if given, else the
/// first address of the default route's interface.
pub fn snat_addr(explicit: Option<Ipv4Addr>, all: &[(String, Ipv4Addr)]) -> Option<Ipv4Addr> {
    if explicit.is_some() {
        return explicit;
    }
    let dev = default_route_interface()?;
    all.iter().find(|(n, _)| *n == dev).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodeport_addresses_filter_and_skip_loopback() {
        let all = vec![
            ("lo".to_string(), Ipv4Addr::LOCALHOST),
            ("eth0".to_string(), Ipv4Addr::new(192, 168, 50, 1)),
            ("eth1".to_string(), Ipv4Addr::new(172, 16, 0, 1)),
        ];
        assert_eq!(nodeport_addrs(&all, &[]).len(), 2);
        let only: Vec<Cidr> = vec!["192.168.0.0/16".parse().unwrap()];
        assert_eq!(
            nodeport_addrs(&all, &only).into_iter().collect::<Vec<_>>(),
            [Ipv4Addr::new(192, 168, 50, 1)]
        );
        assert_eq!(
            snat_addr(Some(Ipv4Addr::new(10, 1, 1, 1)), &all),
            Some(Ipv4Addr::new(10, 1, 1, 1))
        );
    }

    #[test]
    fn lists_loopback() {
        let all = list().unwrap();
        assert!(all.iter().any(|(_, a)| a.is_loopback()));
    }
}
