//! Admission: the mutating steps of a create that need more than the object itself
//! (the store, randomness), run after decoding and defaulting and before the store, as
//! upstream's admission plugins: priority admission (`priority`), LimitRanger
//! (`limit_range`), then ServiceAccount
//! admission, for kinds whose strategy asks for it (pods):
//! - `spec.serviceAccountName` defaults to `default` (and the deprecated
//!   `spec.serviceAccount` follows it);
//! - the named ServiceAccount must exist, else the create is Forbidden. `default` is
//!   waited for briefly, because the ServiceAccount controller creates it just after
//!   the namespace and a pod created at once would otherwise race it;
//! - unless the pod or its ServiceAccount sets `automountServiceAccountToken: false`, a
//!   projected volume `kube-api-access-<suffix>` (a bound token, the cluster CA from the
//!   `kube-root-ca.crt` ConfigMap, the namespace) is added and mounted read-only at
//!   `/var/run/secrets/kubernetes.io/serviceaccount` in every container and init
//!   container that mounts nothing there;
//! - the ServiceAccount's `imagePullSecrets` are copied to a pod that names none.
//!
//! Storage admission (`storage_class`) gives a new PersistentVolumeClaim the
//! `kubernetes.io/pvc-protection` finalizer and, when it names no class, the cluster's
//! default one.
//!
//! LimitRanger admission (`limit_range`) defaults a new pod's container requests and
//! limits from the namespace's LimitRanges and refuses a pod or claim outside their
//! bounds. ResourceQuota admission (`quota`) is not here: it is the last step before
//! the store (`handlers::create`), once the object is final, and the one step that
//! writes (the charge to each quota's `status.used`).
//!
//! Mirror pods (annotation `kubernetes.io/config.mirror`) are left as the kubelet wrote
//! them. Updates are not admitted: a pod's volumes are fixed at creation.
//!
//! It must not validate (the strategy did; LimitRange bounds excepted) nor write
//! anything: it only reads the store.

use std::time::Duration;

use serde_json::{Value, json};

use super::api_server::ApiServer;
use super::meta;
use super::object::{str_at, to_obj};
use super::resource_def::ResourceDef;
use super::resources::by_kind;
use super::status::{ApiError, ApiResult};

/// The ServiceAccount a pod runs as when it names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Where every container finds its token, CA and namespace.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The name prefix of the token volume; a pod that already has one keeps it.
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap (in every namespace) that carries the cluster CA as `ca.crt`.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// Marks a mirror pod (the API copy of a kubelet's static pod).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The token lifetime the volume asks for: upstream's 3607 s, an hour and a little, so
/// tokens it issued are recognisable.
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// How long a create waits for the `default` ServiceAccount to appear, and how often it
/// looks. Longer than upstream's second or two: the controllers of a freshly started
/// skiff-control on a busy machine may take that long to come up.
const DEFAULT_ACCOUNT_WAIT: Duration = Duration::from_secs(5);
const DEFAULT_ACCOUNT_POLL: Duration = Duration::from_millis(100);

impl ApiServer {
    /// Runs the admission steps the kind's strategy asks for on a new object in `ns`.
    pub(super) async fn admit_create(&self, def: &ResourceDef, ns: Option<&str>, obj: &mut Value) -> ApiResult<()> {
        // Mirror pods are left as the kubelet wrote them (module doc), priority included.
        if !is_mirror_pod(obj) {
            self.admit_priority(def, obj).await?;
            if let Some(ns) = ns.filter(|_| def.namespaced) {
                self.admit_limit_range(def, ns, obj).await?;
            }
        }
        self.admit_storage(def, obj).await?;
        let Some(ns) = ns.filter(|_| def.strategy.admits_service_account()) else { return Ok(()) };
        if is_mirror_pod(obj) {
            return Ok(());
        }
        let account = default_service_account(obj);
        let sa = self.service_account(ns, &account).await.map_err(|e| {
            let pod = str_at(obj, "/metadata/name").unwrap_or("");
            let mut f = ApiError::forbidden(format!(
                "{} \"{pod}\" is forbidden: error looking up service account {ns}/{account}: {}",
                def.plural, e.message
            ));
            f.details = Some(Box::new((def.plural.to_string(), pod.to_string(), Some(def.group.to_string()))));
            f
        })?;
        mount_service_account(obj, &sa, &meta::name_suffix());
        Ok(())
    }

    /// The ServiceAccount `ns/name`, waiting a little for `default` (see the module doc);
    /// a NotFound error once the wait is over.
    async fn service_account(&self, ns: &str, name: &str) -> ApiResult<Value> {
        let def = by_kind("ServiceAccount").ok_or_else(|| ApiError::internal("ServiceAccount is not served"))?;
        let key = def.key(Some(ns), name);
        let deadline = tokio::time::Instant::now() + DEFAULT_ACCOUNT_WAIT;
        loop {
            if let Some(kv) = self.store.get(&key).await? {
                return to_obj(&kv);
            }
            if name != DEFAULT_SERVICE_ACCOUNT || tokio::time::Instant::now() >= deadline {
                return Err(ApiError::not_found("serviceaccount", "", name));
            }
            tokio::time::sleep(DEFAULT_ACCOUNT_POLL).await;
        }
    }
}

/// Whether `pod` mirrors a static pod.
pub fn is_mirror_pod(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR_ANNOTATION)).is_some()
}

/// Defaults the pod's ServiceAccount (both the field and its deprecated alias) and
/// returns its name.
pub fn default_service_account(pod: &mut Value) -> String {
    let name = str_at(pod, "/spec/serviceAccountName")
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_string();
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("serviceAccountName".into(), json!(name));
        spec.insert("serviceAccount".into(), json!(name));
    }
    name
}

/// Whether the token is mounted: the pod's say wins, then the ServiceAccount's, else yes.
fn automounts(pod: &Value, sa: &Value) -> bool {
    pod.pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| sa.get("automountServiceAccountToken").and_then(Value::as_bool))
        .unwrap_or(true)
}

/// The projected volume every container's `/var/run/secrets/kubernetes.io/serviceaccount` is.
pub fn token_volume(name: &str) -> Value {
    json!({"name": name, "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
        {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}})
}

/// Applies ServiceAccount `sa` to `pod` (see the module doc); `suffix` names a new
/// token volume.
pub fn mount_service_account(pod: &mut Value, sa: &Value, suffix: &str) {
    let mount = automounts(pod, sa);
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let no_pull_secrets = spec.get("imagePullSecrets").and_then(Value::as_array).is_none_or(Vec::is_empty);
    if no_pull_secrets && let Some(secrets) = sa.get("imagePullSecrets").and_then(Value::as_array) {
        let refs: Vec<Value> = secrets.iter().filter_map(|s| s.get("name")).map(|n| json!({"name": n})).collect();
        if !refs.is_empty() {
            spec.insert("imagePullSecrets".into(), Value::Array(refs));
        }
    }
    if !mount {
        return;
    }
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
        .map(str::to_string);
    let volume = existing.clone().unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{suffix}"));
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        let Some(Value::Array(cs)) = spec.get_mut(list) else { continue };
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else { continue };
            if mounts.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH)) {
                continue;
            }
            mounts.push(json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}));
            mounted = true;
        }
    }
    if mounted && existing.is_none() {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(v) = volumes.as_array_mut() {
            v.push(token_volume(&volume));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "team"}, "spec": spec})
    }

    fn admitted(mut p: Value, sa: Value) -> Value {
        default_service_account(&mut p);
        mount_service_account(&mut p, &sa, "x7k2p");
        p
    }

    const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

    #[test]
    fn defaults_the_account_and_mounts_the_token_everywhere() {
        let p = admitted(
            pod(json!({"initContainers": [{"name": "i"}], "containers": [{"name": "a"}, {"name": "b",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]})),
            json!({"metadata": {"name": "default"}}),
        );
        let spec = &p["spec"];
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        assert_eq!(spec["volumes"][1], token_volume("kube-api-access-x7k2p"));
        assert_eq!(spec["volumes"][1]["projected"]["defaultMode"], 420);
        assert_eq!(spec["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 3607);
        let want = json!({"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": MOUNT});
        assert_eq!(spec["initContainers"][0]["volumeMounts"], json!([want]));
        assert_eq!(spec["containers"][0]["volumeMounts"], json!([want]));
        assert_eq!(spec["containers"][1]["volumeMounts"][0]["name"], "data", "existing mounts come first");
        assert_eq!(spec["containers"][1]["volumeMounts"][1], want);
    }

    #[test]
    fn a_named_account_is_kept() {
        let p = admitted(pod(json!({"serviceAccountName": "bot", "containers": [{"name": "a"}]})), json!({}));
        assert_eq!(p["spec"]["serviceAccountName"], "bot");
        assert_eq!(p["spec"]["serviceAccount"], "bot");
    }

    #[test]
    fn opt_out_on_the_pod_or_the_account() {
        let off = admitted(
            pod(json!({"automountServiceAccountToken": false, "containers": [{"name": "a"}]})),
            json!({"automountServiceAccountToken": true}),
        );
        assert!(off["spec"].get("volumes").is_none(), "{off}");
        assert!(off["spec"]["containers"][0].get("volumeMounts").is_none(), "{off}");
        assert_eq!(off["spec"]["serviceAccountName"], "default");

        let off = admitted(pod(json!({"containers": [{"name": "a"}]})), json!({"automountServiceAccountToken": false}));
        assert!(off["spec"].get("volumes").is_none(), "{off}");

        // The pod's own yes wins over the account's no.
        let on = admitted(
            pod(json!({"automountServiceAccountToken": true, "containers": [{"name": "a"}]})),
            json!({"automountServiceAccountToken": false}),
        );
        assert_eq!(on["spec"]["volumes"][0]["name"], "kube-api-access-x7k2p");
    }

    #[test]
    fn an_existing_mount_at_the_path_is_kept() {
        let own = json!([{"name": "mine", "mountPath": MOUNT}]);
        let p = admitted(
            pod(json!({"containers": [{"name": "a", "volumeMounts": own}],
                "volumes": [{"name": "mine", "secret": {"secretName": "s"}}]})),
            json!({}),
        );
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"], own);
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1, "no container needs the token volume");

        // A pod that already has a token volume (say, a copy of an admitted pod) reuses it.
        let p = admitted(
            pod(json!({"containers": [{"name": "a"}], "volumes": [token_volume("kube-api-access-abcde")]})),
            json!({}),
        );
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["name"], "kube-api-access-abcde");
    }

    #[test]
    fn image_pull_secrets_come_from_the_account_unless_the_pod_names_some() {
        let sa = json!({"imagePullSecrets": [{"name": "reg"}]});
        let p = admitted(pod(json!({"containers": [{"name": "a"}]})), sa.clone());
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "reg"}]));
        let p = admitted(pod(json!({"containers": [{"name": "a"}], "imagePullSecrets": [{"name": "own"}]})), sa);
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "own"}]));
    }

    #[test]
    fn mirror_pods_are_recognised() {
        let mut p = pod(json!({"containers": [{"name": "a"}]}));
        assert!(!is_mirror_pod(&p));
        p["metadata"]["annotations"] = json!({MIRROR_ANNOTATION: "abc"});
        assert!(is_mirror_pod(&p));
    }
}

/// `admit_create` over a real store: the lookup, its wait, and what it leaves alone.
#[cfg(test)]
mod store_tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::authn::Authenticator;
    use crate::auth::authz::BootstrapAuthorizer;
    use crate::auth::serviceaccount::Keys;
    use crate::store::{RedbStore, Store};

    fn api(dir: &std::path::Path) -> (ApiServer, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("store.redb")).unwrap());
        let keys = Arc::new(Keys::load_or_generate(&dir.join("sa-signer.key")).unwrap());
        let cidr: ipnet::Ipv4Net = "10.96.0.0/12".parse().unwrap();
        (ApiServer::new(store.clone(), Authenticator::default(), Box::new(BootstrapAuthorizer), cidr, keys), store)
    }

    async fn put_account(store: &dyn Store, name: &str, extra: Value) {
        let key = by_kind("ServiceAccount").unwrap().key(Some("team"), name);
        let mut sa = json!({"kind": "ServiceAccount", "metadata": {"name": name, "namespace": "team"}});
        sa.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        store.create(&key, serde_json::to_vec(&sa).unwrap().into()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admits_pods_against_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (api, store) = api(dir.path());
        let pods = by_kind("Pod").unwrap();
        let new_pod = |spec: Value| json!({"metadata": {"name": "p", "namespace": "team"}, "spec": spec});

        // Mirror pods are not touched, even with no ServiceAccount in the namespace.
        let mut mirror = new_pod(json!({"containers": [{"name": "a"}]}));
        mirror["metadata"]["annotations"] = json!({MIRROR_ANNOTATION: "hash"});
        let before = mirror.clone();
        api.admit_create(pods, Some("team"), &mut mirror).await.unwrap();
        assert_eq!(mirror, before);

        // Other kinds are not admitted.
        let mut cm = json!({"metadata": {"name": "c"}});
        api.admit_create(by_kind("ConfigMap").unwrap(), Some("team"), &mut cm).await.unwrap();
        assert_eq!(cm, json!({"metadata": {"name": "c"}}));

        // A named account that does not exist is refused at once.
        let started = std::time::Instant::now();
        let mut p = new_pod(json!({"serviceAccountName": "nobody", "containers": [{"name": "a"}]}));
        let e = api.admit_create(pods, Some("team"), &mut p).await.unwrap_err();
        assert_eq!(e.code, 403, "{e}");
        assert!(
            e.message.contains("pods \"p\" is forbidden: error looking up service account team/nobody")
                && e.message.contains("not found"),
            "{e}"
        );
        assert!(started.elapsed() < DEFAULT_ACCOUNT_WAIT, "only `default` is waited for");

        // `default` is waited for: the ServiceAccount controller creates it just after the namespace.
        let late = {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                put_account(store.as_ref(), "default", json!({})).await;
            })
        };
        let mut p = new_pod(json!({"containers": [{"name": "a"}]}));
        api.admit_create(pods, Some("team"), &mut p).await.unwrap();
        late.await.unwrap();
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        let volume = p["spec"]["volumes"][0]["name"].as_str().unwrap();
        assert!(volume.starts_with(TOKEN_VOLUME_PREFIX) && volume.len() == TOKEN_VOLUME_PREFIX.len() + 5, "{p}");
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["name"], volume);

        // An account that opts out is honoured.
        put_account(store.as_ref(), "quiet", json!({"automountServiceAccountToken": false})).await;
        let mut p = new_pod(json!({"serviceAccountName": "quiet", "containers": [{"name": "a"}]}));
        api.admit_create(pods, Some("team"), &mut p).await.unwrap();
        assert!(p["spec"].get("volumes").is_none(), "{p}");
    }
}
