//! The service load balancer's control side: Kubernetes Services and EndpointSlices in,
//! BPF map entries out. It does what kube-proxy does, for Skiff's eBPF datapath.
//!
//! The flow, one module per step:
//! - [`source`]: where Services and EndpointSlices come from ([`source::ServiceSource`];
//!   a manifest directory, or the API server through reflectors in [`api_source`]),
//!   delivered as changes;
//! - [`model`]: pure functions from those objects to the desired frontends and backends,
//!   with invalid inputs reported per Service and port;
//! - [`reconciler`]: the change tracker and the one writer of the maps, in an order that
//!   never exposes a half-written Service, adopting the maps of an earlier run;
//! - [`maps`]: the services, backends and reverse-NAT maps behind a trait, with the real
//!   (pinned, aya) and a fake (in-memory) implementation;
//! - [`events`]: what a sync could not program, as Warning Events on the Services;
//! - [`announce`]: which LoadBalancer addresses this node answers ARP for, and their
//!   map;
//! - [`trace`]: `skiff-node trace`, what the live maps do with one Service;
//! - [`maglev`]: Maglev lookup tables, which the reconciler writes into the slots;
//! - [`latency`]: how long API changes took to reach the maps (kube-proxy's metric).
//!
//! Typical use (the agent's main loop):
//! ```text
//! let mut reconciler = LbReconciler::adopt(AyaLbMaps::open(pin_dir)?)?;
//! let mut source = ManifestDirSource::new(dir);
//! loop {
//!     for event in source.poll()? { reconciler.apply(event); }
//!     let summary = reconciler.sync();
//! }
//! ```
//!
//! This module does not load or attach BPF programs, nor create the maps: the datapath
//! loader does, and pins them where [`maps::AyaLbMaps::open`] finds them.

pub mod announce;
pub mod api_source;
pub mod events;
pub mod healthcheck;
pub mod latency;
pub mod maglev;
pub mod maps;
pub mod model;
pub mod reconciler;
pub mod role;
pub mod source;
pub mod trace;

pub use api_source::ApiServiceSource;
pub use maps::{AyaLbMaps, FakeLbMaps, LbMaps, render_dump};
pub use reconciler::{LbReconciler, ServiceProblem, SyncSummary};
pub use source::{ManifestDirSource, ServiceSource, SourceEvent};
