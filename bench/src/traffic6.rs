//! Section 2f, IPv6 traffic beside IPv4: section 2's figures (bulk TCP,
//! request/response, new connections) over both families of one
//! dual-stack Service, the direct path of each family as its ceiling.
//! Three nodes, as in section 2: one without ferrolb (the direct path: no
//! programs on its veths), and two running the agent, one measured
//! through tc (client outside the hooked cgroup), one through the socket
//! hooks (client inside it). The paths get nodes of their own so that
//! neither meets the other's closed connections (TIME_WAIT in the pods,
//! conntrack entries) on reused client ports.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use ferrolb_tests::cluster::{Cluster, InCgroup, POD_PORT};

use crate::Opts;
use crate::report::Report;
use crate::traffic::{
    Figures, Guard, IPERF_PORT, cell, check_path, col, figures, paths, traffic_cluster,
    wait_for_iperf,
};

const VIP4: &str = "10.0.1.175";
const VIP6: &str = "fd00:10::175";

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Tc,
    Sock,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct (pod IP, no LB)",
            Path::Tc => "ferrolb, tc per-packet NAT",
            Path::Sock => "ferrolb, socket LB",
        }
    }
}

/// hostnames on 80 and iperf3 on 5201, both families, one slice each.
fn manifest(c: &Cluster) -> String {
    let slice = |family: &str, addrs: Vec<String>| {
        let eps: String = addrs
            .iter()
            .map(|a| format!("- addresses: [\"{a}\"]\n"))
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnames-{family}, labels: {{kubernetes.io/service-name: hostnames}}}}\naddressType: {family}\nports: [{{name: http, port: {POD_PORT}}}]\nendpoints:\n{eps}"
        )
    };
    // iperf3 runs in the first pod only: the Service's other pods refuse
    // 5201, so bulk TCP goes to a Service of its own.
    let iperf_slice = |family: &str, addr: String| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: iperf-{family}, labels: {{kubernetes.io/service-name: iperf}}}}\naddressType: {family}\nports: [{{name: iperf, port: {IPERF_PORT}}}]\nendpoints: [{{addresses: [\"{addr}\"]}}]\n"
        )
    };
    [
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: hostnames}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  clusterIPs: [{VIP4}, \"{VIP6}\"]\n  ports:\n  - {{name: http, port: 80, targetPort: {POD_PORT}}}\n"
        ),
        slice("IPv4", c.pods.iter().map(|p| p.ip.to_string()).collect()),
        slice("IPv6", c.pods.iter().map(|p| p.ip6.to_string()).collect()),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: iperf}}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  clusterIPs: [10.0.1.176, \"fd00:10::176\"]\n  ports:\n  - {{name: iperf, port: {IPERF_PORT}, targetPort: {IPERF_PORT}}}\n"
        ),
        iperf_slice("IPv4", c.pods[0].ip.to_string()),
        iperf_slice("IPv6", c.pods[0].ip6.to_string()),
    ]
    .join("---\n")
}

/// A node with its iperf3 server, with or without the agent.
struct Node {
    c: Cluster,
    _iperf: Guard,
}

fn node(o: &Opts, agent: bool) -> Result<Node> {
    let (mut c, iperf) = traffic_cluster(o)?;
    if agent {
        let path = c.workdir.join("hostnames.yaml");
        std::fs::write(&path, manifest(&c))?;
        c.start_agent(&path)?;
    }
    wait_for_iperf(&c, SocketAddr::from((c.pods[0].ip6, IPERF_PORT)))?;
    Ok(Node { c, _iperf: iperf })
}

/// One row: a path and a family.
struct Case {
    path: Path,
    v6: bool,
}

impl Case {
    fn family(&self) -> &'static str {
        if self.v6 { "IPv6" } else { "IPv4" }
    }

    /// (iperf3 target, HTTP address) on `n`.
    fn addrs(&self, n: &Node) -> (IpAddr, SocketAddr) {
        let pod = &n.c.pods[0];
        match (self.path, self.v6) {
            (Path::Direct, false) => (pod.ip.into(), (pod.ip, POD_PORT).into()),
            (Path::Direct, true) => (pod.ip6.into(), (pod.ip6, POD_PORT).into()),
            (_, false) => (
                "10.0.1.176".parse().unwrap(),
                (VIP4.parse::<IpAddr>().unwrap(), 80).into(),
            ),
            (_, true) => (
                "fd00:10::176".parse().unwrap(),
                (VIP6.parse::<IpAddr>().unwrap(), 80).into(),
            ),
        }
    }

    fn once(&self, n: &Node, secs: u64) -> Result<Figures> {
        let c = &n.c;
        let _cg = match self.path {
            Path::Sock => Some(InCgroup::enter(&c.cgroup)?),
            _ => None,
        };
        let (target, addr) = self.addrs(n);
        let ferrolb = self.path != Path::Direct;
        let before = if ferrolb { paths(c)? } else { (0, 0) };
        let (f, conns) = figures(c, target, addr, Duration::from_secs(secs))?;
        if ferrolb {
            let what = format!("{} {}", self.path.name(), self.family());
            check_path(c, before, conns, self.path == Path::Sock, &what)?;
        }
        Ok(f)
    }
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let reps = if o.quick { 1 } else { 5 };
    let secs = if o.quick { 1 } else { 2 };
    eprintln!("  traffic 2f: setting up a node without ferrolb and two with it");
    let nodes = [node(o, false)?, node(o, true)?, node(o, true)?];
    let cases: Vec<Case> = [Path::Direct, Path::Tc, Path::Sock]
        .into_iter()
        .flat_map(|path| [false, true].map(|v6| Case { path, v6 }))
        .collect();
    let on = |c: &Case| &nodes[c.path as usize];
    let mut figs: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
    for round in 0..reps {
        eprintln!("  traffic 2f: round {} of {reps}", round + 1);
        // Side by side, each round starting one further along (as in 2).
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let c = &cases[i];
            let f = c
                .once(on(c), secs)
                .with_context(|| format!("2f: {} over {}", c.path.name(), c.family()))?;
            figs[i].push(f);
        }
    }
    drop(nodes);
    let rows = cases
        .iter()
        .zip(&figs)
        .map(|(c, f)| {
            vec![
                c.path.name().to_string(),
                c.family().to_string(),
                cell(col(f, |x| x.gbps), 2),
                cell(col(f, |x| x.rr_per_s), 0),
                cell(col(f, |x| x.rr_p99_us), 0),
                cell(col(f, |x| x.cps), 0),
                cell(col(f, |x| x.cps_p99_us), 0),
            ]
        })
        .collect();
    r.table(
        "2f. IPv6 traffic beside IPv4",
        &format!(
            "Section 2's figures over both families of one dual-stack Service (`clusterIPs: [{VIP4}, {VIP6}]`, \
             one EndpointSlice per family, three pods), from the client pod: bulk TCP `iperf3 -t {secs}` to one \
             pod (a dual-stack Service of its own), request/response on one kept-alive connection, new \
             connections one at a time. The direct rows run on a node without ferrolb (no programs on its \
             veths), tc and socket LB each on a node of its own running the agent (tc with the client outside \
             the hooked cgroup, socket LB inside it), each round checking the agent's counters for the path \
             taken. {secs} s per figure, {reps} repetition(s) in rounds across all rows: median (min-max)."
        ),
        &[
            "path",
            "family",
            "TCP Gbit/s",
            "req/s (kept-alive)",
            "req p99 us",
            "new conn/s",
            "conn p99 us",
        ],
        rows,
    );
    let med = |path: Path, v6: bool, get: fn(&Figures) -> f64| -> f64 {
        cases
            .iter()
            .zip(&figs)
            .find(|(c, _)| c.path == path && c.v6 == v6)
            .map(|(_, f)| col(f, get).median)
            .unwrap_or(f64::NAN)
    };
    // Section 2's targets against the direct path, for IPv6.
    for (path, tag) in [(Path::Sock, "socket LB"), (Path::Tc, "tc NAT")] {
        for (what, get) in [
            ("throughput", (|x: &Figures| x.gbps) as fn(&Figures) -> f64),
            ("request rate", |x: &Figures| x.rr_per_s),
        ] {
            let ratio = med(path, true, get) / med(Path::Direct, true, get);
            let v4 = med(path, false, get) / med(Path::Direct, false, get);
            r.target(
                &format!("IPv6 {tag}: {what} >= 0.95x direct IPv6"),
                format!("{ratio:.2}x (IPv4 in the same run: {v4:.2}x)"),
                ratio >= 0.95,
            );
        }
    }
    Ok(())
}
