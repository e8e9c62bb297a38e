//! The resource table: every served kind is one line here (group, version, kind,
//! plural, short names, scope, subresources, and the k8s-openapi type that checks its
//! shape). Handlers, discovery and tables are generic over it.
//!
//! It must not hold behaviour beyond "what is this resource": defaulting, validation
//! and table columns live in their own modules, keyed by kind.

use serde_json::Value;

use super::resource_def::ResourceDef;
use super::strategy;

/// A built-in kind's `Decode`: into its k8s-openapi type and back, so wrong field types
/// are rejected and unknown fields dropped.
fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn merge_of<T: serde::de::DeserializeOwned + serde::Serialize + k8s_openapi::DeepMerge>(
    a: Value,
    b: Value,
) -> Result<Value, String> {
    let mut a: T = serde_json::from_value(a).map_err(|e| e.to_string())?;
    let b: T = serde_json::from_value(b).map_err(|e| e.to_string())?;
    a.merge_from(b);
    serde_json::to_value(a).map_err(|e| e.to_string())
}

fn schema_of<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

macro_rules! res {
    ($ty:ty, $group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, [$($short:expr),*], $ns:expr, status: $st:expr, scale: $sc:expr, all: $all:expr, $strategy:expr) => {
        ResourceDef {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: &[$($short),*],
            namespaced: $ns,
            status: $st,
            scale: $sc,
            all: $all,
            decode: &roundtrip::<$ty>,
            schema: schema_of::<$ty>,
            merge: merge_of::<$ty>,
            strategy: &$strategy,
        }
    };
}

use k8s_openapi::api::{
    apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz, autoscaling::v1 as autoscaling_v1,
    autoscaling::v2 as autoscaling, batch::v1 as batch, certificates::v1 as certs, coordination::v1 as coord,
    core::v1 as core, discovery::v1 as disc, events::v1 as events, networking::v1 as net, policy::v1 as policy,
    rbac::v1 as rbac, scheduling::v1 as sched, storage::v1 as storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;

/// Every served resource. Adding a kind is one line.
pub static RESOURCES: &[ResourceDef] = &[
    res!(core::Namespace, "", "v1", "Namespace", "namespaces", "namespace", ["ns"], false, status: true, scale: false, all: false, strategy::Namespace),
    res!(core::Node, "", "v1", "Node", "nodes", "node", ["no"], false, status: true, scale: false, all: false, strategy::Node),
    res!(core::Pod, "", "v1", "Pod", "pods", "pod", ["po"], true, status: true, scale: false, all: true, strategy::Pod),
    res!(core::Service, "", "v1", "Service", "services", "service", ["svc"], true, status: true, scale: false, all: true, strategy::Service),
    res!(core::Endpoints, "", "v1", "Endpoints", "endpoints", "endpoints", ["ep"], true, status: false, scale: false, all: false, strategy::Generic),
    res!(core::ConfigMap, "", "v1", "ConfigMap", "configmaps", "configmap", ["cm"], true, status: false, scale: false, all: false, strategy::ConfigMap),
    res!(core::Secret, "", "v1", "Secret", "secrets", "secret", [], true, status: false, scale: false, all: false, strategy::Secret),
    res!(core::ServiceAccount, "", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", ["sa"], true, status: false, scale: false, all: false, strategy::ServiceAccount),
    res!(core::Event, "", "v1", "Event", "events", "event", ["ev"], true, status: false, scale: false, all: false, strategy::Event),
    res!(apps::Deployment, "apps", "v1", "Deployment", "deployments", "deployment", ["deploy"], true, status: true, scale: true, all: true, strategy::Deployment),
    res!(apps::ReplicaSet, "apps", "v1", "ReplicaSet", "replicasets", "replicaset", ["rs"], true, status: true, scale: true, all: true, strategy::ReplicaSet),
    res!(apps::DaemonSet, "apps", "v1", "DaemonSet", "daemonsets", "daemonset", ["ds"], true, status: true, scale: false, all: true, strategy::DaemonSet),
    res!(batch::Job, "batch", "v1", "Job", "jobs", "job", [], true, status: true, scale: false, all: true, strategy::Job),
    res!(coord::Lease, "coordination.k8s.io", "v1", "Lease", "leases", "lease", [], true, status: false, scale: false, all: false, strategy::Generic),
    res!(rbac::Role, "rbac.authorization.k8s.io", "v1", "Role", "roles", "role", [], true, status: false, scale: false, all: false, strategy::Generic),
    res!(rbac::ClusterRole, "rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", [], false, status: false, scale: false, all: false, strategy::Generic),
    res!(rbac::RoleBinding, "rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", [], true, status: false, scale: false, all: false, strategy::Generic),
    res!(rbac::ClusterRoleBinding, "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", [], false, status: false, scale: false, all: false, strategy::Generic),
    res!(authn::SelfSubjectReview, "authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", "selfsubjectreview", [], false, status: false, scale: false, all: false, strategy::Generic),
    res!(certs::CertificateSigningRequest, "certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", "certificatesigningrequest", ["csr"], false, status: true, scale: false, all: false, strategy::CertificateSigningRequest),
    res!(disc::EndpointSlice, "discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", [], true, status: false, scale: false, all: false, strategy::Generic),
    res!(apps::StatefulSet, "apps", "v1", "StatefulSet", "statefulsets", "statefulset", ["sts"], true, status: true, scale: true, all: true, strategy::StatefulSet),
    res!(apps::ControllerRevision, "apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", [], true, status: false, scale: false, all: false, strategy::ControllerRevision),
    res!(batch::CronJob, "batch", "v1", "CronJob", "cronjobs", "cronjob", ["cj"], true, status: true, scale: false, all: true, strategy::CronJob),
    res!(core::PersistentVolume, "", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", ["pv"], false, status: true, scale: false, all: false, strategy::PersistentVolume),
    res!(core::PersistentVolumeClaim, "", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", ["pvc"], true, status: true, scale: false, all: false, strategy::PersistentVolumeClaim),
    res!(core::ResourceQuota, "", "v1", "ResourceQuota", "resourcequotas", "resourcequota", ["quota"], true, status: true, scale: false, all: false, strategy::ResourceQuota),
    res!(core::LimitRange, "", "v1", "LimitRange", "limitranges", "limitrange", ["limits"], true, status: false, scale: false, all: false, strategy::LimitRange),
    res!(storage::StorageClass, "storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", ["sc"], false, status: false, scale: false, all: false, strategy::StorageClass),
    res!(net::Ingress, "networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", ["ing"], true, status: true, scale: false, all: false, strategy::Ingress),
    res!(net::IngressClass, "networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", [], false, status: false, scale: false, all: false, strategy::IngressClass),
    res!(net::NetworkPolicy, "networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", ["netpol"], true, status: false, scale: false, all: false, strategy::NetworkPolicy),
    res!(policy::PodDisruptionBudget, "policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", ["pdb"], true, status: true, scale: false, all: false, strategy::PodDisruptionBudget),
    res!(sched::PriorityClass, "scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", ["pc"], false, status: false, scale: false, all: false, strategy::PriorityClass),
    res!(autoscaling::HorizontalPodAutoscaler, "autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", ["hpa"], true, status: true, scale: false, all: true, strategy::HorizontalPodAutoscaler),
    // The same objects as autoscaling/v2's, in v1's shape (`views`); `kubectl autoscale` writes v1.
    res!(autoscaling_v1::HorizontalPodAutoscaler, "autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", ["hpa"], true, status: true, scale: false, all: true, strategy::HorizontalPodAutoscaler),
    // The same objects as core Events, in this API's shape (`events_v1`).
    res!(events::Event, "events.k8s.io", "v1", "Event", "events", "event", ["ev"], true, status: false, scale: false, all: false, strategy::Event),
    res!(authz::SelfSubjectAccessReview, "authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", "selfsubjectaccessreview", [], false, status: false, scale: false, all: false, strategy::Generic),
    res!(authz::SelfSubjectRulesReview, "authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", "selfsubjectrulesreview", [], false, status: false, scale: false, all: false, strategy::Generic),
    res!(authz::SubjectAccessReview, "authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", "subjectaccessreview", [], false, status: false, scale: false, all: false, strategy::Generic),
    res!(apiext::CustomResourceDefinition, "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", ["crd", "crds"], false, status: true, scale: false, all: false, super::crd::DefinitionStrategy),
    res!(authz::LocalSubjectAccessReview, "authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", "localsubjectaccessreview", [], true, status: false, scale: false, all: false, strategy::Generic),
];

/// The served resource at a group, version and plural: a built-in one, or a custom
/// resource whose CRD is Established (`crd`).
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .or_else(|| super::crd::find(group, version, plural))
}

/// Every served resource: the built-in table, then the custom resources.
pub fn all() -> Vec<&'static ResourceDef> {
    let mut out: Vec<&'static ResourceDef> = RESOURCES.iter().collect();
    out.extend(super::crd::all());
    out
}

pub fn by_kind(kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

/// The API group-versions (other than core) in the order discovery lists them; a
/// group's first version is its preferred one.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in all().into_iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
