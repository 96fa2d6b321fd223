//! What the datapath holds, read from the pins alone (`lb-agent status`
//! works while the agent is down): where programs are attached (the
//! pinned links), and each pinned map's fill level.
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{MapData, MapType};
use lb_common::ALL_MAPS;
use serde::Serialize;

use super::attach::links_dir;

/// One pinned map.
#[derive(Debug, Serialize)]
pub struct MapFill {
    pub name: String,
    pub kind: String,
    /// Entries held (hash maps and tries; None for arrays, which always
    /// hold `max_entries`).
    pub entries: Option<usize>,
    pub max_entries: u32,
}

/// Every map of this build pinned under `dir`, with its fill level.
pub fn maps(dir: &Path) -> Result<Vec<MapFill>> {
    fills(dir, &ALL_MAPS)
}

/// The maps the datapath fills (the agent writes the others and knows
/// their fill from what it wrote).
pub const DATAPATH_FILLED: [&str; 8] = [
    lb_common::MAP_CONNTRACK,
    lb_common::MAP_CONNTRACK6,
    lb_common::MAP_SNAT,
    lb_common::MAP_SNAT6,
    lb_common::MAP_SOCK_REVNAT,
    lb_common::MAP_SOCK_REVNAT6,
    lb_common::MAP_AFFINITY,
    lb_common::MAP_LC_SOCK,
];

/// The maps named `names` pinned under `dir`, with their fill levels.
pub fn fills(dir: &Path, names: &[&str]) -> Result<Vec<MapFill>> {
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let info = data.info()?;
        let kind = info.map_type()?;
        let hashed = matches!(
            kind,
            MapType::Hash
                | MapType::LruHash
                | MapType::PerCpuHash
                | MapType::LruPerCpuHash
                | MapType::LpmTrie
        );
        let entries = if hashed {
            Some(
                count(&data, &kind, info.key_size(), info.value_size())
                    .with_context(|| format!("counting the entries of {}", path.display()))?,
            )
        } else {
            None
        };
        out.push(MapFill {
            name: name.to_string(),
            kind: format!("{kind:?}"),
            entries,
            max_entries: info.max_entries(),
        });
    }
    Ok(out)
}

/// The entries of a hash map: read in batches where the kernel batches
/// this map type (a syscall per 4096 entries), else key after key.
fn count(map: &MapData, kind: &MapType, key_size: u32, value_size: u32) -> Result<usize> {
    // A per-CPU map's batch carries a value per CPU: not sized for here.
    if matches!(kind, MapType::PerCpuHash | MapType::LruPerCpuHash) {
        return count_keys(map, key_size);
    }
    match super::batch::count(
        map.fd().as_fd(),
        key_size as usize,
        value_size as usize,
        4096,
    ) {
        Ok(n) => Ok(n),
        Err(e) if e.unsupported() => count_keys(map, key_size),
        Err(e) => Err(e.error.into()),
    }
}

/// The same, one key after another (a read-only walk, as `bpftool map
/// dump` does): for LPM tries, which have no batch operations.
fn count_keys(map: &MapData, key_size: u32) -> Result<usize> {
    let mut cur: Option<Vec<u8>> = None;
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0;
    loop {
        let mut attr = super::batch::ElemAttr::new(
            map.fd().as_fd(),
            cur.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
            next.as_mut_ptr(),
        );
        const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
        // SAFETY: the buffers outlive the call and hold key_size bytes.
        match unsafe { super::batch::sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e.into()),
        }
        n += 1;
        cur = Some(next.clone());
    }
}

/// The pinned links: which program is attached where, as people read it.
pub fn links(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(links_dir(dir)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .map(|name| describe_link(&name))
        .collect();
    out.sort();
    out
}

/// A link pin's name (`tc-ingress-<ifindex>`, `xdp-<ifindex>`,
/// `cgroup-<program>`) in words, with the interface's name when it is in
/// this network namespace.
fn describe_link(name: &str) -> String {
    for (prefix, what) in [
        ("tc-ingress-", "tc ingress"),
        ("tc-egress-", "tc egress"),
        ("xdp-", "XDP"),
    ] {
        if let Some(index) = name
            .strip_prefix(prefix)
            .and_then(|i| i.parse::<u32>().ok())
        {
            let ifname = super::ifaces::list()
                .into_iter()
                .find(|i| i.index == index)
                .map_or_else(|| "not in this namespace".into(), |i| i.name);
            return format!("{what} on ifindex {index} ({ifname})");
        }
    }
    if let Some(p) = name.strip_prefix("cgroup-") {
        return format!("socket hook {p} on the cgroup");
    }
    if let Some(hook) = name
        .strip_prefix("v6-")
        .and_then(|n| n.strip_suffix("-stages"))
    {
        return format!("IPv6 stage programs of the {hook} hooks (program array)");
    }
    name.to_string()
}
