//! Endpoint churn under traffic: the seeds' `hostnames` goes through 100
//! endpoint changes, each pod in turn going terminating (a rollout's
//! first step: established connections continue, new ones go to ready
//! pods), then leaving the slice, then coming back ready, while a client
//! pod sends requests on new TCP connections and UDP datagrams from new
//! sockets without pause. Each change waits for the agent to program it
//! (a rollout's terminating phase lasts seconds, so the datapath always
//! sees it before the endpoint goes). No request fails; no TCP connection
//! opened after a pod went terminating, and no datagram sent after its
//! flows were purged, reaches it before it is ready again.
mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrolb_tests::cluster::{Cluster, wait_until, write_manifest};
use ferrolb_tests::http::{self, Conn};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const TIMEOUT: Duration = Duration::from_secs(2);
const CHANGES: usize = 100;
const PAUSE: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Ready,
    Terminating,
    Gone,
}

fn manifest(c: &Cluster, states: &[State]) -> String {
    let mut eps = String::new();
    for (p, st) in c.pods.iter().zip(states) {
        let cond = match st {
            State::Ready => "{ready: true, serving: true, terminating: false}",
            State::Terminating => "{ready: false, serving: true, terminating: true}",
            State::Gone => continue,
        };
        eps.push_str(&format!(
            "- addresses: [\"{}\"]\n  conditions: {cond}\n",
            p.ip
        ));
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hostnames}}\nspec:\n  clusterIP: {VIP}\n  ports:\n  - {{name: http, protocol: TCP, port: 80, targetPort: 9376}}\n  - {{name: dns, protocol: UDP, port: 53, targetPort: 9376}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnames-1, labels: {{kubernetes.io/service-name: hostnames}}}}\naddressType: IPv4\nports: [{{name: http, port: 9376, protocol: TCP}}, {{name: dns, port: 9376, protocol: UDP}}]\nendpoints:\n{eps}"
    )
}

/// One request on a new TCP connection (or datagram from a new socket):
/// the answering pod.
fn request(udp: bool) -> std::io::Result<String> {
    if udp {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send_to(b"who", (VIP, 53))?;
        let mut buf = [0u8; 128];
        let n = s.recv(&mut buf)?;
        return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    let s = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    Ok(http::get_and_close(s)?.trim().to_string())
}

#[test]
fn a_hundred_endpoint_changes_under_traffic_fail_no_request() {
    let mut c = Cluster::new(common::bins(), 3).expect("cluster");
    let dir = c.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("services.yaml");
    let mut states = vec![State::Ready; 3];
    std::fs::write(&path, manifest(&c, &states)).unwrap();
    c.agent_args
        .extend(["--min-sync-interval-ms", "20"].map(String::from));
    c.start_agent(&dir).expect("agent starts");
    let start = Instant::now();
    // The clients: (sent at, answered at, pod or error) of every request.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [false, true]
        .into_iter()
        .map(|udp| {
            let stop = stop.clone();
            c.client().ns.spawn(move || {
                let mut log = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = start.elapsed();
                    let got = request(udp).map_err(|e| e.to_string());
                    log.push((t0, start.elapsed(), got));
                }
                log
            })
        })
        .collect();
    // The changes, each programmed before the next. Per pod, when new
    // flows must not reach it: TCP from its terminating state on (a SYN
    // is a new flow, whatever its tuple), UDP from its flows' purge on
    // (a datagram on a reused tuple is the same flow, which continues to
    // a terminating pod, as with kube-proxy), until it is ready again.
    let purges = |c: &Cluster| {
        c.agent_log_text()
            .matches("flows to removed backends purged")
            .count()
    };
    let mut since: [Vec<Option<Duration>>; 2] = [vec![None; 3], vec![None; 3]];
    let mut spans: [Vec<Vec<(Duration, Duration)>>; 2] = Default::default();
    for s in spans.iter_mut() {
        *s = vec![Vec::new(); 3];
    }
    for k in 0..CHANGES {
        std::thread::sleep(PAUSE);
        let pod = (k / 3) % 3;
        states[pod] = match states[pod] {
            State::Ready => State::Terminating,
            State::Terminating => State::Gone,
            State::Gone => State::Ready,
        };
        // Ready again from this write at the earliest.
        let written = start.elapsed();
        let write = || write_manifest(&path, &manifest(&c, &states));
        match states[pod] {
            State::Terminating => {
                c.programmed(write);
                since[0][pod] = Some(start.elapsed());
            }
            State::Gone => {
                // Not in the slots either way: no map writes, only its
                // flows purged (if it has any: else no span for UDP).
                let before = purges(&c);
                write();
                if wait_until(Duration::from_millis(300), || purges(&c) > before).is_ok() {
                    since[1][pod] = Some(start.elapsed());
                }
            }
            State::Ready => {
                c.programmed(write);
                for proto in 0..2 {
                    if let Some(t) = since[proto][pod].take() {
                        spans[proto][pod].push((t, written));
                    }
                }
            }
        }
    }
    std::thread::sleep(PAUSE);
    stop.store(true, Ordering::Relaxed);
    let end = start.elapsed();
    for proto in 0..2 {
        for pod in 0..3 {
            if let Some(t) = since[proto][pod] {
                spans[proto][pod].push((t, end));
            }
        }
    }
    let udp_spans: usize = spans[1].iter().map(Vec::len).sum();
    assert!(
        udp_spans >= 10,
        "only {udp_spans} purges seen: the UDP check checks little"
    );
    for (udp, client) in [false, true].into_iter().zip(clients) {
        let what = if udp { "UDP" } else { "TCP" };
        let log = client.join().unwrap().unwrap();
        assert!(log.len() > 100, "{what}: only {} requests", log.len());
        let failed: Vec<_> = log.iter().filter(|(.., r)| r.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed, first: {:?}\n{}",
            failed.len(),
            log.len(),
            failed[0],
            c.agent_log_text()
        );
        for (t0, t1, got) in &log {
            let name = got.as_ref().unwrap();
            let pod = c
                .pods
                .iter()
                .position(|p| &p.name == name)
                .expect("a known pod");
            let spans = &spans[udp as usize][pod];
            let stale = spans
                .iter()
                .any(|(since, until)| *t0 > *since && *t1 < *until);
            assert!(
                !stale,
                "{what}: {name} answered at {t0:?}-{t1:?}, inside {spans:?}"
            );
        }
    }
}

/// A kept-alive TCP connection whose pod leaves the slice (the pod keeps
/// running) is reset at its next request, at once, rather than left to
/// hang: its flow is purged, and the next segment, placed afresh on a
/// pod that has no such connection, draws that pod's RST, which reaches
/// the client from the VIP.
#[test]
fn a_connection_to_a_pod_that_leaves_is_reset_not_left_hanging() {
    let mut c = Cluster::new(common::bins(), 3).expect("cluster");
    let dir = c.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("services.yaml");
    std::fs::write(&path, manifest(&c, &[State::Ready; 3])).unwrap();
    c.start_agent(&dir).expect("agent starts");
    let conn = c
        .client()
        .ns
        .run(|| -> std::io::Result<(Conn, String)> {
            let s = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            let mut conn = Conn::new(s)?;
            let body = String::from_utf8_lossy(&conn.get()?).trim().to_string();
            Ok((conn, body))
        })
        .unwrap();
    let (mut conn, pod) = conn.expect("first request");
    let victim = c
        .pods
        .iter()
        .position(|p| p.name == pod)
        .expect("a known pod");
    let mut states = [State::Ready; 3];
    states[victim] = State::Gone;
    let purges = |c: &Cluster| {
        c.agent_log_text()
            .matches("flows to removed backends purged")
            .count()
    };
    let before = purges(&c);
    c.programmed(|| write_manifest(&path, &manifest(&c, &states)));
    wait_until(Duration::from_secs(5), || purges(&c) > before).expect("its flow purged");
    let started = Instant::now();
    let err = conn.get().expect_err("the connection's pod left");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "{err} after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
