//! PersistentVolumes and their claims: the binder (upstream's PV controller: binding,
//! phases, reclaim), PVC protection (a claim in use is not deleted) and Skiff's built-in
//! local-path provisioner (a directory per volume
//! on the node the claim's first pod is scheduled to). The rules both apply are in
//! `crate::helpers::volumes`; the node agent mounts the volumes and removes the
//! directories of deleted ones.

pub mod binder;
pub mod protection;
pub mod provisioner;
