//! The Kubernetes API as a source: one kube-rs watcher per resource
//! (Services, EndpointSlices, the agent's own Node), read-only. Watch
//! tasks send their events over a channel; whoever owns the source (the
//! agent loop, a test) applies them to the one `ObjectStore`, so the
//! model stays the only translation of Services into frontends.
//!
//! A (re)list, after a watch error or 410 Gone, replaces a resource's
//! objects by difference: listed objects that are unchanged are not
//! touched, objects the list lacks are removed. While the API is
//! unreachable the store, and so the datapath, keeps the last state; the
//! watchers retry with kube-rs's default backoff.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use crate::entry::Entry;
use crate::store::{Kind, NsName, Object, ObjectId, ObjectStore};

/// A client from `kubeconfig`, or inferred (`$KUBECONFIG`, `~/.kube/config`,
/// then the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no kubeconfig and not in a cluster (pass --kubeconfig or --manifests)")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// The resources we watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watched {
    Services,
    EndpointSlices,
    Node,
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Watched::Services => "services",
            Watched::EndpointSlices => "endpointslices",
            Watched::Node => "node",
        })
    }
}

/// One watched object, typed.
// Moved once per event; boxing would only add noise (as for `Object`).
#[allow(clippy::large_enum_variant)]
enum Item {
    Object(Object),
    Node(Node),
}

/// What a watch task reports: an event, or why its watch failed.
pub struct Message {
    from: Watched,
    what: Result<watcher::Event<Item>, String>,
}

pub struct KubeSource {
    store: ObjectStore,
    /// The agent's own Node (kept for node addresses; nothing uses them yet).
    node: Option<Node>,
    rx: mpsc::Receiver<Message>,
    tasks: Vec<JoinHandle<()>>,
    watched: Vec<Watched>,
    /// Ids listed so far, per resource, while a (re)list is under way.
    relisting: BTreeMap<Watched, BTreeSet<ObjectId>>,
    /// Resources listed completely at least once.
    synced: BTreeSet<Watched>,
    /// Resources whose last watch attempt failed.
    failing: BTreeSet<Watched>,
    /// Whether the current Node (re)list delivered our Node.
    node_listed: bool,
}

impl KubeSource {
    /// Starts the watchers. With `node_name`, that Node is watched too
    /// (by field selector: never the whole node list).
    pub fn start(client: Client, node_name: Option<String>) -> Self {
        // Room for a burst; senders wait when the loop falls behind.
        let (tx, rx) = mpsc::channel(1024);
        let mut tasks = vec![
            spawn(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
                Watched::Services,
                tx.clone(),
                |o| Item::Object(Object::Service(o)),
            ),
            spawn(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default(),
                Watched::EndpointSlices,
                tx.clone(),
                |o| Item::Object(Object::EndpointSlice(o)),
            ),
        ];
        let mut watched = vec![Watched::Services, Watched::EndpointSlices];
        if let Some(name) = &node_name {
            tasks.push(spawn(
                Api::<Node>::all(client),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
                Watched::Node,
                tx,
                Item::Node,
            ));
            watched.push(Watched::Node);
        }
        KubeSource {
            store: ObjectStore::default(),
            node: None,
            rx,
            tasks,
            watched,
            relisting: BTreeMap::new(),
            synced: BTreeSet::new(),
            failing: BTreeSet::new(),
            node_listed: false,
        }
    }

    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    /// The Services whose objects changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<NsName> {
        self.store.take_dirty()
    }

    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// True once every watched resource has been listed: before that, a
    /// sync would remove what the maps hold but the API has not sent yet.
    pub fn ready(&self) -> bool {
        self.watched.iter().all(|w| self.synced.contains(w))
    }

    /// Resources whose watch is failing right now (API unreachable,
    /// forbidden, ...); empty when every watch runs.
    pub fn failing(&self) -> Vec<String> {
        self.failing.iter().map(|w| w.to_string()).collect()
    }

    /// True when the store has changes to program (and is complete).
    pub fn changed(&self) -> bool {
        self.ready() && self.store.is_dirty()
    }

    /// Waits for the next watch message and applies it, with any others
    /// already queued.
    pub async fn next(&mut self) {
        match self.rx.recv().await {
            Some(msg) => self.apply(msg),
            // Every task ended (only when the runtime shuts down).
            None => std::future::pending().await,
        }
        while let Ok(msg) = self.rx.try_recv() {
            self.apply(msg);
        }
    }

    fn apply(&mut self, msg: Message) {
        use watcher::Event;
        let from = msg.from;
        let event = match msg.what {
            Ok(ev) => ev,
            Err(error) => {
                warn!(resource = %from, %error, "API watch failed; retrying");
                self.failing.insert(from);
                return;
            }
        };
        match event {
            Event::Init => {
                self.relisting.insert(from, BTreeSet::new());
                if from == Watched::Node {
                    self.node_listed = false;
                }
            }
            Event::InitApply(item) => {
                self.node_listed |= from == Watched::Node;
                if let Some(id) = self.put(item) {
                    self.relisting.entry(from).or_default().insert(id);
                }
            }
            Event::InitDone => {
                let listed = self.relisting.remove(&from).unwrap_or_default();
                let removed = self.remove_unlisted(from, &listed);
                let objects = match from {
                    Watched::Node => usize::from(self.node.is_some()),
                    _ => listed.len(),
                };
                let first = self.synced.insert(from);
                self.failing.remove(&from);
                if first {
                    info!(resource = %from, objects, "API listed");
                } else {
                    info!(resource = %from, objects, removed, "API resynced");
                }
            }
            Event::Apply(item) => {
                self.resumed(from);
                self.put(item);
            }
            Event::Delete(item) => {
                self.resumed(from);
                match item {
                    Item::Object(obj) => self.store.remove(&obj.id()),
                    Item::Node(_) => self.node = None,
                }
            }
        }
    }

    /// An event arrived: the API answers again. All watches share one
    /// connection, so every failing mark goes (a watch still failing marks
    /// itself again with its next error).
    fn resumed(&mut self, from: Watched) {
        if !self.failing.is_empty() {
            self.failing.clear();
            info!(resource = %from, "API watch resumed");
        }
    }

    /// Stores `item` unless it is unchanged; returns its id (also when it
    /// was refused: its last good version, if any, stays and counts as
    /// listed). Node objects have no id in the store.
    fn put(&mut self, item: Item) -> Option<ObjectId> {
        match item {
            Item::Object(obj) => {
                let id = obj.id();
                match Entry::from_object(&obj) {
                    Ok(entry) if self.store.holds(&entry) => {}
                    Ok(entry) => self.store.upsert(entry),
                    Err(e) => {
                        warn!("{id}: {e}; skipped, its last good version (if any) stays");
                    }
                }
                Some(id)
            }
            Item::Node(node) => {
                self.node = Some(node);
                None
            }
        }
    }

    /// After a list of `from`: removes what it did not hold. Returns how
    /// many objects went.
    fn remove_unlisted(&mut self, from: Watched, listed: &BTreeSet<ObjectId>) -> usize {
        let kind = match from {
            Watched::Services => Kind::Service,
            Watched::EndpointSlices => Kind::EndpointSlice,
            Watched::Node => {
                let gone = !self.node_listed && self.node.take().is_some();
                return usize::from(gone);
            }
        };
        let mut removed = 0;
        for id in self.store.ids(kind) {
            if !listed.contains(&id) {
                self.store.remove(&id);
                removed += 1;
            }
        }
        removed
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs one watcher, forwarding its events as `Message`s until the
/// receiver is gone. Errors are forwarded too; the stream then retries
/// by itself after a backoff.
fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    from: Watched,
    tx: mpsc::Sender<Message>,
    wrap: fn(K) -> Item,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(r) = events.next().await {
            let what = r.map(|ev| map_event(ev, wrap)).map_err(|e| e.to_string());
            if tx.send(Message { from, what }).await.is_err() {
                return;
            }
        }
    })
}

fn map_event<K>(ev: watcher::Event<K>, wrap: fn(K) -> Item) -> watcher::Event<Item> {
    use watcher::Event;
    match ev {
        Event::Apply(o) => Event::Apply(wrap(o)),
        Event::Delete(o) => Event::Delete(wrap(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(wrap(o)),
        Event::InitDone => Event::InitDone,
    }
}
