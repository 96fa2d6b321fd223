//! North-south through BPF_PROG_TEST_RUN, tc and XDP: NodePort DNAT and
//! SNAT, the reverse translation of replies, the next hop written from
//! the FIB (MACs, TTL), checksums recomputed exactly, and the drops
//! (externalTrafficPolicy Local without endpoints, loadBalancerSourceRanges);
//! SCTP NodePort SNATed as TCP and UDP are, its CRC-32C kept right;
//! IPv6 NodePort to another node's pod, SNATed as IPv4 is.
//!
//! The test's thread enters a namespace of its own, shaped like node-b of
//! the end-to-end test: `wire0` on 192.168.50.0/24 (node address
//! 192.168.50.2, node-a at .1 with node-a's pods 10.244.1.0/24 behind it,
//! the client at .100) and `pod0` towards a local pod 10.244.2.5. The FIB
//! lookups the programs make resolve there, not in the machine's namespace.
mod common;

use std::net::{IpAddr, Ipv4Addr};

use aya::programs::{Xdp, XdpMode};
use common::datapath::{Datapath, Hook, Verdict};
use ferrolb_tests::fabric::static_node::{
    self, CLIENT, CLIENT_MAC, CLIENT6, LOCAL_POD, NODE, NODE6, OUTSIDER, PEER_NODE as NODE_A,
    PEER_NODE_MAC as NODE_A_MAC, PEER_NODE6, POD_MAC, REMOTE_POD, REMOTE_POD6, WIRE_MAC,
};
use ferrolb_tests::netns::NetNs;
use ferrolb_tests::packet::{self, Frame, SCTP_INIT, TCP_ACK, TCP_SYN};
use ferrolb_tests::packet6::{
    Frame6, addrs6, checksum_valid6, icmp6_checksum_valid, icmp6_error, quoted6,
};
use lb_agent::datapath::PROG_XDP_PASS;
use lb_agent::model::{BackendAddr, FrontendKey, FrontendKind, FrontendState, Proto};
use lb_common::{SVC_FLAG_EXTERNAL, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_SOURCE_RANGES};

const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 30);

/// The namespace the test's thread lives in; `wire0`'s ifindex.
fn enter_node(tag: &str) -> (NetNs, u32) {
    let (ns, ifindex) =
        static_node::create(&format!("flbdp{}-{tag}", std::process::id() % 100_000)).unwrap();
    ns.enter().unwrap();
    (ns, ifindex)
}

fn be(addr: Ipv4Addr, local: bool) -> BackendAddr {
    BackendAddr {
        addr: addr.into(),
        port: 9376,
        local,
    }
}

fn frontend(
    addr: Ipv4Addr,
    port: u16,
    proto: Proto,
    kind: FrontendKind,
    flags: u16,
    backends: Vec<BackendAddr>,
) -> (FrontendKey, FrontendState) {
    (
        FrontendKey {
            addr: addr.into(),
            port,
            proto,
        },
        FrontendState {
            name: format!("default/{kind}-{port}"),
            backends,
            kind,
            flags,
            source_ranges: if flags & SVC_FLAG_SOURCE_RANGES != 0 {
                vec!["192.168.50.100/32".parse().unwrap()]
            } else {
                Vec::new()
            },
            ..Default::default()
        },
    )
}

/// The node's datapath: NodePort 30080 (TCP and UDP) to node-a's pod,
/// 30081 to this node's pod, 30082 ETP Local without a local endpoint,
/// and a LoadBalancer IP admitting 192.168.50.100/32 only.
fn node_datapath(tag: &str, ifindex: u32) -> Datapath {
    let ext = SVC_FLAG_EXTERNAL;
    let any = Ipv4Addr::UNSPECIFIED;
    let mut dp = Datapath::new(tag, &[]);
    let mut states = vec![
        frontend(
            any,
            30080,
            Proto::Tcp,
            FrontendKind::NodePort,
            ext,
            vec![be(REMOTE_POD, false)],
        ),
        frontend(
            any,
            30080,
            Proto::Udp,
            FrontendKind::NodePort,
            ext,
            vec![be(REMOTE_POD, false)],
        ),
        frontend(
            any,
            30080,
            Proto::Sctp,
            FrontendKind::NodePort,
            ext,
            vec![be(REMOTE_POD, false)],
        ),
        frontend(
            any,
            30081,
            Proto::Tcp,
            FrontendKind::NodePort,
            ext,
            vec![be(LOCAL_POD, true)],
        ),
        frontend(
            any,
            30082,
            Proto::Tcp,
            FrontendKind::NodePort,
            ext | SVC_FLAG_LOCAL_ONLY,
            vec![],
        ),
        frontend(
            LB_IP,
            80,
            Proto::Tcp,
            FrontendKind::LoadBalancer,
            ext | SVC_FLAG_SOURCE_RANGES,
            vec![be(LOCAL_POD, true)],
        ),
    ];
    // The same NodePort over IPv6, to node-a's pod's IPv6 address.
    for proto in [Proto::Tcp, Proto::Udp] {
        let (key, mut state) = frontend(any, 30080, proto, FrontendKind::NodePort, ext, vec![]);
        state.backends = vec![BackendAddr {
            addr: REMOTE_POD6.into(),
            port: 9376,
            local: false,
        }];
        states.push((
            FrontendKey {
                addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                ..key
            },
            state,
        ));
    }
    dp.program_states(&states);
    dp.ext
        .sync_node_addrs(&[NODE.into(), NODE6.into()].into())
        .unwrap();
    dp.ext.set_config(&config((61000, 65535), 0)).unwrap();
    dp.xdp_ifindex = ifindex;
    dp
}

/// The node's settings: SNAT to [`NODE`] from `ports`, closed flows
/// keeping theirs `closed_ticks` (0: the default).
fn config(ports: (u16, u16), closed_ticks: u32) -> lb_common::Config {
    lb_common::Config {
        nodeport_min: 30000,
        nodeport_max: 32767,
        snat_port_min: ports.0,
        snat_port_max: ports.1,
        snat_v4: u32::from_ne_bytes(NODE.octets()),
        snat_closed_ticks: closed_ticks,
        flags: 0,
        snat_v6: words6(NODE6),
    }
}

/// An IPv6 address as the maps hold it: four words in network order.
fn words6(a: std::net::Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| u32::from_ne_bytes(o[4 * i..4 * i + 4].try_into().unwrap()))
}

/// XDP test runs on `wire0` need its receive queue registered, which a
/// veth does once an XDP program is attached: the pass program is.
fn register_xdp_rxq(dp: &mut Datapath) {
    let prog: &mut Xdp = dp
        .ebpf
        .program_mut(PROG_XDP_PASS)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    prog.attach("wire0", XdpMode::default()).unwrap();
}

fn macs(f: &[u8]) -> ([u8; 6], [u8; 6]) {
    (f[0..6].try_into().unwrap(), f[6..12].try_into().unwrap())
}

fn ttl(f: &[u8]) -> u8 {
    f[packet::ETH + 8]
}

/// Where the translated packet went, in both hooks' terms.
fn sent(hook: Hook) -> Verdict {
    match hook {
        Hook::Tc => Verdict::Redirect,
        Hook::Xdp => Verdict::Tx,
    }
}

#[test]
fn nodeport_to_another_node_is_snated_and_replies_are_translated_back() {
    for (hook, tag) in [(Hook::Tc, "tc"), (Hook::Xdp, "xdp")] {
        let (_ns, wire) = enter_node(tag);
        let mut dp = node_datapath(&format!("np-snat-{tag}"), wire);
        if hook == Hook::Xdp {
            register_xdp_rxq(&mut dp);
        }
        // SCTP too: its SNAT port changes the ports, so its checksum.
        for proto in [Proto::Tcp, Proto::Udp, Proto::Sctp] {
            let sport = 40000 + proto as u16;
            let request = |flags: u8| match proto {
                Proto::Udp => Frame::udp((CLIENT, sport), (NODE, 30080), b"whoami").build(),
                Proto::Sctp => Frame::sctp((CLIENT, sport), (NODE, 30080), &SCTP_INIT).build(),
                _ => Frame::tcp((CLIENT, sport), (NODE, 30080), flags).build(),
            };
            let (v, out) = dp.run_on(hook, &request(TCP_SYN));
            assert_eq!(v, sent(hook), "{hook:?} {proto}: first packet");
            let (src, dst) = (packet::src(&out), packet::dst(&out));
            assert_eq!(dst, (REMOTE_POD, 9376), "{hook:?} {proto}: DNAT");
            assert_eq!(src.0, NODE, "{hook:?} {proto}: SNAT to the node");
            assert!((61000..=65535).contains(&src.1), "SNAT port {}", src.1);
            assert!(packet::checksums_valid(&out), "{hook:?} {proto}: checksums");
            assert_eq!(macs(&out), (NODE_A_MAC, WIRE_MAC), "next hop node-a");
            assert_eq!(ttl(&out), 63);
            // The flow keeps its translation.
            let (v, again) = dp.run_on(hook, &request(TCP_ACK));
            assert_eq!(v, sent(hook));
            assert_eq!((packet::src(&again), packet::dst(&again)), (src, dst));
            assert!(packet::checksums_valid(&again));
            // The pod's reply goes back to the client from the NodePort.
            let reply = match proto {
                Proto::Udp => Frame::udp((REMOTE_POD, 9376), src, b"pod-1-0").build(),
                Proto::Sctp => Frame::sctp((REMOTE_POD, 9376), src, &SCTP_INIT).build(),
                _ => Frame::tcp((REMOTE_POD, 9376), src, TCP_SYN | TCP_ACK).build(),
            };
            let (v, back) = dp.run_on(hook, &reply);
            assert_eq!(v, sent(hook), "{hook:?} {proto}: reply");
            assert_eq!(packet::src(&back), (NODE, 30080));
            assert_eq!(packet::dst(&back), (CLIENT, sport));
            assert!(
                packet::checksums_valid(&back),
                "{hook:?} {proto}: reply checksums"
            );
            assert_eq!(macs(&back), (CLIENT_MAC, WIRE_MAC));
        }
    }
}

/// The same over IPv6: DNAT to node-a's pod, SNAT to the node's IPv6
/// address from the SNAT port range, hop limit and MACs from the FIB,
/// checksums exact, and the reply translated back to the client.
#[test]
fn ipv6_nodeport_to_another_node_is_snated_and_replies_are_translated_back() {
    for (hook, tag) in [(Hook::Tc, "tc6"), (Hook::Xdp, "xdp6")] {
        let (_ns, wire) = enter_node(tag);
        let mut dp = node_datapath(&format!("np-snat-{tag}"), wire);
        if hook == Hook::Xdp {
            register_xdp_rxq(&mut dp);
        }
        for proto in [Proto::Tcp, Proto::Udp] {
            let sport = 42000 + proto as u16;
            let request = |flags: u8| match proto {
                Proto::Udp => Frame6::udp((CLIENT6, sport), (NODE6, 30080), b"whoami").build(),
                _ => Frame6::tcp((CLIENT6, sport), (NODE6, 30080), flags).build(),
            };
            let (v, out) = dp.run_on(hook, &request(TCP_SYN));
            assert_eq!(v, sent(hook), "{hook:?} {proto}: first packet");
            let (src, dst) = addrs6(&out);
            assert_eq!(dst, (REMOTE_POD6, 9376), "{hook:?} {proto}: DNAT");
            assert_eq!(src.0, NODE6, "{hook:?} {proto}: SNAT to the node");
            assert!((61000..=65535).contains(&src.1), "SNAT port {}", src.1);
            assert!(checksum_valid6(&out), "{hook:?} {proto}: checksum");
            assert_eq!(macs(&out), (NODE_A_MAC, WIRE_MAC), "next hop node-a");
            assert_eq!(out[packet::ETH + 7], 63, "hop limit");
            let (v, again) = dp.run_on(hook, &request(TCP_ACK));
            assert_eq!(v, sent(hook));
            assert_eq!(addrs6(&again), (src, dst), "the flow keeps its translation");
            let reply = match proto {
                Proto::Udp => Frame6::udp((REMOTE_POD6, 9376), src, b"pod-1-0").build(),
                _ => Frame6::tcp((REMOTE_POD6, 9376), src, TCP_SYN | TCP_ACK).build(),
            };
            let (v, back) = dp.run_on(hook, &reply);
            assert_eq!(v, sent(hook), "{hook:?} {proto}: reply");
            assert_eq!(addrs6(&back), ((NODE6, 30080), (CLIENT6, sport)));
            assert!(checksum_valid6(&back), "{hook:?} {proto}: reply checksum");
            assert_eq!(macs(&back), (CLIENT_MAC, WIRE_MAC));
        }
    }
}

/// ICMP errors about a SNATed flow, translated at both ends (tc): a
/// "fragmentation needed" from a router towards node-a's pod about the
/// SNATed request reaches the client about the request it sent; a port
/// unreachable from the pod itself comes from the NodePort; one from the
/// client's side about a reply reaches the pod about the packet it sent.
/// Without this, path MTU discovery through a NodePort fails either way.
#[test]
fn icmp_errors_about_snated_flows_are_translated_at_both_ends() {
    const FRAG_NEEDED: (u8, u8) = (3, 4);
    const PORT_UNREACH: (u8, u8) = (3, 3);
    let mtu = [0, 0, 0x05, 0x00];
    let (_ns, wire) = enter_node("icmp");
    let mut dp = node_datapath("np-icmp", wire);
    for proto in [Proto::Tcp, Proto::Udp] {
        let sport = 44000 + proto as u16;
        let request = match proto {
            Proto::Udp => Frame::udp((CLIENT, sport), (NODE, 30080), b"whoami").build(),
            _ => Frame::tcp((CLIENT, sport), (NODE, 30080), TCP_SYN).build(),
        };
        let (_, out) = dp.run_on(Hook::Tc, &request);
        let snat = packet::src(&out);
        assert_eq!(snat.0, NODE, "{proto}: SNATed");
        // Towards the pod: from a router, and from the pod itself.
        for (from, ty) in [(NODE_A, FRAG_NEEDED), (REMOTE_POD, PORT_UNREACH)] {
            let err = packet::icmp_error(from, NODE, ty, mtu, &out, 48);
            let (v, got) = dp.run_on(Hook::Tc, &err);
            assert_eq!(v, Verdict::Redirect, "{proto} {ty:?}: routed");
            assert_eq!(macs(&got), (CLIENT_MAC, WIRE_MAC));
            assert_eq!(ttl(&got), 63);
            let sender = if from == REMOTE_POD { NODE } else { from };
            assert_eq!(
                (packet::src(&got).0, packet::dst(&got).0),
                (sender, CLIENT),
                "{proto} {ty:?}: outer addresses"
            );
            assert!(packet::checksums_valid(&got), "{proto} {ty:?}: ICMP");
            let q = packet::quoted(&got);
            assert_eq!(
                (packet::src(&q), packet::dst(&q)),
                ((CLIENT, sport), (NODE, 30080)),
                "{proto} {ty:?}: the quote is what the client sent"
            );
            assert!(packet::checksums_valid(&q), "{proto} {ty:?}: quote");
        }
        // Towards the client: an error about the reply.
        let reply = match proto {
            Proto::Udp => Frame::udp((REMOTE_POD, 9376), snat, b"pod-1-0").build(),
            _ => Frame::tcp((REMOTE_POD, 9376), snat, TCP_SYN | TCP_ACK).build(),
        };
        let (_, back) = dp.run_on(Hook::Tc, &reply);
        assert_eq!(packet::dst(&back), (CLIENT, sport));
        let err = packet::icmp_error(OUTSIDER, NODE, FRAG_NEEDED, mtu, &back, 48);
        let (v, got) = dp.run_on(Hook::Tc, &err);
        assert_eq!(v, Verdict::Redirect, "{proto}: routed");
        assert_eq!(macs(&got), (NODE_A_MAC, WIRE_MAC));
        assert_eq!(
            (packet::src(&got).0, packet::dst(&got).0),
            (OUTSIDER, REMOTE_POD)
        );
        assert!(packet::checksums_valid(&got), "{proto}: ICMP");
        let q = packet::quoted(&got);
        assert_eq!(
            (packet::src(&q), packet::dst(&q)),
            ((REMOTE_POD, 9376), snat),
            "{proto}: the quote is what the pod sent"
        );
        assert!(packet::checksums_valid(&q), "{proto}: quote");
    }
    // IPv6: Packet Too Big both ways.
    let request = Frame6::tcp((CLIENT6, 45000), (NODE6, 30080), TCP_SYN).build();
    let (_, out) = dp.run_on(Hook::Tc, &request);
    let snat = addrs6(&out).0;
    let router = PEER_NODE6;
    let ptb = icmp6_error(router, NODE6, 2, 1280u32.to_be_bytes(), &out);
    let (v, got) = dp.run_on(Hook::Tc, &ptb);
    assert_eq!((v, macs(&got)), (Verdict::Redirect, (CLIENT_MAC, WIRE_MAC)));
    assert_eq!(&got[packet::ETH + 24..packet::ETH + 40], &CLIENT6.octets());
    assert!(icmp6_checksum_valid(&got), "ICMPv6 checksum");
    let q = quoted6(&got);
    assert_eq!(addrs6(&q), ((CLIENT6, 45000), (NODE6, 30080)));
    assert!(checksum_valid6(&q), "quoted checksum");
    let reply = Frame6::tcp((REMOTE_POD6, 9376), snat, TCP_SYN | TCP_ACK).build();
    let (_, back) = dp.run_on(Hook::Tc, &reply);
    let ptb = icmp6_error(router, NODE6, 2, 1280u32.to_be_bytes(), &back);
    let (v, got) = dp.run_on(Hook::Tc, &ptb);
    assert_eq!((v, macs(&got)), (Verdict::Redirect, (NODE_A_MAC, WIRE_MAC)));
    assert_eq!(
        &got[packet::ETH + 24..packet::ETH + 40],
        &REMOTE_POD6.octets()
    );
    assert!(icmp6_checksum_valid(&got), "ICMPv6 checksum");
    let q = quoted6(&got);
    assert_eq!(addrs6(&q), ((REMOTE_POD6, 9376), snat));
    assert!(checksum_valid6(&q), "quoted checksum");
    assert_eq!(dp.stats()["icmp_translated"], 8);
}

#[test]
fn nodeport_to_a_local_pod_keeps_the_client_and_xdp_leaves_it_to_tc() {
    let (_ns, wire) = enter_node("local");
    let mut dp = node_datapath("np-local", wire);
    register_xdp_rxq(&mut dp);
    let syn = Frame::tcp((CLIENT, 41000), (NODE, 30081), TCP_SYN).build();
    // XDP: the next hop is another interface: untouched, for tc.
    let (v, out) = dp.run_on(Hook::Xdp, &syn);
    assert_eq!(v, Verdict::Pass);
    assert_eq!(out, syn);
    let np = FrontendKey {
        addr: Ipv4Addr::UNSPECIFIED.into(),
        port: 30081,
        proto: Proto::Tcp,
    };
    assert_eq!(
        dp.service_packets(&np),
        0,
        "counted where it was translated"
    );
    // tc: translated (the entries XDP made) and redirected to the pod.
    let (v, out) = dp.run_on(Hook::Tc, &syn);
    assert_eq!(v, Verdict::Redirect);
    assert_eq!(dp.service_packets(&np), 1, "counted once");
    assert_eq!(
        packet::src(&out),
        (CLIENT, 41000),
        "the client address is kept"
    );
    assert_eq!(packet::dst(&out), (LOCAL_POD, 9376));
    assert_eq!(macs(&out).0, POD_MAC);
    assert!(packet::checksums_valid(&out));
    // Not a node address: not a NodePort.
    let other = Frame::tcp(
        (CLIENT, 41001),
        (Ipv4Addr::new(192, 168, 50, 9), 30081),
        TCP_SYN,
    )
    .build();
    for hook in [Hook::Tc, Hook::Xdp] {
        let (v, out) = dp.run_on(hook, &other);
        assert_eq!((v, out), (Verdict::Pass, other.clone()), "{hook:?}");
    }
}

#[test]
fn local_policy_without_endpoints_and_source_ranges_drop() {
    let (_ns, wire) = enter_node("drops");
    let mut dp = node_datapath("np-drops", wire);
    register_xdp_rxq(&mut dp);
    for hook in [Hook::Tc, Hook::Xdp] {
        let syn = Frame::tcp((CLIENT, 42000), (NODE, 30082), TCP_SYN).build();
        assert_eq!(
            dp.run_on(hook, &syn).0,
            Verdict::Drop,
            "{hook:?}: ETP Local, no endpoint"
        );
        let outsider = Frame::tcp((OUTSIDER, 42001), (LB_IP, 80), TCP_SYN).build();
        assert_eq!(
            dp.run_on(hook, &outsider).0,
            Verdict::Drop,
            "{hook:?}: outside the ranges"
        );
    }
    // Inside the ranges: to the local pod (tc; XDP leaves it to tc).
    let inside = Frame::tcp((CLIENT, 42002), (LB_IP, 80), TCP_SYN).build();
    let (v, out) = dp.run_on(Hook::Tc, &inside);
    assert_eq!(v, Verdict::Redirect);
    assert_eq!(packet::dst(&out), (LOCAL_POD, 9376));
    let stats = dp.stats();
    assert_eq!(stats["drop_no_local_backend"], 2);
    assert_eq!(stats["drop_source_range"], 2);
}

/// Established flows take their next hop from a cache in their SNAT
/// entry, trusted about a second: a neighbour's new MAC reaches them
/// within that, without a FIB lookup per packet meanwhile.
#[test]
fn a_changed_next_hop_reaches_established_flows_within_a_second() {
    for (hook, tag) in [(Hook::Tc, "tc"), (Hook::Xdp, "xdp")] {
        let (ns, wire) = enter_node(&format!("hop{tag}"));
        let mut dp = node_datapath(&format!("np-hop-{tag}"), wire);
        if hook == Hook::Xdp {
            register_xdp_rxq(&mut dp);
        }
        let syn = Frame::tcp((CLIENT, 43000), (NODE, 30080), TCP_SYN).build();
        let ack = Frame::tcp((CLIENT, 43000), (NODE, 30080), TCP_ACK).build();
        assert_eq!(dp.run_on(hook, &syn).0, sent(hook));
        let (_, out) = dp.run_on(hook, &ack);
        assert_eq!(macs(&out).0, NODE_A_MAC);
        let moved = [0x02, 0, 0, 0, 0, 0x0b];
        ns.ip(&[
            "neigh",
            "replace",
            "192.168.50.1",
            "lladdr",
            "02:00:00:00:00:0b",
            "dev",
            "wire0",
            "nud",
            "permanent",
        ])
        .unwrap();
        let start = std::time::Instant::now();
        loop {
            let (v, out) = dp.run_on(hook, &ack);
            assert_eq!(v, sent(hook));
            if macs(&out).0 == moved {
                break;
            }
            assert_eq!(macs(&out).0, NODE_A_MAC, "{hook:?}: the cached next hop");
            assert!(
                start.elapsed() < std::time::Duration::from_millis(1500),
                "{hook:?}: the new MAC was not used within 1.5 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            start.elapsed() > std::time::Duration::from_millis(100),
            "{hook:?}: the next hop was looked up again at once (no cache)"
        );
    }
}

/// SNAT ports come back once their flow is over: with two ports, a third
/// concurrent flow is dropped (counted), and once one flow has closed (a
/// FIN from the backend) and its closed period passed, a new flow takes
/// its port while the other flow keeps its own.
#[test]
fn snat_ports_of_closed_flows_are_given_to_new_flows() {
    for (hook, tag) in [(Hook::Tc, "tc"), (Hook::Xdp, "xdp")] {
        let (_ns, wire) = enter_node(&format!("ports{tag}"));
        let mut dp = node_datapath(&format!("np-ports-{tag}"), wire);
        if hook == Hook::Xdp {
            register_xdp_rxq(&mut dp);
        }
        // Two ports; one tick: the closed period passes at once.
        dp.ext.set_config(&config((61000, 61001), 1)).unwrap();
        let syn = |sport: u16| Frame::tcp((CLIENT, sport), (NODE, 30080), TCP_SYN).build();
        let (v, a) = dp.run_on(hook, &syn(44000));
        assert_eq!(v, sent(hook));
        let (v, b) = dp.run_on(hook, &syn(44001));
        assert_eq!(v, sent(hook));
        let (pa, pb) = (packet::src(&a).1, packet::src(&b).1);
        assert_ne!(pa, pb);
        assert_eq!(
            dp.run_on(hook, &syn(44002)).0,
            Verdict::Drop,
            "{hook:?}: no free port"
        );
        assert_eq!(dp.stats()["drop_snat"], 1);
        // The backend closes flow a.
        let fin = Frame::tcp((REMOTE_POD, 9376), (NODE, pa), packet::TCP_FIN | TCP_ACK).build();
        assert_eq!(dp.run_on(hook, &fin).0, sent(hook));
        // The coarse clock moves once per jiffy.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (v, c) = dp.run_on(hook, &syn(44002));
        assert_eq!(
            v,
            sent(hook),
            "{hook:?}: the closed flow's port is given again"
        );
        assert_eq!(packet::src(&c), (NODE, pa));
        // Flow b is untouched.
        let ack = Frame::tcp((CLIENT, 44001), (NODE, 30080), TCP_ACK).build();
        let (v, b2) = dp.run_on(hook, &ack);
        assert_eq!(v, sent(hook));
        assert_eq!(packet::src(&b2), (NODE, pb));
    }
}
