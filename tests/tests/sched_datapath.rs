//! The scheduling algorithms in the tc and XDP programs
//! (BPF_PROG_TEST_RUN), maps filled by the agent's reconcile path:
//! round-robin's exact turns, source hashing's one backend per client,
//! destination hashing's one backend per destination, and Maglev's
//! consistency (two nodes whose slots differ map every flow to the same
//! backend) and disruption (a backend leaving moves only its own flows,
//! give or take Maglev's small excess); least-conn's counts (in at a
//! new flow, out once at its FIN or a backend's RST) and its choice of
//! the least loaded backend.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use common::datapath::{Datapath, HOOKS, Hook};
use ferrolb_tests::packet::{self, Frame, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use lb_agent::model::{BackendAddr, FrontendKey, FrontendState, Proto};
use lb_agent::sched::Scheduler;
use lb_common::{SVC_FLAG_LEAST_CONN, SVC_FLAG_SCHED};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);

fn backend(i: u8) -> BackendAddr {
    BackendAddr {
        addr: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5 + i)),
        port: 9376,
        local: false,
    }
}

fn hostnames(backends: &[u8], scheduler: Scheduler) -> Vec<(FrontendKey, FrontendState)> {
    vec![(
        FrontendKey {
            addr: VIP.into(),
            port: 80,
            proto: Proto::Tcp,
        },
        FrontendState {
            name: "default/hostnames:80".into(),
            backends: backends.iter().map(|&i| backend(i)).collect(),
            flags: match scheduler {
                Scheduler::Random => 0,
                Scheduler::LeastConn => SVC_FLAG_SCHED | SVC_FLAG_LEAST_CONN,
                _ => SVC_FLAG_SCHED,
            },
            scheduler,
            ..Default::default()
        },
    )]
}

/// The backend a SYN from 10.244.1.`c`:`sport` went to.
fn syn_to(dp: &mut Datapath, hook: Hook, c: u8, sport: u16) -> Ipv4Addr {
    let frame = Frame::tcp((Ipv4Addr::new(10, 244, 1, c), sport), (VIP, 80), TCP_SYN).build();
    packet::dst(&dp.run_on(hook, &frame).1).0
}

#[test]
fn round_robin_takes_the_backends_in_turn() {
    for hook in HOOKS {
        let mut dp = Datapath::new(&format!("rr-{hook:?}"), &[]);
        dp.program_states(&hostnames(&[0, 1, 2], Scheduler::RoundRobin));
        let got: Vec<Ipv4Addr> = (0..30)
            .map(|i| syn_to(&mut dp, hook, 1, 40_000 + i))
            .collect();
        let first: BTreeSet<Ipv4Addr> = got[..3].iter().copied().collect();
        assert_eq!(first.len(), 3, "{hook:?}: {got:?}");
        for (i, b) in got.iter().enumerate() {
            assert_eq!(*b, got[i % 3], "{hook:?}: turn {i} of {got:?}");
        }
    }
}

#[test]
fn hashing_keeps_a_client_or_a_destination_on_one_backend() {
    for hook in HOOKS {
        let mut dp = Datapath::new(&format!("sh-{hook:?}"), &[]);
        dp.program_states(&hostnames(&[0, 1, 2], Scheduler::SourceHash));
        let per_client: BTreeMap<u8, BTreeSet<Ipv4Addr>> = (1..40)
            .map(|c| {
                let to = (0..5)
                    .map(|i| syn_to(&mut dp, hook, c, 41_000 + i))
                    .collect();
                (c, to)
            })
            .collect();
        assert!(
            per_client.values().all(|s| s.len() == 1),
            "{hook:?}: {per_client:?}"
        );
        let used: BTreeSet<&Ipv4Addr> = per_client.values().flatten().collect();
        assert_eq!(used.len(), 3, "{hook:?}: 39 clients over {used:?}");
        // One destination (the VIP): one backend, whatever the client.
        dp.program_states(&hostnames(&[0, 1, 2], Scheduler::DestHash));
        let to: BTreeSet<Ipv4Addr> = (1..40).map(|c| syn_to(&mut dp, hook, c, 42_000)).collect();
        assert_eq!(to.len(), 1, "{hook:?}: dest-hash {to:?}");
    }
}

#[test]
fn maglev_is_the_same_on_every_node_and_moves_only_a_leaving_backends_flows() {
    let maglev = Scheduler::Maglev(16_381);
    for hook in HOOKS {
        // Two nodes; on the second, backend 4 came first, so the slots
        // hold the backends in another order.
        let mut a = Datapath::new(&format!("mg-a-{hook:?}"), &[]);
        a.program_states(&hostnames(&[0, 1, 2, 3, 4], maglev));
        let mut b = Datapath::new(&format!("mg-b-{hook:?}"), &[]);
        b.program_states(&hostnames(&[4], maglev));
        b.program_states(&hostnames(&[0, 1, 2, 3, 4], maglev));
        let flows: Vec<(u8, u16)> = (1..=40)
            .flat_map(|c| (0..10).map(move |i| (c, 43_000 + i)))
            .collect();
        let on_a: Vec<Ipv4Addr> = flows
            .iter()
            .map(|&(c, p)| syn_to(&mut a, hook, c, p))
            .collect();
        let on_b: Vec<Ipv4Addr> = flows
            .iter()
            .map(|&(c, p)| syn_to(&mut b, hook, c, p))
            .collect();
        assert_eq!(on_a, on_b, "{hook:?}: the nodes disagree");
        // An agent restarting adopts the tables as they are.
        assert!(a.reads_back_as_planned() && b.reads_back_as_planned());
        let used: BTreeSet<&Ipv4Addr> = on_a.iter().collect();
        assert_eq!(used.len(), 5, "{hook:?}: 400 flows over {used:?}");
        // Backend 2 leaves. New SYNs of the same tuples (their conntrack
        // entries are replaced as for reused tuples) are placed again.
        a.program_states(&hostnames(&[0, 1, 3, 4], maglev));
        let gone = backend(2).addr;
        let again: Vec<Ipv4Addr> = flows
            .iter()
            .map(|&(c, p)| syn_to(&mut a, hook, c, p + 1000))
            .collect();
        let base: Vec<Ipv4Addr> = flows
            .iter()
            .map(|&(c, p)| syn_to(&mut b, hook, c, p + 1000))
            .collect();
        let (mut stayed, mut moved) = (0, 0);
        for (before, after) in base.iter().zip(&again) {
            assert_ne!(
                IpAddr::from(*after),
                gone,
                "{hook:?}: a flow went to the removed backend"
            );
            if IpAddr::from(*before) != gone {
                if before == after {
                    stayed += 1;
                } else {
                    moved += 1;
                }
            }
        }
        // Maglev moves a little besides the leaving backend's share: at
        // most a tenth of the others' flows here.
        assert!(
            moved * 10 <= stayed + moved,
            "{hook:?}: {moved} of {} flows of staying backends moved",
            stayed + moved
        );
    }
}

/// Sends a segment of the flow from 10.244.1.1:`sport` with `flags`.
fn segment(dp: &mut Datapath, hook: Hook, sport: u16, flags: u8) {
    let frame = Frame::tcp((Ipv4Addr::new(10, 244, 1, 1), sport), (VIP, 80), flags).build();
    dp.run_on(hook, &frame);
}

#[test]
fn least_conn_counts_flows_in_and_out_and_picks_the_least_loaded() {
    for hook in HOOKS {
        let mut dp = Datapath::new(&format!("lc-{hook:?}"), &[]);
        dp.program_states(&hostnames(&[0, 1, 2], Scheduler::LeastConn));
        let counts = |dp: &Datapath| -> Vec<u64> { dp.active_flows().into_values().collect() };
        // Six flows: each backend gets two (the least loaded is always
        // one with fewer than the others).
        let first: Vec<Ipv4Addr> = (0..6)
            .map(|i| syn_to(&mut dp, hook, 1, 50_000 + i))
            .collect();
        assert_eq!(counts(&dp), [2, 2, 2], "{hook:?}: {first:?}");
        let on = |b: Ipv4Addr| first.iter().filter(|&&x| x == b).count();
        assert!(first.iter().all(|&b| on(b) == 2), "{hook:?}: {first:?}");
        // A retransmitted SYN is the same flow: not counted again.
        assert_eq!(syn_to(&mut dp, hook, 1, 50_000), first[0], "{hook:?}");
        assert_eq!(counts(&dp).iter().sum::<u64>(), 6, "{hook:?}");
        // The client closes flow 0: its backend has one flow fewer, and
        // the next flow goes there. A second FIN counts nothing.
        segment(&mut dp, hook, 50_000, TCP_FIN | TCP_ACK);
        segment(&mut dp, hook, 50_000, TCP_FIN | TCP_ACK);
        assert_eq!(counts(&dp).iter().sum::<u64>(), 5, "{hook:?}");
        assert_eq!(syn_to(&mut dp, hook, 1, 50_100), first[0], "{hook:?}");
        // The backend of flow 1 resets it (a reply): counted out too.
        let rst = Frame::tcp(
            (first[1], 9376),
            (Ipv4Addr::new(10, 244, 1, 1), 50_001),
            TCP_RST,
        )
        .build();
        dp.run_on(hook, &rst);
        assert_eq!(counts(&dp).iter().sum::<u64>(), 5, "{hook:?}");
        assert_eq!(syn_to(&mut dp, hook, 1, 50_101), first[1], "{hook:?}");
        // A backend that leaves frees its id: the id's count starts over.
        dp.program_states(&hostnames(&[0, 1], Scheduler::LeastConn));
        assert_eq!(counts(&dp), [2, 2], "{hook:?}");
    }
}
