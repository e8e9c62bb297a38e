//! The client side of the Kubernetes API, shared by every Skiff component: the typed
//! client (`client`), how it reaches a server (`transport`, and the credentials from
//! `kubeconfig` or `incluster`, with `token` for bearer tokens that rotate), the
//! list-then-watch cache (`reflector`), the work queue reconcilers drain (`workqueue`),
//! and what server and clients must agree on: label/field selectors (`selector`), the
//! finalizers of cascading deletion (`finalizers`), `resource.Quantity` strings
//! (`quantity`) and the subject of an x509 client certificate (`x509`: what both the
//! API server and the kubelet authenticate by).
//!
//! This crate must not depend on the server: it is the client side of the contract.

pub mod client;
pub mod dynamic;
pub mod finalizers;
pub mod histogram;
pub mod incluster;
pub mod insecure_tls;
pub mod kubeconfig;
pub mod quantity;
pub mod reflector;
pub mod selector;
pub mod token;
pub mod transport;
pub mod workqueue;
pub mod x509;

pub use client::{Client, ListParams, ObjectKey, Patch, WatchEvent};

/// Errors of building a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::Error),
    #[error(transparent)]
    InCluster(#[from] incluster::Error),
    #[error(transparent)]
    Transport(#[from] transport::Error),
}
