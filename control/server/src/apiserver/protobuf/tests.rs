//! The decoder on hand-made envelopes (byte by byte) and on messages encoded with
//! k8s-pb's generated types, encoded as Go's encoder does: non-pointer fields are
//! written even when zero.

use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::json;

use super::*;

pub(super) fn ld(n: u64, b: &[u8]) -> Vec<u8> {
    let mut v = vec![((n << 3) | 2) as u8, b.len() as u8];
    v.extend_from_slice(b);
    v
}

#[test]
fn decodes_configmap_envelope() {
    let meta = [ld(1, b"cfg"), ld(11, &[ld(1, b"app"), ld(2, b"x")].concat())].concat();
    let cm = [ld(1, &meta), ld(2, &[ld(1, b"a"), ld(2, b"1")].concat())].concat();
    let tm = [ld(1, b"v1"), ld(2, b"ConfigMap")].concat();
    let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &cm)].concat();
    let v = decode(&body).unwrap();
    assert_eq!(
        v,
        json!({"kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": "cfg", "labels": {"app": "x"}}, "data": {"a": "1"}})
    );
    assert!(decode(b"nope").is_err());
    assert!(decode(&body[..body.len() - 3]).is_err());
}

#[test]
fn decodes_role_binding_envelope() {
    let subject = [ld(1, b"ServiceAccount"), ld(3, b"bot"), ld(4, b"team")].concat();
    let role_ref = [ld(1, b"rbac.authorization.k8s.io"), ld(2, b"ClusterRole"), ld(3, b"view")].concat();
    let rb = [ld(1, &ld(1, b"bot-view")), ld(2, &subject), ld(3, &role_ref)].concat();
    let tm = [ld(1, b"rbac.authorization.k8s.io/v1"), ld(2, b"RoleBinding")].concat();
    let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &rb)].concat();
    assert_eq!(
        decode(&body).unwrap(),
        json!({"kind": "RoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": "bot-view"},
            "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": "team"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}})
    );
}

#[test]
fn decodes_token_request_envelope() {
    let bound = [ld(1, b"Pod"), ld(2, b"v1"), ld(3, b"p")].concat();
    // expirationSeconds = 7200: field 4, varint 0xa0 0x38.
    let spec = [ld(1, b"vault"), ld(1, b"api"), ld(3, &bound), vec![4 << 3, 0xa0, 0x38]].concat();
    let tr = [ld(1, &ld(1, b"bot")), ld(2, &spec)].concat();
    let tm = [ld(1, b"authentication.k8s.io/v1"), ld(2, b"TokenRequest")].concat();
    let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &tr)].concat();
    assert_eq!(
        decode(&body).unwrap(),
        json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": "bot"},
            "spec": {"audiences": ["vault", "api"], "expirationSeconds": 7200,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}})
    );
}

/// The envelope client-go writes around an encoded object.
fn envelope(api_version: &str, kind: &str, object: &impl Message) -> Vec<u8> {
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    let u = Unknown {
        type_meta: Some(TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [b"k8s\0".to_vec(), u.encode_to_vec()].concat()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// ObjectMeta as Go writes it for a new object: every string, the zero creation time.
fn go_meta(name: &str) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(""),
        self_link: s(""),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        // Go writes the zero time as an empty message.
        creation_timestamp: Some(meta::Time::default()),
        ..Default::default()
    })
}

fn quantities(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, Quantity> {
    pairs.iter().map(|(k, v)| (k.to_string(), Quantity { string: s(v) })).collect()
}

fn int_or_string(v: Value) -> Option<IntOrString> {
    Some(match v {
        Value::String(x) => IntOrString { r#type: Some(1), int_val: Some(0), str_val: Some(x) },
        v => IntOrString { r#type: Some(0), int_val: Some(v.as_i64().unwrap() as i32), str_val: s("") },
    })
}

fn container(name: &str, image: &str) -> core::Container {
    core::Container {
        name: s(name),
        image: s(image),
        working_dir: s(""),
        termination_message_path: s(""),
        image_pull_policy: s(""),
        stdin: Some(false),
        tty: Some(false),
        resources: Some(core::ResourceRequirements::default()),
        ..Default::default()
    }
}

#[test]
fn decodes_deployment_with_int_or_string_and_quantities() {
    use k8s_pb::api::apps::v1 as apps;
    let mut c = container("web", "nginx");
    c.resources = Some(core::ResourceRequirements {
        limits: quantities(&[("memory", "128Mi")]),
        requests: quantities(&[("cpu", "250m")]),
        ..Default::default()
    });
    let d = apps::Deployment {
        metadata: go_meta("web"),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: [("app".to_string(), "web".to_string())].into(),
                    ..go_meta("").unwrap()
                }),
                spec: Some(core::PodSpec { containers: vec![c], host_network: Some(false), ..Default::default() }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: int_or_string(json!(1)),
                    max_surge: int_or_string(json!("25%")),
                }),
            }),
            min_ready_seconds: Some(0),
            paused: Some(false),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus::default()),
    };
    assert_eq!(
        decode(&envelope("apps/v1", "Deployment", &d)).unwrap(),
        json!({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "web"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx",
                        "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "250m"}}}]}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}}}})
    );
}

#[test]
fn decodes_secret_bytes_and_folds_string_data() {
    let secret = core::Secret {
        metadata: go_meta("creds"),
        immutable: Some(false),
        data: [("bin".to_string(), vec![0u8, 255, 10]), ("user".to_string(), b"old".to_vec())].into(),
        string_data: [("user".to_string(), "admin".to_string())].into(),
        r#type: s("Opaque"),
    };
    assert_eq!(
        decode(&envelope("v1", "Secret", &secret)).unwrap(),
        json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "creds"}, "immutable": false,
            "type": "Opaque", "data": {"bin": "AP8K", "user": "YWRtaW4="}})
    );
}

#[test]
fn decodes_service_target_ports() {
    let port = |name: &str, p: i32, target: Value| core::ServicePort {
        name: s(name),
        protocol: s("TCP"),
        app_protocol: None,
        port: Some(p),
        target_port: int_or_string(target),
        node_port: Some(0),
    };
    let svc = core::Service {
        metadata: go_meta("web"),
        spec: Some(core::ServiceSpec {
            ports: vec![port("http", 80, json!(8080)), port("named", 443, json!("https"))],
            selector: [("app".to_string(), "web".to_string())].into(),
            cluster_ip: s(""),
            r#type: s("ClusterIP"),
            ..Default::default()
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope("v1", "Service", &svc)).unwrap(),
        json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                               {"name": "named", "protocol": "TCP", "port": 443, "targetPort": "https"}],
                     "selector": {"app": "web"}, "type": "ClusterIP"}})
    );
}

#[test]
fn decodes_cronjob_role_and_priority_class() {
    use k8s_pb::api::batch::v1 as batch;
    use k8s_pb::api::rbac::v1 as rbac;
    use k8s_pb::api::scheduling::v1 as scheduling;
    let cj = batch::CronJob {
        metadata: go_meta("tick"),
        spec: Some(batch::CronJobSpec {
            schedule: s("*/5 * * * *"),
            successful_jobs_history_limit: Some(0),
            job_template: Some(batch::JobTemplateSpec {
                metadata: go_meta(""),
                spec: Some(batch::JobSpec {
                    backoff_limit: Some(0),
                    template: Some(core::PodTemplateSpec {
                        metadata: go_meta(""),
                        spec: Some(core::PodSpec {
                            containers: vec![container("tick", "busybox")],
                            restart_policy: s("OnFailure"),
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope("batch/v1", "CronJob", &cj)).unwrap()["spec"],
        json!({"schedule": "*/5 * * * *", "successfulJobsHistoryLimit": 0,
            "jobTemplate": {"metadata": {}, "spec": {"backoffLimit": 0, "template": {"metadata": {},
                "spec": {"containers": [{"name": "tick", "image": "busybox", "resources": {}}], "restartPolicy": "OnFailure"}}}}})
    );

    let rule = |verbs: &[&str], resources: &[&str]| rbac::PolicyRule {
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        api_groups: vec![String::new()],
        resources: resources.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let role = rbac::Role {
        metadata: go_meta("reader"),
        rules: vec![rule(&["get", "list"], &["pods"]), rule(&["*"], &["configmaps"])],
    };
    assert_eq!(
        decode(&envelope("rbac.authorization.k8s.io/v1", "Role", &role)).unwrap()["rules"],
        json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]},
               {"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps"]}])
    );

    // `value` is required, so its zero is kept; `globalDefault` is Go's omitempty bool.
    let pc = scheduling::PriorityClass {
        metadata: go_meta("low"),
        value: Some(0),
        global_default: Some(false),
        description: s("batch"),
        preemption_policy: None,
    };
    assert_eq!(
        decode(&envelope("scheduling.k8s.io/v1", "PriorityClass", &pc)).unwrap(),
        json!({"kind": "PriorityClass", "apiVersion": "scheduling.k8s.io/v1", "metadata": {"name": "low"},
            "value": 0, "description": "batch"})
    );
}

#[test]
fn decodes_pod_with_probes_times_and_inlined_handlers() {
    let mut c = container("app", "nginx");
    c.liveness_probe = Some(core::Probe {
        handler: Some(core::ProbeHandler {
            http_get: Some(core::HttpGetAction {
                path: s("/healthz"),
                port: int_or_string(json!("http")),
                host: s(""),
                scheme: s("HTTP"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        initial_delay_seconds: Some(5),
        timeout_seconds: Some(0),
        ..Default::default()
    });
    c.readiness_probe = Some(core::Probe {
        handler: Some(core::ProbeHandler {
            exec: Some(core::ExecAction { command: vec!["cat".into(), "/ready".into()] }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut meta = go_meta("app").unwrap();
    meta.creation_timestamp = Some(meta::Time { seconds: Some(1_700_000_000), nanos: Some(0) });
    meta.deletion_grace_period_seconds = Some(0);
    meta.deletion_timestamp = Some(meta::Time { seconds: Some(-62_135_596_800), nanos: Some(0) });
    let pod = core::Pod {
        metadata: Some(meta),
        spec: Some(core::PodSpec {
            containers: vec![c],
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            active_deadline_seconds: None,
            volumes: vec![
                core::Volume {
                    name: s("cfg"),
                    volume_source: Some(core::VolumeSource {
                        config_map: Some(core::ConfigMapVolumeSource {
                            local_object_reference: Some(core::LocalObjectReference { name: s("cfg") }),
                            default_mode: Some(0o644),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                },
                core::Volume {
                    name: s("info"),
                    volume_source: Some(core::VolumeSource {
                        downward_api: Some(core::DownwardAPIVolumeSource {
                            items: vec![core::DownwardAPIVolumeFile {
                                path: s("labels"),
                                field_ref: Some(core::ObjectFieldSelector {
                                    api_version: s("v1"),
                                    field_path: s("metadata.labels"),
                                }),
                                ..Default::default()
                            }],
                            default_mode: None,
                        }),
                        ..Default::default()
                    }),
                },
            ],
            ..Default::default()
        }),
        status: None,
    };
    let v = decode(&envelope("v1", "Pod", &pod)).unwrap();
    assert_eq!(
        v["metadata"],
        json!({"name": "app", "creationTimestamp": "2023-11-14T22:13:20Z", "deletionGracePeriodSeconds": 0})
    );
    assert_eq!(v["spec"]["terminationGracePeriodSeconds"], 0);
    assert_eq!(v["spec"]["automountServiceAccountToken"], false);
    // Embedded VolumeSource and LocalObjectReference are inlined; `downwardAPI` keeps
    // upstream's capitals.
    assert_eq!(
        v["spec"]["volumes"],
        json!([{"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420}},
               {"name": "info", "downwardAPI": {"items": [{"path": "labels",
                   "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}}]}}])
    );
    assert_eq!(
        v["spec"]["containers"][0]["livenessProbe"],
        json!({"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}, "initialDelaySeconds": 5})
    );
    assert_eq!(v["spec"]["containers"][0]["readinessProbe"], json!({"exec": {"command": ["cat", "/ready"]}}));
}

#[test]
fn decodes_micro_times_durations_and_raw_json() {
    use k8s_pb::api::coordination::v1 as coordination;
    let lease = coordination::Lease {
        metadata: go_meta("node-a"),
        spec: Some(coordination::LeaseSpec {
            holder_identity: s("node-a"),
            lease_duration_seconds: Some(40),
            renew_time: Some(meta::MicroTime { seconds: Some(1_700_000_000), nanos: Some(123_456_789) }),
            ..Default::default()
        }),
    };
    assert_eq!(
        decode(&envelope("coordination.k8s.io/v1", "Lease", &lease)).unwrap()["spec"],
        json!({"holderIdentity": "node-a", "leaseDurationSeconds": 40, "renewTime": "2023-11-14T22:13:20.123456Z"})
    );
    for (nanos, go) in [
        (0, "0s"),
        (1_500, "1.5µs"),
        (300_000_000, "300ms"),
        (90_000_000_000, "1m30s"),
        (3_725_500_000_000, "1h2m5.5s"),
    ] {
        assert_eq!(json::go_duration(nanos), go);
    }
    use k8s_pb::api::apps::v1::ControllerRevision;
    let rev = ControllerRevision {
        metadata: go_meta("rev"),
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension { raw: Some(br#"{"spec":{"a":1}}"#.to_vec()) }),
        revision: Some(3),
    };
    let v = decode(&envelope("apps/v1", "ControllerRevision", &rev)).unwrap();
    assert_eq!((v["data"].clone(), v["revision"].clone()), (json!({"spec": {"a": 1}}), json!(3)));
}

#[test]
fn unknown_kinds_and_bad_bodies_are_errors() {
    let cm = core::ConfigMap { metadata: go_meta("x"), ..Default::default() };
    let err = decode(&envelope("v1", "Widget", &cm)).unwrap_err();
    assert!(err.contains("Widget"), "{err}");
    let mut body = envelope("v1", "ConfigMap", &cm);
    // Past the two empty strings after `raw`: into the object itself.
    body.truncate(body.len() - 6);
    assert!(decode(&body).is_err());
}

#[test]
fn empty_spec_and_status_are_left_out() {
    let ns = core::Namespace {
        metadata: go_meta("team"),
        spec: Some(core::NamespaceSpec::default()),
        status: Some(core::NamespaceStatus { phase: s(""), ..Default::default() }),
    };
    assert_eq!(
        decode(&envelope("v1", "Namespace", &ns)).unwrap(),
        json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "team"}})
    );
}

#[test]
fn pointer_zeros_are_kept_and_non_pointer_zeros_left_out() {
    let claim = core::PersistentVolumeClaim {
        metadata: go_meta("data"),
        spec: Some(core::PersistentVolumeClaimSpec {
            access_modes: vec!["ReadWriteOnce".into()],
            storage_class_name: s(""),
            volume_name: s(""),
            ..Default::default()
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope("v1", "PersistentVolumeClaim", &claim)).unwrap()["spec"],
        json!({"accessModes": ["ReadWriteOnce"], "storageClassName": ""})
    );
}

/// Every kind the server serves has its message, and so do the bodies of the
/// subresources and reviews that client-go posts.
#[test]
fn every_served_kind_has_a_message() {
    for r in crate::apiserver::resources::RESOURCES {
        let m = message_of(&r.api_version(), r.kind);
        assert!(m.is_some_and(|m| m.name() == r.kind), "no message for {} {}", r.api_version(), r.kind);
    }
    for (api_version, kind) in [
        ("authentication.k8s.io/v1", "TokenRequest"),
        ("authentication.k8s.io/v1", "TokenReview"),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
        ("authorization.k8s.io/v1", "SubjectAccessReview"),
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview"),
        ("policy/v1", "Eviction"),
        ("autoscaling/v1", "Scale"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("v1", "Binding"),
        ("apiregistration.k8s.io/v1", "APIService"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ("storage.k8s.io/v1", "CSIDriver"),
    ] {
        assert!(message_of(api_version, kind).is_some(), "no message for {api_version} {kind}");
    }
}

#[test]
fn decodes_crd_schemas_with_their_json_unions() {
    use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    let int_prop =
        ext::JsonSchemaProps { r#type: s("integer"), minimum: Some(0.0), nullable: Some(false), ..Default::default() };
    let spec_prop = ext::JsonSchemaProps {
        r#type: s("object"),
        properties: [("replicas".to_string(), int_prop)].into(),
        additional_properties: Some(Box::new(ext::JsonSchemaPropsOrBool { allows: Some(false), schema: None })),
        default: Some(ext::Json { raw: Some(br#"{"replicas":1}"#.to_vec()) }),
        ..Default::default()
    };
    let tags = ext::JsonSchemaProps {
        r#type: s("array"),
        items: Some(Box::new(ext::JsonSchemaPropsOrArray {
            schema: Some(Box::new(ext::JsonSchemaProps { r#type: s("string"), ..Default::default() })),
            j_son_schemas: vec![],
        })),
        x_kubernetes_list_type: s("set"),
        ..Default::default()
    };
    let crd = ext::CustomResourceDefinition {
        metadata: go_meta("widgets.example.com"),
        spec: Some(ext::CustomResourceDefinitionSpec {
            group: s("example.com"),
            names: Some(ext::CustomResourceDefinitionNames {
                plural: s("widgets"),
                kind: s("Widget"),
                ..Default::default()
            }),
            scope: s("Namespaced"),
            versions: vec![ext::CustomResourceDefinitionVersion {
                name: s("v1"),
                served: Some(true),
                storage: Some(true),
                schema: Some(ext::CustomResourceValidation {
                    open_apiv3_schema: Some(ext::JsonSchemaProps {
                        r#type: s("object"),
                        properties: [("spec".to_string(), spec_prop), ("tags".to_string(), tags)].into(),
                        x_kubernetes_preserve_unknown_fields: Some(false),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let v = decode(&envelope("apiextensions.k8s.io/v1", "CustomResourceDefinition", &crd)).unwrap();
    assert_eq!(
        v["spec"]["versions"][0],
        json!({"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": false, "properties": {
                "spec": {"type": "object", "default": {"replicas": 1}, "additionalProperties": false,
                         "properties": {"replicas": {"type": "integer", "minimum": 0.0}}},
                "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"}}}}})
    );
}
