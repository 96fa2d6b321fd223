//! Loading the object with its maps pinned (reused when already pinned, so
//! a restarted agent finds the state the datapath is using).
use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader};
use lb_common::{MAP_BACKENDS, MAP_CONNTRACK, MAP_SERVICES, MAP_SOCK_REVNAT, MAP_SVC_INFO};

use super::{EBPF_OBJECT, bpffs};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub pin_dir: PathBuf,
    pub services_max: u32,
    pub backends_max: u32,
    pub conntrack_max: u32,
    pub sock_max: u32,
    /// Most frontends (Service IP:port/proto): the size of the info map.
    pub frontends_max: u32,
}

pub fn load(opts: &LoadOptions) -> Result<Ebpf> {
    bpffs::prepare(&opts.pin_dir)?;
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(&opts.pin_dir)
        .map_max_entries(MAP_SERVICES, opts.services_max)
        .map_max_entries(MAP_BACKENDS, opts.backends_max)
        .map_max_entries(MAP_CONNTRACK, opts.conntrack_max)
        .map_max_entries(MAP_SOCK_REVNAT, opts.sock_max)
        .map_max_entries(MAP_SVC_INFO, opts.frontends_max);
    loader.load(EBPF_OBJECT).with_context(|| {
        format!(
            "loading the datapath programs (maps pinned under {})",
            opts.pin_dir.display()
        )
    })
}
