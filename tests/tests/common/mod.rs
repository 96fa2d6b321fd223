//! Shared by the test files: where the binaries are.
#![allow(dead_code)]
pub mod datapath;
pub mod k8s;
pub mod rbac;

use std::path::PathBuf;

use ferrolb_tests::cluster::Binaries;

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
