//! Kubernetes rules that the controllers and the scheduler both apply, each written and
//! tested once here (in the spirit of upstream's `k8s.io/component-helpers`), so two
//! components can never disagree about them.
//!
//! Pure code: no I/O, no API calls, no logging of decisions.

pub mod expectations;
pub mod hash;
pub mod node_affinity;
pub mod taints;
pub mod volumes;
