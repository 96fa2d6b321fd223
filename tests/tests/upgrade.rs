//! Pinned state written by another build or configuration is refused with
//! a message that says what differs, never reused and misread; maps of
//! other layout versions are left alone.
mod common;

use std::process::Command;

use ferrolb_tests::bpffs::Bpffs;
use lb_agent::datapath::loader::{self, LoadOptions};

#[test]
fn same_layout_is_adopted_other_sizes_and_layouts_are_refused() {
    let fs = Bpffs::new("upgrade").unwrap();
    let o = common::datapath::small_maps(&fs);
    drop(loader::load(&o).expect("first load pins the maps"));
    drop(loader::load(&o).expect("same build, same sizes: adopted"));

    let bigger = LoadOptions {
        services_max: 2048,
        ..o.clone()
    };
    let err = format!("{:#}", loader::load(&bigger).unwrap_err());
    assert!(
        err.contains("flb_svc_v1") && err.contains("--services-max asks for 2048"),
        "{err}"
    );

    // A map of the same name but another layout (another build).
    std::fs::remove_file(o.pin_dir.join("flb_be_v1")).unwrap();
    let st = Command::new("bpftool")
        .args(["map", "create"])
        .arg(o.pin_dir.join("flb_be_v1"))
        .args([
            "type",
            "hash",
            "key",
            "8",
            "value",
            "8",
            "entries",
            "1024",
            "name",
            "flb_be_v1",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "bpftool map create");
    let err = format!("{:#}", loader::load(&o).unwrap_err());
    assert!(
        err.contains("flb_be_v1 has 8-byte keys and 8-byte values"),
        "{err}"
    );
    assert!(err.contains("lb-agent cleanup"), "{err}");
}
