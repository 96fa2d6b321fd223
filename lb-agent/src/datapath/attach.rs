//! Attaching programs: tc (tcx) ingress on the selected interfaces,
//! followed as interfaces come and go, and the socket hooks on a cgroup,
//! all through pinned links.
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
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

/// Where link pins live: `<pin-path>/links/`. Pinned links keep the
/// programs attached while no agent runs (restarts drop nothing); a new
/// agent swaps its programs into them. `lb-agent cleanup` removes them.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn tc_pin(pin_dir: &Path, ifindex: u32) -> PathBuf {
    links_dir(pin_dir).join(format!("tc-ingress-{ifindex}"))
}

/// Removes a link pin; the link goes with it unless someone else holds it.
fn unpin(path: &Path) {
    match PinnedLink::from_pin(path) {
        Ok(link) => drop(link.unpin()),
        Err(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// tc attachments, by interface index (names can be reused).
pub struct TcAttachments {
    pin_dir: PathBuf,
    attached: BTreeMap<u32, String>,
}

impl TcAttachments {
    pub fn new(pin_dir: &Path) -> Result<Self> {
        let dir = links_dir(pin_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            attached: BTreeMap::new(),
        })
    }

    pub fn interfaces(&self) -> Vec<String> {
        self.attached.values().cloned().collect()
    }

    /// Puts our program on every selected interface: into the pinned link
    /// a previous agent left (an atomic program swap, no packet sees
    /// neither), or a new pinned link. Links of interfaces that are gone or
    /// no longer selected are unpinned.
    pub fn sync(&mut self, ebpf: &mut Ebpf, selector: &ifaces::Selector) {
        let present: BTreeMap<u32, String> = ifaces::list()
            .into_iter()
            .filter(|i| selector.matches(&i.name))
            .map(|i| (i.index, i.name))
            .collect();
        self.attached.retain(|idx, _| present.contains_key(idx));
        self.prune_pins(&present);
        let Ok(prog) = tc_program(ebpf) else { return };
        for (index, name) in present {
            if self.attached.contains_key(&index) {
                continue;
            }
            match attach_tc(prog, &self.pin_dir, index, &name) {
                Ok(how) => {
                    info!(interface = %name, ifindex = index, how, "tc ingress attached");
                    self.attached.insert(index, name);
                }
                Err(e) => {
                    warn!(interface = %name, error = %format!("{e:#}"), "cannot attach tc ingress")
                }
            }
        }
    }

    fn prune_pins(&self, present: &BTreeMap<u32, String>) {
        let Ok(entries) = std::fs::read_dir(links_dir(&self.pin_dir)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(idx) = name
                .strip_prefix("tc-ingress-")
                .and_then(|i| i.parse::<u32>().ok())
            else {
                continue;
            };
            if !present.contains_key(&idx) {
                unpin(&e.path());
                info!(
                    ifindex = idx,
                    "interface gone or deselected, tc link unpinned"
                );
            }
        }
    }
}

fn attach_tc(
    prog: &mut SchedClassifier,
    pin_dir: &Path,
    index: u32,
    name: &str,
) -> Result<&'static str> {
    let pin = tc_pin(pin_dir, index);
    if let Ok(old) = PinnedLink::from_pin(&pin) {
        let link = SchedClassifierLink::try_from(FdLink::from(old))
            .context("pinned link is not a tcx link")?;
        prog.attach_to_link(link)
            .context("swapping the program into the pinned link")?;
        return Ok("program swapped into the pinned link");
    }
    let id = prog
        .attach(name, TcAttachType::Ingress)
        .with_context(|| format!("attaching to {name}"))?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("tc link is not an fd link (kernel < 6.6?)")?;
    link.pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok("new pinned link")
}

/// Attaches the socket hooks (node-originated traffic) to `cgroup` with
/// pinned links. Links a previous agent pinned are released only after
/// ours are in place: while both run, the second finds the address
/// already translated and leaves it alone.
pub fn attach_cgroup(ebpf: &mut Ebpf, cgroup: &Path, pin_dir: &Path) -> Result<()> {
    let dir = std::fs::File::open(cgroup)
        .with_context(|| format!("--cgroup {}: cannot open", cgroup.display()))?;
    for name in SOCK_PROGRAMS {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        // bpf_link_create takes no flags: cgroup links always coexist
        // with other programs (multi-attach); `Single` passes 0.
        let id = p
            .attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
        let link: FdLink = p.take_link(id)?.try_into()?;
        let pin = links_dir(pin_dir).join(format!("cgroup-{name}"));
        if pin.exists() {
            unpin(&pin);
        }
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
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
