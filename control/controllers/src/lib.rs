//! skiff-controllers: the controller manager and the scheduler of Skiff, as clients of
//! the Kubernetes API. They reach the API server only through `skiff_api::Client`, so
//! they get the same validation, RBAC and conflict semantics as any remote client, and
//! this crate cannot depend on the server's internals (it does not depend on
//! skiff-control at all; skiff-control depends on it).
//!
//! Modules by role: `manager` (the one place that wires everything: leader election,
//! shared informers, spawning every controller and the scheduler), `informers` (the
//! shared reflector caches), `leader` (Lease-based leader election), `events` (the
//! event recorder), `controllers` (one reconciler per module), `scheduler` (the
//! placement algorithm, pure, and the loop that binds pods), and `helpers` (Kubernetes
//! rules that more than one of them applies, each written and tested once).

pub mod controllers;
pub mod events;
pub mod helpers;
pub mod informers;
pub mod leader;
pub mod manager;
pub mod scheduler;

pub use manager::{Clients, Config, run};
