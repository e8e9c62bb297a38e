//! The kinds of issue 13 part 1 through the real kubectl 1.32 against `skiff-control`:
//! storage (StorageClass, PersistentVolume, PersistentVolumeClaim), networking (Ingress,
//! IngressClass, NetworkPolicy), policy (PodDisruptionBudget, PriorityClass,
//! ResourceQuota, LimitRange, HorizontalPodAutoscaler) and StatefulSet,
//! ControllerRevision, CronJob. For each: `apply` of a realistic manifest, `get` with
//! upstream's columns, `explain`, and a bad manifest refused with every cause named.
//! The `kubectl create` generators that send protobuf are covered too.

mod support;

use support::Server;

fn start() -> Server {
    Server::start_with(&["--disable-controllers"])
}

/// A table's column names (kubectl separates columns by at least three spaces; names
/// such as "ACCESS MODES" contain one).
fn header(table: &str) -> Vec<String> {
    let first = table.lines().next().unwrap_or("");
    first.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect()
}

fn assert_columns(s: &Server, args: &[&str], want: &[&str]) -> String {
    let table = s.ok(args);
    assert_eq!(header(&table), want, "kubectl {args:?}:\n{table}");
    table
}

/// `kubectl explain` of `what` prints the field's description.
fn assert_explains(s: &Server, what: &str, text: &str) {
    let out = s.ok(&["explain", what]);
    assert!(out.contains(text), "kubectl explain {what}: expected {text:?} in\n{out}");
}

/// A second `apply` of the same manifest succeeds and changes no object (kubectl says
/// "configured" where its built-in patch rules resend a list the server defaulted, as
/// against upstream: StatefulSet claim templates, NetworkPolicy ports, PDB selectors).
fn assert_reapply_unchanged(s: &Server, name: &str, manifest: &str) {
    let versions = || {
        let out = s.ok(&["get", "-f", &s.write(name, manifest), "-o", "jsonpath={..resourceVersion}"]);
        let mut v: Vec<String> = out.split_whitespace().map(String::from).collect();
        v.sort();
        v
    };
    let before = versions();
    let out = s.apply(name, manifest);
    assert!(
        out.lines().all(|l| l.ends_with(" unchanged") || l.ends_with(" configured")),
        "second apply of {name}:\n{out}"
    );
    assert_eq!(before, versions(), "a second apply of {name} changed objects:\n{out}");
}

/// Applying `manifest` fails with every one of `causes` in kubectl's message.
fn assert_refused(s: &Server, name: &str, manifest: &str, causes: &[&str]) {
    let f = s.write(name, manifest);
    let err = s.fails(&["apply", "-f", &f]);
    for c in causes {
        assert!(err.contains(c), "expected {c:?} in the refusal of {name}:\n{err}");
    }
}

const STORAGE: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: manual
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-data}
spec:
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  hostPath: {path: /var/lib/data}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  resources: {requests: {storage: 1Gi}}
"#;

#[test]
fn storage_classes_volumes_and_claims() {
    let s = start();
    let out = s.apply("storage.yaml", STORAGE);
    assert_reapply_unchanged(&s, "storage.yaml", STORAGE);
    assert!(out.contains("storageclass.storage.k8s.io/manual created"), "{out}");
    assert!(
        out.contains("persistentvolume/pv-data created") && out.contains("persistentvolumeclaim/data created"),
        "{out}"
    );
    let sc = assert_columns(
        &s,
        &["get", "sc"],
        &["NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "ALLOWVOLUMEEXPANSION", "AGE"],
    );
    assert!(
        sc.contains("rancher.io/local-path") && sc.contains("Delete") && sc.contains("WaitForFirstConsumer"),
        "{sc}"
    );
    let pv = assert_columns(
        &s,
        &["get", "pv"],
        &[
            "NAME",
            "CAPACITY",
            "ACCESS MODES",
            "RECLAIM POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE",
        ],
    );
    assert!(pv.contains("5Gi") && pv.contains("RWO") && pv.contains("Retain") && pv.contains("Pending"), "{pv}");
    let pvc = assert_columns(
        &s,
        &["get", "pvc"],
        &["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "AGE"],
    );
    assert!(pvc.contains("data") && pvc.contains("Pending") && pvc.contains("manual"), "{pvc}");
    let claim = s.json(&["get", "pvc", "data"]);
    assert_eq!(claim["spec"]["volumeMode"], "Filesystem", "defaulted");
    assert_eq!(claim["status"]["phase"], "Pending");
    // Only the requested size may change.
    s.ok(&["patch", "pvc", "data", "-p", r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#]);
    let err = s.fails(&["patch", "pvc", "data", "-p", r#"{"spec":{"storageClassName":"other"}}"#]);
    assert!(err.contains("spec is immutable after creation"), "{err}");
    let err = s.fails(&["patch", "sc", "manual", "-p", r#"{"reclaimPolicy":"Retain"}"#]);
    assert!(err.contains("updates to reclaimPolicy are forbidden"), "{err}");

    assert_explains(&s, "pvc.spec.accessModes", "accessModes contains the desired access modes");
    assert_explains(&s, "storageclass.volumeBindingMode", "volumeBindingMode indicates how PersistentVolumeClaims");
    assert_explains(&s, "pv.spec.capacity", "capacity is the description of the persistent volume's resources");

    assert_refused(
        &s,
        "bad-pvc.yaml",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: bad}\nspec: {accessModes: [ReadWriteAlways]}\n",
        &[
            "The PersistentVolumeClaim \"bad\" is invalid",
            "spec.accessModes: Unsupported value: \"ReadWriteAlways\"",
            "spec.resources[storage]: Required value",
        ],
    );
    assert_refused(
        &s,
        "bad-pv.yaml",
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: bad}\nspec: {capacity: {storage: lots}, accessModes: [ReadWriteOnce]}\n",
        &["spec: Required value: must specify a volume type", "spec.capacity[storage]"],
    );
    assert_refused(
        &s,
        "bad-sc.yaml",
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: bad}\nreclaimPolicy: Recycle\n",
        &["provisioner: Required value", "reclaimPolicy: Unsupported value: \"Recycle\""],
    );
}

const NETWORKING: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop}
spec:
  ingressClassName: nginx
  tls: [{hosts: [shop.example.com], secretName: shop-tls}]
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-allow-web}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: 8080}]
"#;

#[test]
fn ingresses_ingress_classes_and_network_policies() {
    let s = start();
    let out = s.apply("net.yaml", NETWORKING);
    assert_reapply_unchanged(&s, "net.yaml", NETWORKING);
    assert!(out.contains("ingress.networking.k8s.io/shop created"), "{out}");
    assert_columns(&s, &["get", "ingressclass"], &["NAME", "CONTROLLER", "PARAMETERS", "AGE"]);
    let ing = assert_columns(&s, &["get", "ing"], &["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]);
    assert!(ing.contains("nginx") && ing.contains("shop.example.com") && ing.contains("80, 443"), "{ing}");
    let np = assert_columns(&s, &["get", "netpol"], &["NAME", "POD-SELECTOR", "AGE"]);
    assert!(np.contains("app=api"), "{np}");
    let pol = s.json(&["get", "netpol", "api-allow-web"]);
    assert_eq!(pol["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP", "defaulted");
    // `kubectl create ingress` sends protobuf.
    let out = s.ok(&["create", "ingress", "simple", "--class=nginx", "--rule=foo.com/bar*=svc1:8080,tls=my-cert"]);
    assert!(out.contains("ingress.networking.k8s.io/simple created"), "{out}");
    let simple = s.json(&["get", "ing", "simple"]);
    assert_eq!(simple["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"], 8080);
    assert_eq!(simple["spec"]["rules"][0]["http"]["paths"][0]["pathType"], "Prefix");
    assert_eq!(simple["spec"]["tls"][0]["secretName"], "my-cert");

    assert_explains(&s, "ingress.spec.rules.http.paths.pathType", "pathType determines the interpretation of the path");
    assert_explains(&s, "networkpolicy.spec.podSelector", "podSelector selects the pods to which this NetworkPolicy");

    assert_refused(
        &s,
        "bad-ing.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bad}\nspec:\n  rules:\n  - host: Bad_Host\n    http:\n      paths:\n      - {path: api, pathType: Prefix, backend: {service: {name: api}}}\n      - {path: /x, backend: {service: {name: x, port: {number: 80}}}}\n",
        &[
            "The Ingress \"bad\" is invalid",
            "spec.rules[0].host: Invalid value: \"Bad_Host\"",
            "spec.rules[0].http.paths[0].path: Invalid value: \"api\": must be an absolute path",
            "spec.rules[0].http.paths[0].backend.service.port.name: Required value",
            "spec.rules[0].http.paths[1].pathType: Required value: pathType must be specified",
        ],
    );
    assert_refused(
        &s,
        "bad-np.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec:\n  podSelector: {}\n  policyTypes: [Sideways]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}], ports: [{protocol: ICMP}]}]\n",
        &[
            "spec.policyTypes[0]: Unsupported value: \"Sideways\"",
            "spec.egress[0].ports[0].protocol: Unsupported value: \"ICMP\"",
            "spec.egress[0].to[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\"",
        ],
    );
    assert_refused(
        &s,
        "bad-ic.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: bad}\nspec: {controller: nginx}\n",
        &["spec.controller: Invalid value: \"nginx\": must be a domain-prefixed path"],
    );
}

const POLICY: &str = r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 100000
description: for the shop
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute}
spec:
  hard: {pods: "10", requests.cpu: "4", requests.memory: 8Gi, limits.cpu: "8"}
---
apiVersion: v1
kind: LimitRange
metadata: {name: defaults}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 256Mi}
    defaultRequest: {cpu: 100m}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 10
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 60}}
"#;

#[test]
fn budgets_priorities_quotas_limits_and_autoscalers() {
    let s = start();
    s.apply("policy.yaml", POLICY);
    assert_reapply_unchanged(&s, "policy.yaml", POLICY);
    let pdb = assert_columns(
        &s,
        &["get", "pdb"],
        &["NAME", "MIN AVAILABLE", "MAX UNAVAILABLE", "ALLOWED DISRUPTIONS", "AGE"],
    );
    assert!(pdb.contains("N/A"), "{pdb}");
    let pc = assert_columns(&s, &["get", "pc"], &["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"]);
    for want in ["high", "100000", "system-node-critical", "2000001000", "system-cluster-critical", "2000000000"] {
        assert!(pc.contains(want), "{want} in\n{pc}");
    }
    let err = s.fails(&["delete", "pc", "system-node-critical"]);
    assert!(!err.is_empty());
    let quota = assert_columns(&s, &["get", "quota"], &["NAME", "REQUEST", "LIMIT", "AGE"]);
    assert!(
        quota.contains("pods: 0/10, requests.cpu: 0/4, requests.memory: 0/8Gi") && quota.contains("limits.cpu: 0/8"),
        "{quota}"
    );
    assert_columns(&s, &["get", "limits"], &["NAME", "CREATED AT"]);
    let hpa =
        assert_columns(&s, &["get", "hpa"], &["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "AGE"]);
    assert!(hpa.contains("Deployment/web") && hpa.contains("cpu: <unknown>/60%"), "{hpa}");

    // Priority admission: pods get their class's value; unknown classes are refused.
    s.apply(
        "pods.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: urgent}\nspec: {priorityClassName: high, containers: [{name: c, image: busybox}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: plain}\nspec: {containers: [{name: c, image: busybox}]}\n",
    );
    let urgent = s.json(&["get", "pod", "urgent"]);
    assert_eq!(
        (urgent["spec"]["priority"].clone(), urgent["spec"]["preemptionPolicy"].clone()),
        (100000.into(), "PreemptLowerPriority".into())
    );
    assert_eq!(s.json(&["get", "pod", "plain"])["spec"]["priority"], 0);
    let err = s.fails(&["run", "lost", "--image=busybox", "--overrides", r#"{"spec":{"priorityClassName":"nope"}}"#]);
    assert!(err.contains("no PriorityClass with name nope was found"), "{err}");
    s.apply("default-pc.yaml", "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: normal}\nvalue: 10\nglobalDefault: true\n");
    assert_refused(
        &s,
        "second-default.yaml",
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: other}\nvalue: 20\nglobalDefault: true\n",
        &["globalDefault: Invalid value: true: PriorityClass normal is already marked as default"],
    );
    s.ok(&["run", "later", "--image=busybox"]);
    let later = s.json(&["get", "pod", "later"]);
    assert_eq!(
        (later["spec"]["priority"].clone(), later["spec"]["priorityClassName"].clone()),
        (10.into(), "normal".into())
    );

    // The generators that send protobuf.
    s.ok(&["create", "pdb", "api", "--selector=app=api", "--max-unavailable=1"]);
    assert_eq!(s.json(&["get", "pdb", "api"])["spec"]["maxUnavailable"], 1);
    s.ok(&[
        "create",
        "priorityclass",
        "batch",
        "--value=1000",
        "--description=batch jobs",
        "--preemption-policy=Never",
    ]);
    let batch = s.json(&["get", "pc", "batch"]);
    assert_eq!((batch["value"].clone(), batch["preemptionPolicy"].clone()), (1000.into(), "Never".into()));
    s.ok(&["create", "quota", "objects", "--hard=configmaps=5,secrets=3", "--scopes=NotTerminating"]);
    // `kubectl autoscale` writes autoscaling/v1: the same objects as v2, in v1's shape.
    s.ok(&["create", "deployment", "api", "--image=nginx:1.27"]);
    s.ok(&["autoscale", "deployment", "api", "--min=2", "--max=5", "--cpu-percent=70"]);
    let v2 = s.json(&["get", "horizontalpodautoscalers.v2.autoscaling", "api"]);
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 70, "{v2}");
    let v1: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/api",
    ]))
    .unwrap();
    assert_eq!(
        (v1["apiVersion"].clone(), v1["spec"]["targetCPUUtilizationPercentage"].clone()),
        ("autoscaling/v1".into(), 70.into())
    );
    s.ok(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "api",
        "--type=merge",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":50}}"#,
    ]);
    let v2 = s.json(&["get", "hpa", "api"]);
    assert_eq!(v2["apiVersion"], "autoscaling/v2", "v2 is preferred");
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 50);
    assert_eq!(s.json(&["get", "quota", "objects"])["spec"]["hard"]["configmaps"], "5");

    assert_explains(&s, "pdb.spec.minAvailable", "An eviction is allowed if at least \"minAvailable\" pods");
    assert_explains(&s, "priorityclass.value", "value represents the integer value of this priority class");
    assert_explains(&s, "hpa.spec.maxReplicas", "maxReplicas is the upper limit for the number of replicas");
    assert_explains(&s, "limitrange.spec.limits", "Limits is the list of LimitRangeItem objects that are enforced");
    assert_explains(&s, "resourcequota.spec.hard", "hard is the set of desired hard limits for each named resource");

    assert_refused(
        &s,
        "bad-pdb.yaml",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: bad}\nspec: {minAvailable: 1, maxUnavailable: 150%}\n",
        &["minAvailable and maxUnavailable cannot be both set", "spec.maxUnavailable: Invalid value: \"150%\""],
    );
    assert_refused(
        &s,
        "bad-pc.yaml",
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: system-mine}\nvalue: 5\npreemptionPolicy: Sometimes\n",
        &["reserved for system use only", "preemptionPolicy: Unsupported value: \"Sometimes\""],
    );
    assert_refused(
        &s,
        "bad-hpa.yaml",
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: bad}\nspec: {scaleTargetRef: {kind: Deployment}, minReplicas: 0, maxReplicas: 0}\n",
        &[
            "spec.scaleTargetRef.name: Required value",
            "spec.maxReplicas: Invalid value: 0: must be greater than or equal to 1",
            "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
        ],
    );
    assert_refused(
        &s,
        "bad-quota.yaml",
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bad}\nspec: {limits: [{type: Node}]}\n",
        &["spec.limits[0].type: Unsupported value: \"Node\""],
    );
}

const STATEFUL: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: postgres
        image: postgres:16
        ports: [{containerPort: 5432, name: pg}]
        volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
---
apiVersion: apps/v1
kind: ControllerRevision
metadata:
  name: db-7d9f8c
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: 3f1c1b2e-0000-4000-8000-000000000001, controller: true}]
revision: 1
data: {spec: {template: {metadata: {labels: {app: db}}}}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: backup}
spec:
  schedule: "30 2 * * *"
  timeZone: Europe/Berlin
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: dump, image: postgres:16, command: [pg_dumpall]}]
"#;

#[test]
fn stateful_sets_controller_revisions_and_cron_jobs() {
    let s = start();
    let out = s.apply("stateful.yaml", STATEFUL);
    assert_reapply_unchanged(&s, "stateful.yaml", STATEFUL);
    assert!(out.contains("statefulset.apps/db created") && out.contains("cronjob.batch/backup created"), "{out}");
    let sts = assert_columns(&s, &["get", "sts"], &["NAME", "READY", "AGE"]);
    assert!(sts.contains("0/3"), "{sts}");
    assert_columns(&s, &["get", "sts", "-o", "wide"], &["NAME", "READY", "AGE", "CONTAINERS", "IMAGES"]);
    let db = s.json(&["get", "sts", "db"]);
    assert_eq!(db["spec"]["podManagementPolicy"], "OrderedReady", "defaulted");
    assert_eq!(db["spec"]["updateStrategy"]["rollingUpdate"]["partition"], 0);
    assert_eq!(db["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"], "Retain");
    let rev = assert_columns(&s, &["get", "controllerrevisions"], &["NAME", "CONTROLLER", "REVISION", "AGE"]);
    assert!(rev.contains("statefulset.apps/db"), "{rev}");
    let cj = assert_columns(
        &s,
        &["get", "cj"],
        &["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"],
    );
    assert!(cj.contains("30 2 * * *") && cj.contains("Europe/Berlin") && cj.contains("False"), "{cj}");
    let all = s.ok(&["get", "all"]);
    assert!(all.contains("\ndb ") && all.contains("\nbackup "), "both are in `all`: {all}");
    // Scaling through the scale subresource; other spec fields are fixed.
    s.ok(&["scale", "sts", "db", "--replicas=5"]);
    assert_eq!(s.json(&["get", "sts", "db"])["spec"]["replicas"], 5);
    let err = s.fails(&["patch", "sts", "db", "-p", r#"{"spec":{"serviceName":"other"}}"#]);
    assert!(err.contains("updates to statefulset spec for fields other than"), "{err}");
    // `kubectl create cronjob|role|clusterrole` send protobuf.
    s.ok(&["create", "cronjob", "tick", "--image=busybox:1.36", "--schedule=*/5 * * * *", "--", "date"]);
    let tick = s.json(&["get", "cj", "tick"]);
    assert_eq!(tick["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"], "OnFailure");
    assert_eq!(tick["spec"]["successfulJobsHistoryLimit"], 3, "defaulted");
    s.ok(&["create", "role", "reader", "--verb=get,list", "--resource=pods,statefulsets.apps"]);
    let role = s.json(&["get", "role", "reader"]);
    assert_eq!(role["rules"][1]["apiGroups"][0], "apps", "{role}");
    s.ok(&["create", "clusterrole", "node-reader", "--verb=get", "--resource=nodes"]);

    assert_explains(&s, "sts.spec.volumeClaimTemplates", "volumeClaimTemplates is a list of claims");
    assert_explains(&s, "cronjob.spec.schedule", "The schedule in Cron format");
    assert_explains(&s, "controllerrevision.revision", "Revision indicates the revision of the state");

    assert_refused(
        &s,
        "bad-cj.yaml",
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: bad}\nspec:\n  schedule: \"61 * * *\"\n  timeZone: Mars/Olympus\n  concurrencyPolicy: Sometimes\n  jobTemplate: {spec: {template: {spec: {containers: [{name: c, image: busybox}]}}}}\n",
        &[
            "The CronJob \"bad\" is invalid",
            "spec.schedule: Invalid value: \"61 * * *\"",
            "spec.timeZone: Invalid value: \"Mars/Olympus\"",
            "spec.concurrencyPolicy: Unsupported value: \"Sometimes\"",
            "spec.jobTemplate.spec.template.spec.restartPolicy: Unsupported value: \"\"",
        ],
    );
    assert_refused(
        &s,
        "bad-sts.yaml",
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: bad}\nspec:\n  selector: {matchLabels: {app: x}}\n  podManagementPolicy: Random\n  template:\n    metadata: {labels: {app: other}}\n    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}\n",
        &[
            "spec.template.metadata.labels: Invalid value",
            "spec.podManagementPolicy: Unsupported value: \"Random\"",
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\"",
        ],
    );
}

const EVENT: &str = r#"
apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: web-1.pulled}
eventTime: "2026-01-01T10:00:00.000000Z"
reportingController: example.com/puller
reportingInstance: node-1
action: Pull
reason: Pulled
type: Normal
note: Pulled image nginx:1.27
regarding: {kind: Pod, name: web-1, namespace: default, apiVersion: v1}
"#;

#[test]
fn events_k8s_io_serves_the_core_events() {
    let s = start();
    let out = s.apply("event.yaml", EVENT);
    assert_reapply_unchanged(&s, "event.yaml", EVENT);
    assert!(out.contains("event.events.k8s.io/web-1.pulled created"), "{out}");
    // The same object through both APIs, each in its own shape.
    let core = s.json(&["get", "events.v1.", "web-1.pulled"]);
    assert_eq!(
        (core["message"].clone(), core["involvedObject"]["name"].clone()),
        ("Pulled image nginx:1.27".into(), "web-1".into())
    );
    assert_eq!(core["reportingComponent"], "example.com/puller");
    let v1 = s.json(&["get", "events.events.k8s.io", "web-1.pulled"]);
    assert_eq!(
        (v1["apiVersion"].clone(), v1["note"].clone()),
        ("events.k8s.io/v1".into(), "Pulled image nginx:1.27".into())
    );
    assert!(v1.get("message").is_none(), "{v1}");
    let list: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/apis/events.k8s.io/v1/namespaces/default/events"])).unwrap();
    assert_eq!(list["items"][0]["regarding"]["name"], "web-1", "{list}");
    let table = s.ok(&["get", "events.events.k8s.io"]);
    assert!(table.contains("Pulled") && table.contains("pod/web-1"), "{table}");
    // Changes through this API land on the core object.
    s.ok(&["patch", "events.events.k8s.io", "web-1.pulled", "--type=merge", "-p", r#"{"note":"pulled again"}"#]);
    assert_eq!(s.json(&["get", "events.v1.", "web-1.pulled"])["message"], "pulled again");
    let watch = s.ok(&["get", "--raw", "/apis/events.k8s.io/v1/namespaces/default/events?watch=1&timeoutSeconds=1"]);
    assert!(watch.contains("\"note\":\"pulled again\"") && !watch.contains("\"message\""), "{watch}");
    let explained = s.ok(&["explain", "events.note", "--api-version=events.k8s.io/v1"]);
    assert!(explained.contains("note is a human-readable description of the status of this operation"), "{explained}");
    assert_refused(
        &s,
        "bad-event.yaml",
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: bad}\ntype: Odd\nnote: x\n",
        &["eventTime: Required value", "reportingController: Required value", "type: Unsupported value: \"Odd\""],
    );
}
