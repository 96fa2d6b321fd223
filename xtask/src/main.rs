//! `cargo xtask ...`: the developer-facing commands. Each installs what it
//! needs first (idempotently), so they work on a fresh machine.
mod demo;
mod setup;

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the kernel programs only (they are embedded in lb-agent).
    BuildEbpf,
    /// Build the agent and the test bed.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the seeds' `hostnames` example end to end in network namespaces.
    Demo,
    /// Run every test: formatting, lints, unit, datapath and end-to-end.
    Test,
    /// Run the benchmarks and write BENCHMARKS.md (and plots under docs/bench/).
    Bench {
        /// Small sizes, short runs (under 3 minutes): a smoke test.
        #[arg(long)]
        quick: bool,
        /// Instead of the benchmarks, run the churn soak (1,000 Services
        /// with flapping endpoints under traffic) for SECS seconds; the
        /// test suite runs it for 60.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(10..=86_400))]
        soak: Option<u64>,
        /// Run only these sections (datapath, traffic, control).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

/// The standalone build of the kernel programs (nightly, build-std), with
/// BTF as lb-agent's build.rs makes it: the verifier needs BTF function
/// info for bpf_loop callbacks.
fn ebpf_build() -> Command {
    let mut c = Command::new("rustup");
    c.env(
        "CARGO_ENCODED_RUSTFLAGS",
        ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\u{1f}"),
    );
    c.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "-p",
        "lb-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ]);
    c
}

fn target_dir() -> std::path::PathBuf {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Runs a command, echoing it, and fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let st = cmd.status()?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "-p", "lb-agent", "-p", "ferrolb-tests", "--bins"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

/// Runs the test suites, echoing their output, and closes with one
/// plain `N passed, N failed` line summed over every test binary.
fn test_and_count(next_datapath: &std::path::Path, progress: &mut Progress) -> Result<()> {
    use std::io::{BufRead, BufReader};
    const TARGETS: [&str; 7] = [
        "test",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--lib",
        "--bins",
        "--tests",
    ];
    // The test binaries, built first, counted for the progress lines.
    let built = cargo()
        .args(TARGETS)
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !built.status.success() {
        bail!("building the tests failed");
    }
    let binaries = String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter(|l| l.contains("\"test\":true") && l.contains("\"executable\":\""))
        .count();
    progress.step(&format!(
        "running {binaries} test binaries, one test at a time"
    ));
    let mut cmd = cargo();
    cmd.env("FERROLB_NEXT_DATAPATH", next_datapath);
    cmd.args(TARGETS).args(["--", "--test-threads=1"]);
    eprintln!("+ {cmd:?}");
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let (mut passed, mut failed, mut done) = (0u64, 0u64, 0usize);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            done += 1;
            progress.note(&format!("test binaries: {done} of {binaries} done"));
            for part in rest.split(';') {
                let mut w = part.split_whitespace().rev();
                let (Some(label), Some(n)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match label {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    _ => {}
                }
            }
        }
    }
    let st = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !st.success() || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// Progress lines for long commands: which step of how many, and the
/// time so far.
struct Progress {
    total: usize,
    done: usize,
    started: std::time::Instant,
}

impl Progress {
    fn new(total: usize) -> Self {
        Progress {
            total,
            done: 0,
            started: std::time::Instant::now(),
        }
    }

    fn step(&mut self, what: &str) {
        self.done += 1;
        self.done = self.done.min(self.total);
        self.note(&format!("[{}/{}] {what}", self.done, self.total));
    }

    fn note(&self, what: &str) {
        let t = self.started.elapsed().as_secs();
        eprintln!("==> {}m{:02}s {what}", t / 60, t % 60);
    }
}

/// Whether the kernel opens SCTP sockets.
fn sctp_support() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    unsafe { libc::close(fd) };
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::all(),
        Cmd::BuildEbpf => {
            setup::all()?;
            run(&mut ebpf_build())
        }
        Cmd::Build { release } => {
            setup::all()?;
            build(release)
        }
        Cmd::Demo => {
            let mut progress = Progress::new(3);
            progress.step("set-up: packages, toolchains, bpf-linker (first run: minutes)");
            setup::all()?;
            progress.step("building the agent and the programs (release; first run: minutes)");
            build(true)?;
            progress.step("the demo: hostnames behind 10.0.1.175:80");
            demo::run()
        }
        Cmd::Test => {
            let mut progress = Progress::new(6);
            progress.step("set-up: packages, toolchains, bpf-linker (first run: minutes)");
            setup::all()?;
            progress.step("cargo fmt --check, cargo clippy -D warnings");
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            progress.step("building the agent, the programs and the test pods' server");
            build(false)?;
            // The upgrade test's second build of the programs.
            progress.step("building a second datapath (the upgrade test's)");
            let next = target_dir().join("bpf-next");
            run(ebpf_build()
                .args(["--features", "upgrade-probe", "--target-dir"])
                .arg(&next))?;
            let next = next.join("bpfel-unknown-none/release/lb-ebpf");
            // One test at a time: the end-to-end tests measure traffic
            // spreads and one-second deadlines on a 2-core machine.
            progress.step("building the tests");
            test_and_count(&next, &mut progress)?;
            // SCTP end to end needs a kernel with SCTP: run where there is
            // one, said to be skipped where not (never a silent pass).
            match sctp_support() {
                Ok(()) => run(cargo().args([
                    "test",
                    "-p",
                    "ferrolb-tests",
                    "--test",
                    "sctp",
                    "--",
                    "--ignored",
                    "--test-threads=1",
                ])),
                Err(e) => {
                    println!(
                        "SKIPPED: tests/tests/sctp.rs (SCTP end to end): this kernel has no SCTP \
                         (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {e}); the SCTP datapath tests ran"
                    );
                    Ok(())
                }
            }
        }
        Cmd::Bench {
            soak: Some(secs), ..
        } => {
            setup::all()?;
            run(cargo().args(["build", "--release", "-p", "lb-agent", "--bins"]))?;
            let target = target_dir();
            run(cargo()
                .args([
                    "test",
                    "--release",
                    "-p",
                    "ferrolb-tests",
                    "--test",
                    "soak",
                    "--",
                    "--nocapture",
                ])
                .env("FERROLB_SOAK_SECS", secs.to_string())
                .env("FERROLB_AGENT_BIN", target.join("release").join("lb-agent")))
        }
        Cmd::Bench {
            quick,
            soak: None,
            only,
        } => {
            setup::all()?;
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "lb-agent",
                "-p",
                "ferrolb-tests",
                "-p",
                "ferrolb-bench",
                "--bins",
            ]))?;
            let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let release = target_dir().join("release");
            let mut c = Command::new(release.join("ferrolb-bench"));
            c.arg("--out").arg(&root);
            c.arg("--agent").arg(release.join("lb-agent"));
            c.arg("--podserver").arg(release.join("flb-podserver"));
            if quick {
                c.arg("--quick");
            }
            if !only.is_empty() {
                c.arg("--only").arg(only.join(","));
            }
            run(&mut c)
        }
    }
}
