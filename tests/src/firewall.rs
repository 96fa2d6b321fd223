//! Snapshots of the iptables and nftables rule sets: the project must
//! never create a rule, and tests prove it by comparing snapshots.
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Rules as `iptables-save` and `nft list ruleset` print them, without
/// the comment lines that carry timestamps.
pub fn snapshot(netns: Option<&str>) -> Result<String> {
    let mut out = String::new();
    for (prog, args) in [
        ("iptables-save", &[][..]),
        ("nft", &["list", "ruleset"][..]),
    ] {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, prog]);
                c
            }
            None => Command::new(prog),
        };
        cmd.args(args);
        let o = cmd
            .output()
            .with_context(|| format!("{prog} is needed to check that no firewall rules are created (cargo xtask test installs it)"))?;
        if !o.status.success() {
            bail!("{prog} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        out.push_str(&format!("== {prog}\n"));
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if !l.starts_with('#') {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    Ok(out)
}
