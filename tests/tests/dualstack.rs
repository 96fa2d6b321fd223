//! IPv6 and dual-stack Services end to end: the real agent in a node
//! namespace whose pods have an IPv4 and an IPv6 address each, real
//! servers, real clients on the node (socket hooks: IPv6, and IPv4 from
//! dual-stack sockets) and in a pod (tc, both families: translation, the
//! reject, path MTU discovery).
mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use ferrolb_tests::cluster::{Cluster, InCgroup};
use ferrolb_tests::firewall;
use ferrolb_tests::http;

const TIMEOUT: Duration = Duration::from_secs(2);
/// A refusal comes back well before TIMEOUT, which a dropped packet runs
/// to; the margin is for a loaded machine.
const AT_ONCE: Duration = Duration::from_millis(1500);
const VIP4: &str = "10.0.1.175";
const VIP6: &str = "fd00:10::175";
const ONLY6: &str = "fd00:10::180";
const EMPTY6: &str = "fd00:10::181";

/// The seeds' `hostnames` as a dual-stack Service (one slice per family,
/// as the EndpointSlice controller writes them), an IPv6-only Service on
/// the same pods, and an IPv6 Service without endpoints.
fn manifests(c: &Cluster) -> String {
    let addrs = |v6: bool| -> String {
        c.pods
            .iter()
            .map(|p| {
                let a = if v6 {
                    p.ip6.to_string()
                } else {
                    p.ip.to_string()
                };
                format!("- addresses: [\"{a}\"]\n  conditions: {{ready: true}}\n")
            })
            .collect()
    };
    let slice = |name: &str, svc: &str, family: &str, v6: bool| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: {family}\nports: [{{name: http, port: 9376, protocol: TCP}}, {{name: dns, port: 9376, protocol: UDP}}]\nendpoints:\n{}",
            addrs(v6)
        )
    };
    let ports = "  ports:\n  - {name: http, protocol: TCP, port: 80, targetPort: 9376}\n  - {name: dns, protocol: UDP, port: 53, targetPort: 9376}\n";
    [
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: hostnames}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: {VIP4}\n  clusterIPs: [{VIP4}, \"{VIP6}\"]\n{ports}"
        ),
        slice("hostnames-v4", "hostnames", "IPv4", false),
        slice("hostnames-v6", "hostnames", "IPv6", true),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: only6}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIP: \"{ONLY6}\"\n  clusterIPs: [\"{ONLY6}\"]\n{ports}"
        ),
        slice("only6-v6", "only6", "IPv6", true),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: empty6}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIP: \"{EMPTY6}\"\n{ports}"
        ),
    ]
    .join("---\n")
}

fn setup() -> (Cluster, String) {
    let fw = firewall::snapshot(None).expect("firewall snapshot");
    let mut c = Cluster::new(common::bins(), 3).expect("cluster");
    let path = c.workdir.join("services.yaml");
    std::fs::write(&path, manifests(&c)).unwrap();
    c.start_agent(&path).expect("agent starts");
    (c, fw)
}

/// `GET /whoami` on a new connection: (pod name, the address it saw).
fn whoami(addr: SocketAddr) -> std::io::Result<(String, String)> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let body = http::get_path_and_close(s, "/whoami")?;
    let (name, seen) = body.split_once(' ').unwrap_or((&body, ""));
    Ok((name.to_string(), seen.to_string()))
}

/// Pods reached through `addr` in up to 60 connections, checking what
/// each saw as the client's address.
fn reach_all(c: &Cluster, from_pod: bool, addr: SocketAddr, client: IpAddr) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let (name, peer) = if from_pod {
            c.client().ns.run(move || whoami(addr)).unwrap()
        } else {
            c.node.run(move || whoami(addr)).unwrap()
        }
        .unwrap_or_else(|e| panic!("{addr}, connection {i}: {e}\n{}", c.agent_log_text()));
        assert_eq!(peer, client.to_string(), "{addr}: the pod sees the client");
        seen.insert(name);
        if seen.len() == c.pods.len() {
            break;
        }
    }
    seen
}

fn udp_whoami(addr: SocketAddr) -> std::io::Result<String> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.connect(addr)?;
    s.send(b"whoami")?;
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

#[test]
fn dual_stack_hostnames_ipv4_side_from_a_pod_and_the_table_shows_both_families() {
    let (c, fw) = setup();
    let all: BTreeSet<String> = c.pods.iter().map(|p| p.name.clone()).collect();
    let addr = SocketAddr::new(VIP4.parse().unwrap(), 80);
    assert_eq!(reach_all(&c, true, addr, IpAddr::V4(c.client().ip)), all);
    // Each family's frontends got that family's endpoints; the
    // IPv6-only Service has no IPv4 frontend.
    let table = c.cli("services").unwrap();
    let row = |fe: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(fe))
            .unwrap_or_else(|| panic!("no {fe} in\n{table}"))
            .to_string()
    };
    let v6 = row(&format!("[{VIP6}]:80/TCP"));
    for p in &c.pods {
        assert!(v6.contains(&format!("[{}]:9376", p.ip6)), "{v6}");
        assert!(!v6.contains(&p.ip.to_string()), "{v6}");
    }
    let v4 = row(&format!("{VIP4}:80/TCP"));
    for p in &c.pods {
        assert!(v4.contains(&format!("{}:9376", p.ip)), "{v4}");
    }
    row(&format!("[{ONLY6}]:53/UDP"));
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains("default/only6"))
            .count(),
        2,
        "{table}"
    );
    // check compares both families' maps with the manifests: equal, then
    // an IPv6 endpoint fewer is named as an IPv6 frontend's difference.
    let (pin, path) = (c.pin_path(), c.workdir.join("services.yaml"));
    let check = |manifests: &std::path::Path| {
        c.node_cli(&[
            "check",
            "--manifests",
            manifests.to_str().unwrap(),
            "--pin-path",
            pin.to_str().unwrap(),
        ])
    };
    let same = check(&path).expect("the maps match the manifests");
    assert!(same.contains("maps match"), "{same}");
    let gone = format!(
        "- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
        c.pods[0].ip6
    );
    let fewer = c.workdir.join("fewer.yaml");
    std::fs::write(&fewer, manifests(&c).replacen(&gone, "", 1)).unwrap();
    let differs = check(&fewer)
        .expect_err("an IPv6 endpoint fewer differs")
        .to_string();
    assert!(
        differs.contains(&format!("frontend [{VIP6}]:80/TCP")),
        "{differs}"
    );
    assert!(
        !differs.contains(&format!("frontend {VIP4}:80")),
        "{differs}"
    );
    assert_eq!(
        firewall::snapshot(None).unwrap(),
        fw,
        "the agent must not create iptables/nftables rules"
    );
}

#[test]
fn dual_stack_hostnames_from_the_node_through_the_socket_hooks() {
    let (c, _fw) = setup();
    let all: BTreeSet<String> = c.pods.iter().map(|p| p.name.clone()).collect();
    let _in = InCgroup::enter(&c.cgroup).expect("enter cgroup");
    let gw6 = ferrolb_tests::cluster::v6_of(c.gw);
    for (vip, from) in [(VIP4, IpAddr::V4(c.gw)), (VIP6, IpAddr::V6(gw6))] {
        let addr = SocketAddr::new(vip.parse().unwrap(), 80);
        let seen = reach_all(&c, false, addr, from);
        assert_eq!(seen, all, "{addr} from the node");
    }
    // A dual-stack socket reaching the IPv4 VIP as ::ffff:10.0.1.175.
    let mapped = SocketAddr::new(
        IpAddr::V6(VIP4.parse::<std::net::Ipv4Addr>().unwrap().to_ipv6_mapped()),
        80,
    );
    let (name, _) = c
        .node
        .run(move || whoami(mapped))
        .unwrap()
        .expect("v4-mapped");
    assert!(all.contains(&name));
    // getpeername shows the VIP the socket asked for.
    let addr = SocketAddr::new(VIP6.parse().unwrap(), 80);
    let peer = c
        .node
        .run(move || TcpStream::connect_timeout(&addr, TIMEOUT).and_then(|s| s.peer_addr()))
        .unwrap()
        .expect("connect");
    assert_eq!(peer, addr);
    // UDP, unconnected: sendmsg6 picks the backend, recvmsg6 shows the
    // answer as coming from the VIP.
    let vip = SocketAddr::new(VIP6.parse().unwrap(), 53);
    let (answer, from) = c
        .node
        .run(move || -> std::io::Result<(String, SocketAddr)> {
            let s = UdpSocket::bind("[::]:0")?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.send_to(b"whoami", vip)?;
            let mut buf = [0u8; 256];
            let (n, from) = s.recv_from(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from))
        })
        .unwrap()
        .expect("UDP over IPv6 from the node");
    assert_eq!(from, vip, "recvmsg6 shows the VIP");
    assert!(
        all.iter().any(|n| answer.starts_with(n.as_str())),
        "{answer}"
    );
    let answer = c
        .node
        .run(move || udp_whoami(vip))
        .unwrap()
        .expect("connected UDP over IPv6");
    assert!(
        all.iter().any(|n| answer.starts_with(n.as_str())),
        "{answer}"
    );
    let stats = c.cli("stats").unwrap();
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("sock_translate") && !l.ends_with(" 0")),
        "{stats}"
    );
}

fn stat(c: &Cluster, name: &str) -> u64 {
    let out = c.cli("stats").expect("lb-agent stats");
    out.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in stats:\n{out}"))
}

/// From a pod, through tc: the dual-stack Service's IPv6 side and the
/// IPv6-only Service, TCP and UDP, every backend reached, the client's
/// own address seen by the pods, the answers from the VIP.
#[test]
fn ipv6_services_from_a_pod_through_tc() {
    let (c, _fw) = setup();
    let all: BTreeSet<String> = c.pods.iter().map(|p| p.name.clone()).collect();
    let me = IpAddr::V6(c.client().ip6);
    let before = stat(&c, "dnat_new");
    for vip in [VIP6, ONLY6] {
        let addr = SocketAddr::new(vip.parse().unwrap(), 80);
        assert_eq!(reach_all(&c, true, addr, me), all, "{addr} from a pod");
        let udp = SocketAddr::new(vip.parse().unwrap(), 53);
        let answer = c
            .client()
            .ns
            .run(move || udp_whoami(udp))
            .unwrap()
            .unwrap_or_else(|e| panic!("UDP to {udp} from a pod: {e}"));
        assert!(
            all.iter().any(|n| answer.starts_with(n.as_str())),
            "{answer}"
        );
    }
    assert!(
        stat(&c, "dnat_new") > before,
        "the tc program translated them"
    );
    let flows = c.cli("conntrack").unwrap();
    assert!(
        flows.contains(&format!("[{}]", c.client().ip6)),
        "conntrack lists the IPv6 flows:\n{flows}"
    );
}

/// No endpoints, from a pod: TCP is reset and UDP gets ICMPv6 port
/// unreachable, both at once (from the VIP, as a closed port would).
#[test]
fn an_ipv6_vip_without_endpoints_is_rejected_from_a_pod() {
    let (c, _fw) = setup();
    let tcp = SocketAddr::new(EMPTY6.parse().unwrap(), 80);
    let started = std::time::Instant::now();
    let err = c
        .client()
        .ns
        .run(move || TcpStream::connect_timeout(&tcp, TIMEOUT).map(drop))
        .unwrap()
        .expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // At once: well short of the connect timeout (2 s) a drop would run to.
    assert!(
        started.elapsed() < AT_ONCE,
        "at once: {:?}",
        started.elapsed()
    );
    let udp = SocketAddr::new(EMPTY6.parse().unwrap(), 53);
    let err = c
        .client()
        .ns
        .run(move || udp_whoami(udp))
        .unwrap()
        .expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(stat(&c, "reject_no_backend") >= 2);
}

/// Path MTU discovery through an IPv6 VIP: the backend sits behind a
/// smaller MTU; the node's Packet Too Big must reach the client from the
/// VIP, or the upload stalls.
#[test]
fn path_mtu_discovery_through_an_ipv6_vip() {
    const SMALL_MTU: &str = "1280";
    const UPLOAD: usize = 400_000;
    let (c, _fw) = setup();
    for p in &c.pods {
        c.node
            .ip(&[
                "-6",
                "route",
                "replace",
                &format!("{}/128", p.ip6),
                "dev",
                &p.host_if,
                "mtu",
                "lock",
                SMALL_MTU,
            ])
            .expect("small MTU route");
    }
    let before = stat(&c, "icmp_translated");
    let addr = SocketAddr::new(VIP6.parse().unwrap(), 80);
    let answer = c
        .client()
        .ns
        .run(move || ferrolb_tests::http::upload(addr, UPLOAD))
        .unwrap()
        .expect("large upload through the IPv6 VIP completes");
    assert!(
        answer.contains(&format!("received {UPLOAD}")),
        "backend got the whole upload: {answer}"
    );
    let route = c.client().ns.ip(&["-6", "route", "get", VIP6]).unwrap();
    assert!(
        route.contains(&format!("mtu {SMALL_MTU}")),
        "client's route cache to the VIP: {route}"
    );
    assert!(
        stat(&c, "icmp_translated") > before,
        "the datapath counted the translated error"
    );
}

/// No endpoints: a connect from the node to the IPv6 VIP fails at once
/// (the socket hook refuses it), as for IPv4.
#[test]
fn an_ipv6_service_without_endpoints_is_refused_at_the_socket() {
    let (c, _fw) = setup();
    let _in = InCgroup::enter(&c.cgroup).expect("enter cgroup");
    let addr = SocketAddr::new(EMPTY6.parse().unwrap(), 80);
    let started = std::time::Instant::now();
    let err = c
        .node
        .run(move || TcpStream::connect_timeout(&addr, TIMEOUT).map(drop))
        .unwrap()
        .expect_err("no endpoints");
    assert!(
        started.elapsed() < AT_ONCE,
        "refused at once, not timed out: {err}"
    );
    let stats = c.cli("stats").unwrap();
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("sock_reject") && !l.ends_with(" 0")),
        "{stats}"
    );
}

/// An agent of this build takes over the pins of a build without the
/// IPv6 maps (an IPv4-only ferrolb): the IPv4 state is adopted (an
/// established connection keeps working), the IPv6 maps are created and
/// programmed.
#[test]
fn pins_of_an_ipv4_only_build_are_adopted_and_the_ipv6_maps_created() {
    let (mut c, _fw) = setup();
    let addr = SocketAddr::new(VIP4.parse().unwrap(), 80);
    let mut conn = c
        .client()
        .ns
        .run(move || -> std::io::Result<http::Conn> {
            let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            http::Conn::new(s)
        })
        .unwrap()
        .expect("kept-alive connection");
    let first = conn.get().expect("first request");
    c.stop_agent(libc::SIGTERM);
    let v6_maps = [
        lb_common::MAP_SERVICES6,
        lb_common::MAP_BACKENDS6,
        lb_common::MAP_CONNTRACK6,
        lb_common::MAP_SOCK_REVNAT6,
        lb_common::MAP_SNAT6,
    ];
    for m in v6_maps {
        std::fs::remove_file(c.pin_path().join(m)).expect("IPv6 map pinned");
    }
    let path = c.workdir.join("services.yaml");
    c.start_agent(&path)
        .expect("agent starts on IPv4-only pins");
    assert_eq!(
        conn.get().expect("the connection survives"),
        first,
        "same backend"
    );
    for m in v6_maps {
        assert!(c.pin_path().join(m).exists(), "{m} created and pinned");
    }
    let all: BTreeSet<String> = c.pods.iter().map(|p| p.name.clone()).collect();
    let _in = InCgroup::enter(&c.cgroup).expect("enter cgroup");
    let gw6 = ferrolb_tests::cluster::v6_of(c.gw);
    let addr6 = SocketAddr::new(VIP6.parse().unwrap(), 80);
    assert_eq!(reach_all(&c, false, addr6, IpAddr::V6(gw6)), all);
    let log = c.agent_log_text();
    assert!(
        log.contains("existing entries adopted"),
        "adoption logged:\n{log}"
    );
}
