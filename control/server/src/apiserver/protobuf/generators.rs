//! Protobuf tables (in the shape of `workloads`) for the other kinds kubectl sends as
//! protobuf: the objects of `kubectl create cronjob|ingress|poddisruptionbudget|
//! priorityclass|quota|role|clusterrole` and `kubectl autoscale` (autoscaling/v1), and
//! the authorization reviews of `kubectl auth can-i`. Field numbers are those of Kubernetes' `generated.proto` files; only the
//! fields those commands set, and their near neighbours, are listed.
//!
//! It must only turn bytes into JSON; validation happens on the normal create path.

use super::workloads::Shape::*;
use super::workloads::{F, JOB_SPEC, LABEL_SELECTOR};

const JOB_TEMPLATE: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(JOB_SPEC))];
const CRON_JOB_SPEC: &[F] = &[
    (1, "schedule", Str),
    (2, "startingDeadlineSeconds", IntPtr),
    (3, "concurrencyPolicy", Str),
    (4, "suspend", BoolPtr),
    (5, "jobTemplate", Msg(JOB_TEMPLATE)),
    (6, "successfulJobsHistoryLimit", IntPtr),
    (7, "failedJobsHistoryLimit", IntPtr),
    (8, "timeZone", Str),
];
const CRON_JOB: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(CRON_JOB_SPEC))];

const BACKEND_PORT: &[F] = &[(1, "name", Str), (2, "number", Int)];
const SERVICE_BACKEND: &[F] = &[(1, "name", Str), (2, "port", Msg(BACKEND_PORT))];
const TYPED_REF: &[F] = &[(1, "apiGroup", Str), (2, "kind", Str), (3, "name", Str)];
const BACKEND: &[F] = &[(3, "resource", Msg(TYPED_REF)), (4, "service", Msg(SERVICE_BACKEND))];
const HTTP_PATH: &[F] = &[(1, "path", Str), (2, "backend", Msg(BACKEND)), (3, "pathType", Str)];
const HTTP_RULE: &[F] = &[(1, "paths", Msgs(HTTP_PATH))];
const RULE_VALUE: &[F] = &[(1, "http", Msg(HTTP_RULE))];
const INGRESS_RULE: &[F] = &[(1, "host", Str), (2, "ingressRuleValue", Inline(RULE_VALUE))];
const INGRESS_TLS: &[F] = &[(1, "hosts", Strs), (2, "secretName", Str)];
const INGRESS_SPEC: &[F] = &[
    (1, "defaultBackend", Msg(BACKEND)),
    (2, "tls", Msgs(INGRESS_TLS)),
    (3, "rules", Msgs(INGRESS_RULE)),
    (4, "ingressClassName", Str),
];
const INGRESS: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(INGRESS_SPEC))];

const PDB_SPEC: &[F] = &[
    (1, "minAvailable", IntOrString),
    (2, "selector", Msg(LABEL_SELECTOR)),
    (3, "maxUnavailable", IntOrString),
    (4, "unhealthyPodEvictionPolicy", Str),
];
const PDB: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(PDB_SPEC))];

const PRECONDITIONS: &[F] = &[(1, "uid", Str), (2, "resourceVersion", Str)];
const DELETE_OPTIONS: &[F] = &[
    (1, "gracePeriodSeconds", IntPtr),
    (2, "preconditions", Msg(PRECONDITIONS)),
    (3, "orphanDependents", BoolPtr),
    (4, "propagationPolicy", Str),
    (5, "dryRun", Strs),
];
/// policy/v1 Eviction (`kubectl drain`).
const EVICTION: &[F] = &[(1, "metadata", Meta), (2, "deleteOptions", Msg(DELETE_OPTIONS))];

/// `value` is a plain int32 that Go always writes, so zero is a value here.
const PRIORITY_CLASS: &[F] = &[
    (1, "metadata", Meta),
    (2, "value", IntPtr),
    (3, "globalDefault", Bool),
    (4, "description", Str),
    (5, "preemptionPolicy", Str),
];

const SCOPED_REQ: &[F] = &[(1, "scopeName", Str), (2, "operator", Str), (3, "values", Strs)];
const SCOPE_SELECTOR: &[F] = &[(1, "matchExpressions", Msgs(SCOPED_REQ))];
const QUOTA_SPEC: &[F] = &[(1, "hard", Quantities), (2, "scopes", Strs), (3, "scopeSelector", Msg(SCOPE_SELECTOR))];
const QUOTA: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(QUOTA_SPEC))];

const POLICY_RULE: &[F] = &[
    (1, "verbs", Strs),
    (2, "apiGroups", Strs),
    (3, "resources", Strs),
    (4, "resourceNames", Strs),
    (5, "nonResourceURLs", Strs),
];
const AGGREGATION: &[F] = &[(1, "clusterRoleSelectors", Msgs(LABEL_SELECTOR))];
const ROLE: &[F] = &[(1, "metadata", Meta), (2, "rules", Msgs(POLICY_RULE)), (3, "aggregationRule", Msg(AGGREGATION))];

/// autoscaling/v1 (what `kubectl autoscale` writes); `maxReplicas` is a plain int32.
const HPA_TARGET: &[F] = &[(1, "kind", Str), (2, "name", Str), (3, "apiVersion", Str)];
const HPA_V1_SPEC: &[F] = &[
    (1, "scaleTargetRef", Msg(HPA_TARGET)),
    (2, "minReplicas", IntPtr),
    (3, "maxReplicas", IntPtr),
    (4, "targetCPUUtilizationPercentage", IntPtr),
];
const HPA_V1: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(HPA_V1_SPEC))];

const RESOURCE_ATTRS: &[F] = &[
    (1, "namespace", Str),
    (2, "verb", Str),
    (3, "group", Str),
    (4, "version", Str),
    (5, "resource", Str),
    (6, "subresource", Str),
    (7, "name", Str),
];
const NON_RESOURCE_ATTRS: &[F] = &[(1, "path", Str), (2, "verb", Str)];
const SELF_ACCESS_SPEC: &[F] =
    &[(1, "resourceAttributes", Msg(RESOURCE_ATTRS)), (2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRS))];
const ACCESS_SPEC: &[F] = &[
    (1, "resourceAttributes", Msg(RESOURCE_ATTRS)),
    (2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRS)),
    (3, "user", Str),
    (4, "groups", Strs),
    (6, "uid", Str),
];
const SELF_ACCESS_REVIEW: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(SELF_ACCESS_SPEC))];
const ACCESS_REVIEW: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(ACCESS_SPEC))];
const RULES_SPEC: &[F] = &[(1, "namespace", Str)];
const RULES_REVIEW: &[F] = &[(1, "metadata", Meta), (2, "spec", Msg(RULES_SPEC))];

/// The table of a kind this module knows.
pub(super) fn table(kind: &str) -> Option<&'static [F]> {
    Some(match kind {
        "CronJob" => CRON_JOB,
        "Ingress" => INGRESS,
        "PodDisruptionBudget" => PDB,
        "Eviction" => EVICTION,
        "PriorityClass" => PRIORITY_CLASS,
        "ResourceQuota" => QUOTA,
        "HorizontalPodAutoscaler" => HPA_V1,
        "Role" | "ClusterRole" => ROLE,
        "SelfSubjectAccessReview" => SELF_ACCESS_REVIEW,
        "SubjectAccessReview" | "LocalSubjectAccessReview" => ACCESS_REVIEW,
        "SelfSubjectRulesReview" => RULES_REVIEW,
        _ => return None,
    })
}
