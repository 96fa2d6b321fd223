//! SCTP end to end: the seeds' hostnames pods behind an SCTP Service
//! whose port differs from the pods' (the checksum is updated with the
//! ports), reached by real SCTP associations from a pod (translated at tc)
//! and from the node (at the socket hooks). Needs a kernel with SCTP:
//! ignored by plain `cargo test`; `cargo xtask test` runs it where the
//! kernel has SCTP and says it skipped it where not.
mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ferrolb_tests::cluster::{Cluster, InCgroup};
use socket2::{Domain, Protocol, Socket, Type};

const VIP: &str = "10.0.1.191";
const TIMEOUT: Duration = Duration::from_secs(2);

fn manifest(ips: &[Ipv4Addr]) -> String {
    let eps: String = ips
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hostnames-sctp}}\nspec:\n  clusterIP: {VIP}\n  ports: [{{name: s, protocol: SCTP, port: 38412, targetPort: 9376}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnames-sctp-1, labels: {{kubernetes.io/service-name: hostnames-sctp}}}}\naddressType: IPv4\nports: [{{name: s, port: 9376, protocol: SCTP}}]\nendpoints:\n{eps}"
    )
}

/// One SCTP association to the VIP: the name the pod sends.
fn ask() -> std::io::Result<String> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::from(132)))?;
    let vip: SocketAddr = format!("{VIP}:38412").parse().unwrap();
    s.connect_timeout(&vip.into(), TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut s = s;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

#[test]
#[ignore = "needs a kernel with SCTP; cargo xtask test runs it where there is one"]
fn sctp_associations_reach_the_pods_from_a_pod_and_from_the_node() {
    let mut c = Cluster::new(common::bins(), 3).expect("cluster");
    let ips: Vec<Ipv4Addr> = c.pods.iter().map(|p| p.ip).collect();
    let path = c.workdir.join("services.yaml");
    std::fs::write(&path, manifest(&ips)).unwrap();
    c.start_agent(&path).expect("agent starts");
    let names: BTreeSet<String> = c.pods.iter().map(|p| p.name.clone()).collect();
    for from_node in [false, true] {
        let ns = if from_node { &c.node } else { &c.client().ns };
        let _cg = from_node.then(|| InCgroup::enter(&c.cgroup).unwrap());
        let got: Vec<String> = (0..20)
            .map(|_| {
                ns.run(ask)
                    .unwrap()
                    .unwrap_or_else(|e| format!("error: {e}"))
            })
            .collect();
        let seen: BTreeSet<String> = got.iter().cloned().collect();
        assert!(
            seen.is_subset(&names) && seen.len() >= 2,
            "from the node: {from_node}: {got:?}"
        );
    }
}
