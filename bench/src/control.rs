//! Section 3, control plane: manifests -> maps. Initial programming and one-change
//! latency run in-process through the agent's own pipeline (the same
//! `FileSource`, `model`, `reconcile` and `ServiceMaps` calls its sync loop
//! makes); start-up, peak RSS and map memory come from the real agent
//! binary in a throwaway network namespace. kube-proxy-shaped
//! `iptables-restore` and `nft -f` of the same Services are timed for
//! reference, also in a throwaway namespace.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferrolb_tests::bpffs::Bpffs;
use ferrolb_tests::cluster::wait_until;
use ferrolb_tests::netns::NetNs;
use lb_agent::{
    datapath::{attach, loader, maps::ServiceMaps},
    source::files::FileSource,
    sync::Pipeline,
};

use crate::report::Report;
use crate::stats::{fmt, percentile, spread};
use crate::{Opts, synth};

const PER_FILE: usize = 100;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn write_manifests(n: usize) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ferrolb-bench-cp-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    synth::write_manifests(&dir, n, PER_FILE)?;
    Ok(dir)
}

fn load_opts(fs: &Bpffs, n: usize) -> loader::LoadOptions {
    let entries = ((n * (synth::ENDPOINTS_PER_SERVICE + 1)) as u32)
        .next_power_of_two()
        .max(1024);
    loader::LoadOptions {
        pin_dir: fs.dir.join("ferrolb"),
        services_max: entries,
        backends_max: entries,
        conntrack_max: 65_536,
        sock_max: 1024,
        frontends_max: ((n * 2) as u32).next_power_of_two().max(1024),
    }
}

/// One sync, exactly as the agent does it. Returns (parse, program) time.
fn sync(
    src: &mut FileSource,
    maps: &mut ServiceMaps,
    pipeline: &mut Pipeline,
) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let reload = src.load()?;
    ensure!(
        reload.errors.is_empty(),
        "manifest errors: {:?}",
        reload.errors.first()
    );
    let t1 = Instant::now();
    let dirty = src.take_dirty();
    let report = pipeline.sync(src.store(), &dirty, maps);
    ensure!(
        report.failed.is_empty(),
        "map writes failed: {:?}",
        report.failed.first()
    );
    Ok((t1 - t0, t1.elapsed()))
}

struct Agent {
    startup: Duration,
    rss_mb: f64,
    map_mb: f64,
}

/// Runs the real agent on `dir` until it is ready; reads its peak RSS and
/// the memory of the BPF maps it holds.
fn real_agent(o: &Opts, dir: &Path, n: usize) -> Result<Agent> {
    let ns = NetNs::new(&format!("flbbench{}-{n}", std::process::id() % 100_000))?;
    let fs = Bpffs::new(&format!("bench-agent-{n}"))?;
    let opts = load_opts(&fs, n);
    let log = fs.dir.with_extension("log");
    let start = Instant::now();
    let mut child = ns
        .command(o.agent.to_str().context("utf-8")?)
        .arg("run")
        .arg("--manifests")
        .arg(dir)
        .arg("--pin-path")
        .arg(&opts.pin_dir)
        .args(["--cgroup", "none"])
        .args(["--services-max", &opts.services_max.to_string()])
        .args(["--backends-max", &opts.backends_max.to_string()])
        .args(["--conntrack-max", &opts.conntrack_max.to_string()])
        .args(["--frontends-max", &opts.frontends_max.to_string()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let ready = wait_until(Duration::from_secs(120), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("agent ready"))
    });
    let startup = start.elapsed();
    let pid = child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let map_bytes = map_memory(pid);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    if ready.is_err() {
        bail!("agent with {n} services did not become ready");
    }
    Ok(Agent {
        startup,
        rss_mb: rss_kb / 1024.0,
        map_mb: map_bytes as f64 / 1024.0 / 1024.0,
    })
}

/// Sum of `memlock` over the distinct BPF maps a process holds open.
fn map_memory(pid: u32) -> u64 {
    let mut ids = std::collections::BTreeMap::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    for e in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        let field = |name: &str| {
            info.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(id), Some(mem)) = (field("map_id:"), field("memlock:")) {
            ids.insert(id, mem);
        }
    }
    ids.values().sum()
}

/// Times kube-proxy-shaped rule loading of `n` Services in a throwaway
/// namespace: (iptables-restore, nft -f) wall time.
fn kube_proxy_load(n: usize) -> Result<(Duration, Duration)> {
    let ns = NetNs::new(&format!("flbkp{}-{n}", std::process::id() % 100_000))?;
    let time = |prog: &str, args: &[&str], input: String| -> Result<Duration> {
        let path = std::env::temp_dir().join(format!("ferrolb-bench-rules-{}", std::process::id()));
        std::fs::write(&path, input)?;
        let t = Instant::now();
        let st = Command::new("ip")
            .args(["netns", "exec", &ns.name, prog])
            .args(args)
            .stdin(std::fs::File::open(&path)?)
            .stdout(Stdio::null())
            .status()?;
        let d = t.elapsed();
        let _ = std::fs::remove_file(&path);
        ensure!(st.success(), "{prog} failed");
        Ok(d)
    };
    let ipt = time("iptables-restore", &[], synth::iptables_rules(n, &[]))?;
    let nft = time("nft", &["-f", "-"], synth::nft_rules(n, &[]))?;
    Ok((ipt, nft))
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let sizes: &[usize] = if o.quick {
        &[100, 1_000]
    } else {
        &[100, 1_000, 10_000]
    };
    let changes = if o.quick { 50 } else { 200 };
    let reps = if o.quick { 1 } else { 3 };
    let mut rows = Vec::new();
    let mut inc_rows = Vec::new();
    let mut mem_rows = Vec::new();
    let mut last = (0.0, 0.0, 0.0, 0.0);
    let mut curve: [Vec<(f64, f64)>; 3] = Default::default();
    for &n in sizes {
        eprintln!(
            "  control plane: {n} services x {} endpoints",
            synth::ENDPOINTS_PER_SERVICE
        );
        let dir = write_manifests(n)?;
        let mut parse = Vec::new();
        let mut program = Vec::new();
        let mut total = Vec::new();
        let mut state = None;
        for _ in 0..reps {
            let fs = Bpffs::new(&format!("bench-cp-{n}"))?;
            let mut ebpf = loader::load(&load_opts(&fs, n))?;
            attach::load_programs(&mut ebpf, false)?;
            let mut maps = ServiceMaps::from_ebpf(&mut ebpf)?;
            let mut pipeline = Pipeline::new(maps.read()?, Default::default());
            let mut src = FileSource::new(&dir);
            let (p, w) = sync(&mut src, &mut maps, &mut pipeline)?;
            parse.push(ms(p));
            program.push(ms(w));
            total.push(ms(p + w));
            state = Some((fs, ebpf, maps, pipeline, src));
        }
        // One-endpoint changes on the last programmed state.
        let (_fs, _ebpf, mut maps, mut pipeline, mut src) = state.expect("reps >= 1");
        let mut lat = Vec::new();
        let mut lat_parse = Vec::new();
        for c in 0..changes {
            let i = (c * 7919) % n;
            // Odd changes take an endpoint away, even ones give it back.
            synth::write_manifest_file(&dir, i / PER_FILE, n, PER_FILE, (c % 2 == 0).then_some(i))?;
            let t = Instant::now();
            ensure!(src.changed(), "change {c} not visible");
            let (p, _) = sync(&mut src, &mut maps, &mut pipeline)?;
            lat.push(ms(t.elapsed()));
            lat_parse.push(ms(p));
        }
        let agent = real_agent(o, &dir, n)?;
        let (ipt, nft) = kube_proxy_load(n)?;
        let _ = std::fs::remove_dir_all(&dir);

        for (i, v) in [spread(&total).median, ms(ipt), ms(nft)]
            .into_iter()
            .enumerate()
        {
            curve[i].push((n as f64, v));
        }
        let [a, b, c] = fmt(spread(&total), 1);
        rows.push(vec![
            n.to_string(),
            (n * synth::ENDPOINTS_PER_SERVICE).to_string(),
            format!("{:.1}", spread(&parse).median),
            format!("{:.1}", spread(&program).median),
            a,
            b,
            c,
            format!("{:.0}", ms(agent.startup)),
            format!("{:.0}", ms(ipt)),
            format!("{:.0}", ms(nft)),
        ]);
        let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
        inc_rows.push(vec![
            n.to_string(),
            changes.to_string(),
            format!("{p50:.2}"),
            format!("{p99:.2}"),
            format!("{:.2}", percentile(&lat, 100.0)),
            format!("{:.2}", percentile(&lat_parse, 50.0)),
        ]);
        mem_rows.push(vec![
            n.to_string(),
            format!("{:.1}", agent.rss_mb),
            format!("{:.1}", agent.map_mb),
        ]);
        last = (spread(&total).median, p99, agent.rss_mb, n as f64);
    }
    r.table(
        "3a. Control plane: initial programming",
        &format!(
            "Manifests of N Services x {} endpoints ({PER_FILE} Services per file), read, modelled, diffed and \
             written to freshly loaded maps by the agent's own pipeline, in-process; min/median/max over {reps} \
             repetition(s). \"agent ready\" is the real `lb-agent run` from process start to its first sync \
             done (includes loading and verifying the programs). For reference, kube-proxy-shaped rules for the \
             same Services loaded with `iptables-restore` and `nft -f` in a throwaway namespace.",
            synth::ENDPOINTS_PER_SERVICE
        ),
        &[
            "services",
            "endpoints",
            "parse ms",
            "model+diff+write ms",
            "total ms min",
            "total ms median",
            "total ms max",
            "agent ready ms",
            "iptables-restore ms",
            "nft -f ms",
        ],
        rows,
    );
    r.table(
        "3b. Control plane: one endpoint change",
        "One endpoint removed or restored in one Service; time from the manifest file being replaced to the \
         maps holding the change (re-read of that file, the touched Services' model, their diff, the writes). The agent's polling \
         interval (`--poll-interval-ms`, default 200) adds to this in a live agent and is not included.",
        &["services", "changes", "p50 ms", "p99 ms", "max ms", "of which re-parsing the file, p50 ms"],
        inc_rows,
    );
    r.table(
        "3c. Control plane: memory",
        "Peak RSS (VmHWM) of the real agent after its first sync, and the BPF map memory it holds (sum of \
         `memlock` of its map fds; map sizes fitted to the Service count).",
        &["services", "agent peak RSS MB", "BPF map memory MB"],
        mem_rows,
    );
    let [ours, ipt, nft] = curve;
    r.plot(
        "control_initial_ms.png",
        "Initial programming: N Services x 10 endpoints",
        "ms",
        vec![
            ("ferrolb (parse + model + map writes)".into(), ours),
            ("iptables-restore (kube-proxy-shaped)".into(), ipt),
            ("nft -f (kube-proxy-shaped)".into(), nft),
        ],
    );
    let n = last.3 as usize;
    r.target(
        &format!("{n} Services x 10 programmed in < 1 s (10,000 in the full run)"),
        format!("{:.0} ms", last.0),
        last.0 < 1000.0,
    );
    r.target(
        &format!("one endpoint change p99 < 10 ms at {n} Services"),
        format!("{:.2} ms", last.1),
        last.1 < 10.0,
    );
    r.target(
        &format!("agent RSS < 100 MB at {n} Services"),
        format!("{:.1} MB", last.2),
        last.2 < 100.0,
    );
    Ok(())
}
