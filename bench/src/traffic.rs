//! Section 2, end-to-end traffic: a client pod talking to backend pods through a
//! simulated node, four ways in the same run: straight to a pod IP (no
//! load balancer: the ceiling), through ferrolb, through kube-proxy-shaped
//! iptables NAT chains and through kube-proxy-shaped nftables verdict
//! maps, the last three with 1 to 10,000 Services programmed. The
//! baselines' rules live only in this benchmark's throwaway node
//! namespace.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ferrolb_tests::cluster::{Binaries, Cluster, InCgroup, POD_PORT, wait_until};
use ferrolb_tests::http::Conn;

use crate::report::Report;
use crate::stats::{Spread, fmt, percentile, spread};
use crate::{Opts, synth};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
pub(crate) const IPERF_PORT: u16 = 5201;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    /// The client outside ferrolb's cgroup: tc translates every packet.
    Ferrolb,
    /// The client inside it, as every pod is on a node where the
    /// DaemonSet hooks the cgroup root: connect() is translated once.
    FerrolbSock,
    Iptables,
    Nftables,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct (pod IP, no LB)",
            Mode::Ferrolb => "ferrolb, tc per-packet NAT",
            Mode::FerrolbSock => "ferrolb, socket LB",
            Mode::Iptables => "kube-proxy-shaped iptables",
            Mode::Nftables => "kube-proxy-shaped nftables",
        }
    }
}

/// One run's figures.
#[derive(Clone, Copy, Default)]
pub(crate) struct Figures {
    pub gbps: f64,
    pub rr_per_s: f64,
    pub rr_p50_us: f64,
    pub rr_p99_us: f64,
    pub cps: f64,
    pub cps_p50_us: f64,
    pub cps_p99_us: f64,
    pub cpu_us_per_conn: f64,
}

/// Busy and total jiffies from /proc/stat, all CPUs.
pub(crate) fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Requests on one kept-alive connection for `dur`: (rate, latencies us).
pub(crate) fn request_response(
    addr: SocketAddr,
    dur: Duration,
) -> std::io::Result<(f64, Vec<f64>)> {
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut conn = Conn::new(conn)?;
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        conn.get()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((lat.len() as f64 / start.elapsed().as_secs_f64(), lat))
}

/// Connect, one request, close, for `dur`: (rate, latencies us).
pub(crate) fn new_connections(addr: SocketAddr, dur: Duration) -> std::io::Result<(f64, Vec<f64>)> {
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut w = conn.try_clone()?;
        w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut buf = Vec::new();
        let mut c = conn;
        c.read_to_end(&mut buf)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((lat.len() as f64 / start.elapsed().as_secs_f64(), lat))
}

/// Kills a helper process when dropped.
pub(crate) struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn iperf(cluster: &Cluster, target: impl Into<IpAddr>, secs: u64) -> Result<f64> {
    let target: IpAddr = target.into();
    let out = cluster
        .client()
        .ns
        .command("iperf3")
        .args([
            "-c",
            &target.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .context("running iperf3 (cargo xtask bench installs it)")?;
    ensure!(
        out.status.success(),
        "iperf3 failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 JSON without end.sum_received")
}

/// The real Service the client talks to: hostnames on 80, iperf3 on 5201.
fn real_services(c: &Cluster) -> Vec<synth::Svc> {
    vec![
        (VIP, 80, c.pods.iter().map(|p| (p.ip, POD_PORT)).collect()),
        (VIP, IPERF_PORT, vec![(c.pods[0].ip, IPERF_PORT)]),
    ]
}

fn real_manifest(c: &Cluster) -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: hostnames}\nspec:\n  clusterIP: 10.0.1.175\n  ports:\n  - {name: http, port: 80, targetPort: 9376}\n  - {name: iperf, port: 5201, targetPort: 5201}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: hostnames-http, labels: {kubernetes.io/service-name: hostnames}}\naddressType: IPv4\nports: [{name: http, port: 9376}]\nendpoints:\n",
    );
    for p in &c.pods {
        s.push_str(&format!("- addresses: [\"{}\"]\n", p.ip));
    }
    s.push_str(&format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnames-iperf, labels: {{kubernetes.io/service-name: hostnames}}}}\naddressType: IPv4\nports: [{{name: iperf, port: 5201}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        c.pods[0].ip
    ));
    s
}

fn load_rules(c: &Cluster, mode: Mode, n: usize) -> Result<()> {
    let extra = real_services(c);
    let (prog, args, text): (&str, &[&str], String) = match mode {
        Mode::Iptables => (
            "iptables-restore",
            &[],
            synth::iptables_rules(n - 1, &extra),
        ),
        Mode::Nftables => ("nft", &["-f", "-"], synth::nft_rules(n - 1, &extra)),
        _ => return Ok(()),
    };
    let path = c.workdir.join("rules");
    std::fs::write(&path, text)?;
    let st = Command::new("ip")
        .args(["netns", "exec", &c.node.name, prog])
        .args(args)
        .stdin(std::fs::File::open(&path)?)
        .status()?;
    ensure!(st.success(), "{prog} failed in the bench's node namespace");
    Ok(())
}

/// One datapath set up and ready for traffic: its cluster, its iperf3
/// server and the address the client talks to.
struct Setup {
    c: Cluster,
    mode: Mode,
    _iperf: Guard,
    target: Ipv4Addr,
    addr: SocketAddr,
}

/// A node of three pods for traffic runs: the client pod set for many
/// short connections, an iperf3 server in the first pod.
pub(crate) fn traffic_cluster(o: &Opts) -> Result<(Cluster, Guard)> {
    let bins = Binaries {
        agent: o.agent.clone(),
        podserver: o.podserver.clone(),
    };
    let c = Cluster::new(bins, 3)?;
    c.client().ns.run(|| {
        // Many short connections: widen the port range, reuse TIME_WAIT
        // (IPv6 TCP shares these IPv4 sysctls).
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000");
        let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
    })?;
    let iperf = Guard(
        c.pods[0]
            .ns
            .command("iperf3")
            .args(["-s", "-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    Ok((c, iperf))
}

/// Waits until the first pod's iperf3 server answers at `addr`.
pub(crate) fn wait_for_iperf(c: &Cluster, addr: SocketAddr) -> Result<()> {
    wait_until(Duration::from_secs(5), || {
        c.pods[0]
            .ns
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
            .unwrap_or(false)
    })
    .context("iperf3 server did not start")
}

fn setup(o: &Opts, mode: Mode, n: usize) -> Result<Setup> {
    let (mut c, iperf_srv) = traffic_cluster(o)?;
    let target = match mode {
        Mode::Direct => c.pods[0].ip,
        _ => VIP,
    };
    match mode {
        Mode::Ferrolb | Mode::FerrolbSock => {
            let dir = c.workdir.join("manifests");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("hostnames.yaml"), real_manifest(&c))?;
            synth::write_manifests(&dir, n - 1, 100)?;
            c.start_agent(&dir)?;
        }
        Mode::Iptables | Mode::Nftables => load_rules(&c, mode, n)?,
        Mode::Direct => {}
    }
    wait_for_iperf(&c, SocketAddr::from((c.pods[0].ip, IPERF_PORT)))?;
    let addr = SocketAddr::from((target, if mode == Mode::Direct { POD_PORT } else { 80 }));
    Ok(Setup {
        c,
        mode,
        _iperf: iperf_srv,
        target,
        addr,
    })
}

impl Setup {
    /// One repetition of every figure, `secs` each.
    fn once(&self, secs: u64) -> Result<Figures> {
        let (c, addr) = (&self.c, self.addr);
        let dur = Duration::from_secs(secs);
        let _cg = match self.mode {
            Mode::FerrolbSock => Some(InCgroup::enter(&c.cgroup)?),
            _ => None,
        };
        // Which path carried the connections, from the agent's counters.
        let ferrolb = matches!(self.mode, Mode::Ferrolb | Mode::FerrolbSock);
        let before = if ferrolb { paths(c)? } else { (0, 0) };
        let (f, conns) = figures(c, self.target.into(), addr, dur)?;
        if ferrolb {
            check_path(
                c,
                before,
                conns,
                self.mode == Mode::FerrolbSock,
                self.mode.name(),
            )?;
        }
        Ok(f)
    }
}

/// Bulk TCP (iperf3 to `target`), request/response and new connections
/// (to `addr`) from the client pod, `dur` each; and how many connections
/// the last run made.
pub(crate) fn figures(
    c: &Cluster,
    target: IpAddr,
    addr: SocketAddr,
    dur: Duration,
) -> Result<(Figures, usize)> {
    let gbps = iperf(c, target, dur.as_secs())?;
    let (rr_per_s, rr) = c.client().ns.run(move || request_response(addr, dur))??;
    let (b0, _) = cpu_jiffies();
    let (cps, conn) = c.client().ns.run(move || new_connections(addr, dur))??;
    let (b1, _) = cpu_jiffies();
    // Jiffies are 10 ms (USER_HZ = 100).
    let cpu_us = (b1 - b0) as f64 * 10_000.0 / conn.len().max(1) as f64;
    let f = Figures {
        gbps,
        rr_per_s,
        rr_p50_us: percentile(&rr, 50.0),
        rr_p99_us: percentile(&rr, 99.0),
        cps,
        cps_p50_us: percentile(&conn, 50.0),
        cps_p99_us: percentile(&conn, 99.0),
        cpu_us_per_conn: cpu_us,
    };
    Ok((f, conn.len()))
}

/// Confirms from the agent's counters (`before`: [`paths`] before the
/// run) that `conns` connections took the path measured: the socket hooks
/// (`sock`) or tc.
pub(crate) fn check_path(
    c: &Cluster,
    before: (u64, u64),
    conns: usize,
    sock_path: bool,
    what: &str,
) -> Result<()> {
    let after = paths(c)?;
    let (tc, sock) = (after.0 - before.0, after.1 - before.1);
    // A reused tuple may count as established: tc counts at least one new
    // flow, never all of them.
    let ok = if sock_path {
        sock >= conns as u64 && tc == 0
    } else {
        tc > 0 && sock == 0
    };
    ensure!(
        ok,
        "{what}: {conns} connections, but the agent counted {tc} new tc flows and {sock} socket \
         translations: the traffic took another path"
    );
    Ok(())
}

/// The agent's (new tc flows, socket translations) counters, from its
/// metrics in the node namespace.
pub(crate) fn paths(c: &Cluster) -> Result<(u64, u64)> {
    let text = c.metrics()?;
    let count = |outcome: &str| {
        let want = format!("ferrolb_datapath_packets_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
            .with_context(|| format!("no {outcome} counter in the agent's metrics"))
    };
    Ok((count("dnat_new")?, count("sock_translate")?))
}

pub(crate) fn col(f: &[Figures], get: impl Fn(&Figures) -> f64) -> Spread {
    spread(&f.iter().map(get).collect::<Vec<_>>())
}

pub(crate) fn cell(s: Spread, digits: usize) -> String {
    let [a, b, c] = fmt(s, digits);
    format!("{b} ({a}-{c})")
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let sizes: &[usize] = if o.quick {
        &[1, 1_000]
    } else {
        &[1, 1_000, 10_000]
    };
    let reps = if o.quick { 1 } else { 5 };
    let secs = if o.quick { 1 } else { 2 };
    let mut configs = vec![(Mode::Direct, 0)];
    for &n in sizes {
        for mode in [
            Mode::Ferrolb,
            Mode::FerrolbSock,
            Mode::Iptables,
            Mode::Nftables,
        ] {
            configs.push((mode, n));
        }
    }
    // Every datapath is set up first and measured in rounds, each round
    // starting one further along: the ratios compare figures taken side
    // by side, not minutes apart on a machine whose speed drifts.
    let mut setups = Vec::new();
    for &(mode, n) in &configs {
        eprintln!("  traffic: setting up {} with {n} services", mode.name());
        setups.push(setup(o, mode, n)?);
    }
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); configs.len()];
    for round in 0..reps {
        eprintln!("  traffic: round {} of {reps}", round + 1);
        for k in 0..configs.len() {
            let i = (round + k) % configs.len();
            figures[i].push(setups[i].once(secs)?);
        }
    }
    drop(setups);
    let results: Vec<(Mode, usize, Vec<Figures>)> = configs
        .into_iter()
        .zip(figures)
        .map(|((m, n), f)| (m, n, f))
        .collect();
    let rows = results
        .iter()
        .map(|(mode, n, f)| {
            vec![
                mode.name().to_string(),
                if *mode == Mode::Direct {
                    "-".into()
                } else {
                    n.to_string()
                },
                cell(col(f, |x| x.gbps), 2),
                cell(col(f, |x| x.rr_per_s), 0),
                cell(col(f, |x| x.rr_p50_us), 0),
                cell(col(f, |x| x.rr_p99_us), 0),
                cell(col(f, |x| x.cps), 0),
                cell(col(f, |x| x.cps_p50_us), 0),
                cell(col(f, |x| x.cps_p99_us), 0),
                cell(col(f, |x| x.cpu_us_per_conn), 0),
            ]
        })
        .collect();
    r.table(
        "2. End-to-end traffic through network namespaces",
        &format!(
            "Client pod -> node namespace -> backend pods over veth, on this machine only. Bulk TCP: `iperf3 -t \
             {secs}` to one backend. Request/response: one kept-alive HTTP connection, one request in flight. \
             New connections: connect, one request, close, one at a time. CPU: whole-machine busy time during the \
             new-connection run divided by connections. {secs} s per figure, {reps} repetition(s), taken in \
             rounds across all datapaths (every datapath is set up first, each round visits all of them): cells \
             are median (min-max). kube-proxy-shaped rule sets are generated by the bench (KUBE-SERVICES -> KUBE-SVC-* \
             `statistic --mode random` -> KUBE-SEP-* DNAT; nftables: one verdict map -> numgen vmap -> DNAT) with \
             the measured Service in the middle of the list. ferrolb is measured two ways, same build and maps: \
             \"tc per-packet NAT\" with the client outside the cgroup its socket hooks are attached to (every \
             packet translated at the node's tc hook), \"socket LB\" with the client inside it, as every pod is \
             on a node where the DaemonSet attaches them at the cgroup root (connect() translated once, packets \
             then go to the pod untouched); each round checks the agent's counters to confirm which path \
             carried the connections."
        ),
        &[
            "datapath",
            "services",
            "TCP Gbit/s",
            "req/s (kept-alive)",
            "req p50 us",
            "req p99 us",
            "new conn/s",
            "conn p50 us",
            "conn p99 us",
            "CPU us/conn",
        ],
        rows,
    );
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for mode in [
        Mode::Ferrolb,
        Mode::FerrolbSock,
        Mode::Iptables,
        Mode::Nftables,
    ] {
        let pts = results
            .iter()
            .filter(|(m, _, _)| *m == mode)
            .map(|(_, n, f)| (*n as f64, col(f, |x| x.cps).median))
            .collect();
        lines.push((mode.name().into(), pts));
    }
    if let Some((_, _, f)) = results.iter().find(|(m, _, _)| *m == Mode::Direct) {
        let d = col(f, |x| x.cps).median;
        let pts = sizes.iter().map(|n| (*n as f64, d)).collect();
        lines.push((Mode::Direct.name().into(), pts));
    }
    r.plot(
        "traffic_new_conn.png",
        "New connections per second (connect, request, close)",
        "connections/s (median)",
        lines,
    );
    // Targets.
    let med = |m: Mode, n: usize, get: fn(&Figures) -> f64| -> f64 {
        results
            .iter()
            .find(|(mm, nn, _)| *mm == m && (m == Mode::Direct || *nn == n))
            .map(|(_, _, f)| col(f, get).median)
            .unwrap_or(f64::NAN)
    };
    let big = *sizes.last().expect("sizes");
    let d_gbps = med(Mode::Direct, 0, |x| x.gbps);
    let d_rr = med(Mode::Direct, 0, |x| x.rr_per_s);
    // What no load balancer can beat: the direct path against the same
    // baselines, shown beside each ratio.
    let d_cps = med(Mode::Direct, 0, |x| x.cps);
    let d_p99 = med(Mode::Direct, 0, |x| x.cps_p99_us);
    let i_cps = med(Mode::Iptables, big, |x| x.cps);
    let n_cps = med(Mode::Nftables, big, |x| x.cps);
    let i_p99 = med(Mode::Iptables, big, |x| x.cps_p99_us);
    let n_p99 = med(Mode::Nftables, big, |x| x.cps_p99_us);
    // Both ferrolb paths answer every target: socket LB is what a pod on
    // a ferrolb node takes, tc NAT what traffic from outside the hooked
    // cgroup (or from another node) takes.
    for (mode, tag) in [(Mode::FerrolbSock, "socket LB"), (Mode::Ferrolb, "tc NAT")] {
        let f_gbps = med(mode, 1, |x| x.gbps);
        let f_rr = med(mode, 1, |x| x.rr_per_s);
        r.target(
            &format!("{tag}: throughput >= 0.95x direct"),
            format!("{:.2}x", f_gbps / d_gbps),
            f_gbps / d_gbps >= 0.95,
        );
        r.target(
            &format!("{tag}: request rate >= 0.95x direct"),
            format!("{:.2}x", f_rr / d_rr),
            f_rr / d_rr >= 0.95,
        );
        let f_cps = med(mode, big, |x| x.cps);
        r.target(
            &format!("{tag}: new conn/s at {big} Services >= 1.5x iptables"),
            format!("{:.2}x (direct: {:.2}x)", f_cps / i_cps, d_cps / i_cps),
            f_cps / i_cps >= 1.5,
        );
        r.target(
            &format!("{tag}: new conn/s at {big} Services no worse than nftables"),
            format!("{:.2}x (direct: {:.2}x)", f_cps / n_cps, d_cps / n_cps),
            f_cps >= n_cps,
        );
        let f_p99 = med(mode, big, |x| x.cps_p99_us);
        r.target(
            &format!("{tag}: connection p99 at {big} Services >= 1.5x better than iptables"),
            format!("{:.2}x (direct: {:.2}x)", i_p99 / f_p99, i_p99 / d_p99),
            i_p99 / f_p99 >= 1.5,
        );
        r.target(
            &format!("{tag}: connection p99 at {big} Services no worse than nftables"),
            format!("{:.2}x (direct: {:.2}x)", n_p99 / f_p99, n_p99 / d_p99),
            f_p99 <= n_p99,
        );
        let f1 = med(mode, 1, |x| x.cps);
        r.target(
            &format!("{tag}: flat from 1 to {big} Services (new conn/s within 10%)"),
            format!("{:+.1}%", (f_cps / f1 - 1.0) * 100.0),
            (f_cps / f1 - 1.0).abs() <= 0.10,
        );
    }
    Ok(())
}
