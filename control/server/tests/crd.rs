//! CustomResourceDefinitions with the real kubectl against a real `skiff-control`: an
//! operator-style CRD (nested objects, enums, required fields, defaults, printer
//! columns, status and scale subresources, two versions) is applied and Established,
//! then its objects are validated with field paths, pruned, defaulted, printed with
//! the CRD's columns, scaled, watched, explained, guarded by RBAC, and deleted with
//! the CRD.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::Server;

/// The CRD an operator for databases might ship.
const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: databases.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: databases
    singular: database
    kind: Database
    shortNames: [db]
    categories: [example]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.selector
    additionalPrinterColumns:
    - {name: Engine, type: string, jsonPath: .spec.engine}
    - {name: Version, type: string, jsonPath: .spec.version}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Schedule, type: string, jsonPath: .spec.backup.schedule, priority: 1}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        description: Database is a managed database cluster.
        type: object
        properties:
          spec:
            description: The desired database cluster.
            type: object
            required: [engine, version]
            properties:
              engine:
                description: Which database engine runs the cluster.
                type: string
                enum: [postgres, mysql]
              version:
                type: string
                pattern: '^[0-9]+(\.[0-9]+)*$'
              replicas:
                type: integer
                minimum: 0
                maximum: 10
                default: 1
              port:
                x-kubernetes-int-or-string: true
              storage:
                type: object
                default: {}
                properties:
                  size: {type: string, default: 1Gi}
                  className: {type: string}
              backup:
                type: object
                properties:
                  enabled: {type: boolean, default: false}
                  schedule: {type: string, default: "0 3 * * *"}
                  retentionDays: {type: integer, minimum: 1, default: 7}
              users:
                type: array
                maxItems: 5
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string, minLength: 1, maxLength: 16}
                    roles:
                      type: array
                      items: {type: string, enum: [read, write, admin]}
              config:
                description: Engine settings, passed through as they are.
                type: object
                x-kubernetes-preserve-unknown-fields: true
          status:
            type: object
            properties:
              replicas: {type: integer}
              selector: {type: string}
              phase: {type: string}
              conditions:
                type: array
                items:
                  type: object
                  properties:
                    type: {type: string}
                    status: {type: string}
                    reason: {type: string}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

fn orders(extra_spec: &str) -> String {
    format!(
        "apiVersion: example.com/v1\nkind: Database\nmetadata:\n  name: orders\nspec:\n  engine: postgres\n  version: \"16.2\"\n  backup:\n    enabled: true\n{extra_spec}"
    )
}

/// A cluster-scoped CRD in example.com with these versions (YAML list items).
fn cluster_crd(plural: &str, kind: &str, versions: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {plural}.example.com}}\n\
         spec:\n  group: example.com\n  scope: Cluster\n  names: {{plural: {plural}, kind: {kind}}}\n  versions:\n{versions}"
    )
}

/// kubectl's arguments for a merge patch of the `orders` Database's status.
fn status_patch(patch: &str) -> [&str; 7] {
    ["patch", "db", "orders", "--subresource=status", "--type=merge", "-p", patch]
}

/// Applies the CRD and waits for it to be Established.
fn install(s: &Server) {
    let out = s.apply("crd.yaml", CRD);
    assert!(out.contains("customresourcedefinition.apiextensions.k8s.io/databases.example.com created"), "{out}");
    s.ok(&["wait", "--for=condition=Established", "crd/databases.example.com", "--timeout=30s"]);
}

#[test]
fn crd_objects_are_validated_and_established() {
    let s = Server::start_with(&["--disable-controllers"]);
    // Invalid definitions are refused with the field at fault.
    let two_storage = CRD.replace("    storage: false", "    storage: true");
    let f = s.write("bad1.yaml", &two_storage);
    let err = s.fails(&["apply", "-f", &f]);
    assert!(err.contains("spec.versions") && err.contains("exactly one version marked as storage version"), "{err}");
    let wrong_name = CRD.replace("name: databases.example.com", "name: dbs.example.com");
    let f = s.write("bad2.yaml", &wrong_name);
    let err = s.fails(&["apply", "-f", &f]);
    assert!(err.contains("metadata.name"), "{err}");
    let no_schema = cluster_crd("things", "Thing", "  - {name: v1, served: true, storage: true}\n");
    let f = s.write("bad3.yaml", &no_schema);
    let err = s.fails(&["apply", "-f", &f]);
    assert!(err.contains("spec.versions[0].schema.openAPIV3Schema: Required value"), "{err}");
    let bad_scope = CRD.replace("scope: Namespaced", "scope: Global");
    let f = s.write("bad4.yaml", &bad_scope);
    assert!(s.fails(&["apply", "-f", &f]).contains("spec.scope"));

    install(&s);
    let crd = s.json(&["get", "crd", "databases.example.com"]);
    let conds = crd["status"]["conditions"].as_array().unwrap();
    for ty in ["NamesAccepted", "Established"] {
        assert!(conds.iter().any(|c| c["type"] == ty && c["status"] == "True"), "{ty} in {conds:?}");
    }
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "Database");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));
    assert!(crd["metadata"]["finalizers"].to_string().contains("customresourcecleanup"), "{crd}");
    assert!(s.ok(&["get", "crds"]).contains("databases.example.com"));

    // Discovery: the group, both versions (v1 preferred), names, short names, categories.
    let group: serde_json::Value = serde_json::from_str(&s.ok(&["get", "--raw", "/apis/example.com"])).unwrap();
    assert_eq!(group["preferredVersion"]["version"], "v1", "{group}");
    assert_eq!(group["versions"].as_array().unwrap().len(), 2, "{group}");
    let list: serde_json::Value = serde_json::from_str(&s.ok(&["get", "--raw", "/apis/example.com/v1"])).unwrap();
    let names: Vec<&str> = list["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["databases", "databases/scale", "databases/status"], "{list}");
    assert_eq!(list["resources"][0]["shortNames"], serde_json::json!(["db"]));
    assert_eq!(list["resources"][0]["categories"], serde_json::json!(["example"]));
    let api_resources = s.ok(&["api-resources", "--api-group=example.com"]);
    assert!(api_resources.contains("databases") && api_resources.contains("Database"), "{api_resources}");

    // A second CRD claiming the same kind in the group is not accepted.
    let clash = CRD
        .replace("name: databases.example.com", "name: dbclusters.example.com")
        .replace("plural: databases", "plural: dbclusters")
        .replace("singular: database", "singular: dbcluster")
        .replace("shortNames: [db]", "shortNames: [dbc]");
    s.apply("clash.yaml", &clash);
    s.wait_for(20, "the clashing CRD's NamesAccepted=False", || {
        let c = s.json(&["get", "crd", "dbclusters.example.com"]);
        c["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| c["type"] == "NamesAccepted" && c["status"] == "False")
                && cs.iter().any(|c| c["type"] == "Established" && c["status"] == "False")
        })
    });
    assert!(s.fails(&["get", "--raw", "/apis/example.com/v1/dbclusters"]).contains("NotFound"));
    // Groups under k8s.io need upstream's approval annotation.
    let f = s.write("protected.yaml", &CRD.replace("example.com", "example.k8s.io"));
    assert!(s.fails(&["apply", "-f", &f]).contains("api-approved.kubernetes.io"));

    // A cluster-scoped CRD with no printer columns: objects without a namespace, Age shown.
    let cluster = cluster_crd("backupstores", "BackupStore", BACKUPSTORE_V1ALPHA1);
    s.apply("cluster.yaml", &cluster);
    s.ok(&["wait", "--for=condition=Established", "crd/backupstores.example.com", "--timeout=30s"]);
    let f = s.write("store.yaml", "apiVersion: example.com/v1alpha1\nkind: BackupStore\nmetadata: {name: s3}\nspec: {bucket: b, anything: {goes: 1}}\n");
    s.ok(&["apply", "-f", &f]);
    let table = s.ok(&["get", "backupstores"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "AGE"], "{table}");
    let store = s.json(&["get", "backupstore", "s3"]);
    assert!(store["metadata"].get("namespace").is_none(), "{store}");
    assert_eq!(store["spec"]["anything"]["goes"], 1);
    let group: serde_json::Value = serde_json::from_str(&s.ok(&["get", "--raw", "/apis/example.com"])).unwrap();
    assert_eq!(group["preferredVersion"]["version"], "v1", "GA before alpha: {group}");

    // A new storage version: stored objects move to it, and every version serves them.
    let v1 = BACKUPSTORE_V1ALPHA1.replace("v1alpha1", "v1");
    let v1alpha1 = BACKUPSTORE_V1ALPHA1.replace("storage: true", "storage: false");
    let upgraded = cluster_crd("backupstores", "BackupStore", &format!("{v1}{v1alpha1}"));
    s.apply("upgraded.yaml", &upgraded);
    s.wait_for(20, "backupstores in v1", || s.run(&["get", "backupstores.v1.example.com", "s3"]).status.success());
    let store = s.json(&["get", "backupstores.v1.example.com", "s3"]);
    assert_eq!(store["apiVersion"], "example.com/v1", "{store}");
    s.ok(&["patch", "backupstores.v1.example.com", "s3", "--type=merge", "-p", r#"{"spec":{"bucket":"c"}}"#]);
    let old = s.json(&["get", "backupstores.v1alpha1.example.com", "s3"]);
    assert_eq!(old["apiVersion"], "example.com/v1alpha1");
    assert_eq!(old["spec"]["bucket"], "c");
    let crd = s.json(&["get", "crd", "backupstores.example.com"]);
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1alpha1", "v1"]), "{crd}");
}

const BACKUPSTORE_V1ALPHA1: &str = "  - name: v1alpha1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n";

#[test]
fn custom_objects_are_validated_pruned_defaulted_and_printed() {
    let s = Server::start_with(&["--disable-controllers"]);
    install(&s);

    // Invalid objects: 422 with each field's path.
    let f = s.write("bad.yaml", &orders("  engine: oracle\n  replicas: 11\n  users: [{name: a-very-long-user-name}, {roles: [root]}]\n  port: true\n").replace("  engine: postgres\n", ""));
    let err = s.fails(&["apply", "-f", &f]);
    for want in [
        "The Database \"orders\" is invalid",
        "spec.engine: Unsupported value: \"oracle\"",
        "spec.replicas: Invalid value: 11",
        "spec.users[0].name: Too long",
        "spec.users[1].name: Required value",
        "spec.users[1].roles[0]: Unsupported value: \"root\"",
        "spec.port: Invalid value",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let f = s.write("missing.yaml", &orders("").replace("  version: \"16.2\"\n", ""));
    assert!(s.fails(&["apply", "-f", &f]).contains("spec.version: Required value"));
    let f = s.write("pattern.yaml", &orders("").replace("\"16.2\"", "latest"));
    assert!(s.fails(&["apply", "-f", &f]).contains("spec.version in body should match"));

    // Unknown fields: refused under kubectl's default strict validation, pruned without it.
    let f = s.write("unknown.yaml", &orders("  bogus: 1\n  config: {shared_buffers: 128MB, nested: {deep: true}}\n"));
    let err = s.fails(&["apply", "-f", &f]);
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");
    s.ok(&["apply", "--validate=false", "-f", &f]);
    let db = s.json(&["get", "database", "orders"]);
    assert!(db["spec"].get("bogus").is_none(), "{db}");
    assert_eq!(db["spec"]["config"]["nested"]["deep"], true, "preserved: {db}");
    // Defaults, nested ones too.
    assert_eq!(db["spec"]["replicas"], 1, "{db}");
    assert_eq!(db["spec"]["storage"]["size"], "1Gi", "{db}");
    assert_eq!(db["spec"]["backup"]["schedule"], "0 3 * * *", "{db}");
    assert_eq!(db["spec"]["backup"]["retentionDays"], 7, "{db}");
    assert_eq!(db["spec"]["backup"]["enabled"], true, "{db}");
    assert_eq!(db["metadata"]["generation"], 1);

    // Printer columns, by plural, singular and short name.
    let table = s.ok(&["get", "databases"]);
    let header = table.lines().next().unwrap();
    for col in ["NAME", "ENGINE", "VERSION", "REPLICAS", "READY", "AGE"] {
        assert!(header.contains(col), "{col} in {table}");
    }
    assert!(!header.contains("SCHEDULE"), "priority 1 only with -o wide: {table}");
    let row = table.lines().nth(1).unwrap();
    assert!(row.starts_with("orders") && row.contains("postgres") && row.contains("16.2"), "{table}");
    assert!(s.ok(&["get", "db", "-o", "wide"]).contains("0 3 * * *"));
    assert!(s.ok(&["get", "database", "orders"]).contains("postgres"));
    assert!(s.ok(&["get", "example"]).contains("orders"), "by category");

    // Status subresource: status writes go there; the main resource ignores them.
    s.ok(&status_patch(r#"{"status":{"replicas":1,"selector":"app=orders","phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#));
    s.ok(&[
        "patch",
        "db",
        "orders",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Hacked"},"metadata":{"labels":{"tier":"gold"}}}"#,
    ]);
    let db = s.json(&["get", "db", "orders"]);
    assert_eq!(db["status"]["phase"], "Running", "{db}");
    assert_eq!(db["metadata"]["labels"]["tier"], "gold", "{db}");
    assert_eq!(db["metadata"]["generation"], 1, "metadata and status do not bump the generation");
    let row = s.ok(&["get", "db", "orders", "--no-headers"]);
    assert!(row.split_whitespace().nth(4) == Some("True"), "Ready column: {row}");
    // Invalid status is refused too.
    let err = s.fails(&status_patch(r#"{"status":{"replicas":"x"}}"#));
    assert!(err.contains("status.replicas"), "{err}");

    // Strategic merge patches are not for custom resources (415), merge and JSON are.
    let err = s.fails(&["patch", "db", "orders", "-p", r#"{"spec":{"replicas":2}}"#]);
    assert!(
        err.contains("UnsupportedMediaType") || err.contains("unknown format") || err.contains("not supported"),
        "{err}"
    );
    s.ok(&["patch", "db", "orders", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/replicas","value":2}]"#]);
    let db = s.json(&["get", "db", "orders"]);
    assert_eq!(db["spec"]["replicas"], 2);
    assert_eq!(db["metadata"]["generation"], 2);
    let err = s.fails(&["patch", "db", "orders", "--type=merge", "-p", r#"{"spec":{"engine":"db2"}}"#]);
    assert!(err.contains("spec.engine: Unsupported value"), "{err}");

    // The other version serves the same objects under its apiVersion.
    let beta = s.json(&["get", "databases.v1beta1.example.com", "orders"]);
    assert_eq!(beta["apiVersion"], "example.com/v1beta1");
    assert_eq!(beta["spec"]["engine"], "postgres");
    let raw = s.ok(&["get", "--raw", "/apis/example.com/v1beta1/namespaces/default/databases"]);
    assert!(raw.contains("\"apiVersion\":\"example.com/v1beta1\"") && raw.contains("DatabaseList"), "{raw}");
    let f = s.write("beta.yaml", "apiVersion: example.com/v1beta1\nkind: Database\nmetadata: {name: legacy}\nspec: {engine: mysql, version: \"8\"}\n");
    s.ok(&["apply", "-f", &f]);
    let legacy = s.json(&["get", "databases.v1.example.com", "legacy"]);
    assert_eq!(legacy["apiVersion"], "example.com/v1");
    assert_eq!(legacy["spec"]["replicas"], 1, "stored through v1's defaults: {legacy}");

    // Cluster-wide and namespaced lists; deletecollection.
    s.ok(&["create", "namespace", "other"]);
    let f = s.write("other.yaml", &orders("").replace("name: orders", "name: orders\n  namespace: other"));
    s.ok(&["apply", "-f", &f]);
    let all = s.ok(&["get", "db", "-A", "--no-headers"]);
    assert_eq!(all.lines().count(), 3, "{all}");
    s.ok(&["delete", "db", "--all", "-n", "other"]);
    assert_eq!(s.ok(&["get", "db", "-A", "--no-headers"]).lines().count(), 2);
}

#[test]
fn scale_watch_explain_rbac_and_crd_deletion() {
    let s = Server::start_with(&["--disable-controllers"]);
    install(&s);
    let f = s.write("orders.yaml", &orders(""));
    s.ok(&["apply", "-f", &f]);

    // `kubectl get -w` sees the changes that follow.
    let mut w = s
        .cmd()
        .args(["get", "databases", "--watch", "--request-timeout=10s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    // The scale subresource: `kubectl scale` and the Scale object.
    let out = s.ok(&["scale", "database", "orders", "--replicas=3"]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(s.json(&["get", "db", "orders"])["spec"]["replicas"], 3);
    s.ok(&status_patch(r#"{"status":{"replicas":3,"selector":"app=orders"}}"#));
    let scale: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/apis/example.com/v1/namespaces/default/databases/orders/scale",
    ]))
    .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=orders");
    let err = s.fails(&["scale", "db", "orders", "--replicas=20"]);
    assert!(err.contains("spec.replicas"), "scaling is validated by the schema: {err}");

    std::thread::sleep(Duration::from_millis(1000));
    let _ = w.kill();
    let out = w.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("NAME") && text.contains("ENGINE"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("orders ")).collect();
    assert!(rows.len() >= 2 && rows.iter().any(|r| r.split_whitespace().nth(3) == Some("3")), "{text}");

    // kubectl explain renders the schema from /openapi/v3.
    let explain = s.ok(&["explain", "databases.spec"]);
    for want in ["engine", "Which database engine runs the cluster", "backup", "replicas"] {
        assert!(explain.contains(want), "{want:?} in {explain}");
    }
    let explain = s.ok(&["explain", "db.spec.backup.schedule"]);
    assert!(explain.contains("string"), "{explain}");

    let described = s.ok(&["describe", "db", "orders"]);
    assert!(described.contains("Engine:") && described.contains("postgres"), "{described}");

    // A changed CRD is served as changed: a new column, a new field that explain shows.
    let changed = CRD
        .replace(
            "    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}",
            "    - {name: Size, type: string, jsonPath: .spec.storage.size}\n    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}",
        )
        .replace(
            "              engine:\n",
            "              tier:\n                description: The service tier, for billing.\n                type: string\n              engine:\n",
        );
    let out = s.apply("crd-changed.yaml", &changed);
    assert!(out.contains("configured"), "{out}");
    s.wait_for(20, "the new column", || s.ok(&["get", "db"]).lines().next().is_some_and(|h| h.contains("SIZE")));
    assert!(s.ok(&["get", "db"]).contains("1Gi"));
    assert!(s.ok(&["explain", "db.spec.tier"]).contains("The service tier, for billing."));
    s.ok(&["patch", "db", "orders", "--type=merge", "-p", r#"{"spec":{"tier":"gold"}}"#]);
    assert_eq!(s.json(&["get", "db", "orders"])["spec"]["tier"], "gold", "no longer pruned");
    let crd = s.json(&["get", "crd", "databases.example.com"]);
    assert!(crd["metadata"]["finalizers"].to_string().contains("customresourcecleanup"), "{crd}");

    // RBAC: a Role on databases in example.com lets a ServiceAccount read, not delete.
    s.ok(&["create", "serviceaccount", "reader"]);
    s.ok(&["create", "role", "db-reader", "--verb=get,list,watch", "--resource=databases.example.com"]);
    s.ok(&["create", "rolebinding", "db-reader", "--role=db-reader", "--serviceaccount=default:reader"]);
    let who = "--as=system:serviceaccount:default:reader";
    assert!(s.ok(&["get", "db", who]).contains("orders"));
    let err = s.fails(&["delete", "db", "orders", who]);
    assert!(err.contains("forbidden") && err.contains("databases.example.com"), "{err}");
    assert!(s.fails(&["get", "configmaps", who]).contains("forbidden"));

    // Deleting the CRD deletes its objects, then the CRD; the kind leaves discovery.
    let out = s.ok(&["delete", "crd", "databases.example.com", "--timeout=60s"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(!s.ok(&["get", "crd"]).contains("databases.example.com"));
    s.wait_for(20, "example.com to leave discovery", || {
        !s.run(&["get", "--raw", "/apis/example.com/v1"]).status.success()
    });
    let groups = s.ok(&["get", "--raw", "/apis"]);
    assert!(!groups.contains("example.com"), "{groups}");
    // kubectl's discovery cache may still name the resource; the server no longer has it.
    let err = s.fails(&["get", "databases"]);
    assert!(err.contains("doesn't have a resource type") || err.contains("NotFound"), "{err}");
    install(&s);
    let left = s.ok(&["get", "databases", "-A"]);
    let err_or_empty = left.trim().is_empty() || left.contains("No resources");
    assert!(err_or_empty, "objects outlived their CRD: {left}");
}

#[test]
fn custom_objects_live_in_etcd_and_are_served_again_after_a_restart() {
    let etcd = support::etcd::Etcd::start(1);
    let mut s = Server::start_with(&["--disable-controllers", "--etcd-servers", &etcd.urls().join(",")]);
    install(&s);
    let f = s.write("orders.yaml", &orders(""));
    s.ok(&["apply", "-f", &f]);
    // Re-applying a change is a merge patch computed by kubectl (no strategic merge for CRs).
    let out = s.ok(&["apply", "-f", &s.write("orders2.yaml", &orders("  replicas: 4\n"))]);
    assert!(out.contains("database.example.com/orders configured"), "{out}");

    // Stored under the resource's prefix, beside the built-in kinds.
    let out = etcd.etcdctl(&etcd.urls(), &["get", "--prefix", "--keys-only", ""]);
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(
        keys.lines().any(|k| k.ends_with("/registry/databases.example.com/default/orders")),
        "no key for the custom object in etcd: {keys}"
    );

    // A restarted server serves the CRD's resources again from what is stored.
    s.stop();
    let _ = std::fs::remove_file(s.kubeconfig());
    s.spawn();
    s.wait_for(20, "databases to be served after the restart", || s.run(&["get", "db", "orders"]).status.success());
    assert_eq!(s.json(&["get", "db", "orders"])["spec"]["replicas"], 4);
}

#[test]
fn dependents_of_a_deleted_custom_object_are_garbage_collected() {
    // With the controllers: the garbage collector follows owners of custom kinds too.
    let s = Server::start();
    install(&s);
    s.ok(&["apply", "-f", &s.write("orders.yaml", &orders(""))]);
    s.ok(&["apply", "-f", &s.write("billing.yaml", &orders("").replace("name: orders", "name: billing"))]);
    let owned = |owner: &str| {
        let uid = s.json(&["get", "db", owner])["metadata"]["uid"].as_str().unwrap().to_string();
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {owner}-app\n  ownerReferences:\n  \
             - {{apiVersion: example.com/v1, kind: Database, name: {owner}, uid: {uid}, controller: true}}\n"
        )
    };
    s.ok(&["apply", "-f", &s.write("sa1.yaml", &owned("orders"))]);
    s.ok(&["apply", "-f", &s.write("sa2.yaml", &owned("billing"))]);
    // Owners that exist keep their dependents.
    std::thread::sleep(Duration::from_secs(3));
    s.ok(&["get", "serviceaccount", "orders-app", "billing-app"]);

    s.ok(&["delete", "db", "orders"]);
    s.wait_for(30, "orders-app to be collected", || !s.run(&["get", "serviceaccount", "orders-app"]).status.success());
    s.ok(&["get", "serviceaccount", "billing-app"]);
    // Deleting the CRD deletes the other owner, and so its dependent.
    s.ok(&["delete", "crd", "databases.example.com"]);
    s.wait_for(30, "billing-app to be collected", || {
        !s.run(&["get", "serviceaccount", "billing-app"]).status.success()
    });
}

#[test]
fn deleting_a_crd_waits_for_the_finalizers_of_its_objects() {
    let s = Server::start_with(&["--disable-controllers"]);
    install(&s);
    let held = orders("").replace("  name: orders\n", "  name: orders\n  finalizers: [example.com/backup]\n");
    s.ok(&["apply", "-f", &s.write("held.yaml", &held)]);
    s.ok(&["apply", "-f", &s.write("free.yaml", &orders("").replace("name: orders", "name: free"))]);

    s.ok(&["delete", "crd", "databases.example.com", "--wait=false"]);
    s.wait_for(20, "the CRD to be Terminating", || {
        let c = s.json(&["get", "crd", "databases.example.com"]);
        c["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Terminating" && c["status"] == "True"))
    });
    // The object without finalizers is gone; the held one is being deleted and still served.
    s.wait_for(20, "free to be deleted", || !s.run(&["get", "db", "free"]).status.success());
    let db = s.json(&["get", "db", "orders"]);
    assert!(db["metadata"]["deletionTimestamp"].is_string(), "{db}");
    let err = s.fails(&["apply", "-f", &s.write("new.yaml", &orders("").replace("name: orders", "name: late"))]);
    assert!(err.contains("create not allowed while custom resource definition is terminating"), "{err}");

    // Its finalizer's owner lets go: the object goes, then the CRD.
    s.ok(&["patch", "db", "orders", "--type=json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#]);
    s.wait_for(20, "the CRD to be gone", || !s.ok(&["get", "crd"]).contains("databases.example.com"));
    assert!(!s.ok(&["get", "--raw", "/apis"]).contains("example.com"));
}
