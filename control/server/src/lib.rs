//! skiff-control: the Skiff control plane as a library; `main.rs` only parses flags and
//! calls `server::run`.
//!
//! Modules by role: `store` (the object store trait and backends), `tls` (PKI on first
//! start, TLS config), `auth` (who is asking, and may they), `apiserver` (the
//! Kubernetes REST API over the store), `scheduler` (the placement algorithm, pure, and
//! the loop that binds pods), `controllers` (the controller manager under leader
//! election), `server` (wiring and the accept loop).

pub mod apiserver;
pub mod auth;
pub mod controllers;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod tls;
