//! Attaching programs: tc (tcx) ingress and egress on the selected pod-side
//! interfaces, XDP on the selected wire-facing ones, followed as
//! interfaces come and go, and the socket hooks on a cgroup, all through
//! pinned links.
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use lb_common::{
    MAP_V6_TC_PROGS, MAP_V6_XDP_PROGS, V6_SLOT_DSR, V6_SLOT_EGRESS, V6_SLOT_ICMP, V6_SLOT_INGRESS,
    V6_SLOT_NEW_FLOW, V6_SLOT_REJECT, V6_SLOT_TRACKED,
};
use tracing::{info, warn};

use super::{PROG_SOCK_RELEASE, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP, SOCK_PROGRAMS, ifaces};

/// Where a program attaches on an interface.
#[derive(Clone, Copy)]
enum Hook {
    Tc(TcAttachType),
    Xdp,
}

/// One program on every interface of a group: (program, hook, pin name
/// prefix; the pin is `<prefix><ifindex>`).
type HookSpec = (&'static str, Hook, &'static str);

/// What the pod-side interfaces get.
const TC_HOOKS: &[HookSpec] = &[
    (
        PROG_TC_INGRESS,
        Hook::Tc(TcAttachType::Ingress),
        "tc-ingress-",
    ),
    (PROG_TC_EGRESS, Hook::Tc(TcAttachType::Egress), "tc-egress-"),
];
/// What the wire-facing interfaces get.
const XDP_HOOKS: &[HookSpec] = &[(PROG_XDP, Hook::Xdp, "xdp-")];

fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} has the wrong type"))
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} has the wrong type"))
}

/// The IPv6 stages and their slots in the program arrays the IPv4 hooks
/// and the IPv6 ingress programs tail-call (see
/// `lb_common::MAP_V6_TC_PROGS`).
const V6_TC_STAGES: &[(&str, u32)] = &[
    ("flb_tc_ingress6", V6_SLOT_INGRESS),
    ("flb_tc_egress6", V6_SLOT_EGRESS),
    ("flb_tc_tracked6", V6_SLOT_TRACKED),
    ("flb_tc_new6", V6_SLOT_NEW_FLOW),
    ("flb_tc_reject6", V6_SLOT_REJECT),
    ("flb_tc_icmp6", V6_SLOT_ICMP),
    ("flb_tc_dsr6", V6_SLOT_DSR),
];
const V6_XDP_STAGES: &[(&str, u32)] = &[
    ("flb_xdp6", V6_SLOT_INGRESS),
    ("flb_xdp_tracked6", V6_SLOT_TRACKED),
    ("flb_xdp_new6", V6_SLOT_NEW_FLOW),
];

/// Pins of the stage arrays, beside the links: see [`pin_stages`].
const STAGE_PINS: [(&str, &str); 2] = [
    (MAP_V6_TC_PROGS, "v6-tc-stages"),
    (MAP_V6_XDP_PROGS, "v6-xdp-stages"),
];

/// Loads the IPv6 stages and puts each in its program array's slot.
fn load_stages(ebpf: &mut Ebpf) -> Result<()> {
    let mut fds = Vec::new();
    for (name, slot) in V6_TC_STAGES {
        let p = tc_program(ebpf, name)?;
        p.load().with_context(|| format!("loading {name}"))?;
        fds.push((MAP_V6_TC_PROGS, *slot, p.fd()?.try_clone()?));
    }
    for (name, slot) in V6_XDP_STAGES {
        let p = xdp_program(ebpf, name)?;
        p.load().with_context(|| format!("loading {name}"))?;
        fds.push((MAP_V6_XDP_PROGS, *slot, p.fd()?.try_clone()?));
    }
    for (map, slot, fd) in fds {
        let mut stages: ProgramArray<_> = ebpf
            .map_mut(map)
            .with_context(|| format!("map {map} missing from the object"))?
            .try_into()?;
        stages
            .set(slot, &fd, 0)
            .with_context(|| format!("{map}[{slot}]"))?;
    }
    Ok(())
}

/// Pins this agent's stage arrays under `<pin-path>/links/`, replacing
/// the previous agent's. A program array is emptied when its last
/// holder in user space goes, so the pin is what keeps the attached
/// programs reaching their IPv6 stages while no agent runs. Called once
/// the links carry this agent's programs: until then the previous
/// agent's programs, still attached, use the previous arrays.
pub fn pin_stages(ebpf: &Ebpf, pin_dir: &Path) -> Result<()> {
    for (map, name) in STAGE_PINS {
        let pin = links_dir(pin_dir).join(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", pin.display())),
        }
        ebpf.map(map)
            .with_context(|| format!("map {map} missing from the object"))?
            .pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    Ok(())
}

/// Loads every program into the kernel (verifier runs here).
pub fn load_programs(ebpf: &mut Ebpf, with_sock: bool) -> Result<()> {
    load_stages(ebpf)?;
    for (name, _, _) in TC_HOOKS {
        tc_program(ebpf, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    for (name, _, _) in XDP_HOOKS {
        xdp_program(ebpf, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    if with_sock {
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        sock_release(ebpf)?
            .load()
            .with_context(|| format!("loading {PROG_SOCK_RELEASE}"))?;
    }
    Ok(())
}

/// Where link pins live: `<pin-path>/links/`. Pinned links keep the
/// programs attached while no agent runs (restarts drop nothing); a new
/// agent swaps its programs into them. `lb-agent cleanup` removes them.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn hook_pin(pin_dir: &Path, prefix: &str, ifindex: u32) -> PathBuf {
    links_dir(pin_dir).join(format!("{prefix}{ifindex}"))
}

/// Removes every link pin under `<pin-path>/links/` and waits until the
/// kernel has let go of those links. Unlinking a pin releases its link
/// only later (bpffs frees inodes after an RCU grace period), and
/// `cleanup` must mean nothing is attached once it returns.
pub fn remove_link_pins(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = links_dir(pin_dir);
    let mut removed = Vec::new();
    let mut ids = BTreeSet::new();
    let mut progs = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let path = e.path();
            if let Ok(info) = PinnedLink::from_pin(&path)
                .map(FdLink::from)
                .and_then(|l| l.info())
            {
                ids.insert(info.id());
                progs.insert(info.program_id());
            }
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    match std::fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    // A link on its way out still has its id but no longer opens
    // (ENOENT): count it as present. Listing needs CAP_SYS_ADMIN; without
    // it (EPERM) this cannot wait.
    let link_present = || {
        aya::programs::loaded_links().any(|l| match l {
            Ok(l) => ids.contains(&l.id()),
            Err(aya::programs::links::LinkError::SyscallError(e)) => {
                e.io_error.kind() == std::io::ErrorKind::NotFound
            }
            Err(_) => false,
        })
    };
    while !ids.is_empty() && link_present() {
        if Instant::now() > deadline {
            bail!("links {ids:?} are still attached 5 s after their pins were removed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The kernel frees a link's id before it detaches the program (tcx
    // detaches under the RTNL lock, which namespace teardown can hold for
    // a while), but drops the link's hold on the program only after. So
    // the programs going away is what says nothing is attached any more.
    // Something else may hold them (a running agent): then only warn.
    let prog_present =
        || aya::programs::loaded_programs().any(|p| p.is_ok_and(|p| progs.contains(&p.id())));
    while !progs.is_empty() && prog_present() {
        if Instant::now() > deadline {
            warn!(programs = ?progs, "programs still loaded after their links went: something else holds them");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(removed)
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

/// One group of hooks on the interfaces a selector picks.
struct Group {
    what: &'static str,
    hooks: &'static [HookSpec],
    selector: ifaces::Selector,
    /// By interface index (names can be reused).
    attached: BTreeMap<u32, String>,
}

/// Program attachments on interfaces: tc on pod-side ones, XDP on
/// wire-facing ones.
pub struct Attachments {
    pin_dir: PathBuf,
    groups: [Group; 2],
    xdp_mode: XdpMode,
}

impl Attachments {
    pub fn new(pin_dir: &Path, tc: ifaces::Selector, xdp: ifaces::Selector) -> Result<Self> {
        let dir = links_dir(pin_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let group = |what, hooks, selector| Group {
            what,
            hooks,
            selector,
            attached: BTreeMap::new(),
        };
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            groups: [group("tc", TC_HOOKS, tc), group("xdp", XDP_HOOKS, xdp)],
            xdp_mode: XdpMode::Default,
        })
    }

    /// How new XDP links attach (a pinned link keeps its mode).
    pub fn with_xdp_mode(mut self, mode: XdpMode) -> Self {
        self.xdp_mode = mode;
        self
    }

    /// Interfaces with the tc programs.
    pub fn interfaces(&self) -> Vec<String> {
        self.groups[0].attached.values().cloned().collect()
    }

    /// Interfaces with the XDP program.
    pub fn xdp_interfaces(&self) -> Vec<String> {
        self.groups[1].attached.values().cloned().collect()
    }

    /// Puts our programs on every selected interface: into the pinned link
    /// a previous agent left (an atomic program swap, no packet sees
    /// neither), or a new pinned link. Links of interfaces that are gone or
    /// no longer selected are unpinned.
    pub fn sync(&mut self, ebpf: &mut Ebpf) {
        let all = ifaces::list();
        let default_route = crate::node_addrs::default_route_interface();
        let pin_dir = &self.pin_dir;
        let xdp_mode = self.xdp_mode;
        let mut present: Vec<BTreeMap<u32, String>> = Vec::new();
        for g in &mut self.groups {
            let here: BTreeMap<u32, String> = all
                .iter()
                .filter(|i| {
                    g.selector
                        .matches_with_default(&i.name, default_route.as_deref())
                })
                .map(|i| (i.index, i.name.clone()))
                .collect();
            g.attached.retain(|idx, _| here.contains_key(idx));
            for (index, name) in &here {
                if g.attached.contains_key(index) {
                    continue;
                }
                // An interface counts as attached once all its hooks are; a
                // hook already in place is swapped again next time, harmlessly.
                let mut done_all = true;
                for &(prog_name, hook, prefix) in g.hooks {
                    let pin = hook_pin(pin_dir, prefix, *index);
                    let done = match hook {
                        Hook::Tc(dir) => tc_program(ebpf, prog_name)
                            .and_then(|prog| attach_tc(prog, &pin, dir, name)),
                        Hook::Xdp => xdp_program(ebpf, prog_name)
                            .and_then(|prog| attach_xdp(prog, &pin, *index, xdp_mode)),
                    };
                    match done {
                        Ok(how) => {
                            info!(interface = %name, ifindex = index, hook = prog_name, how, "{} attached", g.what)
                        }
                        Err(e) => {
                            done_all = false;
                            warn!(interface = %name, hook = prog_name, error = %format!("{e:#}"), "cannot attach {} program", g.what);
                        }
                    }
                }
                if done_all {
                    g.attached.insert(*index, name.clone());
                }
            }
            present.push(here);
        }
        self.prune_pins(&present);
    }

    fn prune_pins(&self, present: &[BTreeMap<u32, String>]) {
        let Ok(entries) = std::fs::read_dir(links_dir(&self.pin_dir)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((g, idx)) = self.groups.iter().zip(present).find_map(|(g, here)| {
                let idx = g
                    .hooks
                    .iter()
                    .find_map(|(_, _, prefix)| name.strip_prefix(prefix))?
                    .parse::<u32>()
                    .ok()?;
                Some((g, (idx, here)))
            }) else {
                continue;
            };
            let (idx, here) = idx;
            if !here.contains_key(&idx) {
                unpin(&e.path());
                info!(
                    ifindex = idx,
                    "interface gone or deselected, {} link unpinned", g.what
                );
            }
        }
    }
}

fn attach_tc(
    prog: &mut SchedClassifier,
    pin: &Path,
    dir: TcAttachType,
    name: &str,
) -> Result<&'static str> {
    if let Ok(old) = PinnedLink::from_pin(pin) {
        let link = SchedClassifierLink::try_from(FdLink::from(old))
            .context("pinned link is not a tcx link")?;
        prog.attach_to_link(link)
            .context("swapping the program into the pinned link")?;
        return Ok("program swapped into the pinned link");
    }
    let id = prog
        .attach(name, dir)
        .with_context(|| format!("attaching to {name}"))?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("tc link is not an fd link (kernel < 6.6?)")?;
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok("new pinned link")
}

/// `XdpMode::Default`: native (driver) XDP where the driver has it,
/// generic otherwise, as the kernel picks.
fn attach_xdp(prog: &mut Xdp, pin: &Path, ifindex: u32, mode: XdpMode) -> Result<&'static str> {
    if let Ok(old) = PinnedLink::from_pin(pin) {
        let link =
            XdpLink::try_from(FdLink::from(old)).context("pinned link is not an XDP link")?;
        prog.attach_to_link(link)
            .context("swapping the program into the pinned link")?;
        return Ok("program swapped into the pinned link");
    }
    let id = prog
        .attach_to_if_index(ifindex, mode)
        .with_context(|| format!("attaching XDP to ifindex {ifindex}"))?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("XDP link is not an fd link (attached through netlink?)")?;
    link.pin(pin)
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
        pin_cgroup_link(link, pin_dir, name)?;
    }
    let p = sock_release(ebpf)?;
    let id = p.attach(&dir, CgroupAttachMode::Single).with_context(|| {
        format!(
            "attaching {PROG_SOCK_RELEASE} to cgroup {}",
            cgroup.display()
        )
    })?;
    let link: FdLink = p.take_link(id)?.try_into()?;
    pin_cgroup_link(link, pin_dir, PROG_SOCK_RELEASE)?;
    info!(cgroup = %cgroup.display(), "socket hooks attached");
    Ok(())
}

fn sock_release(ebpf: &mut Ebpf) -> Result<&mut CgroupSock> {
    Ok(ebpf
        .program_mut(PROG_SOCK_RELEASE)
        .with_context(|| format!("program {PROG_SOCK_RELEASE} missing"))?
        .try_into()?)
}

/// Pins a socket hook's link as `cgroup-<name>`, replacing the pin of the
/// previous agent's (whose link goes when its last holder does).
fn pin_cgroup_link(link: FdLink, pin_dir: &Path, name: &str) -> Result<()> {
    let pin = links_dir(pin_dir).join(format!("cgroup-{name}"));
    if pin.exists() {
        unpin(&pin);
    }
    link.pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// The cgroup v2 mount point, from /proc/self/mountinfo: `/sys/fs/cgroup`
/// on a unified host, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_root() -> Option<PathBuf> {
    cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The first cgroup2 mount point in a mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? == "cgroup2" {
            left.split_whitespace().nth(4).map(Into::into)
        } else {
            None
        }
    })
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs buffer of our own.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

/// The cgroup v2 hierarchy `--cgroup` names: the directory itself, or
/// on a hybrid host its `unified` child (the host's `/sys/fs/cgroup`
/// mounted as is holds the v1 controllers there), so one chart serves
/// both layouts.
pub fn resolve_cgroup2(dir: &Path) -> Result<PathBuf> {
    if is_cgroup2(dir) {
        return Ok(dir.to_path_buf());
    }
    let unified = dir.join("unified");
    if is_cgroup2(&unified) {
        return Ok(unified);
    }
    bail!(
        "--cgroup {}: neither it nor its unified/ is a cgroup v2 hierarchy",
        dir.display()
    )
}

#[cfg(test)]
mod cgroup_tests {
    use super::*;

    const UNIFIED: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn the_v2_root_is_found_in_both_layouts() {
        assert_eq!(cgroup2_mount(UNIFIED), Some("/sys/fs/cgroup".into()));
        assert_eq!(cgroup2_mount(HYBRID), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(
            cgroup2_mount("25 30 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    /// On this machine, whatever its layout: the v2 root resolves to
    /// itself, and its parent too when it is a hybrid host's `unified`.
    #[test]
    fn the_cgroup_flag_takes_the_hierarchy_or_its_parent() {
        let root = cgroup2_root().expect("cgroup v2 mounted");
        assert_eq!(resolve_cgroup2(&root).unwrap(), root);
        if root.ends_with("unified") {
            assert_eq!(resolve_cgroup2(root.parent().unwrap()).unwrap(), root);
        }
        let err = resolve_cgroup2(Path::new("/proc")).unwrap_err().to_string();
        assert!(err.contains("--cgroup /proc"), "{err}");
    }
}
