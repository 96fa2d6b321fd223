//! Section 1g, backend choice: a new flow's added cost under each
//! scheduler, and with session affinity, at tc (BPF_PROG_TEST_RUN, warm,
//! as table 1's new flow); and how long the agent takes to build a Maglev
//! table for 1,000 backends.
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Result;
use aya::programs::Program;
use ferrolb_tests::packet::{Frame, TCP_SYN};
use lb_agent::{
    maglev,
    model::{Desired, FrontendKey},
    sched::Scheduler,
};
use lb_common::{
    DEFAULT_MAGLEV_TABLE_SIZE, SVC_FLAG_AFFINITY, SVC_FLAG_LEAST_CONN, SVC_FLAG_SCHED,
};

use crate::datapath::{HOOKS, Harness, Loaded, Pinned, TC_ACT_OK, WARM_CLIENTS, program};
use crate::report::Report;
use crate::stats::{fmt, spread};
use crate::{Opts, synth};

/// The frontends measured: synth's Service `i` with each setting.
const CASES: [(&str, Scheduler, bool); 7] = [
    ("random (default)", Scheduler::Random, false),
    ("round-robin", Scheduler::RoundRobin, false),
    (
        "maglev (16381 entries)",
        Scheduler::Maglev(DEFAULT_MAGLEV_TABLE_SIZE),
        false,
    ),
    ("source-hash", Scheduler::SourceHash, false),
    ("dest-hash", Scheduler::DestHash, false),
    (
        "least-conn (every backend's count compared)",
        Scheduler::LeastConn,
        false,
    ),
    (
        "random + session affinity (new session)",
        Scheduler::Random,
        true,
    ),
];

fn desired() -> Desired {
    let mut d = synth::desired(CASES.len());
    for (i, (_, scheduler, affinity)) in CASES.iter().enumerate() {
        let key = FrontendKey {
            addr: synth::vip(i).into(),
            port: synth::SERVICE_PORT,
            proto: lb_agent::model::Proto::Tcp,
        };
        let st = d.frontends.get_mut(&key).expect("synth frontend");
        st.scheduler = *scheduler;
        if *scheduler != Scheduler::Random {
            st.flags |= SVC_FLAG_SCHED;
        }
        if *scheduler == Scheduler::LeastConn {
            st.flags |= SVC_FLAG_LEAST_CONN;
        }
        if *affinity {
            st.flags |= SVC_FLAG_AFFINITY;
            st.affinity_secs = Some(lb_common::DEFAULT_AFFINITY_SECS);
        }
    }
    d
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let _pinned = Pinned::to_current_cpu()?;
    let reps = if o.quick { 3 } else { 9 };
    let loops = if o.quick { 5 } else { 11 };
    let mut l = Loaded::programmed("bench-sched", &desired())?;
    let (_, prog_name, pass_name, harness_name, _) = HOOKS[0];
    let mut added: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
    for _ in 0..reps {
        for (i, _) in CASES.iter().enumerate() {
            l.conntrack
                .purge(&Default::default(), &Default::default())?;
            let frame = Frame::tcp(
                (WARM_CLIENTS, 40000),
                (synth::vip(i), synth::SERVICE_PORT),
                TCP_SYN,
            )
            .build();
            let (prog, pass) = (program(&l.ebpf, prog_name)?, program(&l.ebpf, pass_name)?);
            let (prog_fd, pass_fd) = (prog.fd()?, pass.fd()?);
            let Program::SchedClassifier(hp) = program(&l.ebpf, harness_name)? else {
                anyhow::bail!("{harness_name}: unexpected program type");
            };
            let mut h = Harness {
                prog: hp,
                frame: &mut l.frame,
                next: &mut l.next[0],
                repeat: 1000,
                loops,
                forward: TC_ACT_OK,
                ctx: None,
            };
            let [a] = h.added_ns((prog_fd, pass_fd), &[(frame, true)])?;
            added[i].push(a);
        }
    }
    let random = spread(&added[0]).median;
    let mut rows: Vec<Vec<String>> = CASES
        .iter()
        .zip(&added)
        .map(|((name, ..), a)| {
            let s = spread(a);
            let [mn, md, mx] = fmt(s, 0);
            vec![
                name.to_string(),
                format!("{md} ({mn}-{mx})"),
                format!("{:+.0}", s.median - random),
            ]
        })
        .collect();
    // The agent's side: a Maglev table for 1,000 backends.
    let backends: Vec<String> = (0..1000)
        .map(|i| format!("{}:8080", Ipv4Addr::from(0x0a80_0000u32 + i)))
        .collect();
    for m in [DEFAULT_MAGLEV_TABLE_SIZE, 65_521] {
        let times: Vec<f64> = (0..if o.quick { 3 } else { 9 })
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(maglev::table(&backends, m));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let s = spread(&times);
        let [mn, md, mx] = fmt(s, 2);
        rows.push(vec![
            format!("agent: Maglev table, 1000 backends, {m} entries (ms)"),
            format!("{md} ({mn}-{mx})"),
            "-".into(),
        ]);
    }
    r.table(
        "1g. Backend choice: schedulers and session affinity (tc, BPF_PROG_TEST_RUN, warm new flow)",
        &format!(
            "A new flow (table 1's case: a SYN from a source never seen, the harness varying it each run) \
             to a Service of {} backends under each scheduler; affinity's figure is a new session (a \
             lookup that misses and an insert). Added ns as in table 1 (repeat = 1000, median of {loops} \
             loops), {reps} repetitions from an emptied conntrack map: median (min-max), and the \
             difference from random in the same run. Last rows: the agent building one Maglev table \
             (wall clock, ms).",
            synth::ENDPOINTS_PER_SERVICE
        ),
        &["case", "added ns (or ms)", "vs random"],
        rows,
    );
    Ok(())
}
