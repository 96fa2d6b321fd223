//! The tc and XDP programs loaded with maps programmed through the agent's
//! own reconcile path, run on frames through BPF_PROG_TEST_RUN.
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use ferrolb_tests::bpffs::Bpffs;
use lb_agent::{
    datapath::{
        PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP, attach, external::ExternalMaps, loader,
        maps::ServiceMaps,
    },
    model::{BackendAddr, Desired, FrontendKey, FrontendState},
    reconcile,
};

/// Load options with small maps (1024 entries each) pinned in `fs`.
pub fn small_maps(fs: &Bpffs) -> loader::LoadOptions {
    loader::LoadOptions {
        pin_dir: fs.dir.join("ferrolb"),
        services_max: 1024,
        backends_max: 1024,
        conntrack_max: 1024,
        sock_max: 1024,
        frontends_max: 1024,
    }
}

/// Where a frame enters: tc ingress on a pod interface, or XDP on a
/// wire-facing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Tc,
    Xdp,
}

pub const HOOKS: [Hook; 2] = [Hook::Tc, Hook::Xdp];

/// A verdict in either hook's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// TC_ACT_OK / XDP_PASS.
    Pass,
    /// TC_ACT_SHOT / XDP_DROP.
    Drop,
    /// TC_ACT_REDIRECT.
    Redirect,
    /// XDP_TX.
    Tx,
    Other(u32),
}

impl Verdict {
    fn of(hook: Hook, v: u32) -> Self {
        match (hook, v) {
            (Hook::Tc, 0) | (Hook::Xdp, 2) => Verdict::Pass,
            (Hook::Tc, 2) | (Hook::Xdp, 1) => Verdict::Drop,
            (Hook::Tc, 7) => Verdict::Redirect,
            (Hook::Xdp, 3) => Verdict::Tx,
            (_, v) => Verdict::Other(v),
        }
    }
}

pub struct Datapath {
    _fs: Bpffs,
    pub ebpf: aya::Ebpf,
    maps: ServiceMaps,
    pub ext: ExternalMaps,
    rec: reconcile::Reconciler,
    /// XDP runs as if received on this interface (0: loopback).
    pub xdp_ifindex: u32,
}

impl Datapath {
    /// Loads the programs and programs `frontends` through reconcile.
    pub fn new(tag: &str, frontends: &[(FrontendKey, Vec<BackendAddr>)]) -> Self {
        let fs = Bpffs::new(tag).expect("private bpffs");
        let mut ebpf = loader::load(&small_maps(&fs)).expect("load object");
        attach::load_programs(&mut ebpf, false).expect("verifier accepts the tc program");
        let maps = ServiceMaps::from_ebpf(&mut ebpf).unwrap();
        let ext = ExternalMaps::from_ebpf(&mut ebpf).unwrap();
        let rec = reconcile::Reconciler::new(maps.read().unwrap());
        let mut dp = Datapath {
            _fs: fs,
            ebpf,
            maps,
            ext,
            rec,
            xdp_ifindex: 0,
        };
        dp.program(frontends);
        dp
    }

    /// Makes the maps hold exactly `frontends`, through reconcile.
    pub fn program(&mut self, frontends: &[(FrontendKey, Vec<BackendAddr>)]) {
        let states: Vec<(FrontendKey, FrontendState)> = frontends
            .iter()
            .map(|(k, b)| {
                (
                    *k,
                    FrontendState {
                        name: format!("default/{}", k.addr),
                        backends: b.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        self.program_states(&states);
    }

    /// Like `program`, with whole frontend states (kind, flags, ranges).
    pub fn program_states(&mut self, frontends: &[(FrontendKey, FrontendState)]) {
        let mut desired = Desired::default();
        desired.frontends.extend(frontends.iter().cloned());
        self.ext.sync_source_ranges(&desired, true).unwrap();
        let ops = self.rec.plan_all(&desired);
        let errs = self.maps.apply(&ops, self.rec.mirror_mut());
        assert!(errs.is_empty(), "{errs:?}");
    }

    /// True when reading the maps back (as an agent adopting them does)
    /// gives what the reconciler believes they hold.
    pub fn reads_back_as_planned(&self) -> bool {
        self.maps.read().unwrap() == *self.rec.mirror()
    }

    /// Packets the datapath counted for frontend `fk`.
    pub fn service_packets(&self, fk: &FrontendKey) -> u64 {
        let id = self.rec.mirror().services[&reconcile::service_key(fk, 0)].svc_id;
        self.maps.service_counters(id).packets
    }

    /// Least-conn's active flow counts, by backend address.
    pub fn active_flows(&self) -> std::collections::BTreeMap<std::net::IpAddr, u64> {
        self.rec
            .mirror()
            .backends
            .iter()
            .map(|(id, b)| (b.addr(), self.maps.active_flows(*id)))
            .collect()
    }

    /// The datapath counters by name.
    pub fn stats(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let values =
            lb_agent::datapath::maps::read_stats(&self._fs.dir.join("ferrolb")).expect("stats");
        lb_common::STAT_NAMES.iter().copied().zip(values).collect()
    }

    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(frame).expect("BPF_PROG_TEST_RUN")
    }

    /// Like `run`, but returns the kernel's refusal of a frame (it rejects
    /// some too-short frames before the program runs).
    pub fn try_run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        self.try_run_prog(PROG_TC_INGRESS, frame)
    }

    /// Runs the tc egress program (ICMP errors the node sends).
    pub fn run_egress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run_prog(PROG_TC_EGRESS, frame)
            .expect("BPF_PROG_TEST_RUN")
    }

    /// Runs the frame through `hook`'s program.
    pub fn run_on(&mut self, hook: Hook, frame: &[u8]) -> (Verdict, Vec<u8>) {
        self.try_run_on(hook, frame).expect("BPF_PROG_TEST_RUN")
    }

    /// Like `run_on`, but returns the kernel's refusal of a frame.
    pub fn try_run_on(
        &mut self,
        hook: Hook,
        frame: &[u8],
    ) -> Result<(Verdict, Vec<u8>), aya::programs::ProgramError> {
        let (v, out) = match hook {
            Hook::Tc => self.try_run_prog(PROG_TC_INGRESS, frame),
            Hook::Xdp => {
                let ifindex = self.xdp_ifindex;
                let prog: &mut Xdp = self.ebpf.program_mut(PROG_XDP).unwrap().try_into().unwrap();
                if ifindex == 0 {
                    test_run(prog, frame)
                } else {
                    test_run_xdp_on(prog, frame, ifindex)
                }
            }
        }?;
        Ok((Verdict::of(hook, v), out))
    }

    fn try_run_prog(
        &mut self,
        name: &str,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let prog: &mut SchedClassifier = self.ebpf.program_mut(name).unwrap().try_into().unwrap();
        test_run(prog, frame)
    }
}

/// XDP as if received on `ifindex` (struct xdp_md as the context).
fn test_run_xdp_on(
    prog: &Xdp,
    frame: &[u8],
    ifindex: u32,
) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let mut out = vec![0u8; frame.len().max(512) + 64];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

fn test_run<P>(prog: &P, frame: &[u8]) -> Result<(u32, Vec<u8>), aya::programs::ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; frame.len().max(512) + 64];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}
