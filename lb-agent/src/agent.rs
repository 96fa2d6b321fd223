//! `lb-agent run`: load and attach the datapath, adopt what the pinned
//! maps already hold, then keep them equal to the manifests.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::datapath::{
    attach::{self, TcAttachments},
    ifaces::Selector,
    loader::{self, LoadOptions},
    maps::ServiceMaps,
};
use crate::model;
use crate::source::files::FileSource;
use crate::status::Shared;
use crate::sync::Pipeline;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub manifests: PathBuf,
    pub load: LoadOptions,
    pub interfaces: Vec<String>,
    pub exclude_interfaces: Vec<String>,
    pub cgroup: Option<PathBuf>,
    pub poll_interval: Duration,
    /// When set, only VIPs inside these prefixes are programmed.
    pub service_cidrs: Vec<model::Cidr>,
    /// Where `/metrics`, `/readyz` and `/status` are served (None: off).
    pub metrics_addr: Option<SocketAddr>,
}

/// How often interfaces are re-listed to pick up new pods.
const IFACE_RESCAN: Duration = Duration::from_secs(1);
/// How often frontends that did not fit in the maps are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

pub async fn run(opts: RunOptions) -> Result<()> {
    crate::caps::check()?;
    let selector = Selector::new(&opts.interfaces, &opts.exclude_interfaces)?;
    let mut ebpf = loader::load(&opts.load)?;
    attach::load_programs(&mut ebpf, opts.cgroup.is_some())?;
    let mut maps = ServiceMaps::from_ebpf(&mut ebpf)?;
    let held = maps.read()?;
    info!(
        pin_path = %opts.load.pin_dir.display(),
        entries = held.services.len(),
        "maps opened; existing entries adopted"
    );
    let mut pipeline = Pipeline::new(held, opts.service_cidrs.clone());
    let status = Shared::default();
    if let Some(addr) = opts.metrics_addr {
        crate::metrics::serve(addr, status.clone(), opts.load.pin_dir.clone()).await?;
    }
    let mut tc = TcAttachments::new(&opts.load.pin_dir)?;
    tc.sync(&mut ebpf, &selector);
    if let Some(cg) = &opts.cgroup {
        attach::attach_cgroup(&mut ebpf, cg, &opts.load.pin_dir)?;
    }
    let mut source = FileSource::new(&opts.manifests);
    sync(&mut source, &mut maps, &mut pipeline, &status);
    info!(interfaces = ?tc.interfaces(), "agent ready");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(opts.poll_interval);
    let mut last_scan = Instant::now();
    let mut last_sync = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Frontends that did not fit are retried once a second.
                let retry = pipeline.pending() && last_sync.elapsed() >= RETRY_EVERY;
                if source.changed() || retry {
                    sync(&mut source, &mut maps, &mut pipeline, &status);
                    last_sync = Instant::now();
                }
                if last_scan.elapsed() >= IFACE_RESCAN {
                    tc.sync(&mut ebpf, &selector);
                    last_scan = Instant::now();
                }
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

/// One pass: changed manifests -> store -> pipeline -> map writes.
fn sync(source: &mut FileSource, maps: &mut ServiceMaps, pipeline: &mut Pipeline, status: &Shared) {
    let reload = match source.load() {
        Ok(r) => r,
        Err(e) => {
            warn!("{e}; keeping what is programmed");
            return;
        }
    };
    for e in &reload.errors {
        warn!("{e}");
    }
    let dirty = source.take_dirty();
    let report = pipeline.sync(source.store(), &dirty, maps);
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
    status.update(|s| {
        s.ready = true;
        s.frontends = pipeline.frontends();
        s.not_programmed = pipeline.left_out().cloned().collect();
        s.syncs += 1;
        s.writes += report.writes as u64;
        s.refused = report.refused.clone();
    });
}
