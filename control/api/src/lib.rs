//! Object-model helpers over k8s-openapi and the API client every Skiff component uses.
//!
//! Today this holds what both the API server and its clients need to agree on:
//! label and field selector parsing and matching (`selector`). The hyper client
//! (list, watch, apply, informer/reflector) follows in a later session; until then the
//! node agent reads its desired state from manifest files (`skiff_node::proxy::source`).
//! This crate must not depend on the server: it is the client side of the contract.

pub mod selector;
