//! ferrolb agent. The data flow, one module per stage:
//!
//! `source` (manifests on disk, or the Kubernetes API) -> `store` (the
//! validated objects, as `entry`s) -> `model` (desired frontends and backends) ->
//! `reconcile` (diff against the maps, ordered writes) -> `datapath`
//! (map writes, program attachment) -> the kernel programs in `lb-ebpf`.
pub mod agent;
pub mod caps;
pub mod datapath;
pub mod entry;
pub mod explain;
pub mod filter;
pub mod flow_table;
pub mod healthcheck;
pub mod healthz;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod node_addrs;
pub mod reconcile;
pub mod sched;
pub mod source;
pub mod status;
pub mod store;
pub mod sync;
pub mod table;
pub mod validate;
