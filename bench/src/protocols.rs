//! Section 1h, transport protocols: the four cases of table 1 for TCP,
//! UDP and SCTP Services in the same maps, on both hooks, warm. SCTP is
//! measured twice: to a backend on the Service's own port (addresses
//! rewritten, the checksum untouched: CRC-32C covers no address) and to
//! another port (the checksum updated for the new ports, see
//! `lb_common::crc32c`).
use std::net::Ipv4Addr;

use anyhow::Result;
use aya::programs::{Program, ProgramFd};
use ferrolb_tests::packet::{self, Frame, TCP_ACK, TCP_SYN};
use lb_agent::model::{Desired, FrontendKey, Proto};

use crate::datapath::{
    HOOKS, Harness, Loaded, Pinned, Runnable, TC_ACT_OK, WARM_CLIENTS, XDP_PASS, program, run_once,
};
use crate::families::harness;
use crate::report::Report;
use crate::stats::{fmt, spread};
use crate::{Opts, synth};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 100);

const CASES: [&str; 4] = [
    "non-service packet (pass-through)",
    "new flow (first packet)",
    "established flow (conntrack hit)",
    "reply from backend (reverse NAT)",
];

/// A HEARTBEAT chunk (8 bytes): the SCTP packet is then as long as the
/// TCP one the harness restores (54-byte frames).
const HEARTBEAT: [u8; 8] = [4, 0, 0, 8, 0, 1, 0, 4];

/// The protocols measured: name, protocol, Service port (the backends
/// listen on `synth::TARGET_PORT`).
const KINDS: [(&str, Proto, u16); 4] = [
    ("TCP", Proto::Tcp, synth::SERVICE_PORT),
    ("UDP", Proto::Udp, synth::SERVICE_PORT),
    ("SCTP, same port", Proto::Sctp, synth::TARGET_PORT),
    ("SCTP, port rewritten", Proto::Sctp, synth::SERVICE_PORT),
];

/// A packet of `proto` from `src` to `dst` (TCP with `flags`).
fn frame(proto: Proto, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    match proto {
        Proto::Tcp => Frame::tcp(src, dst, flags).build(),
        Proto::Udp => Frame::udp(src, dst, &[0; 12]).build(),
        Proto::Sctp => Frame::sctp(src, dst, &HEARTBEAT).build(),
    }
}

/// `synth`'s first Service, and the same backends behind a UDP and two
/// SCTP frontends on its VIP.
fn desired() -> Desired {
    let mut d = synth::desired(1);
    let key = |proto, port| FrontendKey {
        addr: synth::vip(0).into(),
        port,
        proto,
    };
    let tcp = d.frontends[&key(Proto::Tcp, synth::SERVICE_PORT)].clone();
    for (_, proto, port) in &KINDS[1..] {
        let mut st = tcp.clone();
        st.name = format!("bench/svc-0:{proto}-{port}");
        d.frontends.insert(key(*proto, *port), st);
    }
    d
}

/// Added warm ns of the four cases for one protocol on one hook, one
/// repetition: ours minus the pass program around it.
fn measure<P: Runnable>(
    prog: &P,
    (prog_fd, pass_fd): (&ProgramFd, &ProgramFd),
    harness: &mut Harness<'_, P>,
    (proto, port): (Proto, u16),
    sport: u16,
) -> Result<[f64; 4]> {
    let vip = (synth::vip(0), port);
    let (_, _, first) = run_once(prog, &frame(proto, (CLIENT, sport), vip, TCP_SYN))?;
    let frames: [(Vec<u8>, bool); 4] = [
        (
            frame(proto, (CLIENT, sport), (synth::endpoint(0, 0), 9), TCP_ACK),
            false,
        ),
        (frame(proto, (WARM_CLIENTS, 40000), vip, TCP_SYN), true),
        (frame(proto, (CLIENT, sport), vip, TCP_ACK), false),
        (
            frame(proto, packet::dst(&first), (CLIENT, sport), TCP_ACK),
            false,
        ),
    ];
    harness.added_ns((prog_fd, pass_fd), &frames)
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let _pinned = Pinned::to_current_cpu()?;
    let reps = if o.quick { 3 } else { 9 };
    let (repeat, loops) = (1000u32, if o.quick { 5 } else { 11 });
    let mut l = Loaded::programmed("bench-proto", &desired())?;
    // Per hook, per protocol, per case: the repetitions' figures.
    let mut got = vec![vec![[const { Vec::new() }; 4]; KINDS.len()]; HOOKS.len()];
    let mut sport = 30000u16;
    for (h, (_, prog_name, pass_name, harness_name, _)) in HOOKS.iter().enumerate() {
        for _ in 0..reps {
            for (k, (_, proto, port)) in KINDS.iter().enumerate() {
                // Every repetition starts from the same conntrack state.
                l.conntrack
                    .purge(&Default::default(), &Default::default())?;
                sport += 1;
                let (prog, pass) = (program(&l.ebpf, prog_name)?, program(&l.ebpf, pass_name)?);
                let fds = (prog.fd()?, pass.fd()?);
                let kind = (*proto, *port);
                let added = match (prog, program(&l.ebpf, harness_name)?) {
                    (Program::SchedClassifier(p), Program::SchedClassifier(hp)) => {
                        let mut hn = harness(hp, &mut l.frame, &mut l.next[h], repeat, loops);
                        hn.forward = TC_ACT_OK;
                        measure(p, fds, &mut hn, kind, sport)?
                    }
                    (Program::Xdp(p), Program::Xdp(hp)) => {
                        let mut hn = harness(hp, &mut l.frame, &mut l.next[h], repeat, loops);
                        hn.forward = XDP_PASS;
                        measure(p, fds, &mut hn, kind, sport)?
                    }
                    _ => anyhow::bail!("{prog_name}/{harness_name}: unexpected program types"),
                };
                for (i, a) in added.into_iter().enumerate() {
                    got[h][k][i].push(a);
                }
            }
        }
    }
    let mut rows = Vec::new();
    for (h, (hook, ..)) in HOOKS.iter().enumerate() {
        for (i, case) in CASES.iter().enumerate() {
            let tcp = spread(&got[h][0][i]).median;
            let mut row = vec![hook.to_string(), case.to_string()];
            for (k, _) in KINDS.iter().enumerate() {
                let s = spread(&got[h][k][i]);
                let [mn, md, mx] = fmt(s, 0);
                row.push(if k == 0 {
                    format!("{md} ({mn}-{mx})")
                } else {
                    format!("{md} ({mn}-{mx}), {:+.0}", s.median - tcp)
                });
            }
            rows.push(row);
        }
    }
    let mut header = vec!["hook", "case"];
    header.extend(KINDS.iter().map(|(name, ..)| *name));
    r.table(
        "1h. Transport protocols: TCP, UDP, SCTP (tc and XDP, BPF_PROG_TEST_RUN, warm)",
        &format!(
            "A TCP, a UDP and two SCTP Services on one VIP with the same {} backends (listening on port \
             {}): SCTP once on that port (addresses rewritten; SCTP's CRC-32C covers no address) and \
             once on port {} (the checksum updated for the rewritten ports). The four cases of table \
             1, 54-byte frames, added ns as in table 1 (warm, repeat = {repeat}, median of {loops} \
             loops); UDP and SCTP flows start on any packet. {reps} repetitions, each from an emptied \
             conntrack map: median (min-max), and the difference from TCP in the same run.",
            synth::ENDPOINTS_PER_SERVICE,
            synth::TARGET_PORT,
            synth::SERVICE_PORT
        ),
        &header,
        rows,
    );
    Ok(())
}
