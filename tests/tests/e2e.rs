//! End to end: the real agent in a simulated node namespace, real pod
//! servers, real TCP/UDP clients in a client pod and on the node itself.
mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use ferrolb_tests::cluster::{Cluster, InCgroup, wait_until, write_manifest};
use ferrolb_tests::firewall;
use ferrolb_tests::http::{self, Conn};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const TIMEOUT: Duration = Duration::from_secs(2);

fn service(name: &str, vip: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {name}\n  clusterIP: {vip}\n  ports:\n{ports}\n"
    )
}

fn slice(name: &str, service: &str, ports: &str, ips: &[Ipv4Addr]) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n{ports}\nendpoints:\n"
    );
    for ip in ips {
        s.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n"
        ));
    }
    s
}

/// The seeds' `hostnames` Service and its slice, for the given pod IPs.
fn hostnames(ips: &[Ipv4Addr]) -> String {
    format!(
        "{}---\n{}",
        service(
            "hostnames",
            "10.0.1.175",
            "  - name: default\n    protocol: TCP\n    port: 80\n    targetPort: 9376"
        ),
        slice(
            "hostnames-abcde",
            "hostnames",
            "- name: default\n  port: 9376\n  protocol: TCP",
            ips
        )
    )
}

struct Setup {
    cluster: Cluster,
    manifest: PathBuf,
    fw_before: String,
}

fn setup(backends: usize, manifest: impl FnOnce(&Cluster) -> String) -> Setup {
    let fw_before = firewall::snapshot(None).expect("firewall snapshot");
    let mut cluster = Cluster::new(common::bins(), backends).expect("cluster");
    let dir = cluster.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("services.yaml");
    write_manifest(&path, &manifest(&cluster));
    cluster.start_agent(&dir).expect("agent starts");
    Setup {
        cluster,
        manifest: path,
        fw_before,
    }
}

impl Setup {
    fn pod_ips(&self) -> Vec<Ipv4Addr> {
        self.cluster.pods.iter().map(|p| p.ip).collect()
    }

    /// Nothing the run did created a firewall rule, here or in the node.
    fn assert_no_firewall_rules(&self) {
        assert_eq!(
            firewall::snapshot(None).unwrap(),
            self.fw_before,
            "root namespace rules changed"
        );
        let node = firewall::snapshot(Some(&self.cluster.node.name)).unwrap();
        assert!(
            !node
                .lines()
                .any(|l| l.starts_with('-') || l.contains("chain")),
            "rules in the node namespace:\n{node}"
        );
    }
}

/// One HTTP GET on a new connection from the client pod.
fn get_from_client(c: &Cluster, addr: SocketAddr) -> std::io::Result<String> {
    c.client()
        .ns
        .run(move || -> std::io::Result<String> {
            let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            http::get_and_close(s)
        })
        .unwrap()
}

fn spread(c: &Cluster, n: usize) -> BTreeMap<String, usize> {
    let mut hits = BTreeMap::new();
    for _ in 0..n {
        let name =
            get_from_client(c, SocketAddr::from((VIP, 80))).expect("request through the VIP");
        *hits.entry(name).or_insert(0) += 1;
    }
    hits
}

#[test]
fn hostnames_from_a_pod_spreads_evenly() {
    let s = setup(3, |c| {
        hostnames(&c.pods.iter().map(|p| p.ip).collect::<Vec<_>>())
    });
    let hits = spread(&s.cluster, 600);
    assert_eq!(hits.len(), 3, "all three backends answer: {hits:?}");
    for (name, n) in &hits {
        assert!(
            s.cluster.pods.iter().any(|p| &p.name == name),
            "unexpected answer {name:?}"
        );
        // 1/3 of 600 is 200, give or take 11.5 (one standard deviation):
        // within 50 (4.3 of them) fails a fair choice about once in
        // 10,000 runs and a backend favoured by a quarter every time.
        assert!((150..=250).contains(n), "{name} got {n} of 600: {hits:?}");
    }
    let table = s.cluster.cli("services").unwrap();
    assert!(table.contains("default/hostnames:default"), "{table}");
    assert!(table.contains("10.0.1.175:80/TCP"), "{table}");
    s.assert_no_firewall_rules();
}

#[test]
fn hostnames_from_the_node() {
    let s = setup(3, |c| {
        hostnames(&c.pods.iter().map(|p| p.ip).collect::<Vec<_>>())
    });
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let out = s
            .cluster
            .node_command("curl")
            .args(["-sS", "-m", "2", "http://10.0.1.175:80/"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl from the node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        *seen
            .entry(String::from_utf8_lossy(&out.stdout).trim().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        3,
        "node traffic reaches every backend: {seen:?}"
    );
    // UDP from the node: an unconnected socket, replies shown from the VIP.
    let out = s
        .cluster
        .node_command("sh")
        .args([
            "-c",
            "echo hi | timeout 3 ncat -u -w1 10.0.1.175 80 || true",
        ])
        .output()
        .unwrap();
    // Port 80 is TCP-only in this Service: UDP to it is not translated.
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    s.assert_no_firewall_rules();
}

/// What the socket hooks show a node process: translated once, at the
/// socket, yet every address it reads back is the VIP it asked for (a TCP
/// peer, a connected UDP peer, the source of replies to an unconnected UDP
/// socket), and an unconnected UDP socket keeps the backend it was given.
#[test]
fn node_sockets_see_the_vip_they_asked_for() {
    let s = setup(3, |c| {
        hostnames_tcp_udp(&c.pods.iter().map(|p| p.ip).collect::<Vec<_>>())
    });
    let c = &s.cluster;
    let names: Vec<String> = c.pods.iter().map(|p| p.name.clone()).collect();
    let in_cgroup = InCgroup::enter(&c.cgroup).unwrap();
    let got = c
        .node
        .run(|| -> std::io::Result<_> {
            let mut buf = [0u8; 128];
            let tcp = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), TIMEOUT)?;
            let tcp_peer = tcp.peer_addr()?;
            tcp.set_read_timeout(Some(TIMEOUT))?;
            let tcp_name = http::get_and_close(tcp)?;
            let connected = UdpSocket::bind(("0.0.0.0", 0))?;
            connected.set_read_timeout(Some(TIMEOUT))?;
            connected.connect((VIP, 53))?;
            let udp_peer = connected.peer_addr()?;
            connected.send(b"who")?;
            let n = connected.recv(&mut buf)?;
            let udp_name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
            let unconnected = UdpSocket::bind(("0.0.0.0", 0))?;
            unconnected.set_read_timeout(Some(TIMEOUT))?;
            let (mut answers, mut sources) = (BTreeMap::new(), BTreeMap::new());
            for _ in 0..10 {
                unconnected.send_to(b"who", (VIP, 53))?;
                let (n, from) = unconnected.recv_from(&mut buf)?;
                let name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                *answers.entry(name).or_insert(0) += 1;
                *sources.entry(from).or_insert(0) += 1;
            }
            Ok((tcp_peer, tcp_name, udp_peer, udp_name, answers, sources))
        })
        .unwrap();
    drop(in_cgroup);
    let (tcp_peer, tcp_name, udp_peer, udp_name, answers, sources) = got.unwrap();
    assert_eq!(tcp_peer, SocketAddr::from((VIP, 80)), "TCP peer");
    assert!(names.contains(&tcp_name.trim().to_string()), "{tcp_name:?}");
    assert_eq!(udp_peer, SocketAddr::from((VIP, 53)), "connected UDP peer");
    assert!(names.contains(&udp_name), "{udp_name:?}");
    assert_eq!(
        sources.keys().collect::<Vec<_>>(),
        [&SocketAddr::from((VIP, 53))],
        "replies to an unconnected socket come from the VIP"
    );
    assert_eq!(answers.len(), 1, "one backend for one socket: {answers:?}");
    s.assert_no_firewall_rules();
}

#[test]
fn long_lived_connection_stays_on_one_backend() {
    let s = setup(3, |c| {
        hostnames(&c.pods.iter().map(|p| p.ip).collect::<Vec<_>>())
    });
    let names = s
        .cluster
        .client()
        .ns
        .run(|| -> std::io::Result<Vec<String>> {
            let conn = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), TIMEOUT)?;
            conn.set_read_timeout(Some(TIMEOUT))?;
            let mut conn = Conn::new(conn)?;
            let mut names = Vec::new();
            for _ in 0..100 {
                let body = conn.get()?;
                names.push(String::from_utf8_lossy(&body).trim().to_string());
            }
            Ok(names)
        })
        .unwrap()
        .expect("100 exchanges on one connection");
    assert_eq!(names.len(), 100);
    assert!(
        names.iter().all(|n| n == &names[0]),
        "backend changed mid-connection: {names:?}"
    );
}

#[test]
fn udp_service_and_rejects_without_endpoints() {
    let s = setup(2, |c| {
        let ips: Vec<Ipv4Addr> = c.pods.iter().map(|p| p.ip).collect();
        format!(
            "{}---\n{}---\n{}",
            service(
                "dns",
                "10.0.1.53",
                "  - name: dns\n    protocol: UDP\n    port: 53\n    targetPort: 9376"
            ),
            slice(
                "dns-1",
                "dns",
                "- name: dns\n  port: 9376\n  protocol: UDP",
                &ips
            ),
            service(
                "nothing",
                "10.0.1.99",
                "  - name: web\n    port: 80\n  - name: dns\n    protocol: UDP\n    port: 53"
            ),
        )
    });
    let pods: Vec<String> = s.cluster.pods.iter().map(|p| p.name.clone()).collect();
    let answers = s
        .cluster
        .client()
        .ns
        .run(|| {
            let mut out = Vec::new();
            for _ in 0..40 {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.set_read_timeout(Some(TIMEOUT)).unwrap();
                sock.send_to(b"who", "10.0.1.53:53").unwrap();
                let mut buf = [0u8; 256];
                let (n, from) = sock
                    .recv_from(&mut buf)
                    .expect("UDP answer through the VIP");
                out.push((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from));
            }
            out
        })
        .unwrap();
    let expected_from: SocketAddr = "10.0.1.53:53".parse().unwrap();
    for (name, from) in &answers {
        assert!(pods.contains(name), "{name}");
        assert_eq!(*from, expected_from, "the client only ever sees the VIP");
    }
    let distinct: std::collections::BTreeSet<_> = answers.iter().map(|a| &a.0).collect();
    assert_eq!(distinct.len(), 2, "both UDP backends used");

    // No endpoints: TCP is refused (RST), UDP gets port unreachable.
    let tcp = get_from_client(&s.cluster, "10.0.1.99:80".parse().unwrap());
    assert_eq!(
        tcp.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let udp_err = s
        .cluster
        .client()
        .ns
        .run(|| {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.connect("10.0.1.99:53").unwrap();
            sock.set_read_timeout(Some(TIMEOUT)).unwrap();
            sock.send(b"x").unwrap();
            sock.recv(&mut [0u8; 16]).unwrap_err().kind()
        })
        .unwrap();
    assert_eq!(
        udp_err,
        std::io::ErrorKind::ConnectionRefused,
        "ICMP port unreachable"
    );
    // From the node, too: refused at connect() by the socket hook.
    let out = s
        .cluster
        .node_command("curl")
        .args(["-sS", "-m", "2", "http://10.0.1.99:80/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Couldn't connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.assert_no_firewall_rules();
}

#[test]
fn scaling_endpoints_is_reflected_once_programmed() {
    let s = setup(3, |c| {
        hostnames(&c.pods.iter().map(|p| p.ip).collect::<Vec<_>>())
    });
    let ips = s.pod_ips();
    assert_eq!(spread(&s.cluster, 60).len(), 3);

    // How soon a change is programmed is the benchmarks' business (the
    // control plane section); here, that once it is, traffic follows.
    s.cluster
        .programmed(|| write_manifest(&s.manifest, &hostnames(&ips[..1])));
    let hits = spread(&s.cluster, 40);
    assert_eq!(hits.len(), 1, "1 endpoint after the change: {hits:?}");
    assert!(hits.contains_key(&s.cluster.pods[0].name));

    s.cluster
        .programmed(|| write_manifest(&s.manifest, &hostnames(&ips)));
    let hits = spread(&s.cluster, 90);
    assert_eq!(hits.len(), 3, "3 endpoints after the change: {hits:?}");
}

#[test]
fn selectorless_service_with_manual_endpoints_and_named_ports() {
    // The seeds' `mydb`: no selector, a hand-written Endpoints object. Plus
    // a multi-port Service whose named targetPort resolves via the slice.
    let s = setup(2, |c| {
        let a = c.pods[0].ip;
        let b = c.pods[1].ip;
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: mydb}}\nspec:\n  clusterIP: 10.0.2.29\n  ports: [{{port: 3306, targetPort: 9376}}]\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: mydb}}\nsubsets:\n- addresses: [{{ip: \"{a}\"}}]\n  ports: [{{port: 9376}}]\n---\n\
             {}---\n{}",
            service(
                "multi",
                "10.0.2.30",
                "  - name: http\n    port: 80\n    targetPort: web\n  - name: alt\n    port: 8080\n    targetPort: web"
            ),
            slice(
                "multi-1",
                "multi",
                "- name: http\n  port: 9376\n  protocol: TCP\n- name: alt\n  port: 9376\n  protocol: TCP",
                &[b]
            ),
        )
    });
    let db = get_from_client(&s.cluster, "10.0.2.29:3306".parse().unwrap()).unwrap();
    assert_eq!(db, s.cluster.pods[0].name);
    for port in [80, 8080] {
        let r = get_from_client(
            &s.cluster,
            SocketAddr::from((Ipv4Addr::new(10, 0, 2, 30), port)),
        )
        .unwrap();
        assert_eq!(r, s.cluster.pods[1].name, "port {port}");
    }
}

#[test]
fn bad_manifests_are_reported_and_the_rest_keeps_working() {
    let mut s = setup(3, |c| {
        hostnames(&c.pods.iter().map(|p| p.ip).collect::<Vec<_>>())
    });
    let dir = s.manifest.parent().unwrap().to_path_buf();
    write_manifest(
        &dir.join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: badport}\nspec:\n  clusterIP: 10.0.3.1\n  ports: [{port: 70000}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: badip}\nspec:\n  clusterIP: 10.0.3.300\n  ports: [{port: 80}]\n---\n\
         apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec:\n  clusterIP: 10.0.3.2\n  ports: [{port: 80, targetPort: 9376}]\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata: {name: good}\nsubsets: [{addresses: [{ip: \"10.244.0.5\"}], ports: [{port: 9376}]}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: ghost-1, labels: {kubernetes.io/service-name: ghost}}\naddressType: IPv4\nendpoints: []\n",
    );
    write_manifest(
        &dir.join("broken.yaml"),
        "kind: Service\n  metadata: [unclosed\n",
    );
    let log = s.cluster.agent_log();
    wait_until(Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("broken.yaml") && t.contains("badip") && t.contains("ghost-1")
    })
    .unwrap_or_else(|_| panic!("errors not reported:\n{}", s.cluster.agent_log_text()));
    let text = s.cluster.agent_log_text();
    for needle in [
        "bad.yaml: document 1: Service default/badport: field spec.ports[0].port: port 70000 is out of range",
        "bad.yaml: document 2: Service default/badip: field spec.clusterIP",
        "bad.yaml: document 3: Widget default/w: field kind: unknown kind",
        "broken.yaml: document 1: document: not valid YAML",
        "EndpointSlice default/ghost-1: its Service default/ghost does not exist",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(s.cluster.agent_running(), "agent keeps running");
    // The good objects, in the same file as the bad ones, are programmed.
    wait_until(Duration::from_secs(3), || {
        get_from_client(&s.cluster, "10.0.3.2:80".parse().unwrap()).is_ok()
    })
    .expect("good Service in the bad file serves");
    assert_eq!(spread(&s.cluster, 30).len(), 3, "hostnames unaffected");

    // Breaking a valid object keeps its last good version programmed.
    let ips = s.pod_ips();
    write_manifest(
        &s.manifest,
        &hostnames(&ips).replace("port: 80\n", "port: 0\n"),
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(spread(&s.cluster, 30).len(), 3, "last good hostnames kept");
    assert!(s.cluster.agent_running());
}

#[test]
fn full_maps_name_what_is_left_out_and_recover() {
    let two = |with_b: bool, c: &Cluster| {
        let mut s = hostnames(&c.pods.iter().map(|p| p.ip).collect::<Vec<_>>());
        let mut add = |name: &str, vip: &str, ip: Ipv4Addr| {
            s.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {vip}, ports: [{{port: 80, targetPort: 9376}}]}}\n\
                 ---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}}}\nsubsets: [{{addresses: [{{ip: \"{ip}\"}}], ports: [{{port: 9376}}]}}]\n"
            ));
        };
        if with_b {
            add("svc-b", "10.0.3.2", c.pods[0].ip);
        }
        add("svc-c", "10.0.3.3", c.pods[1].ip);
        s
    };
    // Room for 6 service slots: hostnames takes 4 (master + 3), svc-b 2.
    let fw_before = firewall::snapshot(None).unwrap();
    let mut c = Cluster::new(common::bins(), 3).unwrap();
    c.agent_args = vec!["--services-max".into(), "6".into()];
    let dir = c.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("services.yaml");
    write_manifest(&path, &two(true, &c));
    c.start_agent(&dir).unwrap();
    let log = c.agent_log_text();
    assert!(
        log.contains("not programmed") && log.contains("default/svc-c:80"),
        "the left-out Service is named:\n{log}"
    );
    // ...and so is it in the CLI and the metrics.
    let status = c.node_cli(&["status"]).unwrap();
    assert!(
        status.contains("frontends not programmed: 1")
            && status.contains("NOT PROGRAMMED default/svc-c:80 10.0.3.3:80/TCP"),
        "{status}"
    );
    let metrics = c.metrics().unwrap();
    assert!(
        metrics.contains(
            "ferrolb_frontend_not_programmed{service=\"default/svc-c:80\",frontend=\"10.0.3.3:80/TCP\"} 1"
        ) && metrics.contains("ferrolb_frontends_not_programmed 1\n"),
        "{metrics}"
    );
    assert_eq!(spread(&c, 30).len(), 3, "hostnames still served");
    assert_eq!(
        get_from_client(&c, "10.0.3.2:80".parse().unwrap()).unwrap(),
        c.pods[0].name
    );
    assert!(get_from_client(&c, "10.0.3.3:80".parse().unwrap()).is_err());
    // Room returns: svc-c is programmed without any change to it.
    write_manifest(&path, &two(false, &c));
    wait_until(Duration::from_secs(5), || {
        get_from_client(&c, "10.0.3.3:80".parse().unwrap()).is_ok_and(|n| n == c.pods[1].name)
    })
    .unwrap_or_else(|_| {
        panic!(
            "svc-c not programmed after room returned:\n{}",
            c.agent_log_text()
        )
    });
    assert!(
        get_from_client(&c, "10.0.3.2:80".parse().unwrap()).is_err(),
        "svc-b removed"
    );
    assert_eq!(spread(&c, 30).len(), 3);
    let status = c.node_cli(&["status"]).unwrap();
    assert!(status.contains("frontends not programmed: 0"), "{status}");
    // kube-proxy's sync metrics: passes timed, the change programmed and
    // timed, the Services it changed counted (svc-b went).
    let metrics = c.metrics().unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(value("kubeproxy_sync_proxy_rules_duration_seconds_count") >= 2.0);
    assert!(value("kubeproxy_network_programming_duration_seconds_count") >= 1.0);
    assert!(value("kubeproxy_sync_proxy_rules_service_changes_total") >= 1.0);
    assert!(value("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 1.7e9);
    // The services map's fill level: hostnames' master and 3 slots,
    // svc-c's master and slot, of the 6 --services-max allows.
    assert_eq!(value("ferrolb_map_entries{map=\"flb_svc_v1\"}"), 6.0);
    assert_eq!(value("ferrolb_map_max_entries{map=\"flb_svc_v1\"}"), 6.0);
    assert_eq!(firewall::snapshot(None).unwrap(), fw_before);
}

/// The seeds' hostnames Service on TCP 80 and UDP 53, for `ips`.
fn hostnames_tcp_udp(ips: &[Ipv4Addr]) -> String {
    format!(
        "{}---\n{}",
        service(
            "hostnames",
            "10.0.1.175",
            "  - {name: http, protocol: TCP, port: 80, targetPort: 9376}\n  - {name: dns, protocol: UDP, port: 53, targetPort: 9376}"
        ),
        slice(
            "hostnames-abcde",
            "hostnames",
            "- {name: http, port: 9376, protocol: TCP}\n- {name: dns, port: 9376, protocol: UDP}",
            ips
        )
    )
}

/// One UDP query to the VIP from a fixed client port: one tracked flow.
fn udp_from(c: &Cluster, port: u16) -> Option<String> {
    c.client()
        .ns
        .run(move || -> std::io::Result<String> {
            let s = UdpSocket::bind(("0.0.0.0", port))?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.send_to(b"who", (VIP, 53))?;
            let mut buf = [0u8; 128];
            let n = s.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        })
        .unwrap()
        .ok()
}

/// [`tcp_from`]'s connect timeout, longer than TIMEOUT: a second
/// connection on the tuple may meet the pod's TIME_WAIT, answered by an
/// ACK the client resets, and retransmit its SYN a second later.
const REUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP GET to the VIP from a fixed client port (the server closes
/// first, so the port is free again at once).
fn tcp_from(c: &Cluster, port: u16) -> std::io::Result<String> {
    c.client()
        .ns
        .run(move || -> std::io::Result<String> {
            use socket2::{Domain, Socket, Type};
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
            sock.connect_timeout(&SocketAddr::from((VIP, 80)).into(), REUSE_TIMEOUT)?;
            let s: TcpStream = sock.into();
            s.set_read_timeout(Some(TIMEOUT))?;
            http::get_and_close(s)
        })
        .unwrap()
}

/// A connection through the socket hooks that reuses the tuple of an
/// earlier connection translated at tc (the same client port, and with one
/// backend the same pod): the old flow's reverse entry must not rewrite
/// the new connection's replies to the VIP, which the client would reset
/// (the socket hooks connect it to the pod itself). Clients on other
/// nodes, or outside the hooked cgroup, mix the two paths this way.
#[test]
fn a_socket_connection_reusing_a_tc_flows_tuple_gets_its_replies() {
    let s = setup(1, |c| hostnames(&[c.pods[0].ip]));
    let c = &s.cluster;
    let pod = c.pods[0].name.clone();
    let port = 45_123;
    assert_eq!(tcp_from(c, port).expect("through tc"), pod);
    let translated = c.cli("stats").unwrap();
    assert!(
        translated.lines().any(|l| l.starts_with("dnat_new ")),
        "tc translated the first connection:\n{translated}"
    );
    let in_cgroup = InCgroup::enter(&c.cgroup).unwrap();
    let again = tcp_from(c, port);
    drop(in_cgroup);
    assert_eq!(
        again.expect("through the socket hooks, same client port"),
        pod
    );
    s.assert_no_firewall_rules();
}

#[test]
fn flows_to_a_pod_removed_from_the_slice_are_purged() {
    let s = setup(3, |c| {
        hostnames_tcp_udp(&c.pods.iter().map(|p| p.ip).collect::<Vec<_>>())
    });
    let c = &s.cluster;
    // A UDP flow is pinned to one pod: the victim.
    const UDP_PORT: u16 = 34000;
    let victim = udp_from(c, UDP_PORT).expect("UDP answer");
    for _ in 0..3 {
        assert_eq!(
            udp_from(c, UDP_PORT).as_deref(),
            Some(victim.as_str()),
            "flow pinned"
        );
    }
    // A TCP tuple whose connection went to the victim.
    let tcp_port = (35000..35200)
        .find(|p| tcp_from(c, *p).is_ok_and(|n| n == victim))
        .expect("some client port lands on the victim");

    // The victim leaves the slice (its pod keeps running and answering).
    let rest: Vec<Ipv4Addr> = c
        .pods
        .iter()
        .filter(|p| p.name != victim)
        .map(|p| p.ip)
        .collect();
    write_manifest(&s.manifest, &hostnames_tcp_udp(&rest));
    wait_until(Duration::from_secs(3), || {
        udp_from(c, UDP_PORT).is_some_and(|n| n != victim)
    })
    .unwrap_or_else(|_| {
        panic!(
            "the UDP flow still goes to {victim}:\n{}",
            c.agent_log_text()
        )
    });
    for i in 0..10 {
        let n = udp_from(c, UDP_PORT).expect("answered");
        assert_ne!(n, victim, "query {i} reached the removed pod");
    }
    // A new connection on the old tuple goes to a serving pod.
    let n = tcp_from(c, tcp_port).expect("answered");
    assert_ne!(n, victim, "reused tuple followed the purged flow");
    // The purge's log line follows its deletions.
    wait_until(Duration::from_secs(3), || {
        c.agent_log_text()
            .contains("flows to removed backends purged")
    })
    .unwrap_or_else(|_| panic!("{}", c.agent_log_text()));
    s.assert_no_firewall_rules();
}
