//! Synthetic clusters: N Services with 10 endpoints each, as a desired
//! state (for the datapath), as manifests (for the agent) and as
//! kube-proxy-shaped iptables/nftables rule sets (for the baselines).
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use lb_agent::model::{BackendAddr, Desired, FrontendKey, FrontendState, Proto};

pub const ENDPOINTS_PER_SERVICE: usize = 10;
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;

/// Cluster IP of synthetic Service `i` (10.96.0.0/12, like a default
/// service CIDR).
pub fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32)
}

/// Endpoint `j` of Service `i` (never routed: these are map entries).
pub fn endpoint(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS_PER_SERVICE + j) as u32)
}

pub fn desired(n: usize) -> Desired {
    let mut d = Desired::default();
    for i in 0..n {
        d.frontends.insert(
            FrontendKey {
                addr: vip(i).into(),
                port: SERVICE_PORT,
                proto: Proto::Tcp,
            },
            FrontendState {
                name: format!("bench/svc-{i}:http"),
                backends: (0..ENDPOINTS_PER_SERVICE)
                    .map(|j| BackendAddr {
                        addr: endpoint(i, j).into(),
                        port: TARGET_PORT,
                        local: false,
                    })
                    .collect(),
                ..Default::default()
            },
        );
    }
    d
}

/// Service and EndpointSlice manifests for Service `i`.
pub fn manifest(i: usize, endpoints: usize) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n  clusterIP: {}\n  ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {TARGET_PORT}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-1\n  namespace: bench\n  labels: {{kubernetes.io/service-name: svc-{i}}}\naddressType: IPv4\nports: [{{name: http, port: {TARGET_PORT}}}]\nendpoints:\n",
        vip(i)
    );
    for j in 0..endpoints {
        let _ = writeln!(s, "- addresses: [\"{}\"]", endpoint(i, j));
    }
    s
}

/// A Service for the rule generators: VIP, port, endpoints (ip, port).
pub type Svc = (Ipv4Addr, u16, Vec<(Ipv4Addr, u16)>);

/// `n` synthetic Services with the real ones (`extra`) in the middle of
/// the list: kube-proxy's rule order is arbitrary, and the middle is the
/// average position of a linear scan.
fn with_real(n: usize, extra: &[Svc]) -> Vec<Svc> {
    let mut services: Vec<Svc> = (0..n)
        .map(|i| {
            (
                vip(i),
                SERVICE_PORT,
                (0..ENDPOINTS_PER_SERVICE)
                    .map(|j| (endpoint(i, j), TARGET_PORT))
                    .collect(),
            )
        })
        .collect();
    let mid = n / 2;
    services.splice(mid..mid, extra.iter().cloned());
    services
}

/// Writes `n` synthetic Services as manifests into `dir`, `per_file` per
/// file.
pub fn write_manifests(dir: &std::path::Path, n: usize, per_file: usize) -> std::io::Result<()> {
    for f in 0..n.div_ceil(per_file) {
        write_manifest_file(dir, f, n, per_file, None)?;
    }
    Ok(())
}

/// Writes file `file` of the set (Services `file*per_file..`), Service
/// `short` with one endpoint fewer. Replaced atomically.
pub fn write_manifest_file(
    dir: &std::path::Path,
    file: usize,
    n: usize,
    per_file: usize,
    short: Option<usize>,
) -> std::io::Result<()> {
    let lo = file * per_file;
    let hi = (lo + per_file).min(n);
    let mut text = String::new();
    for i in lo..hi {
        let eps = ENDPOINTS_PER_SERVICE - usize::from(short == Some(i));
        text.push_str(&manifest(i, eps));
        text.push_str("---\n");
    }
    let path = dir.join(format!("svc-{file:05}.yaml"));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// A chain-name suffix in kube-proxy's style (hash-like, fixed width).
fn tag(kind: &str, i: usize, j: usize) -> String {
    format!("{kind}-{:016X}", (i as u64) << 20 | j as u64)
}

/// `iptables-restore` input shaped like kube-proxy's iptables mode (as
/// in the seeds): KUBE-SERVICES -> KUBE-SVC-* with `statistic --mode
/// random` -> KUBE-SEP-* DNAT. `extra` holds real Services (VIP, port,
/// backends) placed in the middle of the synthetic ones.
pub fn iptables_rules(n: usize, extra: &[Svc]) -> String {
    iptables_rules_with_nodeport(n, extra, None)
}

/// Like [`iptables_rules`], with `nodeport` leading to the first real
/// Service as kube-proxy sets up `type: NodePort` with
/// `externalTrafficPolicy: Cluster`: KUBE-SERVICES -> (destination a
/// local address) KUBE-NODEPORTS -> KUBE-EXT-* (mark for masquerade) ->
/// the Service's KUBE-SVC-*; POSTROUTING masquerades marked packets.
pub fn iptables_rules_with_nodeport(n: usize, extra: &[Svc], nodeport: Option<u16>) -> String {
    let services = with_real(n, extra);
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    let mut rules = String::from("-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n");
    for (i, (vip, port, eps)) in services.iter().enumerate() {
        let svc = tag("KUBE-SVC", i, 0);
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport {port} -j {svc}"
        );
        let k = eps.len();
        for (j, (ip, tport)) in eps.iter().enumerate() {
            let sep = tag("KUBE-SEP", i, j);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if j + 1 < k {
                let p = 1.0 / (k - j) as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc} -m statistic --mode random --probability {p:.11} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {svc} -j {sep}");
            }
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:{tport}"
            );
        }
    }
    if let Some(np) = nodeport {
        // with_real puts the first real Service in the middle.
        let svc = tag("KUBE-SVC", n / 2, 0);
        chains.push_str(
            ":KUBE-NODEPORTS - [0:0]\n:KUBE-EXT-REAL - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
        );
        let _ = write!(
            rules,
            "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
             -A KUBE-NODEPORTS -p tcp -m tcp --dport {np} -j KUBE-EXT-REAL\n\
             -A KUBE-EXT-REAL -j KUBE-MARK-MASQ\n-A KUBE-EXT-REAL -j {svc}\n\
             -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
             -A POSTROUTING -j KUBE-POSTROUTING\n\
             -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
             -A KUBE-POSTROUTING -j MASQUERADE\n"
        );
    }
    format!("{chains}{rules}COMMIT\n")
}

/// `nft -f` input shaped like kube-proxy's nftables mode: one verdict
/// map from VIP . protocol . port to a per-service chain, which picks an
/// endpoint chain with `numgen random mod N vmap`, which DNATs.
pub fn nft_rules(n: usize, extra: &[Svc]) -> String {
    nft_rules_with_nodeport(n, extra, None)
}

/// Like [`nft_rules`], with `nodeport` leading to the first real Service
/// as kube-proxy's nftables mode sets it up (externalTrafficPolicy
/// Cluster): a destination of local type goes through the nodeport map
/// to an external chain that marks for masquerade and goes to the
/// Service's chain; postrouting masquerades marked packets.
pub fn nft_rules_with_nodeport(n: usize, extra: &[Svc], nodeport: Option<u16>) -> String {
    let services = with_real(n, extra);
    let mut s = String::from("table ip kube-proxy {\n");
    let mut elems = Vec::new();
    for (i, (vip, port, eps)) in services.iter().enumerate() {
        let chain = format!("service-{i}");
        let mut vmap = Vec::new();
        for (j, (ip, p)) in eps.iter().enumerate() {
            let ep = format!("endpoint-{i}-{j}");
            let _ = writeln!(
                s,
                "  chain {ep} {{\n    meta l4proto tcp dnat to {ip}:{p}\n  }}"
            );
            vmap.push(format!("{j} : goto {ep}"));
        }
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    numgen random mod {} vmap {{ {} }}\n  }}",
            eps.len(),
            vmap.join(", ")
        );
        elems.push(format!("{vip} . tcp . {port} : goto {chain}"));
    }
    let _ = writeln!(
        s,
        "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}",
        elems.join(",\n      ")
    );
    let nodeports = match nodeport {
        Some(np) => {
            let _ = writeln!(
                s,
                "  chain external-real {{\n    meta mark set meta mark | 0x4000\n    goto service-{}\n  }}\n\
                 \x20 map service-nodeports {{\n    type inet_proto . inet_service : verdict\n    elements = {{ tcp . {np} : goto external-real }}\n  }}\n\
                 \x20 chain nodeports {{\n    meta l4proto . th dport vmap @service-nodeports\n  }}\n\
                 \x20 chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    meta mark & 0x4000 != 0 masquerade\n  }}",
                n / 2
            );
            "    fib daddr type local jump nodeports\n"
        }
        None => "",
    };
    let _ = write!(
        s,
        "  chain services {{\n    ip daddr . meta l4proto . th dport vmap @service-ips\n{nodeports}  }}\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n    jump services\n  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}\n}}\n",
    );
    s
}
