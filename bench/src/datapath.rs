//! Section 1, per-packet cost of the tc and XDP programs through
//! BPF_PROG_TEST_RUN, each against a program of its hook that only
//! returns, at growing numbers of Services. Two ways:
//!
//! - Warm (the figures the targets are about): `repeat` runs in a kernel
//!   loop, caches warm, as at line rate. The kernel reuses one packet and
//!   our programs rewrite it, so the loop runs lb-ebpf's bench harness
//!   (`flb_bench_tc`, `flb_bench_xdp`): it restores the frame (for new
//!   flows with a source address never used before) and tail-calls the
//!   program under test. The baseline is the same harness tail-calling the
//!   pass program, so the harness's own cost cancels out.
//! - Cold: one run per syscall (repeat = 1) on a fresh packet, what a
//!   packet costs when the syscall in between has evicted the program's
//!   cache lines; the interquartile mean over many runs.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::maps::{Array, MapData, ProgramArray};
use aya::programs::{Program, ProgramFd, TestRun, TestRunOptions, TestRunResult};
use ferrolb_tests::bpffs::Bpffs;
use ferrolb_tests::packet::{self, Frame, TCP_ACK, TCP_SYN};
use lb_agent::{
    datapath::{
        PROG_BENCH_TC, PROG_BENCH_XDP, PROG_TC_INGRESS, PROG_TC_PASS, PROG_XDP, PROG_XDP_PASS,
        attach, conntrack::Conntrack, loader, maps::ServiceMaps,
    },
    reconcile,
};
use lb_common::{
    BENCH_FRAME_LEN, BENCH_FRAME6_LEN, BenchFrame, MAP_BENCH_FRAME, MAP_BENCH_TC_PROG,
    MAP_BENCH_XDP_PROG,
};

use crate::report::Report;
use crate::stats::{Spread, fmt, interquartile_mean, spread};
use crate::{Opts, synth};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 100);
/// New flows in the warm loop come from here up (the harness adds its
/// run count); the cold ones from 10.250.0.0 up.
pub(crate) const WARM_CLIENTS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);

/// A program BPF_PROG_TEST_RUN can run on a frame (tc or XDP).
pub(crate) trait Runnable:
    for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>
{
}
impl<T: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>> Runnable for T {}

pub(crate) fn run_once(prog: &impl Runnable, frame: &[u8]) -> Result<(u32, f64, Vec<u8>)> {
    run_once_on(prog, frame, None)
}

/// Like `run_once`, with a context (XDP: the receiving interface).
pub(crate) fn run_once_on(
    prog: &impl Runnable,
    frame: &[u8],
    ctx: Option<&[u8]>,
) -> Result<(u32, f64, Vec<u8>)> {
    let mut out = vec![0u8; 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx,
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

/// The harness of one hook and its maps.
pub(crate) struct Harness<'a, P> {
    pub prog: &'a P,
    pub frame: &'a mut Array<MapData, BenchFrame>,
    pub next: &'a mut ProgramArray<MapData>,
    /// Runs per loop, and loops per figure.
    pub repeat: u32,
    pub loops: usize,
    /// The verdict of a forwarded packet: anything else means the harness
    /// or the program did not run the path measured.
    pub forward: u32,
    /// The context of each run (XDP: the receiving interface), if any.
    pub ctx: Option<Vec<u8>>,
}

impl<P: Runnable> Harness<'_, P> {
    /// What our program adds to each frame, warm: its ns minus the mean
    /// of the pass program's run just before and just after.
    pub fn added_ns<const N: usize>(
        &mut self,
        (prog, pass): (&ProgramFd, &ProgramFd),
        frames: &[(Vec<u8>, bool); N],
    ) -> Result<[f64; N]> {
        let mut added = [0.0; N];
        for (a, (frame, fresh)) in added.iter_mut().zip(frames) {
            let b0 = self.warm_ns(pass, frame, *fresh)?;
            let v = self.warm_ns(prog, frame, *fresh)?;
            let b1 = self.warm_ns(pass, frame, *fresh)?;
            *a = v - (b0 + b1) / 2.0;
        }
        Ok(added)
    }

    /// ns per packet of `target` on `frame` in the kernel's loop (the
    /// median of `loops` loops), each run a new flow when `fresh`.
    pub fn warm_ns(&mut self, target: &ProgramFd, frame: &[u8], fresh: bool) -> Result<f64> {
        // The harness restores the headers only: IPv4 or IPv6 by EtherType.
        let v6 = frame[12..14] == [0x86, 0xdd];
        let len = if v6 {
            BENCH_FRAME6_LEN
        } else {
            BENCH_FRAME_LEN
        };
        let mut bytes = [0u8; BENCH_FRAME6_LEN];
        bytes[..len].copy_from_slice(&frame[..len]);
        self.next.set(0, target, 0)?;
        // `next` carries on: no run ever reuses an earlier new flow's address.
        let next = self.frame.get(&0, 0)?.next;
        let f = BenchFrame {
            bytes,
            v6: v6 as u8,
            _pad: 0,
            fresh_source: fresh as u32,
            next,
        };
        self.frame.set(0, f, 0)?;
        let mut v = Vec::with_capacity(self.loops);
        for _ in 0..self.loops {
            let r = self.prog.test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: self.repeat,
                ctx_in: self.ctx.as_deref(),
                ..Default::default()
            })?;
            anyhow::ensure!(
                r.return_value == self.forward,
                "bench harness returned {} (expected {})",
                r.return_value,
                self.forward
            );
            v.push(r.duration.as_nanos() as f64);
        }
        Ok(spread(&v).median)
    }
}

const CASES: [&str; 4] = [
    "non-service packet (pass-through)",
    "new flow to a ClusterIP (first packet)",
    "established flow (conntrack hit)",
    "reply from backend (reverse NAT)",
];

/// The hooks measured: (name, program, its pass-only baseline, harness,
/// the harness's program array).
pub(crate) const HOOKS: [(&str, &str, &str, &str, &str); 2] = [
    (
        "tc",
        PROG_TC_INGRESS,
        PROG_TC_PASS,
        PROG_BENCH_TC,
        MAP_BENCH_TC_PROG,
    ),
    (
        "XDP",
        PROG_XDP,
        PROG_XDP_PASS,
        PROG_BENCH_XDP,
        MAP_BENCH_XDP_PROG,
    ),
];

/// Per-repetition figures of the four cases in ns, (ours - pass, ours),
/// warm and cold.
#[derive(Default)]
struct CaseSamples {
    warm: ([Vec<f64>; 4], [Vec<f64>; 4]),
    cold: ([Vec<f64>; 4], [Vec<f64>; 4]),
}

/// The programs of one hook, and the fds the harness tail-calls.
struct Hook<'a, P> {
    prog: &'a P,
    pass: &'a P,
    prog_fd: &'a ProgramFd,
    pass_fd: &'a ProgramFd,
}

/// One repetition of the four cases of one hook, warm and cold. Every new
/// flow uses a client address never used before (`flow_seq`).
fn measure<P: Runnable>(
    hook: &Hook<'_, P>,
    harness: &mut Harness<'_, P>,
    samples: usize,
    vip: Ipv4Addr,
    flow_seq: &mut usize,
    out: &mut CaseSamples,
) -> Result<()> {
    let other = (Ipv4Addr::new(10, 244, 0, 9), 9376);
    let (prog, pass) = (hook.prog, hook.pass);
    let non_service = Frame::tcp((CLIENT, 40000), other, TCP_ACK).build();
    // One tracked flow, for its packets and its replies.
    let sport = 30000 + (*flow_seq % 20000) as u16;
    *flow_seq += 1;
    let syn = Frame::tcp((CLIENT, sport), (vip, synth::SERVICE_PORT), TCP_SYN).build();
    let (_, _, first) = run_once(prog, &syn)?;
    let backend = packet::dst(&first);
    let est = Frame::tcp((CLIENT, sport), (vip, synth::SERVICE_PORT), TCP_ACK).build();
    let reply = Frame::tcp(backend, (CLIENT, sport), TCP_ACK).build();
    let fresh_syn = Frame::tcp((WARM_CLIENTS, 40000), (vip, synth::SERVICE_PORT), TCP_SYN).build();

    // Warm: the baseline around each case, so drift between them cancels.
    let warm_cases: [(&[u8], bool); 4] = [
        (&non_service, false),
        (&fresh_syn, true),
        (&est, false),
        (&reply, false),
    ];
    for (i, (frame, fresh)) in warm_cases.into_iter().enumerate() {
        let b0 = harness.warm_ns(hook.pass_fd, frame, fresh)?;
        let v = harness.warm_ns(hook.prog_fd, frame, fresh)?;
        let b1 = harness.warm_ns(hook.pass_fd, frame, fresh)?;
        out.warm.0[i].push(v - (b0 + b1) / 2.0);
        out.warm.1[i].push(v);
    }

    let base = central_ns(pass, samples, |_| non_service.clone())?;
    let passthrough = central_ns(prog, samples, |_| non_service.clone())?;
    let start = *flow_seq;
    *flow_seq += samples;
    let new_flow = central_ns(prog, samples, |k| {
        let c = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + (start + k) as u32);
        Frame::tcp((c, 40000), (vip, synth::SERVICE_PORT), TCP_SYN).build()
    })?;
    let est = central_ns(prog, samples, |_| est.clone())?;
    let reply = central_ns(prog, samples, |_| reply.clone())?;
    for (i, v) in [passthrough, new_flow, est, reply].into_iter().enumerate() {
        out.cold.0[i].push(v - base);
        out.cold.1[i].push(v);
    }
    Ok(())
}

/// What every figure at one size shares.
struct Plan {
    samples: usize,
    reps: usize,
    repeat: u32,
    loops: usize,
    vip: Ipv4Addr,
}

/// Every repetition of the four cases on one hook: (program, baseline,
/// harness), the fds the harness tail-calls, its maps, and the verdict
/// of a forwarded packet.
fn measure_hook<P: Runnable>(
    (prog, pass, harness): (&P, &P, &P),
    (prog_fd, pass_fd): (&ProgramFd, &ProgramFd),
    (frame, next): (&mut Array<MapData, BenchFrame>, &mut ProgramArray<MapData>),
    forward: u32,
    plan: &Plan,
    flow_seq: &mut usize,
) -> Result<CaseSamples> {
    let hook = Hook {
        prog,
        pass,
        prog_fd,
        pass_fd,
    };
    let mut harness = Harness {
        prog: harness,
        frame,
        next,
        repeat: plan.repeat,
        loops: plan.loops,
        forward,
        ctx: None,
    };
    let mut got = CaseSamples::default();
    for _ in 0..plan.reps {
        measure(
            &hook,
            &mut harness,
            plan.samples,
            plan.vip,
            flow_seq,
            &mut got,
        )?;
    }
    Ok(got)
}

pub(crate) fn program<'a>(ebpf: &'a aya::Ebpf, name: &str) -> Result<&'a Program> {
    ebpf.program(name)
        .with_context(|| format!("program {name} missing"))
}

/// Loads a program the agent never loads (baselines, harness).
fn load_extra(ebpf: &mut aya::Ebpf, name: &str) -> Result<()> {
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing"))?;
    match p {
        Program::SchedClassifier(p) => p.load()?,
        Program::Xdp(p) => p.load()?,
        _ => anyhow::bail!("{name}: unexpected program type"),
    }
    Ok(())
}

/// Spreads over repetitions, per case.
type Cases = Vec<Spread>;

/// Per hook, per size: (added, total) spreads of the four cases.
#[derive(Default)]
struct Results {
    added: [Vec<Cases>; 2],
    totals: [Vec<Cases>; 2],
    rows: Vec<Vec<String>>,
}

impl Results {
    fn push(&mut self, h: usize, hook: &str, n: usize, got: &([Vec<f64>; 4], [Vec<f64>; 4])) {
        let a: Cases = got.0.iter().map(|v| spread(v)).collect();
        let t: Cases = got.1.iter().map(|v| spread(v)).collect();
        for (i, case) in CASES.iter().enumerate() {
            let [mn, md, mx] = fmt(a[i], 0);
            self.rows.push(vec![
                hook.to_string(),
                n.to_string(),
                case.to_string(),
                mn,
                md,
                mx,
                format!("{:.0}", t[i].median),
            ]);
        }
        self.added[h].push(a);
        self.totals[h].push(t);
    }
}

const COLUMNS: [&str; 7] = [
    "hook",
    "services",
    "case",
    "added ns min",
    "added ns median",
    "added ns max",
    "total ns median",
];

/// Keeps the calling thread on one CPU until dropped: the conntrack LRU
/// keeps free entries per CPU, and a run that migrates midway would
/// measure another CPU's lists.
pub(crate) struct Pinned(libc::cpu_set_t);

impl Pinned {
    pub fn to_current_cpu() -> Result<Self> {
        // SAFETY: plain syscalls on this thread's own affinity mask.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            anyhow::ensure!(
                libc::sched_getaffinity(0, size, &mut old) == 0,
                "sched_getaffinity: {}",
                std::io::Error::last_os_error()
            );
            let cpu = libc::sched_getcpu();
            anyhow::ensure!(
                cpu >= 0,
                "sched_getcpu: {}",
                std::io::Error::last_os_error()
            );
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            anyhow::ensure!(
                libc::sched_setaffinity(0, size, &one) == 0,
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            );
            Ok(Pinned(old))
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved above.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// The datapath as the bench drives it: our programs with their
/// baselines and harnesses loaded, and the maps the bench writes.
pub(crate) struct Loaded {
    pub ebpf: aya::Ebpf,
    pub frame: Array<MapData, BenchFrame>,
    /// Per hook (as `HOOKS`), the program array its harness tail-calls.
    pub next: Vec<ProgramArray<MapData>>,
    pub maps: ServiceMaps,
    pub conntrack: Conntrack,
    /// The bpffs the pins live in, when this owns it: dropped last.
    _fs: Option<Bpffs>,
}

impl Loaded {
    /// A small datapath (1,024 Services and backends, the agent's default
    /// conntrack size) in a bpffs of its own, holding `desired`.
    pub fn programmed(tag: &str, desired: &lb_agent::model::Desired) -> Result<Self> {
        let fs = Bpffs::new(tag)?;
        let mut l = Loaded::new(&loader::LoadOptions {
            pin_dir: fs.dir.join("ferrolb"),
            services_max: 1024,
            backends_max: 1024,
            conntrack_max: lb_common::DEFAULT_CONNTRACK_MAX,
            sock_max: 1024,
            frontends_max: 64,
        })?;
        let mut rec = reconcile::Reconciler::new(l.maps.read()?);
        let ops = rec.plan_all(desired);
        let errs = l.maps.apply(&ops, rec.mirror_mut());
        anyhow::ensure!(errs.is_empty(), "programming: {:?}", errs.first());
        l._fs = Some(fs);
        Ok(l)
    }

    pub fn new(opts: &loader::LoadOptions) -> Result<Self> {
        let mut ebpf = loader::load(opts)?;
        attach::load_programs(&mut ebpf, false)?;
        for name in [PROG_TC_PASS, PROG_XDP_PASS, PROG_BENCH_TC, PROG_BENCH_XDP] {
            load_extra(&mut ebpf, name)?;
        }
        let frame = ebpf
            .take_map(MAP_BENCH_FRAME)
            .context("bench frame map")?
            .try_into()?;
        let next = HOOKS
            .iter()
            .map(|h| -> Result<ProgramArray<MapData>> {
                Ok(ebpf.take_map(h.4).context(h.4)?.try_into()?)
            })
            .collect::<Result<Vec<_>>>()?;
        let maps = ServiceMaps::from_ebpf(&mut ebpf)?;
        let conntrack = Conntrack::from_ebpf(&mut ebpf)?;
        Ok(Self {
            ebpf,
            frame,
            next,
            maps,
            conntrack,
            _fs: None,
        })
    }

    /// Runs `flows` new flows to `vip` through the XDP program and leaves
    /// them tracked. A node's conntrack map has seen flows come and go:
    /// once emptied, its free entries are scattered, not a fresh map's
    /// sequential ones, which make inserts cheaper.
    fn age_conntrack(&mut self, vip: Ipv4Addr, flows: u32) -> Result<()> {
        let (Program::Xdp(prog), Program::Xdp(hp)) = (
            program(&self.ebpf, PROG_XDP)?,
            program(&self.ebpf, PROG_BENCH_XDP)?,
        ) else {
            anyhow::bail!("{PROG_XDP}/{PROG_BENCH_XDP}: unexpected program types");
        };
        let mut harness = Harness {
            prog: hp,
            frame: &mut self.frame,
            next: &mut self.next[1],
            repeat: flows,
            loops: 1,
            forward: XDP_PASS,
            ctx: None,
        };
        let syn = Frame::tcp((WARM_CLIENTS, 40000), (vip, synth::SERVICE_PORT), TCP_SYN).build();
        harness.warm_ns(prog.fd()?, &syn, true)?;
        Ok(())
    }
}

/// Conntrack map sizes of table 1d: cache-resident up to the agent's
/// default.
const CT_SIZES: [u32; 3] = [4_096, 65_536, lb_common::DEFAULT_CONNTRACK_MAX];
/// Runs per loop of table 1d: two entries per flow stay below the
/// smallest map.
const NEW_FLOW_REPEAT: u32 = 1000;

/// Loops per figure of table 1d.
fn new_flow_loops(o: &Opts) -> usize {
    if o.quick { 3 } else { 9 }
}

/// Warm added ns of a new flow on one hook, `reps` times, each loop
/// starting from an emptied conntrack map it does not fill.
fn new_flow_added<P: Runnable>(
    harness: &mut Harness<'_, P>,
    (prog_fd, pass_fd): (&ProgramFd, &ProgramFd),
    conntrack: &mut Conntrack,
    syn: &[u8],
    reps: usize,
) -> Result<Vec<f64>> {
    let mut added = Vec::with_capacity(reps);
    for _ in 0..reps {
        let b0 = harness.warm_ns(pass_fd, syn, true)?;
        conntrack.purge(&Default::default(), &Default::default())?;
        let v = harness.warm_ns(prog_fd, syn, true)?;
        let b1 = harness.warm_ns(pass_fd, syn, true)?;
        added.push(v - (b0 + b1) / 2.0);
    }
    Ok(added)
}

/// Table 1d: what a new flow adds at 1 Service as the conntrack map
/// grows, which tells the program's own work from the cost of touching
/// random entries of a large table.
fn new_flow_by_table_size(o: &Opts) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    for ct in CT_SIZES {
        let fs = Bpffs::new("bench-ct")?;
        let mut l = Loaded::new(&loader::LoadOptions {
            pin_dir: fs.dir.join("ferrolb"),
            services_max: 64,
            backends_max: 64,
            conntrack_max: ct,
            sock_max: 1024,
            frontends_max: 16,
        })?;
        let mut rec = reconcile::Reconciler::new(l.maps.read()?);
        let ops = rec.plan_all(&synth::desired(1));
        let errs = l.maps.apply(&ops, rec.mirror_mut());
        anyhow::ensure!(errs.is_empty(), "programming 1 service: {:?}", errs.first());
        let vip = synth::vip(0);
        // Filled once and emptied, as table 1's map.
        l.age_conntrack(vip, ct / 2)?;
        l.conntrack
            .purge(&Default::default(), &Default::default())?;
        let syn = Frame::tcp((WARM_CLIENTS, 40000), (vip, synth::SERVICE_PORT), TCP_SYN).build();
        let mut row = vec![ct.to_string()];
        for ((_, prog_name, pass_name, harness_name, _), next) in HOOKS.iter().zip(&mut l.next) {
            let (prog, pass) = (program(&l.ebpf, prog_name)?, program(&l.ebpf, pass_name)?);
            let fds = (prog.fd()?, pass.fd()?);
            let (repeat, loops, reps) = (NEW_FLOW_REPEAT, 1, new_flow_loops(o));
            let added = match program(&l.ebpf, harness_name)? {
                Program::SchedClassifier(hp) => {
                    let mut h = Harness {
                        prog: hp,
                        frame: &mut l.frame,
                        next,
                        repeat,
                        loops,
                        forward: TC_ACT_OK,
                        ctx: None,
                    };
                    new_flow_added(&mut h, fds, &mut l.conntrack, &syn, reps)?
                }
                Program::Xdp(hp) => {
                    let mut h = Harness {
                        prog: hp,
                        frame: &mut l.frame,
                        next,
                        repeat,
                        loops,
                        forward: XDP_PASS,
                        ctx: None,
                    };
                    new_flow_added(&mut h, fds, &mut l.conntrack, &syn, reps)?
                }
                _ => anyhow::bail!("{harness_name}: unexpected program type"),
            };
            let [mn, md, mx] = fmt(spread(&added), 0);
            row.push(format!("{md} ({mn}-{mx})"));
        }
        rows.push(row);
    }
    Ok(rows)
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let _pinned = Pinned::to_current_cpu()?;
    let sizes: &[usize] = if o.quick {
        &[1, 1_000, 10_000]
    } else {
        &[1, 1_000, 10_000, 100_000]
    };
    let samples = if o.quick { 1000 } else { 3000 };
    let reps = if o.quick { 1 } else { 3 };
    let (repeat, loops) = (1000u32, if o.quick { 7 } else { 15 });
    let fs = Bpffs::new("bench-dp")?;
    let max = sizes.iter().max().copied().unwrap_or(1) as u32;
    let entries = (max * (synth::ENDPOINTS_PER_SERVICE as u32 + 1)).next_power_of_two();
    let opts = loader::LoadOptions {
        pin_dir: fs.dir.join("ferrolb"),
        services_max: entries,
        backends_max: entries,
        // The agent's default: the size users run. Emptied before each
        // size and hook, so no figure includes LRU eviction.
        conntrack_max: lb_common::DEFAULT_CONNTRACK_MAX,
        sock_max: 1024,
        frontends_max: (max * 2).next_power_of_two(),
    };
    let mut l = Loaded::new(&opts)?;
    let mut rec = reconcile::Reconciler::new(l.maps.read()?);
    let (mut warm, mut cold) = (Results::default(), Results::default());
    let mut flow_seq: usize = 0;
    let (mut purged, mut counted) = (None, None);
    for &n in sizes {
        eprintln!(
            "  datapath: {n} services x {} backends",
            synth::ENDPOINTS_PER_SERVICE
        );
        let desired = synth::desired(n);
        let ops = rec.plan_all(&desired);
        let errs = l.maps.apply(&ops, rec.mirror_mut());
        anyhow::ensure!(
            errs.is_empty(),
            "programming {n} services: {:?}",
            errs.first()
        );
        // The measured Service sits in the middle of the set.
        let vip = synth::vip(n / 2);
        if n == sizes[0] {
            // Every size after the first finds the map aged: so does this one.
            l.age_conntrack(vip, lb_common::DEFAULT_CONNTRACK_MAX / 2)?;
        }
        if n == sizes[0] {
            // What /metrics' fill level of this map costs the agent.
            let t = std::time::Instant::now();
            let fill =
                lb_agent::datapath::inventory::fills(&opts.pin_dir, &[lb_common::MAP_CONNTRACK])?;
            let held = fill.first().and_then(|f| f.entries).unwrap_or(0);
            counted = Some((held, t.elapsed()));
        }
        // Nothing is present: every flow so far goes.
        let t = std::time::Instant::now();
        let gone = l
            .conntrack
            .purge(&Default::default(), &Default::default())?;
        if n == sizes[0] {
            purged = Some((gone, t.elapsed()));
        }
        let plan = Plan {
            samples,
            reps,
            repeat,
            loops,
            vip,
        };
        for (h, (hook, prog_name, pass_name, harness_name, _)) in HOOKS.iter().enumerate() {
            if h > 0 {
                // Each hook starts from the same conntrack state, not from
                // the free entries the one before it used up.
                l.conntrack
                    .purge(&Default::default(), &Default::default())?;
            }
            let (prog, pass) = (program(&l.ebpf, prog_name)?, program(&l.ebpf, pass_name)?);
            let harness = program(&l.ebpf, harness_name)?;
            let fds = (prog.fd()?, pass.fd()?);
            let maps = (&mut l.frame, &mut l.next[h]);
            let got = match (prog, pass, harness) {
                (
                    Program::SchedClassifier(p),
                    Program::SchedClassifier(b),
                    Program::SchedClassifier(hp),
                ) => measure_hook((p, b, hp), fds, maps, TC_ACT_OK, &plan, &mut flow_seq)?,
                (Program::Xdp(p), Program::Xdp(b), Program::Xdp(hp)) => {
                    measure_hook((p, b, hp), fds, maps, XDP_PASS, &plan, &mut flow_seq)?
                }
                _ => anyhow::bail!("{prog_name}/{pass_name}: unexpected program types"),
            };
            warm.push(h, hook, n, &got.warm);
            cold.push(h, hook, n, &got.cold);
        }
    }
    r.table(
        "1. Per-packet datapath cost (tc and XDP programs, BPF_PROG_TEST_RUN)",
        &format!(
            "Added ns/packet = ns of our program minus ns of a program of the same hook that only \
             returns (`flb_tc_pass`, `flb_xdp_pass`), same packet, same run. Warm: BPF_PROG_TEST_RUN with \
             repeat = {repeat}, timed by the kernel, the median of {loops} loops; lb-ebpf's bench harness \
             (`flb_bench_tc`, `flb_bench_xdp`) restores the frame before each run (new flows: a source address \
             never used before, so every run creates a flow) and tail-calls the program, for ours and the \
             baseline alike. {reps} repetition(s): min/median/max are over repetitions. Services have {} \
             backends each; the measured Service is in the middle of the set. tc (`flb_tc_ingress`, pod side) \
             must rewrite through helpers and keep CHECKSUM_PARTIAL skbs right; XDP (`flb_xdp`, wire side) \
             writes the packet directly. The conntrack map (the agent's default size) is filled once, then \
             emptied before each size and hook: every hook starts from the same state.",
            synth::ENDPOINTS_PER_SERVICE
        ),
        &COLUMNS,
        warm.rows.clone(),
    );
    r.table(
        "1b. Per-packet cost, one packet per syscall (cold caches)",
        &format!(
            "The same cases, each run alone (repeat = 1) on a fresh packet, without the harness: the \
             syscall between runs evicts much of what the program touches, so this is closer to a packet \
             arriving on an idle node. Each figure is the interquartile mean of {samples} runs (single runs \
             are timed at the clock's granularity, about 10 ns, which a median would keep); {reps} \
             repetition(s)."
        ),
        &COLUMNS,
        cold.rows.clone(),
    );
    if let Some((entries, took)) = purged {
        r.table(
            "1c. Conntrack purge",
            "What the agent does when backends go (`Conntrack::purge`): read every conntrack entry \
             (batched lookups), delete those whose backend is gone: reverse entries in batched deletes, \
             forward ones one by one, each read and deleted in one step (put back if a new flow took its \
             key meanwhile). Here the map holds the bench's ageing flows, every one stale; one run.",
            &["entries deleted", "ms", "us per entry"],
            vec![vec![
                entries.to_string(),
                format!("{:.1}", took.as_secs_f64() * 1e3),
                format!("{:.2}", took.as_secs_f64() * 1e6 / entries.max(1) as f64),
            ]],
        );
    }
    if let Some((entries, took)) = counted {
        r.table(
            "1c'. Counting a map's entries",
            "What the agent's fill level of a map it does not write costs (`/metrics`, every \
             `--map-fill-interval-secs`; `lb-agent status`): the same conntrack map, counted with \
             batched lookups of 4096 entries; one run.",
            &["entries counted", "ms", "us per entry"],
            vec![vec![
                entries.to_string(),
                format!("{:.1}", took.as_secs_f64() * 1e3),
                format!("{:.3}", took.as_secs_f64() * 1e6 / entries.max(1) as f64),
            ]],
        );
    }
    eprintln!("  datapath: new flows against conntrack map size");
    r.table(
        "1d. New flow against conntrack map size",
        &format!(
            "What the first packet of a new flow adds (warm, as in table 1) at 1 Service, with the \
             conntrack map created at each size and emptied before each loop of {} runs, so no loop \
             evicts. A new flow writes two entries (forward and reverse) at random places in the map: \
             the growth from the smallest size is the cost of reaching cold memory, not of the \
             program's work. Cells: median (min-max) of {} loops.",
            NEW_FLOW_REPEAT,
            new_flow_loops(o)
        ),
        &["conntrack entries", "tc added ns", "XDP added ns"],
        new_flow_by_table_size(o)?,
    );
    for (h, (hook, ..)) in HOOKS.iter().enumerate() {
        let lines = CASES
            .iter()
            .enumerate()
            .map(|(i, case)| {
                let pts = sizes
                    .iter()
                    .zip(&warm.added[h])
                    .map(|(n, a)| (*n as f64, a[i].median))
                    .collect();
                (case.to_string(), pts)
            })
            .collect();
        r.plot(
            &format!("datapath_added_ns_{}.png", hook.to_lowercase()),
            &format!("{hook} program: added ns per packet (warm)"),
            "added ns/packet (median)",
            lines,
        );
        let first = &warm.added[h][0];
        let cold_first = &cold.added[h][0];
        r.target(
            &format!("{hook}: conntrack hit adds <= 60 ns"),
            format!(
                "{:.0} ns (1 service; cold {:.0} ns)",
                first[2].median, cold_first[2].median
            ),
            first[2].median <= 60.0,
        );
        r.target(
            &format!("{hook}: new flow adds <= 150 ns"),
            format!(
                "{:.0} ns (1 service; cold {:.0} ns)",
                first[1].median, cold_first[1].median
            ),
            first[1].median <= 150.0,
        );
        let (lo, hi) = (&warm.totals[h][0], warm.totals[h].last().expect("sizes"));
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

/// The verdicts of a forwarded packet as the test run reports them.
pub(crate) const TC_ACT_OK: u32 = 0;
pub(crate) const XDP_PASS: u32 = 2;
