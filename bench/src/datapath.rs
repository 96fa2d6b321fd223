//! Section 1, per-packet cost of the tc program through BPF_PROG_TEST_RUN, against
//! a program that only returns, at growing numbers of Services.
//!
//! Each sample is one run (repeat = 1) on a fresh skb: with repeat > 1 the
//! kernel reuses one skb, so after the first DNAT the packet no longer
//! goes to the VIP and later runs would measure another path. The kernel
//! times the run itself; the clock overhead is the same for the baseline
//! and cancels out in "added ns".
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use ferrolb_tests::bpffs::Bpffs;
use ferrolb_tests::packet::{self, Frame, TCP_ACK, TCP_SYN};
use lb_agent::{
    datapath::{PROG_TC_INGRESS, PROG_TC_PASS, attach, loader, maps::ServiceMaps},
    reconcile,
};

use crate::report::Report;
use crate::stats::{Spread, fmt, spread};
use crate::{Opts, synth};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 100);

fn run_once(prog: &SchedClassifier, frame: &[u8]) -> Result<(u32, f64, Vec<u8>)> {
    let mut out = vec![0u8; 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, r.duration.as_nanos() as f64, out))
}

/// Median ns of `samples` runs, each on the frame `make(k)` returns.
fn median_ns(
    prog: &SchedClassifier,
    samples: usize,
    make: impl Fn(usize) -> Vec<u8>,
) -> Result<f64> {
    let mut v = Vec::with_capacity(samples);
    for k in 0..samples {
        v.push(run_once(prog, &make(k))?.1);
    }
    Ok(spread(&v).median)
}

const CASES: [&str; 4] = [
    "non-service packet (pass-through)",
    "new flow to a ClusterIP (first packet)",
    "established flow (conntrack hit)",
    "reply from backend (reverse NAT)",
];

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
    }
    let mut maps = ServiceMaps::from_ebpf(&mut ebpf)?;
    let mut rec = reconcile::Reconciler::new(maps.read()?);
    let prog: &SchedClassifier = ebpf.program(PROG_TC_INGRESS).context("tc")?.try_into()?;
    let pass: &SchedClassifier = ebpf.program(PROG_TC_PASS).context("pass")?.try_into()?;

    // results[size][case] = per-repetition medians of (ours - pass) ns
    let mut rows = Vec::new();
    let mut added: Vec<Vec<Spread>> = Vec::new();
    let mut totals: Vec<Vec<Spread>> = Vec::new();
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
        let other = (Ipv4Addr::new(10, 244, 0, 9), 9376);
        let mut per_case: [Vec<f64>; 4] = Default::default();
        let mut per_case_total: [Vec<f64>; 4] = Default::default();
        for _ in 0..reps {
            let base = median_ns(pass, samples, |_| {
                Frame::tcp((CLIENT, 40000), other, TCP_ACK).build()
            })?;
            let passthrough = median_ns(prog, samples, |_| {
                Frame::tcp((CLIENT, 40000), other, TCP_ACK).build()
            })?;
            // New flows: a distinct client address per sample.
            let start = flow_seq;
            flow_seq += samples;
            let new_flow = median_ns(prog, samples, |k| {
                let c =
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + (start + k) as u32);
                Frame::tcp((c, 40000), (vip, synth::SERVICE_PORT), TCP_SYN).build()
            })?;
            // One tracked flow, then its packets and its replies.
            let sport = 30000 + (flow_seq % 20000) as u16;
            flow_seq += 1;
            let (_, _, first) = run_once(
                prog,
                &Frame::tcp((CLIENT, sport), (vip, synth::SERVICE_PORT), TCP_SYN).build(),
            )?;
            let backend = packet::dst(&first);
            let est = median_ns(prog, samples, |_| {
                Frame::tcp((CLIENT, sport), (vip, synth::SERVICE_PORT), TCP_ACK).build()
            })?;
            let reply = median_ns(prog, samples, |_| {
                Frame::tcp(backend, (CLIENT, sport), TCP_ACK).build()
            })?;
            for (i, v) in [passthrough, new_flow, est, reply].into_iter().enumerate() {
                per_case[i].push(v - base);
                per_case_total[i].push(v);
            }
        }
        let a: Vec<Spread> = per_case.iter().map(|v| spread(v)).collect();
        let t: Vec<Spread> = per_case_total.iter().map(|v| spread(v)).collect();
        for (i, case) in CASES.iter().enumerate() {
            let [mn, md, mx] = fmt(a[i], 0);
            rows.push(vec![
                n.to_string(),
                case.to_string(),
                mn,
                md,
                mx,
                format!("{:.0}", t[i].median),
            ]);
        }
        added.push(a);
        totals.push(t);
    }
    r.table(
        "1. Per-packet datapath cost (tc program, BPF_PROG_TEST_RUN)",
        &format!(
            "Added ns/packet = median ns of `flb_tc_ingress` minus median ns of a program that only returns \
             (`flb_tc_pass`), same packet, same run. {samples} samples per figure (repeat = 1, fresh skb each), \
             {reps} repetition(s): min/median/max are over repetitions. Services have {} backends each; the measured \
             Service is in the middle of the set. XDP is not implemented yet.",
            synth::ENDPOINTS_PER_SERVICE
        ),
        &["services", "case", "added ns min", "added ns median", "added ns max", "total ns median"],
        rows,
    );
    let lines = CASES
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let pts = sizes
                .iter()
                .zip(&added)
                .map(|(n, a)| (*n as f64, a[i].median))
                .collect();
            (case.to_string(), pts)
        })
        .collect();
    r.plot(
        "datapath_added_ns.png",
        "tc program: added ns per packet",
        "added ns/packet (median)",
        lines,
    );
    let first = &added[0];
    r.target(
        "conntrack hit adds <= 60 ns",
        format!("{:.0} ns (1 service)", first[2].median),
        first[2].median <= 60.0,
    );
    r.target(
        "new flow adds <= 150 ns",
        format!("{:.0} ns (1 service)", first[1].median),
        first[1].median <= 150.0,
    );
    let last = totals.last().expect("sizes");
    let (lo, hi) = (&totals[0], last);
    let worst = (0..4)
        .map(|i| hi[i].median / lo[i].median - 1.0)
        .fold(f64::MIN, f64::max);
    r.target(
        &format!(
            "{} services within 10% of 1 service (per packet)",
            sizes.last().unwrap()
        ),
        format!("worst case {:+.1}%", worst * 100.0),
        worst <= 0.10,
    );
    Ok(())
}
