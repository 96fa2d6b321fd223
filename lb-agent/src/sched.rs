//! Scheduling algorithms: how a frontend's new flows are spread over its
//! backends. Chosen per Service by the [`ANNOTATION`] annotation, else by
//! `--lb-algorithm` (default random, iptables parity). The datapath
//! implements them (`lb-ebpf/src/sched.rs`); the agent writes each
//! non-random frontend's scheduler (`MAP_SCHED`) and, for Maglev, its
//! lookup table ([`crate::maglev`]).
use std::fmt;
use std::str::FromStr;

use lb_common::{
    SCHED_DEST_HASH, SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_RANDOM, SCHED_ROUND_ROBIN,
    SCHED_SOURCE_HASH,
};

/// The Service annotation that picks a scheduler.
pub const ANNOTATION: &str = "ferrolb.io/lb-algorithm";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheduler {
    /// Equal probability, as kube-proxy's iptables mode.
    #[default]
    Random,
    /// The backends in turn (IPVS rr).
    RoundRobin,
    /// Maglev consistent hashing over a table of the given (prime) size:
    /// every node maps a flow to the same backend, and a backend leaving
    /// moves only its own flows' share.
    Maglev(u32),
    /// A hash of the client (IPVS sh).
    SourceHash,
    /// A hash of the destination address (IPVS dh).
    DestHash,
    /// The backend with the fewest active flows (IPVS lc; its sed and nq
    /// make the same choices when all weights are equal, as Kubernetes
    /// endpoints' are, and are accepted as names for it).
    LeastConn,
}

/// The names the annotation and `--lb-algorithm` take.
pub const NAMES: &str = "random, round-robin, maglev, least-conn, source-hash, dest-hash";

/// A scheduler by name; `maglev_size` sizes a Maglev table.
pub fn parse(name: &str, maglev_size: u32) -> Result<Scheduler, String> {
    Ok(match name {
        "random" => Scheduler::Random,
        "round-robin" | "rr" => Scheduler::RoundRobin,
        "maglev" => Scheduler::Maglev(maglev_size),
        "source-hash" | "sh" => Scheduler::SourceHash,
        "dest-hash" | "dh" => Scheduler::DestHash,
        "least-conn" | "lc" | "sed" | "nq" => Scheduler::LeastConn,
        other => {
            return Err(format!(
                "unknown algorithm {other:?} (expected one of {NAMES})"
            ));
        }
    })
}

impl Scheduler {
    /// `lb_common::SCHED_*`.
    pub fn alg(self) -> u8 {
        match self {
            Scheduler::Random => SCHED_RANDOM,
            Scheduler::RoundRobin => SCHED_ROUND_ROBIN,
            Scheduler::Maglev(_) => SCHED_MAGLEV,
            Scheduler::SourceHash => SCHED_SOURCE_HASH,
            Scheduler::DestHash => SCHED_DEST_HASH,
            Scheduler::LeastConn => SCHED_LEAST_CONN,
        }
    }

    /// The Maglev table size, for Maglev.
    pub fn table_size(self) -> u32 {
        match self {
            Scheduler::Maglev(m) => m,
            _ => 0,
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheduler::Random => f.write_str("random"),
            Scheduler::RoundRobin => f.write_str("round-robin"),
            Scheduler::Maglev(m) => write!(f, "maglev/{m}"),
            Scheduler::SourceHash => f.write_str("source-hash"),
            Scheduler::DestHash => f.write_str("dest-hash"),
            Scheduler::LeastConn => f.write_str("least-conn"),
        }
    }
}

/// `--maglev-table-size`: a prime (the table's permutations need one), at
/// least 251 and at most 131071 (the tables of all Maglev frontends share
/// one map of `lb_common::DEFAULT_MAGLEV_MAX` entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSize(pub u32);

impl FromStr for TableSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let m: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        if !(251..=131_071).contains(&m) {
            return Err(format!("{m} is out of range 251-131071"));
        }
        if !is_prime(m) {
            return Err(format!(
                "{m} is not a prime (e.g. 251, 1021, 4093, 16381, 65521)"
            ));
        }
        Ok(TableSize(m))
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_table_sizes() {
        assert_eq!(parse("maglev", 251), Ok(Scheduler::Maglev(251)));
        assert_eq!(parse("rr", 251), Ok(Scheduler::RoundRobin));
        assert_eq!(parse("least-conn", 251), Ok(Scheduler::LeastConn));
        assert_eq!(parse("nq", 251), Ok(Scheduler::LeastConn));
        assert!(parse("lc2", 251).unwrap_err().contains("unknown algorithm"));
        assert_eq!("16381".parse::<TableSize>(), Ok(TableSize(16381)));
        assert!(
            "16380"
                .parse::<TableSize>()
                .unwrap_err()
                .contains("not a prime")
        );
        assert!(
            "7".parse::<TableSize>()
                .unwrap_err()
                .contains("out of range")
        );
    }
}
