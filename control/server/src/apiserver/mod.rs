//! The Kubernetes REST API over the store: authenticate, route, authorize, then hand
//! to a handler. The request path is kept short and visible here:
//! `serve` → `authenticate` → `route` → `authorize` → `handlers::*` → store.
//! (A ServiceAccount token is authenticated in two steps: `auth` checks the signature,
//! then `authentication` checks the store that its ServiceAccount still exists.)
//!
//! This module owns HTTP concerns (body limits, content negotiation, Status errors);
//! it must not hold per-kind behaviour (see `validation`, `table`, `resources`) or
//! storage details (see `store`).

mod admission;
pub mod allocator;
mod api_server;
pub mod audit;
mod authentication;
mod authorization;
pub mod bootstrap;
mod bootstrap_token;
mod crd;
pub mod decode;
mod deletion;
pub mod discovery;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod handlers;
mod impersonation;
mod limit_range;
pub mod local;
mod managed;
mod merge_shape;
pub mod meta;
mod metrics_api;
pub mod metrics_scraper;
mod node_proxy;
mod object;
mod openapi;
pub mod patch;
mod printers;
mod priority;
mod protobuf;
mod quota;
mod rawjson;
mod request;
pub mod resource_def;
pub mod resource_metrics;
pub mod resources;
#[cfg(test)]
mod robustness;
mod router;
mod selectors;
mod service_ips;
pub mod status;
mod storage_class;
mod strategy;
pub mod table;
mod table_object;
pub mod validation;
mod views;
mod watch;

pub use api_server::ApiServer;
pub use bootstrap::{BootstrapInfo, bootstrap};
pub use bootstrap_token::ensure_bootstrap_token;
pub use request::{Body, Resp, full, json_response};
pub use router::{MAX_BODY, debug_panic_on};
