//! `metrics.k8s.io/v1beta1`, served by skiff-control itself (upstream aggregates
//! metrics-server behind this group): `nodes` (NodeMetrics) and `pods` (PodMetrics,
//! namespaced), get and list, with label selectors (and field selectors on pods), as
//! `kubectl top` and the HPA controller read them. The figures are the scraper's
//! latest points (`resource_metrics`, kept by `metrics_scraper`); the objects they are
//! about (labels, creation times, which pods a selector picks) are read from the store.
//!
//! It is a read-only virtual group: nothing is stored, there is no watch, and it must
//! not compute figures itself. Discovery lists it (`discovery` asks [`group_doc`] and
//! [`resource_list`]) so that kubectl finds it.

use std::collections::HashMap;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::api_server::ApiServer;
use super::object::to_obj;
use super::request::{Ctx, Resp, error_response, json_response};
use super::resource_def::ResourceDef;
use super::resource_metrics::{PodPoint, Point};
use super::resources;
use super::selectors::Selectors;
use super::status::{ApiError, ApiResult};
use crate::auth::UserInfo;
use crate::auth::authz::{Attributes, Decision};

pub(crate) const GROUP: &str = "metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta1";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";

/// The group as `/apis` lists it.
pub(crate) fn group_doc() -> Value {
    let v = json!({"groupVersion": API_VERSION, "version": VERSION});
    json!({"name": GROUP, "versions": [v.clone()], "preferredVersion": v})
}

/// `/apis/metrics.k8s.io/v1beta1`.
pub(crate) fn resource_list() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION, "resources": [
        {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
        {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
    ]})
}

/// What a request under `/apis/metrics.k8s.io/v1beta1/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Nodes {
        name: Option<String>,
    },
    Pods {
        namespace: Option<String>,
        name: Option<String>,
    },
    /// Under the group but no resource of it: 404.
    Unknown,
}

impl Target {
    /// Whether `path` is a resource path of this group, and which.
    pub(crate) fn parse(path: &str) -> Option<Self> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let rest = match segs.as_slice() {
            ["apis", GROUP, VERSION, rest @ ..] if !rest.is_empty() => rest,
            _ => return None,
        };
        let name = |n: Option<&&str>| n.map(|n| n.to_string());
        Some(match rest {
            ["nodes", tail @ ..] if tail.len() <= 1 => Target::Nodes { name: name(tail.first()) },
            ["pods"] => Target::Pods { namespace: None, name: None },
            ["namespaces", ns, "pods", tail @ ..] if tail.len() <= 1 => {
                Target::Pods { namespace: Some(ns.to_string()), name: name(tail.first()) }
            }
            _ => Target::Unknown,
        })
    }

    fn resource(&self) -> &'static str {
        match self {
            Target::Nodes { .. } => "nodes",
            _ => "pods",
        }
    }

    fn name(&self) -> Option<&String> {
        match self {
            Target::Nodes { name } | Target::Pods { name, .. } => name.as_ref(),
            Target::Unknown => None,
        }
    }

    /// The request metrics' labels.
    pub(crate) fn metric_labels(&self) -> crate::metrics::RequestLabels {
        let (verb, scope) = match self {
            Target::Nodes { name: Some(_) } | Target::Pods { name: Some(_), .. } => ("GET", "resource"),
            Target::Pods { namespace: Some(_), .. } => ("LIST", "namespace"),
            _ => ("LIST", "cluster"),
        };
        crate::metrics::RequestLabels {
            verb,
            group: GROUP.into(),
            version: VERSION.into(),
            resource: self.resource().into(),
            scope,
            ..Default::default()
        }
    }
}

/// metav1.Time: RFC 3339 in whole seconds, UTC.
fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// metav1.Duration as Go prints a `time.Duration` (`15.004s`, `1m0.5s`).
fn go_duration(ms: i64) -> String {
    let (m, rest) = (ms / 60_000, ms % 60_000);
    let secs = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        let s = format!("{}.{:03}", rest / 1000, rest % 1000);
        format!("{}s", s.trim_end_matches('0'))
    };
    if m > 0 { format!("{m}m{secs}") } else { secs }
}

/// CPU in nanocores and memory in bytes as metrics-server writes them (`Ki` when whole).
fn usage(cpu_nanocores: u64, memory_bytes: u64) -> Value {
    let memory =
        if memory_bytes.is_multiple_of(1024) { format!("{}Ki", memory_bytes / 1024) } else { memory_bytes.to_string() };
    json!({"cpu": format!("{cpu_nanocores}n"), "memory": memory})
}

/// The metadata of a metrics object: the object's name, namespace and labels.
fn metadata(obj: &Value) -> Value {
    let mut m = json!({"name": obj.pointer("/metadata/name"), "creationTimestamp": super::meta::now()});
    if let Some(ns) = obj.pointer("/metadata/namespace") {
        m["namespace"] = ns.clone();
    }
    if let Some(l) = obj.pointer("/metadata/labels") {
        m["labels"] = l.clone();
    }
    m
}

fn node_metrics(node: &Value, p: Point) -> Value {
    json!({"metadata": metadata(node), "timestamp": time(p.timestamp_ms), "window": go_duration(p.window_ms),
        "usage": usage(p.cpu_nanocores, p.memory_bytes)})
}

fn pod_metrics(pod: &Value, p: &PodPoint) -> Value {
    let containers: Vec<Value> =
        p.containers.iter().map(|(name, cpu, mem)| json!({"name": name, "usage": usage(*cpu, *mem)})).collect();
    json!({"metadata": metadata(pod), "timestamp": time(p.timestamp_ms), "window": go_duration(p.window_ms),
        "containers": containers})
}

impl ApiServer {
    /// Serves one request for `metrics.k8s.io` of an authenticated user.
    pub(crate) async fn metrics_api(
        &self,
        method: &Method,
        query: Option<&str>,
        target: Target,
        user: &UserInfo,
    ) -> Resp {
        match self.metrics_api_inner(method, query, &target, user).await {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => error_response(&e),
        }
    }

    async fn metrics_api_inner(
        &self,
        method: &Method,
        query: Option<&str>,
        target: &Target,
        user: &UserInfo,
    ) -> ApiResult<Value> {
        if *target == Target::Unknown {
            return Err(ApiError::path_not_found());
        }
        let query: HashMap<String, String> =
            query.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
        let verb = match (method, target.name()) {
            (&Method::GET, _) if watch => return Err(ApiError::method_not_allowed("watch")),
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) => "list",
            (m, _) => return Err(ApiError::method_not_allowed(m.as_str())),
        };
        let namespace = match target {
            Target::Pods { namespace, .. } => namespace.clone(),
            _ => None,
        };
        let attrs = Attributes::Resource {
            verb: verb.to_string(),
            group: GROUP.to_string(),
            resource: target.resource().to_string(),
            subresource: None,
            namespace: namespace.clone(),
            name: target.name().cloned(),
        };
        if let Decision::Deny(why) = self.authz.authorize(user, &attrs) {
            let res = format!("{}.{GROUP}", target.resource());
            return Err(ApiError::forbidden(match target.name() {
                Some(n) => format!("{res} \"{n}\" is forbidden: {why}"),
                None => format!("{res} is forbidden: {why}"),
            }));
        }
        let (def, kind, metrics_name) = match target {
            Target::Nodes { .. } => (resources::find("", "v1", "nodes"), "NodeMetrics", "nodemetrics"),
            _ => (resources::find("", "v1", "pods"), "PodMetrics", "podmetrics"),
        };
        let def = def.ok_or_else(|| ApiError::internal("pods and nodes are not served"))?;
        let point = |obj: &Value| -> Option<Value> {
            let name = obj.pointer("/metadata/name")?.as_str()?;
            match target {
                Target::Nodes { .. } => self.resource_metrics.node(name).map(|p| node_metrics(obj, p)),
                _ => {
                    let ns = obj.pointer("/metadata/namespace")?.as_str()?;
                    self.resource_metrics.pod(ns, name).map(|p| pod_metrics(obj, &p))
                }
            }
        };
        if let Some(name) = target.name() {
            let not_found = || ApiError::not_found(metrics_name, GROUP, name);
            let kv = self.store.get(&def.key(namespace.as_deref(), name)).await?.ok_or_else(not_found)?;
            let mut m = point(&to_obj(&kv)?).ok_or_else(not_found)?;
            m["kind"] = json!(kind);
            m["apiVersion"] = json!(API_VERSION);
            return Ok(m);
        }
        let selectors = selectors(def, query, user)?;
        let objects = self.store.list(&def.ns_prefix(namespace.as_deref()), None, 0).await?;
        let mut items = Vec::new();
        for kv in &objects.kvs {
            let obj = to_obj(kv)?;
            if selectors.matches(def, &obj)
                && let Some(m) = point(&obj)
            {
                items.push(m);
            }
        }
        Ok(json!({"kind": format!("{kind}List"), "apiVersion": API_VERSION, "metadata": {}, "items": items}))
    }
}

/// The request's label and field selectors, read as a LIST of `def` reads them.
fn selectors(def: &ResourceDef, query: HashMap<String, String>, user: &UserInfo) -> ApiResult<Selectors> {
    let ctx = Ctx {
        query,
        accept: String::new(),
        content_type: String::new(),
        body: Bytes::new(),
        user: user.clone(),
        user_agent: String::new(),
    };
    Selectors::from_ctx(def, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Target::parse("/apis/metrics.k8s.io/v1beta1/nodes"), Some(Target::Nodes { name: None }));
        assert_eq!(
            Target::parse("/apis/metrics.k8s.io/v1beta1/nodes/n1"),
            Some(Target::Nodes { name: Some("n1".into()) })
        );
        assert_eq!(
            Target::parse("/apis/metrics.k8s.io/v1beta1/namespaces/d/pods/web"),
            Some(Target::Pods { namespace: Some("d".into()), name: Some("web".into()) })
        );
        assert_eq!(
            Target::parse("/apis/metrics.k8s.io/v1beta1/pods"),
            Some(Target::Pods { namespace: None, name: None })
        );
        assert_eq!(Target::parse("/apis/metrics.k8s.io/v1beta1/services"), Some(Target::Unknown));
        assert_eq!(Target::parse("/apis/metrics.k8s.io/v1beta1"), None);
        assert_eq!(Target::parse("/apis/apps/v1/deployments"), None);
    }

    #[test]
    fn formats_as_metrics_server() {
        assert_eq!(go_duration(15_004), "15.004s");
        assert_eq!(go_duration(15_000), "15s");
        assert_eq!(go_duration(60_500), "1m0.5s");
        assert_eq!(usage(1_500_000, 2048), json!({"cpu": "1500000n", "memory": "2Ki"}));
        assert_eq!(usage(0, 1000)["memory"], "1000");
        assert_eq!(time(1_700_000_000_999), "2023-11-14T22:13:20Z");
    }
}
