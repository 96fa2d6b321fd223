//! `lb-agent explain`: what the datapath would do with one packet, step
//! by step, from the live maps (so it works while the agent is down):
//! the conntrack entry that settles it, or the frontend it reaches (or why
//! none), then the backend the frontend's session or scheduler gives and
//! why, and the rewrite. The steps follow `lb-ebpf/src/flow.rs`; the
//! scheduler hashes are the datapath's own (`lb_common::hash`).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::Result;
use aya::maps::{HashMap, MapData};
use lb_common::{
    AFFINITY_BY_ADDR, AffinityKey, AffinityValue, BACKEND_FLAG_LOCAL, CFG_DSR_TCP, CFG_DSR_UDP,
    HOP_CLOCK_SHIFT, IPPROTO_TCP, IPPROTO_UDP, MAP_AFFINITY, MemberKey, SCHED_DEST_HASH,
    SCHED_MAGLEV, SCHED_ROUND_ROBIN, SCHED_SOURCE_HASH, SVC_FLAG_EXTERNAL, SVC_FLAG_LEAST_CONN,
    SVC_FLAG_LOCAL_ONLY, SVC_FLAG_SCHED, SVC_FLAG_SOURCE_RANGES, ServiceValue, hash, port_from_net,
    port_to_net,
};
use serde::Serialize;

use crate::datapath::conntrack::Conntrack;
use crate::datapath::external::{ExternalMaps, mapped};
use crate::datapath::maps::{ServiceMaps, open_pinned};
use crate::model::{FrontendKey, Proto};
use crate::reconcile::{MaglevKey, MapState, info_name, service_key};

/// What the datapath would do.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// Each step, in order, as people read it.
    pub steps: Vec<String>,
    /// "translated", "passed", "rejected" or "dropped".
    pub verdict: &'static str,
    /// The frontend reached, if any (`VIP:port/PROTO`).
    pub frontend: Option<String>,
    /// The backend the packet goes to, when the choice is determined.
    pub backend: Option<SocketAddr>,
}

/// The state `explain` reads, opened from the pins under `dir`.
pub struct Live {
    state: MapState,
    maps: ServiceMaps,
    ct: Conntrack,
    ext: ExternalMaps,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
}

impl Live {
    pub fn open(dir: &Path) -> Result<Self> {
        let maps = ServiceMaps::from_pins(dir)?;
        Ok(Live {
            state: maps.read()?,
            maps,
            ct: Conntrack::from_pins(dir)?,
            ext: ExternalMaps::from_pins(dir)?,
            affinity: open_pinned(dir, MAP_AFFINITY)?,
        })
    }

    /// The packet `src -> dst` of `proto`, a connection's first one.
    pub fn explain(&self, src: SocketAddr, dst: SocketAddr, proto: Proto) -> Explanation {
        let mut e = Explanation {
            steps: Vec::new(),
            verdict: "passed",
            frontend: None,
            backend: None,
        };
        if src.is_ipv4() != dst.is_ipv4() {
            e.steps
                .push("source and destination of different families: not a packet".into());
            return e;
        }
        // 1. Conntrack: a tracked tuple settles the packet.
        if let Some(f) = self.ct.lookup(src, dst, proto.number()) {
            let service = self.name(f.svc_id);
            e.verdict = "translated";
            if f.reverse {
                e.steps.push(format!(
                    "conntrack: a reply of a tracked flow of {service}: its source becomes {} (the frontend)",
                    f.to
                ));
            } else {
                e.steps.push(format!(
                    "conntrack: a tracked flow of {service} ({}): to backend {} (a TCP SYN reusing the \
                     tuple keeps it only while that backend still serves the frontend)",
                    flags(f.flags),
                    f.to
                ));
                e.backend = Some(f.to);
            }
            return e;
        }
        e.steps
            .push(format!("conntrack: {src} -> {dst} is not tracked"));
        // 2. The frontend: a VIP, or a NodePort of a node address.
        let Some((fk, master)) = self.frontend(dst, proto, &mut e.steps) else {
            e.steps
                .push("no frontend: passed on untouched (not Service traffic)".into());
            return e;
        };
        let service = self.name(master.svc_id);
        e.frontend = Some(fk.to_string());
        e.steps.push(format!(
            "frontend {fk} of {service}: {} backend(s){}",
            master.count,
            frontend_flags(master.flags)
        ));
        if master.flags & SVC_FLAG_EXTERNAL != 0 && master.flags & SVC_FLAG_SOURCE_RANGES != 0 {
            e.steps.push(
                "loadBalancerSourceRanges apply: a source outside them is dropped (not checked here)"
                    .into(),
            );
        }
        if master.count == 0 {
            if master.flags & SVC_FLAG_LOCAL_ONLY != 0 {
                e.verdict = "dropped";
                e.steps.push(
                    "no endpoint on this node (externalTrafficPolicy: Local): dropped, as kube-proxy does"
                        .into(),
                );
            } else {
                e.verdict = "rejected";
                e.steps.push(if proto == Proto::Tcp {
                    "no endpoints: rejected with a TCP RST from the frontend".into()
                } else {
                    "no endpoints: rejected with an ICMP port unreachable".into()
                });
            }
            return e;
        }
        // 3. The backend: the session's, else the scheduler's.
        let slot = self
            .session(&fk, &master, src, &mut e.steps)
            .or_else(|| self.schedule(&fk, &master, src, dst, proto, &mut e.steps));
        e.verdict = "translated";
        let Some(slot) = slot else {
            return e;
        };
        let Some((id, be)) = self.at_slot(&fk, slot) else {
            e.steps
                .push(format!("slot {slot}: no backend (maps changing?)"));
            return e;
        };
        e.backend = Some(be);
        e.steps.push(format!("backend {be} (slot {slot}, id {id})"));
        // 4. The rewrite.
        let local = self
            .state
            .backends
            .get(&id)
            .is_some_and(|b| b.rest().2 & BACKEND_FLAG_LOCAL != 0);
        let external = master.flags & SVC_FLAG_EXTERNAL != 0;
        let hairpin = be.ip() == src.ip() && (!external || local);
        let elsewhere = external && master.flags & SVC_FLAG_LOCAL_ONLY == 0 && !local;
        let cfg = self.ext.config();
        let dsr = elsewhere
            && !hairpin
            && cfg.is_some_and(|c| match proto.number() {
                IPPROTO_TCP => c.flags & CFG_DSR_TCP != 0,
                IPPROTO_UDP => c.flags & CFG_DSR_UDP != 0,
                _ => false,
            });
        e.steps.push(if hairpin {
            let h = if src.is_ipv4() {
                IpAddr::V4(Ipv4Addr::from(lb_common::ipv4_from_net(lb_common::HAIRPIN_V4)))
            } else {
                IpAddr::V6(Ipv6Addr::from(lb_common::ipv6_from_net(lb_common::HAIRPIN_V6)))
            };
            format!(
                "rewrite: hairpin, the pod reaches itself: {src} -> {dst} becomes {h}:<port> -> {be}, routed back to it"
            )
        } else if dsr {
            format!(
                "rewrite: direct server return, encapsulated to {}; the backend answers the client itself",
                be.ip()
            )
        } else if elsewhere {
            let snat = cfg
                .filter(|c| c.snat_v4 != 0 && src.is_ipv4())
                .map(|c| Ipv4Addr::from(lb_common::ipv4_from_net(c.snat_v4)).to_string())
                .unwrap_or_else(|| "the node's address".into());
            format!(
                "rewrite: {src} -> {dst} becomes {snat}:<SNAT port> -> {be} (externalTrafficPolicy Cluster, \
                 backend on another node); replies are translated back"
            )
        } else {
            format!(
                "rewrite: {src} -> {dst} becomes {src} -> {be}; replies from {be} get {dst} back as their source"
            )
        });
        e
    }

    fn name(&self, svc_id: u32) -> String {
        self.state
            .info
            .get(&svc_id)
            .map(info_name)
            .unwrap_or_else(|| format!("frontend id {svc_id}"))
    }

    fn master(&self, fk: &FrontendKey) -> Option<ServiceValue> {
        self.state.services.get(&service_key(fk, 0)).copied()
    }

    fn frontend(
        &self,
        dst: SocketAddr,
        proto: Proto,
        steps: &mut Vec<String>,
    ) -> Option<(FrontendKey, ServiceValue)> {
        let fk = FrontendKey {
            addr: dst.ip(),
            port: dst.port(),
            proto,
        };
        if let Some(m) = self.master(&fk) {
            return Some((fk, m));
        }
        let cfg = self.ext.config()?;
        if !(cfg.nodeport_min..=cfg.nodeport_max).contains(&dst.port()) {
            steps.push(format!(
                "no frontend {fk}, and {} is outside the NodePort range {}-{}",
                dst.port(),
                cfg.nodeport_min,
                cfg.nodeport_max
            ));
            return None;
        }
        if !self.ext.is_node_addr(dst.ip()) {
            steps.push(format!(
                "no frontend {fk}, and {} is not one of this node's addresses",
                dst.ip()
            ));
            return None;
        }
        let any = if dst.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let np = FrontendKey { addr: any, ..fk };
        let m = self.master(&np);
        if m.is_none() {
            steps.push(format!(
                "no frontend {fk}, and no NodePort {}/{proto}",
                dst.port()
            ));
        } else {
            steps.push(format!("{} is a node address: NodePort", dst.ip()));
        }
        Some((np, m?))
    }

    fn at_slot(&self, fk: &FrontendKey, slot: u16) -> Option<(u32, SocketAddr)> {
        let v = self.state.services.get(&service_key(fk, slot))?;
        let b = self.state.backends.get(&v.backend_id)?;
        Some((
            v.backend_id,
            SocketAddr::new(b.addr(), port_from_net(b.rest().0)),
        ))
    }

    /// The session's slot, if the client has a live one.
    fn session(
        &self,
        fk: &FrontendKey,
        m: &ServiceValue,
        src: SocketAddr,
        steps: &mut Vec<String>,
    ) -> Option<u16> {
        let ticks = m.affinity_ticks();
        if ticks == 0 {
            return None;
        }
        let key = AffinityKey {
            svc_id: m.svc_id,
            scope: AFFINITY_BY_ADDR,
            client: mapped(src.ip()),
        };
        let Ok(s) = self.affinity.get(&key, 0) else {
            steps.push(format!(
                "session affinity: {} has no session: a new one, placed by the scheduler",
                src.ip()
            ));
            return None;
        };
        let idle = now_ticks().wrapping_sub(s.last);
        let secs = |t: u32| (u64::from(t) << HOP_CLOCK_SHIFT) as f64 / 1e9;
        if idle > ticks {
            steps.push(format!(
                "session affinity: {}'s session expired ({:.0} s idle, timeout {:.0} s): a new one",
                src.ip(),
                secs(idle),
                secs(ticks)
            ));
            return None;
        }
        let slot = if self
            .at_slot(fk, s.slot)
            .is_some_and(|(id, _)| id == s.backend_id)
        {
            Some(s.slot)
        } else {
            let k = MemberKey {
                svc_id: m.svc_id,
                backend_id: s.backend_id,
            };
            self.state.members.get(&k).map(|s| *s as u16)
        };
        match slot {
            Some(slot) => {
                steps.push(format!(
                    "session affinity: {}'s session holds backend id {} (last new flow {:.0} s ago, timeout {:.0} s)",
                    src.ip(),
                    s.backend_id,
                    secs(idle),
                    secs(ticks)
                ));
                Some(slot)
            }
            None => {
                steps.push(format!(
                    "session affinity: {}'s backend (id {}) left the Service: a new session",
                    src.ip(),
                    s.backend_id
                ));
                None
            }
        }
    }

    /// The scheduler's slot, when determined (random and least-conn ties
    /// are not).
    fn schedule(
        &self,
        fk: &FrontendKey,
        m: &ServiceValue,
        src: SocketAddr,
        dst: SocketAddr,
        proto: Proto,
        steps: &mut Vec<String>,
    ) -> Option<u16> {
        let count = u32::from(m.count);
        if m.flags & SVC_FLAG_LEAST_CONN != 0 {
            let loads: Vec<(u16, u64, SocketAddr)> = (1..=m.count)
                .filter_map(|slot| {
                    let (id, be) = self.at_slot(fk, slot)?;
                    Some((slot, self.maps.active_flows(id), be))
                })
                .collect();
            let least = loads.iter().map(|l| l.1).min()?;
            let best: Vec<&(u16, u64, SocketAddr)> =
                loads.iter().filter(|l| l.1 == least).collect();
            let shown: Vec<String> = loads.iter().map(|(_, n, b)| format!("{b}({n})")).collect();
            steps.push(format!(
                "least-conn: active flows {}{}",
                shown.join(" "),
                if count > lb_common::LC_SCAN {
                    format!(
                        " (the datapath compares {} slots from a random one)",
                        lb_common::LC_SCAN
                    )
                } else {
                    String::new()
                }
            ));
            if best.len() == 1 && count <= lb_common::LC_SCAN {
                return Some(best[0].0);
            }
            let tied: Vec<String> = best.iter().map(|b| b.2.to_string()).collect();
            steps.push(format!(
                "least loaded: one of {} (ties at random)",
                tied.join(", ")
            ));
            return None;
        }
        let sched = (m.flags & SVC_FLAG_SCHED != 0)
            .then(|| self.state.sched.get(&m.svc_id))
            .flatten();
        let Some(s) = sched else {
            steps.push(format!(
                "scheduler random (kube-proxy's iptables mode): any of the {count} backends, each 1/{count}"
            ));
            return None;
        };
        let client = mapped(src.ip());
        let (what, turn) = match s.alg {
            SCHED_ROUND_ROBIN => (
                format!("round-robin: the next turn is {}", s.next),
                s.next as u32,
            ),
            SCHED_MAGLEV => {
                let sport = port_to_net(src.port());
                let h =
                    hash::words_and(&client, (u32::from(sport) << 8) | u32::from(proto.number()));
                let index = h.checked_rem(s.table_size)?;
                let key = MaglevKey {
                    svc_id: m.svc_id,
                    index: s.base + index,
                };
                let Some(&slot) = self.state.maglev.get(&key) else {
                    steps.push(format!("maglev: entry {index} empty: random"));
                    return None;
                };
                steps.push(format!(
                    "maglev: flow hash {h:#010x} -> entry {index} of {} -> slot {slot}",
                    s.table_size
                ));
                return (slot >= 1 && slot <= count).then_some(slot as u16);
            }
            SCHED_SOURCE_HASH => (
                format!("source-hash: hash of {} is", src.ip()),
                hash::words(&client),
            ),
            SCHED_DEST_HASH => (
                format!("dest-hash: hash of {} is", dst.ip()),
                hash::words(&mapped(dst.ip())),
            ),
            _ => {
                steps.push("scheduler unknown to this build: random".into());
                return None;
            }
        };
        let slot = turn.checked_rem(count)? as u16 + 1;
        steps.push(format!(
            "{what} {turn:#x}, modulo {count} backends: slot {slot}"
        ));
        Some(slot)
    }
}

/// The datapath's clock (`lb-ebpf/src/clock.rs`): monotonic ns >> 20.
fn now_ticks() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    (ns >> HOP_CLOCK_SHIFT) as u32
}

fn flags(f: u16) -> String {
    let mut out = Vec::new();
    for (bit, name) in [
        (lb_common::CT_FLAG_SNAT, "SNATed"),
        (lb_common::CT_FLAG_EXTERNAL, "external"),
        (lb_common::CT_FLAG_DSR, "direct server return"),
        (lb_common::CT_FLAG_COUNTED, "counted by least-conn"),
    ] {
        if f & bit != 0 {
            out.push(name);
        }
    }
    if out.is_empty() {
        "DNAT only".into()
    } else {
        out.join(", ")
    }
}

fn frontend_flags(f: u16) -> String {
    let mut out = Vec::new();
    for (bit, name) in [
        (SVC_FLAG_EXTERNAL, "external"),
        (SVC_FLAG_LOCAL_ONLY, "externalTrafficPolicy Local"),
        (SVC_FLAG_SOURCE_RANGES, "source ranges"),
        (lb_common::SVC_FLAG_AFFINITY, "session affinity"),
    ] {
        if f & bit != 0 {
            out.push(name);
        }
    }
    if out.is_empty() {
        String::new()
    } else {
        format!(" ({})", out.join(", "))
    }
}
