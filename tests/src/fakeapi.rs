//! A fake Kubernetes API server over real HTTP/1.1, for the agent's API
//! source: list and watch of Services, EndpointSlices and Nodes with
//! resource versions, chunked watch streams of newline-delimited events,
//! bookmarks, injected 410 Gone, dropped connections and an outage. It
//! records every request, so tests can check them against the RBAC rules.
//!
//! One thread per connection, one response per connection
//! (`Connection: close`): simple, and enough for one agent.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    pub const ALL: [Resource; 3] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
    ];

    /// (API group, plural name), as RBAC rules name them.
    pub fn rbac(self) -> (&'static str, &'static str) {
        match self {
            Resource::Services => ("", "services"),
            Resource::EndpointSlices => ("discovery.k8s.io", "endpointslices"),
            Resource::Nodes => ("", "nodes"),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Resource::Services => "/api/v1/services",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
            Resource::Nodes => "/api/v1/nodes",
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Resource::Services => "ServiceList",
            Resource::EndpointSlices => "EndpointSliceList",
            Resource::Nodes => "NodeList",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn of_kind(kind: &str) -> Option<Resource> {
        match kind {
            "Service" => Some(Resource::Services),
            "EndpointSlice" => Some(Resource::EndpointSlices),
            "Node" => Some(Resource::Nodes),
            _ => None,
        }
    }
}

/// One request the agent made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The RBAC verb: "list", "watch" or "get"; the HTTP method for
    /// anything else ("POST", ...).
    pub verb: String,
    pub resource: Option<Resource>,
    pub path: String,
    pub query: String,
}

type Key = (Resource, String, String);

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every event so far: (resourceVersion, resource, type, object).
    history: Vec<(u64, Resource, &'static str, Value)>,
    /// Watches from an older resourceVersion get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch with a 410 ERROR event.
    gone_epoch: u64,
    /// Bumped to cut every open connection without a proper end.
    drop_epoch: u64,
    /// While set, open watches deliver nothing.
    paused: bool,
    /// While set, every request is answered by closing the connection.
    down: bool,
    calls: Vec<Call>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    /// Serves on 127.0.0.1, a free port, in this thread's namespace.
    pub fn start() -> Result<Self> {
        Self::serve(TcpListener::bind("127.0.0.1:0")?)
    }

    /// Serves on `listener` (bind it in the namespace the agent runs in:
    /// loopback is per network namespace).
    pub fn serve(listener: TcpListener) -> Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                ..Default::default()
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let sh = sh.clone();
                std::thread::spawn(move || {
                    let _ = handle(&sh, conn);
                });
            }
        });
        Ok(FakeApi {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig whose one context points at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\nusers:\n- name: fake\n  user: {{}}\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Creates or replaces an object (ADDED or MODIFIED), by its `kind`.
    pub fn apply(&self, mut obj: Value) {
        let res = obj["kind"]
            .as_str()
            .and_then(Resource::of_kind)
            .expect("object kind is Service, EndpointSlice or Node");
        obj["apiVersion"] = json!(res.api_version());
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ns = match res {
            Resource::Nodes => String::new(),
            _ => obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
        };
        if res != Resource::Nodes {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = match st.objects.insert((res, ns, name), obj.clone()) {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        st.history.push((rv, res, kind, obj));
        drop(st);
        self.shared.wake.notify_all();
    }

    /// Deletes an object (DELETED); true if it existed.
    pub fn delete(&self, res: Resource, namespace: &str, name: &str) -> bool {
        let ns = if res == Resource::Nodes {
            ""
        } else {
            namespace
        };
        let mut st = self.shared.lock();
        let Some(mut obj) = st.objects.remove(&(res, ns.to_string(), name.to_string())) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.history.push((rv, res, "DELETED", obj));
        drop(st);
        self.shared.wake.notify_all();
        true
    }

    /// Sends a BOOKMARK with the current resourceVersion on every watch.
    pub fn bookmark(&self) {
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        for res in Resource::ALL {
            let obj = json!({
                "kind": res.list_kind().trim_end_matches("List"),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": rv.to_string()},
            });
            st.history.push((rv, res, "BOOKMARK", obj));
        }
        drop(st);
        self.shared.wake.notify_all();
    }

    /// Stops delivering watch events (they queue) until `resume`.
    pub fn pause(&self) {
        self.shared.lock().paused = true;
    }

    pub fn resume(&self) {
        self.shared.lock().paused = false;
        self.shared.wake.notify_all();
    }

    /// Forgets the history (etcd compaction): every open watch ends with
    /// a 410 Gone ERROR event, and so does any watch from an older
    /// version, so clients must relist. Events queued by `pause` are
    /// never delivered.
    pub fn expire(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
        st.gone_epoch += 1;
        drop(st);
        self.shared.wake.notify_all();
    }

    /// Cuts every open connection abruptly (no final chunk).
    pub fn drop_connections(&self) {
        self.shared.lock().drop_epoch += 1;
        self.shared.wake.notify_all();
    }

    /// While down, connections are accepted and closed at once.
    pub fn set_down(&self, down: bool) {
        let mut st = self.shared.lock();
        st.down = down;
        if down {
            st.drop_epoch += 1;
        }
        drop(st);
        self.shared.wake.notify_all();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// How many requests with `verb` on `res` were made so far.
    pub fn count(&self, verb: &str, res: Resource) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.verb == verb && c.resource == Some(res))
            .count()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.lock().drop_epoch += 1;
        self.shared.wake.notify_all();
        // Unblock accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn handle(sh: &Shared, conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Headers: read and ignore (GETs carry no body).
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {line:?}");
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params = parse_query(query);
    let res = Resource::ALL.into_iter().find(|r| r.path() == path);
    let watch = matches!(params.get("watch").map(String::as_str), Some("1" | "true"));
    let verb = match (method, res, watch) {
        ("GET", Some(_), true) => "watch".to_string(),
        ("GET", Some(_), false) => "list".to_string(),
        ("GET", None, _) => "get".to_string(),
        (m, _, _) => m.to_string(),
    };
    let mut conn = conn;
    {
        let mut st = sh.lock();
        st.calls.push(Call {
            verb,
            resource: res,
            path: path.to_string(),
            query: query.to_string(),
        });
        if st.down {
            drop(st);
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    let Some(res) = res.filter(|_| method == "GET") else {
        let body = status(404, "NotFound", &format!("{method} {path} is not served"));
        return respond(&mut conn, 404, &body.to_string());
    };
    let name_filter = params
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name="))
        .map(str::to_string);
    let wanted = |obj: &Value| {
        name_filter
            .as_deref()
            .is_none_or(|n| obj["metadata"]["name"] == n)
    };
    if !watch {
        let st = sh.lock();
        let items: Vec<&Value> = st
            .objects
            .iter()
            .filter(|((r, _, _), o)| *r == res && wanted(o))
            .map(|(_, o)| o)
            .collect();
        let body = json!({
            "kind": res.list_kind(),
            "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        });
        drop(st);
        return respond(&mut conn, 200, &body.to_string());
    }
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(290));
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )?;
    let gone = |conn: &mut TcpStream| -> Result<()> {
        let ev =
            json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
        chunk(conn, &format!("{ev}\n"))?;
        conn.write_all(b"0\r\n\r\n")?;
        Ok(())
    };
    let mut st = sh.lock();
    if from < st.compacted {
        drop(st);
        return gone(&mut conn);
    }
    let (gone_epoch, drop_epoch) = (st.gone_epoch, st.drop_epoch);
    let mut cursor = from;
    let end = Instant::now() + timeout;
    loop {
        if st.drop_epoch != drop_epoch || sh.stop.load(Ordering::SeqCst) {
            drop(st);
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        if st.gone_epoch != gone_epoch {
            drop(st);
            return gone(&mut conn);
        }
        if Instant::now() >= end {
            drop(st);
            conn.write_all(b"0\r\n\r\n")?;
            return Ok(());
        }
        if !st.paused {
            let events: Vec<String> = st
                .history
                .iter()
                .filter(|(rv, r, kind, o)| {
                    *rv > cursor && *r == res && (*kind == "BOOKMARK" || wanted(o))
                })
                .map(|(_, _, kind, o)| json!({"type": kind, "object": o}).to_string())
                .collect();
            cursor = st.rv;
            if !events.is_empty() {
                drop(st);
                for e in events {
                    chunk(&mut conn, &format!("{e}\n"))?;
                }
                st = sh.lock();
                continue;
            }
        }
        st = sh
            .wake
            .wait_timeout(st, Duration::from_millis(200))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn respond(conn: &mut TcpStream, code: u16, body: &str) -> Result<()> {
    let reason = if code == 200 { "OK" } else { "Not Found" };
    write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn chunk(conn: &mut TcpStream, data: &str) -> Result<()> {
    write!(conn, "{:x}\r\n{data}\r\n", data.len())?;
    conn.flush()?;
    Ok(())
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
