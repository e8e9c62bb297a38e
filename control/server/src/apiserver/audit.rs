//! The audit log: one audit.k8s.io/v1 Event per request stage, as JSON lines, for the
//! requests an audit.k8s.io/v1 Policy (`--audit-policy-file`) selects, at the level
//! its first matching rule gives (None, Metadata, Request, RequestResponse). Written to
//! `--audit-log-path` (a file, appended, or `-` for stdout).
//!
//! It must not change a request's outcome: a failing write is logged and dropped. It
//! must not put request or response bodies in events below their levels (Metadata
//! never shows a Secret's data).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::UserInfo;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading audit policy {path}: {source}")]
    ReadPolicy {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("audit policy {path} is not a valid audit.k8s.io/v1 Policy: {source}")]
    ParsePolicy {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("opening audit log {path}: {source}")]
    OpenLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How much of a request an event records, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupResources {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub level: Level,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    #[serde(default)]
    pub omit_stages: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub omit_stages: Vec<String>,
}

/// What the policy looks at in a request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub verb: String,
    /// `None` for a non-resource request (then `path` is what rules match).
    pub resource: Option<ObjectRef>,
    pub path: String,
}

#[derive(Debug, Clone, Default)]
pub struct ObjectRef {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

fn listed(list: &[String], v: &str) -> bool {
    list.is_empty() || list.iter().any(|x| x == "*" || x == v)
}

impl GroupResources {
    fn matches(&self, r: &ObjectRef) -> bool {
        if self.group != r.group && self.group != "*" {
            return false;
        }
        let full = match &r.subresource {
            Some(s) => format!("{}/{s}", r.resource),
            None => r.resource.clone(),
        };
        let resource_ok = self.resources.is_empty()
            || self.resources.iter().any(|x| {
                x == "*"
                    || *x == full
                    || (x.ends_with("/*") && r.subresource.is_some() && x.trim_end_matches("/*") == r.resource)
                    || (x.starts_with("*/") && r.subresource.as_deref() == Some(&x[2..]))
            });
        let name_ok = self.resource_names.is_empty()
            || r.name.as_ref().is_some_and(|n| self.resource_names.iter().any(|x| x == n));
        resource_ok && name_ok
    }
}

impl Rule {
    fn matches(&self, user: &UserInfo, req: &Request) -> bool {
        if !self.users.is_empty() && !self.users.contains(&user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g)) {
            return false;
        }
        if !listed(&self.verbs, &req.verb) {
            return false;
        }
        match &req.resource {
            Some(r) => {
                if !self.non_resource_urls.is_empty() && self.resources.is_empty() {
                    return false;
                }
                if !self.resources.is_empty() && !self.resources.iter().any(|g| g.matches(r)) {
                    return false;
                }
                self.namespaces.is_empty() || self.namespaces.contains(&r.namespace.clone().unwrap_or_default())
            }
            None => {
                if !self.resources.is_empty() || !self.namespaces.is_empty() {
                    return false;
                }
                self.non_resource_urls.is_empty()
                    || self.non_resource_urls.iter().any(|u| match u.strip_suffix('*') {
                        Some(prefix) => req.path.starts_with(prefix),
                        None => *u == req.path,
                    })
            }
        }
    }
}

impl Policy {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::ReadPolicy { path: path.display().to_string(), source })?;
        serde_norway::from_str(&text).map_err(|source| Error::ParsePolicy { path: path.display().to_string(), source })
    }

    /// The level of the first rule that matches, and the stages not to record.
    pub fn level(&self, user: &UserInfo, req: &Request) -> (Level, Vec<String>) {
        match self.rules.iter().find(|r| r.matches(user, req)) {
            Some(r) => (r.level, self.omit_stages.iter().chain(&r.omit_stages).cloned().collect()),
            None => (Level::None, Vec::new()),
        }
    }
}

/// The address a request's connection came from, put in the request's extensions
/// where connections are accepted (`server`); requests without it came in-process.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// A request's `sourceIPs` as upstream lists them: the addresses of
/// `X-Forwarded-For` (each proxy's), then `X-Real-Ip` unless the chain has it, then the
/// connection's address unless it is the chain's last. In-process requests (the
/// controllers' loopback) count as from 127.0.0.1, as upstream's loopback client is.
pub fn source_ips(headers: &http::HeaderMap, remote: Option<std::net::IpAddr>) -> Vec<String> {
    use std::net::IpAddr;
    let parse = |s: &str| s.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let mut ips: Vec<IpAddr> =
        header("x-forwarded-for").into_iter().flat_map(|v| v.split(',')).filter_map(parse).collect();
    if let Some(real) = header("x-real-ip").and_then(parse)
        && !ips.contains(&real)
    {
        ips.push(real);
    }
    let remote = remote.map(|r| r.to_canonical()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if ips.last() != Some(&remote) {
        ips.push(remote);
    }
    ips.into_iter().map(|ip| ip.to_string()).collect()
}

/// A request's future with a panic while it is polled caught, so one request's bug
/// answers that request with a 500 (and an audit event at stage Panic) instead of
/// dropping the connection. The server's futures hold no state that a panic could
/// leave half-changed for other requests (the store is written by whole
/// transactions), which is why asserting unwind safety is sound here.
pub struct CatchPanic<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> CatchPanic<F> {
    pub fn new(f: F) -> Self {
        CatchPanic(Box::pin(f))
    }
}

impl<F: std::future::Future> std::future::Future for CatchPanic<F> {
    /// The output, or the panic's message.
    type Output = Result<F::Output, String>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let f = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                std::task::Poll::Ready(Err(message))
            }
        }
    }
}

/// The response to a request whose handler panicked, upstream's words and all.
pub fn panic_response() -> crate::apiserver::request::Resp {
    http::Response::builder()
        .status(http::StatusCode::INTERNAL_SERVER_ERROR)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(crate::apiserver::request::full(
            "This request caused apiserver to panic. Look in the logs for details.\n",
        ))
        .expect("a fixed response is valid")
}

/// One request as the audit log records it, filled in as the request is served.
#[derive(Debug, Default)]
pub struct Record {
    /// Shared by the events of one request.
    pub audit_id: String,
    pub received: String,
    pub request_uri: String,
    pub user_agent: String,
    pub source_ips: Vec<String>,
    pub user: Option<UserInfo>,
    pub request: Option<Request>,
    /// (decision, reason) of the authorizer.
    pub decision: Option<(&'static str, String)>,
    pub request_object: Option<Value>,
    pub watch: bool,
}

/// The policy and where events go.
pub struct Auditor {
    policy: Policy,
    sink: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").field("policy", &self.policy).finish_non_exhaustive()
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Auditor {
    /// An auditor writing to `log` (`-`: stdout) with `policy` (none: every request at
    /// Metadata, as upstream's default of a policy that logs everything would).
    pub fn open(log: &Path, policy: Option<&Path>) -> Result<Self> {
        let policy = match policy {
            Some(p) => Policy::from_file(p)?,
            None => Policy {
                rules: vec![Rule {
                    level: Level::Metadata,
                    users: vec![],
                    user_groups: vec![],
                    verbs: vec![],
                    resources: vec![],
                    namespaces: vec![],
                    non_resource_urls: vec![],
                    omit_stages: vec![],
                }],
                omit_stages: vec![],
            },
        };
        let sink: Box<dyn Write + Send> = if log.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .map_err(|source| Error::OpenLog { path: log.display().to_string(), source })?,
            )
        };
        Ok(Self { policy, sink: Mutex::new(sink) })
    }

    pub fn new_record(&self) -> Record {
        Record { audit_id: uuid::Uuid::new_v4().to_string(), received: now(), ..Default::default() }
    }

    /// The level `record`'s request gets (None when it is not known who asked).
    pub fn level(&self, record: &Record) -> (Level, Vec<String>) {
        match (&record.user, &record.request) {
            (Some(u), Some(r)) => self.policy.level(u, r),
            _ => (Level::None, Vec::new()),
        }
    }

    /// Writes the events of a request (a watch's first two; `watch_complete` the last) that got `status` (the response's code, and its
    /// Status object if it failed) and `response` (its object, for RequestResponse).
    pub fn finish(&self, record: &Record, code: u16, failure: Option<&Value>, response: Option<Value>) {
        let (level, omit) = self.level(record);
        if level == Level::None {
            return;
        }
        let id = record.audit_id.clone();
        let stages: &[&str] = if record.watch {
            &["RequestReceived", "ResponseStarted"]
        } else {
            &["RequestReceived", "ResponseComplete"]
        };
        let mut out = Vec::new();
        for stage in stages.iter().filter(|s| !omit.iter().any(|o| o == *s)) {
            let ev = self.event(record, level, &id, stage, code, failure, response.as_ref());
            out.push(ev);
        }
        self.write(out);
    }

    /// Writes the events of a request whose handler panicked: RequestReceived, then
    /// Panic (instead of ResponseComplete) with a 500 and the panic's message.
    pub fn panicked(&self, record: &Record, message: &str) {
        let (level, omit) = self.level(record);
        if level == Level::None {
            return;
        }
        let status =
            json!({"status": "Failure", "reason": "InternalError", "message": format!("APIServer panic'd: {message}")});
        let out = ["RequestReceived", "Panic"]
            .iter()
            .filter(|s| !omit.iter().any(|o| o == *s))
            .map(|stage| self.event(record, level, &record.audit_id, stage, 500, Some(&status), None))
            .collect();
        self.write(out);
    }

    /// Writes the ResponseComplete event of a watch whose stream has ended.
    pub fn watch_complete(&self, record: &Record, code: u16) {
        let (level, omit) = self.level(record);
        if level == Level::None || omit.iter().any(|o| o == "ResponseComplete") {
            return;
        }
        let id = record.audit_id.clone();
        let ev = self.event(record, level, &id, "ResponseComplete", code, None, None);
        self.write(vec![ev]);
    }

    fn write(&self, events: Vec<Value>) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        for ev in events {
            if let Err(e) = writeln!(sink, "{ev}").and_then(|()| sink.flush()) {
                tracing::warn!(error = %e, "writing the audit log failed; event dropped");
            }
        }
    }

    #[expect(clippy::too_many_arguments, reason = "one event's parts, from one call site")]
    fn event(
        &self,
        record: &Record,
        level: Level,
        id: &str,
        stage: &str,
        code: u16,
        failure: Option<&Value>,
        response: Option<&Value>,
    ) -> Value {
        let user = record.user.clone().unwrap_or(UserInfo { name: String::new(), groups: vec![] });
        let req = record.request.clone().unwrap_or_default();
        let mut ev = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": level_name(level), "auditID": id,
            "stage": stage, "requestURI": record.request_uri, "verb": req.verb,
            "user": {"username": user.name, "groups": user.groups},
            "sourceIPs": record.source_ips, "userAgent": record.user_agent,
            "requestReceivedTimestamp": record.received,
            "stageTimestamp": if stage == "RequestReceived" { record.received.clone() } else { now() },
        });
        if let Some(r) = &req.resource {
            let mut o = json!({"resource": r.resource, "apiVersion": r.version});
            if !r.group.is_empty() {
                o["apiGroup"] = json!(r.group);
            }
            for (k, v) in [("namespace", &r.namespace), ("name", &r.name), ("subresource", &r.subresource)] {
                if let Some(v) = v {
                    o[k] = json!(v);
                }
            }
            ev["objectRef"] = o;
        }
        if stage != "RequestReceived" {
            let mut st = json!({"metadata": {}, "code": code});
            if let Some(f) = failure {
                for k in ["status", "message", "reason"] {
                    if let Some(v) = f.get(k) {
                        st[k] = v.clone();
                    }
                }
            }
            ev["responseStatus"] = st;
        }
        if level >= Level::Request
            && let Some(o) = &record.request_object
        {
            ev["requestObject"] = o.clone();
        }
        if level >= Level::RequestResponse
            && stage == "ResponseComplete"
            && let Some(o) = response
        {
            ev["responseObject"] = o.clone();
        }
        if let Some((decision, reason)) = &record.decision {
            // The authorizer gives reasons for denials only.
            ev["annotations"] = json!({"authorization.k8s.io/decision": decision});
            if !reason.is_empty() {
                ev["annotations"]["authorization.k8s.io/reason"] = json!(reason);
            }
        }
        ev
    }
}

/// A response body that runs a function once, when it ends or is dropped (a watch's
/// ResponseComplete event).
pub struct OnEnd {
    inner: crate::apiserver::request::Body,
    on_end: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl OnEnd {
    pub fn wrap(
        inner: crate::apiserver::request::Body,
        on_end: Box<dyn FnOnce() + Send + Sync>,
    ) -> crate::apiserver::request::Body {
        use http_body_util::BodyExt;
        OnEnd { inner, on_end: Some(on_end) }.boxed()
    }

    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
    }
}

impl hyper::body::Body for OnEnd {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        self.end();
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::None => "None",
        Level::Metadata => "Metadata",
        Level::Request => "Request",
        Level::RequestResponse => "RequestResponse",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  resources: [{group: "", resources: [secrets]}]
- level: RequestResponse
  verbs: [create, get]
  resources: [{group: "", resources: [pods, "pods/*"]}]
  namespaces: [default]
- level: Request
  nonResourceURLs: ["/healthz*"]
- level: None
"#;

    fn user() -> UserInfo {
        UserInfo { name: "admin".into(), groups: vec!["system:masters".into()] }
    }

    fn res(verb: &str, resource: &str, sub: Option<&str>, ns: Option<&str>) -> Request {
        Request {
            verb: verb.into(),
            path: String::new(),
            resource: Some(ObjectRef {
                group: String::new(),
                version: "v1".into(),
                resource: resource.into(),
                subresource: sub.map(String::from),
                namespace: ns.map(String::from),
                name: Some("x".into()),
            }),
        }
    }

    #[test]
    fn source_ips_list_proxies_then_the_peer() {
        let mut h = http::HeaderMap::new();
        let peer: std::net::IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        assert_eq!(source_ips(&h, Some(peer)), ["10.0.0.9"]);
        assert_eq!(source_ips(&h, None), ["127.0.0.1"]);
        h.insert("x-forwarded-for", "1.2.3.4, bogus, 10.0.0.8".parse().unwrap());
        assert_eq!(source_ips(&h, Some(peer)), ["1.2.3.4", "10.0.0.8", "10.0.0.9"]);
        h.insert("x-real-ip", "1.2.3.4".parse().unwrap());
        assert_eq!(source_ips(&h, Some(peer)), ["1.2.3.4", "10.0.0.8", "10.0.0.9"], "already in the chain");
        h.insert("x-real-ip", "5.6.7.8".parse().unwrap());
        assert_eq!(source_ips(&h, Some(peer)), ["1.2.3.4", "10.0.0.8", "5.6.7.8", "10.0.0.9"]);
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.9".parse().unwrap());
        h.remove("x-real-ip");
        assert_eq!(source_ips(&h, Some(peer)), ["1.2.3.4", "10.0.0.9"], "the peer as the chain's last");
    }

    #[test]
    fn a_panic_is_caught_with_its_message() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let out = rt.block_on(CatchPanic::new(async {
            if std::hint::black_box(true) {
                panic!("on purpose");
            }
            1
        }));
        assert_eq!(out, Err("on purpose".to_string()));
        assert_eq!(rt.block_on(CatchPanic::new(async { 2 })), Ok(2));
    }

    #[test]
    fn first_matching_rule_gives_the_level() {
        let p: Policy = serde_norway::from_str(POLICY).unwrap();
        assert_eq!(p.level(&user(), &res("create", "secrets", None, Some("a"))).0, Level::Metadata);
        assert_eq!(p.level(&user(), &res("create", "pods", None, Some("default"))).0, Level::RequestResponse);
        assert_eq!(p.level(&user(), &res("get", "pods", Some("log"), Some("default"))).0, Level::RequestResponse);
        assert_eq!(p.level(&user(), &res("delete", "pods", None, Some("default"))).0, Level::None);
        assert_eq!(p.level(&user(), &res("create", "pods", None, Some("other"))).0, Level::None);
        let health = Request { verb: "get".into(), path: "/healthz/ready".into(), resource: None };
        assert_eq!(p.level(&user(), &health), (Level::Request, vec!["RequestReceived".to_string()]));
        let version = Request { verb: "get".into(), path: "/version".into(), resource: None };
        assert_eq!(p.level(&user(), &version).0, Level::None);
    }
}
