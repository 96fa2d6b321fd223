//! The conntrack listing the CLI prints (`lb-agent conntrack`), from the
//! pinned maps: each tracked flow entry with what it translates to and
//! the Service it belongs to, as a table or JSON.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::datapath::conntrack::Flow;
use crate::reconcile::info_name;

fn proto_name(p: u8) -> String {
    match p {
        lb_common::IPPROTO_TCP => "tcp".into(),
        lb_common::IPPROTO_UDP => "udp".into(),
        lb_common::IPPROTO_SCTP => "sctp".into(),
        other => other.to_string(),
    }
}

/// Flows sorted for reading: forward entries first, then by addresses.
fn sorted(flows: &[Flow]) -> Vec<&Flow> {
    let mut v: Vec<&Flow> = flows.iter().collect();
    v.sort_by_key(|f| (f.reverse, f.proto, f.src, f.dst));
    v
}

fn service(names: &BTreeMap<u32, lb_common::SvcInfo>, id: u32) -> String {
    names
        .get(&id)
        .map(info_name)
        .unwrap_or_else(|| format!("<id {id}>"))
}

/// A table: direction, protocol, the entry's tuple, its translation,
/// Service and flags.
pub fn render(flows: &[Flow], names: &BTreeMap<u32, lb_common::SvcInfo>) -> String {
    let rows: Vec<[String; 7]> = sorted(flows)
        .into_iter()
        .map(|f| {
            [
                if f.reverse { "reply" } else { "orig" }.to_string(),
                proto_name(f.proto),
                f.src.to_string(),
                f.dst.to_string(),
                if f.reverse {
                    format!("from {}", f.to)
                } else {
                    format!("to {}", f.to)
                },
                service(names, f.svc_id),
                f.flag_names(),
            ]
        })
        .collect();
    let head = ["DIR", "PROTO", "SOURCE", "DEST", "NAT", "SERVICE", "FLAGS"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{c:<width$}  ", width = w[i]);
        }
        l.trim_end().to_string()
    };
    let mut s = line(head) + "\n";
    for r in &rows {
        s += &line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]]);
        s.push('\n');
    }
    let _ = writeln!(s, "{} entries", rows.len());
    s
}

/// The same as JSON: an array of objects.
pub fn json(flows: &[Flow], names: &BTreeMap<u32, lb_common::SvcInfo>) -> serde_json::Value {
    sorted(flows)
        .into_iter()
        .map(|f| {
            serde_json::json!({
                "direction": if f.reverse { "reply" } else { "orig" },
                "protocol": proto_name(f.proto),
                "source": f.src.to_string(),
                "destination": f.dst.to_string(),
                "translated": f.to.to_string(),
                "service": service(names, f.svc_id),
                "flags": f.flag_names(),
            })
        })
        .collect()
}
