//! The typed API client every Skiff component uses: get, list (with paging), create,
//! replace, patch, delete, subresources and watch, for any k8s-openapi resource, over a
//! `Transport`.
//!
//! Errors from the server arrive as `Error::Api` carrying the Status the server sent,
//! so callers branch on `is_not_found`, `is_conflict`, `is_gone` and so on, never on
//! message text. It must not cache: that is `reflector`'s job.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Status};
use k8s_openapi::{ListableResource, Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::transport::{self, ResponseBody, Transport};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a Status error.
    #[error("API error {code} ({reason}): {message}")]
    Api { code: u16, reason: String, message: String, status: Box<Status> },
    #[error(transparent)]
    Transport(#[from] transport::Error),
    #[error("cannot build the request {what}: {source}")]
    Request { what: String, source: http::Error },
    #[error("cannot encode the request body: {source}")]
    Encode { source: serde_json::Error },
    #[error("cannot decode the API server's response to {what}: {source}")]
    Decode { what: String, source: serde_json::Error },
    #[error("the API server sent a watch event of unknown type {kind:?} on {what}")]
    UnknownEvent { what: String, kind: String },
    #[error("reading the response body of {what} failed: {source}")]
    Body { what: String, source: transport::BoxError },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            Error::Api { reason, .. } => Some(reason),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
    /// 409 because the resourceVersion was stale (not AlreadyExists).
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409) && self.reason() != Some("AlreadyExists")
    }
    pub fn is_already_exists(&self) -> bool {
        self.reason() == Some("AlreadyExists")
    }
    /// 410: the requested history is gone; re-list.
    pub fn is_gone(&self) -> bool {
        self.code() == Some(410)
    }
    pub fn is_forbidden(&self) -> bool {
        self.code() == Some(403)
    }
}

/// Options of LIST and WATCH.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<u32>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
}

impl ListParams {
    pub fn labels(mut self, s: impl Into<String>) -> Self {
        self.label_selector = Some(s.into());
        self
    }
    pub fn fields(mut self, s: impl Into<String>) -> Self {
        self.field_selector = Some(s.into());
        self
    }
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }

    fn query(&self, extra: &[(&str, String)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = &self.label_selector {
            q.append_pair("labelSelector", s);
        }
        if let Some(s) = &self.field_selector {
            q.append_pair("fieldSelector", s);
        }
        if let Some(n) = self.limit {
            q.append_pair("limit", &n.to_string());
        }
        if let Some(c) = &self.continue_token {
            q.append_pair("continue", c);
        }
        if let Some(rv) = &self.resource_version {
            q.append_pair("resourceVersion", rv);
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        q.finish()
    }
}

/// The kinds of PATCH the API server accepts.
#[derive(Debug, Clone)]
pub enum Patch {
    Merge(serde_json::Value),
    Strategic(serde_json::Value),
    Json(serde_json::Value),
}

impl Patch {
    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            Patch::Merge(_) => "application/merge-patch+json",
            Patch::Strategic(_) => "application/strategic-merge-patch+json",
            Patch::Json(_) => "application/json-patch+json",
        }
    }
    pub(crate) fn body(&self) -> &serde_json::Value {
        match self {
            Patch::Merge(v) | Patch::Strategic(v) | Patch::Json(v) => v,
        }
    }
}

/// One decoded watch event.
#[derive(Debug, Clone)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    /// The server has delivered everything up to this resourceVersion.
    Bookmark(String),
}

/// A cheap-to-clone handle to one API server.
#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
    user_agent: http::HeaderValue,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("user_agent", &self.user_agent).finish()
    }
}

/// The collection path of `K`, e.g. `/apis/apps/v1/namespaces/ns/deployments`.
pub fn collection_path<K: Resource>(namespace: Option<&str>) -> String {
    let base = if K::GROUP.is_empty() { format!("/api/{}", K::VERSION) } else { format!("/apis/{}", K::API_VERSION) };
    match namespace {
        Some(ns) => format!("{base}/namespaces/{ns}/{}", K::URL_PATH_SEGMENT),
        None => format!("{base}/{}", K::URL_PATH_SEGMENT),
    }
}

fn object_path<K: Resource>(namespace: Option<&str>, name: &str, sub: Option<&str>) -> String {
    let mut p = format!("{}/{name}", collection_path::<K>(namespace));
    if let Some(s) = sub {
        p.push('/');
        p.push_str(s);
    }
    p
}

impl Client {
    pub fn new(transport: Arc<dyn Transport>, user_agent: &str) -> Self {
        let user_agent = http::HeaderValue::from_str(user_agent).unwrap_or(http::HeaderValue::from_static("skiff"));
        Self { transport, user_agent }
    }

    /// A client from a kubeconfig file (its current context), over HTTPS.
    pub fn from_kubeconfig(path: &std::path::Path, user_agent: &str) -> Result<Self, crate::Error> {
        Self::from_credentials(&crate::kubeconfig::load(path)?, user_agent)
    }

    /// A client of the cluster this process runs in, as its pod's ServiceAccount
    /// (see `incluster`); the pod's namespace is in `incluster::load()`.
    pub fn in_cluster(user_agent: &str) -> Result<Self, crate::Error> {
        Self::from_credentials(&crate::incluster::load()?.credentials, user_agent)
    }

    /// A client over HTTPS with resolved credentials.
    pub fn from_credentials(creds: &crate::kubeconfig::Credentials, user_agent: &str) -> Result<Self, crate::Error> {
        Ok(Self::new(Arc::new(transport::HttpsTransport::new(creds)?), user_agent))
    }

    /// Sends a request and returns the streaming response, turning non-2xx into `Error::Api`.
    pub async fn send_raw(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<http::Response<ResponseBody>> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, self.user_agent.clone());
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let req = b.body(body).map_err(|source| Error::Request { what: path_and_query.into(), source })?;
        let resp = self.transport.send(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status();
        let bytes = read_body(resp.into_body(), path_and_query).await?;
        Err(status_error(code, &bytes))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<T> {
        let resp = self.send_raw(method, path, content_type, body).await?;
        let bytes = read_body(resp.into_body(), path).await?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Decode { what: path.into(), source })
    }

    fn encode<T: Serialize>(v: &T) -> Result<Bytes> {
        serde_json::to_vec(v).map(Bytes::from).map_err(|source| Error::Encode { source })
    }

    pub async fn get<K: Resource + DeserializeOwned>(&self, namespace: Option<&str>, name: &str) -> Result<K> {
        self.call(Method::GET, &object_path::<K>(namespace, name, None), None, Bytes::new()).await
    }

    /// `get`, with 404 as `None`.
    pub async fn get_opt<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<K>> {
        match self.get(namespace, name).await {
            Ok(k) => Ok(Some(k)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of a LIST.
    pub async fn list<K: ListableResource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<k8s_openapi::List<K>> {
        let path = format!("{}?{}", collection_path::<K>(namespace), params.query(&[]));
        self.call(Method::GET, &path, None, Bytes::new()).await
    }

    /// Every page of a LIST; returns the items and the list's resourceVersion.
    pub async fn list_all<K: ListableResource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<(Vec<K>, String)> {
        let mut p = params.clone();
        if p.limit.is_none() {
            p.limit = Some(500);
        }
        let mut items = Vec::new();
        loop {
            let page = self.list::<K>(namespace, &p).await?;
            items.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => p.continue_token = Some(c),
                None => return Ok((items, page.metadata.resource_version.unwrap_or_default())),
            }
        }
    }

    pub async fn create<K: Resource + Serialize + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        obj: &K,
    ) -> Result<K> {
        self.call(Method::POST, &collection_path::<K>(namespace), Some("application/json"), Self::encode(obj)?).await
    }

    /// PUT of the whole object (the resourceVersion in it makes it conditional).
    pub async fn replace<K: Resource + Serialize + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
        obj: &K,
    ) -> Result<K> {
        let path = object_path::<K>(namespace, name, None);
        self.call(Method::PUT, &path, Some("application/json"), Self::encode(obj)?).await
    }

    /// PUT of the status subresource.
    pub async fn replace_status<K: Resource + Serialize + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
        obj: &K,
    ) -> Result<K> {
        let path = object_path::<K>(namespace, name, Some("status"));
        self.call(Method::PUT, &path, Some("application/json"), Self::encode(obj)?).await
    }

    /// PATCH of the object or of a subresource (`status`, `scale`).
    pub async fn patch<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        patch: &Patch,
    ) -> Result<K> {
        let path = object_path::<K>(namespace, name, subresource);
        self.call(Method::PATCH, &path, Some(patch.content_type()), Self::encode(patch.body())?).await
    }

    /// POST to a subresource (`pods/NAME/binding`, `serviceaccounts/NAME/token`),
    /// decoding the answer as `R`.
    pub async fn create_subresource<K: Resource, B: Serialize, R: DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        body: &B,
    ) -> Result<R> {
        let path = object_path::<K>(namespace, name, Some(subresource));
        self.call(Method::POST, &path, Some("application/json"), Self::encode(body)?).await
    }

    /// PUT to a subresource of `obj`'s kind (`namespaces/NAME/finalize`).
    pub async fn replace_subresource<K: Resource + Serialize + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        obj: &K,
    ) -> Result<K> {
        let path = object_path::<K>(namespace, name, Some(subresource));
        self.call(Method::PUT, &path, Some("application/json"), Self::encode(obj)?).await
    }

    /// DELETE with optional DeleteOptions (propagationPolicy, preconditions, grace period).
    /// A missing object is `Ok(false)`.
    pub async fn delete<K: Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
        options: Option<&serde_json::Value>,
    ) -> Result<bool> {
        let path = object_path::<K>(namespace, name, None);
        let (ct, body) = match options {
            Some(o) => (Some("application/json"), Self::encode(o)?),
            None => (None, Bytes::new()),
        };
        match self.send_raw(Method::DELETE, &path, ct, body).await {
            Ok(resp) => {
                read_body(resp.into_body(), &path).await?;
                Ok(true)
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts a WATCH from `resource_version` ("" or "0" = current state first, as
    /// synthetic ADDED events). Bookmarks are requested.
    pub async fn watch<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
        resource_version: &str,
        timeout_seconds: u32,
    ) -> Result<WatchStream<K>> {
        let mut p = params.clone();
        p.limit = None;
        p.continue_token = None;
        p.resource_version = Some(resource_version.to_string()).filter(|s| !s.is_empty());
        let extra = [
            ("watch", "true".to_string()),
            ("allowWatchBookmarks", "true".to_string()),
            ("timeoutSeconds", timeout_seconds.to_string()),
        ];
        let path = format!("{}?{}", collection_path::<K>(namespace), p.query(&extra));
        self.watch_path(path).await
    }

    /// A WATCH at a full path and query (the dynamic API's, for kinds without a type).
    pub(crate) async fn watch_path<K>(&self, path: String) -> Result<WatchStream<K>> {
        let resp = self.send_raw(Method::GET, &path, None, Bytes::new()).await?;
        Ok(WatchStream { body: resp.into_body(), buf: BytesMut::new(), what: path, _k: std::marker::PhantomData })
    }
}

/// A whole response body (also for the dynamic API).
pub(crate) async fn read_body(body: ResponseBody, what: &str) -> Result<Bytes> {
    body.collect().await.map(|c| c.to_bytes()).map_err(|source| Error::Body { what: what.into(), source })
}

fn status_error(code: StatusCode, body: &[u8]) -> Error {
    let status: Status = serde_json::from_slice(body).unwrap_or_else(|_| Status {
        code: Some(code.as_u16() as i32),
        message: Some(String::from_utf8_lossy(body).chars().take(500).collect()),
        reason: Some(code.canonical_reason().unwrap_or("Unknown").to_string()),
        ..Default::default()
    });
    status_to_error(code.as_u16(), status)
}

fn status_to_error(code: u16, status: Status) -> Error {
    Error::Api {
        code,
        reason: status.reason.clone().unwrap_or_default(),
        message: status.message.clone().unwrap_or_default(),
        status: Box::new(status),
    }
}

/// The event stream of one WATCH request; ends when the server ends it (timeout).
pub struct WatchStream<K> {
    body: ResponseBody,
    buf: BytesMut,
    what: String,
    _k: std::marker::PhantomData<fn() -> K>,
}

impl<K> std::fmt::Debug for WatchStream<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").field("what", &self.what).finish()
    }
}

#[derive(serde::Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

impl<K: DeserializeOwned> WatchStream<K> {
    /// The next event; `None` when the server closed the stream. An ERROR event
    /// (410 Expired, most often) is returned as `Err(Error::Api)`.
    pub async fn next(&mut self) -> Option<Result<WatchEvent<K>>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                let line = &line[..pos];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(self.decode(line));
            }
            match self.body.frame().await {
                None => return None,
                Some(Err(source)) => return Some(Err(Error::Body { what: self.what.clone(), source })),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    fn decode(&self, line: &[u8]) -> Result<WatchEvent<K>> {
        let bad = |source: serde_json::Error| Error::Decode { what: self.what.clone(), source };
        let raw: RawEvent = serde_json::from_slice(line).map_err(bad)?;
        let obj = |v: serde_json::Value| serde_json::from_value::<K>(v).map_err(bad);
        match raw.kind.as_str() {
            "ADDED" => Ok(WatchEvent::Added(obj(raw.object)?)),
            "MODIFIED" => Ok(WatchEvent::Modified(obj(raw.object)?)),
            "DELETED" => Ok(WatchEvent::Deleted(obj(raw.object)?)),
            "BOOKMARK" => Ok(WatchEvent::Bookmark(
                raw.object
                    .pointer("/metadata/resourceVersion")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
            )),
            "ERROR" => {
                let status: Status = serde_json::from_value(raw.object).map_err(bad)?;
                let code = status.code.unwrap_or(500) as u16;
                Err(status_to_error(code, status))
            }
            other => Err(Error::UnknownEvent { what: self.what.clone(), kind: other.to_string() }),
        }
    }
}

/// `namespace/name` (or `name` for cluster-scoped objects): the key controllers queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        Self { namespace: namespace.map(str::to_string), name: name.to_string() }
    }
    pub fn of<K: Metadata<Ty = ObjectMeta>>(obj: &K) -> Self {
        let m = obj.metadata();
        Self { namespace: m.namespace.clone(), name: m.name.clone().unwrap_or_default() }
    }
    pub fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Labels as a sorted map (missing = empty), for selector matching.
pub fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Pod};

    use super::*;

    #[test]
    fn paths_follow_the_rest_layout() {
        assert_eq!(collection_path::<Pod>(Some("a")), "/api/v1/namespaces/a/pods");
        assert_eq!(collection_path::<Pod>(None), "/api/v1/pods");
        assert_eq!(collection_path::<Namespace>(None), "/api/v1/namespaces");
        assert_eq!(
            object_path::<Deployment>(Some("x"), "web", Some("scale")),
            "/apis/apps/v1/namespaces/x/deployments/web/scale"
        );
    }

    #[test]
    fn list_params_are_url_encoded() {
        let p = ListParams::default().labels("app in (a,b)").fields("spec.nodeName=n1").limit(5);
        assert_eq!(p.query(&[]), "labelSelector=app+in+%28a%2Cb%29&fieldSelector=spec.nodeName%3Dn1&limit=5");
    }
}
