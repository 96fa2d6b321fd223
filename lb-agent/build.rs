// Builds the kernel programs (lb-ebpf) with the nightly toolchain and
// bpf-linker, so a plain `cargo build` produces an agent with them inside.
fn main() -> anyhow::Result<()> {
    // Read when the script runs, not when it was compiled: a target
    // directory moved or shared between checkouts must build this one.
    let dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&dir)
        .parent()
        .expect("workspace root")
        .join("lb-ebpf");
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
