//! Hairpin: a pod reaching its own Service and given itself. Through tc
//! (the pod outside the hooked cgroup) its flow is SNATed to the hairpin
//! address (169.254.7.1, fd00:7:7:7::1) and routed back to it, so the
//! replies return through the node and reach the client from the VIP;
//! through the socket hooks it connects to itself directly. Both
//! families, TCP and UDP; pods on routed veths, and a pod on a Linux
//! bridge (its veth a bridge port, the gateway on the bridge).
mod common;

use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use ferrolb_tests::cluster::{Cluster, InCgroup};
use ferrolb_tests::http::get_path_and_close;

const TIMEOUT: Duration = Duration::from_secs(2);
const VIP4: &str = "10.0.1.175";
const VIP6: &str = "fd00:10::175";

/// `hostnames` on both families whose only endpoint is pod `i`.
fn manifest(c: &Cluster, i: usize) -> String {
    let p = &c.pods[i];
    let slice = |family: &str, addr: String| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnames-{family}, labels: {{kubernetes.io/service-name: hostnames}}}}\naddressType: {family}\nports: [{{name: http, port: 9376, protocol: TCP}}, {{name: dns, port: 9376, protocol: UDP}}]\nendpoints: [{{addresses: [\"{addr}\"]}}]\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hostnames}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  clusterIPs: [{VIP4}, \"{VIP6}\"]\n  ports:\n  - {{name: http, protocol: TCP, port: 80, targetPort: 9376}}\n  - {{name: dns, protocol: UDP, port: 53, targetPort: 9376}}\n{}{}",
        slice("IPv4", p.ip.to_string()),
        slice("IPv6", p.ip6.to_string())
    )
}

/// From pod `i` to `vip`: (who answered, the address it saw) over TCP,
/// and (who answered, where the answer came from) over UDP.
fn both(
    c: &Cluster,
    i: usize,
    vip: &str,
) -> std::io::Result<((String, String), (String, SocketAddr))> {
    let vip: IpAddr = vip.parse().unwrap();
    c.pods[i]
        .ns
        .run(move || -> std::io::Result<_> {
            let s = TcpStream::connect_timeout(&SocketAddr::new(vip, 80), TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            let body = get_path_and_close(s, "/whoami")?;
            let (name, seen) = body.trim().split_once(' ').unwrap_or((&body, ""));
            let tcp = (name.to_string(), seen.to_string());
            let u = UdpSocket::bind(if vip.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
            u.set_read_timeout(Some(TIMEOUT))?;
            u.send_to(b"whoami", SocketAddr::new(vip, 53))?;
            let mut buf = [0u8; 256];
            let (n, from) = u.recv_from(&mut buf)?;
            let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
            let name = text.split(' ').next().unwrap_or("").to_string();
            Ok((tcp, (name, from)))
        })
        .unwrap()
}

/// Pod `i` reached itself through `vip` over TCP and UDP: TCP seen from
/// the `hairpin` address, the UDP reply from the VIP.
fn assert_hairpinned(c: &Cluster, i: usize, vip: &str, hairpin: &str, how: &str) {
    let me = c.pods[i].name.as_str();
    let ((tcp_name, seen), (udp_name, from)) =
        both(c, i, vip).unwrap_or_else(|e| panic!("{vip} {how}: {e}\n{}", c.cli("stats").unwrap()));
    assert_eq!(
        (tcp_name.as_str(), seen.as_str()),
        (me, hairpin),
        "{vip} TCP"
    );
    assert_eq!(udp_name, me, "{vip} UDP");
    assert_eq!(
        from,
        SocketAddr::new(vip.parse().unwrap(), 53),
        "{vip} UDP reply"
    );
}

#[test]
fn a_pod_reaching_its_own_service_gets_itself_through_tc_and_the_socket_hooks() {
    let mut c = Cluster::new(common::bins(), 2).expect("cluster");
    let path = c.workdir.join("services.yaml");
    std::fs::write(&path, manifest(&c, 0)).unwrap();
    c.start_agent(&path).expect("agent starts");
    let me = c.pods[0].name.clone();
    for (vip, hairpin) in [(VIP4, "169.254.7.1"), (VIP6, "fd00:7:7:7::1")] {
        // tc: SNATed to the hairpin address, replies from the VIP.
        assert_hairpinned(&c, 0, vip, hairpin, "through tc");
        // Socket hooks: straight to itself.
        let _cg = InCgroup::enter(&c.cgroup).unwrap();
        let ((tcp_name, _), (udp_name, from)) = both(&c, 0, vip).expect("through the socket hooks");
        assert_eq!(
            (tcp_name.as_str(), udp_name.as_str()),
            (me.as_str(), me.as_str())
        );
        assert_eq!(from, SocketAddr::new(vip.parse().unwrap(), 53));
    }
    let stats = c.cli("stats").unwrap();
    let hairpins: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("hairpin_new")?.trim().parse().ok())
        .unwrap_or(0);
    assert!(hairpins >= 4, "{stats}");
}

#[test]
fn a_pod_on_a_linux_bridge_reaching_its_own_service_gets_itself() {
    let mut c = Cluster::new(common::bins(), 1).expect("cluster");
    let i = c.add_bridged_pod("bridged-0", 5).expect("bridged pod");
    let path = c.workdir.join("services.yaml");
    std::fs::write(&path, manifest(&c, i)).unwrap();
    c.start_agent(&path).expect("agent starts");
    for (vip, hairpin) in [(VIP4, "169.254.7.1"), (VIP6, "fd00:7:7:7::1")] {
        assert_hairpinned(&c, i, vip, hairpin, "from the bridge");
    }
}
