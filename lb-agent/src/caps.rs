//! Least privilege: the agent needs CAP_BPF (load programs, maps),
//! CAP_PERFMON (pointer arithmetic on packets in programs),
//! CAP_NET_ADMIN (tc and cgroup socket hooks), and, on kernels before
//! 5.11 only, CAP_SYS_RESOURCE (BPF memory was charged to RLIMIT_MEMLOCK;
//! since 5.11 it is charged to the memory cgroup). Nothing more, except
//! CAP_SYS_ADMIN when it must mount bpffs itself (none is mounted where
//! --pin-path lives).
use anyhow::{Result, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities `lb-agent run` needs on this kernel, with names.
pub fn required() -> Vec<(u32, &'static str)> {
    let mut caps = vec![
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_PERFMON, "CAP_PERFMON"),
    ];
    if kernel_before(5, 11) {
        caps.push((CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE"));
    }
    caps
}

fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) < (major, minor)
}

/// This process's effective capability set, from /proc/self/status.
fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Fails, naming every missing capability, unless all required ones are held.
pub fn check() -> Result<()> {
    let eff = effective();
    let missing: Vec<&str> = required()
        .into_iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if !missing.is_empty() {
        let all: Vec<&str> = required().into_iter().map(|(_, n)| n).collect();
        bail!(
            "lb-agent run needs {}; missing: {}",
            all.join(", "),
            missing.join(", ")
        );
    }
    Ok(())
}
