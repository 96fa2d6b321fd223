//! This node's own addresses: where NodePorts are served (kube-proxy's
//! `nodePortAddresses`), and the one SNATed flows leave with.
use std::collections::BTreeSet;
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};

use crate::model::Cidr;

/// (interface, address) of every IPv4 and IPv6 address configured on
/// this node, but IPv6 link-local ones (not unique across links, never a
/// node address a client targets).
pub fn list() -> Result<Vec<(String, IpAddr)>> {
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
        if ifa.ifa_addr.is_null() {
            continue;
        }
        let addr = match unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if a.is_unicast_link_local() {
                    continue;
                }
                IpAddr::V6(a)
            }
            _ => continue,
        };
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
pub fn nodeport_addrs(all: &[(String, IpAddr)], only: &[Cidr]) -> BTreeSet<IpAddr> {
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

/// The interface of the IPv6 default route, from /proc/net/ipv6_route
/// (destination ::/0; the device is the last column).
pub fn default_route_interface6() -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let default = f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00";
        (default && f[9] != "lo").then(|| f[9].to_string())
    })
}

/// The addresses SNATed flows leave with, one per family: the
/// `--node-ip` of that family if given, else the first address of that
/// family on its default route's interface.
pub fn snat_addrs(
    explicit: &[IpAddr],
    all: &[(String, IpAddr)],
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let pick = |v6: bool, dev: Option<String>| -> Option<IpAddr> {
        if let Some(a) = explicit.iter().find(|a| a.is_ipv6() == v6) {
            return Some(*a);
        }
        let dev = dev?;
        all.iter()
            .find(|(n, a)| *n == dev && a.is_ipv6() == v6)
            .map(|(_, a)| *a)
    };
    let v4 = match pick(false, default_route_interface()) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let v6 = match pick(true, default_route_interface6()) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodeport_addresses_filter_and_skip_loopback() {
        let all = vec![
            ("lo".to_string(), IpAddr::V4(Ipv4Addr::LOCALHOST)),
            (
                "eth0".to_string(),
                IpAddr::V4(Ipv4Addr::new(192, 168, 50, 1)),
            ),
            ("eth1".to_string(), IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1))),
            ("eth1".to_string(), "fd00::1".parse().unwrap()),
        ];
        assert_eq!(nodeport_addrs(&all, &[]).len(), 3);
        let only: Vec<Cidr> = vec!["192.168.0.0/16".parse().unwrap()];
        assert_eq!(
            nodeport_addrs(&all, &only).into_iter().collect::<Vec<_>>(),
            [IpAddr::V4(Ipv4Addr::new(192, 168, 50, 1))]
        );
        let only: Vec<Cidr> = vec!["fd00::/8".parse().unwrap()];
        assert_eq!(
            nodeport_addrs(&all, &only).into_iter().collect::<Vec<_>>(),
            ["fd00::1".parse::<IpAddr>().unwrap()]
        );
        let explicit = ["10.1.1.1".parse().unwrap(), "fd00::9".parse().unwrap()];
        assert_eq!(
            snat_addrs(&explicit, &all),
            (
                Some(Ipv4Addr::new(10, 1, 1, 1)),
                Some("fd00::9".parse().unwrap())
            )
        );
    }

    #[test]
    fn lists_loopback() {
        let all = list().unwrap();
        assert!(all.iter().any(|(_, a)| a.is_loopback()));
    }
}
