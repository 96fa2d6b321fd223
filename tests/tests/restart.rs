//! Restarts under traffic: programs stay attached through pinned links,
//! maps stay pinned, and a new agent adopts both. `kill -9` and SIGTERM
//! of the agent, mid-traffic, must cost no request and no connection, in
//! either family (the Service is dual-stack; IPv6 runs through the tail-
//! called stages, whose program arrays are pinned beside the links).
mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrolb_tests::cluster::Cluster;
use ferrolb_tests::http::{self, Conn};

const TIMEOUT: Duration = Duration::from_secs(2);

const VIP4: &str = "10.0.1.175";
const VIP6: &str = "fd00:10::175";

fn manifest(c: &Cluster) -> String {
    let (mut eps, mut eps6) = (String::new(), String::new());
    for p in &c.pods {
        eps.push_str(&format!("- addresses: [\"{}\"]\n", p.ip));
        eps6.push_str(&format!("- addresses: [\"{}\"]\n", p.ip6));
    }
    let ports =
        "ports: [{name: http, port: 9376, protocol: TCP}, {name: dns, port: 9376, protocol: UDP}]";
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hostnames}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  clusterIP: {VIP4}\n  clusterIPs: [{VIP4}, \"{VIP6}\"]\n  ports:\n  - {{name: http, port: 80, targetPort: 9376}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: 9376}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnames-1, labels: {{kubernetes.io/service-name: hostnames}}}}\naddressType: IPv4\n{ports}\nendpoints:\n{eps}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnames-2, labels: {{kubernetes.io/service-name: hostnames}}}}\naddressType: IPv6\n{ports}\nendpoints:\n{eps6}"
    )
}

/// The Service's address of one family, port `port`.
fn vip(v6: bool, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = if v6 { VIP6 } else { VIP4 }.parse().unwrap();
    SocketAddr::new(ip, port)
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn record(&self, ok: bool) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        if ok {
            self.answered.fetch_add(1, Ordering::SeqCst);
        } else {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn show(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::SeqCst),
            self.answered.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

fn tcp_once(v6: bool) -> bool {
    let run = || -> std::io::Result<bool> {
        let s = TcpStream::connect_timeout(&vip(v6, 80), TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        Ok(http::get_and_close(s)?.contains("hostnames-"))
    };
    run().unwrap_or(false)
}

fn udp_once(v6: bool) -> bool {
    let run = || -> std::io::Result<bool> {
        let sock = UdpSocket::bind(if v6 { "[::]:0" } else { "0.0.0.0:0" })?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.send_to(b"who", vip(v6, 53))?;
        let mut buf = [0u8; 128];
        let (n, from) = sock.recv_from(&mut buf)?;
        Ok(from == vip(v6, 53) && buf[..n].starts_with(b"hostnames-"))
    };
    run().unwrap_or(false)
}

/// One connection kept open, one exchange every 20 ms; returns the times
/// of the exchanges, or the first error.
fn long_lived(v6: bool, stop: Arc<AtomicBool>) -> std::io::Result<Vec<Instant>> {
    let conn = TcpStream::connect_timeout(&vip(v6, 80), TIMEOUT)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    let mut conn = Conn::new(conn)?;
    let mut times = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        conn.get()?;
        times.push(Instant::now());
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(times)
}

/// A node with `pods` hostnames pods and the Service's manifest written;
/// returns it and the manifest directory. No agent runs yet.
fn cluster(pods: usize) -> (Cluster, std::path::PathBuf) {
    let c = Cluster::new(common::bins(), pods).expect("cluster");
    let dir = c.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("svc.yaml"), manifest(&c)).unwrap();
    (c, dir)
}

/// Outcomes of one kind of request.
type Loop = (&'static str, Arc<Counts>);
/// A kept-alive connection's exchange times, or its first error.
type LongLived = std::thread::JoinHandle<anyhow::Result<std::io::Result<Vec<Instant>>>>;

/// The client pod's traffic while agents come and go, in both families:
/// a new TCP and a UDP request every 5 ms, and one kept-alive
/// connection.
struct PodTraffic {
    stop: Arc<AtomicBool>,
    counts: Vec<Loop>,
    loops: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    long: Vec<(&'static str, LongLived)>,
}

impl PodTraffic {
    fn start(c: &Cluster) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut counts, mut loops, mut long) = (Vec::new(), Vec::new(), Vec::new());
        for (name, v6, f) in [
            ("tcp4", false, tcp_once as fn(bool) -> bool),
            ("udp4", false, udp_once),
            ("tcp6", true, tcp_once),
            ("udp6", true, udp_once),
        ] {
            let (stop, n) = (stop.clone(), Arc::new(Counts::default()));
            counts.push((name, n.clone()));
            loops.push(c.client().ns.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    n.record(f(v6));
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        for (name, v6) in [("IPv4", false), ("IPv6", true)] {
            let stop = stop.clone();
            long.push((name, c.client().ns.spawn(move || long_lived(v6, stop))));
        }
        PodTraffic {
            stop,
            counts,
            loops,
            long,
        }
    }

    /// Stops the traffic and asserts that enough ran, that nothing failed
    /// across `what`, and that the kept-alive connections exchanged data
    /// after `since` (`since_what` says what happened then).
    fn finish(self, what: &str, since: Instant, since_what: &str) {
        self.stop.store(true, Ordering::SeqCst);
        for l in self.loops {
            l.join().unwrap().unwrap();
        }
        for (family, long) in self.long {
            let times = long.join().unwrap().unwrap().unwrap_or_else(|e| {
                panic!("the long-lived {family} connection survives {what}: {e}")
            });
            assert!(
                times.iter().filter(|t| **t > since).count() > 20,
                "the long-lived {family} connection exchanged data after {since_what}"
            );
        }
        for (name, n) in &self.counts {
            let (sent, answered, failed) = n.show();
            eprintln!("{what}: {name} sent {sent} answered {answered} failed {failed}");
            assert!(sent > 50, "enough {name} traffic ran: {sent}");
            assert_eq!(failed, 0, "{name} requests failed across {what}");
        }
    }
}

#[test]
fn kill_9_and_sigterm_under_traffic_lose_nothing() {
    let (mut c, dir) = cluster(3);
    c.start_agent(&dir).expect("agent");
    let traffic = PodTraffic::start(&c);
    // The node's own traffic goes through the socket hooks.
    let node = c
        .node_command("sh")
        .args([
            "-c",
            "ok=0; fail=0; for i in $(seq 1 400); do if curl -s -m 2 -o /dev/null http://10.0.1.175:80/; then ok=$((ok+1)); else fail=$((fail+1)); fi; [ -e \"$0\" ] && break; done; echo \"$ok $fail\"",
        ])
        .arg(c.workdir.join("stop-node-loop"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node client loop");

    std::thread::sleep(Duration::from_millis(800));
    c.stop_agent(libc::SIGKILL);
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(800));
    c.start_agent(&dir).expect("agent restarts after kill -9");
    std::thread::sleep(Duration::from_millis(500));
    c.stop_agent(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    c.start_agent(&dir).expect("agent restarts after SIGTERM");
    std::thread::sleep(Duration::from_millis(500));

    traffic.finish("restarts", killed_at, "kill -9");
    std::fs::write(c.workdir.join("stop-node-loop"), "").unwrap();
    let node = node.wait_with_output().unwrap();
    let node_out = String::from_utf8_lossy(&node.stdout).to_string();
    eprintln!("node curl ok/fail {node_out}");
    let mut nums = node_out
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap());
    let (nok, nfail) = (nums.next().unwrap(), nums.next().unwrap());
    assert!(nok > 20, "node requests ran: {node_out}");
    assert_eq!(nfail, 0, "node requests failed: {node_out}");
}

#[test]
fn cleanup_detaches_everything_and_is_idempotent() {
    let (mut c, dir) = cluster(1);
    c.start_agent(&dir).expect("agent");
    c.stop_agent(libc::SIGTERM);
    // Still serving with no agent running.
    for v6 in [false, true] {
        // IPv6: its stages stay reachable (their program arrays pinned).
        assert!(
            c.client().ns.run(move || tcp_once(v6)).unwrap(),
            "programs stay attached after SIGTERM (IPv6: {v6})"
        );
    }
    let before = tc_links(&c);
    assert_eq!(
        before.len(),
        2 * (c.pods.len() + 1),
        "tc ingress and egress on every pod link: {before:?}"
    );
    assert!(before.values().all(|(l, _)| kernel_link_ids().contains(l)));
    c.cli("cleanup").expect("cleanup");
    c.cli("cleanup").expect("cleanup again is fine");
    assert!(!c.pin_path().exists(), "pins removed");
    for v6 in [false, true] {
        assert!(
            !c.client().ns.run(move || tcp_once(v6)).unwrap(),
            "no translation after cleanup (IPv6: {v6})"
        );
    }
    // None of the links it had is left in the kernel.
    let left: Vec<_> = before
        .values()
        .filter(|(l, _)| kernel_link_ids().contains(l))
        .collect();
    assert!(
        left.is_empty(),
        "links still attached after cleanup: {left:?}"
    );
}

#[test]
fn runs_with_only_its_capabilities_and_names_a_missing_one() {
    let (mut c, dir) = cluster(1);
    let only = |caps: &str| -> Vec<String> {
        ["setpriv", "--bounding-set", &format!("-all,{caps}"), "--"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    // Missing CAP_BPF: a clear refusal, nothing loaded.
    c.agent_prefix = only("+net_admin,+perfmon");
    let err = c.start_agent(&dir).expect_err("agent must refuse to start");
    let log = c.agent_log_text();
    assert!(log.contains("missing: CAP_BPF"), "{err:#}\n{log}");
    assert!(!c.agent_running());
    // Exactly the capabilities it documents: it serves.
    c.agent_prefix = only("+bpf,+net_admin,+perfmon");
    c.start_agent(&dir)
        .expect("agent with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON");
    for v6 in [false, true] {
        assert!(
            c.client().ns.run(move || tcp_once(v6)).unwrap(),
            "serves with least privilege (IPv6: {v6})"
        );
    }
}

/// Link pin name (`tc-ingress-<ifindex>`, ...) -> (link id, program id),
/// read from the links the agent pinned.
fn tc_links(c: &Cluster) -> std::collections::BTreeMap<String, (u32, u32)> {
    let dir = c.pin_path().join("links");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tc-"))
        .map(|e| {
            let link = aya::programs::links::PinnedLink::from_pin(e.path()).unwrap();
            let info = aya::programs::links::FdLink::from(link).info().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (info.id(), info.program_id()),
            )
        })
        .collect()
}

/// Ids of every BPF link the kernel holds.
fn kernel_link_ids() -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|l| l.id())
        .collect()
}

/// Packets the `upgrade-probe` build of the programs has counted.
fn probe_count(c: &Cluster) -> u64 {
    lb_agent::datapath::maps::read_stat(&c.pin_path(), lb_common::STAT_SLOT_PROBE).unwrap()
}

#[test]
fn a_new_build_of_the_programs_takes_over_under_traffic_and_back() {
    let next = std::env::var("FERROLB_NEXT_DATAPATH").expect(
        "FERROLB_NEXT_DATAPATH unset: run through `cargo xtask test`, which builds the second datapath",
    );
    let (mut c, dir) = cluster(3);
    c.start_agent(&dir).expect("agent, built-in programs");
    let traffic = PodTraffic::start(&c);
    std::thread::sleep(Duration::from_millis(600));
    let old = tc_links(&c);
    assert_eq!(
        old.len(),
        2 * (c.pods.len() + 1),
        "ingress and egress on every pod link: {old:?}"
    );
    assert_eq!(probe_count(&c), 0, "the built-in build counts no probe");

    // Upgrade: the next build's agent swaps its programs into the links.
    c.stop_agent(libc::SIGTERM);
    c.agent_args = vec!["--datapath-object".into(), next];
    c.start_agent(&dir).expect("agent, next build");
    let upgraded_at = Instant::now();
    std::thread::sleep(Duration::from_millis(800));
    let new = tc_links(&c);
    assert_eq!(
        new.keys().collect::<Vec<_>>(),
        old.keys().collect::<Vec<_>>(),
        "same hooks, none added or lost"
    );
    for (hook, (link, prog)) in &new {
        // The same link (never detached), another program in it.
        assert_eq!(old[hook].0, *link, "{hook}: link replaced, not updated");
        assert_ne!(old[hook].1, *prog, "{hook}: still runs the old program");
    }
    assert!(probe_count(&c) > 0, "the next build handles the traffic");

    // Rollback the same way: the built-in build takes over again.
    c.stop_agent(libc::SIGTERM);
    c.agent_args.clear();
    c.start_agent(&dir).expect("agent, built-in programs again");
    std::thread::sleep(Duration::from_millis(300));
    let after_rollback = probe_count(&c);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        probe_count(&c),
        after_rollback,
        "the next build no longer runs after the rollback"
    );

    traffic.finish("the upgrade and the rollback", upgraded_at, "the upgrade");
}
