//! Section 1f, IPv6 beside IPv4: the four cases of table 1 for one
//! IPv4 and one IPv6 Service in the same maps, on both hooks, warm. IPv6
//! runs as tail-called stages (ingress, then the tracked-flow or
//! new-flow program), so its figures include those tail calls.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use aya::programs::{Program, ProgramFd};
use ferrolb_tests::packet::{self, Frame, TCP_ACK, TCP_SYN};
use ferrolb_tests::packet6::{Frame6, addrs6};
use lb_agent::model::{BackendAddr, FrontendKey, FrontendState, Proto};

use crate::datapath::{
    HOOKS, Harness, Loaded, Pinned, Runnable, TC_ACT_OK, XDP_PASS, program, run_once,
};
use crate::report::Report;
use crate::stats::{fmt, spread};
use crate::{Opts, synth};

const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x100);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 9);
/// New IPv6 flows come from here up (the harness varies the last 32 bits).
const WARM_CLIENTS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 100);

const CASES: [&str; 4] = [
    "non-service packet (pass-through)",
    "new flow (first packet)",
    "established flow (conntrack hit)",
    "reply from backend (reverse NAT)",
];

/// The four frames of one family, for a flow whose client port is `sport`
/// (its reply is built once the program has picked the backend).
trait Family {
    fn non_service() -> Vec<u8>;
    fn syn(sport: u16) -> Vec<u8>;
    fn fresh_syn() -> Vec<u8>;
    fn est(sport: u16) -> Vec<u8>;
    fn reply(translated_syn: &[u8], sport: u16) -> Vec<u8>;
}

struct V4;
struct V6;

impl Family for V4 {
    fn non_service() -> Vec<u8> {
        Frame::tcp(
            (CLIENT, 40000),
            (Ipv4Addr::new(10, 244, 0, 9), 9376),
            TCP_ACK,
        )
        .build()
    }
    fn syn(sport: u16) -> Vec<u8> {
        Frame::tcp(
            (CLIENT, sport),
            (synth::vip(0), synth::SERVICE_PORT),
            TCP_SYN,
        )
        .build()
    }
    fn fresh_syn() -> Vec<u8> {
        let from = (crate::datapath::WARM_CLIENTS, 40000);
        Frame::tcp(from, (synth::vip(0), synth::SERVICE_PORT), TCP_SYN).build()
    }
    fn est(sport: u16) -> Vec<u8> {
        Frame::tcp(
            (CLIENT, sport),
            (synth::vip(0), synth::SERVICE_PORT),
            TCP_ACK,
        )
        .build()
    }
    fn reply(translated_syn: &[u8], sport: u16) -> Vec<u8> {
        Frame::tcp(packet::dst(translated_syn), (CLIENT, sport), TCP_ACK).build()
    }
}

impl Family for V6 {
    fn non_service() -> Vec<u8> {
        Frame6::tcp((CLIENT6, 40000), (OTHER6, 9376), TCP_ACK).build()
    }
    fn syn(sport: u16) -> Vec<u8> {
        Frame6::tcp((CLIENT6, sport), (VIP6, synth::SERVICE_PORT), TCP_SYN).build()
    }
    fn fresh_syn() -> Vec<u8> {
        Frame6::tcp((WARM_CLIENTS6, 40000), (VIP6, synth::SERVICE_PORT), TCP_SYN).build()
    }
    fn est(sport: u16) -> Vec<u8> {
        Frame6::tcp((CLIENT6, sport), (VIP6, synth::SERVICE_PORT), TCP_ACK).build()
    }
    fn reply(translated_syn: &[u8], sport: u16) -> Vec<u8> {
        Frame6::tcp(addrs6(translated_syn).1, (CLIENT6, sport), TCP_ACK).build()
    }
}

/// The bench's IPv4 Service (`synth`'s first) and an IPv6 one beside it,
/// each with `synth::ENDPOINTS_PER_SERVICE` backends.
fn desired() -> lb_agent::model::Desired {
    let mut d = synth::desired(1);
    d.frontends.insert(
        FrontendKey {
            addr: IpAddr::V6(VIP6),
            port: synth::SERVICE_PORT,
            proto: Proto::Tcp,
        },
        FrontendState {
            name: "bench/svc6:http".into(),
            backends: (0..synth::ENDPOINTS_PER_SERVICE)
                .map(|j| BackendAddr {
                    addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x128, 0, 0, 0, 0, 0, 1 + j as u16)),
                    port: synth::TARGET_PORT,
                    local: false,
                })
                .collect(),
            ..Default::default()
        },
    );
    d
}

/// Added warm ns of the four cases of family `F` on one hook, one
/// repetition: ours minus the pass program around it.
fn measure<F: Family, P: Runnable>(
    prog: &P,
    (prog_fd, pass_fd): (&ProgramFd, &ProgramFd),
    harness: &mut Harness<'_, P>,
    sport: u16,
) -> Result<[f64; 4]> {
    let (_, _, first) = run_once(prog, &F::syn(sport))?;
    let frames: [(Vec<u8>, bool); 4] = [
        (F::non_service(), false),
        (F::fresh_syn(), true),
        (F::est(sport), false),
        (F::reply(&first, sport), false),
    ];
    harness.added_ns((prog_fd, pass_fd), &frames)
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let _pinned = Pinned::to_current_cpu()?;
    let reps = if o.quick { 3 } else { 9 };
    let (repeat, loops) = (1000u32, if o.quick { 5 } else { 11 });
    let mut l = Loaded::programmed("bench-fam", &desired())?;
    // Per hook, per family, per case: the repetitions' figures.
    let mut got: [[[Vec<f64>; 4]; 2]; 2] = Default::default();
    let mut sport = 30000u16;
    for (h, (_, prog_name, pass_name, harness_name, _)) in HOOKS.iter().enumerate() {
        for _ in 0..reps {
            for v6 in [false, true] {
                // Every repetition starts from the same conntrack state.
                l.conntrack
                    .purge(&Default::default(), &Default::default())?;
                sport += 1;
                let (prog, pass) = (program(&l.ebpf, prog_name)?, program(&l.ebpf, pass_name)?);
                let fds = (prog.fd()?, pass.fd()?);
                let added = match (prog, program(&l.ebpf, harness_name)?) {
                    (Program::SchedClassifier(p), Program::SchedClassifier(hp)) => {
                        let mut hn = harness(hp, &mut l.frame, &mut l.next[h], repeat, loops);
                        hn.forward = TC_ACT_OK;
                        if v6 {
                            measure::<V6, _>(p, fds, &mut hn, sport)?
                        } else {
                            measure::<V4, _>(p, fds, &mut hn, sport)?
                        }
                    }
                    (Program::Xdp(p), Program::Xdp(hp)) => {
                        let mut hn = harness(hp, &mut l.frame, &mut l.next[h], repeat, loops);
                        hn.forward = XDP_PASS;
                        if v6 {
                            measure::<V6, _>(p, fds, &mut hn, sport)?
                        } else {
                            measure::<V4, _>(p, fds, &mut hn, sport)?
                        }
                    }
                    _ => anyhow::bail!("{prog_name}/{harness_name}: unexpected program types"),
                };
                for (i, a) in added.into_iter().enumerate() {
                    got[h][v6 as usize][i].push(a);
                }
            }
        }
    }
    let mut rows = Vec::new();
    for (h, (hook, ..)) in HOOKS.iter().enumerate() {
        for (i, case) in CASES.iter().enumerate() {
            let (s4, s6) = (spread(&got[h][0][i]), spread(&got[h][1][i]));
            let ([mn4, md4, mx4], [mn6, md6, mx6]) = (fmt(s4, 0), fmt(s6, 0));
            rows.push(vec![
                hook.to_string(),
                case.to_string(),
                format!("{md4} ({mn4}-{mx4})"),
                format!("{md6} ({mn6}-{mx6})"),
                format!("{:+.0}", s6.median - s4.median),
            ]);
        }
        for (i, what, limit) in [(2, "conntrack hit", 60.0), (1, "new flow", 150.0)] {
            let (v4, v6) = (spread(&got[h][0][i]).median, spread(&got[h][1][i]).median);
            r.target(
                &format!("{hook}: IPv6 {what} adds <= {limit:.0} ns (as IPv4)"),
                format!("{v6:.0} ns (IPv4 in the same run: {v4:.0} ns)"),
                v6 <= limit,
            );
        }
    }
    r.table(
        "1f. IPv6 beside IPv4 (tc and XDP, BPF_PROG_TEST_RUN, warm)",
        &format!(
            "One IPv4 and one IPv6 Service ({} backends each) in the same maps; the four cases of table 1 \
             for each family, added ns as in table 1 (warm, repeat = {repeat}, median of {loops} loops). \
             IPv6 frames reach the IPv6 programs by tail call from the attached ones, and a tracked \
             flow's or a new flow's packet by a second one (their stack would not fit one program's \
             512 bytes): the IPv6 figures include both. {reps} repetitions, each from an emptied \
             conntrack map: median (min-max).",
            synth::ENDPOINTS_PER_SERVICE
        ),
        &[
            "hook",
            "case",
            "IPv4 added ns",
            "IPv6 added ns",
            "IPv6 - IPv4",
        ],
        rows,
    );
    Ok(())
}

/// A harness over `prog` with the loaded maps' frame and program slot.
pub(crate) fn harness<'a, P>(
    prog: &'a P,
    frame: &'a mut aya::maps::Array<aya::maps::MapData, lb_common::BenchFrame>,
    next: &'a mut aya::maps::ProgramArray<aya::maps::MapData>,
    repeat: u32,
    loops: usize,
) -> Harness<'a, P> {
    Harness {
        prog,
        frame,
        next,
        repeat,
        loops,
        forward: 0,
        ctx: None,
    }
}
