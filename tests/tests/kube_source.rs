//! The agent's Kubernetes API source against a fake API server over real
//! HTTP on loopback: events, bookmarks, 410 relists, dropped connections,
//! an outage and bad objects, asserted on the store and the model. Needs
//! no root and no datapath.
mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::k8s::{node, service, slice};
use ferrolb_tests::fakeapi::{FakeApi, Resource};
use lb_agent::model::{self, FrontendKey, Proto};
use lb_agent::source::kube::{self, KubeSource};
use lb_agent::store::NsName;

const WAIT: Duration = Duration::from_secs(20);

struct Bed {
    api: FakeApi,
    dir: PathBuf,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let dir = std::env::temp_dir().join(format!("ferrolb-kube-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Bed {
            api: FakeApi::start().unwrap(),
            dir,
        }
    }

    async fn source(&self, node: Option<&str>) -> KubeSource {
        let kc = self.dir.join("kubeconfig");
        self.api.write_kubeconfig(&kc).unwrap();
        let client = kube::client(Some(&kc)).await.unwrap();
        KubeSource::start(client, node.map(str::to_string))
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Applies watch events until `cond` holds; fails naming `what`.
async fn until(src: &mut KubeSource, what: &str, cond: impl Fn(&KubeSource) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond(src) {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, src.next()).await.is_err() {
            panic!("timed out waiting for: {what}");
        }
    }
}

/// The backends (addr:port) of frontend `vip:port/TCP`, or None.
fn backends(src: &KubeSource, vip: &str, port: u16) -> Option<Vec<String>> {
    let d = model::desired(src.store());
    let k = FrontendKey {
        addr: vip.parse().unwrap(),
        port,
        proto: Proto::Tcp,
    };
    d.frontends
        .get(&k)
        .map(|f| f.backends.iter().map(|b| b.to_string()).collect())
}

fn key(name: &str) -> NsName {
    NsName {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn has_service(src: &KubeSource, name: &str) -> bool {
    src.store().services.contains_key(&key(name))
}

fn pods(n: &[u8]) -> Vec<String> {
    n.iter().map(|i| format!("10.244.0.{i}:9376")).collect()
}

fn seed(api: &FakeApi) {
    api.apply(service("hostnames", "10.0.1.175", 80, 9376));
    api.apply(slice(
        "hostnames-abcde",
        "hostnames",
        &["10.244.0.5", "10.244.0.6", "10.244.0.7"],
    ));
    api.apply(service("web", "10.0.2.1", 80, 9376));
    api.apply(slice("web-1", "web", &["10.244.0.8"]));
    // Port out of range: refused, named in the log, the rest programmed.
    api.apply(service("bad", "10.0.9.9", 70000, 9376));
    let mut theirs = service("theirs", "10.0.3.1", 80, 9376);
    theirs["metadata"]["labels"] =
        serde_json::json!({"service.kubernetes.io/service-proxy-name": "other"});
    api.apply(theirs);
    api.apply(node("node-a", "192.168.1.10"));
    api.apply(node("node-b", "192.168.1.11"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_events_relists_reconnects_and_outages() {
    let bed = Bed::new("events");
    let api = &bed.api;
    seed(api);
    let mut src = bed.source(Some("node-a")).await;
    until(&mut src, "initial list", |s| s.ready()).await;

    // Initial list: every good object, the bad one skipped.
    assert_eq!(backends(&src, "10.0.1.175", 80), Some(pods(&[5, 6, 7])));
    assert_eq!(backends(&src, "10.0.2.1", 80), Some(pods(&[8])));
    assert!(!has_service(&src, "bad"), "invalid Service was stored");
    assert!(has_service(&src, "theirs"));
    assert_eq!(
        backends(&src, "10.0.3.1", 80),
        None,
        "another proxy's Service"
    );
    let node_name = src.node().and_then(|n| n.metadata.name.clone());
    assert_eq!(node_name.as_deref(), Some("node-a"));
    assert!(
        api.calls()
            .iter()
            .any(|c| c.resource == Some(Resource::Nodes)
                && c.query.contains("fieldSelector=metadata.name%3Dnode-a")),
        "nodes are watched by name: {:#?}",
        api.calls()
    );
    src.take_dirty();

    // MODIFIED: a backend leaves the slice.
    api.apply(slice(
        "hostnames-abcde",
        "hostnames",
        &["10.244.0.6", "10.244.0.7"],
    ));
    until(&mut src, "slice MODIFIED", |s| {
        backends(s, "10.0.1.175", 80) == Some(pods(&[6, 7]))
    })
    .await;

    // A slice for a Service not (yet) known is kept, unused, until it comes.
    api.apply(slice("ghost-1", "ghost", &["10.244.0.9"]));
    api.apply(service("ghost", "10.0.4.1", 80, 9376));
    until(&mut src, "Service ADDED after its slice", |s| {
        backends(s, "10.0.4.1", 80) == Some(pods(&[9]))
    })
    .await;
    assert!(api.delete(Resource::Services, "default", "ghost"));
    until(&mut src, "Service DELETED", |s| !has_service(s, "ghost")).await;
    assert_eq!(backends(&src, "10.0.4.1", 80), None);
    src.take_dirty();

    // BOOKMARK: moves the resourceVersion, changes nothing. A marker
    // change after it shows it was processed.
    api.bookmark();
    api.apply(slice("web-1", "web", &["10.244.0.8", "10.244.0.10"]));
    until(&mut src, "marker after BOOKMARK", |s| {
        backends(s, "10.0.2.1", 80).is_some_and(|b| b.len() == 2)
    })
    .await;
    assert_eq!(src.take_dirty(), BTreeSet::from([key("web")]));

    // A bad MODIFIED keeps the last good version; the rest keeps working.
    api.apply(service("hostnames", "10.0.1.175", 70000, 9376));
    api.apply(slice("web-1", "web", &["10.244.0.8"]));
    until(&mut src, "marker after bad MODIFIED", |s| {
        backends(s, "10.0.2.1", 80) == Some(pods(&[8]))
    })
    .await;
    assert_eq!(backends(&src, "10.0.1.175", 80), Some(pods(&[6, 7])));

    // Dropped connection: the watch resumes from its resourceVersion;
    // what changed meanwhile arrives, no relist needed.
    let lists = api.count("list", Resource::Services);
    api.drop_connections();
    api.apply(service("web", "10.0.2.1", 8080, 9376));
    until(&mut src, "change after a dropped connection", |s| {
        backends(s, "10.0.2.1", 8080).is_some()
    })
    .await;
    assert_eq!(backends(&src, "10.0.2.1", 80), None);
    assert_eq!(
        api.count("list", Resource::Services),
        lists,
        "a dropped watch was resumed, not relisted"
    );

    // 410 Gone: a delete and an add happen while the watch is blind, then
    // the history is compacted. The relist removes what is gone, adds
    // what is new, and leaves unchanged objects untouched.
    src.take_dirty();
    api.pause();
    assert!(api.delete(Resource::Services, "default", "web"));
    assert!(api.delete(Resource::EndpointSlices, "default", "web-1"));
    api.apply(service("late", "10.0.5.1", 80, 9376));
    api.expire();
    api.resume();
    until(&mut src, "relist after 410", |s| {
        !has_service(s, "web")
            && has_service(s, "late")
            && !s.store().slices.contains_key(&key("web-1"))
    })
    .await;
    assert!(api.count("list", Resource::Services) > lists, "relisted");
    assert!(api.count("list", Resource::EndpointSlices) > 1, "relisted");
    assert_eq!(
        src.take_dirty(),
        BTreeSet::from([key("late"), key("web")]),
        "only what changed is recomputed"
    );
    assert_eq!(backends(&src, "10.0.1.175", 80), Some(pods(&[6, 7])));
    assert!(src.node().is_some(), "our Node survives the relist");

    // Outage: the store keeps everything; changes made meanwhile arrive
    // when the API is back.
    api.set_down(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while tokio::time::timeout(Duration::from_millis(10), src.next())
        .await
        .is_ok()
    {}
    assert_eq!(backends(&src, "10.0.1.175", 80), Some(pods(&[6, 7])));
    api.apply(slice(
        "hostnames-abcde",
        "hostnames",
        &["10.244.0.5", "10.244.0.6", "10.244.0.7"],
    ));
    api.set_down(false);
    until(&mut src, "change after the outage", |s| {
        backends(s, "10.0.1.175", 80) == Some(pods(&[5, 6, 7]))
    })
    .await;

    // Read-only, and within the chart's RBAC.
    common::rbac::assert_calls_allowed(&api.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_deleted_during_a_gap_is_forgotten_on_relist() {
    let bed = Bed::new("node");
    let api = &bed.api;
    api.apply(node("node-a", "192.168.1.10"));
    let mut src = bed.source(Some("node-a")).await;
    until(&mut src, "initial list", |s| {
        s.ready() && s.node().is_some()
    })
    .await;
    api.pause();
    assert!(api.delete(Resource::Nodes, "", "node-a"));
    api.expire();
    api.resume();
    until(&mut src, "Node gone after relist", |s| s.node().is_none()).await;
    common::rbac::assert_calls_allowed(&api.calls());
}

#[test]
fn chart_cluster_role_is_read_only_and_covers_the_watched_resources() {
    let rules = common::rbac::clusterrole_rules();
    let allows = |group: &str, res: &str, verb: &str| {
        rules.iter().any(|r| {
            r.groups.iter().any(|g| g == group)
                && r.resources.iter().any(|x| x == res)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    for verb in ["list", "watch"] {
        assert!(allows("", "services", verb));
        assert!(allows("discovery.k8s.io", "endpointslices", verb));
        assert!(allows("", "nodes", verb));
    }
    assert!(allows("", "nodes", "get"));
    for r in &rules {
        for v in &r.verbs {
            assert!(
                !common::rbac::WRITE_VERBS.contains(&v.as_str()),
                "write verb {v}"
            );
        }
    }
}
