//! The tc program loaded with maps programmed through the agent's own
//! reconcile path, run on frames through BPF_PROG_TEST_RUN.
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use ferrolb_tests::bpffs::Bpffs;
use lb_agent::{
    datapath::{PROG_TC_EGRESS, PROG_TC_INGRESS, attach, loader, maps::ServiceMaps},
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

pub struct Datapath {
    _fs: Bpffs,
    ebpf: aya::Ebpf,
}

impl Datapath {
    /// Loads the programs and programs `frontends` through reconcile.
    pub fn new(tag: &str, frontends: &[(FrontendKey, Vec<BackendAddr>)]) -> Self {
        let fs = Bpffs::new(tag).expect("private bpffs");
        let mut ebpf = loader::load(&small_maps(&fs)).expect("load object");
        attach::load_programs(&mut ebpf, false).expect("verifier accepts the tc program");
        let mut maps = ServiceMaps::from_ebpf(&mut ebpf).unwrap();
        let mut desired = Desired::default();
        for (k, b) in frontends {
            desired.frontends.insert(
                *k,
                FrontendState {
                    name: format!("default/{}", k.addr),
                    backends: b.clone(),
                },
            );
        }
        let mut rec = reconcile::Reconciler::new(maps.read().unwrap());
        let ops = rec.plan_all(&desired);
        let errs = maps.apply(&ops, rec.mirror_mut());
        assert!(errs.is_empty(), "{errs:?}");
        Datapath { _fs: fs, ebpf }
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

    fn try_run_prog(
        &mut self,
        name: &str,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let prog: &mut SchedClassifier = self.ebpf.program_mut(name).unwrap().try_into().unwrap();
        let mut out = vec![0u8; 512];
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }
}
