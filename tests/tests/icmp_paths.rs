//! ICMP errors end to end: path MTU discovery through a VIP works, and a
//! backend's port unreachable reaches the client's socket, both because
//! the errors are translated back on their way (real kernel, real TCP/UDP
//! stacks in pod namespaces).
mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use ferrolb_tests::cluster::Cluster;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);
const UDP_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 180);
/// MTU of the path between the node and the backend.
const SMALL_MTU: &str = "1000";
const UPLOAD: usize = 400_000;

fn manifests(backend: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: hostnames}}
spec:
  clusterIP: 10.0.1.175
  ports: [{{name: default, protocol: TCP, port: 80, targetPort: 9376}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hostnames-abcde
  labels: {{kubernetes.io/service-name: hostnames}}
addressType: IPv4
ports: [{{name: default, protocol: TCP, port: 9376}}]
endpoints: [{{addresses: [\"{backend}\"], conditions: {{ready: true}}}}]
---
# Its backend listens on no UDP port 9999: the backend's kernel answers
# with ICMP port unreachable.
apiVersion: v1
kind: Service
metadata: {{name: closed-udp}}
spec:
  clusterIP: 10.0.1.180
  ports: [{{name: dns, protocol: UDP, port: 53, targetPort: 9999}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: closed-udp-abcde
  labels: {{kubernetes.io/service-name: closed-udp}}
addressType: IPv4
ports: [{{name: dns, protocol: UDP, port: 9999}}]
endpoints: [{{addresses: [\"{backend}\"], conditions: {{ready: true}}}}]
"
    )
}

fn cluster() -> Cluster {
    let mut c = Cluster::new(common::bins(), 1).expect("cluster");
    let dir = c.workdir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("services.yaml"), manifests(c.pods[0].ip)).unwrap();
    c.start_agent(&dir).expect("agent starts");
    c
}

fn stat(c: &Cluster, name: &str) -> u64 {
    let out = c.cli("stats").expect("lb-agent stats");
    out.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in stats:\n{out}"))
}

#[test]
fn path_mtu_discovery_through_a_vip() {
    let c = cluster();
    let backend = c.pods[0].ip;
    // The backend sits behind a smaller MTU than the client's link, as
    // over a tunnel: the node must send "fragmentation needed".
    c.node
        .ip(&[
            "route",
            "replace",
            &format!("{backend}/32"),
            "dev",
            &c.pods[0].host_if,
            "mtu",
            "lock",
            SMALL_MTU,
        ])
        .expect("small MTU route");
    let before = stat(&c, "icmp_translated");

    let answer = c
        .client()
        .ns
        .run(|| ferrolb_tests::http::upload(SocketAddr::from((VIP, 80)), UPLOAD))
        .unwrap()
        .expect("large upload through the VIP completes");
    assert!(
        answer.contains(&format!("received {UPLOAD}")),
        "backend got the whole upload: {answer}"
    );
    // The client learned the path MTU for the address it talks to.
    let route = c
        .client()
        .ns
        .ip(&["route", "get", &VIP.to_string()])
        .unwrap();
    assert!(
        route.contains(&format!("mtu {SMALL_MTU}")),
        "client's route cache to the VIP: {route}"
    );
    assert!(
        stat(&c, "icmp_translated") > before,
        "the datapath counted the translated error"
    );
}

#[test]
fn backend_port_unreachable_reaches_the_client_socket() {
    let c = cluster();
    let err = c
        .client()
        .ns
        .run(|| -> std::io::Result<usize> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect((UDP_VIP, 53))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = [0u8; 64];
            // The error lands on the socket connected to the VIP only if
            // it names the VIP; a retry covers ICMP rate limiting.
            let mut last = Ok(0);
            for _ in 0..3 {
                s.send(b"query")?;
                last = s.recv(&mut buf);
                if last.is_err() {
                    break;
                }
            }
            last
        })
        .unwrap();
    match err {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "expected ECONNREFUSED, got {e}"
        ),
        Ok(n) => panic!("a closed port answered {n} bytes"),
    }
    assert!(stat(&c, "icmp_translated") >= 1);
}
