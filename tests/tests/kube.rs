//! End to end in API mode: the real agent in the node namespace follows a
//! fake API server (real HTTP, listening on the node namespace's
//! loopback); real pod servers answer through the VIP.
mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::k8s::{node, service, slice};
use ferrolb_tests::cluster::{Cluster, wait_until};
use ferrolb_tests::fakeapi::{FakeApi, Resource};
use ferrolb_tests::firewall;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const TIMEOUT: Duration = Duration::from_secs(2);
const CONVERGE: Duration = Duration::from_secs(10);

/// Source ports of the client's connections, each used once in a run.
/// The datapath's conntrack entries outlive their flows (LRU), so a new
/// connection that reused a closed flow's 4-tuple would follow that old
/// entry to a possibly removed backend; this test is about what the API
/// programs, not about that.
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A TCP connection to `addr` from source port `port` (below the
/// kernel's ephemeral range, so the two never collide).
fn connect_from(port: u16, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        unreachable!("IPv4 only")
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let timeout = libc::timeval {
        tv_sec: TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: plain socket calls on an fd we own; the TcpStream takes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let ok = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
            // connect() honours the send timeout.
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ) == 0;
        let local = sockaddr(Ipv4Addr::UNSPECIFIED, port);
        let remote = sockaddr(*v4.ip(), v4.port());
        if !ok
            || libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// One HTTP GET on a new connection from the client pod: the answering
/// pod's name.
fn get(c: &Cluster) -> std::io::Result<String> {
    let addr = SocketAddr::from((VIP, 80));
    let port = 20_000 + (NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 12_000) as u16;
    c.client()
        .ns
        .run(move || -> std::io::Result<String> {
            let mut s = connect_from(port, addr)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body.rsplit("\r\n\r\n").next().unwrap_or("").trim().into())
        })
        .unwrap()
}

/// The pods that answered `n` requests (failures count as "-").
fn answers(c: &Cluster, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| get(c).unwrap_or_else(|_| "-".into()))
        .collect()
}

fn names(c: &Cluster, pods: &[usize]) -> BTreeSet<String> {
    pods.iter().map(|&i| c.pods[i].name.clone()).collect()
}

/// Waits until the VIP is answered by exactly `pods`, then checks that
/// 60 more requests reach only them.
fn expect_backends(c: &Cluster, pods: &[usize], what: &str) {
    let want = names(c, pods);
    // 40 answers per poll: with 15, a backend still in the map (1 of 3)
    // went unseen in 0.2% of polls, and a poll runs every few ms while a
    // sync is held back by --min-sync-interval-ms, so the wait passed
    // early now and then and the steady-state check failed. (2/3)^40 is
    // about 1e-7.
    wait_until(CONVERGE, || answers(c, 40) == want).unwrap_or_else(|_| {
        panic!(
            "{what}: VIP answered by {:?}, want {want:?}; agent log:\n{}",
            answers(c, 40),
            c.agent_log_text()
        )
    });
    let steady = answers(c, 60);
    assert_eq!(
        steady,
        want,
        "{what}: steady state; agent log:\n{}",
        c.agent_log_text()
    );
}

fn pod_ips(c: &Cluster, pods: &[usize]) -> Vec<String> {
    pods.iter().map(|&i| c.pods[i].ip.to_string()).collect()
}

fn hostnames_slice(c: &Cluster, pods: &[usize]) -> serde_json::Value {
    let ips = pod_ips(c, pods);
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    slice("hostnames-abcde", "hostnames", &ips)
}

#[test]
fn agent_follows_the_api_server() {
    let fw_before = firewall::snapshot(None).expect("firewall snapshot");
    let mut cluster = Cluster::new(common::bins(), 3).expect("cluster");
    // Loopback is per namespace: listen where the agent runs.
    let listener = cluster
        .node
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .expect("listen in the node namespace");
    let api = FakeApi::serve(listener).unwrap();
    let kubeconfig = cluster.workdir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.apply(node("node-a", "192.168.1.10"));
    api.apply(service("hostnames", "10.0.1.175", 80, 9376));
    api.apply(hostnames_slice(&cluster, &[0, 1, 2]));
    cluster
        .start_agent_with(&[
            OsStr::new("--kubeconfig"),
            kubeconfig.as_os_str(),
            OsStr::new("--node-name"),
            OsStr::new("node-a"),
            OsStr::new("--min-sync-interval-ms"),
            OsStr::new("200"),
        ])
        .expect("agent starts in API mode");
    let c = &cluster;

    // ADDED (the initial list): every pod answers.
    expect_backends(c, &[0, 1, 2], "after ADDED");

    // MODIFIED: a backend leaves the slice; only the others answer.
    api.apply(hostnames_slice(c, &[1, 2]));
    expect_backends(c, &[1, 2], "after the slice dropped a backend");

    // A bad object is skipped, named in the log; the rest keeps working.
    api.apply(service("bad", "10.0.9.9", 70000, 9376));
    wait_until(CONVERGE, || {
        c.agent_log_text()
            .contains("Service default/bad: field spec.ports[0].port")
    })
    .expect("bad Service named in the log");
    expect_backends(c, &[1, 2], "after a bad object");

    // A burst of changes is coalesced: syncs at most every 200 ms.
    let syncs = |c: &Cluster| c.agent_log_text().matches("maps reconciled").count();
    let before = syncs(c);
    let started = std::time::Instant::now();
    for i in 0..25 {
        let pods: &[usize] = if i % 2 == 0 { &[1, 2] } else { &[1, 2, 0] };
        api.apply(hostnames_slice(c, pods));
        std::thread::sleep(Duration::from_millis(20));
    }
    let burst_ms = started.elapsed().as_millis();
    // Settled: no sync for 600 ms (three sync intervals). Before that, an
    // intermediate state of the burst may still be applied after the
    // final one was seen once.
    let mut last = syncs(c);
    wait_until(CONVERGE, || {
        std::thread::sleep(Duration::from_millis(600));
        let now = syncs(c);
        std::mem::replace(&mut last, now) == now
    })
    .expect("syncs settle after the burst");
    expect_backends(c, &[1, 2], "after the burst");
    let burst = syncs(c) - before;
    // One sync per 200 ms interval the burst spanned (about 500 ms, more
    // when the machine is loaded), plus the final state's: never one per
    // change.
    let most = (burst_ms as usize / 200 + 3).min(12);
    assert!(
        (1..=most).contains(&burst),
        "25 changes in {burst_ms} ms took {burst} syncs (at most {most})"
    );

    // DELETED: the VIP no longer answers.
    assert!(api.delete(Resource::Services, "default", "hostnames"));
    wait_until(CONVERGE, || get(c).is_err()).expect("VIP stops answering after DELETED");
    assert_eq!(answers(c, 5), BTreeSet::from(["-".to_string()]));

    // 410 Gone: the Service comes back and the slice changes while the
    // watch is blind; only the relist can tell.
    api.pause();
    api.apply(service("hostnames", "10.0.1.175", 80, 9376));
    api.apply(hostnames_slice(c, &[0, 2]));
    api.expire();
    api.resume();
    expect_backends(c, &[0, 2], "after the 410 relist");
    wait_until(CONVERGE, || c.agent_log_text().contains("API resynced")).expect("relist logged");

    // The API goes away: the datapath keeps serving the last state.
    api.set_down(true);
    wait_until(CONVERGE, || {
        c.agent_log_text().contains("API watch failed; retrying")
    })
    .expect("lost API logged");
    expect_backends(c, &[0, 2], "while the API is down");
    // ...and reported in the status, readiness and metrics.
    let status = cluster.node_cli(&["status"]).unwrap();
    assert!(
        status.contains("source: kubernetes API (failing watches: "),
        "{status}"
    );
    assert!(!status.contains("(failing watches: none)"), "{status}");
    let ready = cluster
        .node
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:10249/readyz",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ready.stdout),
        "503",
        "not ready while the API is down"
    );
    let metrics = cluster.metrics().unwrap();
    assert!(metrics.contains("ferrolb_source_up 0\n"), "{metrics}");
    api.set_down(false);
    api.apply(hostnames_slice(c, &[0, 1, 2]));
    expect_backends(c, &[0, 1, 2], "after the API came back");
    wait_until(CONVERGE, || {
        cluster
            .node_cli(&["status"])
            .is_ok_and(|s| s.contains("(failing watches: none)"))
    })
    .expect("status recovers with the API");

    assert!(cluster.agent_running(), "agent still running");
    common::rbac::assert_calls_allowed(&api.calls());
    assert_eq!(
        firewall::snapshot(None).unwrap(),
        fw_before,
        "root namespace rules changed"
    );
}
