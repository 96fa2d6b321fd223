//! Shared by the test files: a private bpffs for pins, binary paths.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::Command;

use ferrolb_tests::cluster::Binaries;

/// A bpffs mounted on a fresh temp directory, unmounted on drop.
pub struct Bpffs {
    pub dir: PathBuf,
}

impl Bpffs {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ferrolb-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting bpffs on {}", dir.display());
        Bpffs { dir }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent binary (built by `cargo xtask test` before the tests run)
/// and this package's pod server.
pub fn bins() -> Binaries {
    let agent = std::env::var_os("FERROLB_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/deps/<test> -> target/<profile>/lb-agent
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("lb-agent")
        });
    assert!(
        agent.exists(),
        "{} missing: run `cargo xtask test` (it builds the agent first)",
        agent.display()
    );
    Binaries {
        agent,
        podserver: PathBuf::from(env!("CARGO_BIN_EXE_flb-podserver")),
    }
}
