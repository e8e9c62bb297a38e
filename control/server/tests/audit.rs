//! The audit log with the real kubectl against a real `skiff-control`: a policy that
//! records Secrets at Metadata, Pods at RequestResponse and nothing else yields exactly
//! those events, with the upstream fields, and never a Secret's data; a watch gets
//! RequestReceived, ResponseStarted and (when its stream ends) ResponseComplete;
//! `sourceIPs` is the connection's address; a handler that panics answers 500 and
//! gives an event at stage Panic.

mod support;

use serde_json::Value;
use support::Server;

const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
  resources:
  - group: ""
    resources: [secrets]
- level: RequestResponse
  resources:
  - group: ""
    resources: [pods]
- level: None
"#;

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: audited}\n\
spec: {containers: [{name: c, image: nginx:1.27}]}\n";

#[test]
fn the_policy_selects_events_and_levels() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let s = Server::start_with(&[
        "--disable-controllers",
        "--audit-log-path",
        log.to_str().unwrap(),
        "--audit-policy-file",
        policy.to_str().unwrap(),
    ]);
    // No controllers here: the pod's ServiceAccount is made by hand (and not audited).
    s.ok(&["create", "serviceaccount", "default"]);
    s.ok(&["create", "secret", "generic", "pw", "--from-literal=password=hunter2"]);
    let pod = s.write("pod.yaml", POD);
    s.ok(&["create", "-f", &pod]);
    s.ok(&["get", "nodes"]);
    s.fails(&["get", "secret", "missing"]);
    s.ok(&["get", "--raw", "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1"]);
    s.wait_for(10, "the watch's ResponseComplete", || {
        std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains(r#""verb":"watch""#)).count() == 3
    });

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("hunter2") && !text.contains("aHVudGVyMg=="), "secret data in the audit log: {text}");
    let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary: Vec<(String, String, String, String, i64)> = events
        .iter()
        .map(|e| {
            (
                e["stage"].as_str().unwrap().to_string(),
                e["verb"].as_str().unwrap().to_string(),
                e["objectRef"]["resource"].as_str().unwrap_or("").to_string(),
                e["level"].as_str().unwrap().to_string(),
                e["responseStatus"]["code"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let ev = |stage: &str, verb: &str, res: &str, level: &str, code: i64| {
        (stage.to_string(), verb.to_string(), res.to_string(), level.to_string(), code)
    };
    assert_eq!(
        summary,
        vec![
            ev("RequestReceived", "create", "secrets", "Metadata", 0),
            ev("ResponseComplete", "create", "secrets", "Metadata", 201),
            ev("RequestReceived", "create", "pods", "RequestResponse", 0),
            ev("ResponseComplete", "create", "pods", "RequestResponse", 201),
            ev("RequestReceived", "get", "secrets", "Metadata", 0),
            ev("ResponseComplete", "get", "secrets", "Metadata", 404),
            ev("RequestReceived", "watch", "pods", "RequestResponse", 0),
            ev("ResponseStarted", "watch", "pods", "RequestResponse", 200),
            ev("ResponseComplete", "watch", "pods", "RequestResponse", 200),
        ],
        "{text}"
    );
    for e in &events {
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(e["user"]["username"], "admin", "{e}");
        assert!(e["userAgent"].as_str().unwrap().starts_with("kubectl"), "{e}");
        // kubectl's connection comes from the loopback address.
        assert_eq!(e["sourceIPs"], serde_json::json!(["127.0.0.1"]), "{e}");
        assert!(e["requestReceivedTimestamp"].is_string() && e["stageTimestamp"].is_string(), "{e}");
        assert_eq!(e["annotations"]["authorization.k8s.io/decision"], "allow", "{e}");
        assert_eq!(e["objectRef"]["namespace"], "default", "{e}");
    }
    // One auditID per request, shared by its stages.
    assert_eq!(events[0]["auditID"], events[1]["auditID"]);
    assert_ne!(events[1]["auditID"], events[2]["auditID"]);
    // Metadata: no bodies; RequestResponse: both.
    assert!(events[1].get("requestObject").is_none() && events[1].get("responseObject").is_none());
    assert_eq!(
        events[1]["requestURI"],
        "/api/v1/namespaces/default/secrets?fieldManager=kubectl-create&fieldValidation=Strict"
    );
    assert_eq!(events[3]["requestObject"]["metadata"]["name"], "audited", "{}", events[3]);
    assert!(events[3]["responseObject"]["metadata"]["uid"].is_string(), "{}", events[3]);
    assert!(events[2].get("responseObject").is_none(), "nothing is answered when the request is received");
    assert_eq!(events[5]["objectRef"]["name"], "missing");
    assert_eq!(events[5]["responseStatus"]["reason"], "NotFound", "{}", events[5]);
    // A watch: its three stages share an ID; the stream is not in the log.
    assert!(events[6..].iter().all(|e| e["auditID"] == events[6]["auditID"] && e.get("responseObject").is_none()));
}

#[test]
fn a_panicking_handler_answers_500_and_is_audited_at_stage_panic() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    // The hidden flag makes one non-resource path panic in its handler.
    let s = Server::start_with(&[
        "--disable-controllers",
        "--audit-log-path",
        log.to_str().unwrap(),
        "--debug-panic-path",
        "/debug/skiff-panic",
    ]);
    let err = s.fails(&["get", "--raw", "/debug/skiff-panic"]);
    assert!(err.contains("This request caused apiserver to panic"), "{err}");
    assert!(err.contains("InternalError"), "{err}");
    // The server goes on serving.
    s.ok(&["get", "--raw", "/version"]);
    assert!(s.log().contains("deliberate panic at /debug/skiff-panic"), "the panic is logged");

    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["requestURI"] == "/debug/skiff-panic")
        .collect();
    let stages: Vec<&str> = events.iter().map(|e| e["stage"].as_str().unwrap()).collect();
    // kubectl retries nothing on a 500 from a GET of a raw path.
    assert_eq!(stages, ["RequestReceived", "Panic"], "{text}");
    let panic = &events[1];
    assert_eq!(panic["auditID"], events[0]["auditID"]);
    assert_eq!(panic["verb"], "get");
    assert_eq!(panic["responseStatus"]["code"], 500, "{panic}");
    assert_eq!(panic["responseStatus"]["status"], "Failure");
    let message = panic["responseStatus"]["message"].as_str().unwrap();
    assert!(message.starts_with("APIServer panic'd: deliberate panic"), "{panic}");
    assert_eq!(panic["sourceIPs"], serde_json::json!(["127.0.0.1"]));
}
