//! Field-level checks of the objects we program. Each error names the
//! field by its manifest path (`spec.ports[0].port`).
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1::{Endpoints, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::store::Object;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

fn port(field: String, value: i32) -> Result<(), FieldError> {
    if (1..=65535).contains(&value) {
        Ok(())
    } else {
        Err(err(field, format!("port {value} is out of range 1-65535")))
    }
}

fn protocol(field: String, value: Option<&str>) -> Result<(), FieldError> {
    match value {
        None | Some("TCP") | Some("UDP") | Some("SCTP") => Ok(()),
        Some(other) => Err(err(
            field,
            format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)"),
        )),
    }
}

fn ip(field: String, value: &str) -> Result<(), FieldError> {
    value
        .parse::<IpAddr>()
        .map(|_| ())
        .map_err(|_| err(field, format!("{value:?} is not a valid IP address")))
}

/// The API server's limit on a session affinity timeout (one day).
const MAX_AFFINITY_SECS: i32 = 86_400;

pub fn object(obj: &Object) -> Result<(), FieldError> {
    if obj.meta().name.as_deref().unwrap_or("").is_empty() {
        return Err(err("metadata.name", "is required"));
    }
    match obj {
        Object::Service(s) => service(s),
        Object::EndpointSlice(s) => slice(s),
        Object::Endpoints(e) => endpoints(e),
    }
}

fn is_no_ip(v: &str) -> bool {
    v.is_empty() || v == "None"
}

pub fn service(s: &Service) -> Result<(), FieldError> {
    if let Some(name) = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::sched::ANNOTATION))
    {
        crate::sched::parse(name, lb_common::DEFAULT_MAGLEV_TABLE_SIZE).map_err(|e| {
            err(
                format!("metadata.annotations[{}]", crate::sched::ANNOTATION),
                e,
            )
        })?;
    }
    let Some(spec) = &s.spec else { return Ok(()) };
    if let Some(v) = spec.cluster_ip.as_deref()
        && !is_no_ip(v)
    {
        ip("spec.clusterIP".into(), v)?;
    }
    for (i, v) in spec.cluster_ips.iter().flatten().enumerate() {
        if !is_no_ip(v) {
            ip(format!("spec.clusterIPs[{i}]"), v)?;
        }
    }
    match spec.type_.as_deref() {
        None | Some("ClusterIP") | Some("NodePort") | Some("LoadBalancer")
        | Some("ExternalName") => {}
        Some(other) => return Err(err("spec.type", format!("unknown type {other:?}"))),
    }
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        port(format!("spec.ports[{i}].port"), p.port)?;
        protocol(format!("spec.ports[{i}].protocol"), p.protocol.as_deref())?;
        match &p.target_port {
            Some(IntOrString::Int(t)) => port(format!("spec.ports[{i}].targetPort"), *t)?,
            Some(IntOrString::String(name)) if name.is_empty() => {
                return Err(err(
                    format!("spec.ports[{i}].targetPort"),
                    "named targetPort is empty",
                ));
            }
            _ => {}
        }
        if let Some(np) = p.node_port {
            port(format!("spec.ports[{i}].nodePort"), np)?;
        }
    }
    for (i, v) in spec.external_ips.iter().flatten().enumerate() {
        ip(format!("spec.externalIPs[{i}]"), v)?;
    }
    for (i, v) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        cidr(format!("spec.loadBalancerSourceRanges[{i}]"), v.trim())?;
    }
    if let Some(p) = spec.health_check_node_port {
        port("spec.healthCheckNodePort".into(), p)?;
    }
    match spec.session_affinity.as_deref() {
        None | Some("None") | Some("ClientIP") => {}
        Some(other) => {
            return Err(err(
                "spec.sessionAffinity",
                format!("unknown value {other:?} (expected None or ClientIP)"),
            ));
        }
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref()?.timeout_seconds);
    if let Some(t) = timeout
        && !(1..=MAX_AFFINITY_SECS).contains(&t)
    {
        return Err(err(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            format!("{t} is out of range 1-{MAX_AFFINITY_SECS} (as the API server allows)"),
        ));
    }
    let ingress = s
        .status
        .iter()
        .filter_map(|st| st.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten());
    for (i, g) in ingress.enumerate() {
        if let Some(v) = g.ip.as_deref() {
            ip(format!("status.loadBalancer.ingress[{i}].ip"), v)?;
        }
    }
    Ok(())
}

/// A prefix of either family, `addr/len`.
fn cidr(field: String, value: &str) -> Result<(), FieldError> {
    let bad = || {
        err(
            field.clone(),
            format!("{value:?} is not a CIDR (expected address/length)"),
        )
    };
    let (a, l) = value.split_once('/').ok_or_else(bad)?;
    let max = match a.parse::<IpAddr>().map_err(|_| bad())? {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    match l.parse::<u8>() {
        Ok(l) if l <= max => Ok(()),
        _ => Err(bad()),
    }
}

pub fn slice(s: &EndpointSlice) -> Result<(), FieldError> {
    match s.address_type.as_str() {
        "IPv4" | "IPv6" | "FQDN" => {}
        other => {
            return Err(err(
                "addressType",
                format!("unknown address type {other:?} (expected IPv4, IPv6 or FQDN)"),
            ));
        }
    }
    if s.address_type != "FQDN" {
        let v6 = s.address_type == "IPv6";
        for (i, e) in s.endpoints.iter().enumerate() {
            for (j, a) in e.addresses.iter().enumerate() {
                let field = format!("endpoints[{i}].addresses[{j}]");
                ip(field.clone(), a)?;
                // kube-proxy takes a slice's family from addressType: an
                // address of the other family would serve the wrong VIPs.
                if a.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6() != v6) {
                    return Err(err(
                        field,
                        format!("{a:?} does not match addressType {}", s.address_type),
                    ));
                }
            }
        }
    }
    for (i, p) in s.ports.iter().flatten().enumerate() {
        if let Some(v) = p.port {
            port(format!("ports[{i}].port"), v)?;
        }
        protocol(format!("ports[{i}].protocol"), p.protocol.as_deref())?;
    }
    Ok(())
}

pub fn endpoints(e: &Endpoints) -> Result<(), FieldError> {
    for (i, sub) in e.subsets.iter().flatten().enumerate() {
        for (j, a) in sub.addresses.iter().flatten().enumerate() {
            ip(format!("subsets[{i}].addresses[{j}].ip"), &a.ip)?;
        }
        for (j, a) in sub.not_ready_addresses.iter().flatten().enumerate() {
            ip(format!("subsets[{i}].notReadyAddresses[{j}].ip"), &a.ip)?;
        }
        for (j, p) in sub.ports.iter().flatten().enumerate() {
            port(format!("subsets[{i}].ports[{j}].port"), p.port)?;
            protocol(
                format!("subsets[{i}].ports[{j}].protocol"),
                p.protocol.as_deref(),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice_of(address_type: &str, addresses: &[&str]) -> EndpointSlice {
        let text = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s}}\naddressType: {address_type}\nendpoints:\n{}",
            addresses
                .iter()
                .map(|a| format!("- addresses: [\"{a}\"]\n"))
                .collect::<String>()
        );
        serde_yaml::from_str(&text).unwrap()
    }

    #[test]
    fn a_slice_address_of_the_other_family_is_named() {
        assert!(slice(&slice_of("IPv6", &["fd00:244::5", "fd00:244::6"])).is_ok());
        assert!(slice(&slice_of("IPv4", &["10.244.0.5"])).is_ok());
        let e = slice(&slice_of("IPv6", &["fd00:244::5", "10.244.0.6"])).unwrap_err();
        assert_eq!(e.field, "endpoints[1].addresses[0]");
        assert!(e.message.contains("does not match addressType IPv6"), "{e}");
        let e = slice(&slice_of("IPv4", &["fd00:244::5"])).unwrap_err();
        assert_eq!(e.field, "endpoints[0].addresses[0]");
    }
}
