//! SCTP through the tc and XDP programs (BPF_PROG_TEST_RUN): an INIT to a
//! Service's VIP starts a flow and is DNATed, the backend's answer is
//! translated back, and SCTP's checksum (CRC-32C, which covers the ports
//! but no address) is right afterwards whether the ports change or not,
//! for short packets and long ones (the update is computed from the
//! packet length, see `lb_common::crc32c`).
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::datapath::{Datapath, HOOKS};
use ferrolb_tests::packet::{self, Frame, SCTP_INIT, checksums_valid};
use ferrolb_tests::packet6::{DSTOPTS, Frame6, addrs6, checksum_valid6};
use lb_agent::model::{BackendAddr, FrontendKey, Proto};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 190);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 9);

/// An SCTP Service on `port`, one backend on `target`.
fn service(port: u16, target: u16) -> Vec<(FrontendKey, Vec<BackendAddr>)> {
    vec![(
        FrontendKey {
            addr: VIP.into(),
            port,
            proto: Proto::Sctp,
        },
        vec![BackendAddr {
            addr: IpAddr::V4(BACKEND),
            port: target,
            local: false,
        }],
    )]
}

/// A DATA chunk of `n` payload bytes (type 0, TSN 1, stream 0).
fn data_chunk(n: usize) -> Vec<u8> {
    let len = 16 + n;
    let mut c = vec![0u8, 3];
    c.extend_from_slice(&(len as u16).to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    c.extend((0..n).map(|i| (i * 7 + 3) as u8));
    c.resize(len.next_multiple_of(4), 0);
    c
}

#[test]
fn sctp_flows_are_translated_both_ways_with_a_valid_checksum() {
    // Same port (no port rewrite) and another target port (the CRC-32C
    // updated for the new ports).
    for (port, target) in [(38_412, 38_412), (38_412, 9_376)] {
        for hook in HOOKS {
            let what = format!("{hook:?} {port}->{target}");
            let mut dp = Datapath::new(&format!("sctp-{hook:?}-{target}"), &service(port, target));
            let init = Frame::sctp((CLIENT, 40_000), (VIP, port), &SCTP_INIT).build();
            let (_, out) = dp.run_on(hook, &init);
            assert_eq!(packet::dst(&out), (BACKEND, target), "{what}: INIT DNATed");
            assert_eq!(packet::src(&out), (CLIENT, 40_000), "{what}: source kept");
            assert!(checksums_valid(&out), "{what}: INIT checksums");
            // The association's later packets, short and long, follow it.
            for n in [4, 200, 1400] {
                let data = Frame::sctp((CLIENT, 40_000), (VIP, port), &data_chunk(n)).build();
                let (_, out) = dp.run_on(hook, &data);
                assert_eq!(packet::dst(&out), (BACKEND, target), "{what}: DATA {n}");
                assert!(checksums_valid(&out), "{what}: DATA {n} checksums");
            }
            // The backend answers: from the VIP again.
            let ack = Frame::sctp((BACKEND, target), (CLIENT, 40_000), &data_chunk(100)).build();
            let (_, out) = dp.run_on(hook, &ack);
            assert_eq!(packet::src(&out), (VIP, port), "{what}: reply");
            assert!(checksums_valid(&out), "{what}: reply checksums");
        }
    }
}

#[test]
fn an_sctp_packet_to_a_port_without_a_service_passes_untouched() {
    let mut dp = Datapath::new("sctp-other", &service(38_412, 38_412));
    for hook in HOOKS {
        let init = Frame::sctp((CLIENT, 40_001), (VIP, 38_413), &SCTP_INIT).build();
        let (_, out) = dp.run_on(hook, &init);
        assert_eq!(out, init, "{hook:?}");
    }
}

#[test]
fn ipv6_sctp_with_an_extension_header_gets_a_valid_checksum() {
    let vip: Ipv6Addr = "fd00:10::190".parse().unwrap();
    let client: Ipv6Addr = "fd00:244:1::7".parse().unwrap();
    let backend: Ipv6Addr = "fd00:244::9".parse().unwrap();
    let svc = vec![(
        FrontendKey {
            addr: vip.into(),
            port: 38_412,
            proto: Proto::Sctp,
        },
        vec![BackendAddr {
            addr: IpAddr::V6(backend),
            port: 9_376,
            local: false,
        }],
    )];
    for hook in HOOKS {
        let mut dp = Datapath::new(&format!("sctp6-{hook:?}"), &svc);
        for (i, chunks) in [SCTP_INIT.to_vec(), data_chunk(700)]
            .into_iter()
            .enumerate()
        {
            // A destination options header: the SCTP length is the
            // payload length less it.
            let f = Frame6::sctp((client, 40_000), (vip, 38_412), &chunks)
                .with_ext(DSTOPTS, 0)
                .build();
            let (_, out) = dp.run_on(hook, &f);
            assert_eq!(addrs6(&out).1, (backend, 9_376), "{hook:?} packet {i}");
            assert!(checksum_valid6(&out), "{hook:?} packet {i}: checksum");
        }
        let reply = Frame6::sctp((backend, 9_376), (client, 40_000), &data_chunk(40)).build();
        let (_, out) = dp.run_on(hook, &reply);
        assert_eq!(addrs6(&out).0, (vip, 38_412), "{hook:?}: reply");
        assert!(checksum_valid6(&out), "{hook:?}: reply checksum");
    }
}
