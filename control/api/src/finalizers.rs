//! The metav1 finalizer names of cascading deletion, shared by the API server (which
//! adds them for `propagationPolicy=Foreground|Orphan`) and the garbage collector (which
//! does the work and removes them). They are part of the Kubernetes API, so they live
//! on the client side of the contract, not in either component.

/// Added on `propagationPolicy=Foreground`: the owner stays until its blocking dependents
/// are gone.
pub const FOREGROUND_DELETION: &str = "foregroundDeletion";
/// Added on `propagationPolicy=Orphan` (`kubectl delete --cascade=orphan`): the owner's
/// references are removed from its dependents before it goes.
pub const ORPHAN: &str = "orphan";

/// The kinds whose objects Skiff's garbage collector watches. The API server adds the
/// finalizers above only to these, since no one would ever remove them from another kind.
pub const GARBAGE_COLLECTED_KINDS: &[&str] = &[
    "Pod",
    "Node",
    "Service",
    "EndpointSlice",
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "Job",
    "ServiceAccount",
    "StatefulSet",
    "ControllerRevision",
    "PersistentVolumeClaim",
    "CronJob",
];
/// A namespace's `spec.finalizers` entry: the namespace controller removes it (through
/// the `finalize` subresource) once the namespace's content is gone.
pub const KUBERNETES: &str = "kubernetes";
