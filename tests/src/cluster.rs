//! A simulated Kubernetes node: one "node" namespace that routes between
//! "pod" namespaces over veth pairs, the way a CNI plugin with routed pod
//! interfaces does. Pods get a /32 IPv4 and a /128 IPv6 address (dual
//! stack) and default routes via the node; the node has a host route per
//! pod address and forwards. Nothing here has a route out of the machine.
//!
//! Everything is removed on drop: processes, namespaces (and with them
//! every veth and tc link), the bpffs mount holding the pins, the cgroup.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{NetNs, sh};

/// The node's address on every pod link (the pods' gateway).
pub const NODE_GW: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The IPv6 address paired with a test bed IPv4 address `10.244.s.h`:
/// `fd00:244:s::h` (pods, and the node's gateway `fd00:244:s::1`).
pub fn v6_of(v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    Ipv6Addr::new(0xfd00, 0x244, o[2] as u16, 0, 0, 0, 0, o[3] as u16)
}

/// Serving port of the seeds' `serve_hostname` pods.
pub const POD_PORT: u16 = 9376;

pub struct Pod {
    /// The pod's hostname, which its server answers with.
    pub name: String,
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address ([`v6_of`] its IPv4 one).
    pub ip6: Ipv6Addr,
    /// Host-side veth name, in the node namespace.
    pub host_if: String,
}

/// Paths of the binaries the cluster runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub podserver: PathBuf,
}

pub struct Cluster {
    pub id: String,
    /// The node's address on every pod link (the pods' gateway).
    pub gw: Ipv4Addr,
    pub workdir: PathBuf,
    pub bpffs: PathBuf,
    pub cgroup: PathBuf,
    pub bins: Binaries,
    /// Runs the agent through this command line (e.g. `setpriv ...`).
    pub agent_prefix: Vec<String>,
    /// Extra `lb-agent run` flags.
    pub agent_args: Vec<String>,
    children: Vec<Child>,
    agent: Option<Child>,
    // Declared last: dropped after the processes above are killed.
    pub pods: Vec<Pod>,
    pub client: Option<Pod>,
    pub node: NetNs,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The seeds' pod names, so the demo prints what the seeds print.
pub const SEED_POD_NAMES: [&str; 3] = ["hostnames-0uton", "hostnames-yp2kp", "hostnames-bvc05"];

pub fn cgroup2_root() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("no cgroup v2 hierarchy is mounted")
}

/// Keeps this process in a cgroup while alive, so its sockets meet the
/// socket hooks attached there (as a pod's do where the DaemonSet hooks
/// the cgroup root); moves it back on drop. Moves every thread: callers
/// run one test at a time.
pub struct InCgroup {
    back: PathBuf,
}

impl InCgroup {
    pub fn enter(cgroup: &Path) -> Result<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("this process is not on cgroup v2")?;
        let back = cgroup2_root()?.join(rel.trim_start_matches('/'));
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("entering cgroup {}", cgroup.display()))?;
        Ok(Self { back })
    }
}

impl Drop for InCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.back.join("cgroup.procs"),
            std::process::id().to_string(),
        );
    }
}

impl Cluster {
    /// A node with `backends` pods serving their hostname on TCP and UDP
    /// 9376, plus one client pod.
    pub fn new(bins: Binaries, backends: usize) -> Result<Self> {
        Self::with_subnet(bins, backends, 0)
    }

    /// Like [`Cluster::new`], with pods in 10.244.`subnet`.0/24 (one
    /// subnet per node when several nodes share a network).
    pub fn with_subnet(bins: Binaries, backends: usize, subnet: u8) -> Result<Self> {
        let id = format!(
            "flb{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let workdir = std::env::temp_dir().join(format!("ferrolb-{id}"));
        std::fs::create_dir_all(&workdir)?;
        let node = NetNs::new(&format!("{id}-node"))?;
        let mut c = Cluster {
            id: id.clone(),
            gw: Ipv4Addr::new(10, 244, subnet, 1),
            bpffs: workdir.join("bpf"),
            cgroup: cgroup2_root()?.join(format!("ferrolb-{id}")),
            workdir,
            bins,
            agent_prefix: Vec::new(),
            agent_args: Vec::new(),
            children: Vec::new(),
            agent: None,
            pods: Vec::new(),
            client: None,
            node,
        };
        std::fs::create_dir_all(&c.bpffs)?;
        sh(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&c.bpffs))?;
        std::fs::create_dir_all(&c.cgroup)
            .with_context(|| format!("creating cgroup {}", c.cgroup.display()))?;
        c.node
            .run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))??;
        c.node
            .run(|| std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1"))??;
        for i in 0..backends {
            let name = match subnet {
                0 => SEED_POD_NAMES
                    .get(i)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| format!("hostnames-{i}")),
                _ => format!("pod-{subnet}-{i}"),
            };
            let pod = c.add_pod(&name, Ipv4Addr::new(10, 244, subnet, 5 + i as u8), i)?;
            c.pods.push(pod);
            let i = c.pods.len() - 1;
            c.serve(i)?;
        }
        let client = c.add_pod("client", Ipv4Addr::new(10, 244, subnet, 100), 100)?;
        c.client = Some(client);
        Ok(c)
    }

    fn add_pod(&mut self, name: &str, ip: Ipv4Addr, index: usize) -> Result<Pod> {
        let ns = NetNs::new(&format!("{}-p{index}", self.id))?;
        let host_if = format!("veth{index}");
        self.node.veth_to(&host_if, &ns, "eth0")?;
        let pod_cidr = format!("{ip}/32");
        let gw = self.gw.to_string();
        ns.ip(&["addr", "add", &pod_cidr, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"])?;
        self.node
            .ip(&["addr", "add", &format!("{gw}/32"), "dev", &host_if])?;
        self.node.ip(&["link", "set", &host_if, "up"])?;
        self.node
            .ip(&["route", "add", &pod_cidr, "dev", &host_if])?;
        let (ip6, gw6) = (v6_of(ip), v6_of(self.gw).to_string());
        let pod6 = format!("{ip6}/128");
        ns.ip(&["-6", "addr", "add", &pod6, "dev", "eth0", "nodad"])?;
        ns.ip(&["-6", "route", "add", &gw6, "dev", "eth0"])?;
        ns.ip(&["-6", "route", "add", "default", "via", &gw6, "dev", "eth0"])?;
        self.node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{gw6}/128"),
            "dev",
            &host_if,
            "nodad",
        ])?;
        self.node
            .ip(&["-6", "route", "add", &pod6, "dev", &host_if])?;
        Ok(Pod {
            name: name.to_string(),
            ns,
            ip,
            ip6,
            host_if,
        })
    }

    /// Adds a serving pod `name` at 10.244.200.`host` (and its IPv6 pair)
    /// on a Linux bridge instead of a routed veth, as bridge CNI plugins
    /// attach pods: its veth is a port of `flbbr0`, which holds the pods'
    /// gateway (10.244.200.1/24, fd00:244:200::1/112) and the route to
    /// their subnet.
    pub fn add_bridged_pod(&mut self, name: &str, host: u8) -> Result<usize> {
        const BRIDGE: &str = "flbbr0";
        let gw = Ipv4Addr::new(10, 244, 200, 1);
        let gw6 = v6_of(gw);
        if self.node.ip(&["link", "show", BRIDGE]).is_err() {
            self.node.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
            self.node
                .ip(&["addr", "add", &format!("{gw}/24"), "dev", BRIDGE])?;
            self.node.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{gw6}/112"),
                "dev",
                BRIDGE,
                "nodad",
            ])?;
            self.node.ip(&["link", "set", BRIDGE, "up"])?;
        }
        let index = 200 + host as usize;
        let ns = NetNs::new(&format!("{}-p{index}", self.id))?;
        let host_if = format!("veth{index}");
        self.node.veth_to(&host_if, &ns, "eth0")?;
        self.node
            .ip(&["link", "set", &host_if, "master", BRIDGE, "up"])?;
        let ip = Ipv4Addr::new(10, 244, 200, host);
        let ip6 = v6_of(ip);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip6}/112"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &gw.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
        self.pods.push(Pod {
            name: name.to_string(),
            ns,
            ip,
            ip6,
            host_if,
        });
        let i = self.pods.len() - 1;
        self.serve(i)?;
        Ok(i)
    }

    /// Starts pod `i`'s hostname server (TCP HTTP and UDP on 9376).
    pub fn serve(&mut self, i: usize) -> Result<()> {
        let pod = &self.pods[i];
        let child = pod
            .ns
            .command(self.bins.podserver.to_str().context("utf-8 path")?)
            .args(["--name", &pod.name, "--port", &POD_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting flb-podserver")?;
        self.children.push(child);
        let addr = SocketAddr::from((pod.ip, POD_PORT));
        wait_until(Duration::from_secs(5), || {
            let a = addr;
            pod.ns
                .run(move || TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
                .unwrap_or(false)
        })
        .with_context(|| format!("pod {} did not start serving", pod.name))
    }

    pub fn client(&self) -> &Pod {
        self.client.as_ref().expect("client pod")
    }

    pub fn pin_path(&self) -> PathBuf {
        self.bpffs.join("ferrolb")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.workdir.join("agent.log")
    }

    /// Starts the agent in the node namespace, following `manifests`, and
    /// waits until it has programmed them.
    pub fn start_agent(&mut self, manifests: &Path) -> Result<()> {
        self.start_agent_with(&["--manifests".as_ref(), manifests.as_os_str()])
    }

    /// Starts the agent with `source` flags (`--manifests PATH`, or
    /// `--kubeconfig PATH ...` for the API) and waits until it is ready.
    pub fn start_agent_with(&mut self, source: &[&std::ffi::OsStr]) -> Result<()> {
        let log = std::fs::File::create(self.agent_log())?;
        let agent = self.bins.agent.to_str().context("utf-8 path")?;
        let mut cmd = match self.agent_prefix.split_first() {
            Some((first, rest)) => {
                let mut c = self.node.command(first);
                c.args(rest).arg(agent);
                c
            }
            None => self.node.command(agent),
        };
        let child = cmd
            .arg("run")
            .args(source)
            .arg("--pin-path")
            .arg(self.pin_path())
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(["--poll-interval-ms", "100"])
            .args(&self.agent_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting lb-agent")?;
        self.agent = Some(child);
        let log = self.agent_log();
        // Stop waiting as soon as it is ready or has exited.
        // Generous: loading verifies the programs (seconds, longer on a
        // loaded machine); a ready agent ends the wait at once.
        let _ = wait_until(Duration::from_secs(60), || {
            !self.agent_running()
                || std::fs::read_to_string(&log).is_ok_and(|s| s.contains("agent ready"))
        });
        let ready = std::fs::read_to_string(&log).is_ok_and(|s| s.contains("agent ready"));
        if !(ready && self.agent_running()) {
            bail!(
                "agent exited or did not become ready; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The agent's process id, while one was started.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|c| c.id())
    }

    /// True while the agent process is alive.
    pub fn agent_running(&mut self) -> bool {
        matches!(self.agent.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn agent_log_text(&self) -> String {
        std::fs::read_to_string(self.agent_log()).unwrap_or_default()
    }

    /// How many syncs so far wrote to the maps ("maps reconciled" with
    /// writes): a change is programmed once this has grown past its value
    /// from before the change. Syncs without writes (retries, events that
    /// change nothing) do not count.
    pub fn programmed_syncs(&self) -> usize {
        self.agent_log_text()
            .lines()
            .filter(|l| l.contains("maps reconciled") && !l.contains("writes=0 "))
            .count()
    }

    /// Runs `change`, then waits until the agent has programmed a change.
    pub fn programmed(&self, change: impl FnOnce()) {
        let before = self.programmed_syncs();
        change();
        wait_until(Duration::from_secs(5), || self.programmed_syncs() > before)
            .unwrap_or_else(|_| panic!("change not programmed:\n{}", self.agent_log_text()));
    }

    /// Runs an `lb-agent` CLI subcommand against this cluster's pins.
    pub fn cli(&self, sub: &str) -> Result<String> {
        sh(Command::new(&self.bins.agent)
            .arg(sub)
            .arg("--pin-path")
            .arg(self.pin_path()))
    }

    /// Runs the agent's CLI in the node namespace (where the agent's
    /// loopback endpoint is), e.g. `status`.
    pub fn node_cli(&self, args: &[&str]) -> Result<String> {
        sh(self
            .node
            .command(self.bins.agent.to_str().context("utf-8 path")?)
            .args(args))
    }

    /// The agent's Prometheus metrics, from its default address in the
    /// node namespace.
    pub fn metrics(&self) -> Result<String> {
        sh(self
            .node
            .command("curl")
            .args(["-sf", "http://127.0.0.1:10249/metrics"]))
    }

    /// A command run from the node itself: node network namespace, and
    /// the cgroup the agent's socket hooks are attached to.
    pub fn node_command(&self, program: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && ns="$1" && shift && exec nsenter --net="$ns" -- "$@""#)
            .arg(&self.cgroup)
            .arg(self.node.path())
            .arg(program);
        c
    }

    pub fn stop_agent(&mut self, signal: i32) {
        if let Some(mut a) = self.agent.take() {
            // SAFETY: plain kill(2) on our child's pid.
            unsafe { libc::kill(a.id() as i32, signal) };
            let _ = a.wait();
        }
    }
}

/// Rewrites a manifest the agent watches atomically (a rename), as a
/// config tool would: written in place, the agent could read it truncated
/// (no Services) between the truncate and the write.
pub fn write_manifest(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("condition not met within {timeout:?}")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_agent(libc::SIGTERM);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Namespaces go with the fields' own drops (pods, then the node);
        // drop them now so the veths and tc links are gone before the pins.
        self.pods.clear();
        self.client = None;
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}
