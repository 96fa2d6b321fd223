//! Property test: a million generated and mutated frames (truncated
//! headers, bad IHL, IP options, fragments, IPv6, VLAN tags, odd TCP
//! flags, zero-length and zero-checksum UDP, ICMP, garbage) through the tc
//! and XDP programs (alternately) via BPF_PROG_TEST_RUN. Invariants:
//! - the verdict is pass, drop or (tc only) redirect, nothing else;
//! - a non-service frame comes out byte-identical;
//! - a rewritten frame changed only addresses, ports and checksums, and
//!   if its checksums were valid going in they are valid coming out;
//! - a redirect is a well-formed RST or ICMP answer with valid checksums.
//!
//! Seeded: set FERROLB_FUZZ_SEED to replay a failure, FERROLB_FUZZ_PACKETS
//! to change the count.
mod common;

use std::net::Ipv4Addr;

use common::datapath::{Datapath, HOOKS, Verdict};
use ferrolb_tests::packet::{self, ETH, Frame};
use lb_agent::model::{BackendAddr, FrontendKey, Proto};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 176);

fn backend(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 5 + i)
}

fn frontends() -> Vec<(FrontendKey, Vec<BackendAddr>)> {
    let fe = |addr: Ipv4Addr, port, proto, bs: Vec<u8>| {
        (
            FrontendKey {
                addr: addr.into(),
                port,
                proto,
            },
            bs.into_iter()
                .map(|i| BackendAddr {
                    addr: backend(i).into(),
                    port: 9376,
                    local: false,
                })
                .collect(),
        )
    };
    vec![
        fe(VIP, 80, Proto::Tcp, vec![0, 1, 2]),
        fe(VIP, 53, Proto::Udp, vec![0]),
        fe(EMPTY, 80, Proto::Tcp, vec![]),
        fe(EMPTY, 53, Proto::Udp, vec![]),
    ]
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Class {
    /// To or from nothing we know: must pass byte-identical.
    NonService,
    /// Anything else (may be translated, answered or dropped).
    Other,
}

fn client(r: &mut fastrand::Rng) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(10, 244, 0, 100 + r.u8(0..4)),
        40000 + r.u16(0..8),
    )
}

/// A well-formed frame of a random kind.
fn base(r: &mut fastrand::Rng) -> (Vec<u8>, Class) {
    let proto_udp = r.bool();
    let flags = r.u8(..);
    let payload: Vec<u8> = (0..r.usize(0..24)).map(|_| r.u8(..)).collect();
    let mk = |src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)| {
        let mut f = if proto_udp {
            Frame::udp(src, dst, &payload)
        } else {
            Frame::tcp(src, dst, flags)
        };
        f.payload = payload.clone();
        f
    };
    match r.u8(0..6) {
        0 => (
            mk(client(r), (VIP, if proto_udp { 53 } else { 80 })).build(),
            Class::Other,
        ),
        1 => (
            mk((backend(r.u8(0..3)), 9376), client(r)).build(),
            Class::Other,
        ),
        2 => (
            mk(client(r), (EMPTY, if r.bool() { 53 } else { 80 })).build(),
            Class::Other,
        ),
        3 => {
            // Never a VIP, never a backend: nothing to translate.
            let src = (Ipv4Addr::new(192, 168, r.u8(..), r.u8(..)), r.u16(..));
            let dst = (Ipv4Addr::new(172, 16, r.u8(..), r.u8(..)), r.u16(..));
            (mk(src, dst).build(), Class::NonService)
        }
        4 => {
            let mut f = mk(client(r), (VIP, 80));
            f.udp_zero_csum = proto_udp;
            (f.build(), Class::Other)
        }
        _ => {
            // Same addresses as service traffic, other L3/L4: IPv6, VLAN,
            // ARP, ICMP; none of which we translate.
            let mut f = mk(client(r), (VIP, 80)).build();
            match r.u8(0..4) {
                0 => f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes()),
                1 => f[12..14].copy_from_slice(&0x8100u16.to_be_bytes()),
                2 => f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()),
                _ => {
                    f[ETH + 9] = 1;
                    fix_ip_csum(&mut f);
                }
            }
            (f, Class::NonService)
        }
    }
}

fn fix_ip_csum(f: &mut [u8]) {
    let ihl = ((f[ETH] & 0x0f) as usize) * 4;
    if f.len() < ETH + ihl || ihl < 20 {
        return;
    }
    f[ETH + 10] = 0;
    f[ETH + 11] = 0;
    let c = packet::fold(packet::sum16(&f[ETH..ETH + ihl], 0));
    f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
}

/// Mutations that keep the class "Other" (they may make a service frame
/// malformed, which is fine: it must then be passed, dropped or valid).
fn mutate(r: &mut fastrand::Rng, f: &mut Vec<u8>) {
    match r.u8(0..8) {
        0 => {}
        1 => {
            for _ in 0..r.usize(1..4) {
                let i = r.usize(..f.len());
                f[i] = r.u8(..);
            }
        }
        2 => f.truncate(r.usize(ETH..=f.len())),
        3 => f[ETH] = 0x40 | r.u8(0..16), // any IHL
        4 => {
            // Fragments: MF and/or an offset.
            let v = [0x2000u16, 0x0001, 0x2005, 0x0100][r.usize(0..4)];
            f[ETH + 6..ETH + 8].copy_from_slice(&v.to_be_bytes());
            fix_ip_csum(f);
        }
        5 => {
            // IP options: insert 4..=40 bytes of NOP/garbage, fix lengths.
            let n = 4 * r.usize(1..=10);
            let opts: Vec<u8> = (0..n)
                .map(|_| if r.bool() { 1 } else { r.u8(..) })
                .collect();
            f.splice(ETH + 20..ETH + 20, opts);
            f[ETH] = 0x40 | (5 + n / 4) as u8;
            let tot = (f.len() - ETH) as u16;
            f[ETH + 2..ETH + 4].copy_from_slice(&tot.to_be_bytes());
            fix_ip_csum(f);
        }
        6 => {
            // Zero-length UDP / odd TCP flags combos.
            if f.len() > ETH + 20 + 13 {
                f[ETH + 24] = 0;
                f[ETH + 25] = 0;
                f[ETH + 20 + 13] = r.u8(..);
            }
        }
        _ => {
            let n = r.usize(1..64);
            f.extend((0..n).map(|_| r.u8(..)));
        }
    }
}

/// A frame whose checksums we can judge: IPv4, full headers, lengths agree.
fn well_formed(f: &[u8]) -> bool {
    if f.len() < ETH + 20 || f[12..14] != [0x08, 0x00] || f[ETH] >> 4 != 4 {
        return false;
    }
    let ihl = ((f[ETH] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]) as usize;
    let l4 = match f[ETH + 9] {
        6 => 20,
        17 => 8,
        _ => return false,
    };
    ihl >= 20
        && tot == f.len() - ETH
        && tot >= ihl + l4
        && u16::from_be_bytes([f[ETH + 6], f[ETH + 7]]) & 0x3fff == 0
}

/// Bytes a translation may touch in `f`: IP checksum and addresses, L4
/// ports and checksum.
fn may_change(f: &[u8], i: usize) -> bool {
    let ihl = ((f[ETH] & 0x0f) as usize) * 4;
    let l4 = ETH + ihl;
    let csum = l4 + if f[ETH + 9] == 6 { 16 } else { 6 };
    (ETH + 10..ETH + 12).contains(&i)
        || (ETH + 12..ETH + 20).contains(&i)
        || (l4..l4 + 4).contains(&i)
        || (csum..csum + 2).contains(&i)
}

#[test]
fn a_million_mutated_packets_keep_the_invariants() {
    let seed = std::env::var("FERROLB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let count: usize = std::env::var("FERROLB_FUZZ_PACKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    eprintln!("FERROLB_FUZZ_SEED={seed} FERROLB_FUZZ_PACKETS={count}");
    let mut r = fastrand::Rng::with_seed(seed);
    let mut dp = Datapath::new("fuzz", &frontends());
    let (mut ran, mut refused, mut rewritten, mut answered, mut dropped) = (0, 0, 0, 0, 0);
    for n in 0..count {
        let (mut f, class) = base(&mut r);
        if class == Class::Other {
            mutate(&mut r, &mut f);
        }
        let valid_in = well_formed(&f) && packet::checksums_valid(&f);
        let hook = HOOKS[n % HOOKS.len()];
        let Ok((verdict, out)) = dp.try_run_on(hook, &f) else {
            // The kernel refuses some short frames before running the program.
            refused += 1;
            continue;
        };
        ran += 1;
        let ctx = || {
            format!(
                "packet {n} (seed {seed}), {hook:?}, class {class:?}, verdict {verdict:?}\nin : {f:02x?}\nout: {out:02x?}"
            )
        };
        match verdict {
            Verdict::Pass => {
                if class == Class::NonService {
                    assert_eq!(out, f, "non-service frame changed: {}", ctx());
                }
                if out != f {
                    rewritten += 1;
                    assert_eq!(out.len(), f.len(), "length changed: {}", ctx());
                    for i in 0..f.len() {
                        assert!(
                            f[i] == out[i] || may_change(&f, i),
                            "byte {i} changed: {}",
                            ctx()
                        );
                    }
                    if valid_in {
                        assert!(packet::checksums_valid(&out), "checksums broken: {}", ctx());
                    }
                }
            }
            Verdict::Redirect => {
                answered += 1;
                assert_ne!(
                    class,
                    Class::NonService,
                    "answered a non-service frame: {}",
                    ctx()
                );
                assert!(out.len() == 54 || out.len() == 70, "odd answer: {}", ctx());
                assert!(packet::checksums_valid(&out), "answer checksums: {}", ctx());
                assert_eq!(
                    &out[ETH + 12..ETH + 16],
                    &EMPTY.octets(),
                    "answers come from the VIP: {}",
                    ctx()
                );
            }
            Verdict::Drop => {
                dropped += 1;
                assert_ne!(
                    class,
                    Class::NonService,
                    "dropped a non-service frame: {}",
                    ctx()
                );
            }
            // Only external frontends (none here) are sent back out.
            Verdict::Tx => panic!("XDP_TX without an external frontend: {}", ctx()),
            Verdict::Other(v) => panic!("verdict {v}: {}", ctx()),
        }
    }
    eprintln!(
        "ran {ran}, refused by the kernel {refused}, rewritten {rewritten}, answered {answered}, dropped {dropped}"
    );
    assert!(
        ran >= count * 9 / 10,
        "most frames must run: {ran} of {count}"
    );
    assert!(
        rewritten > count / 20 && answered > count / 200,
        "the mix exercised translation and rejects"
    );
}
