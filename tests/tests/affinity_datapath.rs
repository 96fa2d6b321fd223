//! Session affinity lookups in the tc and XDP programs
//! (BPF_PROG_TEST_RUN), both families: every new flow of one client goes
//! to the backend of its session, other clients spread; a backend that
//! leaves the Service ends its sessions, and only its (a backend moved
//! to another slot keeps them); affinity switched off spreads
//! the same client again. Maps are filled by the agent's reconcile path.
mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::datapath::{Datapath, HOOKS, Hook};
use ferrolb_tests::packet::{self, Frame, TCP_SYN};
use ferrolb_tests::packet6::{Frame6, addrs6};
use lb_agent::model::{BackendAddr, FrontendKey, FrontendState, Proto};
use lb_common::SVC_FLAG_AFFINITY;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x175);

/// Backend `i` of the family of `v6`.
fn backend(i: u8, v6: bool) -> BackendAddr {
    BackendAddr {
        addr: if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 5 + i as u16))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5 + i))
        },
        port: 9376,
        local: false,
    }
}

/// hostnames on both families with `backends` (indexes), affinity on or off.
fn hostnames(backends: &[u8], affinity: bool) -> Vec<(FrontendKey, FrontendState)> {
    [(IpAddr::from(VIP), false), (IpAddr::from(VIP6), true)]
        .into_iter()
        .map(|(addr, v6)| {
            (
                FrontendKey {
                    addr,
                    port: 80,
                    proto: Proto::Tcp,
                },
                FrontendState {
                    name: "default/hostnames:80".into(),
                    backends: backends.iter().map(|&i| backend(i, v6)).collect(),
                    flags: if affinity { SVC_FLAG_AFFINITY } else { 0 },
                    affinity_secs: affinity.then_some(10_800),
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// The backend address a SYN from client `c` (port `sport`) was sent to.
fn syn_to(dp: &mut Datapath, hook: Hook, v6: bool, c: u8, sport: u16) -> IpAddr {
    let frame = if v6 {
        let client = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 1, c as u16);
        Frame6::tcp((client, sport), (VIP6, 80), TCP_SYN).build()
    } else {
        Frame::tcp((Ipv4Addr::new(10, 244, 1, c), sport), (VIP, 80), TCP_SYN).build()
    };
    let (_, out) = dp.run_on(hook, &frame);
    if v6 {
        addrs6(&out).1.0.into()
    } else {
        packet::dst(&out).0.into()
    }
}

#[test]
fn new_flows_of_a_client_stick_to_its_backend_until_it_leaves() {
    for hook in HOOKS {
        for v6 in [false, true] {
            let what = format!("{hook:?} {}", if v6 { "IPv6" } else { "IPv4" });
            let mut dp = Datapath::new(&format!("aff-{hook:?}-{v6}"), &[]);
            dp.program_states(&hostnames(&[0, 1, 2], true));
            let port = |i: u16| 40_000 + i + if v6 { 1000 } else { 0 };
            // One client, 50 new flows: one backend.
            let first = syn_to(&mut dp, hook, v6, 1, port(0));
            for i in 1..50 {
                assert_eq!(
                    syn_to(&mut dp, hook, v6, 1, port(i)),
                    first,
                    "{what}: flow {i}"
                );
            }
            // Other clients are spread over the backends.
            let others: BTreeSet<IpAddr> = (10..40)
                .map(|c| syn_to(&mut dp, hook, v6, c, port(0)))
                .collect();
            assert!(others.len() > 1, "{what}: 30 clients all on {others:?}");
            // Another backend leaves: sessions stay where they are, that of
            // the backend moved from the last slot into the freed first
            // one too (found through the frontend's members).
            let last = backend(2, v6).addr;
            let on_last: Vec<u8> = (10..60)
                .filter(|&c| syn_to(&mut dp, hook, v6, c, port(1)) == last)
                .collect();
            assert!(on_last.len() > 3, "{what}: {on_last:?}");
            dp.program_states(&hostnames(&[1, 2], true));
            for &c in &on_last {
                assert_eq!(
                    syn_to(&mut dp, hook, v6, c, port(2)),
                    last,
                    "{what}: client {c}, a session of the moved backend"
                );
            }
            if first != backend(0, v6).addr {
                assert_eq!(
                    syn_to(&mut dp, hook, v6, 1, port(60)),
                    first,
                    "{what}: other left"
                );
            }
            dp.program_states(&hostnames(&[0, 1, 2], true));
            // The session's backend leaves the Service: the next flow goes
            // to another, and sticks there.
            let rest: Vec<u8> = (0..3).filter(|&i| backend(i, v6).addr != first).collect();
            dp.program_states(&hostnames(&rest, true));
            let moved = syn_to(&mut dp, hook, v6, 1, port(100));
            assert_ne!(moved, first, "{what}: a removed backend is not used");
            for i in 101..120 {
                assert_eq!(
                    syn_to(&mut dp, hook, v6, 1, port(i)),
                    moved,
                    "{what}: flow {i}"
                );
            }
            // Affinity off: the same client is spread again.
            dp.program_states(&hostnames(&[0, 1, 2], false));
            let spread: BTreeSet<IpAddr> = (200..230)
                .map(|i| syn_to(&mut dp, hook, v6, 1, port(i)))
                .collect();
            assert!(
                spread.len() > 1,
                "{what}: affinity off, still on {spread:?}"
            );
        }
    }
}
