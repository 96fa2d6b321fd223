//! Property test, IPv6: generated and mutated IPv6 frames (extension
//! header chains of every kind and length, fragments, truncated headers,
//! payload lengths that lie, garbage) through the tc and XDP programs
//! (alternately) via BPF_PROG_TEST_RUN. The invariants of the IPv4 test:
//! - the verdict is pass, drop or (tc only) redirect, nothing else;
//! - a non-service frame comes out byte-identical;
//! - a rewritten frame changed only addresses, ports and the L4
//!   checksum, and a valid checksum going in is valid coming out;
//! - a redirect is a well-formed RST or ICMPv6 answer from the VIP.
//!
//! Seeded: FERROLB_FUZZ_SEED replays a failure, FERROLB_FUZZ_PACKETS
//! changes the count.
mod common;

use std::net::{IpAddr, Ipv6Addr};

use common::datapath::{Datapath, HOOKS, Verdict};
use ferrolb_tests::packet::{ETH, fold, sum16};
use ferrolb_tests::packet6::{
    DSTOPTS, FRAGMENT, Frame6, HOPOPTS, IP6, ROUTING, checksum_valid6, l4_offset,
};
use lb_agent::model::{BackendAddr, FrontendKey, Proto};

fn vip() -> Ipv6Addr {
    "fd00:10::175".parse().unwrap()
}

fn empty() -> Ipv6Addr {
    "fd00:10::176".parse().unwrap()
}

fn backend(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 5 + i as u16)
}

fn frontends() -> Vec<(FrontendKey, Vec<BackendAddr>)> {
    let fe = |addr: Ipv6Addr, port, proto, bs: Vec<u8>| {
        (
            FrontendKey {
                addr: IpAddr::V6(addr),
                port,
                proto,
            },
            bs.into_iter()
                .map(|i| BackendAddr {
                    addr: IpAddr::V6(backend(i)),
                    port: 9376,
                    local: false,
                })
                .collect(),
        )
    };
    vec![
        fe(vip(), 80, Proto::Tcp, vec![0, 1, 2]),
        fe(vip(), 53, Proto::Udp, vec![0]),
        fe(empty(), 80, Proto::Tcp, vec![]),
        fe(empty(), 53, Proto::Udp, vec![]),
    ]
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Class {
    /// To or from nothing we know: must pass byte-identical.
    NonService,
    Other,
}

fn client(r: &mut fastrand::Rng) -> (Ipv6Addr, u16) {
    (
        Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x100 + r.u16(0..4)),
        40000 + r.u16(0..8),
    )
}

/// A frame of a random kind, with a random extension header chain.
fn base(r: &mut fastrand::Rng) -> (Vec<u8>, Class) {
    let udp = r.bool();
    let flags = r.u8(..);
    let payload: Vec<u8> = (0..r.usize(0..24)).map(|_| r.u8(..)).collect();
    let mk = |r: &mut fastrand::Rng, src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)| {
        let mut f = if udp {
            Frame6::udp(src, dst, &payload)
        } else {
            Frame6::tcp(src, dst, flags)
        };
        // Mostly none; else a chain of up to 6 headers of any kind.
        if r.u8(0..3) == 0 {
            for _ in 0..r.usize(1..=6) {
                let kind = [HOPOPTS, DSTOPTS, ROUTING, FRAGMENT][r.usize(0..4)];
                f = f.with_ext(kind, if r.bool() { 0 } else { r.u16(1..100) });
            }
        }
        f.build()
    };
    let port = if udp { 53 } else { 80 };
    match r.u8(0..5) {
        0 => {
            let c = client(r);
            (mk(r, c, (vip(), port)), Class::Other)
        }
        1 => {
            let (b, c) = (backend(r.u8(0..3)), client(r));
            (mk(r, (b, 9376), c), Class::Other)
        }
        2 => {
            let c = client(r);
            (mk(r, c, (empty(), port)), Class::Other)
        }
        3 => {
            let a = |r: &mut fastrand::Rng| {
                Ipv6Addr::new(0x2001, 0xdb8, r.u16(..), 0, 0, 0, 0, r.u16(..))
            };
            let (src, dst) = ((a(r), r.u16(..)), (a(r), r.u16(..)));
            (mk(r, src, dst), Class::NonService)
        }
        _ => {
            // Service addresses, another upper layer (ICMPv6 echo, or a
            // protocol we do not know).
            let c = client(r);
            let mut f = mk(r, c, (vip(), 80));
            let (off, _) = l4_offset(&f);
            let nh = if off == ETH + IP6 { ETH + 6 } else { off - 8 };
            f[nh] = if r.bool() { 58 } else { 253 };
            if f[nh] == 58 {
                f[off] = 128; // echo request: not an error
            }
            (f, Class::NonService)
        }
    }
}

fn mutate(r: &mut fastrand::Rng, f: &mut Vec<u8>) {
    match r.u8(0..6) {
        0 => {}
        1 => {
            for _ in 0..r.usize(1..4) {
                let i = r.usize(ETH..f.len());
                f[i] = r.u8(..);
            }
        }
        2 => f.truncate(r.usize(ETH..=f.len())),
        3 => {
            // A payload length that lies.
            let v = r.u16(..);
            f[ETH + 4..ETH + 6].copy_from_slice(&v.to_be_bytes());
        }
        4 => f[ETH] = r.u8(..), // any version nibble
        _ => {
            let n = r.usize(1..64);
            f.extend((0..n).map(|_| r.u8(..)));
        }
    }
}

/// A frame whose checksum we can judge: its chain is the builder's and
/// its payload length agrees.
fn well_formed(f: &[u8]) -> bool {
    if f.len() < ETH + IP6 || f[12..14] != [0x86, 0xdd] || f[ETH] >> 4 != 6 {
        return false;
    }
    let plen = u16::from_be_bytes([f[ETH + 4], f[ETH + 5]]) as usize;
    if plen != f.len() - ETH - IP6 {
        return false;
    }
    let mut next = f[ETH + 6];
    let mut off = ETH + IP6;
    while matches!(next, HOPOPTS | ROUTING | DSTOPTS | FRAGMENT) {
        if off + 8 > f.len() {
            return false;
        }
        let len = if next == FRAGMENT {
            if u16::from_be_bytes([f[off + 2], f[off + 3]]) & 0xfff8 != 0 {
                return false;
            }
            8
        } else {
            (f[off + 1] as usize + 1) * 8
        };
        next = f[off];
        off += len;
    }
    let l4 = match next {
        6 => 20,
        17 => 8,
        _ => return false,
    };
    off + l4 <= f.len()
}

/// Where the documented extension header rule puts L4: after at most 4
/// hop-by-hop, destination options or fragment headers; None for any
/// other chain.
fn rule_l4(f: &[u8]) -> Option<(usize, u8)> {
    let mut next = *f.get(ETH + 6)?;
    let mut off = ETH + IP6;
    for _ in 0..4 {
        match next {
            HOPOPTS | DSTOPTS => {
                let len = (*f.get(off + 1)? as usize + 1) * 8;
                next = *f.get(off)?;
                off += len;
            }
            FRAGMENT => {
                next = *f.get(off)?;
                off += 8;
            }
            _ => break,
        }
    }
    matches!(next, 6 | 17).then_some((off, next))
}

/// Bytes a translation may touch: addresses, and the ports and checksum
/// where the rule puts L4.
fn may_change(f: &[u8], i: usize) -> bool {
    if (ETH + 8..ETH + 40).contains(&i) {
        return true;
    }
    let Some((off, proto)) = rule_l4(f) else {
        return false;
    };
    let csum = off + if proto == 6 { 16 } else { 6 };
    (off..off + 4).contains(&i) || (csum..csum + 2).contains(&i)
}

fn icmp6_valid(f: &[u8]) -> bool {
    let mut acc = sum16(&f[ETH + 8..ETH + 40], 0);
    acc += 58 + (f.len() - ETH - IP6) as u32;
    fold(sum16(&f[ETH + IP6..], acc)) == 0
}

#[test]
fn mutated_ipv6_packets_keep_the_invariants() {
    let seed = std::env::var("FERROLB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let count: usize = std::env::var("FERROLB_FUZZ_PACKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300_000);
    eprintln!("FERROLB_FUZZ_SEED={seed} FERROLB_FUZZ_PACKETS={count}");
    let mut r = fastrand::Rng::with_seed(seed);
    let mut dp = Datapath::new("fuzz6", &frontends());
    let (mut ran, mut refused, mut rewritten, mut answered, mut dropped) = (0, 0, 0, 0, 0);
    for n in 0..count {
        let (mut f, class) = base(&mut r);
        if class == Class::Other {
            mutate(&mut r, &mut f);
        }
        let valid_in = well_formed(&f) && checksum_valid6(&f);
        let hook = HOOKS[n % HOOKS.len()];
        let Ok((verdict, out)) = dp.try_run_on(hook, &f) else {
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
                        assert!(checksum_valid6(&out), "checksum broken: {}", ctx());
                    }
                }
            }
            Verdict::Redirect => {
                answered += 1;
                assert_ne!(class, Class::NonService, "answered: {}", ctx());
                assert_eq!(
                    &out[ETH + 8..ETH + 24],
                    &empty().octets(),
                    "answers come from the VIP: {}",
                    ctx()
                );
                match out[ETH + 6] {
                    6 => {
                        assert_eq!(out.len(), ETH + IP6 + 20, "RST: {}", ctx());
                        assert!(checksum_valid6(&out), "RST checksum: {}", ctx());
                    }
                    58 => {
                        assert_eq!(out.len(), ETH + IP6 + 8 + IP6 + 8, "{}", ctx());
                        assert!(icmp6_valid(&out), "ICMPv6 checksum: {}", ctx());
                    }
                    other => panic!("answer of protocol {other}: {}", ctx()),
                }
            }
            Verdict::Drop => {
                dropped += 1;
                assert_ne!(class, Class::NonService, "dropped: {}", ctx());
            }
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
