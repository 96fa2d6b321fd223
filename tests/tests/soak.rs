//! Churn soak: 1,000 Services whose endpoints flap (manifest files
//! rewritten several times a second) while traffic runs to a Service whose
//! endpoints stay. Afterwards the maps hold exactly the desired state (no
//! leaked or missing entry), the agent's memory is flat, and no request to
//! the steady Service failed. 60 s here; `cargo xtask bench --soak SECS`
//! runs it longer (FERROLB_SOAK_SECS).
mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrolb_tests::cluster::{Cluster, wait_until, write_manifest};
use ferrolb_tests::http::{self, Conn};
use ferrolb_tests::netns::sh;

const FILES: usize = 10;
const PER_FILE: usize = 100;
const STEADY_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
/// Agent RSS may grow this much from after the first programming to the
/// end (allocator slack), and no more.
const RSS_SLACK_KB: u64 = 16 * 1024;

fn soak_secs() -> u64 {
    std::env::var("FERROLB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn steady(pods: &[Ipv4Addr]) -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: hostnames}\nspec:\n  clusterIP: 10.0.1.175\n  ports: [{name: default, protocol: TCP, port: 80, targetPort: 9376}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: hostnames-abcde\n  labels: {kubernetes.io/service-name: hostnames}\naddressType: IPv4\nports: [{name: default, protocol: TCP, port: 9376}]\nendpoints:\n",
    );
    for ip in pods {
        s.push_str(&format!("- addresses: [\"{ip}\"]\n"));
    }
    s
}

/// File `f`'s 100 Services; each gets 0..=4 endpoints picked from the
/// real pods and from addresses no pod has.
fn churn_file(f: usize, pods: &[Ipv4Addr], rng: &mut fastrand::Rng) -> String {
    let mut s = String::new();
    for i in 0..PER_FILE {
        let name = format!("churn-{f}-{i}");
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: 10.1.{f}.{}\n  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 9376}}, {{name: dns, protocol: UDP, port: 53, targetPort: 9376}}]\n",
            i + 1
        ));
        s.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, protocol: TCP, port: 9376}}, {{name: dns, protocol: UDP, port: 9376}}]\n"
        ));
        let n = rng.usize(0..=4);
        s.push_str(if n == 0 {
            "endpoints: []\n"
        } else {
            "endpoints:\n"
        });
        for _ in 0..n {
            let ip = if rng.bool() {
                pods[rng.usize(0..pods.len())]
            } else {
                Ipv4Addr::new(10, 244, 1 + rng.u8(0..4), rng.u8(1..250))
            };
            s.push_str(&format!(
                "- addresses: [\"{ip}\"]\n  conditions: {{ready: {}}}\n",
                rng.u8(0..4) != 0
            ));
        }
    }
    s
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn flapping_endpoints_leak_nothing_and_steady_traffic_never_fails() {
    let secs = soak_secs();
    let mut c = Cluster::new(common::bins(), 3).expect("cluster");
    let pods: Vec<Ipv4Addr> = c.pods.iter().map(|p| p.ip).collect();
    let dir = c.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = fastrand::Rng::with_seed(0x50a6);
    write_manifest(&dir.join("steady.yaml"), &steady(&pods));
    for f in 0..FILES {
        write_manifest(
            &dir.join(format!("churn-{f}.yaml")),
            &churn_file(f, &pods, &mut rng),
        );
    }
    c.start_agent(&dir).expect("agent");
    let pid = c.agent_pid().unwrap();
    let rss_start = rss_kb(pid);

    // Steady traffic: new connections, and one kept-alive connection.
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    let vip = SocketAddr::from((STEADY_VIP, 80));
    let st = stop.clone();
    let new_conns = c.client().ns.spawn(move || {
        let (mut ok, mut failed) = (0u64, 0u64);
        while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
            let r = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                Ok(http::get_and_close(s)?.contains("hostnames-"))
            });
            if matches!(r, Ok(true)) {
                ok += 1
            } else {
                failed += 1
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (ok, failed)
    });
    let st = stop.clone();
    let kept = c.client().ns.spawn(move || -> std::io::Result<(u64, u64)> {
        let mut conn = Conn::new(TcpStream::connect_timeout(&vip, Duration::from_secs(2))?)?;
        let (mut ok, mut failed) = (0u64, 0u64);
        while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
            match conn.get() {
                Ok(b) if b.starts_with(b"hostnames-") => ok += 1,
                _ => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((ok, failed))
    });

    // Churn: rewrite one file (100 Services) every 100 ms.
    let end = Instant::now() + Duration::from_secs(secs);
    let mut rewrites = 0;
    let mut rss_samples = Vec::new();
    while Instant::now() < end {
        let f = rng.usize(0..FILES);
        write_manifest(
            &dir.join(format!("churn-{f}.yaml")),
            &churn_file(f, &pods, &mut rng),
        );
        rewrites += 1;
        if rewrites % 100 == 0 {
            rss_samples.push(rss_kb(pid));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (nok, nfail) = new_conns.join().unwrap().unwrap();
    let (kok, kfail) = kept
        .join()
        .unwrap()
        .unwrap()
        .expect("kept-alive connection");
    assert!(
        c.agent_running(),
        "agent alive after the soak:\n{}",
        c.agent_log_text()
    );

    // The maps converge to exactly the last manifests: nothing leaked,
    // nothing missing (`check` lists every difference).
    let check = |c: &Cluster| {
        sh(std::process::Command::new(&c.bins.agent)
            .args(["check", "--manifests"])
            .arg(&dir)
            .arg("--pin-path")
            .arg(c.pin_path()))
    };
    if wait_until(Duration::from_secs(10), || check(&c).is_ok()).is_err() {
        panic!(
            "maps differ from the manifests after the soak:\n{:#}",
            check(&c).unwrap_err()
        );
    }
    let rss_end = rss_kb(pid);
    eprintln!(
        "soak {secs}s: {rewrites} rewrites of {PER_FILE} Services; new connections {nok} ok / {nfail} failed; \
         kept-alive requests {kok} ok / {kfail} failed; agent RSS {rss_start} kB -> {rss_end} kB (samples {rss_samples:?})"
    );
    assert!(
        rewrites as u64 >= secs * 5,
        "churn ran: {rewrites} rewrites"
    );
    assert!(
        nok > secs * 10 && kok > secs * 10,
        "steady traffic ran: {nok} new, {kok} kept-alive"
    );
    assert_eq!(
        nfail, 0,
        "requests to the steady Service failed during churn"
    );
    assert_eq!(
        kfail, 0,
        "kept-alive requests to the steady Service failed during churn"
    );
    assert!(
        rss_end <= rss_start + RSS_SLACK_KB,
        "agent memory grew from {rss_start} kB to {rss_end} kB"
    );
    // The check sees drift: with no agent running, a changed manifest is
    // reported, naming the frontend.
    c.stop_agent(libc::SIGTERM);
    write_manifest(&dir.join("steady.yaml"), &steady(&pods[..1]));
    let err = format!("{:#}", check(&c).expect_err("drift must be reported"));
    assert!(err.contains("differs: frontend 10.0.1.175:80/TCP"), "{err}");
}
