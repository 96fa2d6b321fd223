//! ICMP errors about translated flows, through BPF_PROG_TEST_RUN: the
//! quoted packet and the outer header are translated back (so a client
//! sees the VIP in both and PMTU discovery works), every checksum stays
//! valid, and errors about other traffic pass byte-identical.
mod common;

use std::net::Ipv4Addr;

use common::datapath::Datapath;
use ferrolb_tests::packet::{self, Frame, TCP_ACK, TCP_SYN};
use lb_agent::model::{BackendAddr, FrontendKey, Proto};

const TC_ACT_OK: u32 = 0;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 100);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
/// The node (or any router) between client and backend.
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const FRAG_NEEDED: (u8, u8) = (3, 4);
const PORT_UNREACH: (u8, u8) = (3, 3);
/// Next-hop MTU 1000 in the second half of the ICMP header's rest.
const MTU_1000: [u8; 4] = [0, 0, 0x03, 0xe8];

fn frontends() -> Vec<(FrontendKey, Vec<BackendAddr>)> {
    let be = BackendAddr {
        addr: BACKEND.into(),
        port: 9376,
        local: false,
    };
    vec![
        (
            FrontendKey {
                addr: VIP.into(),
                port: 80,
                proto: Proto::Tcp,
            },
            vec![be],
        ),
        (
            FrontendKey {
                addr: VIP.into(),
                port: 53,
                proto: Proto::Udp,
            },
            vec![be],
        ),
    ]
}

/// Sends the client's first packet through the datapath (creating the
/// flow) and returns it as the backend receives it.
fn open_flow(dp: &mut Datapath, f: &Frame) -> Vec<u8> {
    let (v, out) = dp.run(&f.build());
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(packet::dst(&out), (BACKEND, 9376), "flow DNATed");
    out
}

fn assert_valid(what: &str, icmp: &[u8], inner_complete: bool) {
    assert!(
        packet::checksums_valid(icmp),
        "{what}: outer IP or ICMP checksum"
    );
    let q = packet::quoted(icmp);
    let ihl = ((q[14] & 0x0f) as usize) * 4;
    assert_eq!(
        packet::fold(packet::sum16(&q[14..14 + ihl], 0)),
        0,
        "{what}: quoted IP checksum"
    );
    if inner_complete {
        assert!(packet::checksums_valid(&q), "{what}: quoted L4 checksum");
    }
}

#[test]
fn frag_needed_about_a_dnated_flow_names_the_vip() {
    let mut dp = Datapath::new("icmp-fragneeded", &frontends());
    let mut seg = Frame::tcp((CLIENT, 40100), (VIP, 80), TCP_ACK);
    seg.payload = vec![0x55; 64];
    let _ = open_flow(&mut dp, &Frame::tcp((CLIENT, 40100), (VIP, 80), TCP_SYN));
    let forwarded = open_flow(&mut dp, &seg);
    // The node sends it when the backend's path MTU is smaller: egress.
    // A router past the node sends it to our ingress. Both translate.
    for (hook, quote_len) in [
        ("egress", 20 + 20 + 64),
        ("ingress", 20 + 20 + 64),
        ("egress", 28),
    ] {
        let err = packet::icmp_error(ROUTER, CLIENT, FRAG_NEEDED, MTU_1000, &forwarded, quote_len);
        let (v, out) = if hook == "egress" {
            dp.run_egress(&err)
        } else {
            dp.run(&err)
        };
        let what = format!("{hook}, {quote_len}-byte quote");
        assert_eq!(v, TC_ACT_OK, "{what}");
        assert_eq!(out.len(), err.len(), "{what}");
        let q = packet::quoted(&out);
        assert_eq!(packet::dst(&q), (VIP, 80), "{what}: quote names the VIP");
        assert_eq!(packet::src(&q), (CLIENT, 40100), "{what}");
        assert_eq!(&out[26..30], &ROUTER.octets(), "{what}: outer source kept");
        assert_eq!(
            &out[30..34],
            &CLIENT.octets(),
            "{what}: outer destination kept"
        );
        assert_eq!(
            &out[34..36],
            &err[34..36],
            "{what}: ICMP type and code kept"
        );
        assert_eq!(&out[38..42], &err[38..42], "{what}: next-hop MTU kept");
        assert_valid(&what, &out, quote_len > 28);
    }
}

#[test]
fn port_unreachable_from_the_backend_comes_from_the_vip() {
    let mut dp = Datapath::new("icmp-portunreach", &frontends());
    let forwarded = open_flow(&mut dp, &Frame::udp((CLIENT, 5300), (VIP, 53), b"query"));
    for quote_len in [20 + 8 + 5, 28] {
        let err = packet::icmp_error(BACKEND, CLIENT, PORT_UNREACH, [0; 4], &forwarded, quote_len);
        let (v, out) = dp.run(&err);
        assert_eq!(v, TC_ACT_OK);
        assert_eq!(&out[26..30], &VIP.octets(), "outer source is the VIP");
        assert_eq!(&out[30..34], &CLIENT.octets());
        let q = packet::quoted(&out);
        assert_eq!(packet::dst(&q), (VIP, 53), "quote names the VIP");
        assert_eq!(packet::src(&q), (CLIENT, 5300));
        assert_valid("port unreachable", &out, quote_len > 28);
    }
}

#[test]
fn error_about_a_reply_reaches_the_backend() {
    let mut dp = Datapath::new("icmp-reply", &frontends());
    let _ = open_flow(&mut dp, &Frame::tcp((CLIENT, 40200), (VIP, 80), TCP_SYN));
    // The reply as the client sees it (after reverse NAT)...
    let (v, reply) =
        dp.run(&Frame::tcp((BACKEND, 9376), (CLIENT, 40200), TCP_SYN | TCP_ACK).build());
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(packet::src(&reply), (VIP, 80));
    // ...is too big somewhere on the client's side: the error goes to the VIP.
    let err = packet::icmp_error(ROUTER, VIP, FRAG_NEEDED, MTU_1000, &reply, 40);
    let (v, out) = dp.run(&err);
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(&out[30..34], &BACKEND.octets(), "sent on to the backend");
    assert_eq!(&out[26..30], &ROUTER.octets());
    let q = packet::quoted(&out);
    assert_eq!(
        packet::src(&q),
        (BACKEND, 9376),
        "quote as the backend sent it"
    );
    assert_eq!(packet::dst(&q), (CLIENT, 40200));
    assert_valid("reply error", &out, true);
}

#[test]
fn errors_about_other_traffic_pass_untouched() {
    let mut dp = Datapath::new("icmp-other", &frontends());
    let _ = open_flow(&mut dp, &Frame::tcp((CLIENT, 40300), (VIP, 80), TCP_SYN));
    let other = [
        // Same hosts, another client port: not a tracked flow.
        Frame::tcp((CLIENT, 40301), (BACKEND, 9376), TCP_ACK).build(),
        // Traffic straight to a pod, never translated.
        Frame::udp((CLIENT, 5300), (Ipv4Addr::new(10, 244, 0, 9), 53), b"x").build(),
    ];
    for (i, quoted) in other.iter().enumerate() {
        for err in [
            packet::icmp_error(ROUTER, CLIENT, FRAG_NEEDED, MTU_1000, quoted, 28),
            packet::icmp_error(BACKEND, CLIENT, PORT_UNREACH, [0; 4], quoted, 40),
        ] {
            let (v, out) = dp.run(&err);
            assert_eq!(
                (v, &out),
                (TC_ACT_OK, &err),
                "case {i}: ingress byte-identical"
            );
            let (v, out) = dp.run_egress(&err);
            assert_eq!(
                (v, &out),
                (TC_ACT_OK, &err),
                "case {i}: egress byte-identical"
            );
        }
    }
    // Not an error (echo request) and a quote cut inside the ports.
    let flow = Frame::tcp((CLIENT, 40300), (BACKEND, 9376), TCP_ACK).build();
    let echo = packet::icmp_error(ROUTER, CLIENT, (8, 0), [0; 4], &flow, 28);
    let cut = packet::icmp_error(ROUTER, CLIENT, FRAG_NEEDED, MTU_1000, &flow, 22);
    for f in [echo, cut] {
        let (v, out) = dp.run(&f);
        assert_eq!((v, &out), (TC_ACT_OK, &f));
    }
}
