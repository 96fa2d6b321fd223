//! `cargo xtask bench`: measures ferrolb against the kernel's own limit and
//! kube-proxy-shaped baselines in one run, and writes BENCHMARKS.md.
mod control;
mod datapath;
mod families;
mod nodeport_traffic;
mod northsouth;
mod plot;
mod protocols;
mod report;
mod schedulers;
mod stats;
mod synth;
mod traffic;
mod traffic6;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Clone)]
#[command(name = "flb-bench")]
pub struct Opts {
    /// Small sizes and short runs (under 3 minutes): the CI smoke test.
    #[arg(long)]
    pub quick: bool,
    /// Where BENCHMARKS.md is written.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// The agent binary.
    #[arg(long)]
    pub agent: PathBuf,
    /// The pod server binary.
    #[arg(long)]
    pub podserver: PathBuf,
    /// Run only these sections (datapath, northsouth, traffic, control).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

impl Opts {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

/// The sections `--only` takes, in the order they run.
const SECTIONS: [&str; 4] = ["datapath", "northsouth", "traffic", "control"];

/// Bad flags are named before anything is set up.
fn check(o: &Opts) -> Result<()> {
    for s in &o.only {
        anyhow::ensure!(
            SECTIONS.contains(&s.as_str()),
            "--only: unknown section {s:?} (expected one of {})",
            SECTIONS.join(", ")
        );
    }
    for (flag, path) in [("--agent", &o.agent), ("--podserver", &o.podserver)] {
        anyhow::ensure!(
            path.is_file(),
            "{flag} {}: no such file (`cargo xtask bench` builds it)",
            path.display()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let o = Opts::parse();
    check(&o)?;
    let mut r = report::Report {
        command: if o.quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        }
        .into(),
        ..Default::default()
    };
    type Step = fn(&Opts, &mut report::Report) -> Result<()>;
    let steps: [(&str, &str, Step); 9] = [
        ("datapath", "1. per-packet datapath cost", datapath::run),
        ("datapath", "1f. IPv6 beside IPv4", families::run),
        (
            "datapath",
            "1g. schedulers and session affinity",
            schedulers::run,
        ),
        ("datapath", "1h. transport protocols", protocols::run),
        (
            "northsouth",
            "1e. north-south per-packet cost",
            northsouth::run,
        ),
        ("traffic", "2. end-to-end traffic", traffic::run),
        ("traffic", "2b. north-south traffic", nodeport_traffic::run),
        ("traffic", "2f. IPv6 traffic beside IPv4", traffic6::run),
        ("control", "3. control plane", control::run),
    ];
    let chosen: Vec<_> = steps.iter().filter(|(s, ..)| o.wants(s)).collect();
    let started = std::time::Instant::now();
    for (k, (_, title, run)) in chosen.iter().enumerate() {
        // A progress line per step: how far, and how long so far.
        let t = started.elapsed().as_secs();
        eprintln!(
            "==> [{}/{}, {}m{:02}s] {title}",
            k + 1,
            chosen.len(),
            t / 60,
            t % 60
        );
        run(&o, &mut r)?;
    }
    plot::render(&o.out.join("docs/bench"), &r.plots)?;
    let path = o.out.join("BENCHMARKS.md");
    std::fs::write(&path, r.markdown())?;
    println!("{}", r.summary());
    println!("wrote {}", path.display());
    Ok(())
}
