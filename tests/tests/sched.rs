//! Scheduling algorithms end to end: Services annotated with
//! `ferrolb.io/lb-algorithm` (and the `--lb-algorithm` default) in the
//! real agent, real pods, real clients. Round-robin answers in an exact
//! cycle (a client port reused on a tracked tuple keeps its flow's pod
//! and spends no turn), source hashing keeps a client on one pod, Maglev
//! moves only the flows of a pod that leaves (the same client ports, placed afresh after
//! a conntrack flush, reach the same pods as before), least-conn sends
//! new connections to the pod with the fewest open ones (through tc and
//! through the socket hooks) and `lb-agent services` shows its counts,
//! and a bad name is refused by name. `lb-agent explain` predicts where a
//! connection goes (Maglev, round-robin) and a real one then goes there.
mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use ferrolb_tests::cluster::{Cluster, InCgroup, wait_until, write_manifest};
use ferrolb_tests::http::{self, Conn};
use socket2::{Domain, Socket, Type};

const TIMEOUT: Duration = Duration::from_secs(2);

/// A Service `name` on `vip`:80 over the pods `ips`, with `annotation`
/// (an algorithm name) if any.
fn service(name: &str, vip: &str, annotation: Option<&str>, ips: &[Ipv4Addr]) -> String {
    let annotations = annotation
        .map(|a| format!(", annotations: {{ferrolb.io/lb-algorithm: {a}}}"))
        .unwrap_or_default();
    let eps: String = ips
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n"))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}{annotations}}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 9376}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 9376, protocol: TCP}}]\nendpoints:\n{eps}"
    )
}

fn ips(c: &Cluster) -> Vec<Ipv4Addr> {
    c.pods.iter().map(|p| p.ip).collect()
}

/// The cluster with `manifests(pods)` and extra agent flags.
fn setup(
    flags: &[&str],
    manifests: impl Fn(&[Ipv4Addr]) -> String,
) -> (Cluster, std::path::PathBuf) {
    let mut c = Cluster::new(common::bins(), 3).expect("cluster");
    c.agent_args.extend(flags.iter().map(|s| s.to_string()));
    let dir = c.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("services.yaml");
    std::fs::write(&path, manifests(&ips(&c))).unwrap();
    c.start_agent(&dir).expect("agent starts");
    (c, path)
}

/// One GET to `vip`:80 on a new connection from the client pod, from
/// `port` (0: any), or from the node in the hooked cgroup.
fn get(c: &Cluster, vip: &str, port: u16, from_node: bool) -> String {
    let addr = SocketAddr::new(vip.parse().unwrap(), 80);
    let ns = if from_node { &c.node } else { &c.client().ns };
    let _cg = from_node.then(|| InCgroup::enter(&c.cgroup).unwrap());
    ns.run(move || -> std::io::Result<String> {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
        sock.connect_timeout(&addr.into(), TIMEOUT)?;
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(TIMEOUT))?;
        http::get_and_close(s)
    })
    .unwrap()
    .unwrap_or_else(|e| format!("error: {e}"))
    .trim()
    .to_string()
}

#[test]
fn round_robin_answers_in_an_exact_cycle_and_is_the_default_on_request() {
    let (c, _) = setup(&["--lb-algorithm", "round-robin"], |ips| {
        service("rr", "10.0.1.181", Some("round-robin"), ips)
            + &service("plain", "10.0.1.182", None, ips)
    });
    // Each connection from its own port: a port the client reuses keeps
    // its tracked flow's pod (tried below), which no cycle predicts.
    for (vip, first_port) in [("10.0.1.181", 45_000), ("10.0.1.182", 45_100)] {
        let got: Vec<String> = (0..30)
            .map(|i| get(&c, vip, first_port + i, false))
            .collect();
        let first: BTreeSet<&String> = got[..3].iter().collect();
        assert_eq!(first.len(), 3, "{vip}: {got:?}");
        for (i, name) in got.iter().enumerate() {
            assert_eq!(name, &got[i % 3], "{vip}: answer {i} of {got:?}");
        }
        // A new connection on a closed one's tuple keeps its pod, and
        // spends no turn: the cycle goes on where it was.
        let reused = get(&c, vip, first_port + 28, false);
        assert_eq!(reused, got[28], "{vip}: the reused tuple");
        let next = get(&c, vip, first_port + 30, false);
        assert_eq!(next, got[0], "{vip}: the turn after the reused tuple");
    }
    let table = c.cli("services").unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.contains("10.0.1.181") && l.contains("round-robin")),
        "{table}"
    );
}

#[test]
fn source_hash_keeps_each_client_on_one_pod() {
    let (c, _) = setup(&[], |ips| {
        service("sh", "10.0.1.183", Some("source-hash"), ips)
    });
    for from_node in [false, true] {
        let got: BTreeSet<String> = (0..20)
            .map(|_| get(&c, "10.0.1.183", 0, from_node))
            .collect();
        assert_eq!(got.len(), 1, "from the node: {from_node}: {got:?}");
        assert!(!got.iter().any(|g| g.starts_with("error")), "{got:?}");
    }
}

#[test]
fn maglev_moves_only_the_flows_of_a_pod_that_leaves() {
    let (c, path) = setup(&[], |ips| service("mg", "10.0.1.184", Some("maglev"), ips));
    let ports: Vec<u16> = (0..60).map(|i| 46_000 + i).collect();
    let before: Vec<String> = ports
        .iter()
        .map(|&p| get(&c, "10.0.1.184", p, false))
        .collect();
    let used: BTreeSet<&String> = before.iter().collect();
    assert_eq!(used.len(), 3, "60 flows over {used:?}");
    // pod 1 leaves; the flows are forgotten, so each port is placed again.
    let leaving = c.pods[1].name.clone();
    let rest: Vec<Ipv4Addr> = c
        .pods
        .iter()
        .filter(|p| p.name != leaving)
        .map(|p| p.ip)
        .collect();
    c.programmed(|| write_manifest(&path, &service("mg", "10.0.1.184", Some("maglev"), &rest)));
    ferrolb_tests::netns::sh(
        std::process::Command::new(&common::bins().agent)
            .args(["conntrack", "--flush", "--pin-path"])
            .arg(c.pin_path()),
    )
    .expect("conntrack --flush");
    let after: Vec<String> = ports
        .iter()
        .map(|&p| get(&c, "10.0.1.184", p, false))
        .collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_ne!(a, &leaving, "port {}: to the pod that left", ports[i]);
        if b != &leaving {
            assert_eq!(a, b, "port {}: a staying pod's flow moved", ports[i]);
        }
    }
}

#[test]
fn an_unknown_algorithm_is_refused_by_name_and_the_rest_keeps_working() {
    let (c, _) = setup(&[], |ips| {
        service("odd", "10.0.1.185", Some("fastest"), ips)
            + &service("ok", "10.0.1.186", Some("round-robin"), ips)
    });
    let named = "Service default/odd: field metadata.annotations[ferrolb.io/lb-algorithm]";
    wait_until(Duration::from_secs(5), || {
        c.agent_log_text().contains(named)
    })
    .unwrap_or_else(|_| panic!("not named:\n{}", c.agent_log_text()));
    let got: BTreeSet<String> = (0..6).map(|_| get(&c, "10.0.1.186", 0, false)).collect();
    assert_eq!(got.len(), 3, "{got:?}");
}

/// A kept-alive connection to `vip`:80 from the client pod, or from the
/// node in the hooked cgroup, and the pod that answers it.
fn open(c: &Cluster, vip: &str, from_node: bool) -> (Conn, String) {
    let addr = SocketAddr::new(vip.parse().unwrap(), 80);
    let ns = if from_node { &c.node } else { &c.client().ns };
    let _cg = from_node.then(|| InCgroup::enter(&c.cgroup).unwrap());
    ns.run(move || -> std::io::Result<(Conn, String)> {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let mut conn = Conn::new(s)?;
        let who = String::from_utf8_lossy(&conn.get()?).trim().to_string();
        Ok((conn, who))
    })
    .unwrap()
    .expect("kept-alive connection")
}

#[test]
fn least_conn_sends_new_connections_to_the_pod_with_fewest_open() {
    let (c, _) = setup(&[], |ips| {
        service("lc", "10.0.1.187", Some("least-conn"), ips)
    });
    for from_node in [false, true] {
        // Six connections held open: two per pod, whatever the ties.
        let mut held: Vec<(Conn, String)> =
            (0..6).map(|_| open(&c, "10.0.1.187", from_node)).collect();
        let per_pod = |held: &[(Conn, String)]| -> BTreeSet<usize> {
            c.pods
                .iter()
                .map(|p| held.iter().filter(|(_, w)| *w == p.name).count())
                .collect()
        };
        assert_eq!(
            per_pod(&held),
            BTreeSet::from([2]),
            "from the node: {from_node}"
        );
        // The two on one pod close: the next two connections go there.
        let idle = held[0].1.clone();
        held.retain(|(_, w)| *w != idle);
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..2 {
            let (conn, who) = open(&c, "10.0.1.187", from_node);
            assert_eq!(who, idle, "from the node: {from_node}: connection {i}");
            held.push((conn, who));
        }
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = c.cli("services").unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.contains("10.0.1.187") && l.contains("least-conn")),
        "{table}"
    );
}

/// `lb-agent explain` as JSON.
fn explain(c: &Cluster, src: SocketAddr, dst: &str) -> serde_json::Value {
    let pin = c.pin_path();
    let out = c
        .node_cli(&[
            "explain",
            "--pin-path",
            pin.to_str().unwrap(),
            &src.to_string(),
            dst,
            "tcp",
            "-o",
            "json",
        ])
        .expect("lb-agent explain");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn explain_says_where_a_connection_goes_before_it_does() {
    let (c, _) = setup(&[], |ips| {
        service("mg", "10.0.1.188", Some("maglev"), ips)
            + &service("rr", "10.0.1.189", Some("round-robin"), ips)
            + "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty}\nspec:\n  clusterIP: 10.0.1.190\n  ports: [{port: 80}]\n"
    });
    let client = c.client().ip;
    let pod_of = |backend: &serde_json::Value| -> String {
        let addr: SocketAddr = backend.as_str().unwrap().parse().unwrap();
        c.pods
            .iter()
            .find(|p| std::net::IpAddr::V4(p.ip) == addr.ip())
            .map(|p| p.name.clone())
            .unwrap_or_else(|| format!("no pod at {addr}"))
    };
    for (vip, first_port) in [("10.0.1.188", 47_000), ("10.0.1.189", 47_100)] {
        for port in first_port..first_port + 8 {
            let src = SocketAddr::from((client, port));
            let e = explain(&c, src, &format!("{vip}:80"));
            assert_eq!(e["verdict"], "translated", "{e}");
            let predicted = pod_of(&e["backend"]);
            assert_eq!(
                get(&c, vip, port, false),
                predicted,
                "{vip} from port {port}: {e}"
            );
            // Now tracked: the same answer, from the conntrack entry.
            let again = explain(&c, src, &format!("{vip}:80"));
            assert!(
                again["steps"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("conntrack: a tracked flow"),
                "{again}"
            );
            assert_eq!(pod_of(&again["backend"]), predicted, "{again}");
        }
    }
    let src = SocketAddr::from((client, 47_200));
    assert_eq!(explain(&c, src, "10.0.1.190:80")["verdict"], "rejected");
    assert_eq!(explain(&c, src, "10.0.9.9:80")["verdict"], "passed");
    let pin = c.pin_path();
    let text = c
        .node_cli(&[
            "explain",
            "--pin-path",
            pin.to_str().unwrap(),
            &src.to_string(),
            "10.0.1.188:80",
            "tcp",
        ])
        .unwrap();
    assert!(
        text.contains("maglev: flow hash") && text.ends_with("=> translated\n"),
        "{text}"
    );
}
