//! Every program passes the verifier with room to spare (15% of the
//! kernel's limit of a million processed instructions), at the map sizes
//! the agent uses by default: the IPv4 tc program's one body (parse,
//! conntrack, every scheduler, NAT, routing) is what the verifier walks
//! longest, and a change that brings it near the limit fails here, by
//! name and count, before it fails to load somewhere a little different.
use ferrolb_tests::bpffs::Bpffs;
use lb_agent::datapath::{attach, loader};

/// The kernel's limit on instructions processed per program.
const LIMIT: u32 = 1_000_000;

#[test]
fn programs_verify_within_85_percent_of_the_limit() {
    let fs = Bpffs::new("verifier").expect("private bpffs");
    let opts = loader::LoadOptions {
        pin_dir: fs.dir.join("ferrolb"),
        services_max: lb_common::DEFAULT_SERVICES_MAX,
        backends_max: lb_common::DEFAULT_BACKENDS_MAX,
        conntrack_max: lb_common::DEFAULT_CONNTRACK_MAX,
        sock_max: lb_common::DEFAULT_SOCK_REVNAT_MAX,
        frontends_max: lb_common::DEFAULT_SVC_INFO_MAX,
    };
    let mut ebpf = loader::load(&opts).expect("load object");
    attach::load_programs(&mut ebpf, true).expect("every program loads");
    let mut worst = (String::new(), 0);
    for (name, prog) in ebpf.programs() {
        // Programs the agent does not load (benchmark harness) have none.
        let Ok(info) = prog.info() else {
            continue;
        };
        let n = info.verified_instruction_count().unwrap_or(0);
        println!("{name}: {n} instructions processed");
        if n > worst.1 {
            worst = (name.to_string(), n);
        }
    }
    assert!(
        worst.1 <= LIMIT / 100 * 85,
        "{} takes the verifier {} of its {LIMIT} instructions",
        worst.0,
        worst.1
    );
}
