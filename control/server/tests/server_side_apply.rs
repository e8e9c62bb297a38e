//! Server-side apply with the real kubectl 1.32 against a real `skiff-control`:
//! `kubectl apply --server-side` creates, a second identical apply changes nothing,
//! `metadata.managedFields` record each manager's fields in upstream's format, a second
//! manager setting another manager's field gets 409 naming the field and the manager
//! unless it forces, fields dropped from an applied configuration go (unless another
//! manager owns them), containers merge by name, custom resources merge by their
//! schema's list types, `--dry-run=server` stores nothing, and the client-side apply
//! keeps working beside it.

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::Value;
use skiff_api::{ListParams, WatchEvent};
use support::Server;

fn deployment(replicas: u32, labels: &str, containers: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    app: web\n{labels}spec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n{containers}"
    )
}

const NGINX: &str = "      - name: nginx\n        image: nginx:1.27\n        ports:\n        - containerPort: 80\n";

fn ssa(s: &Server, file: &str, manifest: &str, extra: &[&str]) -> std::process::Output {
    let f = s.write(file, manifest);
    let mut args = vec!["apply", "--server-side", "-f", &f];
    args.extend_from_slice(extra);
    s.run(&args)
}

fn ssa_ok(s: &Server, file: &str, manifest: &str, extra: &[&str]) -> String {
    let out = ssa(s, file, manifest, extra);
    assert!(
        out.status.success(),
        "server-side apply failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        support::tail(&s.log(), 40)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn web(s: &Server) -> Value {
    s.json(&["get", "deployment", "web", "--show-managed-fields"])
}

fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"].as_array()?.iter().find(|e| e["manager"] == manager)
}

#[test]
fn apply_creates_records_fields_and_twice_is_a_no_op() {
    let s = Server::start();
    let manifest = deployment(2, "", NGINX);
    let out = ssa_ok(&s, "web.yaml", &manifest, &[]);
    assert!(out.contains("deployment.apps/web serverside-applied"), "{out}");
    let first = web(&s);
    assert_eq!(first["spec"]["replicas"], 2);
    let e = entry(&first, "kubectl").expect("kubectl's Apply entry");
    assert_eq!(e["operation"], "Apply");
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert!(e["time"].is_string());
    let f = &e["fieldsV1"];
    assert_eq!(f["f:spec"]["f:replicas"], serde_json::json!({}));
    assert_eq!(f["f:metadata"]["f:labels"]["f:app"], serde_json::json!({}));
    let nginx = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"];
    assert_eq!(nginx["."], serde_json::json!({}), "{f}");
    assert_eq!(nginx["f:image"], serde_json::json!({}));
    assert!(nginx["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object(), "{f}");
    // Defaults are nobody's.
    assert!(f["f:spec"].get("f:progressDeadlineSeconds").is_none());

    ssa_ok(&s, "web.yaml", &manifest, &[]);
    let second = web(&s);
    // The deployment controller writes status meanwhile, so compare what apply could change.
    assert_eq!(second["metadata"]["generation"], first["metadata"]["generation"], "a second apply is a no-op");
    assert_eq!(entry(&second, "kubectl"), entry(&first, "kubectl"), "not even its time changes");

    // kubectl hides managedFields unless asked; a Table is unaffected.
    let yaml = s.ok(&["get", "deployment", "web", "-o", "yaml"]);
    assert!(!yaml.contains("managedFields"), "{yaml}");
    let table = s.ok(&["get", "deployment", "web"]);
    assert!(table.starts_with("NAME"), "{table}");

    // --dry-run=server answers with the result and stores nothing.
    let out = ssa_ok(&s, "web3.yaml", &deployment(3, "", NGINX), &["--dry-run=server", "-o", "json"]);
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry["spec"]["replicas"], 3);
    assert_eq!(web(&s)["spec"]["replicas"], 2);
    assert_eq!(web(&s)["metadata"]["generation"], first["metadata"]["generation"]);

    // A ConfigMap that does not exist yet is created by its first apply.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n";
    ssa_ok(&s, "cm.yaml", cm, &["--field-manager=tool"]);
    let got = s.json(&["get", "configmap", "settings", "--show-managed-fields"]);
    assert_eq!(got["data"]["a"], "1");
    assert_eq!(entry(&got, "tool").unwrap()["fieldsV1"]["f:data"]["f:a"], serde_json::json!({}));
    // Nothing else writes ConfigMaps: the second apply leaves even the resourceVersion.
    ssa_ok(&s, "cm.yaml", cm, &["--field-manager=tool"]);
    let again = s.json(&["get", "configmap", "settings"]);
    assert_eq!(again["metadata"]["resourceVersion"], got["metadata"]["resourceVersion"], "a second apply is a no-op");
    let dry = ssa_ok(&s, "cm2.yaml", &cm.replace("\"1\"", "\"2\""), &["--field-manager=tool", "--dry-run=server"]);
    assert!(dry.contains("serverside-applied (server dry run)"), "{dry}");
    let after = s.json(&["get", "configmap", "settings"]);
    assert_eq!(after["metadata"]["resourceVersion"], got["metadata"]["resourceVersion"], "a dry run stores nothing");
    assert_eq!(after["data"]["a"], "1");

    // Watch events carry the entries.
    let client = s.client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rv = after["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let mut watch = rt
        .block_on(client.watch::<ConfigMap>(Some("default"), &ListParams::default(), &rv, 30))
        .expect("watch configmaps");
    ssa_ok(&s, "cm3.yaml", &cm.replace("\"1\"", "\"3\""), &["--field-manager=tool"]);
    let event = rt.block_on(async {
        loop {
            match watch.next().await.expect("a watch event").expect("a decodable watch event") {
                WatchEvent::Modified(cm) if cm.metadata.name.as_deref() == Some("settings") => return cm,
                _ => continue,
            }
        }
    });
    let fields = event.metadata.managed_fields.unwrap_or_default();
    assert!(fields.iter().any(|f| f.manager.as_deref() == Some("tool") && f.operation.as_deref() == Some("Apply")));

    // An object the server stored itself has its fields given to "before-first-apply".
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-public\n  labels: {team: a}\n";
    ssa_ok(&s, "ns.yaml", ns, &[]);
    let got = s.json(&["get", "namespace", "kube-public", "--show-managed-fields"]);
    assert_eq!(got["metadata"]["labels"]["team"], "a");
    assert!(entry(&got, "before-first-apply").is_some(), "{}", got["metadata"]);
    assert_eq!(entry(&got, "kubectl").unwrap()["fieldsV1"]["f:metadata"]["f:labels"]["f:team"], serde_json::json!({}));
}

#[test]
fn a_second_manager_conflicts_unless_it_forces() {
    let s = Server::start();
    // Created by the client-side apply: an Update by kubectl-client-side-apply.
    s.apply("web.yaml", &deployment(2, "", NGINX));
    let csa = web(&s);
    let e = entry(&csa, "kubectl-client-side-apply").expect("client-side apply's entry");
    assert_eq!(e["operation"], "Update");
    assert!(e["fieldsV1"]["f:spec"]["f:replicas"].is_object());

    let deployer = ["--field-manager=deployer"];
    let err = String::from_utf8(ssa(&s, "web5.yaml", &deployment(5, "", NGINX), &deployer).stderr).unwrap();
    assert!(
        err.contains(
            r#"Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas"#
        ),
        "{err}"
    );
    assert_eq!(web(&s)["spec"]["replicas"], 2);

    // The Status names the field and the manager.
    let client = s.client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 7}
    }))
    .unwrap();
    let path = "/apis/apps/v1/namespaces/default/deployments/web?fieldManager=raw";
    let err = rt
        .block_on(client.send_raw(http::Method::PATCH, path, Some("application/apply-patch+yaml"), body.clone().into()))
        .expect_err("a conflicting apply must fail");
    let skiff_api::client::Error::Api { code, status, .. } = err else { panic!("not an API error: {err}") };
    assert_eq!(code, 409);
    let causes = status.details.and_then(|d| d.causes).unwrap_or_default();
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(causes[0].reason.as_deref(), Some("FieldManagerConflict"));
    assert_eq!(causes[0].field.as_deref(), Some(".spec.replicas"));
    assert_eq!(causes[0].message.as_deref(), Some(r#"conflict with "kubectl-client-side-apply" using apps/v1"#));
    // A missing fieldManager is refused.
    let err = rt
        .block_on(client.send_raw(
            http::Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some("application/apply-patch+yaml"),
            body.into(),
        ))
        .expect_err("apply needs a field manager");
    assert_eq!(err.code(), Some(422));

    // --force-conflicts takes the field over.
    ssa_ok(&s, "web5.yaml", &deployment(5, "", NGINX), &["--force-conflicts", "--field-manager=deployer"]);
    let forced = web(&s);
    assert_eq!(forced["spec"]["replicas"], 5);
    // (kubectl then moves the client-side apply's fields to the applier's entry.)
    let managers = forced["metadata"]["managedFields"].as_array().unwrap();
    let owners: Vec<&str> = managers
        .iter()
        .filter(|e| e["fieldsV1"]["f:spec"].get("f:replicas").is_some())
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["deployer"], "{managers:?}");

    // kubectl's own server-side apply of what it applied client-side is an upgrade: it
    // may change what the last-applied configuration set, and kubectl then migrates the
    // client-side apply's fields to its Apply entry.
    ssa_ok(&s, "web6.yaml", &deployment(6, "", NGINX), &["--force-conflicts", "--field-manager=deployer"]);
    s.apply("web.yaml", &deployment(2, "", NGINX));
    ssa_ok(&s, "web3.yaml", &deployment(3, "", NGINX), &[]);
    let upgraded = web(&s);
    assert_eq!(upgraded["spec"]["replicas"], 3);
    let managers = &upgraded["metadata"]["managedFields"];
    assert!(entry(&upgraded, "kubectl-client-side-apply").is_none(), "{managers}");
    let kubectl = entry(&upgraded, "kubectl").expect("kubectl's entry");
    assert_eq!(kubectl["operation"], "Apply", "{managers}");
    assert!(kubectl["fieldsV1"]["f:spec"]["f:replicas"].is_object(), "{managers}");

    // The client-side apply still works on the object afterwards.
    s.apply("web.yaml", &deployment(3, "    tier: front\n", NGINX));
    assert_eq!(web(&s)["metadata"]["labels"]["tier"], "front");

    // An Update (kubectl scale) takes replicas from the applier, who then conflicts.
    s.ok(&["scale", "deployment", "web", "--replicas=4"]);
    let err = String::from_utf8(ssa(&s, "web5.yaml", &deployment(5, "", NGINX), &deployer).stderr).unwrap();
    assert!(err.contains("conflict with") && err.contains(".spec.replicas"), "{err}");
}

#[test]
fn omitted_fields_go_unless_owned_and_containers_merge_by_name() {
    let s = Server::start();
    let two =
        format!("{NGINX}      - name: sidecar\n        image: busybox:1.36\n        command: [sleep, infinity]\n");
    ssa_ok(&s, "web.yaml", &deployment(2, "    tier: front\n    team: a\n", &two), &[]);
    // Another manager applies a label of its own and shares one with the same value.
    let other =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    team: a\n    owner: ops\n";
    ssa_ok(&s, "other.yaml", other, &["--field-manager=ops"]);
    // A third applies a container of its own: list items merge by name.
    let logger = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: logger\n        image: fluent-bit:3\n";
    ssa_ok(&s, "logger.yaml", logger, &["--field-manager=logging"]);
    let names = |obj: &Value| -> Vec<String> {
        obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&web(&s)), ["nginx", "sidecar", "logger"]);

    // kubectl drops tier, team and the sidecar from its configuration and changes an image.
    let nginx2 = NGINX.replace("nginx:1.27", "nginx:1.28");
    ssa_ok(&s, "web.yaml", &deployment(2, "", &nginx2), &[]);
    let after = web(&s);
    let labels = &after["metadata"]["labels"];
    assert!(labels.get("tier").is_none(), "an applied field nobody else owns goes: {labels}");
    assert_eq!(labels["team"], "a", "a field ops also applied stays");
    assert_eq!(labels["owner"], "ops");
    assert_eq!(names(&after), ["nginx", "logger"]);
    assert_eq!(after["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.28");
    assert_eq!(after["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: pipelines.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: pipelines, kind: Pipeline}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              replicas: {type: integer}
              stages:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    image: {type: string}
              tags:
                type: array
                x-kubernetes-list-type: set
                items: {type: string}
              args:
                type: array
                items: {type: string}
          status:
            type: object
            properties:
              replicas: {type: integer}
    subresources:
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
"#;

#[test]
fn custom_resources_merge_by_their_schema() {
    let s = Server::start();
    ssa_ok(&s, "crd.yaml", CRD, &[]);
    s.wait_for(20, "the CRD to be served", || s.run(&["get", "pipelines"]).status.success());
    let mine = "apiVersion: example.com/v1\nkind: Pipeline\nmetadata:\n  name: build\nspec:\n  replicas: 1\n  stages:\n  - {name: compile, image: rust:1}\n  tags: [fast]\n  args: [a, b]\n";
    ssa_ok(&s, "p1.yaml", mine, &[]);
    let theirs = "apiVersion: example.com/v1\nkind: Pipeline\nmetadata:\n  name: build\nspec:\n  stages:\n  - {name: test, image: rust:1}\n  tags: [nightly]\n";
    ssa_ok(&s, "p2.yaml", theirs, &["--field-manager=ci"]);
    let p = s.json(&["get", "pipeline", "build", "--show-managed-fields"]);
    let stages: Vec<&str> =
        p["spec"]["stages"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["compile", "test"], "a map list merges by its keys");
    assert_eq!(p["spec"]["tags"], serde_json::json!(["fast", "nightly"]), "a set list unites");
    let ci = &entry(&p, "ci").unwrap()["fieldsV1"]["f:spec"];
    assert!(ci["f:stages"]["k:{\"name\":\"test\"}"].is_object(), "{ci}");
    assert!(ci["f:tags"]["v:\"nightly\""].is_object(), "{ci}");
    // An atomic list is one field: replacing it conflicts with its owner.
    let args = "apiVersion: example.com/v1\nkind: Pipeline\nmetadata:\n  name: build\nspec:\n  args: [c]\n";
    let err = String::from_utf8(ssa(&s, "p3.yaml", args, &["--field-manager=ci"]).stderr).unwrap();
    assert!(err.contains(r#"conflict with "kubectl": .spec.args"#), "{err}");
    // Dropping a stage from my configuration removes only mine.
    let fewer = "apiVersion: example.com/v1\nkind: Pipeline\nmetadata:\n  name: build\nspec:\n  replicas: 1\n  tags: [fast]\n  args: [a, b]\n";
    ssa_ok(&s, "p1.yaml", fewer, &[]);
    let p = s.json(&["get", "pipeline", "build"]);
    let stages: Vec<&str> =
        p["spec"]["stages"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["test"]);

    // A custom resource's scale subresource takes applies too, at its replicas path.
    let path = "/apis/example.com/v1/namespaces/default/pipelines/build/scale?fieldManager=autoscaler";
    let scale = serde_json::json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "build"}, "spec": {"replicas": 3}
    });
    let err = raw_apply(&s, path, &scale).expect_err("kubectl's configuration sets the replicas");
    assert!(err.to_string().contains(r#"conflict with "kubectl": .spec.replicas"#), "{err}");
    raw_apply(&s, &format!("{path}&force=true"), &scale).unwrap();
    let p = s.json(&["get", "pipeline", "build", "--show-managed-fields"]);
    assert_eq!(p["spec"]["replicas"], 3);
    let e = entry(&p, "autoscaler").unwrap_or_else(|| panic!("{p}"));
    assert_eq!(
        (&e["operation"], &e["subresource"], &e["apiVersion"]),
        (&"Apply".into(), &"scale".into(), &"example.com/v1".into())
    );
    assert_eq!(e["fieldsV1"], serde_json::json!({"f:spec": {"f:replicas": {}}}));
}

/// A PATCH with `application/apply-patch+yaml` (client-go's and the HPA's way to
/// apply to a subresource; kubectl has no such command).
fn raw_apply(s: &Server, path: &str, body: &Value) -> Result<(), skiff_api::client::Error> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = serde_json::to_vec(body).unwrap();
    rt.block_on(s.client().send_raw(http::Method::PATCH, path, Some("application/apply-patch+yaml"), bytes.into()))
        .map(|_| ())
}

#[test]
fn the_scale_subresource_records_and_applies_replicas() {
    let s = Server::start();
    let manifest = deployment(2, "", NGINX);
    ssa_ok(&s, "web.yaml", &manifest, &[]);

    // `kubectl scale` patches /scale: an Update recorded with `subresource: scale`,
    // which takes the replicas from the applier.
    s.ok(&["scale", "deployment", "web", "--replicas=3"]);
    let scaled = web(&s);
    assert_eq!(scaled["spec"]["replicas"], 3);
    let managers = scaled["metadata"]["managedFields"].as_array().unwrap();
    let e = managers.iter().find(|e| e["subresource"] == "scale").unwrap_or_else(|| panic!("{managers:?}"));
    let scaler = e["manager"].as_str().unwrap().to_string();
    assert_eq!(e["operation"], "Update");
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["fieldsV1"], serde_json::json!({"f:spec": {"f:replicas": {}}}));
    let applier = managers.iter().find(|e| e["operation"] == "Apply").unwrap();
    assert!(applier["fieldsV1"]["f:spec"].get("f:replicas").is_none(), "{applier}");

    // Applying other replicas now conflicts with the scaler, as upstream names it.
    let err = String::from_utf8(ssa(&s, "web.yaml", &manifest, &[]).stderr).unwrap();
    let want = format!(r#"conflict with "{scaler}" with subresource "scale" using apps/v1: .spec.replicas"#);
    assert!(err.contains(&want), "{err}");
    // Without replicas the configuration applies, and the scaled replicas stay.
    ssa_ok(&s, "web-unscaled.yaml", &manifest.replace("  replicas: 2\n", ""), &[]);
    assert_eq!(web(&s)["spec"]["replicas"], 3);

    // Server-side apply to /scale: the applier owns the replicas with `subresource: scale`.
    let path = "/apis/apps/v1/namespaces/default/deployments/web/scale?fieldManager=autoscaler";
    let scale = serde_json::json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"}, "spec": {"replicas": 4}
    });
    let err = raw_apply(&s, path, &scale).expect_err("the scaler owns the replicas");
    assert_eq!(err.code(), Some(409), "{err}");
    assert!(err.to_string().contains(&want), "{err}");
    raw_apply(&s, &format!("{path}&force=true"), &scale).unwrap();
    let applied = web(&s);
    assert_eq!(applied["spec"]["replicas"], 4);
    let managers = applied["metadata"]["managedFields"].as_array().unwrap();
    let e = entry(&applied, "autoscaler").unwrap_or_else(|| panic!("{managers:?}"));
    assert_eq!(e["operation"], "Apply");
    assert_eq!(e["subresource"], "scale");
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["fieldsV1"], serde_json::json!({"f:spec": {"f:replicas": {}}}));
    assert!(!managers.iter().any(|e| e["manager"] == scaler.as_str() && e["subresource"] == "scale"), "{managers:?}");
    // The Scale shows who owns its replicas.
    let sc = s.json(&["get", "deployment", "web", "--subresource=scale", "--show-managed-fields"]);
    assert_eq!(sc["spec"]["replicas"], 4);
    let owners: Vec<&str> =
        sc["metadata"]["managedFields"].as_array().unwrap().iter().map(|e| e["manager"].as_str().unwrap()).collect();
    assert_eq!(owners, ["autoscaler"], "{sc}");
    // Applying the same again is a no-op; the object's applier is unaffected.
    raw_apply(&s, path, &scale).unwrap();
    assert_eq!(entry(&web(&s), "kubectl"), entry(&applied, "kubectl"));
    // Only a Scale is applied there.
    let wrong = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
    let err = raw_apply(&s, path, &wrong).expect_err("not a Scale");
    assert_eq!(err.code(), Some(400));
    assert!(err.to_string().contains("Specified patch version: apps/v1, expected: autoscaling/v1"), "{err}");
    // kubectl's `apply --subresource=scale` sends the Deployment's manifest: refused alike.
    let err = String::from_utf8(ssa(&s, "web.yaml", &manifest, &["--subresource=scale"]).stderr).unwrap();
    assert!(err.contains("expected: autoscaling/v1"), "{err}");
    // Another name than the URL's is refused; a Scale is not a way to create objects.
    let mut other = scale.clone();
    other["metadata"]["name"] = "missing".into();
    assert_eq!(raw_apply(&s, path, &other).expect_err("not this object").code(), Some(400));
    for kind in ["replicasets", "statefulsets"] {
        let p = format!("/apis/apps/v1/namespaces/default/{kind}/missing/scale?fieldManager=autoscaler");
        assert_eq!(raw_apply(&s, &p, &other).expect_err("no such object").code(), Some(404), "{kind}");
    }
}

#[test]
fn update_managers_beyond_ten_collapse_into_ancient_changes() {
    let s = Server::start_with(&["--disable-controllers"]);
    ssa_ok(&s, "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: '1'}\n", &[]);
    for i in 0..11 {
        s.ok(&["label", "configmap", "cm", &format!("k{i:02}=v"), &format!("--field-manager=m{i:02}")]);
    }
    let cm = s.json(&["get", "configmap", "cm", "--show-managed-fields"]);
    let managers = cm["metadata"]["managedFields"].as_array().unwrap();
    let updates: Vec<&str> =
        managers.iter().filter(|e| e["operation"] == "Update").map(|e| e["manager"].as_str().unwrap()).collect();
    assert_eq!(updates.len(), 10, "{managers:?}");
    assert!(!updates.contains(&"m00") && !updates.contains(&"m01"), "{updates:?}");
    let ancient = entry(&cm, "ancient-changes").unwrap_or_else(|| panic!("{managers:?}"));
    assert_eq!(ancient["operation"], "Update");
    assert_eq!(ancient["apiVersion"], "v1");
    let labels = &ancient["fieldsV1"]["f:metadata"]["f:labels"];
    // (The first labeller made the labels map, `.`.)
    assert_eq!(labels, &serde_json::json!({".": {}, "f:k00": {}, "f:k01": {}}), "{ancient}");
    assert!(entry(&cm, "kubectl").is_some_and(|e| e["operation"] == "Apply"), "appliers are never merged");
}
