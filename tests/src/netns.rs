//! Network namespaces: an RAII guard that deletes the namespace on drop
//! (so a failing test cannot leak one), and running code inside one.
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs a command and fails with its stderr if it fails.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // IPv6 addresses usable at once (no duplicate address detection
        // on links this run made); ignored where IPv6 is off.
        let _ = ns.run(|| {
            for conf in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0");
            }
        });
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A veth pair: `name` here, `peer` (named `peer_name`) in another namespace.
    pub fn veth_to(&self, name: &str, peer: &NetNs, peer_name: &str) -> Result<()> {
        ip(&[
            "link", "add", name, "netns", &self.name, "type", "veth", "peer", "name", peer_name,
            "netns", &peer.name,
        ])
        .map(drop)
    }

    /// A command that runs inside this namespace (network only; mounts,
    /// /sys and cgroups stay the caller's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// opens live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn(f)
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
    }

    /// Like `run`, without waiting: join the handle for the result.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = self.path();
        std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            use std::os::fd::AsRawFd;
            // SAFETY: a valid namespace fd; setns only affects this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
    }
}

impl NetNs {
    /// Moves the calling thread into this namespace for the rest of its
    /// life (a test's own thread: BPF_PROG_TEST_RUN then resolves FIB
    /// lookups and interfaces here, not in the machine's namespace).
    pub fn enter(&self) -> Result<()> {
        let path = self.path();
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; setns only affects this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The checksum errors this namespace's kernel counted (TCP and UDP
    /// InCsumErrors): a wrong checksum written by a translation shows here.
    pub fn csum_errors(&self) -> u64 {
        let snmp = self
            .run(|| std::fs::read_to_string("/proc/net/snmp").unwrap_or_default())
            .unwrap_or_default();
        let mut total = 0;
        let lines: Vec<&str> = snmp.lines().collect();
        for pair in lines.chunks(2) {
            let [head, vals] = pair else { continue };
            if !(head.starts_with("Tcp:") || head.starts_with("Udp:")) {
                continue;
            }
            for (h, v) in head.split_whitespace().zip(vals.split_whitespace()) {
                if h == "InCsumErrors" {
                    total += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
        total
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
