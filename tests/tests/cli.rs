//! The CLI against a running agent, and a stopped one: `services`,
//! `stats` (outcomes, and each frontend's packets and bytes, also on
//! `/metrics`) and `conntrack` read the pinned maps (tables, and JSON for
//! scripts); `conntrack` filters and flushes. And the agent's health
//! endpoint (`/healthz`, `/livez`), healthy until changes wait too long.
mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use ferrolb_tests::cluster::{Cluster, write_manifest};
use ferrolb_tests::http::Conn;
use ferrolb_tests::netns::sh;

const VIP: &str = "10.0.1.175";

fn manifest(c: &Cluster) -> String {
    let eps: String = c
        .pods
        .iter()
        .map(|p| format!("- addresses: [\"{}\"]\n", p.ip))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hostnames}}\nspec:\n  clusterIP: {VIP}\n  ports:\n  - {{name: http, port: 80, targetPort: 9376}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnames-1, labels: {{kubernetes.io/service-name: hostnames}}}}\naddressType: IPv4\n\
         ports: [{{name: http, port: 9376, protocol: TCP}}]\nendpoints:\n{eps}"
    )
}

fn cli(c: &Cluster, sub: &str, args: &[&str]) -> String {
    sh(Command::new(&c.bins.agent)
        .arg(sub)
        .arg("--pin-path")
        .arg(c.pin_path())
        .args(args))
    .unwrap_or_else(|e| panic!("lb-agent {sub}: {e}"))
}

fn conntrack(c: &Cluster, args: &[&str]) -> String {
    cli(c, "conntrack", args)
}

#[test]
fn cli_reads_the_maps_as_tables_and_json_and_flushes_flows() {
    let mut c = Cluster::new(common::bins(), 2).expect("cluster");
    c.agent_args = [
        "--health-timeout-secs",
        "1",
        "--map-fill-interval-secs",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let path = c.workdir.join("services.yaml");
    std::fs::write(&path, manifest(&c)).unwrap();
    c.start_agent(&path).expect("agent starts");
    health(&c);
    // One kept-alive connection from the client pod: an orig and a reply
    // entry.
    let addr: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let (mut conn, local) = c
        .client()
        .ns
        .run(move || -> std::io::Result<(Conn, SocketAddr)> {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let local = s.local_addr()?;
            Ok((Conn::new(s)?, local))
        })
        .unwrap()
        .expect("connection through the VIP");
    let pod = String::from_utf8(conn.get().expect("request")).unwrap();
    let backend = c
        .pods
        .iter()
        .find(|p| pod.trim() == p.name)
        .map(|p| SocketAddr::from((p.ip, 9376)))
        .expect("a pod answered");

    let table = conntrack(&c, &[]);
    let orig = format!("orig   tcp    {local}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&orig))
        .unwrap_or_else(|| panic!("no orig entry for {local}:\n{table}"));
    assert!(row.contains(&format!("{VIP}:80")), "{row}");
    assert!(row.contains(&format!("to {backend}")), "{row}");
    assert!(row.contains("default/hostnames:http"), "{row}");
    let reply = table
        .lines()
        .find(|l| l.starts_with(&format!("reply  tcp    {backend}")))
        .unwrap_or_else(|| panic!("no reply entry from {backend}:\n{table}"));
    assert!(reply.contains(&format!("from {VIP}:80")), "{reply}");
    assert!(table.ends_with("2 entries\n"), "{table}");

    let json: serde_json::Value = serde_json::from_str(&conntrack(&c, &["-o", "json"])).unwrap();
    let entries = json.as_array().expect("an array");
    assert_eq!(entries.len(), 2, "{json}");
    assert_eq!(entries[0]["direction"], "orig");
    assert_eq!(entries[0]["source"], local.to_string());
    assert_eq!(entries[0]["destination"], format!("{VIP}:80"));
    assert_eq!(entries[0]["translated"], backend.to_string());
    assert_eq!(entries[0]["protocol"], "tcp");
    assert_eq!(entries[1]["direction"], "reply");

    // bpftool prints the pinned maps by field name (they carry BTF).
    let svc = bpftool_dump(&c, lb_common::MAP_SERVICES);
    let master = svc
        .iter()
        .find(|e| e["key"]["slot"] == 0)
        .unwrap_or_else(|| panic!("no master entry: {svc:?}"));
    let vip: std::net::Ipv4Addr = VIP.parse().unwrap();
    assert_eq!(
        master["key"]["addr"],
        u32::from(vip).to_be() as u64,
        "{master}"
    );
    assert_eq!(master["key"]["port"], 80u16.to_be() as u64, "{master}");
    assert_eq!(master["value"]["count"], c.pods.len() as u64, "{master}");
    let ct = bpftool_dump(&c, lb_common::MAP_CONNTRACK);
    assert_eq!(ct.len(), 2, "{ct:?}");
    assert!(
        ct.iter()
            .all(|e| e["key"].get("sport").is_some() && e["value"].get("flags").is_some()),
        "{ct:?}"
    );

    // services and stats, as JSON.
    let services: serde_json::Value =
        serde_json::from_str(&cli(&c, "services", &["-o", "json"])).unwrap();
    assert_eq!(
        services,
        serde_json::json!([{
            "service": "default/hostnames:http",
            "frontend": format!("{VIP}:80/TCP"),
            "algorithm": "random",
            "affinity_secs": null,
            "backends": c.pods.iter().map(|p| format!("{}:9376", p.ip)).collect::<Vec<_>>(),
            "states": c.pods.iter().map(|_| "ready").collect::<Vec<_>>(),
            "active_flows": null,
        }])
    );
    let stats: serde_json::Value =
        serde_json::from_str(&cli(&c, "stats", &["-o", "json"])).unwrap();
    assert_eq!(stats["dnat_new"], 1, "{stats}");
    assert!(stats["revnat"].as_u64().unwrap() >= 1, "{stats}");
    // Per frontend: the connection's packets both ways (SYN, SYN-ACK,
    // ACK, request, response at least) and their bytes.
    let svc = &stats["services"][0];
    assert_eq!(svc["service"], "default/hostnames:http", "{stats}");
    assert_eq!(svc["frontend"], format!("{VIP}:80/TCP"), "{stats}");
    assert!(svc["packets"].as_u64().unwrap() >= 5, "{stats}");
    assert!(svc["bytes"].as_u64().unwrap() >= 5 * 54, "{stats}");
    // The same over /metrics while traffic flows: ten more requests on
    // the connection, each a request and a response at least.
    let series = format!(
        "ferrolb_service_packets_total{{service=\"default/hostnames:http\",frontend=\"{VIP}:80/TCP\"}} "
    );
    let scrape = || -> u64 {
        let m = c.metrics().unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{m}"))
    };
    let before = scrape();
    for _ in 0..10 {
        conn.get().expect("request");
    }
    let after = scrape();
    assert!(after >= before + 20, "{before} -> {after}");
    // The maps the datapath fills, as last counted: the connection's two
    // conntrack entries.
    let ct = format!(
        "ferrolb_map_entries{{map=\"{}\"}} 2",
        lb_common::MAP_CONNTRACK
    );
    ferrolb_tests::cluster::wait_until(Duration::from_secs(5), || {
        c.metrics().unwrap().lines().any(|l| l == ct)
    })
    .unwrap_or_else(|_| panic!("{ct} missing:\n{}", c.metrics().unwrap()));
    let max = format!(
        "ferrolb_map_max_entries{{map=\"{}\"}} {}",
        lb_common::MAP_SNAT,
        lb_common::DEFAULT_CONNTRACK_MAX
    );
    assert!(c.metrics().unwrap().lines().any(|l| l == max), "{max}");
    let text = cli(&c, "stats", &[]);
    assert!(
        text.lines().any(
            |l| l.starts_with("default/hostnames:http") && l.contains(&format!("{VIP}:80/TCP"))
        ),
        "{text}"
    );

    // Filters: nothing on another address or port.
    assert!(conntrack(&c, &["--addr", "10.9.9.9"]).ends_with("0 entries\n"));
    assert!(conntrack(&c, &["--port", "81", "--proto", "tcp"]).ends_with("0 entries\n"));
    assert!(conntrack(&c, &["--port", "80", "--proto", "udp"]).ends_with("0 entries\n"));
    assert!(conntrack(&c, &["--addr", &backend.ip().to_string()]).ends_with("2 entries\n"));

    // Changes that cannot be programmed (the manifests went away) make
    // the agent unhealthy once they wait past the timeout; it recovers.
    let aside = c.workdir.join("aside.yaml");
    std::fs::rename(&path, &aside).unwrap();
    let started = std::time::Instant::now();
    while get_health(&c, "/healthz").0 == 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never went unhealthy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    assert_eq!(get_health(&c, "/livez").0, 503);
    std::fs::rename(&aside, &path).unwrap();
    let started = std::time::Instant::now();
    while get_health(&c, "/healthz").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never recovered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // With the agent stopped (the programs stay attached), the maps are
    // still read, and flushed.
    c.stop_agent(libc::SIGTERM);
    assert!(conntrack(&c, &[]).ends_with("2 entries\n"));
    // status: the agent is gone, the datapath is still there (where it
    // is attached, how full its maps are).
    let pin = c.pin_path();
    let status = c
        .node_cli(&["status", "--pin-path", pin.to_str().unwrap()])
        .unwrap();
    assert!(status.contains("agent: not reachable"), "{status}");
    assert!(
        status.contains("tc ingress on ifindex") && status.contains("(veth0)"),
        "{status}"
    );
    let ct = status
        .lines()
        .find(|l| l.trim_start().starts_with("flb_ct_v2"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(ct.contains(" 2 / "), "{ct}");
    let svc = status
        .lines()
        .find(|l| l.trim_start().starts_with("flb_svc_v1"))
        .unwrap_or_else(|| panic!("{status}"));
    // The master and a slot per pod.
    assert!(svc.contains(&format!(" {} / ", 1 + c.pods.len())), "{svc}");
    assert_eq!(
        conntrack(&c, &["--flush", "--addr", VIP]),
        "2 entries deleted\n"
    );
    assert!(conntrack(&c, &[]).ends_with("0 entries\n"));
}

/// `GET 127.0.0.1:10256<path>` in the node: (status code, JSON body).
fn get_health(c: &Cluster, path: &str) -> (u16, serde_json::Value) {
    let out = c
        .node
        .command("curl")
        .args(["-s", "-m", "2", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:10256{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

/// Both health paths answer 200 with kube-proxy's fields.
fn health(c: &Cluster) {
    for path in ["/healthz", "/livez"] {
        let (code, body) = get_health(c, path);
        assert_eq!(code, 200, "{path}: {body}");
        assert_eq!(body["nodeEligible"], true, "{path}: {body}");
        for field in ["lastUpdated", "currentTime"] {
            let t = body[field].as_str().unwrap_or_default();
            assert!(
                t.starts_with("20") && t.ends_with('Z'),
                "{path} {field}: {body}"
            );
        }
    }
}

/// `services` shows each backend's state: endpoints that serve while they
/// terminate are programmed when none is ready (connections drain) and
/// marked so; once a ready endpoint appears, only it is listed, ready.
#[test]
fn services_marks_terminating_backends() {
    let mut c = Cluster::new(common::bins(), 2).expect("cluster");
    // The manifest, with each pod's endpoint conditions.
    let (head, pods) = (
        manifest(&c)
            .split("endpoints:\n")
            .next()
            .unwrap()
            .to_string(),
        c.pods.iter().map(|p| p.ip).collect::<Vec<_>>(),
    );
    let slice = |conds: [&str; 2]| -> String {
        let eps: String = pods
            .iter()
            .zip(conds)
            .map(|(ip, cond)| format!("- addresses: [\"{ip}\"]\n  conditions: {cond}\n"))
            .collect();
        format!("{head}endpoints:\n{eps}")
    };
    let terminating = "{ready: false, serving: true, terminating: true}";
    let path = c.workdir.join("services.yaml");
    std::fs::write(&path, slice([terminating, terminating])).unwrap();
    c.start_agent(&path).expect("agent starts");
    let json = |c: &Cluster| -> serde_json::Value {
        serde_json::from_str(&cli(c, "services", &["-o", "json"])).unwrap()
    };
    let svc = json(&c);
    assert_eq!(
        svc[0]["states"],
        serde_json::json!(["terminating", "terminating"]),
        "{svc}"
    );
    let text = cli(&c, "services", &[]);
    let first = format!("{}:9376(terminating)", c.pods[0].ip);
    assert!(text.contains(&first), "{text}");
    // They still serve new connections (nothing else does).
    let addr: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let got = c
        .client()
        .ns
        .run(move || {
            ferrolb_tests::http::get_and_close(TcpStream::connect_timeout(
                &addr,
                Duration::from_secs(2),
            )?)
        })
        .unwrap()
        .expect("a terminating pod answers");
    assert!(c.pods.iter().any(|p| got.contains(&p.name)), "{got}");

    c.programmed(|| write_manifest(&path, &slice(["{ready: true}", terminating])));
    let svc = json(&c);
    assert_eq!(
        svc[0]["backends"],
        serde_json::json!([format!("{}:9376", c.pods[0].ip)]),
        "{svc}"
    );
    assert_eq!(svc[0]["states"], serde_json::json!(["ready"]), "{svc}");
    assert!(!cli(&c, "services", &[]).contains("terminating"));
}

/// Datapath events reach the agent's log at debug level (target
/// `ferrolb::datapath`): a connection refused for want of endpoints is
/// logged with its flow and the counter that counted it; at the default
/// level the programs emit nothing.
#[test]
fn datapath_events_reach_the_log_at_debug() {
    let mut c = Cluster::new(common::bins(), 1).expect("cluster");
    // hostnames without endpoints: refused (a TCP RST) at the node.
    let path = c.workdir.join("services.yaml");
    let manifest = manifest(&c);
    std::fs::write(&path, manifest.split("---").next().unwrap()).unwrap();
    let refused = |c: &Cluster| {
        let addr: SocketAddr = format!("{VIP}:80").parse().unwrap();
        let (err, local) = c
            .client()
            .ns
            .run(move || {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                s.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())?;
                let local = s.local_addr()?.as_socket().unwrap();
                Ok::<_, std::io::Error>((
                    s.connect_timeout(&addr.into(), Duration::from_secs(2)),
                    local,
                ))
            })
            .unwrap()
            .unwrap();
        let err = err.expect_err("no endpoints: refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        local
    };
    c.start_agent(&path).expect("agent starts");
    refused(&c);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !c.agent_log_text().contains("ferrolb::datapath"),
        "{}",
        c.agent_log_text()
    );
    c.stop_agent(libc::SIGTERM);

    c.agent_prefix = ["env", "RUST_LOG=info,ferrolb::datapath=debug"]
        .map(String::from)
        .to_vec();
    c.start_agent(&path)
        .expect("agent starts with datapath events");
    let local = refused(&c);
    let want = format!("{}:{} -> {VIP}:80", c.client().ip, local.port());
    ferrolb_tests::cluster::wait_until(Duration::from_secs(5), || {
        c.agent_log_text().lines().any(|l| l.contains(&want))
    })
    .unwrap_or_else(|_| panic!("no event for {want}:\n{}", c.agent_log_text()));
    let log = c.agent_log_text();
    let line = log.lines().find(|l| l.contains(&want)).unwrap();
    assert!(line.contains("DEBUG ferrolb::datapath"), "{line}");
    assert!(
        line.contains("reject_no_backend") && line.contains("proto=6"),
        "{line}"
    );
}

/// `--log-format json`: every log line is a JSON object (level, target,
/// message and fields), for log collectors.
#[test]
fn logs_are_json_lines_on_request() {
    let mut c = Cluster::new(common::bins(), 1).expect("cluster");
    c.agent_args = ["--log-format", "json"].map(String::from).to_vec();
    let path = c.workdir.join("services.yaml");
    std::fs::write(&path, manifest(&c)).unwrap();
    c.start_agent(&path).expect("agent starts");
    let log = c.agent_log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["target"].is_string())
    );
    let ready = lines
        .iter()
        .find(|l| l["fields"]["message"] == "agent ready")
        .unwrap_or_else(|| panic!("no ready line:\n{log}"));
    assert_eq!(ready["level"], "INFO");
    assert!(ready["fields"]["interfaces"].is_string(), "{ready}");
}

/// A pinned map's entries as bpftool prints them from its BTF: each
/// entry's `formatted` key and value, by field name.
fn bpftool_dump(c: &Cluster, map: &str) -> Vec<serde_json::Value> {
    let pin = c.pin_path().join(map);
    let out = sh(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin))
    .unwrap_or_else(|e| panic!("bpftool map dump pinned {}: {e}", pin.display()));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    entries
        .into_iter()
        .map(|e| {
            e.get("formatted")
                .cloned()
                .unwrap_or_else(|| panic!("{map}: no field names (no BTF?): {e}"))
        })
        .collect()
}
