//! The CRD controller inside the API server: follows the CustomResourceDefinitions in
//! the store (list, then watch) and for each one
//! - accepts its names unless an older CRD or a built-in kind of its group has them,
//!   and records that in its status (`NamesAccepted`, `Established`, `acceptedNames`,
//!   `storedVersions`);
//! - serves it (the registry in `crd`) while it is Established, moving stored objects
//!   to a new storage version when it changes;
//! - once it is being deleted, as upstream: sets `Terminating`, keeps serving its
//!   objects but refuses creates, deletes them (those with finalizers are marked for
//!   deletion and waited for), then removes its cleanup finalizer (and the CRD with
//!   it, when no other finalizer remains). A CRD removed from the store without that
//!   cleanup still takes its objects with it.
//!
//! Every API server process runs one (each keeps its own registry); their status
//! writes are compare-and-swap and converge on the same answer. It writes only CRD
//! status, a deleted CRD's objects (and the apiVersion of migrated ones) and the
//! finalizer it owns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::definition::CLEANUP_FINALIZER;
use crate::apiserver::meta;
use crate::apiserver::object::{to_bytes, to_obj};
use crate::apiserver::resource_def::prefix_of;
use crate::apiserver::resources::{RESOURCES, by_kind};
use crate::store::{self, EventType, Store};

/// How long to wait before listing again after the watch fails.
const RESTART: Duration = Duration::from_secs(1);

/// Runs the controller until the process ends.
pub fn spawn(store: Arc<dyn Store>) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = follow(&store).await {
                tracing::warn!(error = %e, "CRD controller: watch ended; listing again");
            }
            tokio::time::sleep(RESTART).await;
        }
    });
}

/// A CRD as last seen: the object and its revision.
type Known = BTreeMap<String, (Value, u64)>;

async fn follow(store: &Arc<dyn Store>) -> crate::apiserver::status::ApiResult<()> {
    let prefix = by_kind("CustomResourceDefinition").expect("CRDs are a built-in kind").prefix();
    let page = store.list(&prefix, None, 0).await?;
    let mut known = Known::new();
    for kv in &page.kvs {
        let obj = to_obj(kv)?;
        known.insert(name(&obj).to_string(), (obj, kv.mod_revision));
    }
    reconcile(store, &known, None).await;
    let mut watch = store.watch(&prefix, page.revision).await?;
    while let Some(ev) = watch.next().await.transpose()? {
        let key = ev.kv.key.trim_start_matches(&prefix).to_string();
        // Names are claimed within a group, so a change concerns its group's CRDs only.
        let group = match ev.kind {
            EventType::Put => {
                let obj = to_obj(&ev.kv)?;
                let group = s(&obj, "/spec/group").to_string();
                known.insert(key, (obj, ev.kv.mod_revision));
                Some(group)
            }
            EventType::Delete => {
                known.remove(&key);
                // A CRD removed without its cleanup (its finalizer taken off by hand) leaves
                // no objects behind either. (Our own cleanup deletes it with the finalizer
                // still listed, after deleting the objects.)
                if let Some(prev) = ev.prev.as_ref().and_then(|p| to_obj(p).ok())
                    && !has_cleanup_finalizer(&prev)
                {
                    delete_objects(store.as_ref(), &prev, false).await?;
                }
                ev.prev.as_ref().and_then(|p| to_obj(p).ok()).map(|p| s(&p, "/spec/group").to_string())
            }
        };
        reconcile(store, &known, group.as_deref()).await;
    }
    Ok(())
}

fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Brings the registry and the status of the CRDs of `group` (of all, with `None`) in
/// line with `known`.
async fn reconcile(store: &Arc<dyn Store>, known: &Known, group: Option<&str>) {
    // Collected first: the registry's lock must not be held while unregistering.
    let served: Vec<String> =
        super::REGISTRY.read().unwrap_or_else(|e| e.into_inner()).by_crd.keys().cloned().collect();
    for crd in served.iter().filter(|c| !known.contains_key(*c)) {
        super::unregister(crd);
    }
    // Older CRDs keep their names when a newer one claims them.
    let mut order: Vec<&(Value, u64)> =
        known.values().filter(|(o, _)| group.is_none_or(|g| s(o, "/spec/group") == g)).collect();
    order.sort_by(|a, b| {
        (s(&a.0, "/metadata/creationTimestamp"), name(&a.0)).cmp(&(s(&b.0, "/metadata/creationTimestamp"), name(&b.0)))
    });
    let mut claimed: Vec<&Value> = Vec::new();
    for (obj, rev) in order {
        let result = if obj.pointer("/metadata/deletionTimestamp").is_some() {
            clean_up(store, obj, *rev).await
        } else {
            let conflict = names_conflict(obj, &claimed);
            if conflict.is_none() {
                claimed.push(obj);
            }
            accept(store.as_ref(), obj, *rev, conflict).await
        };
        if let Err(e) = result {
            // The next event (our own write's, or the one that raced it) retries.
            tracing::info!(crd = name(obj), error = %e, "CRD controller: will retry");
        }
    }
}

/// The names a CRD asks for: plural, singular, short names and kind.
fn names_of(obj: &Value) -> Vec<String> {
    let mut n = vec![s(obj, "/spec/names/plural").to_string(), s(obj, "/spec/names/kind").to_string()];
    n.push(match s(obj, "/spec/names/singular") {
        "" => s(obj, "/spec/names/kind").to_lowercase(),
        x => x.to_string(),
    });
    for short in obj.pointer("/spec/names/shortNames").and_then(Value::as_array).into_iter().flatten() {
        n.push(short.as_str().unwrap_or("").to_string());
    }
    n.retain(|x| !x.is_empty());
    n
}

/// Why `obj`'s names cannot be accepted, if they cannot: a built-in kind of its group
/// or an older CRD of its group has one of them.
fn names_conflict(obj: &Value, claimed: &[&Value]) -> Option<String> {
    let group = s(obj, "/spec/group");
    let wanted = names_of(obj);
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        if wanted.iter().any(|w| w == r.plural || w == r.kind || w == r.singular) {
            return Some(format!("{} is already served by the built-in {}", r.plural, r.kind));
        }
    }
    for other in claimed.iter().filter(|o| s(o, "/spec/group") == group) {
        let theirs = names_of(other);
        if let Some(w) = wanted.iter().find(|w| theirs.contains(w)) {
            return Some(format!("\"{w}\" is already in use by {}", name(other)));
        }
    }
    None
}

fn condition(ty: &str, ok: bool, reason: &str, message: &str, old: &Value) -> Value {
    let status = if ok { "True" } else { "False" };
    let prev =
        old.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    let since = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(meta::now()),
    };
    json!({"type": ty, "status": status, "lastTransitionTime": since, "reason": reason, "message": message})
}

/// Records whether the CRD's names are accepted and serves it if they are.
async fn accept(store: &dyn Store, obj: &Value, rev: u64, conflict: Option<String>) -> store::Result<()> {
    let ok = conflict.is_none();
    let mut status = obj.get("status").cloned().unwrap_or(json!({}));
    let names_accepted = match &conflict {
        None => condition("NamesAccepted", true, "NoConflicts", "no conflicts found", obj),
        Some(why) => condition("NamesAccepted", false, "NameConflict", why, obj),
    };
    let established = if ok {
        condition("Established", true, "InitialNamesAccepted", "the initial names have been accepted", obj)
    } else {
        condition("Established", false, "NotAccepted", "not all names are accepted", obj)
    };
    status["conditions"] = json!([names_accepted, established]);
    if ok {
        let mut names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
        if s(&names, "/singular").is_empty() {
            names["singular"] = json!(s(obj, "/spec/names/kind").to_lowercase());
        }
        status["acceptedNames"] = names;
    } else if status.get("acceptedNames").is_none() {
        status["acceptedNames"] = json!({"plural": "", "kind": ""});
    }
    let storage = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .map(|v| s(v, "/name").to_string())
        .unwrap_or_default();
    let mut stored: Vec<Value> = status.get("storedVersions").and_then(Value::as_array).cloned().unwrap_or_default();
    if !storage.is_empty() && !stored.contains(&json!(storage)) {
        stored.push(json!(storage));
    }
    status["storedVersions"] = json!(stored);
    if ok {
        let generation = obj.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(0);
        if super::register(name(obj), &obj["spec"], generation)
            && let Err(e) = migrate(store, obj, &storage).await
        {
            // Served again (and migrated) on the next event.
            super::unregister(name(obj));
            return Err(e);
        }
    } else {
        super::unregister(name(obj));
    }
    if obj.get("status") == Some(&status) {
        return Ok(());
    }
    let mut new = obj.clone();
    new["status"] = status;
    store.update(&crd_key(obj), to_bytes(&new), Some(rev)).await?;
    tracing::info!(crd = name(obj), established = ok, "CRD status updated");
    Ok(())
}

/// A deleted CRD: marked Terminating (its objects stay served, none may be created),
/// its objects deleted (those with finalizers marked for deletion, and waited for),
/// then the CRD let go.
async fn clean_up(store: &Arc<dyn Store>, obj: &Value, rev: u64) -> store::Result<()> {
    if !has_cleanup_finalizer(obj) {
        return Ok(());
    }
    super::set_terminating(name(obj));
    if is_true(obj, "Established") {
        // Served while it terminates (after a restart too): finalizers are removed
        // through the API.
        let generation = obj.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(0);
        super::register(name(obj), &obj["spec"], generation);
    }
    if !is_true(obj, "Terminating") {
        let mut new = obj.clone();
        let mut conds: Vec<Value> = obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter(|c| c["type"] != "Terminating").cloned().collect())
            .unwrap_or_default();
        conds.push(condition(
            "Terminating",
            true,
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            obj,
        ));
        new["status"]["conditions"] = json!(conds);
        store.update(&crd_key(obj), to_bytes(&new), Some(rev)).await?;
        // Our own write's event brings the CRD back here.
        return Ok(());
    }
    let left = delete_objects(store.as_ref(), obj, true).await?;
    if left > 0 {
        wait_then_finish(store.clone(), obj);
        return Ok(());
    }
    finish(store.as_ref(), obj, rev).await
}

fn is_true(obj: &Value, ty: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

fn crd_key(obj: &Value) -> String {
    by_kind("CustomResourceDefinition").expect("built-in").key(None, name(obj))
}

/// Removes the cleanup finalizer of a CRD whose objects are gone (the CRD goes with it
/// unless other finalizers remain).
async fn finish(store: &dyn Store, obj: &Value, rev: u64) -> store::Result<()> {
    let finalizers: Vec<Value> =
        obj.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
    let rest: Vec<Value> = finalizers.into_iter().filter(|f| f != CLEANUP_FINALIZER).collect();
    if rest.is_empty() {
        store.delete(&crd_key(obj), Some(rev)).await?;
    } else {
        let mut new = obj.clone();
        new["metadata"]["finalizers"] = json!(rest);
        store.update(&crd_key(obj), to_bytes(&new), Some(rev)).await?;
    }
    tracing::info!(crd = name(obj), "CRD deleted with its objects");
    Ok(())
}

/// CRDs whose remaining objects (held by their finalizers) a task waits for.
static WAITING: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Waits (once per CRD) until the CRD's objects are gone, then finishes its deletion.
fn wait_then_finish(store: Arc<dyn Store>, obj: &Value) {
    let crd = name(obj).to_string();
    if !WAITING.lock().unwrap_or_else(|e| e.into_inner()).insert(crd.clone()) {
        return;
    }
    let prefix = prefix_of(s(obj, "/spec/group"), s(obj, "/spec/names/plural"));
    let key = crd_key(obj);
    tokio::spawn(async move {
        tracing::info!(crd, "CRD deletion waits for the finalizers of its objects");
        let result: store::Result<()> = async {
            wait_empty(store.as_ref(), &prefix).await?;
            match store.get(&key).await? {
                Some(kv) => {
                    let obj: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                    if obj.pointer("/metadata/deletionTimestamp").is_some() && has_cleanup_finalizer(&obj) {
                        finish(store.as_ref(), &obj, kv.mod_revision).await?;
                    }
                    Ok(())
                }
                None => Ok(()),
            }
        }
        .await;
        WAITING.lock().unwrap_or_else(|e| e.into_inner()).remove(&crd);
        if let Err(e) = result {
            // The controller's next look at the CRD (a restart's list) starts again.
            tracing::warn!(crd, error = %e, "CRD deletion: waiting for its objects failed");
        }
    });
}

/// Returns once nothing is stored under `prefix`, looking again at each deletion.
async fn wait_empty(store: &dyn Store, prefix: &str) -> store::Result<()> {
    loop {
        let page = store.list(prefix, None, 0).await?;
        if page.kvs.is_empty() {
            return Ok(());
        }
        let mut events = store.watch(prefix, page.revision).await?;
        while let Some(ev) = events.next().await.transpose()? {
            if ev.kind == EventType::Delete {
                break;
            }
        }
    }
}

/// Rewrites the apiVersion of stored objects that are not in the storage version (a
/// CRD whose storage version changed): with no conversion, that is the whole migration,
/// and every served version then finds its objects in the storage version's shape.
async fn migrate(store: &dyn Store, obj: &Value, storage: &str) -> store::Result<()> {
    let (group, plural) = (s(obj, "/spec/group"), s(obj, "/spec/names/plural"));
    let want = json!(format!("{group}/{storage}"));
    let page = store.list(&prefix_of(group, plural), None, 0).await?;
    let mut migrated = 0;
    for kv in page.kvs {
        let mut kv = kv;
        // A writer racing the rewrite wins; its object is looked at again.
        for _attempt in 0..5 {
            let Ok(mut o) = serde_json::from_slice::<Value>(&kv.value) else { break };
            if o.get("apiVersion") == Some(&want) {
                break;
            }
            o["apiVersion"] = want.clone();
            match store.update(&kv.key, to_bytes(&o), Some(kv.mod_revision)).await {
                Ok(_) => {
                    migrated += 1;
                    break;
                }
                Err(store::Error::Conflict { .. }) => match store.get(&kv.key).await? {
                    Some(newer) => kv = newer,
                    None => break,
                },
                Err(store::Error::NotFound { .. }) => break,
                Err(e) => return Err(e),
            }
        }
    }
    if migrated > 0 {
        tracing::info!(crd = name(obj), storage, objects = migrated, "custom objects moved to the storage version");
    }
    Ok(())
}

fn has_cleanup_finalizer(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|fs| fs.iter().any(|f| f == CLEANUP_FINALIZER))
}

/// Deletes the objects of the CRD `obj` (all versions, all namespaces). With
/// `honour_finalizers`, objects with finalizers are marked for deletion instead (their
/// finalizers' owners remove them, and the API server then deletes them); the number
/// of those left is returned.
async fn delete_objects(store: &dyn Store, obj: &Value, honour_finalizers: bool) -> store::Result<usize> {
    let (group, plural) = (s(obj, "/spec/group"), s(obj, "/spec/names/plural"));
    if group.is_empty() || plural.is_empty() {
        return Ok(0);
    }
    let page = store.list(&prefix_of(group, plural), None, 0).await?;
    let mut left = 0;
    for kv in &page.kvs {
        let mut o: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        let held = o.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if honour_finalizers && held {
            left += 1;
            if o.pointer("/metadata/deletionTimestamp").is_none() {
                o["metadata"]["deletionTimestamp"] = json!(meta::now());
                o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                match store.update(&kv.key, to_bytes(&o), Some(kv.mod_revision)).await {
                    // A racing writer: the object is looked at again at the next event.
                    Ok(_) | Err(store::Error::Conflict { .. } | store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            continue;
        }
        match store.delete(&kv.key, None).await {
            Ok(_) | Err(store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(left)
}
