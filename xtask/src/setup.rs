//! Installs the build and test prerequisites, skipping what is present.
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::run;

/// (command, or absolute path of a file, that must exist; Debian package
/// that provides it)
const TOOLS: [(&str, &str); 13] = [
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("bpftool", "bpftool"),
    ("iptables-save", "iptables"),
    ("nft", "nftables"),
    ("curl", "curl"),
    ("ncat", "ncat"),
    ("mount", "mount"),
    ("iperf3", "iperf3"),
    // Wire-like frames (complete checksums) in the XDP tests.
    ("ethtool", "ethtool"),
    // The chart test installs helm and kubernetes-validate from PyPI.
    ("python3", "python3"),
    ("pip3", "python3-pip"),
    // The benchmark plots' font.
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return std::path::Path::new(cmd).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn all() -> Result<()> {
    if !nix_root() {
        bail!("ferrolb's builds attach BPF programs and create network namespaces: run as root");
    }
    packages()?;
    toolchain()?;
    bpf_linker()?;
    Ok(())
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("==> installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn toolchain() -> Result<()> {
    if !quiet_ok(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        eprintln!("==> installing the nightly toolchain (for the BPF target)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let sysroot = nightly_sysroot()?;
    if !std::path::Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        eprintln!("==> adding rust-src to nightly (for -Z build-std=core)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn nightly_sysroot() -> Result<String> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("rustc +nightly --print sysroot")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// bpf-linker must use nightly's own LLVM: build it against the
/// toolchain's libLLVM (name derived from the sysroot, not hard-coded).
fn bpf_linker() -> Result<()> {
    if quiet_ok(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let lib = format!("{}/lib", nightly_sysroot()?);
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM*.so in {lib}"))?;
    let name = llvm.trim_start_matches("lib").trim_end_matches(".so");
    let major = name
        .split(['-', '.'])
        .nth(1)
        .filter(|m| m.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM version from {llvm}"))?;
    eprintln!("==> building bpf-linker against {llvm} (about a minute)");
    run(Command::new("cargo")
        .args(["+nightly", "install", "bpf-linker", "--no-default-features"])
        .args(["--features", &format!("llvm-{major},no-llvm-linking")])
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-L{lib} -C link-arg=-l{name} -C link-arg=-Wl,-rpath,{lib}"),
        ))
}
