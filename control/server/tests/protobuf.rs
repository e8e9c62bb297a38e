//! Every `kubectl create` generator of kubectl 1.32 against a real skiff-control: each
//! builds its object in kubectl and sends it as protobuf (client-go's choice for
//! built-in kinds), so each object read back must carry what the flags said. The
//! decoder is the generic one in `src/apiserver/protobuf` (descriptors of every
//! built-in kind), so these also prove that no generator needs a hand-written table.

mod support;

use base64::Engine;
use serde_json::{Value, json};
use support::Server;

fn start() -> Server {
    Server::start_with(&["--disable-controllers"])
}

fn unbase64(v: &Value) -> String {
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
}

#[test]
fn configmaps_and_secrets() {
    let s = start();
    let bin = s.write("blob.bin", "");
    std::fs::write(&bin, [0u8, 159, 146, 150, 255]).unwrap();
    s.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=a=1",
        "--from-literal=empty=",
        &format!("--from-file=blob={bin}"),
    ]);
    let cm = s.json(&["get", "configmap", "cfg"]);
    assert_eq!(cm["data"], json!({"a": "1", "empty": ""}));
    assert_eq!(cm["binaryData"], json!({"blob": "AJ+Slv8="}), "non-UTF-8 files go to binaryData, base64");

    s.ok(&["create", "secret", "generic", "pw", "--from-literal=user=admin", "--type=Opaque"]);
    let sec = s.json(&["get", "secret", "pw"]);
    assert_eq!((sec["type"].clone(), unbase64(&sec["data"]["user"])), (json!("Opaque"), "admin".into()));

    s.ok(&[
        "create",
        "secret",
        "docker-registry",
        "pull",
        "--docker-server=registry.example",
        "--docker-username=u",
        "--docker-password=p",
        "--docker-email=u@example.com",
    ]);
    let pull = s.json(&["get", "secret", "pull"]);
    assert_eq!(pull["type"], "kubernetes.io/dockerconfigjson");
    let config: Value = serde_json::from_str(&unbase64(&pull["data"][".dockerconfigjson"])).unwrap();
    assert_eq!(config["auths"]["registry.example"]["username"], "u");

    let key = rcgen::generate_simple_self_signed(vec!["web.example".to_string()]).unwrap();
    let cert = s.write("tls.crt", &key.cert.pem());
    let private = s.write("tls.key", &key.signing_key.serialize_pem());
    s.ok(&["create", "secret", "tls", "web-tls", &format!("--cert={cert}"), &format!("--key={private}")]);
    let tls = s.json(&["get", "secret", "web-tls"]);
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(unbase64(&tls["data"]["tls.crt"]), key.cert.pem());
    assert!(unbase64(&tls["data"]["tls.key"]).contains("PRIVATE KEY"));
}

#[test]
fn workloads() {
    let s = start();
    s.ok(&["create", "deployment", "web", "--image=nginx:1.27", "--image=busybox:1.36", "--replicas=3", "--port=8080"]);
    let d = s.json(&["get", "deployment", "web"]);
    assert_eq!(d["spec"]["replicas"], 3);
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        (containers[0]["image"].clone(), containers[1]["image"].clone()),
        (json!("nginx:1.27"), json!("busybox:1.36"))
    );
    assert_eq!(containers[0]["ports"], json!([{"containerPort": 8080, "protocol": "TCP"}]));
    assert_eq!(d["spec"]["template"]["metadata"], json!({"labels": {"app": "web"}}), "Go's zero time is no time");

    s.ok(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox:1.36",
        "--schedule=*/5 * * * *",
        "--restart=OnFailure",
        "--",
        "date",
    ]);
    let cj = s.json(&["get", "cronjob", "tick"]);
    assert_eq!(cj["spec"]["schedule"], "*/5 * * * *");
    let pod = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(
        (pod["restartPolicy"].clone(), pod["containers"][0]["command"].clone()),
        (json!("OnFailure"), json!(["date"]))
    );

    s.ok(&["create", "job", "once", "--image=busybox:1.36", "--", "echo", "hi"]);
    let j = s.json(&["get", "job", "once"]);
    assert_eq!(j["spec"]["template"]["spec"]["containers"][0]["command"], json!(["echo", "hi"]));

    // --from=cronjob: the job is owned by the CronJob (an ObjectMeta ownerReference).
    s.ok(&["create", "job", "manual", "--from=cronjob/tick"]);
    let m = s.json(&["get", "job", "manual"]);
    let owner = &m["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].clone(), owner["name"].clone(), owner["controller"].clone()),
        (json!("CronJob"), json!("tick"), json!(true))
    );
    assert_eq!(owner["uid"], cj["metadata"]["uid"]);
    assert_eq!(m["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual");

    s.ok(&["autoscale", "deployment", "web", "--min=2", "--max=5", "--cpu-percent=70"]);
    let hpa = s.json(&["get", "hpa", "web"]);
    assert_eq!((hpa["spec"]["minReplicas"].clone(), hpa["spec"]["maxReplicas"].clone()), (json!(2), json!(5)));
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "web");
}

#[test]
fn services() {
    let s = start();
    s.ok(&["create", "service", "clusterip", "api", "--tcp=80:8080", "--tcp=443:https"]);
    let api = s.json(&["get", "service", "api"]);
    let ports = &api["spec"]["ports"];
    assert_eq!((ports[0]["port"].clone(), ports[0]["targetPort"].clone()), (json!(80), json!(8080)));
    assert_eq!((ports[1]["port"].clone(), ports[1]["targetPort"].clone()), (json!(443), json!("https")));
    assert!(ports[0].get("nodePort").is_none(), "Go's zero nodePort is no nodePort: {ports}");
    assert_eq!(api["spec"]["selector"], json!({"app": "api"}));

    s.ok(&["create", "service", "clusterip", "headless", "--clusterip=None"]);
    assert_eq!(s.json(&["get", "service", "headless"])["spec"]["clusterIP"], "None");

    s.ok(&["create", "service", "nodeport", "np", "--tcp=81:http", "--node-port=30081"]);
    let np = s.json(&["get", "service", "np"]);
    assert_eq!(
        (np["spec"]["type"].clone(), np["spec"]["ports"][0]["nodePort"].clone()),
        (json!("NodePort"), json!(30081))
    );

    s.ok(&["create", "service", "loadbalancer", "lb", "--tcp=82:8082"]);
    let lb = s.json(&["get", "service", "lb"]);
    assert_eq!(lb["spec"]["type"], "LoadBalancer");
    assert!(lb["spec"]["ports"][0]["nodePort"].as_i64().is_some_and(|p| p >= 30000), "allocated: {lb}");

    s.ok(&["create", "service", "externalname", "ext", "--external-name=db.example.com"]);
    let ext = s.json(&["get", "service", "ext"]);
    assert_eq!(
        (ext["spec"]["type"].clone(), ext["spec"]["externalName"].clone()),
        (json!("ExternalName"), json!("db.example.com"))
    );

    s.ok(&[
        "create",
        "ingress",
        "web",
        "--class=nginx",
        "--rule=foo.com/bar*=svc1:8080,tls=foo-cert",
        "--default-backend=svc2:http",
        "--annotation=team=web",
    ]);
    let ing = s.json(&["get", "ingress", "web"]);
    assert_eq!(ing["spec"]["ingressClassName"], "nginx");
    assert_eq!(ing["metadata"]["annotations"]["team"], "web");
    assert_eq!(ing["spec"]["defaultBackend"]["service"], json!({"name": "svc2", "port": {"name": "http"}}));
    assert_eq!(ing["spec"]["tls"], json!([{"hosts": ["foo.com"], "secretName": "foo-cert"}]));
    let rule = &ing["spec"]["rules"][0];
    assert_eq!(rule["host"], "foo.com");
    assert_eq!(
        rule["http"]["paths"][0],
        json!({"path": "/bar", "pathType": "Prefix", "backend": {"service": {"name": "svc1", "port": {"number": 8080}}}})
    );
}

#[test]
fn rbac_accounts_and_tokens() {
    let s = start();
    s.ok(&["create", "namespace", "team"]);
    assert_eq!(s.json(&["get", "namespace", "team"])["metadata"]["name"], "team");

    s.ok(&["create", "serviceaccount", "bot", "-n", "team"]);
    assert_eq!(s.json(&["get", "serviceaccount", "bot", "-n", "team"])["metadata"]["namespace"], "team");

    s.ok(&["create", "role", "reader", "-n", "team", "--verb=get,list", "--resource=pods,deployments.apps"]);
    s.ok(&["create", "role", "one", "-n", "team", "--verb=get", "--resource=configmaps", "--resource-name=settings"]);
    let reader = s.json(&["get", "role", "reader", "-n", "team"]);
    assert_eq!(
        reader["rules"],
        json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]},
               {"verbs": ["get", "list"], "apiGroups": ["apps"], "resources": ["deployments"]}])
    );
    assert_eq!(s.json(&["get", "role", "one", "-n", "team"])["rules"][0]["resourceNames"], json!(["settings"]));

    s.ok(&["create", "clusterrole", "health", "--verb=get", "--non-resource-url=/healthz"]);
    assert_eq!(
        s.json(&["get", "clusterrole", "health"])["rules"],
        json!([{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}])
    );
    s.ok(&["create", "clusterrole", "monitoring", "--aggregation-rule=rbac.example.com/aggregate-to-monitoring=true"]);
    assert_eq!(
        s.json(&["get", "clusterrole", "monitoring"])["aggregationRule"],
        json!({"clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/aggregate-to-monitoring": "true"}}]})
    );

    s.ok(&[
        "create",
        "rolebinding",
        "readers",
        "-n",
        "team",
        "--role=reader",
        "--user=alice",
        "--group=devs",
        "--serviceaccount=team:bot",
    ]);
    let rb = s.json(&["get", "rolebinding", "readers", "-n", "team"]);
    assert_eq!(rb["roleRef"], json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"}));
    let names: Vec<&str> = rb["subjects"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "devs", "bot"]);
    assert_eq!(rb["subjects"][2], json!({"kind": "ServiceAccount", "name": "bot", "namespace": "team"}));

    s.ok(&["create", "clusterrolebinding", "viewers", "--clusterrole=view", "--user=bob"]);
    let crb = s.json(&["get", "clusterrolebinding", "viewers"]);
    assert_eq!(crb["subjects"], json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]));

    let token = s.ok(&["create", "token", "bot", "-n", "team", "--audience=vault", "--duration=2h"]);
    let claims = token.trim().split('.').nth(1).expect("a JWT");
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["aud"], json!(["vault"]));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 7200);
}

#[test]
fn policy_kinds() {
    let s = start();
    s.ok(&["create", "quota", "objects", "--hard=pods=10,requests.cpu=2,limits.memory=1Gi", "--scopes=NotTerminating"]);
    let q = s.json(&["get", "quota", "objects"]);
    assert_eq!(q["spec"]["hard"], json!({"pods": "10", "requests.cpu": "2", "limits.memory": "1Gi"}));
    assert_eq!(q["spec"]["scopes"], json!(["NotTerminating"]));

    s.ok(&["create", "priorityclass", "high", "--value=1000", "--description=important", "--preemption-policy=Never"]);
    let pc = s.json(&["get", "priorityclass", "high"]);
    assert_eq!((pc["value"].clone(), pc["description"].clone()), (json!(1000), json!("important")));
    assert_eq!(pc["preemptionPolicy"], "Never");
    s.ok(&["create", "priorityclass", "zero", "--value=0"]);
    assert_eq!(s.json(&["get", "priorityclass", "zero"])["value"], 0);

    s.ok(&["create", "poddisruptionbudget", "web", "--selector=app=web", "--min-available=50%"]);
    let pdb = s.json(&["get", "pdb", "web"]);
    assert_eq!(pdb["spec"]["minAvailable"], "50%");
    assert_eq!(pdb["spec"]["selector"], json!({"matchLabels": {"app": "web"}}));
    s.ok(&["create", "pdb", "api", "--selector=app=api", "--max-unavailable=1"]);
    assert_eq!(s.json(&["get", "pdb", "api"])["spec"]["maxUnavailable"], 1);
}
