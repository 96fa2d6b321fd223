//! The agent's batched map access against real maps: plans leave the
//! maps holding exactly what the agent's mirror says, across batch
//! boundaries and when a map fills up part way through a batch; a
//! conntrack purge walks and prunes a table larger than one batch.
use std::collections::HashSet;
use std::net::Ipv4Addr;

use aya::maps::{HashMap, Map, MapData};
use ferrolb_tests::bpffs::Bpffs;
use lb_agent::{
    datapath::{conntrack::Conntrack, loader, maps::ServiceMaps},
    model::{BackendAddr, Desired, FrontendKey, FrontendState, Proto},
    reconcile::{self, Reconciler},
};
use lb_common::{CT_FLAG_REVERSE, CtKey, CtValue, MAP_CONNTRACK, ipv4_to_net, port_to_net};

fn frontend(i: u32) -> FrontendKey {
    let [_, a, b, c] = i.to_be_bytes();
    FrontendKey {
        addr: Ipv4Addr::new(10, a, b, c).into(),
        port: 80,
        proto: Proto::Tcp,
    }
}

/// `n` frontends with `per` backends each, none shared.
fn desired(range: std::ops::Range<u32>, per: u32) -> Desired {
    let mut d = Desired::default();
    for i in range {
        let backends = (0..per)
            .map(|j| {
                let [_, a, b, c] = (i * per + j).to_be_bytes();
                BackendAddr {
                    addr: Ipv4Addr::new(172, a, b, c).into(),
                    port: 9376,
                    local: false,
                }
            })
            .collect();
        d.frontends.insert(
            frontend(i),
            FrontendState {
                name: format!("default/svc-{i}:80"),
                backends,
                ..Default::default()
            },
        );
    }
    d
}

struct Maps {
    fs: Bpffs,
    ebpf: aya::Ebpf,
    maps: ServiceMaps,
    rec: Reconciler,
}

fn load(tag: &str, services_max: u32) -> Maps {
    let fs = Bpffs::new(tag).expect("private bpffs");
    let opts = loader::LoadOptions {
        pin_dir: fs.dir.join("ferrolb"),
        services_max,
        backends_max: 65_536,
        conntrack_max: 65_536,
        sock_max: 1024,
        frontends_max: 8192,
    };
    let mut ebpf = loader::load(&opts).expect("load object");
    let maps = ServiceMaps::from_ebpf(&mut ebpf).unwrap();
    let rec = Reconciler::new(maps.read().unwrap());
    Maps {
        fs,
        ebpf,
        maps,
        rec,
    }
}

/// The frontends a datapath reader finds complete: master present, every
/// slot up to its count present.
fn complete(state: &reconcile::MapState) -> Vec<FrontendKey> {
    state
        .services
        .iter()
        .filter(|(k, v)| {
            k.slot() == 0
                && (1..=v.count).all(|slot| {
                    state
                        .services
                        .get(&k.with_slot(slot))
                        .is_some_and(|s| state.backends.contains_key(&s.backend_id))
                })
        })
        .filter_map(|(k, _)| reconcile::frontend_of(k))
        .collect()
}

#[test]
fn plans_larger_than_a_batch_land_whole() {
    // 3,000 frontends x 3: 9,000 backends and 12,000 slots, more than one
    // batch of each.
    let mut m = load("batch-large", 16_384);
    let d = desired(0..3000, 3);
    let ops = m.rec.plan_all(&d);
    assert!(ops.len() > 20_000);
    let errs = m.maps.apply(&ops, m.rec.mirror_mut());
    assert!(errs.is_empty(), "{errs:?}");
    let held = m.maps.read().unwrap();
    assert_eq!(&held, m.rec.mirror(), "maps hold what the mirror says");
    assert_eq!(held.backends.len(), 9000);
    assert_eq!(complete(&held).len(), 3000);
    assert!(m.rec.plan_all(&d).is_empty(), "nothing left to write");

    // Half go: deletions in batches too, nothing stale left.
    let half = desired(0..1500, 3);
    let gone: Vec<FrontendKey> = (1500..3000).map(frontend).collect();
    let ops = m.rec.plan(&half, gone);
    let errs = m.maps.apply(&ops, m.rec.mirror_mut());
    assert!(errs.is_empty(), "{errs:?}");
    let held = m.maps.read().unwrap();
    assert_eq!(&held, m.rec.mirror());
    assert_eq!(held.backends.len(), 4500);
    assert_eq!(held.services.len(), 1500 * 4);
    assert_eq!(held.info.len(), 1500);
}

#[test]
fn a_map_filling_mid_batch_keeps_every_frontend_whole() {
    // Room for 10 slots; three frontends of 3 backends need 12 (master +
    // 3 each). The third fills the map at its third slot.
    let mut m = load("batch-full", 10);
    let d = desired(0..3, 3);
    let ops = m.rec.plan_all(&d);
    let errs = m.maps.apply(&ops, m.rec.mirror_mut());
    assert_eq!(
        errs.len(),
        2,
        "the slot that failed and its master: {errs:?}"
    );
    assert!(
        errs[0].error.contains("flb_svc_v1") && errs[0].error.contains("full"),
        "names the map and why: {}",
        errs[0].error
    );
    assert!(
        matches!(errs[0].op, reconcile::Op::PutService(k, _) if k.slot() == 3
            && reconcile::frontend_of(&k) == Some(frontend(2)))
    );
    let held = m.maps.read().unwrap();
    assert_eq!(
        &held,
        m.rec.mirror(),
        "the mirror records exactly what landed"
    );
    assert_eq!(complete(&held), vec![frontend(0), frontend(1)]);

    // Room returns (frontend 1 goes): frontend 2 is programmed whole.
    m.rec.resync();
    let d2 = {
        let mut d = desired(0..3, 3);
        d.frontends.remove(&frontend(1));
        d
    };
    let ops = m.rec.plan(&d2, [frontend(1), frontend(2)]);
    let errs = m.maps.apply(&ops, m.rec.mirror_mut());
    assert!(errs.is_empty(), "{errs:?}");
    let held = m.maps.read().unwrap();
    assert_eq!(&held, m.rec.mirror());
    assert_eq!(complete(&held), vec![frontend(0), frontend(2)]);
    assert_eq!(held.services.len(), 8);
}

#[test]
fn a_purge_walks_a_table_larger_than_a_batch() {
    let mut m = load("batch-purge", 1024);
    let mut ct = Conntrack::from_ebpf(&mut m.ebpf).unwrap();
    // A second handle on the same map, through its pin, to fill and read it.
    let pin = m.fs.dir.join("ferrolb").join(MAP_CONNTRACK);
    let data = MapData::from_pin(&pin).expect("pinned conntrack map");
    let mut table: HashMap<MapData, CtKey, CtValue> =
        HashMap::try_from(Map::from_map_data(data).unwrap()).unwrap();
    let vip = ipv4_to_net([10, 0, 1, 175]);
    let (kept, gone) = ([10, 244, 0, 5], [10, 244, 0, 6]);
    // 6,000 flows, both directions: 12,000 entries, three batches' worth.
    // Even flows go to the backend that stays, odd ones to the one that goes.
    for i in 0..6000u32 {
        let backend = ipv4_to_net(if i % 2 == 0 { kept } else { gone });
        let [_, _, a, b] = i.to_be_bytes();
        let client = ipv4_to_net([10, 244, a, b]);
        let (cport, vport, bport) = (port_to_net(40000), port_to_net(80), port_to_net(9376));
        let fwd = CtKey::new(client, vip, cport, vport, 6);
        let rev = CtKey::new(backend, client, bport, cport, 6);
        let v = |addr, port, flags| CtValue {
            addr,
            port,
            flags,
            svc_id: 1,
            backend_id: 1 + i % 2,
        };
        table.insert(fwd, v(backend, bport, 0), 0).unwrap();
        table
            .insert(rev, v(vip, vport, CT_FLAG_REVERSE), 0)
            .unwrap();
    }
    let present: HashSet<std::net::IpAddr> = [Ipv4Addr::from(kept).into()].into();
    let frontends: HashSet<u32> = [1].into();
    assert_eq!(ct.purge(&present, &frontends).unwrap(), 6000);
    let left: Vec<(CtKey, CtValue)> = table.iter().map(|e| e.unwrap()).collect();
    assert_eq!(left.len(), 6000, "every flow to the kept backend stays");
    assert!(
        left.iter().all(|(_, v)| v.backend_id == 1),
        "no flow to the removed backend is left"
    );
    // The Service goes: everything goes.
    assert_eq!(ct.purge(&present, &HashSet::new()).unwrap(), 6000);
    assert_eq!(table.iter().count(), 0);
}
