use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lb_agent::{
    agent::{self, RunOptions, SourceOptions},
    datapath::{attach, conntrack, loader::LoadOptions, maps},
    flow_table, table,
};
use lb_common::{ALL_MAPS, STAT_NAMES};

#[derive(Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "ferrolb: Kubernetes Services on an eBPF datapath"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text, or as JSON objects (one per line) for log
    /// collectors. The level comes from RUST_LOG (default info).
    #[arg(long, global = true, env = "FERROLB_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(clap::Args, Clone)]
struct PinArgs {
    /// bpffs directory holding the pinned maps (created 0700).
    #[arg(long, env = "FERROLB_PIN_PATH", default_value = "/sys/fs/bpf/ferrolb")]
    pin_path: PathBuf,
}

#[derive(clap::Args)]
struct OutputArgs {
    /// Output format: a table for people, JSON for scripts.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

impl OutputArgs {
    fn json(&self) -> bool {
        self.output == "json"
    }
}

// Parsed once per process; boxing the big variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent: program the datapath from manifests or the
    /// Kubernetes API and follow changes.
    Run {
        /// A YAML/JSON file or a directory of them (multi-document) with
        /// Services, EndpointSlices (discovery.k8s.io/v1) and Endpoints.
        /// Without it the agent follows the Kubernetes API.
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// API mode: kubeconfig file. Default: $KUBECONFIG, then
        /// ~/.kube/config, then the in-cluster service account.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// This node's name: endpoints whose nodeName matches are local
        /// (externalTrafficPolicy and internalTrafficPolicy Local, SNAT of
        /// external traffic to other nodes). In API mode its Node object is
        /// watched too.
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// Serve NodePorts only on node addresses inside these prefixes
        /// (kube-proxy's nodePortAddresses). Default: every address but
        /// loopback.
        #[arg(long, value_delimiter = ',')]
        nodeport_addresses: Vec<lb_agent::model::Cidr>,
        /// NodePort range, inclusive (the API server's flag of that name):
        /// nodePorts outside are reported and not programmed.
        #[arg(long, default_value = "30000-32767", value_parser = port_range)]
        service_node_port_range: (u16, u16),
        /// Source ports of external flows SNATed to another node's backend.
        /// Keep it outside net.ipv4.ip_local_port_range (default
        /// 32768-60999), or a flow may collide with a node's own connection.
        #[arg(long, default_value = "1024-29999", value_parser = port_range)]
        snat_port_range: (u16, u16),
        /// How external flows reach backends on other nodes
        /// (externalTrafficPolicy Cluster): snat (kube-proxy's way: replies
        /// come back through this node), dsr (direct server return:
        /// encapsulated in IPIP to the backend, whose node answers the
        /// client itself, keeping its address; every node must run the
        /// same mode, and the network must carry 20 more bytes per
        /// packet), or hybrid (DSR for TCP, SNAT for UDP).
        #[arg(long, default_value = "snat", value_parser = ["snat", "dsr", "hybrid"])]
        lb_mode: String,
        /// How new flows are spread over a Service's endpoints, unless its
        /// `ferrolb.io/lb-algorithm` annotation says otherwise: random
        /// (kube-proxy's iptables mode), round-robin, maglev (consistent
        /// hashing: every node picks the same endpoint for a flow, and an
        /// endpoint leaving moves only its share), source-hash, dest-hash.
        #[arg(long, default_value = "random", value_parser = ["random", "round-robin", "maglev", "source-hash", "dest-hash"])]
        lb_algorithm: String,
        /// Entries of each Maglev lookup table: a prime, 251-131071. A
        /// larger table spreads more evenly over more endpoints (within 1%
        /// for up to ~1% of its size); all tables share one map of about a
        /// million entries.
        #[arg(long, default_value = "16381")]
        maglev_table_size: lb_agent::sched::TableSize,
        /// Seconds a closed SNATed flow keeps its source port before a new
        /// flow may take it (the backend's TIME_WAIT lasts 60 s).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=86_400))]
        snat_closed_timeout_secs: u32,
        /// The addresses external flows to other nodes' backends are
        /// SNATed to, at most one per family (comma-separated). Default,
        /// per family: the first address of that family's default route's
        /// interface.
        #[arg(long, env = "FERROLB_NODE_IP", value_delimiter = ',')]
        node_ip: Vec<std::net::IpAddr>,
        /// Least time between two syncs in milliseconds: changes arriving
        /// closer together are programmed in one pass (kube-proxy's
        /// minSyncPeriod). The first change after a quiet spell is
        /// programmed at once.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
        min_sync_interval_ms: u64,
        /// Program Services labelled service.kubernetes.io/service-proxy-name
        /// with this value (and unlabelled ones); Services labelled for
        /// another proxy, or service.kubernetes.io/headless, are skipped.
        #[arg(long, env = "FERROLB_SERVICE_PROXY_NAME")]
        service_proxy_name: Option<String>,
        #[command(flatten)]
        pin: PinArgs,
        /// Interfaces (glob patterns) that get the tc program: the host
        /// side of pod interfaces. Default: every interface but loopback.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        interfaces: Vec<String>,
        /// Interfaces (glob patterns) never attached to.
        #[arg(long, value_delimiter = ',', default_value = "lo")]
        exclude_interfaces: Vec<String>,
        /// The node's external devices (glob patterns; `auto`: the default
        /// route's interface) that get the XDP program, which translates
        /// traffic arriving from outside the node (to frontends, and
        /// replies from backends on other nodes) before the stack sees it.
        /// Default: none.
        #[arg(long, alias = "devices", value_delimiter = ',')]
        xdp_interfaces: Vec<String>,
        /// XDP attach mode: auto (native where the driver has it, generic
        /// otherwise), native, or generic.
        #[arg(long, default_value = "auto", value_parser = ["auto", "native", "generic"])]
        xdp_mode: String,
        /// cgroup v2 directory for the socket hooks that translate
        /// node-originated traffic; "none" to disable. Default: the cgroup
        /// v2 root.
        #[arg(long)]
        cgroup: Option<String>,
        /// How often the manifests are checked for changes, in milliseconds.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
        poll_interval_ms: u64,
        /// Service (ClusterIP) prefixes, comma-separated, like the API
        /// server's --service-cluster-ip-range. When given, Services whose
        /// cluster IP is outside are reported and not programmed. Default:
        /// accept every cluster IP.
        #[arg(long, value_delimiter = ',')]
        service_cidr: Vec<lb_agent::model::Cidr>,
        /// Size of the services map (frontend slots).
        #[arg(long, default_value_t = lb_common::DEFAULT_SERVICES_MAX, value_parser = clap::value_parser!(u32).range(1..))]
        services_max: u32,
        /// Size of the backends map.
        #[arg(long, default_value_t = lb_common::DEFAULT_BACKENDS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
        backends_max: u32,
        /// Size of the conntrack map (LRU: least recently used flows are
        /// evicted when full; each flow takes two entries).
        #[arg(long, default_value_t = lb_common::DEFAULT_CONNTRACK_MAX, value_parser = clap::value_parser!(u32).range(2..))]
        conntrack_max: u32,
        /// Most frontends (Service IP:port/protocol) the agent can name in
        /// the service table.
        #[arg(long, default_value_t = lb_common::DEFAULT_SVC_INFO_MAX, value_parser = clap::value_parser!(u32).range(1..))]
        frontends_max: u32,
        /// Where /metrics (Prometheus), /readyz and /status are served;
        /// "none" to disable. The default is kube-proxy's metrics address.
        #[arg(long, default_value = "127.0.0.1:10249")]
        metrics_addr: String,
        /// Where /healthz and /livez are served (kube-proxy's
        /// --healthz-bind-address, for kubelet probes and load balancers);
        /// "none" to disable.
        #[arg(long, default_value = "0.0.0.0:10256")]
        healthz_addr: String,
        /// Seconds a change may wait to be programmed before /healthz
        /// reports the agent unhealthy (503).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        health_timeout_secs: u64,
        /// Seconds between two counts of the maps the datapath fills
        /// (conntrack, SNAT, sockets, sessions) for /metrics: a walk of
        /// each, about 35 ms per 100,000 entries held (bench table 1c').
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        map_fill_interval_secs: u64,
        /// Load the kernel programs from this object file (another build
        /// of lb-ebpf with the same map layouts) instead of the built-in
        /// ones: stages a datapath upgrade or rollback without a new agent.
        #[arg(long)]
        datapath_object: Option<PathBuf>,
        /// Size of the socket translation map (LRU).
        #[arg(long, default_value_t = lb_common::DEFAULT_SOCK_REVNAT_MAX, value_parser = clap::value_parser!(u32).range(2..))]
        sock_max: u32,
    },
    /// Print the service table as the datapath holds it.
    Services {
        #[command(flatten)]
        pin: PinArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// List tracked flows (both families) from the pinned maps: each
    /// entry's tuple, what it is translated to and its Service; or flush
    /// them. Works while the agent is down.
    Conntrack {
        #[command(flatten)]
        pin: PinArgs,
        /// Only flows with this address at one of their ends (client,
        /// frontend, backend).
        #[arg(long)]
        addr: Option<std::net::IpAddr>,
        /// Only flows with this port at one of their ends.
        #[arg(long)]
        port: Option<u16>,
        /// Only flows of this protocol.
        #[arg(long, value_parser = ["tcp", "udp", "sctp"])]
        proto: Option<String>,
        /// Delete the flows selected (every flow without a filter): their
        /// next packets are load-balanced afresh.
        #[arg(long)]
        flush: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Say what the datapath would do with a connection's first packet
    /// from SRC to DST, step by step, from the live maps: the conntrack
    /// entry that settles it, or the frontend it reaches (or why none),
    /// the backend its session or scheduler gives and why, the rewrite.
    /// Works while the agent is down.
    Explain {
        #[command(flatten)]
        pin: PinArgs,
        /// Source address and port (10.244.1.5:40000, [fd00::5]:40000).
        src: std::net::SocketAddr,
        /// Destination address and port: a VIP, a node address, ...
        dst: std::net::SocketAddr,
        /// Protocol.
        #[arg(value_parser = ["tcp", "udp", "sctp"])]
        proto: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Print datapath counters (where packets went and why).
    Stats {
        #[command(flatten)]
        pin: PinArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// The running agent's view (what it programmed and what it could
    /// not, through its --metrics-addr), then the datapath as pinned,
    /// which holds while the agent is down: where programs are attached
    /// and each map's fill level.
    Status {
        #[arg(long, default_value = "127.0.0.1:10249")]
        metrics_addr: SocketAddr,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Check manifests and report every problem, without touching the
    /// datapath. With --pin-path, also compare the pinned maps with what
    /// the manifests want and list every difference (drift, leaks).
    Check {
        #[arg(long)]
        manifests: PathBuf,
        /// Compare the maps pinned here with the manifests.
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
    /// Remove every pin the project created: detaches the programs (their
    /// links) and drops the maps. Idempotent.
    Cleanup {
        #[command(flatten)]
        pin: PinArgs,
    },
}

/// `MIN-MAX`, inclusive, 1-65535.
fn port_range(s: &str) -> std::result::Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a port range (expected MIN-MAX)"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{v:?} in {s:?} is not a port (1-65535)"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a > b {
        return Err(format!("{s:?}: {a} is above {b}"));
    }
    Ok((a, b))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    match cli.command {
        Command::Run {
            manifests,
            kubeconfig,
            node_name,
            nodeport_addresses,
            service_node_port_range,
            snat_port_range,
            snat_closed_timeout_secs,
            lb_mode,
            lb_algorithm,
            maglev_table_size,
            node_ip,
            min_sync_interval_ms,
            service_proxy_name,
            pin,
            interfaces,
            exclude_interfaces,
            xdp_interfaces,
            xdp_mode,
            cgroup,
            poll_interval_ms,
            service_cidr,
            services_max,
            backends_max,
            conntrack_max,
            sock_max,
            frontends_max,
            metrics_addr,
            healthz_addr,
            health_timeout_secs,
            map_fill_interval_secs,
            datapath_object,
        } => {
            for v6 in [false, true] {
                let same: Vec<_> = node_ip.iter().filter(|a| a.is_ipv6() == v6).collect();
                if same.len() > 1 {
                    anyhow::bail!(
                        "--node-ip: {same:?} are of one family; give at most one IPv4 and one IPv6 address"
                    );
                }
            }
            let healthz_addr = match healthz_addr.as_str() {
                "none" => None,
                a => Some(a.parse::<SocketAddr>().with_context(|| {
                    format!("--healthz-addr {a:?}: expected IP:PORT or \"none\"")
                })?),
            };
            let metrics_addr = match metrics_addr.as_str() {
                "none" => None,
                a => Some(a.parse::<SocketAddr>().with_context(|| {
                    format!("--metrics-addr {a:?}: expected IP:PORT or \"none\"")
                })?),
            };
            let cgroup = match cgroup.as_deref() {
                Some("none") => None,
                Some(p) => Some(attach::resolve_cgroup2(std::path::Path::new(p))?),
                None => Some(attach::cgroup2_root().context(
                    "no cgroup v2 mount found for the socket hooks: pass --cgroup PATH or --cgroup none",
                )?),
            };
            let source = match manifests {
                Some(path) => SourceOptions::Manifests(path),
                None => SourceOptions::Kube {
                    kubeconfig,
                    node_name: node_name.clone(),
                },
            };
            let opts = RunOptions {
                source,
                min_sync_interval: Duration::from_millis(min_sync_interval_ms),
                service_proxy_name,
                load: LoadOptions {
                    pin_dir: pin.pin_path,
                    services_max,
                    backends_max,
                    conntrack_max,
                    sock_max,
                    frontends_max,
                },
                interfaces,
                exclude_interfaces,
                xdp_interfaces,
                xdp_mode: match xdp_mode.as_str() {
                    "native" => aya::programs::XdpMode::Driver,
                    "generic" => aya::programs::XdpMode::Skb,
                    _ => aya::programs::XdpMode::Default,
                },
                cgroup,
                poll_interval: Duration::from_millis(poll_interval_ms),
                service_cidrs: service_cidr,
                scheduler: lb_agent::sched::parse(&lb_algorithm, maglev_table_size.0)
                    .map_err(anyhow::Error::msg)?,
                maglev_table_size: maglev_table_size.0,
                metrics_addr,
                healthz_addr,
                health_timeout: Duration::from_secs(health_timeout_secs),
                map_fill_interval: Duration::from_secs(map_fill_interval_secs),
                datapath_object,
                external: agent::ExternalOptions {
                    node_name,
                    nodeport_addresses,
                    node_port_range: service_node_port_range,
                    snat_port_range,
                    // Datapath ticks are 2^20 ns; at least one.
                    snat_closed_ticks: ((snat_closed_timeout_secs as u64 * 1_000_000_000) >> 20)
                        .max(1) as u32,
                    lb_mode: match lb_mode.as_str() {
                        "dsr" => agent::LbMode::Dsr,
                        "hybrid" => agent::LbMode::Hybrid,
                        _ => agent::LbMode::Snat,
                    },
                    node_ip,
                },
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(agent::run(opts))
        }
        Command::Services { pin, out } => {
            let maps = maps::ServiceMaps::from_pins(&pin.pin_path)?;
            let state = maps.read()?;
            let active = |id| maps.active_flows(id);
            if out.json() {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&table::json(&state, &active))?
                );
            } else {
                print!("{}", table::render(&state, &active));
            }
            Ok(())
        }
        Command::Conntrack {
            pin,
            addr,
            port,
            proto,
            flush,
            out,
        } => {
            let mut ct = conntrack::Conntrack::from_pins(&pin.pin_path)?;
            let proto = proto.map(|p| match p.as_str() {
                "tcp" => lb_common::IPPROTO_TCP,
                "udp" => lb_common::IPPROTO_UDP,
                _ => lb_common::IPPROTO_SCTP,
            });
            let flows: Vec<_> = ct
                .flows()?
                .into_iter()
                .filter(|f| f.touches(addr, port) && proto.is_none_or(|p| f.proto == p))
                .collect();
            if flush {
                let n = ct.delete(&flows)?;
                println!("{n} entries deleted");
                return Ok(());
            }
            let names = maps::ServiceMaps::from_pins(&pin.pin_path)?.read()?.info;
            if out.json() {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&flow_table::json(&flows, &names))?
                );
            } else {
                print!("{}", flow_table::render(&flows, &names));
            }
            Ok(())
        }
        Command::Explain {
            pin,
            src,
            dst,
            proto,
            out,
        } => {
            let proto = match proto.as_str() {
                "tcp" => lb_agent::model::Proto::Tcp,
                "udp" => lb_agent::model::Proto::Udp,
                _ => lb_agent::model::Proto::Sctp,
            };
            let e = lb_agent::explain::Live::open(&pin.pin_path)?.explain(src, dst, proto);
            if out.json() {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                for (i, step) in e.steps.iter().enumerate() {
                    println!("{}. {step}", i + 1);
                }
                println!("=> {}", e.verdict);
            }
            Ok(())
        }
        Command::Stats { pin, out } => {
            let values = maps::read_stats(&pin.pin_path)?;
            let m = maps::ServiceMaps::from_pins(&pin.pin_path)?;
            let traffic = table::traffic(&m.read()?, &|id| m.service_counters(id));
            if out.json() {
                let mut obj: serde_json::Map<String, serde_json::Value> = STAT_NAMES
                    .iter()
                    .zip(values)
                    .map(|(name, v)| (name.to_string(), v.into()))
                    .collect();
                let services: Vec<serde_json::Value> = traffic
                    .iter()
                    .map(|(service, frontend, c)| {
                        serde_json::json!({
                            "service": service,
                            "frontend": frontend,
                            "packets": c.packets,
                            "bytes": c.bytes,
                        })
                    })
                    .collect();
                obj.insert("services".into(), services.into());
                println!("{}", serde_json::to_string_pretty(&obj)?);
            } else {
                for (name, v) in STAT_NAMES.iter().zip(values) {
                    println!("{name:<20} {v}");
                }
                let w0 = traffic.iter().map(|t| t.0.len()).max().unwrap_or(0).max(7);
                let w1 = traffic.iter().map(|t| t.1.len()).max().unwrap_or(0).max(8);
                println!(
                    "\n{:<w0$}  {:<w1$}  {:>12}  {:>14}",
                    "SERVICE", "FRONTEND", "PACKETS", "BYTES"
                );
                for (service, frontend, c) in &traffic {
                    println!(
                        "{service:<w0$}  {frontend:<w1$}  {:>12}  {:>14}",
                        c.packets, c.bytes
                    );
                }
            }
            Ok(())
        }
        Command::Status { metrics_addr, pin } => {
            println!("lb-agent {}", env!("CARGO_PKG_VERSION"));
            match lb_agent::metrics::fetch_status(metrics_addr) {
                Ok(st) => {
                    let failing = if st.source_failing.is_empty() {
                        "none".to_string()
                    } else {
                        st.source_failing.join(", ")
                    };
                    println!("source: {} (failing watches: {failing})", st.source);
                    println!(
                        "ready: {}\nfrontends desired: {}\nfrontends not programmed: {}",
                        st.ready,
                        st.frontends,
                        st.not_programmed.len()
                    );
                    for l in &st.not_programmed {
                        println!("  NOT PROGRAMMED {} {}: {}", l.service, l.frontend, l.error);
                    }
                    for r in &st.refused {
                        println!("  REFUSED {r}");
                    }
                }
                Err(e) => println!("agent: not reachable ({e:#}); the datapath as pinned:"),
            }
            let links = lb_agent::datapath::inventory::links(&pin.pin_path);
            println!("attached ({}):", links.len());
            for l in &links {
                println!("  {l}");
            }
            println!("maps under {}:", pin.pin_path.display());
            for m in lb_agent::datapath::inventory::maps(&pin.pin_path)? {
                match m.entries {
                    Some(n) => println!(
                        "  {:<18} {:<16} {n:>9} / {:<9} {:>5.1}%",
                        m.name,
                        m.kind,
                        m.max_entries,
                        100.0 * n as f64 / f64::from(m.max_entries.max(1))
                    ),
                    None => println!(
                        "  {:<18} {:<16} {:>9} slots (an array)",
                        m.name, m.kind, m.max_entries
                    ),
                }
            }
            Ok(())
        }
        Command::Check {
            manifests,
            pin_path,
        } => {
            let mut source = lb_agent::source::files::FileSource::new(&manifests);
            let reload = source.load()?;
            for e in &reload.errors {
                eprintln!("error: {e}");
            }
            println!("{} objects valid", source.store().len());
            if !reload.errors.is_empty() {
                bail!(
                    "{} problem(s) in {}",
                    reload.errors.len(),
                    manifests.display()
                );
            }
            if let Some(pin) = pin_path {
                let held = maps::ServiceMaps::from_pins(&pin)?.read()?;
                let desired = lb_agent::model::desired(source.store());
                // What an agent adopting these maps would write: nothing
                // when they hold exactly the manifests' state.
                let ops = lb_agent::reconcile::Reconciler::new(held).plan_all(&desired);
                for op in &ops {
                    eprintln!("differs: {}", op.describe());
                }
                if !ops.is_empty() {
                    bail!(
                        "{} difference(s) between {} and the maps in {}",
                        ops.len(),
                        manifests.display(),
                        pin.display()
                    );
                }
                println!("maps match: {} frontends", desired.frontends.len());
            }
            Ok(())
        }
        Command::Cleanup { pin } => {
            // Link pins first: removing the last reference detaches.
            for path in attach::remove_link_pins(&pin.pin_path)? {
                println!("removed {} (detached)", path.display());
            }
            // Our maps of every layout version.
            let mut names: Vec<String> = ALL_MAPS.iter().map(|s| s.to_string()).collect();
            if let Ok(entries) = std::fs::read_dir(&pin.pin_path) {
                names.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("flb_") && !ALL_MAPS.contains(&n.as_str())),
                );
            }
            for name in names {
                let p = pin.pin_path.join(name);
                match std::fs::remove_file(&p) {
                    Ok(()) => println!("removed {}", p.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
                }
            }
            match std::fs::remove_dir(&pin.pin_path) {
                Ok(()) => println!("removed {}", pin.pin_path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", pin.pin_path.display()));
                }
            }
            Ok(())
        }
    }
}
