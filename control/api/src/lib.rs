//! Object-model helpers over k8s-openapi and the API client every Skiff component uses.
//!
//! Filled by the control-plane issue: list, watch, apply, and the informer/reflector.
//! Until then the node agent reads its desired state from manifest files
//! (`skiff_node::proxy::source`).
