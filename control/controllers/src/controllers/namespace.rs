//! The namespace controller: a namespace that is being deleted (the API server marked
//! it Terminating and left the `kubernetes` finalizer in `spec.finalizers`) has its
//! content deleted here, in the background. Every namespaced resource the server
//! serves (found through discovery, so custom resources too) is listed and each object
//! deleted; objects with finalizers are waited for. The namespace's conditions say how
//! far it got, as upstream's do; once nothing is left the `kubernetes` finalizer is
//! removed through the `finalize` subresource, and the API server deletes the namespace.
//!
//! It must not touch a namespace that is not terminating, remove anyone else's
//! finalizer (from the namespace or from its objects), or finalize a namespace with
//! content left.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use skiff_api::dynamic::{ApiResource, Discovery, DynamicApi};
use skiff_api::finalizers::KUBERNETES;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};

use super::Context;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("updating the status of terminating namespace {namespace} failed: {source}")]
    Status {
        namespace: String,
        #[source]
        source: skiff_api::client::Error,
    },
    #[error("finalizing namespace {namespace} failed: {source}")]
    Finalize {
        namespace: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How soon a namespace whose content is still going (pods terminating, finalizers
/// pending, a failure) is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// What one pass over a terminating namespace found.
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    /// Discovery failed (nothing was deleted).
    pub discovery_error: Option<String>,
    /// Errors listing or deleting content.
    pub content_errors: Vec<String>,
    /// Objects left, by resource (`configmaps`, `widgets.example.com`).
    pub remaining: BTreeMap<String, usize>,
    /// Objects left that carry finalizers, by finalizer.
    pub finalizers: BTreeMap<String, usize>,
}

impl Pass {
    /// Whether the namespace may be finalized.
    pub fn done(&self) -> bool {
        self.discovery_error.is_none() && self.content_errors.is_empty() && self.remaining.is_empty()
    }
}

fn condition(type_: &str, failed: bool, reason: (&str, &str), message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if failed { "True" } else { "False" }.into(),
        reason: Some(if failed { reason.0 } else { reason.1 }.into()),
        message: Some(message),
        last_transition_time: None,
    }
}

/// The namespace conditions a pass reports, with upstream's types, reasons and messages.
pub fn conditions(p: &Pass) -> Vec<NamespaceCondition> {
    let counts = |m: &BTreeMap<String, usize>, verb: &str| {
        m.iter().map(|(k, n)| format!("{k} {verb} {n} resource instances")).collect::<Vec<_>>().join(", ")
    };
    vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            p.discovery_error.is_some(),
            ("DiscoveryFailed", "ResourcesDiscovered"),
            match &p.discovery_error {
                Some(e) => format!("Discovery failed for some groups: {e}"),
                None => "All resources successfully discovered".into(),
            },
        ),
        condition(
            "NamespaceDeletionContentFailure",
            !p.content_errors.is_empty(),
            ("ContentDeletionFailed", "ContentDeleted"),
            if p.content_errors.is_empty() {
                "All content successfully deleted, may be waiting on finalization".into()
            } else {
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    p.content_errors.len(),
                    p.content_errors.join(", ")
                )
            },
        ),
        condition(
            "NamespaceContentRemaining",
            !p.remaining.is_empty(),
            ("SomeResourcesRemain", "ContentRemoved"),
            if p.remaining.is_empty() {
                "All content successfully removed".into()
            } else {
                format!("Some resources are remaining: {}", counts(&p.remaining, "has"))
            },
        ),
        condition(
            "NamespaceFinalizersRemaining",
            !p.finalizers.is_empty(),
            ("SomeFinalizersRemain", "ContentHasNoFinalizers"),
            if p.finalizers.is_empty() {
                "All content-preserving finalizers finished".into()
            } else {
                format!("Some content in the namespace has finalizers remaining: {}", counts(&p.finalizers, "in"))
            },
        ),
    ]
}

/// Merges `new` into `old` conditions, keeping a condition's transition time while its
/// status stays. Returns whether anything changed.
pub fn merge_conditions(old: &mut Vec<NamespaceCondition>, new: Vec<NamespaceCondition>, now: &Time) -> bool {
    let mut changed = false;
    for mut c in new {
        match old.iter_mut().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status && o.reason == c.reason && o.message == c.message => {}
            Some(o) => {
                c.last_transition_time =
                    if o.status == c.status { o.last_transition_time.clone() } else { Some(now.clone()) };
                *o = c;
                changed = true;
            }
            None => {
                c.last_transition_time = Some(now.clone());
                old.push(c);
                changed = true;
            }
        }
    }
    changed
}

/// Whether the namespace is waiting for this controller.
fn ours(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        && ns.spec.as_ref().and_then(|s| s.finalizers.as_ref()).is_some_and(|f| f.iter().any(|x| x == KUBERNETES))
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<String> = WorkQueue::new();
    let feeder = {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        async move {
            let mut namespaces = ctx.informers.namespaces.subscribe();
            while let Some(change) = namespaces.recv().await {
                if let Change::Applied(ns) = change
                    && ours(&ns)
                    && let Some(name) = ns.metadata.name.clone()
                {
                    queue.add(name);
                }
            }
        }
    };
    let discovery = Arc::new(Discovery::new(ctx.client.clone()));
    let workers = run_workers("namespace", queue, 2, move |name: String| {
        let (ctx, discovery) = (ctx.clone(), discovery.clone());
        async move { reconcile(&ctx, &discovery, &name).await }
    });
    tokio::join!(feeder, workers);
}

/// The resource's name as upstream's messages give it: `plural.group`.
fn resource_name(r: &ApiResource) -> String {
    if r.group.is_empty() { r.plural.clone() } else { format!("{}.{}", r.plural, r.group) }
}

/// Deletes what is in `ns` and counts what is left.
async fn delete_content(ctx: &Context, discovery: &Discovery, ns: &str) -> Pass {
    let mut pass = Pass::default();
    let resources = match discovery.namespaced_deletable().await {
        Ok(r) => r,
        Err(e) => {
            pass.discovery_error = Some(e.to_string());
            return pass;
        }
    };
    let background = json!({"propagationPolicy": "Background"});
    for r in resources {
        let api = DynamicApi::new(ctx.client.clone(), r.clone());
        let items = match api.list(Some(ns)).await {
            Ok(list) => list["items"].as_array().cloned().unwrap_or_default(),
            Err(e) => {
                pass.content_errors.push(format!("{}: {e}", resource_name(&r)));
                continue;
            }
        };
        let mut left = 0;
        for item in &items {
            let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            let finalizers: Vec<&str> = item
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .map(|f| f.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if item.pointer("/metadata/deletionTimestamp").is_none() {
                match api.delete(Some(ns), name, &background).await {
                    // Gone at once unless something holds it.
                    Ok(_) if finalizers.is_empty() && !is_bound_pod(&r, item) => continue,
                    Ok(_) => {}
                    Err(e) => {
                        pass.content_errors.push(format!("{} {name}: {e}", resource_name(&r)));
                    }
                }
            }
            left += 1;
            for f in finalizers {
                *pass.finalizers.entry(f.to_string()).or_default() += 1;
            }
        }
        if left > 0 {
            *pass.remaining.entry(resource_name(&r)).or_default() += left;
        }
    }
    pass
}

/// A pod on a node: its kubelet finishes its graceful deletion.
fn is_bound_pod(r: &ApiResource, item: &Value) -> bool {
    r.group.is_empty()
        && r.plural == "pods"
        && item.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty())
}

async fn reconcile(ctx: &Context, discovery: &Discovery, name: &str) -> Result<Action> {
    // Read afresh: the cache may lag behind our own status writes.
    let ns = match ctx.client.get_opt::<Namespace>(None, name).await {
        Ok(Some(ns)) if ours(&ns) => ns,
        Ok(_) => return Ok(Action::Done),
        Err(source) => return Err(Error::Status { namespace: name.into(), source }),
    };
    let pass = delete_content(ctx, discovery, name).await;
    let mut status = ns.status.clone().unwrap_or_default();
    let mut conds = status.conditions.take().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let changed = merge_conditions(&mut conds, conditions(&pass), &now);
    status.conditions = Some(conds);
    if changed {
        let updated = Namespace { status: Some(status), ..ns.clone() };
        match ctx.client.replace_status(None, name, &updated).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => return Ok(Action::RequeueAfter(Duration::ZERO)),
            Err(e) if e.is_not_found() => return Ok(Action::Done),
            Err(source) => return Err(Error::Status { namespace: name.into(), source }),
        }
    }
    if !pass.done() {
        tracing::debug!(namespace = name, remaining = ?pass.remaining, finalizers = ?pass.finalizers, "namespace content remains");
        return Ok(Action::RequeueAfter(RECHECK));
    }
    finalize(ctx, name).await
}

/// Removes the `kubernetes` finalizer through the `finalize` subresource.
async fn finalize(ctx: &Context, name: &str) -> Result<Action> {
    let Some(mut ns) = ctx
        .client
        .get_opt::<Namespace>(None, name)
        .await
        .map_err(|source| Error::Finalize { namespace: name.into(), source })?
    else {
        return Ok(Action::Done);
    };
    if let Some(f) = ns.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
        f.retain(|x| x != KUBERNETES);
    }
    match ctx.client.replace_subresource(None, name, "finalize", &ns).await {
        Ok(_) => {
            tracing::info!(namespace = name, "namespace content removed; finalized");
            Ok(Action::Done)
        }
        Err(e) if e.is_not_found() => Ok(Action::Done),
        Err(e) if e.is_conflict() => Ok(Action::RequeueAfter(Duration::ZERO)),
        Err(source) => Err(Error::Finalize { namespace: name.into(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of<'a>(c: &'a [NamespaceCondition], t: &str) -> (&'a str, &'a str) {
        let c = c.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_deref().unwrap())
    }

    #[test]
    fn conditions_say_what_remains() {
        let mut p = Pass::default();
        p.remaining.insert("configmaps".into(), 1);
        p.finalizers.insert("example.com/keep".into(), 1);
        let c = conditions(&p);
        assert_eq!(status_of(&c, "NamespaceContentRemaining"), ("True", "SomeResourcesRemain"));
        assert_eq!(status_of(&c, "NamespaceFinalizersRemaining"), ("True", "SomeFinalizersRemain"));
        assert_eq!(status_of(&c, "NamespaceDeletionDiscoveryFailure"), ("False", "ResourcesDiscovered"));
        assert_eq!(status_of(&c, "NamespaceDeletionContentFailure"), ("False", "ContentDeleted"));
        let msg = c.iter().find(|c| c.type_ == "NamespaceFinalizersRemaining").unwrap().message.clone().unwrap();
        assert_eq!(
            msg,
            "Some content in the namespace has finalizers remaining: example.com/keep in 1 resource instances"
        );
        assert!(!p.done());
        assert!(Pass::default().done());
    }

    #[test]
    fn merging_keeps_transition_times_of_unchanged_conditions() {
        let t0 = Time(jiff::Timestamp::UNIX_EPOCH);
        let t1 = Time(jiff::Timestamp::from_second(100).unwrap());
        let mut cur = Vec::new();
        let mut p = Pass::default();
        p.remaining.insert("pods".into(), 2);
        assert!(merge_conditions(&mut cur, conditions(&p), &t0));
        assert!(!merge_conditions(&mut cur, conditions(&p), &t1));
        p.remaining.clear();
        assert!(merge_conditions(&mut cur, conditions(&p), &t1));
        let c = cur.iter().find(|c| c.type_ == "NamespaceContentRemaining").unwrap();
        assert_eq!(c.last_transition_time, Some(t1));
        let d = cur.iter().find(|c| c.type_ == "NamespaceDeletionDiscoveryFailure").unwrap();
        assert_eq!(d.last_transition_time, Some(t0));
    }
}
