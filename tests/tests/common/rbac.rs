//! The chart's ClusterRole, read as YAML, and what it allows.
use std::path::PathBuf;

use ferrolb_tests::fakeapi::Call;

pub struct Rule {
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
}

/// Verbs that change the cluster; the agent is read-only.
pub const WRITE_VERBS: [&str; 9] = [
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "escalate",
    "bind",
    "impersonate",
    "*",
];

pub fn clusterrole_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb/templates/clusterrole.yaml")
}

/// The rules of the chart's ClusterRole (template lines, `{{ ... }}`,
/// are dropped: they only name things).
pub fn clusterrole_rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(clusterrole_path()).expect("chart clusterrole.yaml");
    let plain: String = text
        .lines()
        .filter(|l| !l.contains("{{"))
        .map(|l| format!("{l}\n"))
        .collect();
    let doc: serde_yaml::Value = serde_yaml::from_str(&plain).expect("clusterrole.yaml is YAML");
    assert_eq!(doc["kind"].as_str(), Some("ClusterRole"), "{plain}");
    let list = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    doc["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .map(|r| Rule {
            groups: list(&r["apiGroups"]),
            resources: list(&r["resources"]),
            verbs: list(&r["verbs"]),
        })
        .collect()
}

/// Panics naming every call the ClusterRole does not allow, and if the
/// role grants any write verb.
pub fn assert_calls_allowed(calls: &[Call]) {
    let rules = clusterrole_rules();
    for r in &rules {
        for v in &r.verbs {
            assert!(
                !WRITE_VERBS.contains(&v.as_str()),
                "ClusterRole grants write verb {v:?} on {:?}",
                r.resources
            );
        }
    }
    assert!(!calls.is_empty(), "no API calls recorded");
    let denied: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            let Some(res) = c.resource else { return true };
            let (group, name) = res.rbac();
            !rules.iter().any(|r| {
                r.groups.iter().any(|g| g == group)
                    && r.resources.iter().any(|x| x == name)
                    && r.verbs.iter().any(|v| v == &c.verb)
            })
        })
        .collect();
    assert!(
        denied.is_empty(),
        "calls the ClusterRole does not allow: {denied:#?}"
    );
}
