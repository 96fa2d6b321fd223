//! Section 1e, north-south per-packet cost: NodePort through the tc and
//! XDP programs, BPF_PROG_TEST_RUN, beside a ClusterIP conntrack hit
//! measured the same way in the same run (the reference of the target).
//!
//! The measuring thread enters a namespace shaped like a node (the test
//! bed's `static_node`): the programs' FIB lookups resolve there, so
//! external packets take their real path to a next hop (tc redirect,
//! XDP_TX) rather than failing over to the stack. XDP runs as if
//! received on `wire0` (its context names the interface). IPv6 cases
//! beside the IPv4 ones: the same NodePort over IPv6, to the other
//! node's pod's IPv6 address, SNATed to the node's.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use aya::programs::{Program, ProgramFd, Xdp, XdpMode};
use ferrolb_tests::bpffs::Bpffs;
use ferrolb_tests::fabric::static_node::{
    self, CLIENT, CLIENT6, LOCAL_POD, NODE, NODE6, REMOTE_POD, REMOTE_POD6,
};
use ferrolb_tests::packet::{self, Frame, TCP_ACK, TCP_SYN};
use ferrolb_tests::packet6::{Frame6, addrs6};
use lb_agent::{
    datapath::{PROG_XDP_PASS, external::ExternalMaps, loader},
    model::{BackendAddr, Desired, FrontendKey, FrontendKind, FrontendState, Proto},
    reconcile,
};
use lb_common::SVC_FLAG_EXTERNAL;

use crate::Opts;
use crate::datapath::{
    HOOKS, Harness, Loaded, Pinned, Runnable, TC_ACT_OK, WARM_CLIENTS, XDP_PASS, program,
    run_once_on,
};
use crate::report::Report;
use crate::stats::{fmt, interquartile_mean, spread};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLUSTER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// New IPv6 flows come from here up (the harness varies the last 32 bits).
const WARM_CLIENTS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0);
const NODEPORT_REMOTE: u16 = 30080;
const NODEPORT_LOCAL: u16 = 30081;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_TX: u32 = 3;

/// One packet measured: its frame, whether every run is a new flow, and
/// the verdict each hook must return for it (tc, XDP).
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    fresh: bool,
    verdict: [u32; 2],
}

/// Per case and hook: warm added and total ns (per repetition), cold
/// added ns.
struct Figures {
    warm_added: Vec<f64>,
    warm_total: Vec<f64>,
    cold_added: f64,
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let quick = o.quick;
    let (cases, figures) = std::thread::spawn(move || measure(quick))
        .join()
        .map_err(|_| anyhow::anyhow!("north-south bench thread panicked"))??;
    let mut rows = Vec::new();
    for (c, per_hook) in cases.iter().zip(&figures) {
        for ((hook, ..), f) in HOOKS.iter().zip(per_hook) {
            let [mn, md, mx] = fmt(spread(&f.warm_added), 0);
            let total = spread(&f.warm_total).median;
            rows.push(vec![
                hook.to_string(),
                c.name.to_string(),
                format!("{md} ({mn}-{mx})"),
                format!("{total:.0}"),
                format!("{:.1}", 1e3 / total),
                format!("{:.0}", f.cold_added),
            ]);
        }
    }
    r.table(
        "1e. North-south per-packet cost (NodePort, BPF_PROG_TEST_RUN)",
        "NodePort 30080 leads to a pod on another node (externalTrafficPolicy Cluster: DNAT and SNAT \
         to this node, the translated packet sent to the FIB's next hop: tc redirect, XDP_TX out of \
         the interface it came in on); 30081 to a pod on this node (no SNAT; XDP leaves it to tc \
         untranslated, which is what its figure costs). The ClusterIP conntrack hit, measured here in \
         the same run and conditions, is the reference of the target. Warm and cold as in tables 1 \
         and 1b; new flows start from an emptied conntrack map each loop of 1000 (every new flow \
         claims a SNAT port). The IPv6 cases are the same over IPv6 (NodePort on the node's IPv6 \
         address to the other node's pod's, SNAT to the node's; the ClusterIP hit for reference), run \
         as tail-called stages as in table 1f. Mpps: packets per second one core would forward at the \
         warm total.",
        &[
            "hook",
            "case",
            "added ns warm, median (min-max)",
            "total ns warm",
            "Mpps per core",
            "added ns cold",
        ],
        rows,
    );
    let added = |name: &str| {
        let i = cases.iter().position(|c| c.name == name).expect("case");
        spread(&figures[i][1].warm_added).median
    };
    for (family, np, hit) in [
        ("", CASE_NP_EST, CASE_CLUSTER_HIT),
        ("IPv6 ", CASE_NP_EST6, CASE_CLUSTER_HIT6),
    ] {
        let (np, hit) = (added(np), added(hit));
        r.target(
            &format!("XDP: {family}NodePort established (SNAT) adds <= 2x a {family}ClusterIP conntrack hit"),
            format!("{np:.0} ns vs {hit:.0} ns ({:.1}x)", np / hit.max(1.0)),
            np <= 2.0 * hit,
        );
    }
    Ok(())
}

const CASE_CLUSTER_HIT: &str = "ClusterIP established (conntrack hit)";
const CASE_NP_EST: &str = "NodePort established, SNAT";
const CASE_CLUSTER_HIT6: &str = "IPv6 ClusterIP established (conntrack hit)";
const CASE_NP_EST6: &str = "IPv6 NodePort established, SNAT";

fn be(addr: impl Into<IpAddr>, local: bool) -> BackendAddr {
    BackendAddr {
        addr: addr.into(),
        port: 9376,
        local,
    }
}

fn frontend(
    addr: impl Into<IpAddr>,
    port: u16,
    kind: FrontendKind,
    backend: BackendAddr,
) -> (FrontendKey, FrontendState) {
    (
        FrontendKey {
            addr: addr.into(),
            port,
            proto: Proto::Tcp,
        },
        FrontendState {
            name: format!("bench/{kind}-{port}"),
            backends: vec![backend],
            kind,
            flags: if kind.is_external() {
                SVC_FLAG_EXTERNAL
            } else {
                0
            },
            ..Default::default()
        },
    )
}

fn measure(quick: bool) -> Result<(Vec<Case>, Vec<[Figures; 2]>)> {
    let (ns, wire) = static_node::create(&format!("flb-bench-np{}", std::process::id() % 100_000))?;
    ns.enter()?;
    let _pinned = Pinned::to_current_cpu()?;
    let fs = Bpffs::new("bench-np")?;
    let mut l = Loaded::new(&loader::LoadOptions {
        pin_dir: fs.dir.join("ferrolb"),
        services_max: 64,
        backends_max: 64,
        conntrack_max: lb_common::DEFAULT_CONNTRACK_MAX,
        sock_max: 1024,
        frontends_max: 16,
    })?;
    let mut ext = ExternalMaps::from_ebpf(&mut l.ebpf)?;
    let mut desired = Desired::default();
    desired.frontends.extend([
        frontend(
            CLUSTER_IP,
            80,
            FrontendKind::ClusterIp,
            be(REMOTE_POD, false),
        ),
        frontend(
            Ipv4Addr::UNSPECIFIED,
            NODEPORT_REMOTE,
            FrontendKind::NodePort,
            be(REMOTE_POD, false),
        ),
        frontend(
            Ipv4Addr::UNSPECIFIED,
            NODEPORT_LOCAL,
            FrontendKind::NodePort,
            be(LOCAL_POD, true),
        ),
        frontend(
            CLUSTER_IP6,
            80,
            FrontendKind::ClusterIp,
            be(REMOTE_POD6, false),
        ),
        frontend(
            Ipv6Addr::UNSPECIFIED,
            NODEPORT_REMOTE,
            FrontendKind::NodePort,
            be(REMOTE_POD6, false),
        ),
    ]);
    let mut rec = reconcile::Reconciler::new(l.maps.read()?);
    let ops = rec.plan_all(&desired);
    let errs = l.maps.apply(&ops, rec.mirror_mut());
    anyhow::ensure!(errs.is_empty(), "programming: {:?}", errs.first());
    ext.sync_node_addrs(&[NODE.into(), NODE6.into()].into())?;
    ext.set_config(&lb_common::Config {
        nodeport_min: lb_common::DEFAULT_NODEPORT_MIN,
        nodeport_max: lb_common::DEFAULT_NODEPORT_MAX,
        snat_port_min: lb_common::DEFAULT_SNAT_PORT_MIN,
        snat_port_max: lb_common::DEFAULT_SNAT_PORT_MAX,
        snat_v4: u32::from_ne_bytes(NODE.octets()),
        snat_closed_ticks: 0,
        flags: 0,
        snat_v6: words6(NODE6),
    })?;
    // A veth registers the receive queue XDP test runs name only once an
    // XDP program is attached: the pass program is.
    let xdp_pass: &mut Xdp = l
        .ebpf
        .program_mut(PROG_XDP_PASS)
        .context("pass program")?
        .try_into()?;
    xdp_pass.attach("wire0", XdpMode::default())?;
    // The XDP context: the frame's end, and the interface it came in on.
    let xdp_ctx = |frame: &[u8]| -> Vec<u8> {
        let md: [u32; 6] = [0, frame.len() as u32, 0, wire, 0, 0];
        md.iter().flat_map(|v| v.to_ne_bytes()).collect()
    };

    let cases = flows(&l)?;
    let reps = if quick { 3 } else { 9 };
    let samples = if quick { 500 } else { 2000 };
    let mut figures = Vec::new();
    for c in &cases {
        eprintln!("  north-south: {}", c.name);
        let mut per_hook = Vec::new();
        for (h, (_, prog_name, pass_name, harness_name, _)) in HOOKS.iter().enumerate() {
            let (prog, pass) = (program(&l.ebpf, prog_name)?, program(&l.ebpf, pass_name)?);
            let fds = (prog.fd()?, pass.fd()?);
            let ctx = (h == 1).then(|| xdp_ctx(&c.frame));
            let baseline = [TC_ACT_OK, XDP_PASS][h];
            let run = Run {
                fds,
                case: c,
                hook: h,
                baseline,
                reps,
            };
            let (frame, next) = (&mut l.frame, &mut l.next[h]);
            let warm = match program(&l.ebpf, harness_name)? {
                Program::SchedClassifier(hp) => {
                    run.warm(harness(hp, frame, next, c, baseline, ctx), &mut l.conntrack)?
                }
                Program::Xdp(hp) => {
                    run.warm(harness(hp, frame, next, c, baseline, ctx), &mut l.conntrack)?
                }
                _ => anyhow::bail!("{harness_name}: unexpected program type"),
            };
            let ctx = (h == 1).then(|| xdp_ctx(&c.frame));
            let ctx = ctx.as_deref();
            let cold_added = match (prog, pass) {
                (Program::SchedClassifier(p), Program::SchedClassifier(b)) => {
                    cold(p, b, c, ctx, samples, &mut l.conntrack)?
                }
                (Program::Xdp(p), Program::Xdp(b)) => {
                    cold(p, b, c, ctx, samples, &mut l.conntrack)?
                }
                _ => anyhow::bail!("{prog_name}: unexpected program type"),
            };
            per_hook.push(Figures {
                warm_added: warm.0,
                warm_total: warm.1,
                cold_added,
            });
        }
        figures.push(
            per_hook
                .try_into()
                .map_err(|_| anyhow::anyhow!("two hooks"))?,
        );
    }
    Ok((cases, figures))
}

/// The packets measured. Tracked flows are opened through the tc program
/// first; their translation tells the reply's addresses.
fn flows(l: &Loaded) -> Result<Vec<Case>> {
    let Program::SchedClassifier(tc) = program(&l.ebpf, HOOKS[0].1)? else {
        anyhow::bail!("tc program type");
    };
    let open = |dst: (Ipv4Addr, u16), sport: u16| -> Result<(Vec<u8>, Vec<u8>)> {
        let syn = Frame::tcp((CLIENT, sport), dst, TCP_SYN).build();
        let (_, _, out) = run_once_on(tc, &syn, None)?;
        let est = Frame::tcp((CLIENT, sport), dst, TCP_ACK).build();
        let reply = Frame::tcp(packet::dst(&out), packet::src(&out), TCP_ACK).build();
        Ok((est, reply))
    };
    let open6 = |dst: (Ipv6Addr, u16), sport: u16| -> Result<(Vec<u8>, Vec<u8>)> {
        let syn = Frame6::tcp((CLIENT6, sport), dst, TCP_SYN).build();
        let (_, _, out) = run_once_on(tc, &syn, None)?;
        let est = Frame6::tcp((CLIENT6, sport), dst, TCP_ACK).build();
        let (from, to) = addrs6(&out);
        Ok((est, Frame6::tcp(to, from, TCP_ACK).build()))
    };
    let (cluster_est, _) = open((CLUSTER_IP, 80), 45000)?;
    let (np_est, np_reply) = open((NODE, NODEPORT_REMOTE), 45001)?;
    let (local_est, _) = open((NODE, NODEPORT_LOCAL), 45002)?;
    let (cluster_est6, _) = open6((CLUSTER_IP6, 80), 45003)?;
    let (np_est6, np_reply6) = open6((NODE6, NODEPORT_REMOTE), 45004)?;
    let sent = [TC_ACT_REDIRECT, XDP_TX];
    Ok(vec![
        Case {
            name: CASE_CLUSTER_HIT,
            frame: cluster_est,
            fresh: false,
            verdict: [TC_ACT_OK, XDP_PASS],
        },
        Case {
            name: CASE_NP_EST,
            frame: np_est,
            fresh: false,
            verdict: sent,
        },
        Case {
            name: "NodePort reply, SNAT reversed",
            frame: np_reply,
            fresh: false,
            verdict: sent,
        },
        Case {
            name: "NodePort established, local pod",
            frame: local_est,
            fresh: false,
            // XDP: another interface's next hop is left to tc, untranslated.
            verdict: [TC_ACT_REDIRECT, XDP_PASS],
        },
        Case {
            name: CASE_CLUSTER_HIT6,
            frame: cluster_est6,
            fresh: false,
            verdict: [TC_ACT_OK, XDP_PASS],
        },
        Case {
            name: CASE_NP_EST6,
            frame: np_est6,
            fresh: false,
            verdict: sent,
        },
        Case {
            name: "IPv6 NodePort reply, SNAT reversed",
            frame: np_reply6,
            fresh: false,
            verdict: sent,
        },
        // Last: measuring new flows empties the conntrack map, and with it
        // the flows the cases above measure.
        Case {
            name: "NodePort new flow, SNAT to another node",
            frame: Frame::tcp((WARM_CLIENTS, 40000), (NODE, NODEPORT_REMOTE), TCP_SYN).build(),
            fresh: true,
            verdict: sent,
        },
        Case {
            name: "IPv6 NodePort new flow, SNAT to another node",
            frame: Frame6::tcp((WARM_CLIENTS6, 40000), (NODE6, NODEPORT_REMOTE), TCP_SYN).build(),
            fresh: true,
            verdict: sent,
        },
    ])
}

/// The bench harness of one hook, set for case `c`.
fn harness<'a, P>(
    prog: &'a P,
    frame: &'a mut aya::maps::Array<aya::maps::MapData, lb_common::BenchFrame>,
    next: &'a mut aya::maps::ProgramArray<aya::maps::MapData>,
    c: &Case,
    baseline: u32,
    ctx: Option<Vec<u8>>,
) -> Harness<'a, P> {
    Harness {
        prog,
        frame,
        next,
        repeat: 1000,
        loops: if c.fresh { 1 } else { 5 },
        forward: baseline,
        ctx,
    }
}

/// What one case's warm figures on one hook need besides the harness.
struct Run<'a> {
    fds: (&'a ProgramFd, &'a ProgramFd),
    case: &'a Case,
    hook: usize,
    baseline: u32,
    reps: usize,
}

impl Run<'_> {
    /// Warm figures: (added, total) ns per repetition.
    fn warm<P: Runnable>(
        &self,
        mut harness: Harness<'_, P>,
        conntrack: &mut lb_agent::datapath::conntrack::Conntrack,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let (c, (prog_fd, pass_fd)) = (self.case, self.fds);
        let (mut added, mut total) = (Vec::new(), Vec::new());
        for _ in 0..self.reps {
            harness.forward = self.baseline;
            let b0 = harness.warm_ns(pass_fd, &c.frame, c.fresh)?;
            if c.fresh {
                // 1000 new flows a loop, each claiming a SNAT port: from empty.
                conntrack.purge(&Default::default(), &Default::default())?;
            }
            harness.forward = c.verdict[self.hook];
            let v = harness.warm_ns(prog_fd, &c.frame, c.fresh)?;
            harness.forward = self.baseline;
            let b1 = harness.warm_ns(pass_fd, &c.frame, c.fresh)?;
            added.push(v - (b0 + b1) / 2.0);
            total.push(v);
        }
        Ok((added, total))
    }
}

/// Cold added ns: interquartile means of single runs, ours minus the
/// pass program's. New flows each get a source never used before.
fn cold<P: Runnable>(
    prog: &P,
    pass: &P,
    c: &Case,
    ctx: Option<&[u8]>,
    samples: usize,
    conntrack: &mut lb_agent::datapath::conntrack::Conntrack,
) -> Result<f64> {
    let frame = |k: usize| -> Vec<u8> {
        if !c.fresh {
            return c.frame.clone();
        }
        if c.frame[12..14] == [0x86, 0xdd] {
            let ((_, sport), dst) = addrs6(&c.frame);
            let src = Ipv6Addr::from(
                u128::from(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0)) + k as u128,
            );
            return Frame6::tcp((src, sport), dst, TCP_SYN).build();
        }
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + k as u32);
        let mut f = c.frame.clone();
        f[packet::ETH + 12..packet::ETH + 16].copy_from_slice(&src.octets());
        // The source is part of the checksums: rebuilt rather than patched.
        let (s, d) = (packet::src(&f), packet::dst(&f));
        Frame::tcp(s, d, f[packet::ETH + 20 + 13]).build()
    };
    if c.fresh {
        conntrack.purge(&Default::default(), &Default::default())?;
    }
    let mut ours = Vec::with_capacity(samples);
    let mut base = Vec::with_capacity(samples);
    for k in 0..samples {
        let f = frame(k);
        let (v, ns, _) = run_once_on(prog, &f, ctx)?;
        anyhow::ensure!(
            v == c.verdict[ctx.is_some() as usize],
            "{}: verdict {v} on a cold run",
            c.name
        );
        ours.push(ns);
        base.push(run_once_on(pass, &f, ctx)?.1);
    }
    Ok(interquartile_mean(&ours) - interquartile_mean(&base))
}

/// An IPv6 address as the maps hold it: four words in network order.
fn words6(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}
