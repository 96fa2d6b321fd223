//! The tc and XDP programs run on crafted packets through
//! BPF_PROG_TEST_RUN: exact rewritten headers, valid checksums, untouched
//! pass-through, flows shared between the hooks. Maps are filled by the
//! agent's own reconcile path. Each case is a row.
mod common;

use std::net::Ipv4Addr;

use common::datapath::{Datapath, HOOKS, Hook, Verdict};
use ferrolb_tests::packet::{self, Frame, TCP_ACK, TCP_RST, TCP_SYN};
use lb_agent::model::{BackendAddr, FrontendKey, Proto};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 176);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 100);

fn be_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 5 + i)
}

fn be(i: u8) -> BackendAddr {
    BackendAddr {
        addr: be_ip(i).into(),
        port: 9376,
        local: false,
    }
}

fn hostnames() -> (FrontendKey, Vec<BackendAddr>) {
    (
        FrontendKey {
            addr: VIP.into(),
            port: 80,
            proto: Proto::Tcp,
        },
        vec![be(0), be(1), be(2)],
    )
}

fn udp_one() -> (FrontendKey, Vec<BackendAddr>) {
    (
        FrontendKey {
            addr: VIP.into(),
            port: 53,
            proto: Proto::Udp,
        },
        vec![be(0)],
    )
}

fn empty(proto: Proto, port: u16) -> (FrontendKey, Vec<BackendAddr>) {
    (
        FrontendKey {
            addr: EMPTY_VIP.into(),
            port,
            proto,
        },
        vec![],
    )
}

/// Bytes outside the rewritten fields must be identical.
fn assert_only_changed(before: &[u8], after: &[u8], allowed: &[std::ops::Range<usize>]) {
    assert_eq!(before.len(), after.len());
    for i in 0..before.len() {
        if before[i] != after[i] {
            assert!(
                allowed.iter().any(|r| r.contains(&i)),
                "byte {i} changed: {:#x} -> {:#x}",
                before[i],
                after[i]
            );
        }
    }
}

const IP_CSUM: std::ops::Range<usize> = 24..26;
const IP_SRC: std::ops::Range<usize> = 26..30;
const IP_DST: std::ops::Range<usize> = 30..34;
const SPORT: std::ops::Range<usize> = 34..36;
const DPORT: std::ops::Range<usize> = 36..38;
const TCP_CSUM: std::ops::Range<usize> = 50..52;
const UDP_CSUM: std::ops::Range<usize> = 40..42;

#[test]
fn pass_through_cases_are_byte_identical() {
    let mut dp = Datapath::new("dp-pass", &[hostnames()]);
    let mut arp = Frame::tcp((CLIENT, 1), (VIP, 80), 0).build();
    arp[12] = 0x08;
    arp[13] = 0x06;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "tcp to a pod ip",
            Frame::tcp((CLIENT, 40000), (be_ip(0), 9376), TCP_SYN).build(),
        ),
        (
            "tcp to the vip on another port",
            Frame::tcp((CLIENT, 40000), (VIP, 81), TCP_SYN).build(),
        ),
        (
            "udp to the vip on a tcp-only port",
            Frame::udp((CLIENT, 40000), (VIP, 80), b"x").build(),
        ),
        ("arp", arp),
        (
            "truncated tcp header",
            Frame::tcp((CLIENT, 1), (VIP, 80), TCP_SYN).build()[..44].to_vec(),
        ),
        (
            "reply with no flow",
            Frame::tcp((be_ip(0), 9376), (CLIENT, 40000), TCP_ACK).build(),
        ),
    ];
    for hook in HOOKS {
        for (what, frame) in &cases {
            let (verdict, out) = dp.run_on(hook, frame);
            assert_eq!(verdict, Verdict::Pass, "{hook:?}: {what}");
            assert_eq!(&out, frame, "{hook:?}: {what}: must pass untouched");
        }
    }
}

#[test]
fn tcp_flow_is_dnated_pinned_and_reverse_natted() {
    let mut dp = Datapath::new("dp-tcp", &[hostnames()]);
    for (hook, sport) in HOOKS.into_iter().zip([40001, 40011]) {
        let syn = Frame::tcp((CLIENT, sport), (VIP, 80), TCP_SYN).build();
        let (verdict, out) = dp.run_on(hook, &syn);
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        let (backend, port) = packet::dst(&out);
        assert!(
            [be(0), be(1), be(2)].iter().any(|b| b.addr == backend),
            "{hook:?}: {backend}"
        );
        assert_eq!(port, 9376);
        assert_eq!(packet::src(&out), (CLIENT, sport));
        assert!(
            packet::checksums_valid(&out),
            "{hook:?}: checksums after DNAT"
        );
        assert_only_changed(&syn, &out, &[IP_CSUM, IP_DST, DPORT, TCP_CSUM]);

        // Every later packet of the flow goes to the same backend.
        for i in 0..50 {
            let mut f = Frame::tcp((CLIENT, sport), (VIP, 80), TCP_ACK);
            f.seq = 1001 + i;
            f.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            let (v, o) = dp.run_on(hook, &f.build());
            assert_eq!(v, Verdict::Pass);
            assert_eq!(
                packet::dst(&o),
                (backend, 9376),
                "{hook:?}: packet {i} changed backend"
            );
            assert!(packet::checksums_valid(&o), "{hook:?}");
        }

        // The backend's reply is rewritten to come from the VIP.
        let reply = Frame::tcp((backend, 9376), (CLIENT, sport), TCP_SYN | TCP_ACK).build();
        let (v, o) = dp.run_on(hook, &reply);
        assert_eq!(v, Verdict::Pass);
        assert_eq!(packet::src(&o), (VIP, 80), "{hook:?}");
        assert_eq!(packet::dst(&o), (CLIENT, sport));
        assert!(
            packet::checksums_valid(&o),
            "{hook:?}: checksums after reverse NAT"
        );
        assert_only_changed(&reply, &o, &[IP_CSUM, IP_SRC, SPORT, TCP_CSUM]);
    }
}

/// A SYN on a tracked tuple: a retransmission keeps its backend; once
/// that backend is gone, a new connection reusing the tuple gets a live
/// one (and its replies translate).
#[test]
fn syn_on_a_tracked_tuple_follows_only_a_live_backend() {
    let mut dp = Datapath::new("dp-syn", &[hostnames()]);
    for (hook, sport) in HOOKS.into_iter().zip([42000, 42001]) {
        let syn = Frame::tcp((CLIENT, sport), (VIP, 80), TCP_SYN).build();
        let (_, out) = dp.run_on(hook, &syn);
        let first = packet::dst(&out);
        for i in 0..20 {
            let (_, o) = dp.run_on(hook, &syn);
            assert_eq!(
                packet::dst(&o),
                first,
                "{hook:?}: retransmitted SYN {i} moved"
            );
        }
        let (k, all) = hostnames();
        let rest: Vec<_> = all.into_iter().filter(|b| b.addr != first.0).collect();
        dp.program(&[(k, rest.clone())]);
        let (v, o) = dp.run_on(hook, &syn);
        assert_eq!(v, Verdict::Pass);
        let now = packet::dst(&o);
        assert!(
            rest.iter()
                .any(|b| (b.addr, b.port) == (now.0.into(), now.1)),
            "{hook:?}: SYN after {first:?} went to {now:?}"
        );
        assert!(packet::checksums_valid(&o), "{hook:?}");
        let reply = Frame::tcp(now, (CLIENT, sport), TCP_SYN | TCP_ACK).build();
        let (_, o) = dp.run_on(hook, &reply);
        assert_eq!(packet::src(&o), (VIP, 80), "{hook:?}: reply from {now:?}");
        dp.program(&[hostnames()]);
    }
}

/// Both hooks share one conntrack: a flow tc started on the pod side (to a
/// backend on another node) has its replies translated by XDP on the
/// wire side, and a flow XDP started from outside has its replies
/// translated by tc when the local backend answers.
#[test]
fn flows_are_shared_between_tc_and_xdp() {
    let mut dp = Datapath::new("dp-shared", &[hostnames()]);
    for (first, second, sport) in [(Hook::Tc, Hook::Xdp, 41000), (Hook::Xdp, Hook::Tc, 41001)] {
        let syn = Frame::tcp((CLIENT, sport), (VIP, 80), TCP_SYN).build();
        let (v, out) = dp.run_on(first, &syn);
        assert_eq!(v, Verdict::Pass);
        let backend = packet::dst(&out);
        let reply = Frame::tcp(backend, (CLIENT, sport), TCP_SYN | TCP_ACK).build();
        let (v, o) = dp.run_on(second, &reply);
        assert_eq!(v, Verdict::Pass);
        assert_eq!(
            packet::src(&o),
            (VIP, 80),
            "flow from {first:?}, reply through {second:?}"
        );
        assert!(packet::checksums_valid(&o));
        // And the flow's next packet, through the other hook, keeps its backend.
        let ack = Frame::tcp((CLIENT, sport), (VIP, 80), TCP_ACK).build();
        let (_, o) = dp.run_on(second, &ack);
        assert_eq!(
            packet::dst(&o),
            backend,
            "{second:?} follows {first:?}'s flow"
        );
    }
}

#[test]
fn new_flows_spread_over_all_backends() {
    let mut dp = Datapath::new("dp-spread", &[hostnames()]);
    let mut hits = std::collections::BTreeMap::new();
    for sport in 0..300u16 {
        let (_, o) = dp.run(&Frame::tcp((CLIENT, 20000 + sport), (VIP, 80), TCP_SYN).build());
        *hits.entry(packet::dst(&o).0).or_insert(0u32) += 1;
    }
    assert_eq!(hits.len(), 3, "{hits:?}");
    for (b, n) in &hits {
        // Equal probability: each within 40 of 100 (4.9 standard
        // deviations: a fair choice fails this a few times in a million
        // runs).
        assert!((60..=140).contains(n), "backend {b} got {n} of 300");
    }
}

#[test]
fn udp_checksums_including_zero() {
    let mut dp = Datapath::new("dp-udp", &[udp_one()]);
    for (hook, sport) in HOOKS.into_iter().zip([5353, 6353]) {
        let mut f = Frame::udp((CLIENT, sport), (VIP, 53), b"query");
        let frame = f.build();
        let (v, o) = dp.run_on(hook, &frame);
        assert_eq!(v, Verdict::Pass);
        assert_eq!(packet::dst(&o), (be_ip(0), 9376), "{hook:?}");
        assert!(packet::checksums_valid(&o), "{hook:?}");
        assert_only_changed(&frame, &o, &[IP_CSUM, IP_DST, DPORT, UDP_CSUM]);

        f.sport = sport + 1;
        f.udp_zero_csum = true;
        let (v, o) = dp.run_on(hook, &f.build());
        assert_eq!(v, Verdict::Pass);
        assert_eq!(packet::dst(&o), (be_ip(0), 9376));
        assert_eq!(
            &o[UDP_CSUM],
            &[0, 0],
            "{hook:?}: a zero UDP checksum stays zero"
        );
        assert!(packet::checksums_valid(&o));
    }
}

#[test]
fn no_endpoints_tcp_gets_rst() {
    let mut dp = Datapath::new("dp-rst", &[empty(Proto::Tcp, 80)]);
    let syn = Frame::tcp((CLIENT, 40002), (EMPTY_VIP, 80), TCP_SYN).build();
    let (v, o) = dp.run(&syn);
    assert_eq!(v, TC_ACT_REDIRECT, "answered back out of the interface");
    assert_eq!(o.len(), 54);
    assert_eq!(&o[0..6], &syn[6..12], "MACs swapped");
    assert_eq!(packet::src(&o), (EMPTY_VIP, 80));
    assert_eq!(packet::dst(&o), (CLIENT, 40002));
    assert_eq!(o[47] & (TCP_RST | TCP_ACK), TCP_RST | TCP_ACK);
    let ack = u32::from_be_bytes([o[42], o[43], o[44], o[45]]);
    assert_eq!(ack, 1001, "acknowledges the SYN");
    assert!(packet::checksums_valid(&o));

    // A RST is never answered.
    let rst = Frame::tcp((CLIENT, 40002), (EMPTY_VIP, 80), TCP_RST).build();
    assert_eq!(dp.run(&rst).0, TC_ACT_SHOT);
    // XDP builds no answer: the frame is dropped, not left to the stack
    // (which would route a VIP it does not own back out).
    assert_eq!(dp.run_on(Hook::Xdp, &syn).0, Verdict::Drop);
}

#[test]
fn no_endpoints_udp_gets_icmp_port_unreachable() {
    let mut dp = Datapath::new("dp-icmp", &[empty(Proto::Udp, 53)]);
    let q = Frame::udp((CLIENT, 5353), (EMPTY_VIP, 53), b"query-bytes").build();
    let (v, o) = dp.run(&q);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(o.len(), 70);
    assert_eq!(o[23], 1, "ICMP");
    assert_eq!(&o[26..30], &EMPTY_VIP.octets());
    assert_eq!(&o[30..34], &CLIENT.octets());
    assert_eq!((o[34], o[35]), (3, 3), "destination/port unreachable");
    assert_eq!(
        &o[42..70],
        &q[14..42],
        "quotes the original header and 8 bytes"
    );
    assert!(packet::checksums_valid(&o));
}
