//! The bpffs directory that holds our pins.
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a zeroed out-struct.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `pin_dir` exists on a bpffs, mode 0700. Mounts bpffs on
/// `/sys/fs/bpf` when that is where it should be and nothing is mounted
/// there yet (as on hosts without systemd's mount).
pub fn prepare(pin_dir: &Path) -> Result<()> {
    let parent = pin_dir
        .parent()
        .with_context(|| format!("--pin-path {} has no parent directory", pin_dir.display()))?;
    if !is_bpffs(parent) {
        if parent == Path::new("/sys/fs/bpf") {
            mount_bpffs(parent)?;
        } else {
            bail!(
                "--pin-path {}: {} is not on a bpf filesystem (mount one with `mount -t bpf bpf {}`)",
                pin_dir.display(),
                parent.display(),
                parent.display()
            );
        }
    }
    if !pin_dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    }
    std::fs::set_permissions(pin_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", pin_dir.display()))?;
    Ok(())
}

fn mount_bpffs(at: &Path) -> Result<()> {
    std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting bpffs on {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
