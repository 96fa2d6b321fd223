//! The Helm chart, rendered by a real helm (installed by the test: see
//! `ferrolb_tests::tools`): `helm lint` and `helm template` with the
//! default and with non-default values, the rendered manifests checked
//! against the Kubernetes schemas (kubernetes-validate, strict), and what
//! the DaemonSet must carry: host network, capabilities dropped but the
//! four it needs, bpffs with the right propagation, node-critical
//! priority, every taint tolerated, rolling updates, the probes.
use std::path::{Path, PathBuf};
use std::process::Command;

use ferrolb_tests::netns::sh;
use ferrolb_tests::tools;

const K8S_VERSION: &str = "1.33";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb")
}

/// Non-default values touching every templated setting that has one.
const CUSTOM: &str = "\
image: {repository: registry.example/ferrolb, tag: \"9.9.9\"}
serviceProxyName: ferrolb
serviceCidr: 10.96.0.0/12,fd00:10::/108
xdpInterfaces: eth0,eth1
xdpMode: generic
nodePortAddresses: 192.168.0.0/16
serviceNodePortRange: 31000-31999
snatPortRange: 2000-20000
lbMode: hybrid
lbAlgorithm: maglev
maglevTableSize: 65521
healthzPort: 10257
logLevel: info,ferrolb::datapath=debug
logFormat: json
";

fn render(helm: &Path, values: Option<&Path>) -> String {
    let mut c = Command::new(helm);
    c.args(["template", "ferrolb"]).arg(chart());
    if let Some(v) = values {
        c.arg("-f").arg(v);
    }
    sh(&mut c).expect("helm template")
}

#[test]
fn the_chart_lints_renders_and_validates_with_default_and_custom_values() {
    let helm = tools::helm().expect("helm installed");
    let dir = std::env::temp_dir().join(format!("ferrolb-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let custom = dir.join("custom.yaml");
    std::fs::write(&custom, CUSTOM).unwrap();
    for values in [None, Some(custom.as_path())] {
        let mut lint = Command::new(&helm);
        lint.args(["lint", "--strict"]).arg(chart());
        if let Some(v) = values {
            lint.arg("-f").arg(v);
        }
        let out = sh(&mut lint).unwrap_or_else(|e| panic!("helm lint {values:?}: {e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");

        let rendered = render(&helm, values);
        let file = dir.join(if values.is_some() {
            "custom-out.yaml"
        } else {
            "default-out.yaml"
        });
        std::fs::write(&file, &rendered).unwrap();
        let out = sh(tools::kubernetes_validate()
            .expect("kubernetes-validate installed")
            .args(["--strict", "-k", K8S_VERSION])
            .arg(&file))
        .unwrap_or_else(|e| panic!("schema validation of {}: {e}", file.display()));
        for kind in [
            "serviceaccount",
            "clusterrole",
            "clusterrolebinding",
            "daemonset",
        ] {
            assert!(
                out.contains(&format!("passed for resource {kind}/")),
                "{kind}: {out}"
            );
        }
        // What the DaemonSet must carry, whatever the values.
        for want in [
            "hostNetwork: true",
            "priorityClassName: system-node-critical",
            "type: RollingUpdate",
            "drop: [\"ALL\"]",
            "add: [\"BPF\", \"NET_ADMIN\", \"PERFMON\", \"SYS_RESOURCE\"]",
            "mountPropagation: HostToContainer",
            "operator: Exists",
            "readinessProbe:",
            "startupProbe:",
            "livenessProbe:",
            "path: /livez",
        ] {
            assert!(rendered.contains(want), "{want} missing:\n{rendered}");
        }
        assert!(!rendered.contains("privileged: true"), "{rendered}");
    }
    let custom = render(&helm, Some(&custom));
    for want in [
        "image: \"registry.example/ferrolb:9.9.9\"",
        "--service-node-port-range=31000-31999",
        "--snat-port-range=2000-20000",
        "--lb-mode=hybrid",
        "--lb-algorithm=maglev",
        "--maglev-table-size=65521",
        "--xdp-mode=generic",
        "--xdp-interfaces=eth0,eth1",
        "--nodeport-addresses=192.168.0.0/16",
        "--service-cidr=10.96.0.0/12,fd00:10::/108",
        "--healthz-addr=0.0.0.0:10257",
        "value: \"info,ferrolb::datapath=debug\"",
        "name: FERROLB_LOG_FORMAT\n              value: \"json\"",
    ] {
        assert!(custom.contains(want), "{want} missing:\n{custom}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
