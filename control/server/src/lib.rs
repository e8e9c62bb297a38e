//! skiff-control: the Skiff control plane as a library; `main.rs` only parses flags and
//! calls `server::run`.
//!
//! Modules by role: `store` (the object store trait and backends), `tls` (PKI on first
//! start, TLS config), `auth` (who is asking, and may they), `apiserver` (the
//! Kubernetes REST API over the store), `server` (wiring and the accept loop). The
//! scheduler and the controllers are a crate of their own (`skiff-controllers`) that
//! reaches this one only through the API.

pub mod apiserver;
pub mod auth;
pub mod certificates;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
