//! North-south, end to end: two nodes, each its own namespace running its
//! own agent (own pins, own `--node-name`), pods on both, and clients
//! outside the cluster on the network both nodes share (a bridge in a
//! namespace of its own). Pod servers answer `whoami` with the address
//! they see, so each test tells SNAT from a kept client address.
//!
//! node-a: 192.168.50.1, pods 10.244.1.5 (pod-1-0) and 10.244.1.6 (pod-1-1)
//! node-b: 192.168.50.2, pod 10.244.2.5 (pod-2-0)
//! client 192.168.50.100 (inside loadBalancerSourceRanges), client 192.168.50.101
//! (outside); both route the LoadBalancer/external IPs 192.168.60.0/24 via node-a.
//! The IPv6 test adds fd00:50::1, ::2 and the client ::64 on the same
//! network, pods fd00:244:s::h, and an IPv6 NodePort Service.
mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use ferrolb_tests::cluster::Cluster;
use ferrolb_tests::fabric::Fabric;
use ferrolb_tests::firewall;
use ferrolb_tests::http::{Conn, get_path_and_close};
use ferrolb_tests::netns::{NetNs, sh};
use socket2::{Domain, Protocol, Socket, Type};

const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 101);
const LB_LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 20);
const LB_RANGES: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 30);
const TIMEOUT: Duration = Duration::from_secs(2);
const NODE_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
const NODE_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x64);

/// The IPv6 test's Service: `my-nginx`'s pods by their IPv6 addresses
/// behind an IPv6 NodePort.
const MANIFESTS6: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: my-nginx6}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  clusterIP: "fd00:10::2:10"
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 9376, nodePort: 30090}
  - {name: udp, protocol: UDP, port: 80, targetPort: 9376, nodePort: 30090}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: my-nginx6-1, labels: {kubernetes.io/service-name: my-nginx6}}
addressType: IPv6
ports: [{name: http, protocol: TCP, port: 9376}, {name: udp, protocol: UDP, port: 9376}]
endpoints:
- {addresses: ["fd00:244:1::5"], nodeName: node-a}
- {addresses: ["fd00:244:1::6"], nodeName: node-a}
- {addresses: ["fd00:244:2::5"], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: closed6}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  clusterIP: "fd00:10::2:14"
  ports: [{protocol: UDP, port: 80, targetPort: 9999, nodePort: 30093}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: closed6-1, labels: {kubernetes.io/service-name: closed6}}
addressType: IPv6
ports: [{protocol: UDP, port: 9999}]
endpoints: [{addresses: ["fd00:244:2::5"], nodeName: node-b}]
"#;

/// The same manifests on both nodes: endpoints carry their nodeName, each
/// agent tells its own from the others' by its `--node-name`.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: my-nginx}
spec:
  type: NodePort
  clusterIP: 10.0.2.10
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 9376, nodePort: 30080}
  - {name: udp, protocol: UDP, port: 80, targetPort: 9376, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: my-nginx-1, labels: {kubernetes.io/service-name: my-nginx}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 9376}, {name: udp, protocol: UDP, port: 9376}]
endpoints:
- {addresses: ["10.244.1.5"], nodeName: node-a}
- {addresses: ["10.244.1.6"], nodeName: node-a}
- {addresses: ["10.244.2.5"], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: example-service}
spec:
  type: LoadBalancer
  clusterIP: 10.0.2.11
  externalTrafficPolicy: Local
  healthCheckNodePort: 30500
  ports: [{protocol: TCP, port: 8080, targetPort: 9376, nodePort: 30081}]
status:
  loadBalancer: {ingress: [{ip: 192.168.60.10}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: example-service-1, labels: {kubernetes.io/service-name: example-service}}
addressType: IPv4
ports: [{protocol: TCP, port: 9376}]
endpoints: [{addresses: ["10.244.1.5"], nodeName: node-a}]
---
apiVersion: v1
kind: Service
metadata: {name: my-service}
spec:
  clusterIP: 10.0.2.12
  externalIPs: [192.168.60.20]
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 9376}
  - {name: udp, protocol: UDP, port: 80, targetPort: 9376}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: my-service-1, labels: {kubernetes.io/service-name: my-service}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 9376}, {name: udp, protocol: UDP, port: 9376}]
endpoints: [{addresses: ["10.244.2.5"], nodeName: node-b}]
---
apiVersion: v1
kind: Service
metadata: {name: lb-ranges}
spec:
  type: LoadBalancer
  clusterIP: 10.0.2.13
  loadBalancerSourceRanges: [192.168.50.100/32]
  ports: [{protocol: TCP, port: 80, targetPort: 9376, nodePort: 30082}]
status:
  loadBalancer: {ingress: [{ip: 192.168.60.30}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-ranges-1, labels: {kubernetes.io/service-name: lb-ranges}}
addressType: IPv4
ports: [{protocol: TCP, port: 9376}]
endpoints: [{addresses: ["10.244.1.6"], nodeName: node-a}]
---
apiVersion: v1
kind: Service
metadata: {name: closed-remote}
spec:
  type: NodePort
  clusterIP: 10.0.2.14
  ports: [{protocol: UDP, port: 80, targetPort: 9999, nodePort: 30083}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: closed-remote-1, labels: {kubernetes.io/service-name: closed-remote}}
addressType: IPv4
ports: [{protocol: UDP, port: 9999}]
endpoints: [{addresses: ["10.244.2.5"], nodeName: node-b}]
---
apiVersion: v1
kind: Service
metadata: {name: closed-local}
spec:
  type: NodePort
  clusterIP: 10.0.2.15
  ports: [{protocol: UDP, port: 80, targetPort: 9999, nodePort: 30084}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: closed-local-1, labels: {kubernetes.io/service-name: closed-local}}
addressType: IPv4
ports: [{protocol: UDP, port: 9999}]
endpoints: [{addresses: ["10.244.1.5"], nodeName: node-a}]
"#;

struct Topology {
    clients: Vec<NetNs>,
    // Dropped after the clients and before the nodes' namespaces go.
    _fabric: Fabric,
    a: Cluster,
    b: Cluster,
    fw_before: [String; 2],
}

fn node(subnet: u8, backends: usize, name: &str, ip: Ipv4Addr) -> Cluster {
    let mut c = Cluster::with_subnet(common::bins(), backends, subnet).expect("node");
    c.agent_args = ["--node-name", name, "--node-ip", &ip.to_string()]
        .map(String::from)
        .to_vec();
    c
}

fn topology() -> Topology {
    topology_with(false, &[])
}

/// [`topology`] with IPv6 beside IPv4 on the network and the routes, the
/// nodes' IPv6 SNAT addresses, and [`MANIFESTS6`].
fn topology6() -> Topology {
    build(false, &[], true)
}

/// With `xdp`, both nodes run the XDP program on their uplink too, found
/// as the default route's interface (`--devices auto`), whose address is
/// also the SNAT address (no `--node-ip`). Frames on the fabric then
/// carry complete checksums, as from a NIC (XDP's own checksum updates
/// are what the receivers verify).
fn topology_with(xdp: bool, extra: &[&str]) -> Topology {
    build(xdp, extra, false)
}

fn build(xdp: bool, extra: &[&str], v6: bool) -> Topology {
    let mut a = node(1, 2, "node-a", NODE_A);
    let mut b = node(2, 1, "node-b", NODE_B);
    for c in [&mut a, &mut b] {
        c.agent_args.extend(extra.iter().map(|s| s.to_string()));
    }
    if xdp {
        for c in [&mut a, &mut b] {
            let name = c.agent_args[1].clone();
            // Generic XDP: native XDP on a veth runs only for frames the
            // peer hands it through NAPI, and frames bridged from another
            // node bypass it; a NIC driver runs it on every frame.
            c.agent_args = [
                "--node-name",
                &name,
                "--devices",
                "auto",
                "--xdp-mode",
                "generic",
            ]
            .map(String::from)
            .to_vec();
        }
    }
    let fabric = Fabric::new(&format!("{}-net", a.id)).expect("fabric");
    fabric.plug(&a.node, "uplink0", NODE_A).unwrap();
    fabric.plug(&b.node, "uplink0", NODE_B).unwrap();
    // Each node routes the other's pod subnet, as a routed CNI does.
    a.node
        .ip(&["route", "add", "10.244.2.0/24", "via", &NODE_B.to_string()])
        .unwrap();
    b.node
        .ip(&["route", "add", "10.244.1.0/24", "via", &NODE_A.to_string()])
        .unwrap();
    if v6 {
        for (c, me, other, theirs) in [
            (&mut a, NODE_A6, NODE_B6, "fd00:244:2::/64"),
            (&mut b, NODE_B6, NODE_A6, "fd00:244:1::/64"),
        ] {
            add6(&c.node, "uplink0", me);
            c.node
                .ip(&["-6", "route", "add", theirs, "via", &other.to_string()])
                .unwrap();
            c.agent_args
                .extend(["--node-ip".to_string(), me.to_string()]);
        }
    }
    if xdp {
        // A default route on the fabric (to the first client; no traffic
        // takes it) makes uplink0 the devices `auto` finds.
        for c in [&a, &b] {
            c.node
                .ip(&["route", "add", "default", "via", &CLIENT.to_string()])
                .unwrap();
        }
    }
    let mut clients = Vec::new();
    for (i, ip) in [CLIENT, OUTSIDER].into_iter().enumerate() {
        let ns = NetNs::new(&format!("{}-c{i}", a.id)).expect("client namespace");
        fabric.plug(&ns, "eth0", ip).unwrap();
        if v6 && i == 0 {
            add6(&ns, "eth0", CLIENT6);
        }
        // The load balancer's addresses lead to node-a.
        ns.ip(&[
            "route",
            "add",
            "192.168.60.0/24",
            "via",
            &NODE_A.to_string(),
        ])
        .unwrap();
        clients.push(ns);
    }
    if xdp {
        for ns in clients.iter().chain([&a.node, &b.node]) {
            let ifname = if ns.name == a.node.name || ns.name == b.node.name {
                "uplink0"
            } else {
                "eth0"
            };
            sh(ns.command("ethtool").args(["-K", ifname, "tx", "off"])).expect("ethtool tx off");
        }
    }
    let fw_before = [&a, &b].map(|c| firewall::snapshot(Some(&c.node.name)).expect("snapshot"));
    let mut t = Topology {
        clients,
        _fabric: fabric,
        a,
        b,
        fw_before,
    };
    for c in [&mut t.a, &mut t.b] {
        let path = c.workdir.join("services.yaml");
        let manifests = if v6 {
            format!("{MANIFESTS}{MANIFESTS6}")
        } else {
            MANIFESTS.to_string()
        };
        std::fs::write(&path, manifests).unwrap();
        c.start_agent(&path).expect("agent starts");
    }
    t
}

/// An IPv6 address on `ifname` of `ns`, usable at once (no DAD).
fn add6(ns: &NetNs, ifname: &str, addr: Ipv6Addr) {
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{addr}/64"),
        "dev",
        ifname,
        "nodad",
    ])
    .unwrap();
}

impl Topology {
    fn client(&self) -> &NetNs {
        &self.clients[0]
    }

    /// Both nodes' datapath counters, for failure messages.
    fn stats(&self) -> String {
        [&self.a, &self.b]
            .map(|c| format!("{}:\n{}", c.node.name, c.cli("stats").unwrap_or_default()))
            .join("")
    }

    /// Checks what every test must leave true, then tears down.
    fn finish(self) {
        for (c, before) in [&self.a, &self.b].into_iter().zip(&self.fw_before) {
            let log = c.agent_log_text();
            assert!(
                !log.contains("not programmed"),
                "agent refused something:\n{log}"
            );
            assert_eq!(
                &firewall::snapshot(Some(&c.node.name)).unwrap(),
                before,
                "the agent must not create iptables/nftables rules"
            );
        }
    }
}

/// `GET /whoami` from `ns` to `to:port`: (pod name, address the pod saw).
fn whoami(ns: &NetNs, to: impl Into<IpAddr>, port: u16) -> std::io::Result<(String, String)> {
    let to = to.into();
    ns.run(move || {
        let s = TcpStream::connect_timeout(&SocketAddr::from((to, port)), TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let body = get_path_and_close(s, "/whoami")?;
        let (name, seen) = body.split_once(' ').unwrap_or((&body, ""));
        Ok((name.to_string(), seen.to_string()))
    })
    .expect("namespace thread")
}

/// A `whoami` datagram: (pod name, address the pod saw, where the answer
/// came from).
fn whoami_udp(
    ns: &NetNs,
    to: impl Into<IpAddr>,
    port: u16,
) -> std::io::Result<(String, String, SocketAddr)> {
    let to = to.into();
    ns.run(move || {
        let s = UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send_to(b"whoami", (to, port))?;
        let mut buf = [0u8; 256];
        let (n, from) = s.recv_from(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        let (name, seen) = text.split_once(' ').unwrap_or((&text, ""));
        Ok((name.to_string(), seen.to_string(), from))
    })
    .expect("namespace thread")
}

fn http_status(ns: &NetNs, to: Ipv4Addr, port: u16) -> (u16, String) {
    let out = ns
        .command("curl")
        .args(["-s", "-m", "2", "-w", "\n%{http_code}"])
        .arg(format!("http://{to}:{port}/healthz"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn nodeport_with_cluster_policy_reaches_every_pod_and_snats_across_nodes() {
    let t = topology();
    nodeport_cluster_policy(&t);
    t.finish();
}

/// An IPv6 NodePort with externalTrafficPolicy Cluster, through either
/// node: every pod answers; those on the other node see the ingress
/// node's IPv6 address (SNAT), local ones the client's.
#[test]
fn ipv6_nodeport_with_cluster_policy_reaches_every_pod_and_snats_across_nodes() {
    let t = topology6();
    for (via, other_node_pods) in [
        (NODE_A6, vec!["pod-2-0"]),
        (NODE_B6, vec!["pod-1-0", "pod-1-1"]),
    ] {
        let mut seen = BTreeSet::new();
        for i in 0..60 {
            let (name, peer) = whoami(t.client(), via, 30090).unwrap_or_else(|e| {
                panic!(
                    "NodePort [{via}]:30090, request {i}: {e}\n{}\n{}",
                    t.stats(),
                    t.a.agent_log_text()
                )
            });
            let expected = if other_node_pods.contains(&name.as_str()) {
                via
            } else {
                CLIENT6
            };
            assert_eq!(peer, expected.to_string(), "{name} via {via}");
            seen.insert(name);
            if seen.len() == 3 {
                break;
            }
        }
        assert_eq!(seen.len(), 3, "NodePort via {via} reached only {seen:?}");
    }
    let stats = t.b.cli("stats").unwrap();
    assert!(stat(&stats, "snat_new") > 0, "node-b SNATed:\n{stats}");
    t.finish();
}

/// ICMP errors from pods reach external clients: UDP to a port no pod
/// listens on, through node-a's NodePort, comes back as "port
/// unreachable" on the client's connected socket (ECONNREFUSED at once,
/// not a timeout), whether the pod is on node-b (the flow SNATed: the
/// error arrives for node-a's address and port) or on node-a (its source
/// becomes node-a's address, which the stack would drop as a martian),
/// over IPv4 and IPv6.
#[test]
fn icmp_errors_from_pods_reach_external_clients() {
    let t = topology6();
    // Every datagram gets its error: no ICMP rate limit in the pods.
    for c in [&t.a, &t.b] {
        for pod in &c.pods {
            pod.ns
                .run(|| {
                    std::fs::write("/proc/sys/net/ipv4/icmp_ratelimit", "0")?;
                    std::fs::write("/proc/sys/net/ipv6/icmp/ratelimit", "0")
                })
                .unwrap()
                .unwrap();
        }
    }
    for (to, port) in [
        (IpAddr::from(NODE_A), 30083),
        (IpAddr::from(NODE_A), 30084),
        (IpAddr::from(NODE_A6), 30093),
    ] {
        for i in 0..5 {
            // Each datagram from its own port: a new flow each (a port
            // the stack handed out twice would follow its tracked flow).
            let sport = port + 11_000 + i;
            let got = t
                .client()
                .run(move || -> std::io::Result<usize> {
                    let any = if to.is_ipv6() {
                        IpAddr::from(Ipv6Addr::UNSPECIFIED)
                    } else {
                        IpAddr::from(Ipv4Addr::UNSPECIFIED)
                    };
                    let s = UdpSocket::bind((any, sport))?;
                    s.set_read_timeout(Some(TIMEOUT))?;
                    s.connect((to, port))?;
                    s.send(b"anyone?")?;
                    s.recv(&mut [0u8; 64])
                })
                .unwrap();
            match got {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                other => panic!(
                    "{to}:{port} datagram {i}: {other:?}, want ECONNREFUSED\n{}",
                    t.stats()
                ),
            }
        }
    }
    let a = t.a.cli("stats").unwrap();
    assert!(stat(&a, "icmp_translated") >= 15, "node-a:\n{a}");
    assert!(stat(&a, "snat_new") >= 10, "node-a:\n{a}");
    t.finish();
}

/// A pod on node-b reaching node-a's NodePort and given itself: not a
/// hairpin for node-a (the pod is not its own), so the flow is SNATed to
/// node-a like any flow to a backend elsewhere, and every connection gets
/// its answer.
#[test]
fn a_pod_given_itself_through_another_nodes_nodeport_is_answered() {
    let t = topology();
    let mut own = 0;
    for i in 0..30 {
        let (name, peer) = whoami(&t.b.pods[0].ns, NODE_A, 30080)
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", t.stats()));
        if name == "pod-2-0" {
            own += 1;
            assert_eq!(peer, NODE_A.to_string(), "SNATed to node-a");
        }
    }
    assert!(own > 0, "pod-2-0 was never given itself in 30 tries");
    t.finish();
}

/// The same through XDP: what leaves by the interface it came in on
/// (SNAT over to the other node, replies back to the client) is sent by
/// XDP_TX; what goes to local pods is left to tc.
#[test]
fn xdp_sends_external_flows_back_out_of_the_uplink() {
    let t = topology_with(true, &[]);
    for (c, ip) in [(&t.a, NODE_A), (&t.b, NODE_B)] {
        let log = c.agent_log_text();
        assert!(
            log.contains("xdp attached interface=uplink0"),
            "XDP on the default route's interface:\n{log}"
        );
        assert!(
            log.contains(&format!(
                "SNAT address for external traffic to other nodes address={ip}"
            )),
            "SNAT address from the default route's interface:\n{log}"
        );
    }
    nodeport_cluster_policy(&t);
    for c in [&t.a, &t.b] {
        let tx = stat(&c.cli("stats").unwrap(), "xdp_tx");
        assert!(
            tx > 0,
            "{}: no frame left by XDP_TX\n{}",
            c.node.name,
            t.stats()
        );
    }
    for (what, ns) in [
        ("client", t.client()),
        ("pod-1-0", &t.a.pods[0].ns),
        ("pod-2-0", &t.b.pods[0].ns),
    ] {
        assert_eq!(ns.csum_errors(), 0, "{what}: checksum errors");
    }
    t.finish();
}

fn nodeport_cluster_policy(t: &Topology) {
    for (via, other_node_pods, local_pods) in [
        (NODE_A, vec!["pod-2-0"], vec!["pod-1-0", "pod-1-1"]),
        (NODE_B, vec!["pod-1-0", "pod-1-1"], vec!["pod-2-0"]),
    ] {
        let mut seen = BTreeSet::new();
        for i in 0..60 {
            let (name, peer) = whoami(t.client(), via, 30080).unwrap_or_else(|e| {
                panic!("NodePort {via}:30080, request {i}: {e}\n{}", t.stats())
            });
            if other_node_pods.contains(&name.as_str()) {
                // externalTrafficPolicy Cluster: SNATed to the ingress node.
                assert_eq!(peer, via.to_string(), "{name} via {via}");
            } else {
                assert!(local_pods.contains(&name.as_str()), "unknown pod {name}");
                // A local backend sees the client itself.
                assert_eq!(peer, CLIENT.to_string(), "{name} via {via}");
            }
            seen.insert(name);
            if seen.len() == 3 {
                break;
            }
        }
        assert_eq!(seen.len(), 3, "NodePort via {via} reached only {seen:?}");
        // UDP: the answer comes from the NodePort the client asked.
        let mut seen = BTreeSet::new();
        for i in 0..60 {
            let (name, peer, from) = whoami_udp(t.client(), via, 30080).unwrap_or_else(|e| {
                panic!("UDP NodePort {via}:30080, datagram {i}: {e}\n{}", t.stats())
            });
            assert_eq!(from, SocketAddr::from((via, 30080)));
            if other_node_pods.contains(&name.as_str()) {
                assert_eq!(peer, via.to_string(), "{name} via {via} (UDP)");
            }
            seen.insert(name);
            if seen.len() == 3 {
                break;
            }
        }
        assert_eq!(
            seen.len(),
            3,
            "UDP NodePort via {via} reached only {seen:?}"
        );
    }
    let stats = t.b.cli("stats").unwrap();
    let snat: u64 = stat(&stats, "snat_new");
    assert!(snat > 0, "node-b counted no SNATed flow:\n{stats}");
    // From node-a itself (its socket hooks), to its own address's NodePort.
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let out =
            t.a.node_command("curl")
                .args(["-s", "-m", "2"])
                .arg(format!("http://{NODE_A}:30080/whoami"))
                .output()
                .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let name = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            !name.is_empty(),
            "node-a to its own NodePort, request {i}: no answer"
        );
        seen.insert(name);
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "node-a's own NodePort reached only {seen:?}");
}

fn stat(table: &str, name: &str) -> u64 {
    table
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == name).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

#[test]
fn local_policy_keeps_the_client_address_and_only_nodes_with_endpoints_answer() {
    let t = topology();
    for i in 0..10 {
        let (name, peer) =
            whoami(t.client(), NODE_A, 30081).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (name.as_str(), peer.as_str()),
            ("pod-1-0", CLIENT.to_string().as_str())
        );
        let (name, peer) = whoami(t.client(), LB_LOCAL, 8080)
            .unwrap_or_else(|e| panic!("LB IP, request {i}: {e}"));
        assert_eq!(
            (name.as_str(), peer.as_str()),
            ("pod-1-0", CLIENT.to_string().as_str())
        );
    }
    // node-b has no endpoint of example-service: it answers nothing.
    let err = whoami(t.client(), NODE_B, 30081).expect_err("node-b must not answer");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        "node-b should drop silently, got {err}"
    );
    assert!(stat(&t.b.cli("stats").unwrap(), "drop_no_local_backend") > 0);
    // healthCheckNodePort, kube-proxy's answers.
    let (code, body) = http_status(t.client(), NODE_A, 30500);
    assert_eq!(code, 200, "node-a health check: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["localEndpoints"], 1);
    assert_eq!(json["service"]["name"], "example-service");
    assert_eq!(json["service"]["namespace"], "default");
    let (code, body) = http_status(t.client(), NODE_B, 30500);
    assert_eq!(code, 503, "node-b health check: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["localEndpoints"], 0);
    t.finish();
}

#[test]
fn external_ips_and_source_ranges() {
    let t = topology();
    // my-service's only pod runs on node-b; its external IP leads to
    // node-a, which SNATs the flow over to node-b.
    for i in 0..5 {
        let (name, peer) =
            whoami(t.client(), EXTERNAL_IP, 80).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (name.as_str(), peer.as_str()),
            ("pod-2-0", NODE_A.to_string().as_str())
        );
    }
    // lb-ranges admits 192.168.50.100/32 only.
    for i in 0..5 {
        let (name, _) =
            whoami(t.client(), LB_RANGES, 80).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(name, "pod-1-1");
    }
    let outsider = &t.clients[1];
    whoami(outsider, LB_RANGES, 80).expect_err("a source outside loadBalancerSourceRanges");
    assert!(stat(&t.a.cli("stats").unwrap(), "drop_source_range") > 0);
    // The ranges guard the load balancer's address only, not the
    // NodePort (as with kube-proxy).
    let (name, _) = whoami(outsider, NODE_A, 30082).expect("NodePort of lb-ranges");
    assert_eq!(name, "pod-1-1");
    t.finish();
}

/// Packets an interface sent (its kernel's counter, from `ip -s link` in
/// its namespace).
fn tx_packets(ns: &NetNs, ifname: &str) -> u64 {
    let out = ns
        .ip(&["-s", "-o", "link", "show", ifname])
        .expect("ip -s link");
    // "... TX: bytes packets ... \    <bytes> <packets> ..."
    let tx = out.split("TX:").nth(1).expect("TX counters");
    tx.split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok())
        .nth(1)
        .expect("TX packets")
}

/// Direct server return (`--lb-mode hybrid`: DSR for TCP, SNAT for
/// UDP). my-service's pod runs on node-b and its external IP leads to
/// node-a: node-a sends TCP flows to node-b in IPIP, node-b answers the
/// client itself (the pod sees the client's address); node-a carries no
/// reply. UDP stays SNATed through node-a.
#[test]
fn dsr_replies_leave_the_backends_node_and_keep_the_client_address() {
    let t = topology_with(false, &["--lb-mode", "hybrid"]);
    let counts = || {
        (
            tx_packets(&t.a.node, "uplink0"),
            tx_packets(&t.b.node, "uplink0"),
            tx_packets(t.client(), "eth0"),
        )
    };
    let before = counts();
    for i in 0..10 {
        let (name, peer) = whoami(t.client(), EXTERNAL_IP, 80)
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", t.stats()));
        assert_eq!(
            (name.as_str(), peer.as_str()),
            ("pod-2-0", CLIENT.to_string().as_str()),
            "DSR keeps the client's address"
        );
    }
    let after = counts();
    let (a_tx, b_tx, client_tx) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    // node-a forwarded what the client sent (and perhaps ARP or
    // neighbour discovery frames of its own), no reply.
    assert!(
        a_tx <= client_tx + 5,
        "node-a sent {a_tx} packets for the client's {client_tx}: replies went through it"
    );
    // The replies (at least one per request) left node-b.
    assert!(b_tx >= 10, "node-b sent only {b_tx} packets");
    let (a, b) = (t.a.cli("stats").unwrap(), t.b.cli("stats").unwrap());
    assert!(stat(&a, "dsr_new") >= 10, "node-a:\n{a}");
    assert_eq!(stat(&a, "revnat"), 0, "node-a translated replies:\n{a}");
    assert!(stat(&b, "dsr_decap") > 0, "node-b:\n{b}");
    assert!(stat(&b, "revnat") > 0, "node-b:\n{b}");
    // UDP: SNAT through node-a, as hybrid says.
    for i in 0..3 {
        let (name, peer, from) = whoami_udp(t.client(), EXTERNAL_IP, 80)
            .unwrap_or_else(|e| panic!("UDP datagram {i}: {e}\n{}", t.stats()));
        assert_eq!(
            (name.as_str(), peer.as_str()),
            ("pod-2-0", NODE_A.to_string().as_str())
        );
        assert_eq!(from, SocketAddr::from((EXTERNAL_IP, 80)));
    }
    t.finish();
}

/// IPv6 direct server return (`--lb-mode hybrid`): flows through node-a's
/// IPv6 NodePort to the pod on node-b go there in IPv6-in-IPv6 and are
/// answered by node-b straight to the client, which the pod sees; local
/// pods are DNATed as always; UDP stays SNATed through node-a.
#[test]
fn ipv6_dsr_replies_leave_the_backends_node_and_keep_the_client_address() {
    let t = build(false, &["--lb-mode", "hybrid"], true);
    let mut remote = 0;
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let (name, peer) = whoami(t.client(), NODE_A6, 30090)
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", t.stats()));
        assert_eq!(peer, CLIENT6.to_string(), "{name}: DSR keeps the client");
        remote += usize::from(name == "pod-2-0");
        seen.insert(name);
        if seen.len() == 3 && remote >= 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "reached only {seen:?}");
    let (a, b) = (t.a.cli("stats").unwrap(), t.b.cli("stats").unwrap());
    assert!(stat(&a, "dsr_new") >= remote as u64, "node-a:\n{a}");
    assert_eq!(stat(&a, "snat_new"), 0, "node-a SNATed TCP:\n{a}");
    assert!(stat(&b, "dsr_decap") >= remote as u64, "node-b:\n{b}");
    assert!(stat(&b, "revnat") > 0, "node-b answered nothing:\n{b}");
    // UDP: SNAT through node-a for the remote pod, as hybrid says.
    let mut snated = false;
    for i in 0..30 {
        let (name, peer, from) = whoami_udp(t.client(), NODE_A6, 30090)
            .unwrap_or_else(|e| panic!("UDP datagram {i}: {e}\n{}", t.stats()));
        assert_eq!(from, SocketAddr::from((NODE_A6, 30090)));
        if name == "pod-2-0" {
            assert_eq!(peer, NODE_A6.to_string(), "UDP to node-b is SNATed");
            snated = true;
            break;
        }
        assert_eq!(peer, CLIENT6.to_string(), "{name} is local to node-a");
    }
    assert!(snated, "no datagram reached pod-2-0");
    t.finish();
}

/// A kept-alive connection from `client:sport` (the port reusable at
/// once, as a client that reuses its tuples does).
fn conn_from(ns: &NetNs, sport: u16, to: Ipv4Addr, port: u16) -> std::io::Result<Conn> {
    ns.run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((CLIENT, sport)).into())?;
        s.connect_timeout(&SocketAddr::from((to, port)).into(), TIMEOUT)?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(TIMEOUT))?;
        Conn::new(s)
    })
    .expect("namespace thread")
}

/// Closes `c` with a RST: no TIME_WAIT on either end, so the same client
/// tuple can connect again at once.
fn reset(c: Conn) {
    let s = Socket::from(c.into_stream());
    s.set_linger(Some(Duration::ZERO)).unwrap();
}

/// SNAT source ports come back from closed flows, and a client reusing an
/// old tuple never lands on a port another flow holds by then (bench 2b
/// found connections timing out once ports were recycled). Two ports,
/// free again 1 s after their flow closed; my-service's pod is on
/// node-b, so every flow through node-a is SNATed.
#[test]
fn recycled_snat_ports_never_collide_with_live_flows() {
    let t = topology_with(
        false,
        &[
            "--snat-port-range",
            "40000-40001",
            "--snat-closed-timeout-secs",
            "1",
        ],
    );
    let client = t.client();
    let get = |c: &mut Conn, what: &str| {
        let body = c
            .get()
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", t.stats()));
        assert_eq!(String::from_utf8_lossy(&body).trim(), "pod-2-0", "{what}");
    };
    let once = |sport: u16, what: &str| {
        let mut c = conn_from(client, sport, EXTERNAL_IP, 80)
            .unwrap_or_else(|e| panic!("{what}: connect: {e}\n{}", t.stats()));
        get(&mut c, what);
        reset(c);
    };
    // Both ports taken by flows that then close.
    once(41001, "first flow");
    once(41002, "second flow");
    std::thread::sleep(Duration::from_millis(1500));
    // A live flow takes one of them back.
    let mut live = conn_from(client, 41003, EXTERNAL_IP, 80)
        .unwrap_or_else(|e| panic!("live flow: connect: {e}\n{}", t.stats()));
    get(&mut live, "live flow");
    // The old tuples again: neither may land on the live flow's port.
    for (sport, what) in [(41001, "first tuple again"), (41002, "second tuple again")] {
        std::thread::sleep(Duration::from_millis(1500));
        once(sport, what);
    }
    get(&mut live, "live flow, after the others");
    let stats = t.a.cli("stats").unwrap();
    assert_eq!(stat(&stats, "drop_snat"), 0, "node-a:\n{stats}");
    // Three flows, then at least the tuple whose port the live flow took
    // starts over (the other may keep its own port).
    assert!(stat(&stats, "snat_new") >= 4, "node-a:\n{stats}");
    drop(live);
    t.finish();
}
