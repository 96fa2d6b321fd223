//! Attaching programs: tc (tcx) ingress on the selected interfaces,
//! followed as interfaces come and go, and the socket hooks on a cgroup.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, tc::SchedClassifierLinkId,
    },
};
use tracing::{info, warn};

use super::{PROG_TC_INGRESS, SOCK_PROGRAMS, ifaces};

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(PROG_TC_INGRESS)
        .with_context(|| format!("program {PROG_TC_INGRESS} missing from the object"))?
        .try_into()
        .context("tc program has the wrong type")
}

/// Loads every program into the kernel (verifier runs here).
pub fn load_programs(ebpf: &mut Ebpf, with_sock: bool) -> Result<()> {
    tc_program(ebpf)?
        .load()
        .with_context(|| format!("loading {PROG_TC_INGRESS}"))?;
    if with_sock {
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
    }
    Ok(())
}

/// tc attachments we own, by interface name.
#[derive(Default)]
pub struct TcAttachments {
    links: BTreeMap<String, (u32, SchedClassifierLinkId)>,
}

impl TcAttachments {
    pub fn interfaces(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Attaches to every selected interface we are not on yet and forgets
    /// interfaces that are gone (the kernel drops their links itself).
    pub fn sync(&mut self, ebpf: &mut Ebpf, selector: &ifaces::Selector) {
        let present: BTreeMap<String, u32> = ifaces::list()
            .into_iter()
            .filter(|i| selector.matches(&i.name))
            .map(|i| (i.name, i.index))
            .collect();
        let stale: Vec<String> = self
            .links
            .iter()
            .filter(|(name, (idx, _))| present.get(*name) != Some(idx))
            .map(|(name, _)| name.clone())
            .collect();
        let Ok(prog) = tc_program(ebpf) else { return };
        for name in stale {
            if let Some((_, id)) = self.links.remove(&name) {
                // The interface is gone or was recreated; the old link may
                // already be dead, so dropping it is all that is left to do.
                let _ = prog.take_link(id);
                info!(interface = %name, "interface gone, tc link released");
            }
        }
        for (name, index) in present {
            if self.links.contains_key(&name) {
                continue;
            }
            match prog.attach(&name, TcAttachType::Ingress) {
                Ok(id) => {
                    info!(interface = %name, ifindex = index, "tc ingress attached");
                    self.links.insert(name, (index, id));
                }
                Err(e) => warn!(interface = %name, error = %e, "cannot attach tc ingress"),
            }
        }
    }
}

/// Attaches the socket hooks (node-originated traffic) to `cgroup`.
pub fn attach_cgroup(ebpf: &mut Ebpf, cgroup: &Path) -> Result<()> {
    let dir = std::fs::File::open(cgroup)
        .with_context(|| format!("--cgroup {}: cannot open", cgroup.display()))?;
    for name in SOCK_PROGRAMS {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        // bpf_link_create takes no flags: cgroup links always coexist
        // with other programs (multi-attach); `Single` passes 0.
        p.attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
    }
    info!(cgroup = %cgroup.display(), "socket hooks attached");
    Ok(())
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? == "cgroup2" {
            left.split_whitespace().nth(4).map(Into::into)
        } else {
            None
        }
    })
}
