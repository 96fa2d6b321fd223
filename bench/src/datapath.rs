//! Section 1, per-packet cost of the tc and XDP programs through
//! BPF_PROG_TEST_RUN, each against a program of its hook that only
//! returns, at growing numbers of Services.
//!
//! Each sample is one run (repeat = 1) on a fresh skb: with repeat > 1 the
//! kernel reuses one skb, so after the first DNAT the packet no longer
//! goes to the VIP and later runs would measure another path. The kernel
//! times the run itself; the clock overhead is the same for the baseline
//! and cancels out in "added ns".
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::programs::{Program, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp};
use ferrolb_tests::bpffs::Bpffs;
use ferrolb_tests::packet::{self, Frame, TCP_ACK, TCP_SYN};
use lb_agent::{
    datapath::{
        PROG_TC_INGRESS, PROG_TC_PASS, PROG_XDP, PROG_XDP_PASS, attach, loader, maps::ServiceMaps,
    },
    reconcile,
};

use crate::report::Report;
use crate::stats::{Spread, fmt, interquartile_mean, spread};
use crate::{Opts, synth};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 100);

/// A program BPF_PROG_TEST_RUN can run on a frame (tc or XDP).
trait Runnable: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult> {}
impl<T: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>> Runnable for T {}

fn run_once(prog: &impl Runnable, frame: &[u8]) -> Result<(u32, f64, Vec<u8>)> {
    let mut out = vec![0u8; 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, r.duration.as_nanos() as f64, out))
}

/// Interquartile mean ns of `samples` runs, each on the frame `make(k)`
/// returns. Single runs are timed at the clock's granularity (about 10 ns
/// here); a median would be just as coarse.
fn central_ns(
    prog: &impl Runnable,
    samples: usize,
    make: impl Fn(usize) -> Vec<u8>,
) -> Result<f64> {
    let mut v = Vec::with_capacity(samples);
    for k in 0..samples {
        v.push(run_once(prog, &make(k))?.1);
    }
    Ok(interquartile_mean(&v))
}

const CASES: [&str; 4] = [
    "non-service packet (pass-through)",
    "new flow to a ClusterIP (first packet)",
    "established flow (conntrack hit)",
    "reply from backend (reverse NAT)",
];

/// The hooks measured: (name, program, its pass-only baseline).
const HOOKS: [(&str, &str, &str); 2] = [
    ("tc", PROG_TC_INGRESS, PROG_TC_PASS),
    ("XDP", PROG_XDP, PROG_XDP_PASS),
];

/// Per-repetition figures for the four cases, in ns: (ours - pass, ours).
type CaseSamples = ([Vec<f64>; 4], [Vec<f64>; 4]);

/// One repetition of the four cases on `prog` against `pass`. Every new
/// flow uses a client address never used before (`flow_seq`).
fn measure(
    prog: &impl Runnable,
    pass: &impl Runnable,
    samples: usize,
    vip: Ipv4Addr,
    flow_seq: &mut usize,
    out: &mut CaseSamples,
) -> Result<()> {
    let other = (Ipv4Addr::new(10, 244, 0, 9), 9376);
    let base = central_ns(pass, samples, |_| {
        Frame::tcp((CLIENT, 40000), other, TCP_ACK).build()
    })?;
    let passthrough = central_ns(prog, samples, |_| {
        Frame::tcp((CLIENT, 40000), other, TCP_ACK).build()
    })?;
    let start = *flow_seq;
    *flow_seq += samples;
    let new_flow = central_ns(prog, samples, |k| {
        let c = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + (start + k) as u32);
        Frame::tcp((c, 40000), (vip, synth::SERVICE_PORT), TCP_SYN).build()
    })?;
    // One tracked flow, then its packets and its replies.
    let sport = 30000 + (*flow_seq % 20000) as u16;
    *flow_seq += 1;
    let (_, _, first) = run_once(
        prog,
        &Frame::tcp((CLIENT, sport), (vip, synth::SERVICE_PORT), TCP_SYN).build(),
    )?;
    let backend = packet::dst(&first);
    let est = central_ns(prog, samples, |_| {
        Frame::tcp((CLIENT, sport), (vip, synth::SERVICE_PORT), TCP_ACK).build()
    })?;
    let reply = central_ns(prog, samples, |_| {
        Frame::tcp(backend, (CLIENT, sport), TCP_ACK).build()
    })?;
    for (i, v) in [passthrough, new_flow, est, reply].into_iter().enumerate() {
        out.0[i].push(v - base);
        out.1[i].push(v);
    }
    Ok(())
}

fn program<'a>(ebpf: &'a aya::Ebpf, name: &str) -> Result<&'a Program> {
    ebpf.program(name)
        .with_context(|| format!("program {name} missing"))
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let sizes: &[usize] = if o.quick {
        &[1, 1_000, 10_000]
    } else {
        &[1, 1_000, 10_000, 100_000]
    };
    let samples = if o.quick { 1000 } else { 3000 };
    let reps = if o.quick { 1 } else { 3 };
    let fs = Bpffs::new("bench-dp")?;
    let max = sizes.iter().max().copied().unwrap_or(1) as u32;
    let entries = (max * (synth::ENDPOINTS_PER_SERVICE as u32 + 1)).next_power_of_two();
    let opts = loader::LoadOptions {
        pin_dir: fs.dir.join("ferrolb"),
        services_max: entries,
        backends_max: entries,
        conntrack_max: 1 << 20,
        sock_max: 1024,
        frontends_max: (max * 2).next_power_of_two(),
    };
    let mut ebpf = loader::load(&opts)?;
    attach::load_programs(&mut ebpf, false)?;
    {
        let pass: &mut SchedClassifier = ebpf
            .program_mut(PROG_TC_PASS)
            .context("pass program")?
            .try_into()?;
        pass.load()?;
        let pass: &mut Xdp = ebpf
            .program_mut(PROG_XDP_PASS)
            .context("XDP pass program")?
            .try_into()?;
        pass.load()?;
    }
    let mut maps = ServiceMaps::from_ebpf(&mut ebpf)?;
    let mut rec = reconcile::Reconciler::new(maps.read()?);
    // results[hook][size][case] = spread over repetitions of (ours - pass) ns
    let mut rows = Vec::new();
    let mut added: [Vec<Vec<Spread>>; 2] = Default::default();
    let mut totals: [Vec<Vec<Spread>>; 2] = Default::default();
    let mut flow_seq: usize = 0;
    for &n in sizes {
        eprintln!(
            "  datapath: {n} services x {} backends",
            synth::ENDPOINTS_PER_SERVICE
        );
        let desired = synth::desired(n);
        let ops = rec.plan_all(&desired);
        let errs = maps.apply(&ops, rec.mirror_mut());
        anyhow::ensure!(
            errs.is_empty(),
            "programming {n} services: {:?}",
            errs.first()
        );
        // The measured Service sits in the middle of the set.
        let vip = synth::vip(n / 2);
        for (h, (hook, prog_name, pass_name)) in HOOKS.iter().enumerate() {
            let mut got = CaseSamples::default();
            for _ in 0..reps {
                let (prog, pass) = (program(&ebpf, prog_name)?, program(&ebpf, pass_name)?);
                match (prog, pass) {
                    (Program::SchedClassifier(p), Program::SchedClassifier(b)) => {
                        measure(p, b, samples, vip, &mut flow_seq, &mut got)?
                    }
                    (Program::Xdp(p), Program::Xdp(b)) => {
                        measure(p, b, samples, vip, &mut flow_seq, &mut got)?
                    }
                    _ => anyhow::bail!("{prog_name}/{pass_name}: unexpected program types"),
                }
            }
            let a: Vec<Spread> = got.0.iter().map(|v| spread(v)).collect();
            let t: Vec<Spread> = got.1.iter().map(|v| spread(v)).collect();
            for (i, case) in CASES.iter().enumerate() {
                let [mn, md, mx] = fmt(a[i], 0);
                rows.push(vec![
                    hook.to_string(),
                    n.to_string(),
                    case.to_string(),
                    mn,
                    md,
                    mx,
                    format!("{:.0}", t[i].median),
                ]);
            }
            added[h].push(a);
            totals[h].push(t);
        }
    }
    r.table(
        "1. Per-packet datapath cost (tc and XDP programs, BPF_PROG_TEST_RUN)",
        &format!(
            "Added ns/packet = ns of our program minus ns of a program of the same hook that only \
             returns (`flb_tc_pass`, `flb_xdp_pass`), same packet, same run; each is the interquartile mean of {samples} \
             runs (repeat = 1, fresh packet each: the clock's granularity is about 10 ns, which a median would \
             keep), {reps} repetition(s): min/median/max are over repetitions. Services \
             have {} backends each; the measured Service is in the middle of the set. tc (`flb_tc_ingress`, pod \
             side) must rewrite through helpers and keep CHECKSUM_PARTIAL skbs right; XDP (`flb_xdp`, wire side) \
             writes the packet directly.",
            synth::ENDPOINTS_PER_SERVICE
        ),
        &[
            "hook",
            "services",
            "case",
            "added ns min",
            "added ns median",
            "added ns max",
            "total ns median",
        ],
        rows,
    );
    for (h, (hook, _, _)) in HOOKS.iter().enumerate() {
        let lines = CASES
            .iter()
            .enumerate()
            .map(|(i, case)| {
                let pts = sizes
                    .iter()
                    .zip(&added[h])
                    .map(|(n, a)| (*n as f64, a[i].median))
                    .collect();
                (case.to_string(), pts)
            })
            .collect();
        r.plot(
            &format!("datapath_added_ns_{}.png", hook.to_lowercase()),
            &format!("{hook} program: added ns per packet"),
            "added ns/packet (median)",
            lines,
        );
        let first = &added[h][0];
        r.target(
            &format!("{hook}: conntrack hit adds <= 60 ns"),
            format!("{:.0} ns (1 service)", first[2].median),
            first[2].median <= 60.0,
        );
        r.target(
            &format!("{hook}: new flow adds <= 150 ns"),
            format!("{:.0} ns (1 service)", first[1].median),
            first[1].median <= 150.0,
        );
        let (lo, hi) = (&totals[h][0], totals[h].last().expect("sizes"));
        let worst = (0..4)
            .map(|i| hi[i].median / lo[i].median - 1.0)
            .fold(f64::MIN, f64::max);
        r.target(
            &format!(
                "{hook}: {} services within 10% of 1 service (per packet)",
                sizes.last().unwrap()
            ),
            format!("worst case {:+.1}%", worst * 100.0),
            worst <= 0.10,
        );
    }
    Ok(())
}
