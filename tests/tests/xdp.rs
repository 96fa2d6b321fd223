//! XDP on a wire-facing interface, end to end: the node namespace has an
//! "uplink" veth to a second namespace standing for the rest of the
//! network (another node, or a client outside the cluster). That side
//! sends frames with complete checksums, as a NIC delivers them, and the
//! pods' kernels verify every checksum: a wrong one shows in their
//! InCsumErrors counters and as failed requests.
//!
//! - A client outside the node reaches `hostnames` (10.0.1.175:80) whose
//!   backend is a local pod: XDP DNATs on the uplink, tc reverse-NATs the
//!   pod's replies.
//! - A local pod reaches `remote` (10.0.1.176:80) whose backend runs on
//!   the other side: tc DNATs on the pod's interface, XDP reverse-NATs the
//!   replies arriving on the uplink. Without XDP they would reach the pod
//!   from the backend's address and be refused.
//!
//! The uplink is excluded from tc, so only XDP can translate there.
mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::time::Duration;

use ferrolb_tests::cluster::{Cluster, POD_PORT, wait_until};
use ferrolb_tests::http::get_and_close;
use ferrolb_tests::netns::{NetNs, sh};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const REMOTE_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 176);
const NODE_UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// A pod on the other side, reached through the uplink.
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 245, 0, 10);
const UPLINK: &str = "uplink0";

fn manifests(local: Ipv4Addr) -> String {
    let svc = |name: &str, vip: Ipv4Addr, backend: Ipv4Addr| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  clusterIP: {vip}
  ports:
  - {{name: http, protocol: TCP, port: 80, targetPort: 9376}}
  - {{name: udp, protocol: UDP, port: 80, targetPort: 9376}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abcde
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
- {{name: http, protocol: TCP, port: 9376}}
- {{name: udp, protocol: UDP, port: 9376}}
endpoints: [{{addresses: [\"{backend}\"], conditions: {{ready: true}}}}]
"
        )
    };
    format!(
        "{}---\n{}",
        svc("hostnames", VIP, local),
        svc("remote", REMOTE_VIP, REMOTE_POD)
    )
}

/// The other side of the uplink, with a pod server of its own.
struct Outside {
    server: Child,
    ns: NetNs,
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn outside(c: &Cluster) -> Outside {
    let ns = NetNs::new(&format!("{}-out", c.id)).expect("namespace");
    c.node.veth_to(UPLINK, &ns, "eth0").expect("uplink veth");
    c.node
        .ip(&["addr", "add", &format!("{NODE_UPLINK}/24"), "dev", UPLINK])
        .unwrap();
    c.node.ip(&["link", "set", UPLINK, "up"]).unwrap();
    c.node
        .ip(&["route", "add", "10.245.0.0/24", "via", &OUTSIDE.to_string()])
        .unwrap();
    ns.ip(&["addr", "add", &format!("{OUTSIDE}/24"), "dev", "eth0"])
        .unwrap();
    ns.ip(&["addr", "add", &format!("{REMOTE_POD}/32"), "dev", "lo"])
        .unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    let gw = NODE_UPLINK.to_string();
    ns.ip(&["route", "add", "10.0.1.0/24", "via", &gw]).unwrap();
    // The remote pod's answers (UDP from a wildcard socket too) come
    // from its own address, as from a pod on another node.
    ns.ip(&[
        "route",
        "add",
        "10.244.0.0/24",
        "via",
        &gw,
        "src",
        &REMOTE_POD.to_string(),
    ])
    .unwrap();
    // Complete checksums in every frame, as from a NIC, so that XDP's own
    // checksum updates are what the pods verify.
    sh(ns.command("ethtool").args(["-K", "eth0", "tx", "off"])).expect("ethtool -K eth0 tx off");
    let server = ns
        .command(common::bins().podserver.to_str().unwrap())
        .args(["--name", "remote-pod", "--port", &POD_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("remote pod server");
    let addr = SocketAddr::from((REMOTE_POD, POD_PORT));
    wait_until(Duration::from_secs(5), || {
        ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
            .unwrap_or(false)
    })
    .expect("remote pod serves");
    Outside { server, ns }
}

fn http(ns: &NetNs, to: Ipv4Addr) -> std::io::Result<String> {
    ns.run(move || {
        let s = TcpStream::connect_timeout(&SocketAddr::from((to, 80)), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        get_and_close(s)
    })
    .expect("namespace thread")
}

fn udp(ns: &NetNs, to: Ipv4Addr) -> std::io::Result<(String, SocketAddr)> {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(b"q", (to, 80))?;
        let mut buf = [0u8; 256];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from))
    })
    .expect("namespace thread")
}

#[test]
fn xdp_translates_traffic_on_the_uplink() {
    let mut c = Cluster::new(common::bins(), 1).expect("cluster");
    let out = outside(&c);
    let dir = c.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("services.yaml"), manifests(c.pods[0].ip)).unwrap();
    c.agent_args = [
        "--xdp-interfaces",
        UPLINK,
        "--exclude-interfaces",
        &format!("lo,{UPLINK}"),
    ]
    .map(String::from)
    .to_vec();
    c.start_agent(&dir).expect("agent starts");
    let log = c.agent_log_text();
    assert!(
        log.contains("xdp attached") && log.contains(UPLINK),
        "XDP on the uplink:\n{log}"
    );
    // `ip -o link` lines start with "<ifindex>: <name>...".
    let line = c.node.ip(&["-o", "link", "show", UPLINK]).unwrap();
    let ifindex = line.split(':').next().unwrap().trim().to_string();
    assert!(
        c.pin_path()
            .join("links")
            .join(format!("xdp-{ifindex}"))
            .exists(),
        "the XDP link is pinned"
    );

    let local = c.pods[0].name.clone();
    let client = &c.client().ns;
    for i in 0..20 {
        // From outside the node to a local backend.
        let body = http(&out.ns, VIP).unwrap_or_else(|e| panic!("outside -> {VIP}:80 #{i}: {e}"));
        assert_eq!(body, local);
        let (name, from) =
            udp(&out.ns, VIP).unwrap_or_else(|e| panic!("outside -> {VIP}:80/udp #{i}: {e}"));
        assert_eq!(name, local);
        assert_eq!(
            from,
            SocketAddr::from((VIP, 80)),
            "the answer names the VIP"
        );
        // From a local pod to a backend on the other side.
        let body =
            http(client, REMOTE_VIP).unwrap_or_else(|e| panic!("pod -> {REMOTE_VIP}:80 #{i}: {e}"));
        assert_eq!(body, "remote-pod");
        let (name, from) = udp(client, REMOTE_VIP)
            .unwrap_or_else(|e| panic!("pod -> {REMOTE_VIP}:80/udp #{i}: {e}"));
        assert_eq!(name, "remote-pod");
        assert_eq!(from, SocketAddr::from((REMOTE_VIP, 80)));
    }
    for (what, ns) in [
        ("backend pod", &c.pods[0].ns),
        ("client pod", client),
        ("outside", &out.ns),
    ] {
        assert_eq!(ns.csum_errors(), 0, "{what}: checksum errors");
    }
    c.stop_agent(libc::SIGTERM);
}
