use k8s_openapi::api::core::v1::{
    ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, ResourceRequirements,
    SecretEnvSource, SecretKeySelector,
};
use serde_json::json;

use super::super::lookup::fake::FakeLookup;
use super::*;

fn pod(containers: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "ns", "uid": "uid-1",
                     "labels": {"app": "web", "tier": "front"}, "annotations": {"note": "say \"hi\"\n"}},
        "spec": {"nodeName": "n1", "serviceAccountName": "bot", "containers": containers},
    }))
    .unwrap()
}

fn ctx() -> EnvContext {
    EnvContext {
        node_name: "n1".into(),
        host_ip: "192.168.1.10".into(),
        pod_ips: vec!["10.244.0.5".into(), "fd00::5".into()],
        node_allocatable: [("cpu".to_string(), Quantity("4".into())), ("memory".to_string(), Quantity("8Gi".into()))]
            .into(),
        services: vec![],
    }
}

fn lookup() -> FakeLookup {
    FakeLookup::new()
        .with_config_map("ns", "cfg", &[("color", "blue"), ("size", "L"), ("bad-key!", "x"), ("1st", "y")])
        .with_secret("ns", "creds", &[("user", "admin"), ("pass", "s3cret")])
}

fn value(v: &str) -> EnvVar {
    EnvVar { name: String::new(), value: Some(v.into()), value_from: None }
}

fn named(name: &str, mut v: EnvVar) -> EnvVar {
    v.name = name.into();
    v
}

fn from(src: EnvVarSource) -> EnvVar {
    EnvVar { name: String::new(), value: None, value_from: Some(src) }
}

fn field(path: &str) -> EnvVar {
    from(EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
        ..Default::default()
    })
}

fn resource(res: &str, divisor: Option<&str>) -> EnvVar {
    from(EnvVarSource {
        resource_field_ref: Some(ResourceFieldSelector {
            resource: res.into(),
            divisor: divisor.map(|d| Quantity(d.into())),
            container_name: None,
        }),
        ..Default::default()
    })
}

fn cm_key(name: &str, key: &str, optional: bool) -> EnvVar {
    from(EnvVarSource {
        config_map_key_ref: Some(ConfigMapKeySelector { name: name.into(), key: key.into(), optional: Some(optional) }),
        ..Default::default()
    })
}

fn secret_key(name: &str, key: &str, optional: bool) -> EnvVar {
    from(EnvVarSource {
        secret_key_ref: Some(SecretKeySelector { name: name.into(), key: key.into(), optional: Some(optional) }),
        ..Default::default()
    })
}

async fn run(container: Container) -> Result<Vec<(String, String)>> {
    let p = pod(json!([{"name": container.name.clone()}]));
    let env = container_env(&p, &container, &ctx(), &lookup()).await?;
    Ok(env.into_iter().map(|kv| (kv.key, kv.value)).collect())
}

fn container(env: Vec<EnvVar>) -> Container {
    Container { name: "c".into(), env: Some(env), ..Default::default() }
}

#[tokio::test]
async fn single_variables() {
    // (what, variable, expected value; None = not set at all)
    let cases: Vec<(&str, EnvVar, Option<&str>)> = vec![
        ("plain", value("x"), Some("x")),
        ("empty", value(""), Some("")),
        ("pod name", field("metadata.name"), Some("web-1")),
        ("namespace", field("metadata.namespace"), Some("ns")),
        ("uid", field("metadata.uid"), Some("uid-1")),
        ("one label", field("metadata.labels['app']"), Some("web")),
        ("missing label", field("metadata.labels['nope']"), Some("")),
        ("one annotation", field("metadata.annotations['note']"), Some("say \"hi\"\n")),
        ("all labels", field("metadata.labels"), Some("app=\"web\"\ntier=\"front\"")),
        ("all annotations", field("metadata.annotations"), Some("note=\"say \\\"hi\\\"\\n\"")),
        ("node", field("spec.nodeName"), Some("n1")),
        ("service account", field("spec.serviceAccountName"), Some("bot")),
        ("host ip", field("status.hostIP"), Some("192.168.1.10")),
        ("pod ip", field("status.podIP"), Some("10.244.0.5")),
        ("pod ips", field("status.podIPs"), Some("10.244.0.5,fd00::5")),
        ("configmap key", cm_key("cfg", "color", false), Some("blue")),
        ("optional missing key", cm_key("cfg", "nope", true), None),
        ("optional missing configmap", cm_key("nope", "x", true), None),
        ("secret key", secret_key("creds", "pass", false), Some("s3cret")),
        ("optional missing secret key", secret_key("creds", "nope", true), None),
        ("optional missing secret", secret_key("nope", "x", true), None),
    ];
    for (what, var, want) in cases {
        let got = run(container(vec![named("V", var)])).await.unwrap();
        let got = got.iter().find(|(k, _)| k == "V").map(|(_, v)| v.as_str());
        assert_eq!(got, want, "{what}");
    }
}

#[tokio::test]
async fn errors_name_what_is_missing() {
    let cases: Vec<(EnvVar, &str)> = vec![
        (cm_key("nope", "x", false), "configmap \"nope\" not found"),
        (cm_key("cfg", "nope", false), "couldn't find key nope in ConfigMap ns/cfg"),
        (secret_key("nope", "x", false), "secret \"nope\" not found"),
        (secret_key("creds", "nope", false), "couldn't find key nope in Secret ns/creds"),
        (field("spec.bogus"), "env var V: unsupported fieldRef fieldPath \"spec.bogus\""),
        (resource("limits.gpu", None), "env var V: unsupported resourceFieldRef resource \"limits.gpu\""),
        (resource("limits.cpu", Some("0")), "the divisor \"0\" is zero"),
    ];
    for (var, want) in cases {
        let err = run(container(vec![named("V", var)])).await.unwrap_err().to_string();
        assert!(err.contains(want), "got {err:?}, want {want:?}");
    }
    let c = Container {
        name: "c".into(),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource { name: "gone".into(), optional: None }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    assert_eq!(run(c).await.unwrap_err().to_string(), "configmap \"gone\" not found");
}

#[tokio::test]
async fn resource_fields_with_divisors_and_defaults() {
    let resources = ResourceRequirements {
        requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
        limits: Some([("memory".to_string(), Quantity("128Mi".into()))].into()),
        ..Default::default()
    };
    let cases: Vec<(EnvVar, &str)> = vec![
        (resource("requests.cpu", None), "1"),
        (resource("requests.cpu", Some("1m")), "250"),
        (resource("limits.cpu", None), "4"),
        (resource("limits.cpu", Some("1m")), "4000"),
        (resource("limits.memory", None), "134217728"),
        (resource("limits.memory", Some("1Mi")), "128"),
        (resource("limits.memory", Some("1G")), "1"),
        (resource("requests.memory", Some("1Mi")), "128"),
        (resource("requests.ephemeral-storage", None), "0"),
    ];
    for (var, want) in cases {
        let what = format!("{:?}", var.value_from);
        let c = Container { resources: Some(resources.clone()), ..container(vec![named("V", var)]) };
        assert_eq!(run(c).await.unwrap()[0], ("V".to_string(), want.to_string()), "{what}");
    }
}

#[tokio::test]
async fn expansion_order_and_env_from() {
    let c = Container {
        name: "c".into(),
        env_from: Some(vec![
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource { name: "cfg".into(), optional: None }),
                prefix: Some("CFG_".into()),
                ..Default::default()
            },
            EnvFromSource {
                secret_ref: Some(SecretEnvSource { name: "creds".into(), optional: None }),
                ..Default::default()
            },
            EnvFromSource {
                secret_ref: Some(SecretEnvSource { name: "nope".into(), optional: Some(true) }),
                ..Default::default()
            },
        ]),
        env: Some(vec![
            named("A", value("a")),
            named("B", value("$(A)-$(CFG_color)-$(LATER)-$$(A)-$$-$-$(user)")),
            named("LATER", value("later")),
            named("user", value("override")),
            named("UNCLOSED", value("x$(A")),
            named("TAIL", value("end$")),
            named("EMPTY_REF", value("$()")),
        ]),
        ..Default::default()
    };
    let env = run(c).await.unwrap();
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    // envFrom first (sorted keys per source; invalid names skipped; "1st" is fine once
    // prefixed), then env in order; a redefined name keeps its place.
    assert_eq!(
        keys,
        ["CFG_1st", "CFG_color", "CFG_size", "pass", "user", "A", "B", "LATER", "UNCLOSED", "TAIL", "EMPTY_REF"]
    );
    let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.as_str();
    assert_eq!(get("B"), "a-blue-$(LATER)-$(A)-$-$-admin");
    assert_eq!(get("user"), "override");
    assert_eq!(get("UNCLOSED"), "x$(A");
    assert_eq!(get("TAIL"), "end$");
    assert_eq!(get("EMPTY_REF"), "$()");
}

#[test]
fn expansion_table() {
    let vars = |n: &str| match n {
        "X" => Some("x"),
        "EMPTY" => Some(""),
        "ü" => Some("u"),
        _ => None,
    };
    for (input, want) in [
        ("", ""),
        ("$(X)", "x"),
        ("$(X)$(X)", "xx"),
        ("a$(EMPTY)b", "ab"),
        ("$$(X)", "$(X)"),
        ("$$$(X)", "$x"),
        ("$", "$"),
        ("$$", "$"),
        ("$x", "$x"),
        ("$(NOPE)", "$(NOPE)"),
        ("$(X", "$(X"),
        ("$(X$$", "$(X$"),
        ("ä$(ü)ö", "äuö"),
        ("$ä", "$ä"),
    ] {
        assert_eq!(expand(input, vars), want, "{input:?}");
    }
}

fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
                                  "spec": {"clusterIP": ip, "ports": ports}}))
    .unwrap()
}

#[tokio::test]
async fn service_links() {
    let services = vec![
        service(
            "ns",
            "my-db",
            "10.96.0.20",
            json!([{"name": "sql", "port": 5432, "protocol": "TCP"}, {"name": "metrics", "port": 9187, "protocol": "UDP"}]),
        ),
        service("default", "kubernetes", "10.96.0.1", json!([{"name": "https", "port": 443}])),
        service("other", "elsewhere", "10.96.0.30", json!([{"port": 80}])),
        service("ns", "headless", "None", json!([{"port": 80}])),
    ];
    let mut ctx = ctx();
    ctx.services = services;
    let c = container(vec![named("MY_DB_SERVICE_HOST", value("mine"))]);
    let p = pod(json!([{"name": "c"}]));
    let env = container_env(&p, &c, &ctx, &lookup()).await.unwrap();
    let get = |k: &str| env.iter().find(|kv| kv.key == k).map(|kv| kv.value.as_str());
    assert_eq!(get("MY_DB_SERVICE_HOST"), Some("mine"), "the pod's own value wins");
    assert_eq!(get("MY_DB_SERVICE_PORT"), Some("5432"));
    assert_eq!(get("MY_DB_SERVICE_PORT_SQL"), Some("5432"));
    assert_eq!(get("MY_DB_SERVICE_PORT_METRICS"), Some("9187"));
    assert_eq!(get("MY_DB_PORT"), Some("tcp://10.96.0.20:5432"));
    assert_eq!(get("MY_DB_PORT_5432_TCP"), Some("tcp://10.96.0.20:5432"));
    assert_eq!(get("MY_DB_PORT_5432_TCP_PROTO"), Some("tcp"));
    assert_eq!(get("MY_DB_PORT_5432_TCP_PORT"), Some("5432"));
    assert_eq!(get("MY_DB_PORT_5432_TCP_ADDR"), Some("10.96.0.20"));
    assert_eq!(get("MY_DB_PORT_9187_UDP"), Some("udp://10.96.0.20:9187"));
    assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
    assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
    assert_eq!(get("ELSEWHERE_SERVICE_HOST"), None, "other namespaces are not linked");
    assert_eq!(get("HEADLESS_SERVICE_HOST"), None, "headless services are not linked");
    // Expansion sees Service variables too.
    let c = container(vec![named("URL", value("https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"))]);
    let env = container_env(&p, &c, &ctx, &lookup()).await.unwrap();
    assert_eq!(env[0].value, "https://10.96.0.1:443");

    // enableServiceLinks: false keeps only the API server's variables.
    let mut p = p;
    p.spec.as_mut().unwrap().enable_service_links = Some(false);
    let env = container_env(&p, &container(vec![]), &ctx, &lookup()).await.unwrap();
    assert!(env.iter().all(|kv| kv.key.starts_with("KUBERNETES_")), "{env:?}");
    assert!(!env.is_empty());
}

#[tokio::test]
async fn lookup_failures_are_errors_even_when_optional() {
    let mut l = lookup();
    l.fail = Some("the API server is away".into());
    let c = container(vec![named("V", cm_key("cfg", "color", true))]);
    let p = pod(json!([{"name": "c"}]));
    assert!(matches!(container_env(&p, &c, &ctx(), &l).await, Err(EnvError::Lookup(_))));
}
