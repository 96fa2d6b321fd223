//! The desired state: which frontends (VIP:port/proto) exist and which
//! backends each one balances over. A pure function of the object store,
//! the same whatever source filled it.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracing::debug;

use crate::entry::{EndpointPort, EndpointsEntry, ServiceEntry, ServicePortEntry, TargetPort};
use crate::filter;
use crate::store::{NsName, ObjectStore};

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn from_k8s(p: Option<&str>) -> Option<Proto> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => lb_common::IPPROTO_TCP,
            Proto::Udp => lb_common::IPPROTO_UDP,
            Proto::Sctp => lb_common::IPPROTO_SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            lb_common::IPPROTO_TCP => Some(Proto::Tcp),
            lb_common::IPPROTO_UDP => Some(Proto::Udp),
            lb_common::IPPROTO_SCTP => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    /// The VIP; for NodePort the unspecified address of its family.
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            std::net::SocketAddr::new(self.addr, self.port),
            self.proto
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub addr: IpAddr,
    pub port: u16,
    /// Runs on this node (its endpoint's nodeName is ours).
    pub local: bool,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        std::net::SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

/// How a frontend is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    #[default]
    ClusterIp,
    /// Every node address (key address 0.0.0.0 or ::, per family) on the
    /// nodePort.
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    pub fn is_external(self) -> bool {
        self != FrontendKind::ClusterIp
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendState {
    /// "namespace/name:portname" (or the port number when unnamed).
    pub name: String,
    /// Sorted, deduplicated.
    pub backends: Vec<BackendAddr>,
    pub kind: FrontendKind,
    /// `lb_common::SVC_FLAG_*` for the master entry.
    pub flags: u16,
    /// `loadBalancerSourceRanges` (LoadBalancer frontends only).
    pub source_ranges: Vec<Cidr>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_secs: Option<u32>,
    /// How new flows are spread over the backends.
    pub scheduler: crate::sched::Scheduler,
    /// The backends are serving-but-terminating endpoints: none is ready.
    pub terminating: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<FrontendKey, FrontendState>,
    /// healthCheckNodePort -> what it reports, for each Service with
    /// `externalTrafficPolicy: Local` that has one.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

/// What a Service's healthCheckNodePort answers (kube-proxy's format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: NsName,
    /// Endpoints of the Service on this node that get new connections.
    pub local_endpoints: usize,
}

/// One endpoint address as the model needs it, from a slice or Endpoints.
#[derive(Clone, Debug)]
struct EndpointView {
    addr: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// Its nodeName is this node's.
    local: bool,
    /// (port name, protocol) -> port number.
    ports: BTreeMap<(String, Proto), u16>,
}

/// What the model needs to know about this node and its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// Our `--service-proxy-name`: Services labelled for another proxy
    /// are left alone (`filter::skip_reason`).
    pub proxy_name: Option<String>,
    /// With it set, cluster IPs outside every prefix are refused, so a
    /// manifest cannot hijack addresses the node really uses.
    pub service_cidrs: Vec<Cidr>,
    /// This node's name: endpoints whose nodeName matches are local.
    pub node_name: Option<String>,
    /// `--service-node-port-range`, inclusive.
    pub node_port_range: (u16, u16),
    /// `--lb-algorithm`: the scheduler of Services without the annotation.
    pub default_scheduler: crate::sched::Scheduler,
    /// `--maglev-table-size`.
    pub maglev_table_size: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            proxy_name: None,
            service_cidrs: Vec::new(),
            node_name: None,
            node_port_range: (
                lb_common::DEFAULT_NODEPORT_MIN,
                lb_common::DEFAULT_NODEPORT_MAX,
            ),
            default_scheduler: crate::sched::Scheduler::Random,
            maglev_table_size: lb_common::DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }
}

/// The desired state, kept up to date Service by Service: a change to one
/// Service's objects recomputes that Service only.
#[derive(Debug, Default)]
pub struct ModelCache {
    desired: Desired,
    /// The frontends each Service produced last time.
    of_service: BTreeMap<NsName, Vec<FrontendKey>>,
    cfg: ModelConfig,
    /// Which Service holds each nodePort: the first to claim it.
    node_ports: BTreeMap<(u16, Proto), NsName>,
    /// Services refused a frontend (a nodePort, an address and port)
    /// another Service holds: recomputed after each update's Services.
    waiting: BTreeSet<NsName>,
    /// healthCheckNodePort of each Service that has one.
    health_of: BTreeMap<NsName, u16>,
}

/// What one update changed, and what it refused.
pub struct Update {
    /// Frontends whose desired state may differ from before.
    pub changed: BTreeSet<FrontendKey>,
    /// One message per frontend left out, naming its Service and field.
    pub refused: Vec<String>,
}

impl ModelCache {
    pub fn new(cfg: ModelConfig) -> Self {
        ModelCache {
            cfg,
            ..Default::default()
        }
    }

    /// A cache that programs the Services of proxy `proxy_name` (and the
    /// unlabelled ones).
    pub fn for_proxy(proxy_name: Option<String>) -> Self {
        Self::new(ModelConfig {
            proxy_name,
            ..Default::default()
        })
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Recomputes the Services in `dirty`, then those refused a frontend
    /// another Service held (it may have given it up).
    pub fn update(&mut self, store: &ObjectStore, dirty: &BTreeSet<NsName>) -> Update {
        let mut up = Update {
            changed: BTreeSet::new(),
            refused: Vec::new(),
        };
        let mut todo = dirty.clone();
        for _ in 0..2 {
            for key in &todo {
                self.waiting.remove(key);
                self.recompute(store, key, &mut up);
            }
            if self.waiting.is_empty() {
                break;
            }
            todo = std::mem::take(&mut self.waiting);
        }
        let mut seen = BTreeSet::new();
        up.refused.retain(|m| seen.insert(m.clone()));
        up
    }

    fn recompute(&mut self, store: &ObjectStore, key: &NsName, up: &mut Update) {
        for fk in self.of_service.remove(key).unwrap_or_default() {
            self.desired.frontends.remove(&fk);
            up.changed.insert(fk);
        }
        self.node_ports.retain(|_, owner| owner != key);
        if let Some(port) = self.health_of.remove(key) {
            self.desired.health_checks.remove(&port);
        }
        let Some(svc) = store.services.get(key) else {
            return;
        };
        if let Some(why) = filter::skip_reason(svc, self.cfg.proxy_name.as_deref()) {
            debug!(service = %key, "{why}: not ours to program");
            return;
        }
        let fes = service_frontends(store, key, svc, &self.cfg);
        if let Some((port, local_endpoints)) = fes.health_check {
            self.health_of.insert(key.clone(), port);
            self.desired.health_checks.insert(
                port,
                HealthCheck {
                    service: key.clone(),
                    local_endpoints,
                },
            );
        }
        up.refused.extend(fes.refused);
        let mut keys = Vec::new();
        for (fk, st, field) in fes.frontends {
            let cidrs = &self.cfg.service_cidrs;
            if st.kind == FrontendKind::ClusterIp
                && !cidrs.is_empty()
                && !cidrs.iter().any(|c| c.contains(fk.addr))
            {
                up.refused.push(format!(
                    "Service {}: field spec.clusterIP: {} is outside --service-cidr; not programmed",
                    st.name, fk.addr
                ));
                continue;
            }
            if st.kind == FrontendKind::NodePort {
                let claim = (fk.port, fk.proto);
                match self.node_ports.get(&claim) {
                    Some(owner) if owner != key => {
                        up.refused.push(format!(
                            "Service {}: field {field}: nodePort {}/{} is already used by Service {owner}; not programmed",
                            st.name, fk.port, fk.proto
                        ));
                        self.waiting.insert(key.clone());
                        continue;
                    }
                    _ => {
                        self.node_ports.insert(claim, key.clone());
                    }
                }
            }
            if let Some(old) = self.desired.frontends.get(&fk)
                && old.name != st.name
                && !keys.contains(&fk)
            {
                up.refused.push(format!(
                    "Service {}: field {field}: {fk} is already served for {}; not programmed",
                    st.name, old.name
                ));
                self.waiting.insert(key.clone());
                continue;
            }
            up.changed.insert(fk);
            keys.push(fk);
            self.desired.frontends.insert(fk, st);
        }
        self.of_service.insert(key.clone(), keys);
    }
}

/// The whole desired state of `store`, computed afresh.
pub fn desired(store: &ObjectStore) -> Desired {
    desired_with(store, ModelConfig::default())
}

/// Like [`desired`], for a node with `cfg`.
pub fn desired_with(store: &ObjectStore, cfg: ModelConfig) -> Desired {
    let mut cache = ModelCache::new(cfg);
    let all: BTreeSet<NsName> = store.services.keys().cloned().collect();
    cache.update(store, &all);
    cache.desired
}

/// A Service's frontends, each with the manifest field it comes from.
struct ServiceFrontends {
    frontends: Vec<(FrontendKey, FrontendState, String)>,
    refused: Vec<String>,
    /// (healthCheckNodePort, local endpoints) for ETP Local.
    health_check: Option<(u16, usize)>,
}

fn service_frontends(
    store: &ObjectStore,
    key: &NsName,
    svc: &ServiceEntry,
    cfg: &ModelConfig,
) -> ServiceFrontends {
    let mut out = ServiceFrontends {
        frontends: Vec::new(),
        refused: Vec::new(),
        health_check: None,
    };
    if svc.external_name {
        debug!(service = %key, "ExternalName Service: resolved by DNS, nothing to program");
        return out;
    }
    let set = |ips: &[IpAddr]| -> BTreeSet<IpAddr> { ips.iter().copied().collect() };
    let vips = set(&svc.cluster_ips);
    if svc.cluster_ips.is_empty() {
        debug!(service = %key, "headless Service (clusterIP: None): nothing to program");
        return out;
    }
    let (external_ips, lb_ips) = (set(&svc.external_ips), set(&svc.lb_ips));
    // The Service's families are its cluster IPs' (ipFamilies): each
    // family's frontends get that family's endpoints, as kube-proxy's
    // per-family proxiers do; the first is the primary.
    let families: BTreeSet<bool> = vips.iter().map(IpAddr::is_ipv6).collect();
    let primary_v6 = svc.cluster_ips[0].is_ipv6();
    let endpoints = endpoints_of(store, key, cfg.node_name.as_deref());
    let of_family = |v6: bool, local: bool| -> Vec<EndpointView> {
        endpoints
            .iter()
            .filter(|e| e.addr.is_ipv6() == v6 && (!local || e.local))
            .cloned()
            .collect()
    };
    let (eps4, eps6) = (of_family(false, false), of_family(true, false));
    let (local4, local6) = (of_family(false, true), of_family(true, true));
    let ports = &svc.ports;
    let mut local_ready = BTreeSet::new();
    // Validated with the object: a bad name never gets here.
    let scheduler = svc
        .algorithm
        .as_deref()
        .and_then(|a| crate::sched::parse(a, cfg.maglev_table_size).ok())
        .unwrap_or(match cfg.default_scheduler {
            crate::sched::Scheduler::Maglev(_) => {
                crate::sched::Scheduler::Maglev(cfg.maglev_table_size)
            }
            other => other,
        });
    for (i, sp) in ports.iter().enumerate() {
        let proto = sp.proto;
        let only = ports.len() == 1;
        let pnr = svc.publish_not_ready;
        let all = [
            backends_for(sp, only, &eps4, pnr),
            backends_for(sp, only, &eps6, pnr),
        ];
        let local = [
            backends_for(sp, only, &local4, pnr),
            backends_for(sp, only, &local6, pnr),
        ];
        let primary = primary_v6 as usize;
        local_ready.extend(local[primary].0.iter().map(|b| b.addr));
        let port_label = sp.name.clone().unwrap_or_else(|| sp.port.to_string());
        let name = format!("{key}:{port_label}");
        let state = |kind: FrontendKind, addr: &IpAddr| {
            let family = addr.is_ipv6() as usize;
            let (all, local) = (&all[family], &local[family]);
            let (local_only, backends) = match kind {
                FrontendKind::ClusterIp => (svc.itp_local, if svc.itp_local { local } else { all }),
                _ => (svc.etp_local, if svc.etp_local { local } else { all }),
            };
            let mut flags = lb_common::SVC_FLAG_NONE;
            if kind.is_external() {
                flags |= lb_common::SVC_FLAG_EXTERNAL;
            }
            if local_only {
                flags |= lb_common::SVC_FLAG_LOCAL_ONLY;
            }
            let source_ranges = if kind == FrontendKind::LoadBalancer {
                svc.source_ranges.clone()
            } else {
                Vec::new()
            };
            if !source_ranges.is_empty() {
                flags |= lb_common::SVC_FLAG_SOURCE_RANGES;
            }
            if svc.affinity_secs.is_some() {
                flags |= lb_common::SVC_FLAG_AFFINITY;
            }
            if scheduler != crate::sched::Scheduler::Random {
                flags |= lb_common::SVC_FLAG_SCHED;
            }
            if scheduler == crate::sched::Scheduler::LeastConn {
                flags |= lb_common::SVC_FLAG_LEAST_CONN;
            }
            FrontendState {
                name: name.clone(),
                backends: backends.0.clone(),
                terminating: backends.1,
                kind,
                flags,
                source_ranges,
                affinity_secs: svc.affinity_secs,
                scheduler,
            }
        };
        let fk = |addr: IpAddr, port: u16| FrontendKey { addr, port, proto };
        for vip in &vips {
            out.frontends.push((
                fk(*vip, sp.port),
                state(FrontendKind::ClusterIp, vip),
                "spec.clusterIP".into(),
            ));
        }
        if svc.node_ports
            && let Some(np) = sp.node_port
        {
            let field = format!("spec.ports[{i}].nodePort");
            let (min, max) = cfg.node_port_range;
            if (min..=max).contains(&np) {
                for &v6 in &families {
                    let any = if v6 {
                        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                    };
                    out.frontends.push((
                        fk(any, np),
                        state(FrontendKind::NodePort, &any),
                        field.clone(),
                    ));
                }
            } else {
                out.refused.push(format!(
                    "Service {name}: field {field}: {np} is outside --service-node-port-range {min}-{max}; not programmed"
                ));
            }
        }
        for (j, ip) in external_ips.iter().enumerate() {
            out.frontends.push((
                fk(*ip, sp.port),
                state(FrontendKind::ExternalIp, ip),
                format!("spec.externalIPs[{j}]"),
            ));
        }
        for (j, ip) in lb_ips.iter().enumerate() {
            out.frontends.push((
                fk(*ip, sp.port),
                state(FrontendKind::LoadBalancer, ip),
                format!("status.loadBalancer.ingress[{j}].ip"),
            ));
        }
    }
    if svc.etp_local
        && let Some(port) = svc.health_check_node_port
    {
        out.health_check = Some((port, local_ready.len()));
    }
    out
}

/// Resolves the target port of service port `sp` for one endpoint: by port
/// name and protocol through the endpoint's ports (this is how named
/// targetPorts resolve), else a numeric targetPort, else the port itself.
fn target_port(sp: &ServicePortEntry, only_port: bool, ep: &EndpointView) -> Option<u16> {
    let proto = sp.proto;
    let name = sp.name.clone().unwrap_or_default();
    if let Some(p) = ep.ports.get(&(name, proto)) {
        return Some(*p);
    }
    if only_port {
        // A single-port Service matches the single endpoint port whatever its name.
        let mut same_proto = ep.ports.iter().filter(|((_, pr), _)| *pr == proto);
        if let (Some((_, p)), None) = (same_proto.next(), same_proto.next()) {
            return Some(*p);
        }
    }
    if !ep.ports.is_empty() {
        return None;
    }
    match sp.target {
        TargetPort::Number(p) => Some(p),
        TargetPort::Named => None,
        TargetPort::Same => Some(sp.port),
    }
}

fn backends_for(
    sp: &ServicePortEntry,
    only_port: bool,
    endpoints: &[EndpointView],
    publish_not_ready: bool,
) -> (Vec<BackendAddr>, bool) {
    let pick = |ep: &EndpointView| -> Option<BackendAddr> {
        target_port(sp, only_port, ep).map(|port| BackendAddr {
            addr: ep.addr,
            port,
            local: ep.local,
        })
    };
    let ready: BTreeSet<BackendAddr> = endpoints
        .iter()
        .filter(|e| publish_not_ready || e.ready)
        .filter_map(pick)
        .collect();
    if !ready.is_empty() {
        return (ready.into_iter().collect(), false);
    }
    // No ready endpoint: fall back to serving-but-terminating ones, so
    // connections drain gracefully instead of failing.
    let terminating: Vec<BackendAddr> = endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .filter_map(pick)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let any = !terminating.is_empty();
    (terminating, any)
}

/// All endpoints of a Service: its EndpointSlices merged (deduplicated by
/// address), or its legacy Endpoints object when it has no slice.
fn endpoints_of(store: &ObjectStore, key: &NsName, node: Option<&str>) -> Vec<EndpointView> {
    let mut slices = store.slices_of(key).peekable();
    if slices.peek().is_some() {
        let mut by_addr: BTreeMap<IpAddr, EndpointView> = BTreeMap::new();
        for s in slices {
            if !s.ip {
                continue;
            }
            let ports = port_map(&s.ports);
            for a in &s.addresses {
                let v = EndpointView {
                    addr: a.addr,
                    ready: a.ready,
                    serving: a.serving,
                    terminating: a.terminating,
                    local: node.is_some() && a.node.as_deref() == node,
                    ports: ports.clone(),
                };
                by_addr
                    .entry(a.addr)
                    .and_modify(|old| {
                        old.ready |= v.ready;
                        old.serving |= v.serving;
                        old.terminating &= v.terminating;
                        old.local |= v.local;
                        old.ports.extend(v.ports.clone());
                    })
                    .or_insert(v);
            }
        }
        return by_addr.into_values().collect();
    }
    match store.endpoints.get(key) {
        Some(ep) => legacy_endpoints(ep),
        None => Vec::new(),
    }
}

/// (port name, protocol) -> port number.
fn port_map(ports: &[EndpointPort]) -> BTreeMap<(String, Proto), u16> {
    ports
        .iter()
        .map(|p| ((p.name.clone(), p.proto), p.port))
        .collect()
}

fn legacy_endpoints(ep: &EndpointsEntry) -> Vec<EndpointView> {
    let mut out = Vec::new();
    for sub in &ep.subsets {
        let ports = port_map(&sub.ports);
        let mut push = |addr: IpAddr, ready: bool| {
            // Legacy Endpoints name no node here: never local.
            out.push(EndpointView {
                addr,
                ready,
                serving: ready,
                terminating: false,
                local: false,
                ports: ports.clone(),
            });
        };
        for a in &sub.ready {
            push(*a, true);
        }
        for a in &sub.not_ready {
            push(*a, false);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::source::manifest::parse_str;

    fn store(yaml: &str) -> ObjectStore {
        let mut s = ObjectStore::default();
        for d in parse_str(Path::new("t.yaml"), yaml).unwrap() {
            s.upsert(d.result.unwrap());
        }
        s
    }

    fn backends(d: &Desired, vip: &str, port: u16, proto: Proto) -> Vec<String> {
        let k = FrontendKey {
            addr: vip.parse().unwrap(),
            port,
            proto,
        };
        d.frontends[&k]
            .backends
            .iter()
            .map(|b| b.to_string())
            .collect()
    }

    const SLICE_HEAD: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s1, labels: {kubernetes.io/service-name: svc}}\naddressType: IPv4\n";

    #[test]
    fn updates_recompute_only_touched_services() {
        let two = |eps: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec: {{clusterIP: 10.0.0.1, ports: [{{port: 80}}]}}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec: {{clusterIP: 10.0.0.2, ports: [{{port: 80}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: a-1, labels: {{kubernetes.io/service-name: a}}}}\n\
                 addressType: IPv4\nports: [{{port: 80}}]\nendpoints: [{eps}]\n"
            )
        };
        let mut s = store(&two("{addresses: [10.244.0.1]}"));
        let mut cache = ModelCache::default();
        let dirty = s.take_dirty();
        let up = cache.update(&s, &dirty);
        assert_eq!(up.changed.len(), 2);
        assert_eq!(
            backends(cache.desired(), "10.0.0.1", 80, Proto::Tcp),
            ["10.244.0.1:80"]
        );
        // Changing a's slice touches a only, and the result equals a fresh model.
        for d in parse_str(Path::new("t.yaml"), &two("{addresses: [10.244.0.2]}")).unwrap() {
            s.upsert(d.result.unwrap());
        }
        let dirty = s.take_dirty();
        assert_eq!(dirty.len(), 2, "every upserted object marks its Service");
        let only_a: std::collections::BTreeSet<NsName> =
            dirty.into_iter().filter(|k| k.name == "a").collect();
        let up = cache.update(&s, &only_a);
        assert_eq!(up.changed.len(), 1);
        assert_eq!(cache.desired(), &desired(&s));
        // Removing the Service removes its frontend.
        s.remove(&crate::store::ObjectId {
            kind: crate::store::Kind::Service,
            key: NsName {
                namespace: "default".into(),
                name: "a".into(),
            },
        });
        let dirty = s.take_dirty();
        let up = cache.update(&s, &dirty);
        assert_eq!(up.changed.len(), 1);
        assert_eq!(cache.desired().frontends.len(), 1);
    }

    #[test]
    fn same_port_with_two_protocols_is_two_frontends() {
        let d = desired(&store(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc}}\nspec:\n  clusterIP: 10.0.0.10\n  ports:\n  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353}}\n---\n{SLICE_HEAD}ports: [{{name: dns, port: 5353, protocol: UDP}}, {{name: dns-tcp, port: 5354, protocol: TCP}}]\nendpoints: [{{addresses: [10.244.0.9]}}]\n"
        )));
        assert_eq!(
            backends(&d, "10.0.0.10", 53, Proto::Udp),
            ["10.244.0.9:5353"]
        );
        assert_eq!(
            backends(&d, "10.0.0.10", 53, Proto::Tcp),
            ["10.244.0.9:5354"]
        );
    }

    #[test]
    fn terminating_endpoints_only_when_none_is_ready() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec:\n  clusterIP: 10.0.0.11\n  ports: [{port: 80, targetPort: 8080}]\n---\n";
        let eps = |a: &str, b: &str| {
            format!(
                "{svc}{SLICE_HEAD}ports: [{{port: 8080}}]\nendpoints:\n- {{addresses: [10.244.0.1], conditions: {a}}}\n- {{addresses: [10.244.0.2], conditions: {b}}}\n"
            )
        };
        let d = desired(&store(&eps(
            "{ready: true}",
            "{ready: false, serving: true, terminating: true}",
        )));
        assert_eq!(
            backends(&d, "10.0.0.11", 80, Proto::Tcp),
            ["10.244.0.1:8080"]
        );
        let d = desired(&store(&eps(
            "{ready: false, serving: false}",
            "{ready: false, serving: true, terminating: true}",
        )));
        assert_eq!(
            backends(&d, "10.0.0.11", 80, Proto::Tcp),
            ["10.244.0.2:8080"]
        );
    }

    #[test]
    fn headless_and_external_name_are_not_programmed() {
        let d = desired(&store(
            "apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec: {type: ExternalName, externalName: db.example.com}\n",
        ));
        assert!(d.frontends.is_empty());
    }

    #[test]
    fn services_of_other_proxies_and_headless_label_are_not_programmed() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: plain}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: theirs, labels: {service.kubernetes.io/service-proxy-name: other}}\nspec: {clusterIP: 10.0.0.2, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: ours, labels: {service.kubernetes.io/service-proxy-name: ferrolb}}\nspec: {clusterIP: 10.0.0.3, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: h, labels: {service.kubernetes.io/headless: ''}}\nspec: {clusterIP: 10.0.0.4, ports: [{port: 80}]}\n";
        let st = store(yaml);
        let vips = |cache: &ModelCache| -> Vec<String> {
            cache
                .desired()
                .frontends
                .keys()
                .map(|k| k.addr.to_string())
                .collect()
        };
        let all: BTreeSet<NsName> = st.services.keys().cloned().collect();
        let mut unnamed = ModelCache::default();
        unnamed.update(&st, &all);
        assert_eq!(vips(&unnamed), ["10.0.0.1"]);
        let mut named = ModelCache::for_proxy(Some("ferrolb".into()));
        named.update(&st, &all);
        assert_eq!(vips(&named), ["10.0.0.1", "10.0.0.3"]);
    }

    #[test]
    fn slices_of_one_service_merge_and_dedupe() {
        let d = desired(&store(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc}}\nspec:\n  clusterIP: 10.0.0.12\n  ports: [{{name: web, port: 80, targetPort: http}}]\n---\n{SLICE_HEAD}ports: [{{name: web, port: 8080}}]\nendpoints: [{{addresses: [10.244.0.1]}}, {{addresses: [10.244.0.2]}}]\n---\n{}",
            SLICE_HEAD.replace("name: s1", "name: s2")
                + "ports: [{name: web, port: 8080}]\nendpoints: [{addresses: [10.244.0.2]}, {addresses: [10.244.0.3]}]\n"
        )));
        assert_eq!(
            backends(&d, "10.0.0.12", 80, Proto::Tcp),
            ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"]
        );
    }
}

/// A prefix of either family, as given to `--service-cidr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// True for an address of the prefix's family inside it.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network(), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => Cidr::mask_v4(a, self.len) == n,
            (IpAddr::V6(n), IpAddr::V6(a)) => Cidr::mask_v6(a, self.len) == n,
            _ => false,
        }
    }

    /// The prefix's first address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Cidr::mask_v4(a, self.len)),
            IpAddr::V6(a) => IpAddr::V6(Cidr::mask_v6(a, self.len)),
        }
    }

    fn mask_v4(a: Ipv4Addr, len: u8) -> Ipv4Addr {
        let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
        Ipv4Addr::from(u32::from(a) & mask)
    }

    fn mask_v6(a: Ipv6Addr, len: u8) -> Ipv6Addr {
        let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
        Ipv6Addr::from(u128::from(a) & mask)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (expected address/length)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} in {s:?} is not an IP address"))?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length {l:?} in {s:?} is not 0-{max}"))?;
        Ok(Cidr { addr, len })
    }
}

#[cfg(test)]
mod external_tests {
    use std::path::Path;

    use super::*;
    use crate::source::manifest::parse_str;

    fn store(yaml: &str) -> ObjectStore {
        let mut s = ObjectStore::default();
        for d in parse_str(Path::new("t.yaml"), yaml).unwrap() {
            s.upsert(d.result.unwrap());
        }
        s
    }

    fn node(name: &str) -> ModelConfig {
        ModelConfig {
            node_name: Some(name.into()),
            ..Default::default()
        }
    }

    const ENDPOINTS: &str = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 9376}]\nendpoints:\n- {addresses: [10.244.1.5], nodeName: node-a}\n- {addresses: [10.244.2.5], nodeName: node-b}\n";

    fn web(spec_extra: &str, status: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  clusterIP: 10.0.0.20\n  ports: [{{port: 80, targetPort: 9376, nodePort: 30080}}]\n{spec_extra}{status}{ENDPOINTS}"
        )
    }

    fn fe(addr: &str, port: u16) -> FrontendKey {
        FrontendKey {
            addr: addr.parse().unwrap(),
            port,
            proto: Proto::Tcp,
        }
    }

    #[test]
    fn session_affinity_reaches_every_frontend_of_the_service_with_its_timeout() {
        let d = desired(&store(&web(
            "  type: NodePort\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
            "",
        )));
        assert_eq!(d.frontends.len(), 2, "{d:?}");
        for st in d.frontends.values() {
            assert_eq!(st.affinity_secs, Some(60));
            assert_ne!(st.flags & lb_common::SVC_FLAG_AFFINITY, 0);
        }
        // The default timeout, and none without ClientIP.
        let d = desired(&store(&web("  sessionAffinity: ClientIP\n", "")));
        assert_eq!(
            d.frontends[&fe("10.0.0.20", 80)].affinity_secs,
            Some(10_800)
        );
        let d = desired(&store(&web("  sessionAffinity: None\n", "")));
        assert_eq!(d.frontends[&fe("10.0.0.20", 80)].affinity_secs, None);
        assert_eq!(
            d.frontends[&fe("10.0.0.20", 80)].flags & lb_common::SVC_FLAG_AFFINITY,
            0
        );
    }

    #[test]
    fn bad_session_affinity_fields_are_named() {
        for (extra, field) in [
            ("  sessionAffinity: Sticky\n", "spec.sessionAffinity"),
            (
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}\n",
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            ),
        ] {
            let docs = parse_str(Path::new("t.yaml"), &web(extra, "")).unwrap();
            let e = docs[0].result.as_ref().unwrap_err().to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn nodeport_load_balancer_and_external_ips_are_external_frontends() {
        let st = store(&web(
            "  type: LoadBalancer\n  externalIPs: [192.168.60.20]\n  loadBalancerSourceRanges: [192.168.50.0/24]\n",
            "status: {loadBalancer: {ingress: [{ip: 192.168.60.10}]}}\n",
        ));
        let d = desired_with(&st, node("node-a"));
        let kinds: Vec<(String, FrontendKind)> = d
            .frontends
            .iter()
            .map(|(k, s)| (k.to_string(), s.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("0.0.0.0:30080/TCP".to_string(), FrontendKind::NodePort),
                ("10.0.0.20:80/TCP".to_string(), FrontendKind::ClusterIp),
                (
                    "192.168.60.10:80/TCP".to_string(),
                    FrontendKind::LoadBalancer
                ),
                ("192.168.60.20:80/TCP".to_string(), FrontendKind::ExternalIp),
            ]
        );
        let lb = &d.frontends[&fe("192.168.60.10", 80)];
        assert_eq!(
            lb.flags,
            lb_common::SVC_FLAG_EXTERNAL | lb_common::SVC_FLAG_SOURCE_RANGES
        );
        assert_eq!(lb.source_ranges, ["192.168.50.0/24".parse().unwrap()]);
        // Source ranges guard the load balancer's address only.
        assert!(d.frontends[&fe("0.0.0.0", 30080)].source_ranges.is_empty());
        assert_eq!(d.frontends[&fe("10.0.0.20", 80)].flags, 0);
        // Cluster policy: every endpoint, those on this node marked local.
        let np = &d.frontends[&fe("0.0.0.0", 30080)];
        let locals: Vec<bool> = np.backends.iter().map(|b| b.local).collect();
        assert_eq!(locals, [true, false]);
    }

    /// A dual-stack `web` (NodePort), one slice per family, as the
    /// EndpointSlice controller writes them.
    const DUAL: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n  clusterIP: fd00:10::20\n  clusterIPs: [\"fd00:10::20\", 10.0.0.20]\n  ports: [{port: 80, targetPort: 9376, nodePort: 30080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-v4, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 9376}]\nendpoints:\n- {addresses: [10.244.1.5], nodeName: node-a}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-v6, labels: {kubernetes.io/service-name: web}}\naddressType: IPv6\nports: [{port: 9376}]\nendpoints:\n- {addresses: [\"fd00:244:1::5\"], nodeName: node-a}\n- {addresses: [\"fd00:244:2::5\"], nodeName: node-b}\n";

    #[test]
    fn dual_stack_services_get_each_familys_endpoints_per_frontend() {
        let d = desired_with(&store(DUAL), node("node-a"));
        let fes: Vec<(String, Vec<String>)> = d
            .frontends
            .iter()
            .map(|(k, s)| {
                (
                    k.to_string(),
                    s.backends.iter().map(|b| b.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            fes,
            [
                (
                    "0.0.0.0:30080/TCP".to_string(),
                    vec!["10.244.1.5:9376".to_string()]
                ),
                (
                    "10.0.0.20:80/TCP".to_string(),
                    vec!["10.244.1.5:9376".to_string()]
                ),
                (
                    "[::]:30080/TCP".to_string(),
                    vec![
                        "[fd00:244:1::5]:9376".to_string(),
                        "[fd00:244:2::5]:9376".to_string()
                    ]
                ),
                (
                    "[fd00:10::20]:80/TCP".to_string(),
                    vec![
                        "[fd00:244:1::5]:9376".to_string(),
                        "[fd00:244:2::5]:9376".to_string()
                    ]
                ),
            ]
        );
        // Locality is per endpoint, whatever its family.
        let np6 = &d.frontends[&fe("::", 30080)];
        let locals: Vec<bool> = np6.backends.iter().map(|b| b.local).collect();
        assert_eq!(locals, [true, false]);
    }

    #[test]
    fn an_ipv6_service_outside_an_ipv4_service_cidr_is_refused_by_name() {
        let mut st = store(DUAL);
        let mut cache = ModelCache::new(ModelConfig {
            service_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            node_name: Some("node-a".into()),
            ..Default::default()
        });
        let dirty = st.take_dirty();
        let up = cache.update(&st, &dirty);
        assert_eq!(
            up.refused,
            [
                "Service default/web:80: field spec.clusterIP: fd00:10::20 is outside --service-cidr; not programmed"
            ]
        );
        // The IPv4 side and both NodePorts are programmed.
        assert_eq!(cache.desired().frontends.len(), 3);
        // With both families' prefixes, both are served.
        let mut cache = ModelCache::new(ModelConfig {
            service_cidrs: vec![
                "10.0.0.0/16".parse().unwrap(),
                "fd00:10::/108".parse().unwrap(),
            ],
            ..Default::default()
        });
        let all = st.services.keys().cloned().collect();
        assert!(cache.update(&st, &all).refused.is_empty());
        assert_eq!(cache.desired().frontends.len(), 4);
    }

    #[test]
    fn local_traffic_policies_keep_this_nodes_endpoints() {
        let st = store(&web(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30500\n",
            "status: {loadBalancer: {ingress: [{ip: 192.168.60.10}]}}\n",
        ));
        for (node_name, want, count) in [
            ("node-a", vec!["10.244.1.5:9376"], 1),
            ("node-c", vec![], 0),
        ] {
            let d = desired_with(&st, node(node_name));
            for k in [fe("0.0.0.0", 30080), fe("192.168.60.10", 80)] {
                let s = &d.frontends[&k];
                let got: Vec<String> = s.backends.iter().map(|b| b.to_string()).collect();
                assert_eq!(got, want, "{k} on {node_name}");
                assert_ne!(s.flags & lb_common::SVC_FLAG_LOCAL_ONLY, 0);
            }
            // The cluster IP still balances over every endpoint.
            assert_eq!(d.frontends[&fe("10.0.0.20", 80)].backends.len(), 2);
            assert_eq!(d.health_checks[&30500].local_endpoints, count);
        }
        let st = store(&web("  internalTrafficPolicy: Local\n", ""));
        let d = desired_with(&st, node("node-b"));
        let s = &d.frontends[&fe("10.0.0.20", 80)];
        assert_eq!(s.backends.len(), 1);
        assert_eq!(s.backends[0].addr, IpAddr::from([10, 244, 2, 5]));
        assert_eq!(s.flags, lb_common::SVC_FLAG_LOCAL_ONLY);
    }

    #[test]
    fn bad_node_ports_are_refused_by_name_and_the_rest_is_programmed() {
        let svc = |name: &str, ip: &str, np: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{type: NodePort, clusterIP: {ip}, ports: [{{port: 80, nodePort: {np}}}]}}\n---\n"
            )
        };
        let st = store(&format!(
            "{}{}{}",
            svc("a", "10.0.0.1", 30080),
            svc("b", "10.0.0.2", 30080),
            svc("c", "10.0.0.3", 40000)
        ));
        let mut cache = ModelCache::default();
        let all: BTreeSet<NsName> = st.services.keys().cloned().collect();
        let up = cache.update(&st, &all);
        assert_eq!(
            up.refused,
            [
                "Service default/b:80: field spec.ports[0].nodePort: nodePort 30080/TCP is already used by Service default/a; not programmed",
                "Service default/c:80: field spec.ports[0].nodePort: 40000 is outside --service-node-port-range 30000-32767; not programmed",
            ]
        );
        // Every cluster IP is programmed, and a's NodePort.
        let d = cache.desired();
        assert_eq!(d.frontends.len(), 4);
        assert_eq!(d.frontends[&fe("0.0.0.0", 30080)].name, "default/a:80");
        // When a goes, b gets the port.
        let mut st = st;
        st.remove(&crate::store::ObjectId {
            kind: crate::store::Kind::Service,
            key: NsName {
                namespace: "default".into(),
                name: "a".into(),
            },
        });
        let dirty = st.take_dirty();
        let up = cache.update(&st, &dirty);
        assert!(
            up.refused.iter().all(|m| !m.contains("default/b")),
            "{:?}",
            up.refused
        );
        assert_eq!(
            cache.desired().frontends[&fe("0.0.0.0", 30080)].name,
            "default/b:80"
        );
    }

    #[test]
    fn an_external_ip_that_is_not_an_ip_names_the_service_and_field() {
        let docs = parse_str(
            Path::new("svc.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: my-service}\nspec: {clusterIP: 10.0.0.9, externalIPs: [not-an-ip], ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: fine}\nspec: {clusterIP: 10.0.0.8, loadBalancerSourceRanges: [10.0.0.0/33], ports: [{port: 80}]}\n",
        )
        .unwrap();
        let errs: Vec<String> = docs
            .iter()
            .filter_map(|d| d.result.as_ref().err().map(|e| e.to_string()))
            .collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains("Service default/my-service")
                && errs[0].contains("spec.externalIPs[0]")
                && errs[0].contains("not-an-ip"),
            "{}",
            errs[0]
        );
        assert!(
            errs[1].contains("spec.loadBalancerSourceRanges[0]"),
            "{}",
            errs[1]
        );
    }
}

#[cfg(test)]
mod cidr_tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_restriction() {
        let c: Cidr = "10.0.0.0/16".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 0, 1, 175).into()));
        assert!(!c.contains(Ipv4Addr::new(10, 1, 0, 1).into()));
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().contains("0-32"));
        assert!("10.0.0.300/8".parse::<Cidr>().is_err());
        let c6: Cidr = "fd00:10::/108".parse().unwrap();
        assert!(c6.contains("fd00:10::175".parse().unwrap()));
        assert!(!c6.contains("fd00:11::1".parse().unwrap()));
        assert!(
            !c6.contains(Ipv4Addr::new(10, 0, 1, 175).into()),
            "other family"
        );
        assert!(
            !c.contains("::ffff:10.0.1.175".parse().unwrap()),
            "other family"
        );
        assert!("fd00::/129".parse::<Cidr>().unwrap_err().contains("0-128"));
        let mut store = ObjectStore::default();
        for last in [1u8, 2] {
            let text = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{last}}}\nspec: {{clusterIP: 10.{last}.0.1, ports: [{{port: 80}}]}}\n"
            );
            for d in
                crate::source::manifest::parse_str(std::path::Path::new("t.yaml"), &text).unwrap()
            {
                store.upsert(d.result.unwrap());
            }
        }
        let mut cache = ModelCache::new(ModelConfig {
            service_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            ..Default::default()
        });
        let dirty = store.take_dirty();
        let up = cache.update(&store, &dirty);
        assert_eq!(cache.desired().frontends.len(), 1);
        assert_eq!(up.changed.len(), 1);
        assert_eq!(
            up.refused,
            [
                "Service default/s2:80: field spec.clusterIP: 10.2.0.1 is outside --service-cidr; not programmed"
            ]
        );
    }
}
