//! `lb-agent run`: load and attach the datapath, adopt what the pinned
//! maps already hold, then keep them equal to the source (manifests or
//! the Kubernetes API).
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::datapath::{
    attach::{self, Attachments},
    conntrack::{self, Conntrack},
    external::ExternalMaps,
    ifaces::Selector,
    loader::{self, LoadOptions},
    maps::ServiceMaps,
};
use crate::healthcheck::HealthServers;
use crate::model::{self, ModelConfig};
use crate::node_addrs;
use crate::source::{Source, files::FileSource, kube::KubeSource};
use crate::status::Shared;
use crate::store::{NsName, ObjectStore};
use crate::sync::Pipeline;

/// Where the objects come from.
#[derive(Clone, Debug)]
pub enum SourceOptions {
    Manifests(PathBuf),
    Kube {
        /// None: inferred ($KUBECONFIG, ~/.kube/config, in-cluster).
        kubeconfig: Option<PathBuf>,
        /// Our Node, watched by name.
        node_name: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub source: SourceOptions,
    /// Syncs are at least this far apart, so an event burst is one sync
    /// (kube-proxy's minSyncPeriod).
    pub min_sync_interval: Duration,
    /// Our `service.kubernetes.io/service-proxy-name`.
    pub service_proxy_name: Option<String>,
    pub load: LoadOptions,
    pub interfaces: Vec<String>,
    pub exclude_interfaces: Vec<String>,
    /// Wire-facing interfaces (glob patterns) that get the XDP program.
    pub xdp_interfaces: Vec<String>,
    pub xdp_mode: aya::programs::XdpMode,
    pub cgroup: Option<PathBuf>,
    pub poll_interval: Duration,
    /// When set, only VIPs inside these prefixes are programmed.
    pub service_cidrs: Vec<model::Cidr>,
    /// `--lb-algorithm` and `--maglev-table-size`.
    pub scheduler: crate::sched::Scheduler,
    pub maglev_table_size: u32,
    /// Where `/metrics`, `/readyz` and `/status` are served (None: off).
    pub metrics_addr: Option<SocketAddr>,
    /// Where /healthz and /livez are served (`None`: not at all).
    pub healthz_addr: Option<SocketAddr>,
    /// How long a change may wait to be programmed before /healthz says
    /// unhealthy.
    pub health_timeout: Duration,
    /// How often the maps the datapath fills are counted for /metrics.
    pub map_fill_interval: Duration,
    /// Programs from this object file instead of the built-in ones (another
    /// build of lb-ebpf with the same map layouts, e.g. to stage an upgrade).
    pub datapath_object: Option<PathBuf>,
    pub external: ExternalOptions,
}

/// Traffic from outside the cluster: NodePort, externalIPs, LoadBalancer.
#[derive(Clone, Debug)]
pub struct ExternalOptions {
    /// This node's name: endpoints with this nodeName are local
    /// (externalTrafficPolicy/internalTrafficPolicy Local, SNAT).
    pub node_name: Option<String>,
    /// NodePorts are served on node addresses inside these (all when empty).
    pub nodeport_addresses: Vec<model::Cidr>,
    pub node_port_range: (u16, u16),
    pub snat_port_range: (u16, u16),
    /// How long a closed SNATed flow keeps its port (datapath ticks).
    pub snat_closed_ticks: u32,
    /// SNAT or direct server return for flows to other nodes' backends.
    pub lb_mode: LbMode,
    /// The address SNATed flows leave with (default: the default route's
    /// interface's).
    pub node_ip: Vec<IpAddr>,
}

/// How external flows reach backends on other nodes (`--lb-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbMode {
    /// SNAT to this node: replies come back through it (kube-proxy's way).
    Snat,
    /// Direct server return for TCP and UDP: encapsulated (IPIP) to the
    /// backend, whose node answers the client itself.
    Dsr,
    /// DSR for TCP, SNAT for UDP.
    Hybrid,
}

impl LbMode {
    pub fn flags(self) -> u32 {
        match self {
            LbMode::Snat => 0,
            LbMode::Dsr => lb_common::CFG_DSR_TCP | lb_common::CFG_DSR_UDP,
            LbMode::Hybrid => lb_common::CFG_DSR_TCP,
        }
    }
}

impl Default for ExternalOptions {
    fn default() -> Self {
        ExternalOptions {
            node_name: None,
            nodeport_addresses: Vec::new(),
            node_port_range: (
                lb_common::DEFAULT_NODEPORT_MIN,
                lb_common::DEFAULT_NODEPORT_MAX,
            ),
            snat_port_range: (
                lb_common::DEFAULT_SNAT_PORT_MIN,
                lb_common::DEFAULT_SNAT_PORT_MAX,
            ),
            snat_closed_ticks: 0,
            lb_mode: LbMode::Snat,
            node_ip: Vec::new(),
        }
    }
}

/// The SNAT addresses in use, IPv4 and IPv6.
type SnatAddrs = (Option<Ipv4Addr>, Option<Ipv6Addr>);

impl ExternalOptions {
    /// Lists the node's addresses, writes those NodePorts are served on
    /// and the settings (with the SNAT address as found now).
    fn sync(&self, ext: &mut ExternalMaps, last_snat: &mut Option<SnatAddrs>) {
        let all = match node_addrs::list() {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "listing node addresses failed");
                return;
            }
        };
        let served = node_addrs::nodeport_addrs(&all, &self.nodeport_addresses);
        match ext.sync_node_addrs(&served) {
            Ok(true) => info!(addresses = ?served, "NodePort addresses"),
            Ok(false) => {}
            Err(e) => warn!(error = %format!("{e:#}"), "writing node addresses failed"),
        }
        let snat = node_addrs::snat_addrs(&self.node_ip, &all);
        if *last_snat != Some(snat) {
            match snat.0 {
                Some(a) => info!(address = %a, "SNAT address for external traffic to other nodes"),
                None => warn!(
                    "no SNAT address (no --node-ip, no default route): external traffic to backends on other nodes is dropped"
                ),
            }
            if let Some(a) = snat.1 {
                info!(address = %a, "SNAT address for external IPv6 traffic to other nodes");
            }
            *last_snat = Some(snat);
        }
        let cfg = lb_common::Config {
            nodeport_min: self.node_port_range.0,
            nodeport_max: self.node_port_range.1,
            snat_port_min: self.snat_port_range.0,
            snat_port_max: self.snat_port_range.1,
            snat_v4: snat.0.map_or(0, |a| lb_common::ipv4_to_net(a.octets())),
            snat_closed_ticks: self.snat_closed_ticks,
            flags: self.lb_mode.flags(),
            snat_v6: snat
                .1
                .map_or([0; 4], |a| lb_common::ipv6_to_net(a.octets())),
        };
        if let Err(e) = ext.set_config(&cfg) {
            warn!(error = %format!("{e:#}"), "writing datapath settings failed");
        }
    }
}

/// How often interfaces are re-listed to pick up new pods.
const IFACE_RESCAN: Duration = Duration::from_secs(1);
/// How often frontends that did not fit in the maps are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Counts the maps the datapath fills for /metrics, every `every`: a
/// walk per scrape would make every scrape pay for it.
fn count_datapath_maps(status: &Shared, pin_dir: &std::path::Path, every: Duration) {
    let (status, dir) = (status.clone(), pin_dir.to_path_buf());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let d = dir.clone();
            let counted = tokio::task::spawn_blocking(move || {
                crate::datapath::inventory::fills(&d, &crate::datapath::inventory::DATAPATH_FILLED)
            })
            .await;
            match counted {
                Ok(Ok(fills)) => status.update(|s| {
                    s.datapath_maps = fills
                        .into_iter()
                        .map(|f| (f.name, f.entries.unwrap_or(0), f.max_entries))
                        .collect();
                }),
                Ok(Err(e)) => warn!(error = %format!("{e:#}"), "counting the datapath's maps"),
                // The runtime is shutting down.
                Err(_) => return,
            }
        }
    });
}

pub async fn run(opts: RunOptions) -> Result<()> {
    crate::caps::check()?;
    let selector = Selector::new(&opts.interfaces, &opts.exclude_interfaces)?;
    let xdp_selector = Selector::xdp(&opts.xdp_interfaces)?;
    let mut ebpf = match &opts.datapath_object {
        None => loader::load(&opts.load)?,
        Some(path) => {
            let object = std::fs::read(path)
                .with_context(|| format!("--datapath-object {}: cannot read", path.display()))?;
            info!(object = %path.display(), "programs from --datapath-object, not the built-in ones");
            loader::load_object(&opts.load, &object)?
        }
    };
    attach::load_programs(&mut ebpf, opts.cgroup.is_some())?;
    if let Err(e) = crate::datapath::events::follow(&mut ebpf) {
        warn!(error = %format!("{e:#}"), "datapath events not followed");
    }
    let mut maps = ServiceMaps::from_ebpf(&mut ebpf)?;
    let mut ct = Conntrack::from_ebpf(&mut ebpf)?;
    let held = maps.read()?;
    info!(
        pin_path = %opts.load.pin_dir.display(),
        entries = held.services.len(),
        "maps opened; existing entries adopted"
    );
    let mut ext = ExternalMaps::from_ebpf(&mut ebpf)?;
    let mut last_snat = None;
    opts.external.sync(&mut ext, &mut last_snat);
    let mut health = HealthServers::default();
    let mut pipeline = Pipeline::new(
        held,
        ModelConfig {
            proxy_name: opts.service_proxy_name.clone(),
            service_cidrs: opts.service_cidrs.clone(),
            node_name: opts.external.node_name.clone(),
            node_port_range: opts.external.node_port_range,
            default_scheduler: opts.scheduler,
            maglev_table_size: opts.maglev_table_size,
        },
    );
    let status = Shared::default();
    // Everything is to program until the first sync has run.
    queued(&status);
    if let Some(addr) = opts.metrics_addr {
        crate::metrics::serve(addr, status.clone(), opts.load.pin_dir.clone()).await?;
        count_datapath_maps(&status, &opts.load.pin_dir, opts.map_fill_interval);
    }
    if let Some(addr) = opts.healthz_addr {
        crate::healthz::serve(addr, status.clone(), opts.health_timeout).await?;
    }
    let mut memory = Memory {
        map_max: loader::max_entries(&opts.load),
        ..Memory::default()
    };
    let mut links =
        Attachments::new(&opts.load.pin_dir, selector, xdp_selector)?.with_xdp_mode(opts.xdp_mode);
    links.sync(&mut ebpf);
    attach::pin_stages(&ebpf, &opts.load.pin_dir)?;
    if let Some(cg) = &opts.cgroup {
        attach::attach_cgroup(&mut ebpf, cg, &opts.load.pin_dir)?;
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut source = open_source(&opts.source).await?;
    // Until the source is complete (the API may be away for a while) the
    // maps keep what they hold, and new pod interfaces still get attached.
    let mut rescan = tokio::time::interval(IFACE_RESCAN);
    loop {
        tokio::select! {
            _ = source.ready() => break,
            _ = rescan.tick() => {
                links.sync(&mut ebpf);
                opts.external.sync(&mut ext, &mut last_snat);
            }
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
        }
    }
    sync(
        &mut source,
        &mut maps,
        &mut ext,
        &mut ct,
        &mut pipeline,
        &status,
        &mut memory,
    );
    health.sync(&pipeline.desired().health_checks).await;
    info!(interfaces = ?links.interfaces(), xdp_interfaces = ?links.xdp_interfaces(), "agent ready");

    let mut tick = tokio::time::interval(opts.poll_interval);
    let mut last_scan = Instant::now();
    let mut last_sync = Instant::now();
    // When the next sync runs, once something changed.
    let mut due: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Frontends that did not fit are retried once a second.
                let retry = pipeline.pending() && last_sync.elapsed() >= RETRY_EVERY;
                if retry || source.changed() {
                    due.get_or_insert(last_sync + opts.min_sync_interval);
                    queued(&status);
                } else if due.is_none() {
                    // Nothing waits (a change that failed to load may have
                    // been undone): healthy again.
                    status.update(|s| s.queued_at_ms = None);
                }
                if last_scan.elapsed() >= IFACE_RESCAN {
                    links.sync(&mut ebpf);
                    opts.external.sync(&mut ext, &mut last_snat);
                    last_scan = Instant::now();
                }
            }
            _ = source.event() => {
                if source.changed() {
                    due.get_or_insert(last_sync + opts.min_sync_interval);
                    queued(&status);
                }
                let (_, failing) = source.health();
                status.update(|s| s.source_failing = failing);
            }
            _ = sleep_until(due), if due.is_some() => {
                sync(&mut source, &mut maps, &mut ext, &mut ct, &mut pipeline, &status, &mut memory);
                health.sync(&pipeline.desired().health_checks).await;
                last_sync = Instant::now();
                due = None;
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!(
        "shutting down; programs stay attached through pinned links, maps stay pinned (lb-agent cleanup removes both)"
    );
    Ok(())
}

async fn open_source(opts: &SourceOptions) -> Result<Source> {
    Ok(match opts {
        SourceOptions::Manifests(path) => Source::Files(Box::new(FileSource::new(path))),
        SourceOptions::Kube {
            kubeconfig,
            node_name,
        } => {
            let client = crate::source::kube::client(kubeconfig.as_deref()).await?;
            if node_name.is_none() {
                info!("no --node-name: the Node object is not watched");
            }
            info!("following the Kubernetes API (read-only)");
            Source::Kube(Box::new(KubeSource::start(client, node_name.clone())))
        }
    })
}

/// Warns once per EndpointSlice that belongs to no known Service (it may
/// only be early: its Service can still arrive, and then it serves).
fn warn_orphans(store: &ObjectStore, warned: &mut BTreeSet<NsName>) {
    let now = store.orphan_slices();
    let current: BTreeSet<NsName> = now.iter().map(|(s, _)| s.clone()).collect();
    for (slice, svc) in now {
        if warned.contains(&slice) {
            continue;
        }
        match svc {
            Some(svc) => warn!(
                "EndpointSlice {slice}: its Service {svc} does not exist; not programmed until it does"
            ),
            None => warn!(
                "EndpointSlice {slice}: field metadata.labels[kubernetes.io/service-name] is missing; not programmed"
            ),
        }
        warned.insert(slice);
    }
    warned.retain(|s| current.contains(s));
}

/// Notes that a change waits to be programmed (the oldest one counts).
fn queued(status: &Shared) {
    status.update(|s| {
        s.queued_at_ms.get_or_insert_with(crate::healthz::now_ms);
    });
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(at) = due {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// What one sync leaves the next.
#[derive(Default)]
struct Memory {
    /// Slices of missing Services already warned about.
    orphans: BTreeSet<NsName>,
    /// Endpoint addresses (see `sync`'s purge).
    endpoints: std::collections::HashSet<std::net::IpAddr>,
    /// Each written map's most entries, by name (for the fill levels).
    map_max: std::collections::BTreeMap<String, u32>,
}

/// One pass: what changed in the source -> store -> pipeline -> map writes.
fn sync(
    source: &mut Source,
    maps: &mut ServiceMaps,
    ext: &mut ExternalMaps,
    ct: &mut Conntrack,
    pipeline: &mut Pipeline,
    status: &Shared,
    memory: &mut Memory,
) {
    let Memory {
        orphans,
        endpoints,
        map_max,
    } = memory;
    let started = Instant::now();
    let problems = match source.refresh() {
        Ok(p) => p,
        Err(e) => {
            warn!("{e}; keeping what is programmed");
            return;
        }
    };
    for e in &problems {
        warn!("{e}");
    }
    warn_orphans(source.store(), orphans);
    let dirty = source.take_dirty();
    let update = pipeline.update(source.store(), &dirty);
    // Source ranges go in before the masters that use them, and out after.
    if let Err(e) = ext.sync_source_ranges(pipeline.desired(), false) {
        warn!(error = %format!("{e:#}"), "writing loadBalancerSourceRanges failed");
    }
    let report = pipeline.apply(update, maps);
    if let Err(e) = ext.sync_source_ranges(pipeline.desired(), true) {
        warn!(error = %format!("{e:#}"), "removing loadBalancerSourceRanges failed");
    }
    for msg in &report.refused {
        warn!("{msg}");
    }
    for (what, error) in &report.failed {
        warn!(service = %what, error = %error, "not programmed (retried when room returns)");
    }
    info!(
        frontends = report.frontends,
        writes = report.writes,
        failed = report.failed.len(),
        "maps reconciled"
    );
    // Flows to backends that just went are purged now, not when the LRU
    // gets round to them. A backend goes with its slot, or when its
    // address leaves every slice: a terminating endpoint lost its slot
    // earlier (its flows were kept, to drain) and leaves with no map
    // write, yet its flows must go (UDP ones would stay on it forever).
    if report.removals > 0 || !dirty.is_empty() {
        let present = conntrack::endpoint_addresses(source.store());
        let left = endpoints.iter().any(|a| !present.contains(a));
        if report.removals > 0 || left {
            match ct.purge(&present, &pipeline.frontend_ids()) {
                Ok(0) => {}
                Ok(n) => info!(entries = n, "conntrack: flows to removed backends purged"),
                Err(e) => warn!(error = %format!("{e:#}"), "conntrack purge failed"),
            }
        }
        *endpoints = present;
    }
    let (from, failing) = source.health();
    let now = crate::healthz::now_ms();
    status.update(|s| {
        s.sync_seconds.observe(started.elapsed().as_secs_f64());
        if let Some(at) = s.queued_at_ms {
            s.programming_seconds
                .observe(now.saturating_sub(at) as f64 / 1e3);
        }
        s.service_changes += dirty.len() as u64;
        s.maps = pipeline
            .map_entries()
            .into_iter()
            .map(|(name, n)| {
                let max = map_max.get(&name).copied().unwrap_or(0);
                (name, n, max)
            })
            .collect();
        s.source = from.to_string();
        s.source_failing = failing;
        s.ready = true;
        s.frontends = pipeline.frontends();
        s.not_programmed = pipeline.left_out().cloned().collect();
        s.syncs += 1;
        s.writes += report.writes as u64;
        s.refused = report.refused.clone();
        s.queued_at_ms = None;
        s.last_updated_ms = now;
    });
}
