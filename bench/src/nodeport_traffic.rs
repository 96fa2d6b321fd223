//! Section 2b, north-south traffic end to end: a client outside the
//! cluster talks to a NodePort on node-b whose backend pods run on
//! node-a, so every connection crosses nodes (DNAT and SNAT on node-b,
//! replies translated back there). The same two-node test bed as the
//! north-south tests (a bridge between nodes and client), one per
//! datapath, all set up first and measured in rounds:
//!
//! - direct: the client talks to a pod IP on node-a (routed through
//!   node-b, no translation): the ceiling;
//! - ferrolb with tc on node-b's uplink;
//! - ferrolb with XDP on node-b's uplink too (XDP_TX both ways; generic
//!   mode, the only one veth runs for bridged frames);
//! - ferrolb with direct server return (tc): node-b sends the flows to
//!   node-a in IPIP, node-a answers the client itself;
//! - kube-proxy-shaped iptables and nftables NodePort rules on node-b
//!   (mark, DNAT, masquerade), built only in the bench's namespaces.
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ferrolb_tests::cluster::{Binaries, Cluster, POD_PORT};
use ferrolb_tests::fabric::Fabric;
use ferrolb_tests::netns::{NetNs, sh};

use crate::report::Report;
use crate::stats::{fmt, percentile, spread};
use crate::traffic::{new_connections, request_response};
use crate::{Opts, synth};

const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
const NODEPORT: u16 = 30080;
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 175);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    Tc,
    Xdp,
    Dsr,
    Iptables,
    Nftables,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct (pod IP routed, no LB)",
            Mode::Tc => "ferrolb, tc",
            Mode::Xdp => "ferrolb, XDP (generic) + tc",
            Mode::Dsr => "ferrolb, DSR (tc)",
            Mode::Iptables => "kube-proxy-shaped iptables",
            Mode::Nftables => "kube-proxy-shaped nftables",
        }
    }
}

/// One datapath's test bed.
struct Setup {
    mode: Mode,
    client: NetNs,
    _fabric: Fabric,
    _a: Cluster,
    b: Cluster,
    addr: SocketAddr,
}

fn manifest(pods: &[Ipv4Addr]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: my-nginx}}\nspec:\n  type: NodePort\n  clusterIP: {CLUSTER_IP}\n  ports: [{{port: 80, targetPort: 9376, nodePort: {NODEPORT}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: my-nginx-1, labels: {{kubernetes.io/service-name: my-nginx}}}}\naddressType: IPv4\nports: [{{port: 9376}}]\nendpoints:\n"
    );
    for p in pods {
        s.push_str(&format!("- {{addresses: [\"{p}\"], nodeName: node-a}}\n"));
    }
    s
}

fn setup(o: &Opts, mode: Mode, n: usize) -> Result<Setup> {
    let bins = Binaries {
        agent: o.agent.clone(),
        podserver: o.podserver.clone(),
    };
    let mut a = Cluster::with_subnet(bins.clone(), 3, 1)?;
    let mut b = Cluster::with_subnet(bins, 0, 2)?;
    let fabric = Fabric::new(&format!("{}-net", a.id))?;
    fabric.plug(&a.node, "uplink0", NODE_A)?;
    fabric.plug(&b.node, "uplink0", NODE_B)?;
    b.node
        .ip(&["route", "add", "10.244.1.0/24", "via", &NODE_A.to_string()])?;
    a.node
        .ip(&["route", "add", "10.244.2.0/24", "via", &NODE_B.to_string()])?;
    let client = NetNs::new(&format!("{}-cl", a.id))?;
    fabric.plug(&client, "eth0", CLIENT)?;
    client.run(|| {
        // Many short connections: widen the port range, reuse TIME_WAIT.
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000");
        let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
    })?;
    // The direct path goes through node-b too, routed.
    client.ip(&["route", "add", "10.244.1.0/24", "via", &NODE_B.to_string()])?;
    let pods: Vec<Ipv4Addr> = a.pods.iter().map(|p| p.ip).collect();
    match mode {
        Mode::Tc | Mode::Xdp | Mode::Dsr => {
            let dir = b.workdir.join("manifests");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("my-nginx.yaml"), manifest(&pods))?;
            synth::write_manifests(&dir, n - 1, 100)?;
            b.agent_args = ["--node-name", "node-b", "--node-ip", &NODE_B.to_string()]
                .map(String::from)
                .to_vec();
            if mode == Mode::Dsr {
                // node-a takes the flows out of their tunnel: its agent runs too.
                b.agent_args.extend(["--lb-mode", "dsr"].map(String::from));
                a.agent_args = ["--node-name", "node-a", "--node-ip", &NODE_A.to_string()]
                    .map(String::from)
                    .to_vec();
                a.agent_args.extend(["--lb-mode", "dsr"].map(String::from));
                a.start_agent(&dir)?;
            }
            if mode == Mode::Xdp {
                b.agent_args
                    .extend(["--devices", "uplink0", "--xdp-mode", "generic"].map(String::from));
                // Complete checksums on the wire, as from a NIC: XDP
                // updates them incrementally.
                for (ns, dev) in [(&client, "eth0"), (&a.node, "uplink0")] {
                    sh(ns.command("ethtool").args(["-K", dev, "tx", "off"]))?;
                }
            }
            b.start_agent(&dir)?;
        }
        Mode::Iptables | Mode::Nftables => {
            let real: synth::Svc = (
                CLUSTER_IP,
                80,
                pods.iter().map(|p| (*p, POD_PORT)).collect(),
            );
            let (prog, args, text): (&str, &[&str], String) = if mode == Mode::Iptables {
                (
                    "iptables-restore",
                    &[],
                    synth::iptables_rules_with_nodeport(n - 1, &[real], Some(NODEPORT)),
                )
            } else {
                (
                    "nft",
                    &["-f", "-"],
                    synth::nft_rules_with_nodeport(n - 1, &[real], Some(NODEPORT)),
                )
            };
            let path = b.workdir.join("rules");
            std::fs::write(&path, text)?;
            let st = Command::new("ip")
                .args(["netns", "exec", &b.node.name, prog])
                .args(args)
                .stdin(std::fs::File::open(&path)?)
                .status()?;
            ensure!(st.success(), "{prog} failed in the bench's node namespace");
        }
        Mode::Direct => {}
    }
    let addr = match mode {
        Mode::Direct => SocketAddr::from((pods[0], POD_PORT)),
        _ => SocketAddr::from((NODE_B, NODEPORT)),
    };
    Ok(Setup {
        mode,
        client,
        _fabric: fabric,
        _a: a,
        b,
        addr,
    })
}

/// (req/s, req p99 us, new conn/s, conn p99 us) of one run.
type Figures = [f64; 4];

impl Setup {
    fn once(&self, secs: u64) -> Result<Figures> {
        let (addr, dur) = (self.addr, Duration::from_secs(secs));
        let before = self.crossed()?;
        let (rr, lat) = self.client.run(move || request_response(addr, dur))??;
        let (cps, conn) = self.client.run(move || new_connections(addr, dur))??;
        if matches!(self.mode, Mode::Tc | Mode::Xdp | Mode::Dsr) {
            // The connections crossed nodes: node-b SNATed (or sent by DSR)
            // new flows. A client tuple reused while its flow is still
            // tracked counts as established, so not every connection does.
            let crossed = self.crossed()? - before;
            ensure!(
                crossed > 0,
                "{}: {} connections but no flow sent to node-a: the traffic took another path",
                self.mode.name(),
                conn.len()
            );
        }
        Ok([rr, percentile(&lat, 99.0), cps, percentile(&conn, 99.0)])
    }

    /// New flows node-b sent over to node-a (SNAT, or DSR).
    fn crossed(&self) -> Result<u64> {
        let outcome = match self.mode {
            Mode::Tc | Mode::Xdp => "snat_new",
            Mode::Dsr => "dsr_new",
            _ => return Ok(0),
        };
        let text = self.b.metrics()?;
        let want = format!("ferrolb_datapath_packets_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
            .with_context(|| format!("no {outcome} counter in the agent's metrics"))
    }
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let n = if o.quick { 100 } else { 1_000 };
    let reps = if o.quick { 1 } else { 5 };
    let secs = if o.quick { 1 } else { 2 };
    let modes = [
        Mode::Direct,
        Mode::Tc,
        Mode::Xdp,
        Mode::Dsr,
        Mode::Iptables,
        Mode::Nftables,
    ];
    let mut setups = Vec::new();
    for mode in modes {
        eprintln!("  north-south traffic: setting up {}", mode.name());
        setups.push(setup(o, mode, n)?);
    }
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); modes.len()];
    let mut failures: Vec<String> = Vec::new();
    for round in 0..reps {
        eprintln!("  north-south traffic: round {} of {reps}", round + 1);
        for k in 0..modes.len() {
            let i = (round + k) % modes.len();
            // A failed run is reported with its datapath, not the end of
            // the bench: its figures are left out of that datapath's cells.
            match setups[i].once(secs) {
                Ok(f) => figures[i].push(f),
                Err(e) => {
                    failures.push(format!("{} (round {}): {e:#}", modes[i].name(), round + 1))
                }
            }
        }
    }
    drop(setups);
    let med = |i: usize, k: usize| spread(&figures[i].iter().map(|f| f[k]).collect::<Vec<_>>());
    let cell = |i: usize, k: usize| {
        let [a, b, c] = fmt(med(i, k), 0);
        format!("{b} ({a}-{c})")
    };
    let rows = modes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            vec![
                m.name().to_string(),
                cell(i, 0),
                cell(i, 1),
                cell(i, 2),
                cell(i, 3),
            ]
        })
        .collect();
    let failed = if failures.is_empty() {
        "No run failed.".to_string()
    } else {
        format!(
            "Failed runs (left out of the cells): {}.",
            failures.join("; ")
        )
    };
    r.table(
        "2b. North-south traffic: NodePort across nodes",
        &format!(
            "{failed} A client outside the cluster -> NodePort {NODEPORT} on node-b -> one of 3 pods on node-a, over \
             a bridge between namespaces (the north-south tests' bed). Every connection crosses nodes: \
             node-b DNATs and SNATs it, the pods answer node-b, node-b translates back (with DSR: node-b \
             sends it to node-a in IPIP, node-a answers the client). {n} Services \
             programmed (the measured one in the middle of the rule sets). Request/response: one kept-alive \
             HTTP connection; new connections: connect, one request, close, one at a time. {secs} s per \
             figure, {reps} round(s) across all datapaths: median (min-max). XDP runs in generic mode (veth \
             runs native XDP only for frames its peer hands it through NAPI; a NIC driver runs it on \
             every frame), so its figure is XDP's logic, not native XDP's speed."
        ),
        &[
            "datapath",
            "req/s (kept-alive)",
            "req p99 us",
            "new conn/s",
            "conn p99 us",
        ],
        rows,
    );
    let cps = |m: Mode| med(modes.iter().position(|x| *x == m).expect("mode"), 2).median;
    let direct = cps(Mode::Direct);
    for (m, tag) in [(Mode::Tc, "tc"), (Mode::Xdp, "XDP"), (Mode::Dsr, "DSR")] {
        let f = cps(m);
        r.target(
            &format!("north-south {tag}: NodePort new conn/s no worse than iptables"),
            format!(
                "{:.2}x iptables, {:.2}x nftables (direct: {:.2}x iptables)",
                f / cps(Mode::Iptables),
                f / cps(Mode::Nftables),
                direct / cps(Mode::Iptables)
            ),
            f >= cps(Mode::Iptables),
        );
    }
    Ok(())
}
