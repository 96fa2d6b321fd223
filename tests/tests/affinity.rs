//! `sessionAffinity: ClientIP` end to end: the seeds' `hostnames` with
//! affinity, real clients in a pod (tc) and on the node (socket hooks),
//! TCP and UDP: a client's new connections stick to one pod, the session
//! expires after its timeout of no new connections, switching affinity
//! off and on takes effect on the live Service, and a session whose pod
//! leaves the Service moves to another pod.
mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use ferrolb_tests::cluster::{Cluster, InCgroup, wait_until, write_manifest};
use ferrolb_tests::http;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const TIMEOUT: Duration = Duration::from_secs(2);
/// The session timeout the tests use, in seconds.
const AFFINITY_SECS: u64 = 2;

/// hostnames (TCP 80, UDP 53) on the pods `ips`, with or without
/// affinity.
fn manifest(ips: &[Ipv4Addr], affinity: bool) -> String {
    let affinity = if affinity {
        format!(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {AFFINITY_SECS}}}}}\n"
        )
    } else {
        String::new()
    };
    let eps: String = ips
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hostnames}}\nspec:\n  clusterIP: {VIP}\n{affinity}  ports:\n  - {{name: http, protocol: TCP, port: 80, targetPort: 9376}}\n  - {{name: dns, protocol: UDP, port: 53, targetPort: 9376}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnames-1, labels: {{kubernetes.io/service-name: hostnames}}}}\naddressType: IPv4\nports: [{{name: http, port: 9376, protocol: TCP}}, {{name: dns, port: 9376, protocol: UDP}}]\nendpoints:\n{eps}"
    )
}

struct Setup {
    c: Cluster,
    path: std::path::PathBuf,
}

fn setup() -> Setup {
    let mut c = Cluster::new(common::bins(), 3).expect("cluster");
    let dir = c.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("services.yaml");
    std::fs::write(&path, manifest(&ips(&c), true)).unwrap();
    c.start_agent(&dir).expect("agent starts");
    Setup { c, path }
}

fn ips(c: &Cluster) -> Vec<Ipv4Addr> {
    c.pods.iter().map(|p| p.ip).collect()
}

impl Setup {
    /// Rewrites the manifest (atomically, as a config tool would).
    fn write(&self, text: &str) {
        write_manifest(&self.path, text);
    }

    /// Rewrites the manifest and waits until the agent has programmed it.
    fn apply(&self, text: &str) {
        self.c.programmed(|| self.write(text));
    }
}

/// One HTTP GET to the VIP on a new connection from the client pod (tc),
/// or from the node inside the hooked cgroup (socket hooks).
fn tcp(c: &Cluster, from_node: bool) -> String {
    let addr = SocketAddr::from((VIP, 80));
    let ns = if from_node { &c.node } else { &c.client().ns };
    let _cg = from_node.then(|| InCgroup::enter(&c.cgroup).unwrap());
    ns.run(move || -> std::io::Result<String> {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        http::get_and_close(s)
    })
    .unwrap()
    .expect("GET through the VIP")
    .trim()
    .to_string()
}

/// One datagram from a new socket in the client pod: the answering pod.
fn udp(c: &Cluster) -> String {
    c.client()
        .ns
        .run(|| -> std::io::Result<String> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.send_to(b"who", (VIP, 53))?;
            let mut buf = [0u8; 128];
            let n = s.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        })
        .unwrap()
        .expect("datagram through the VIP")
}

/// Answers to `n` new connections.
fn answers(n: usize, mut one: impl FnMut() -> String) -> BTreeSet<String> {
    (0..n).map(|_| one()).collect()
}

#[test]
fn new_connections_of_a_client_stick_to_one_pod_until_the_session_expires() {
    let s = setup();
    let c = &s.c;
    for (path, from_node) in [
        ("tc, from a pod", false),
        ("socket hooks, from the node", true),
    ] {
        let got = answers(50, || tcp(c, from_node));
        assert_eq!(got.len(), 1, "{path}: 50 connections reached {got:?}");
    }
    let got = answers(20, || udp(c));
    assert_eq!(got.len(), 1, "UDP from a pod: 20 sockets reached {got:?}");
    // The table shows it.
    let table = c.cli("services").unwrap();
    assert!(
        table.contains(&format!("ClientIP {AFFINITY_SECS}s")),
        "{table}"
    );
    // No new connection for longer than the timeout: the session ends and
    // the next connection is placed afresh (another pod, in a few tries;
    // each try waits out the timeout first).
    let first = tcp(c, false);
    let mut moved = false;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(AFFINITY_SECS * 1000 + 500));
        if tcp(c, false) != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "the session to {first} never expired");
}

#[test]
fn affinity_follows_the_live_service_and_its_endpoints() {
    let s = setup();
    let c = &s.c;
    let pods = ips(c);
    // Off: one client's connections spread again.
    s.apply(&manifest(&pods, false));
    let got = answers(30, || tcp(c, false));
    assert!(got.len() > 1, "affinity off, 30 connections all on {got:?}");
    // On again: they stick.
    s.apply(&manifest(&pods, true));
    let got = answers(30, || tcp(c, false));
    assert_eq!(got.len(), 1, "affinity on again: {got:?}");
    // The session's pod leaves the slice: the client moves to another pod
    // and sticks there.
    let sticky = got.into_iter().next().unwrap();
    let rest: Vec<Ipv4Addr> = c
        .pods
        .iter()
        .filter(|p| p.name != sticky)
        .map(|p| p.ip)
        .collect();
    s.apply(&manifest(&rest, true));
    let got = answers(30, || tcp(c, false));
    assert_eq!(got.len(), 1, "after {sticky} left: {got:?}");
    assert!(!got.contains(&sticky), "{sticky} left the Service: {got:?}");
}

#[test]
fn a_bad_affinity_timeout_is_refused_by_name_and_the_rest_keeps_working() {
    let s = setup();
    let c = &s.c;
    let bad = "---\napiVersion: v1\nkind: Service\nmetadata: {name: sticky-bad}\nspec:\n  clusterIP: 10.0.1.180\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n  ports: [{port: 80}]\n";
    s.write(&format!("{}{bad}", manifest(&ips(c), true)));
    let named =
        "Service default/sticky-bad: field spec.sessionAffinityConfig.clientIP.timeoutSeconds";
    wait_until(Duration::from_secs(5), || {
        c.agent_log_text().contains(named)
    })
    .unwrap_or_else(|_| panic!("not named in the log:\n{}", c.agent_log_text()));
    let got = answers(20, || tcp(c, false));
    assert_eq!(got.len(), 1, "hostnames keeps its affinity: {got:?}");
}
