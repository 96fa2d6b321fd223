//! IPv6 through the tc and XDP programs (BPF_PROG_TEST_RUN): the same
//! rewrites as IPv4 with exact headers and checksums, the extension
//! header rule, the reject, and ICMPv6 errors translated back (Packet
//! Too Big reaching the client from the VIP). Maps are filled by the
//! agent's own reconcile path, from frontends of both families.
mod common;

use std::net::{IpAddr, Ipv6Addr};

use common::datapath::{Datapath, HOOKS, Hook, Verdict};
use ferrolb_tests::packet::ETH;
use ferrolb_tests::packet::{TCP_ACK, TCP_RST, TCP_SYN};
use ferrolb_tests::packet6::{
    DSTOPTS, FRAGMENT, Frame6, HOPOPTS, IP6, ROUTING, addrs6, checksum_valid6,
    icmp6_checksum_valid, icmp6_error, quoted6,
};
use lb_agent::model::{BackendAddr, FrontendKey, Proto};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn vip() -> Ipv6Addr {
    ip("fd00:10::175")
}

fn empty_vip() -> Ipv6Addr {
    ip("fd00:10::176")
}

fn client() -> Ipv6Addr {
    ip("fd00:244::100")
}

fn be(i: u8) -> BackendAddr {
    BackendAddr {
        addr: IpAddr::V6(ip(&format!("fd00:244::{}", 5 + i))),
        port: 9376,
        local: false,
    }
}

fn frontend(addr: Ipv6Addr, port: u16, proto: Proto) -> FrontendKey {
    FrontendKey {
        addr: IpAddr::V6(addr),
        port,
        proto,
    }
}

/// The seeds' `hostnames` as an IPv6 Service (TCP and UDP), one without
/// endpoints, and an IPv4 frontend beside them (the families' maps must
/// not see each other's entries).
fn datapath(tag: &str) -> Datapath {
    Datapath::new(
        tag,
        &[
            (frontend(vip(), 80, Proto::Tcp), vec![be(0), be(1), be(2)]),
            (frontend(vip(), 53, Proto::Udp), vec![be(0)]),
            (frontend(empty_vip(), 80, Proto::Tcp), vec![]),
            (frontend(empty_vip(), 53, Proto::Udp), vec![]),
            (
                FrontendKey {
                    addr: "10.0.1.175".parse().unwrap(),
                    port: 80,
                    proto: Proto::Tcp,
                },
                vec![BackendAddr {
                    addr: "10.244.0.5".parse().unwrap(),
                    port: 9376,
                    local: false,
                }],
            ),
        ],
    )
}

fn backends() -> Vec<Ipv6Addr> {
    (0..3)
        .map(|i| match be(i).addr {
            IpAddr::V6(a) => a,
            _ => unreachable!(),
        })
        .collect()
}

/// Bytes outside `allowed` must be identical.
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

const DST: std::ops::Range<usize> = ETH + 24..ETH + 40;

/// Where a frame's L4 ports and checksum are.
fn l4_ranges(f: &[u8]) -> [std::ops::Range<usize>; 2] {
    let (off, proto) = ferrolb_tests::packet6::l4_offset(f);
    let csum = off + if proto == 6 { 16 } else { 6 };
    [off..off + 4, csum..csum + 2]
}

#[test]
fn tcp_to_a_v6_vip_is_dnated_and_the_reply_reverse_natted_in_both_hooks() {
    let mut dp = datapath("v6-tcp");
    for (i, hook) in HOOKS.into_iter().enumerate() {
        let sport = 40000 + i as u16;
        let syn = Frame6::tcp((client(), sport), (vip(), 80), TCP_SYN).build();
        let (v, out) = dp.run_on(hook, &syn);
        assert_eq!(v, Verdict::Pass, "{hook:?}");
        let ((s, sp), (d, dp_)) = addrs6(&out);
        assert_eq!((s, sp), (client(), sport), "{hook:?}: source kept");
        assert!(backends().contains(&d), "{hook:?}: {d} is no backend");
        assert_eq!(dp_, 9376);
        assert!(checksum_valid6(&out), "{hook:?}: L4 checksum");
        let [ports, csum] = l4_ranges(&syn);
        assert_only_changed(&syn, &out, &[DST, ports, csum]);
        // The backend's answer goes back to the client from the VIP.
        let reply = Frame6::tcp((d, 9376), (client(), sport), TCP_SYN | TCP_ACK).build();
        let (v, back) = dp.run_on(hook, &reply);
        assert_eq!(v, Verdict::Pass, "{hook:?} reply");
        assert_eq!(addrs6(&back), ((vip(), 80), (client(), sport)));
        assert!(checksum_valid6(&back), "{hook:?}: reply checksum");
        // The flow sticks to its backend.
        let ack = Frame6::tcp((client(), sport), (vip(), 80), TCP_ACK).build();
        let (_, out2) = dp.run_on(hook, &ack);
        assert_eq!(addrs6(&out2).1, (d, 9376), "{hook:?}: same backend");
    }
    let stats = dp.stats();
    assert!(stats["dnat_new"] >= 2, "{stats:?}");
    assert!(stats["revnat"] >= 2, "{stats:?}");
}

#[test]
fn udp_to_a_v6_vip_is_translated_with_a_valid_checksum() {
    let mut dp = datapath("v6-udp");
    let q = Frame6::udp((client(), 5353), (vip(), 53), b"query").build();
    let (v, out) = dp.run_on(Hook::Tc, &q);
    assert_eq!(v, Verdict::Pass);
    assert_eq!(addrs6(&out).1, (backends()[0], 9376));
    assert!(checksum_valid6(&out));
    let a = Frame6::udp((backends()[0], 9376), (client(), 5353), b"answer").build();
    let (_, back) = dp.run_on(Hook::Xdp, &a);
    assert_eq!(addrs6(&back), ((vip(), 53), (client(), 5353)));
    assert!(checksum_valid6(&back));
}

/// Hop-by-hop and destination options are skipped to reach the ports;
/// a routing header, or a chain longer than the datapath walks, passes
/// untranslated; a fragment to a VIP is dropped, as with IPv4.
#[test]
fn extension_headers_follow_the_documented_rule() {
    let mut dp = datapath("v6-ext");
    let base = |sport| Frame6::tcp((client(), sport), (vip(), 80), TCP_SYN);
    let opts = base(41000)
        .with_ext(HOPOPTS, 0)
        .with_ext(DSTOPTS, 0)
        .build();
    let (v, out) = dp.run_on(Hook::Tc, &opts);
    assert_eq!(v, Verdict::Pass);
    assert!(backends().contains(&addrs6(&out).1.0), "options skipped");
    assert_eq!(addrs6(&out).1.1, 9376);
    assert!(checksum_valid6(&out));
    let [ports, csum] = l4_ranges(&opts);
    assert_only_changed(&opts, &out, &[DST, ports, csum]);

    for (what, f) in [
        ("routing header", base(41001).with_ext(ROUTING, 0).build()),
        (
            "five option headers",
            (0..5)
                .fold(base(41002), |f, _| f.with_ext(DSTOPTS, 0))
                .build(),
        ),
    ] {
        for hook in HOOKS {
            let (v, out) = dp.run_on(hook, &f);
            assert_eq!(v, Verdict::Pass, "{what} {hook:?}");
            assert_eq!(out, f, "{what} {hook:?}: untouched");
        }
    }
    // A first fragment would be translated alone, its later pieces not:
    // dropped. Later fragments carry no ports: no frontend, untouched.
    let first = base(41003).with_ext(FRAGMENT, 0).build();
    assert_eq!(dp.run(&first).0, TC_ACT_SHOT, "first fragment");
    let later = base(41004).with_ext(FRAGMENT, 3).build();
    assert_eq!(dp.run(&later), (0, later.clone()), "later fragment");
    // Truncated headers: refused by the kernel or passed, never a crash
    // or a rewrite.
    let full = base(41005).with_ext(HOPOPTS, 0).build();
    for len in [ETH + 10, ETH + IP6, ETH + IP6 + 4, ETH + IP6 + 8 + 10] {
        let cut = &full[..len];
        if let Ok((v, out)) = dp.try_run(cut) {
            assert_ne!(v, TC_ACT_REDIRECT, "{len} bytes");
            assert_eq!(out, cut, "{len} bytes: untouched");
        }
    }
}

#[test]
fn a_v6_vip_without_endpoints_is_rejected_with_rst_and_icmpv6() {
    let mut dp = datapath("v6-reject");
    let syn = Frame6::tcp((client(), 42000), (empty_vip(), 80), TCP_SYN).build();
    let (v, rst) = dp.run(&syn);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(addrs6(&rst), ((empty_vip(), 80), (client(), 42000)));
    let (off, proto) = ferrolb_tests::packet6::l4_offset(&rst);
    assert_eq!(proto, 6);
    assert_eq!(rst[off + 13], TCP_RST | TCP_ACK);
    // ack = the SYN's seq (1000) + 1.
    assert_eq!(&rst[off + 8..off + 12], &1001u32.to_be_bytes());
    assert!(checksum_valid6(&rst));

    let q = Frame6::udp((client(), 5353), (empty_vip(), 53), b"query").build();
    let (v, icmp) = dp.run(&q);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(icmp[ETH + 6], 58, "ICMPv6");
    assert_eq!(&icmp[ETH + 8..ETH + 24], &empty_vip().octets());
    assert_eq!(&icmp[ETH + 24..ETH + 40], &client().octets());
    let (ty, code) = (icmp[ETH + IP6], icmp[ETH + IP6 + 1]);
    assert_eq!(
        (ty, code),
        (1, 4),
        "destination unreachable, port unreachable"
    );
    assert!(icmp6_checksum_valid(&icmp));
    // The quote is the datagram as the client sent it.
    assert_eq!(&icmp[ETH + IP6 + 8..], &q[ETH..ETH + IP6 + 8]);
    assert_eq!(dp.stats()["reject_no_backend"], 2);
}

/// Packet Too Big from the backend about a DNATed segment reaches the
/// client as if the VIP sent it, quoting the segment as the client sent
/// it: path MTU discovery works through a v6 Service.
#[test]
fn packet_too_big_from_a_backend_reaches_the_client_from_the_vip() {
    let mut dp = datapath("v6-ptb");
    let syn = Frame6::tcp((client(), 43000), (vip(), 80), TCP_SYN).build();
    let (_, dnat) = dp.run(&syn);
    let backend = addrs6(&dnat).1.0;
    // The backend's node says the (DNATed) segment was too big.
    let ptb = icmp6_error(backend, client(), 2, 1280u32.to_be_bytes(), &dnat);
    let (v, out) = dp.run_egress(&ptb);
    assert_eq!(v, 0, "passes on");
    assert_eq!(&out[ETH + 8..ETH + 24], &vip().octets(), "outer source");
    assert_eq!(&out[ETH + 24..ETH + 40], &client().octets());
    assert!(icmp6_checksum_valid(&out), "ICMPv6 checksum");
    let quoted = quoted6(&out);
    assert_eq!(addrs6(&quoted), ((client(), 43000), (vip(), 80)));
    assert!(checksum_valid6(&quoted), "quoted TCP checksum");
    assert_eq!(dp.stats()["icmp_translated"], 1);
}
