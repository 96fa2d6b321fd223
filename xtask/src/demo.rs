//! The seeds' `hostnames` example, end to end: three pods serving their
//! hostname on 9376, the Service 10.0.1.175:80 and its EndpointSlice,
//! curled from a client pod and from the node, then the service table.
//! Everything lives in network namespaces that are removed at the end,
//! on failure and on Ctrl-C.
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use ferrolb_tests::cluster::{Binaries, Cluster};

/// The embedded default: the seeds' Service, and the EndpointSlice the
/// endpoints controller would write for its three pods.
const MANIFEST: &str = include_str!("../../manifests/hostnames.yaml");

fn step(n: u32, what: &str) {
    println!("\n[{n}/6] {what}");
}

pub fn run() -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)).context("Ctrl-C handler")?;
    let check = || -> Result<()> {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted; tearing down");
        }
        Ok(())
    };

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bins = Binaries {
        agent: target.join("release/lb-agent"),
        podserver: target.join("release/flb-podserver"),
    };

    step(
        1,
        "creating the node and three hostnames pods (network namespaces)",
    );
    let mut cluster = Cluster::new(bins, 3)?;
    for p in &cluster.pods {
        println!(
            "      pod {:<16} {}:9376 (via {} on the node)",
            p.name, p.ip, p.host_if
        );
    }
    println!("      client pod       {}", cluster.client().ip);
    check()?;

    step(
        2,
        "starting lb-agent on the node with the seeds' Service and EndpointSlice",
    );
    let dir = cluster.workdir.join("manifests");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hostnames.yaml"), MANIFEST)?;
    cluster.start_agent(&dir)?;
    println!("      agent ready (log: {})", cluster.agent_log().display());
    check()?;

    step(
        3,
        "curl 10.0.1.175:80 from the client pod, until all three pods answered",
    );
    let client_ns = cluster.client().ns.name.clone();
    curl_until_all_seen(&check, || {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &client_ns, "curl"]);
        c
    })?;

    step(
        4,
        "curl 10.0.1.175:80 from the node itself, until all three pods answered",
    );
    curl_until_all_seen(&check, || cluster.node_command("curl"))?;

    step(5, "the agent's service table (lb-agent services)");
    print!("{}", cluster.cli("services")?);
    println!("\n      datapath counters (lb-agent stats):");
    for l in cluster.cli("stats")?.lines() {
        println!("      {l}");
    }

    step(6, "tearing down");
    drop(cluster);
    println!("      done: namespaces, links, pins and cgroup removed");
    Ok(())
}

/// Curls the VIP (new connection each time) until three distinct
/// hostnames answered; bounded to 30 requests.
fn curl_until_all_seen(check: &dyn Fn() -> Result<()>, curl: impl Fn() -> Command) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        check()?;
        let out = curl()
            .args(["-sS", "-m", "2", "http://10.0.1.175:80"])
            .output()?;
        if !out.status.success() {
            bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("      $ curl 10.0.1.175:80\n      {name}");
        seen.insert(name);
        if seen.len() == 3 {
            return Ok(());
        }
    }
    bail!(
        "only {} distinct pods answered in 30 requests: {seen:?}",
        seen.len()
    )
}
