//! A private bpffs for pins, mounted on a fresh temp directory and
//! unmounted on drop, so tests and benchmarks never touch /sys/fs/bpf.
use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::netns::sh;

pub struct Bpffs {
    pub dir: PathBuf,
}

impl Bpffs {
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ferrolb-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        sh(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir))?;
        Ok(Bpffs { dir })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
