//! What the store keeps of each object: only the fields the model, the
//! Service filter and the conntrack purge read, converted from the
//! k8s-openapi object once it has been validated. A full object costs
//! kilobytes (every optional field of the API, most of them empty); these
//! cost what the fields they hold cost, which is what lets the agent hold
//! a large cluster in little memory.
use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1::{Endpoints, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::filter::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
use crate::model::{Cidr, Proto, SERVICE_NAME_LABEL};
use crate::store::{Kind, NsName, Object, ObjectId};
use crate::validate::{self, FieldError};

/// One validated object, by namespace/name.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: NsName,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Service(ServiceEntry),
    EndpointSlice(SliceEntry),
    Endpoints(EndpointsEntry),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceEntry {
    /// The `service.kubernetes.io/service-proxy-name` label.
    pub proxy_name: Option<String>,
    /// The `service.kubernetes.io/headless` label is set.
    pub headless_label: bool,
    /// `type: ExternalName`.
    pub external_name: bool,
    /// `spec.clusterIPs` then `spec.clusterIP`, without the "None" and
    /// empty ones (so empty for headless Services).
    pub cluster_ips: Vec<IpAddr>,
    pub publish_not_ready: bool,
    pub ports: Vec<ServicePortEntry>,
    /// `type: NodePort` or `LoadBalancer`: the ports' nodePorts are served.
    pub node_ports: bool,
    /// `spec.externalIPs` (served like NodePort traffic, on the port).
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of a `type: LoadBalancer`.
    pub lb_ips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`.
    pub etp_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub itp_local: bool,
    /// `spec.healthCheckNodePort` (ETP Local LoadBalancers).
    pub health_check_node_port: Option<u16>,
    /// `spec.loadBalancerSourceRanges`, IPv4 ones (others have no
    /// IPv4 frontend to apply to yet).
    pub source_ranges: Vec<Cidr>,
    /// `sessionAffinity: ClientIP`: its
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` (default 10800).
    pub affinity_secs: Option<u32>,
    /// The [`crate::sched::ANNOTATION`] annotation: a scheduler's name
    /// (validated), for the model to size.
    pub algorithm: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePortEntry {
    pub name: Option<String>,
    pub port: u16,
    pub proto: Proto,
    pub target: TargetPort,
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TargetPort {
    /// No targetPort: the port itself.
    Same,
    Number(u16),
    /// Named: resolved through the endpoints' port names.
    Named,
}

/// A port of an EndpointSlice or Endpoints subset that has a number.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointPort {
    /// Empty when unnamed.
    pub name: String,
    pub proto: Proto,
    pub port: u16,
}

/// One address of an endpoint, with the endpoint's conditions
/// resolved as the API defines them (nil ready means ready, nil serving
/// follows ready).
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointAddr {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The endpoint's `nodeName`: the node it runs on.
    pub node: Option<Box<str>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceEntry {
    /// The Service named by the `kubernetes.io/service-name` label.
    pub service: Option<String>,
    /// `addressType: IPv4` or `IPv6` (FQDN slices are not programmed):
    /// their addresses serve the Service's VIPs of that family.
    pub ip: bool,
    pub ports: Vec<EndpointPort>,
    /// Every endpoint's addresses, in order.
    pub addresses: Vec<EndpointAddr>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointsEntry {
    pub subsets: Vec<SubsetEntry>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubsetEntry {
    pub ports: Vec<EndpointPort>,
    pub ready: Vec<IpAddr>,
    pub not_ready: Vec<IpAddr>,
}

impl Entry {
    /// Validates `obj` and keeps what the agent needs of it.
    pub fn from_object(obj: &Object) -> Result<Entry, FieldError> {
        validate::object(obj)?;
        let key = obj.id().key;
        let body = match obj {
            Object::Service(s) => Body::Service(service(s)),
            Object::EndpointSlice(s) => Body::EndpointSlice(slice(s)),
            Object::Endpoints(e) => Body::Endpoints(endpoints(e)),
        };
        Ok(Entry { key, body })
    }

    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Service(_) => Kind::Service,
            Body::EndpointSlice(_) => Kind::EndpointSlice,
            Body::Endpoints(_) => Kind::Endpoints,
        }
    }

    pub fn id(&self) -> ObjectId {
        ObjectId {
            kind: self.kind(),
            key: self.key.clone(),
        }
    }
}

// The conversions below rely on `validate` having passed: ports are in
// range, protocols known and addresses parse.

fn proto(p: Option<&str>) -> Proto {
    Proto::from_k8s(p).unwrap_or(Proto::Tcp)
}

fn service(s: &Service) -> ServiceEntry {
    let labels = s.metadata.labels.as_ref();
    let mut out = ServiceEntry {
        proxy_name: labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL).cloned()),
        headless_label: labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)),
        ..Default::default()
    };
    out.algorithm = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::sched::ANNOTATION).cloned());
    let Some(spec) = &s.spec else { return out };
    let ty = spec.type_.as_deref();
    out.external_name = ty == Some("ExternalName");
    out.node_ports = matches!(ty, Some("NodePort") | Some("LoadBalancer"));
    out.external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|v| v.parse().ok())
        .collect();
    if ty == Some("LoadBalancer") {
        out.lb_ips = s
            .status
            .iter()
            .filter_map(|st| st.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
    }
    out.etp_local = spec.external_traffic_policy.as_deref() == Some("Local");
    out.itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    out.health_check_node_port = spec.health_check_node_port.map(|p| p as u16);
    out.source_ranges = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    out.publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref()?.timeout_seconds);
        out.affinity_secs = Some(timeout.map_or(lb_common::DEFAULT_AFFINITY_SECS, |t| t as u32));
    }
    out.cluster_ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|v| v.parse().ok())
        .collect();
    out.ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| ServicePortEntry {
            name: p.name.clone(),
            port: p.port as u16,
            proto: proto(p.protocol.as_deref()),
            target: match &p.target_port {
                None => TargetPort::Same,
                Some(IntOrString::Int(t)) => TargetPort::Number(*t as u16),
                Some(IntOrString::String(_)) => TargetPort::Named,
            },
            node_port: p.node_port.map(|n| n as u16),
        })
        .collect();
    out
}

fn port(name: Option<&str>, protocol: Option<&str>, port: Option<i32>) -> Option<EndpointPort> {
    Some(EndpointPort {
        name: name.unwrap_or_default().to_string(),
        proto: proto(protocol),
        port: port? as u16,
    })
}

fn slice(s: &EndpointSlice) -> SliceEntry {
    let mut addresses = Vec::new();
    for e in &s.endpoints {
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        let (serving, terminating) = (c.serving.unwrap_or(ready), c.terminating.unwrap_or(false));
        addresses.extend(
            e.addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .map(|addr| EndpointAddr {
                    addr,
                    ready,
                    serving,
                    terminating,
                    node: e.node_name.as_deref().map(Box::from),
                }),
        );
    }
    SliceEntry {
        service: s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL).cloned()),
        ip: s.address_type == "IPv4" || s.address_type == "IPv6",
        ports: s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| port(p.name.as_deref(), p.protocol.as_deref(), p.port))
            .collect(),
        addresses,
    }
}

fn endpoints(e: &Endpoints) -> EndpointsEntry {
    let ips = |ips: Option<&Vec<k8s_openapi::api::core::v1::EndpointAddress>>| -> Vec<IpAddr> {
        ips.into_iter()
            .flatten()
            .filter_map(|a| a.ip.parse().ok())
            .collect()
    };
    EndpointsEntry {
        subsets: e
            .subsets
            .iter()
            .flatten()
            .map(|sub| SubsetEntry {
                ports: sub
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| port(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
                    .collect(),
                ready: ips(sub.addresses.as_ref()),
                not_ready: ips(sub.not_ready_addresses.as_ref()),
            })
            .collect(),
    }
}
