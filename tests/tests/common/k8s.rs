//! Kubernetes objects as the API server sends them, for the fake API.
use serde_json::{Value, json};

/// A ClusterIP Service with one TCP port `port -> target`.
pub fn service(name: &str, vip: &str, port: i64, target: i64) -> Value {
    json!({
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "clusterIP": vip,
            "clusterIPs": [vip],
            "ports": [{"name": "default", "protocol": "TCP", "port": port, "targetPort": target}],
        },
    })
}

/// An EndpointSlice of Service `svc`, port 9376, every address ready.
pub fn slice(name: &str, svc: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": "default", "protocol": "TCP", "port": 9376}],
        "endpoints": endpoints,
    })
}

pub fn node(name: &str, ip: &str) -> Value {
    json!({
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    })
}
