//! The dynamic side of the API: objects addressed by (group, version, plural) and read
//! as JSON, for callers that work on kinds they know only at run time (the garbage
//! collector follows ownerReferences to any served kind). `Discovery` maps an
//! ownerReference's (apiVersion, kind) to its resource the way clients do, from the
//! server's discovery documents.
//!
//! It must not know any server's resource table: everything it knows about a kind comes
//! from a k8s-openapi type (`ApiResource::of`) or from discovery.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroupList, APIResourceList};
use k8s_openapi::{NamespaceResourceScope, Resource};
use serde_json::Value;

use crate::client::{Client, Error, Patch, Result};

/// One served resource, by the names its URLs use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResource {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl ApiResource {
    /// The resource of a k8s-openapi type.
    pub fn of<K>() -> Self
    where
        K: Resource,
        K::Scope: 'static,
    {
        Self {
            group: K::GROUP.to_string(),
            version: K::VERSION.to_string(),
            kind: K::KIND.to_string(),
            plural: K::URL_PATH_SEGMENT.to_string(),
            namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        }
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        join_api_version(&self.group, &self.version)
    }

    /// The path of a collection (`namespace` is ignored for cluster-scoped resources).
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let base = group_version_path(&self.api_version());
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.plural),
            None => format!("{base}/{}", self.plural),
        }
    }

    /// The path of one object (`namespace` is ignored for cluster-scoped resources).
    pub fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection_path(namespace))
    }
}

fn join_api_version(group: &str, version: &str) -> String {
    if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }
}

/// `/api/v1` for the core group, `/apis/<group>/<version>` otherwise.
fn group_version_path(api_version: &str) -> String {
    if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") }
}

/// Requests on one resource with untyped (JSON) objects.
#[derive(Debug, Clone)]
pub struct DynamicApi {
    client: Client,
    resource: ApiResource,
}

impl DynamicApi {
    pub fn new(client: Client, resource: ApiResource) -> Self {
        Self { client, resource }
    }

    pub fn resource(&self) -> &ApiResource {
        &self.resource
    }

    /// GET of one object; a missing object is `Ok(None)`.
    pub async fn get(&self, namespace: Option<&str>, name: &str) -> Result<Option<Value>> {
        let path = self.resource.object_path(namespace, name);
        match self.client.send_raw(Method::GET, &path, None, Bytes::new()).await {
            Ok(resp) => decode(&path, resp).await.map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// LIST of the whole collection (all namespaces when `namespace` is `None`).
    pub async fn list(&self, namespace: Option<&str>) -> Result<Value> {
        let path = self.resource.collection_path(namespace);
        let resp = self.client.send_raw(Method::GET, &path, None, Bytes::new()).await?;
        decode(&path, resp).await
    }

    /// WATCH of the collection from `resource_version`, ending after `timeout_seconds`.
    pub async fn watch(
        &self,
        namespace: Option<&str>,
        resource_version: &str,
        timeout_seconds: u32,
    ) -> Result<crate::client::WatchStream<Value>> {
        let path = format!(
            "{}?watch=true&allowWatchBookmarks=true&resourceVersion={resource_version}&timeoutSeconds={timeout_seconds}",
            self.resource.collection_path(namespace)
        );
        self.client.watch_path(path).await
    }

    /// DELETE with DeleteOptions; a missing object is `Ok(false)`.
    pub async fn delete(&self, namespace: Option<&str>, name: &str, options: &Value) -> Result<bool> {
        let path = self.resource.object_path(namespace, name);
        match self.client.send_raw(Method::DELETE, &path, Some("application/json"), encode(options)?).await {
            Ok(resp) => decode(&path, resp).await.map(|_| true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// PATCH of one object; a missing object is `Ok(None)`.
    pub async fn patch(&self, namespace: Option<&str>, name: &str, patch: &Patch) -> Result<Option<Value>> {
        let path = self.resource.object_path(namespace, name);
        match self.client.send_raw(Method::PATCH, &path, Some(patch.content_type()), encode(patch.body())?).await {
            Ok(resp) => decode(&path, resp).await.map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn encode(v: &Value) -> Result<Bytes> {
    serde_json::to_vec(v).map(Bytes::from).map_err(|source| Error::Encode { source })
}

async fn decode(path: &str, resp: http::Response<crate::transport::ResponseBody>) -> Result<Value> {
    let bytes = crate::client::read_body(resp.into_body(), path).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|source| Error::Decode { what: path.into(), source })
}

/// Maps (apiVersion, kind) to the resource that serves it, from the server's discovery
/// documents (`/api/v1`, `/apis/<group>/<version>`), each fetched once and kept until a
/// kind is asked for that it lacks (CustomResourceDefinitions add kinds at run time).
#[derive(Debug)]
pub struct Discovery {
    client: Client,
    /// apiVersion → its resources; an empty list for a group version not served.
    known: Mutex<HashMap<String, Arc<Vec<ApiResource>>>>,
}

impl Discovery {
    pub fn new(client: Client) -> Self {
        Self { client, known: Mutex::new(HashMap::new()) }
    }

    /// The resource of `kind` in `api_version`, or `None` when the server does not serve
    /// it. Subresources (`pods/status`) never match. A kind missing from what was
    /// fetched before is looked up again: a CustomResourceDefinition may have added it.
    pub async fn resolve(&self, api_version: &str, kind: &str) -> Result<Option<ApiResource>> {
        let cached = self.known.lock().unwrap().get(api_version).cloned();
        if let Some(r) = cached.as_ref().and_then(|rs| rs.iter().find(|r| r.kind == kind)) {
            return Ok(Some(r.clone()));
        }
        let resources = self.fetch(api_version).await?;
        Ok(resources.iter().find(|r| r.kind == kind).cloned())
    }

    /// Every namespaced resource the server serves that can be listed and deleted, in
    /// each group's preferred version, read afresh (CustomResourceDefinitions included):
    /// what a namespace holds.
    pub async fn namespaced_deletable(&self) -> Result<Vec<ApiResource>> {
        let groups: APIGroupList = decode_as(&self.client, "/apis").await?;
        let mut versions = vec![String::from("v1")];
        versions.extend(groups.groups.into_iter().filter_map(|g| g.preferred_version.map(|v| v.group_version)));
        let mut out = Vec::new();
        for api_version in versions {
            let path = group_version_path(&api_version);
            let list: APIResourceList = decode_as(&self.client, &path).await?;
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
            out.extend(
                list.resources
                    .into_iter()
                    .filter(|r| {
                        r.namespaced
                            && !r.name.contains('/')
                            && ["list", "delete"].iter().all(|v| r.verbs.iter().any(|x| x == v))
                    })
                    .map(|r| ApiResource {
                        group: group.to_string(),
                        version: version.to_string(),
                        kind: r.kind,
                        plural: r.name,
                        namespaced: true,
                    }),
            );
        }
        Ok(out)
    }

    /// Reads a group version's discovery document and remembers its resources.
    async fn fetch(&self, api_version: &str) -> Result<Arc<Vec<ApiResource>>> {
        let path = group_version_path(api_version);
        let list: Option<APIResourceList> = match self.client.send_raw(Method::GET, &path, None, Bytes::new()).await {
            Ok(resp) => {
                let v = decode(&path, resp).await?;
                Some(serde_json::from_value(v).map_err(|source| Error::Decode { what: path.clone(), source })?)
            }
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resources: Vec<ApiResource> = list
            .map(|l| l.resources)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !r.name.contains('/'))
            .map(|r| ApiResource {
                group: group.to_string(),
                version: version.to_string(),
                kind: r.kind,
                plural: r.name,
                namespaced: r.namespaced,
            })
            .collect();
        let resources = Arc::new(resources);
        self.known.lock().unwrap().insert(api_version.to_string(), resources.clone());
        Ok(resources)
    }
}

/// GET of a path decoded as `T`.
async fn decode_as<T: serde::de::DeserializeOwned>(client: &Client, path: &str) -> Result<T> {
    let resp = client.send_raw(Method::GET, path, None, Bytes::new()).await?;
    let v = decode(path, resp).await?;
    serde_json::from_value(v).map_err(|source| Error::Decode { what: path.into(), source })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::json;

    use super::*;
    use crate::transport::{BoxFuture, ResponseBody, Transport};

    #[test]
    fn resources_of_types() {
        let rs = ApiResource::of::<ReplicaSet>();
        assert_eq!(rs.api_version(), "apps/v1");
        assert!(rs.namespaced);
        assert_eq!(rs.object_path(Some("a"), "x"), "/apis/apps/v1/namespaces/a/replicasets/x");
        assert_eq!(ApiResource::of::<Pod>().object_path(Some("a"), "x"), "/api/v1/namespaces/a/pods/x");
        let node = ApiResource::of::<Node>();
        assert!(!node.namespaced);
        assert_eq!(node.object_path(Some("a"), "n"), "/api/v1/nodes/n");
        assert_eq!(node.collection_path(None), "/api/v1/nodes");
    }

    /// Serves one discovery document and a 404 for everything else, counting requests.
    struct FakeServer {
        requests: AtomicUsize,
    }

    impl Transport for FakeServer {
        fn send(
            &self,
            req: http::Request<Bytes>,
        ) -> BoxFuture<'_, crate::transport::Result<http::Response<ResponseBody>>> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let (status, body) = match req.uri().path() {
                "/apis/apps/v1" => (
                    200,
                    json!({"kind": "APIResourceList", "groupVersion": "apps/v1", "resources": [
                        {"name": "deployments", "singularName": "", "namespaced": true,
                            "kind": "Deployment", "verbs": ["get"]},
                        {"name": "deployments/scale", "singularName": "", "namespaced": true,
                            "kind": "Scale", "verbs": ["get"]},
                    ]}),
                ),
                _ => (404, json!({"kind": "Status", "apiVersion": "v1", "code": 404, "reason": "NotFound"})),
            };
            let body = Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed();
            Box::pin(async move { Ok(http::Response::builder().status(status).body(body).unwrap()) })
        }
    }

    #[tokio::test]
    async fn discovery_resolves_remembers_and_looks_again_for_unknown_kinds() {
        let server = Arc::new(FakeServer { requests: AtomicUsize::new(0) });
        let discovery = Discovery::new(Client::new(server.clone(), "test"));
        let d = discovery.resolve("apps/v1", "Deployment").await.unwrap().unwrap();
        assert_eq!(
            (d.group.as_str(), d.version.as_str(), d.plural.as_str(), d.namespaced),
            ("apps", "v1", "deployments", true)
        );
        assert!(discovery.resolve("apps/v1", "Deployment").await.unwrap().is_some());
        assert_eq!(server.requests.load(Ordering::SeqCst), 1, "a known kind is remembered");
        assert_eq!(discovery.resolve("apps/v1", "Scale").await.unwrap(), None, "subresources are not kinds");
        assert_eq!(discovery.resolve("example.com/v1", "Widget").await.unwrap(), None, "a group not served");
        // Unknown kinds are asked for again: a CRD may have added them since.
        assert_eq!(server.requests.load(Ordering::SeqCst), 3);
        let api = DynamicApi::new(Client::new(server.clone(), "test"), d);
        assert_eq!(api.get(Some("ns"), "gone").await.unwrap(), None);
    }
}
