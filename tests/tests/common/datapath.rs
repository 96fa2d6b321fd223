//! The tc and XDP programs loaded with maps programmed through the agent's
//! own reconcile path, run on frames through BPF_PROG_TEST_RUN.
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use ferrolb_tests::bpffs::Bpffs;
use lb_agent::{
    datapath::{PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP, attach, loader, maps::ServiceMaps},
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
    Other(u32),
}

impl Verdict {
    fn of(hook: Hook, v: u32) -> Self {
        match (hook, v) {
            (Hook::Tc, 0) | (Hook::Xdp, 2) => Verdict::Pass,
            (Hook::Tc, 2) | (Hook::Xdp, 1) => Verdict::Drop,
            (Hook::Tc, 7) => Verdict::Redirect,
            (_, v) => Verdict::Other(v),
        }
    }
}

pub struct Datapath {
    _fs: Bpffs,
    ebpf: aya::Ebpf,
    maps: ServiceMaps,
    rec: reconcile::Reconciler,
}

impl Datapath {
    /// Loads the programs and programs `frontends` through reconcile.
    pub fn new(tag: &str, frontends: &[(FrontendKey, Vec<BackendAddr>)]) -> Self {
        let fs = Bpffs::new(tag).expect("private bpffs");
        let mut ebpf = loader::load(&small_maps(&fs)).expect("load object");
        attach::load_programs(&mut ebpf, false).expect("verifier accepts the tc program");
        let maps = ServiceMaps::from_ebpf(&mut ebpf).unwrap();
        let rec = reconcile::Reconciler::new(maps.read().unwrap());
        let mut dp = Datapath {
            _fs: fs,
            ebpf,
            maps,
            rec,
        };
        dp.program(frontends);
        dp
    }

    /// Makes the maps hold exactly `frontends`, through reconcile.
    pub fn program(&mut self, frontends: &[(FrontendKey, Vec<BackendAddr>)]) {
        let mut desired = Desired::default();
        for (k, b) in frontends {
            desired.frontends.insert(
                *k,
                FrontendState {
                    name: format!("default/{}", k.addr),
                    backends: b.clone(),
                    ..Default::default()
                },
            );
        }
        let ops = self.rec.plan_all(&desired);
        let errs = self.maps.apply(&ops, self.rec.mirror_mut());
        assert!(errs.is_empty(), "{errs:?}");
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
                let prog: &mut Xdp = self.ebpf.program_mut(PROG_XDP).unwrap().try_into().unwrap();
                test_run(prog, frame)
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

fn test_run<P>(prog: &P, frame: &[u8]) -> Result<(u32, Vec<u8>), aya::programs::ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; 512];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}
