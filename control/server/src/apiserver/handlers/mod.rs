//! The verbs over the store, one module per verb: `read` (get, list), `create`,
//! `update` (PUT and PATCH, on top of the shared update pipeline in `write`), `delete`
//! (delete, deletecollection), `subresources` (scale, binding) and `apply` (server-side
//! apply, a PATCH that may create). Watch is `watch`'s. Every write records who owns
//! the fields it changes (`managed`).
//! Every write goes through `create` or `write`, which decode, default and validate
//! (`decode`, with the kind's strategy) and only then touch the store, so bad input
//! never changes stored state.
//!
//! Handlers must not compare kind names: what differs per kind is the strategy's
//! (`strategy`), what a DELETE does to dependents is `deletion`'s.

mod apply;
mod create;
mod delete;
mod eviction;
mod read;
mod subresources;
mod update;
mod write;
