//! Loading the object with its maps pinned (reused when already pinned, so
//! a restarted agent finds the state the datapath is using).
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use aya::{Ebpf, EbpfLoader, maps::MapInfo};
use lb_common::{
    ALL_MAPS, AffinityKey, AffinityValue, Backend, Backend6, Config, CtKey, CtKey6, CtValue,
    CtValue6, DEFAULT_AFFINITY_MAX, DEFAULT_MAGLEV_MAX, MAP_AFFINITY, MAP_BACKENDS, MAP_BACKENDS6,
    MAP_CONFIG, MAP_CONNTRACK, MAP_CONNTRACK6, MAP_LC_SOCK, MAP_LEAST_CONN, MAP_MAGLEV,
    MAP_MEMBERS, MAP_NODE_ADDRS, MAP_SCHED, MAP_SERVICES, MAP_SERVICES6, MAP_SNAT, MAP_SNAT6,
    MAP_SOCK_REVNAT, MAP_SOCK_REVNAT6, MAP_SOURCE_RANGES, MAP_STATS, MAP_SVC_INFO, MAP_SVC_STATS,
    MemberKey, NODE_ADDRS_MAX, NatValue, NatValue6, NodeAddrKey, SOURCE_RANGES_MAX, STAT_SLOTS,
    SchedValue, ServiceKey, ServiceKey6, ServiceValue, SockKey, SockKey6, SockValue, SockValue6,
    SourceRangeKey, SvcCounters, SvcInfo,
};
use tracing::warn;

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

/// (name, key bytes, value bytes, max entries, flag that sizes it) of
/// every map, as this build lays them out.
fn layouts(opts: &LoadOptions) -> [(&'static str, usize, usize, u32, &'static str); 22] {
    use std::mem::size_of;
    [
        (
            MAP_SERVICES,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
            opts.services_max,
            "--services-max",
        ),
        (
            MAP_BACKENDS,
            size_of::<u32>(),
            size_of::<Backend>(),
            opts.backends_max,
            "--backends-max",
        ),
        (
            MAP_CONNTRACK,
            size_of::<CtKey>(),
            size_of::<CtValue>(),
            opts.conntrack_max,
            "--conntrack-max",
        ),
        (
            MAP_SOCK_REVNAT,
            size_of::<SockKey>(),
            size_of::<SockValue>(),
            opts.sock_max,
            "--sock-max",
        ),
        (
            MAP_SVC_INFO,
            size_of::<u32>(),
            size_of::<SvcInfo>(),
            opts.frontends_max,
            "--frontends-max",
        ),
        (
            MAP_STATS,
            size_of::<u32>(),
            size_of::<u64>(),
            STAT_SLOTS,
            "(fixed)",
        ),
        (
            MAP_NODE_ADDRS,
            size_of::<NodeAddrKey>(),
            size_of::<u32>(),
            NODE_ADDRS_MAX,
            "(fixed)",
        ),
        // Sized like conntrack: at most one entry per conntrack entry.
        (
            MAP_SNAT,
            size_of::<CtKey>(),
            size_of::<NatValue>(),
            opts.conntrack_max,
            "--conntrack-max",
        ),
        (
            MAP_CONFIG,
            size_of::<u32>(),
            size_of::<Config>(),
            1,
            "(fixed)",
        ),
        (
            MAP_SOURCE_RANGES,
            4 + size_of::<SourceRangeKey>(),
            size_of::<u32>(),
            SOURCE_RANGES_MAX,
            "(fixed)",
        ),
        (
            MAP_AFFINITY,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
            DEFAULT_AFFINITY_MAX,
            "(fixed)",
        ),
        (
            MAP_SCHED,
            size_of::<u32>(),
            size_of::<SchedValue>(),
            opts.frontends_max,
            "--frontends-max",
        ),
        (
            MAP_MAGLEV,
            size_of::<u32>(),
            size_of::<u32>(),
            DEFAULT_MAGLEV_MAX,
            "(fixed)",
        ),
        (
            MAP_SVC_STATS,
            size_of::<u32>(),
            size_of::<SvcCounters>(),
            opts.frontends_max,
            "--frontends-max",
        ),
        (
            MAP_MEMBERS,
            size_of::<MemberKey>(),
            size_of::<u32>(),
            opts.services_max,
            "--services-max",
        ),
        (
            MAP_LEAST_CONN,
            size_of::<u32>(),
            size_of::<u64>(),
            opts.backends_max,
            "--backends-max",
        ),
        (
            MAP_LC_SOCK,
            size_of::<u64>(),
            size_of::<u32>(),
            opts.sock_max,
            "--sock-max",
        ),
        // IPv6, sized by the same flags as their IPv4 counterparts.
        (
            MAP_SERVICES6,
            size_of::<ServiceKey6>(),
            size_of::<ServiceValue>(),
            opts.services_max,
            "--services-max",
        ),
        (
            MAP_BACKENDS6,
            size_of::<u32>(),
            size_of::<Backend6>(),
            opts.backends_max,
            "--backends-max",
        ),
        (
            MAP_CONNTRACK6,
            size_of::<CtKey6>(),
            size_of::<CtValue6>(),
            opts.conntrack_max,
            "--conntrack-max",
        ),
        (
            MAP_SOCK_REVNAT6,
            size_of::<SockKey6>(),
            size_of::<SockValue6>(),
            opts.sock_max,
            "--sock-max",
        ),
        (
            MAP_SNAT6,
            size_of::<CtKey6>(),
            size_of::<NatValue6>(),
            opts.conntrack_max,
            "--conntrack-max",
        ),
    ]
}

/// Refuses pinned maps whose layout or size is not this build's: aya would
/// reuse them as they are, and the programs would misread them. Maps of
/// other layout versions (other names) are left alone and reported.
pub fn check_pinned(opts: &LoadOptions) -> Result<()> {
    for (name, key, value, max, flag) in layouts(opts) {
        let path = opts.pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        if info.key_size() as usize != key || info.value_size() as usize != value {
            bail!(
                "pinned map {} has {}-byte keys and {}-byte values, this agent's layout has {key} and {value}: \
                 it was written by another build and is not reused (run `lb-agent cleanup --pin-path {}` first)",
                path.display(),
                info.key_size(),
                info.value_size(),
                opts.pin_dir.display()
            );
        }
        if info.max_entries() != max {
            bail!(
                "pinned map {} holds at most {} entries but {flag} asks for {max}: resizing a live map needs a \
                 migration this version does not do; keep the size or run `lb-agent cleanup --pin-path {}` first",
                path.display(),
                info.max_entries(),
                opts.pin_dir.display()
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir(&opts.pin_dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("flb_") && !ALL_MAPS.contains(&n.as_str()) {
                warn!(map = %n, "pinned map of another layout version is not used; `lb-agent cleanup` removes it");
            }
        }
    }
    Ok(())
}

/// Each map's most entries under `opts`, by name.
pub fn max_entries(opts: &LoadOptions) -> std::collections::BTreeMap<String, u32> {
    layouts(opts)
        .iter()
        .map(|(name, _, _, max, _)| (name.to_string(), *max))
        .collect()
}

pub fn load(opts: &LoadOptions) -> Result<Ebpf> {
    load_object(opts, EBPF_OBJECT)
}

/// Like [`load`], with the programs from `object` instead of the built-in
/// ones (another build of `lb-ebpf` with the same map layouts).
pub fn load_object(opts: &LoadOptions, object: &[u8]) -> Result<Ebpf> {
    bpffs::prepare(&opts.pin_dir)?;
    check_pinned(opts)?;
    let mut loader = EbpfLoader::new();
    let log_level = super::events::level();
    loader
        .default_map_pin_directory(&opts.pin_dir)
        // Absent from builds without datapath events (`--datapath-object`).
        .override_global(aya_log::LEVEL, &log_level, false)
        .map_max_entries(MAP_SERVICES, opts.services_max)
        .map_max_entries(MAP_BACKENDS, opts.backends_max)
        .map_max_entries(MAP_CONNTRACK, opts.conntrack_max)
        .map_max_entries(MAP_SNAT, opts.conntrack_max)
        .map_max_entries(MAP_SOCK_REVNAT, opts.sock_max)
        .map_max_entries(MAP_SERVICES6, opts.services_max)
        .map_max_entries(MAP_BACKENDS6, opts.backends_max)
        .map_max_entries(MAP_CONNTRACK6, opts.conntrack_max)
        .map_max_entries(MAP_SNAT6, opts.conntrack_max)
        .map_max_entries(MAP_SOCK_REVNAT6, opts.sock_max)
        .map_max_entries(MAP_SVC_INFO, opts.frontends_max)
        .map_max_entries(MAP_SCHED, opts.frontends_max)
        .map_max_entries(MAP_MEMBERS, opts.services_max)
        .map_max_entries(MAP_SVC_STATS, opts.frontends_max)
        .map_max_entries(MAP_LEAST_CONN, opts.backends_max)
        .map_max_entries(MAP_LC_SOCK, opts.sock_max);
    loader.load(object).with_context(|| {
        format!(
            "loading the datapath programs (maps pinned under {})",
            opts.pin_dir.display()
        )
    })
}
