//! The scheduler loop: watches for pods this scheduler is responsible for, runs the pure
//! algorithm (`super::schedule`) over the cached nodes and pods, and binds through
//! `pods/binding` as user `system:kube-scheduler`.
//!
//! One worker, as kube-scheduler: pods are placed one at a time so each decision sees
//! the ones before it. A decided pod is "assumed" on its node at once and bound in a
//! task of its own (kube-scheduler's binding cycle), so the next decision does not wait
//! for the API's round trips yet never overcommits a node; a failed binding drops the
//! assumption and requeues the pod. Unschedulable pods get a
//! PodScheduled=False condition and a FailedScheduling event, and are retried with
//! backoff and whenever a node or a PersistentVolume changes or a placed pod goes away
//! (pods waiting for inter-pod affinity or spread also when one of ours is bound).
//!
//! Preemption: a pod that fits nowhere may evict pods of lower priority
//! (`super::preemption` picks them): each victim gets a DisruptionTarget condition, is
//! deleted and gets a Preempted event; the preemptor's `status.nominatedNodeName` is
//! set, and while it waits for the room, pods of no higher priority cannot take it.
//!
//! A pod whose claims wait
//! for their first consumer is not bound at once: the chosen node is written into the
//! claims (`volume.kubernetes.io/selected-node`) for the binder and provisioner, and the
//! pod is placed again (now pinned by its bound volumes) when a claim of it changes. It
//! must not write anything but bindings, pod status (conditions, nominated node),
//! deletions of preemption victims, that claim annotation and events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{Client, ListParams, ObjectKey, Patch};

use super::preemption::{self, Budget, priority};
use super::volumes::{self, Storage, claim_names, pod_volumes, schedule_with_volumes};
use super::{Cluster, FitError, ScheduleError, responsible_for, tie_breaker_for};
use crate::events::{EventType, Recorder};
use crate::helpers::volumes::{ANN_SELECTED_NODE, selected_node};
use crate::informers::Informers;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding pod {pod} to node {node}: {source}")]
    Bind { pod: ObjectKey, node: String, source: skiff_api::client::Error },
    #[error("selecting node {node} for claim {claim}: {source}")]
    SelectNode { claim: ObjectKey, node: String, source: skiff_api::client::Error },
}

/// How long an unschedulable pod waits before it is tried again without any node change.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(30);
/// How long a pod whose claims are being provisioned waits before it is looked at again
/// without any claim change (a safety net: claim changes requeue it).
const VOLUME_WAIT_RETRY: Duration = Duration::from_secs(30);

struct Scheduler {
    client: Client,
    queue: WorkQueue<ObjectKey>,
    informers: Informers,
    events: Recorder,
    /// Pods bound by us that the cache does not show bound yet: uid → bound copy.
    assumed: Mutex<HashMap<String, Pod>>,
    /// Pods that did not fit, retried when nodes change or placed pods go away; `true`
    /// for those that wait for pods to appear (required pod affinity, spread), which
    /// are also retried when a pod is bound.
    unschedulable: Mutex<HashMap<ObjectKey, bool>>,
}

/// Runs the scheduler until aborted.
pub async fn run(client: Client, informers: Informers) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let sched = Arc::new(Scheduler {
        events: Recorder::new(client.clone(), "default-scheduler"),
        client,
        queue: queue.clone(),
        informers,
        assumed: Mutex::default(),
        unschedulable: Mutex::default(),
    });
    let mut pods = sched.informers.pods.subscribe();
    let mut nodes = sched.informers.nodes.subscribe();
    let mut claims = sched.informers.persistent_volume_claims.subscribe();
    let mut volumes = sched.informers.persistent_volumes.subscribe();
    let feeder = {
        let (queue, sched) = (queue.clone(), sched.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(change) = pods.recv() => match change {
                        Change::Applied(p) => {
                            if responsible_for(&p) {
                                queue.add(ObjectKey::of(p.as_ref()));
                            } else {
                                sched.forget_assumed_if_seen(&p);
                            }
                        }
                        Change::Deleted(p) => {
                            sched.forget(&p);
                            // Room, anti-affinity or skew freed: the waiting may fit now.
                            if p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty()) {
                                sched.retry_unschedulable();
                            }
                        }
                    },
                    Some(_) = nodes.recv() => {
                        // A node appeared or changed: pods that did not fit may fit now.
                        sched.retry_unschedulable();
                    }
                    Some(_) = volumes.recv() => sched.retry_unschedulable(),
                    Some(change) = claims.recv() => {
                        // A claim appeared, was bound or given a node: its pods move on.
                        let (Change::Applied(c) | Change::Deleted(c)) = &change;
                        let (ns, name) = (c.metadata.namespace.as_deref().unwrap_or(""), c.metadata.name.as_deref().unwrap_or(""));
                        for p in sched.informers.pods.list_namespace(ns) {
                            if responsible_for(&p) && claim_names(&p).any(|n| n == name) {
                                queue.add(ObjectKey::of(p.as_ref()));
                            }
                        }
                    }
                    else => return,
                }
            }
        })
    };
    let s = sched.clone();
    run_workers("scheduler", queue, 1, move |key: ObjectKey| {
        let s = s.clone();
        async move { s.schedule_one(key).await }
    })
    .await;
    feeder.abort();
}

impl Scheduler {
    fn retry_unschedulable(&self) {
        let waiting: Vec<ObjectKey> = self.unschedulable.lock().unwrap().drain().map(|(k, _)| k).collect();
        for k in waiting {
            self.queue.add(k);
        }
    }

    /// A pod we bound shows up bound in the cache: drop its assumption, and retry the
    /// pods that wait for such a pod (affinity to it, or spread it evens out).
    fn forget_assumed_if_seen(&self, pod: &Pod) {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            && let Some(uid) = &pod.metadata.uid
            && self.assumed.lock().unwrap().remove(uid).is_some()
        {
            let mut waiting = self.unschedulable.lock().unwrap();
            let keys: Vec<ObjectKey> = waiting.iter().filter(|(_, pods)| **pods).map(|(k, _)| k.clone()).collect();
            for k in keys {
                waiting.remove(&k);
                self.queue.add(k);
            }
        }
    }

    fn wait(&self, key: &ObjectKey, pod: &Pod) {
        let for_pods = super::affinity::has_pod_affinity(pod)
            || pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_ref()).is_some_and(|c| !c.is_empty());
        self.unschedulable.lock().unwrap().insert(key.clone(), for_pods);
    }

    fn forget(&self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.assumed.lock().unwrap().remove(uid);
        }
        self.unschedulable.lock().unwrap().remove(&ObjectKey::of(pod));
    }

    async fn schedule_one(self: &Arc<Self>, key: ObjectKey) -> Result<Action, Error> {
        let Some(pod) = self.informers.pods.get(&key) else { return Ok(Action::Done) };
        if !responsible_for(&pod) {
            return Ok(Action::Done);
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.assumed.lock().unwrap().contains_key(&uid) {
            return Ok(Action::Done); // bound already; the cache has not caught up
        }
        let nodes: Vec<_> = self.informers.nodes.list().iter().map(|n| n.as_ref().clone()).collect();
        let cached = self.informers.pods.list();
        let assumed: Vec<Pod> = self.assumed.lock().unwrap().values().cloned().collect();
        let assumed_uids: std::collections::HashSet<&str> =
            assumed.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
        let placed = cached
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| !assumed_uids.contains(p.metadata.uid.as_deref().unwrap_or("")))
            .chain(assumed.iter());
        let namespaces = self
            .informers
            .namespaces
            .list()
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
            .collect();
        let mut cluster = Cluster::new(&nodes, placed).with_namespace_labels(namespaces);
        // Room promised to preemptors of at least this pod's priority stays theirs.
        let own = priority(&pod);
        for p in cached.iter().filter(|p| p.metadata.uid != pod.metadata.uid && priority(p) >= own) {
            let nominated = p.status.as_ref().and_then(|s| s.nominated_node_name.as_deref()).filter(|n| !n.is_empty());
            // An assumed pod is placed already (and counted as such).
            if let Some(node) = nominated
                && responsible_for(p)
                && !assumed_uids.contains(p.metadata.uid.as_deref().unwrap_or(""))
            {
                cluster.reserve(p, node);
            }
        }
        let claims = self.informers.persistent_volume_claims.list_namespace(key.ns().unwrap_or_default());
        let pvs = self.informers.persistent_volumes.list();
        let classes = self.informers.storage_classes.list();
        let (claims, pvs, classes): (Vec<_>, Vec<_>, Vec<_>) = (
            claims.iter().map(|c| c.as_ref()).collect(),
            pvs.iter().map(|v| v.as_ref()).collect(),
            classes.iter().map(|c| c.as_ref()).collect(),
        );
        let storage = Storage { claims: &claims, volumes: &pvs, classes: &classes };
        let pod_vols = match pod_volumes(&pod, &storage) {
            Ok(v) => v,
            Err(why) => {
                let message = format!("0/{} nodes are available: {why}.", nodes.len());
                tracing::info!(pod = %key, reason = %message, "unschedulable");
                self.wait(&key, &pod);
                self.mark_unschedulable(&key, &pod, &message).await;
                return Ok(Action::RequeueAfter(UNSCHEDULABLE_RETRY));
            }
        };
        match schedule_with_volumes(&pod, &nodes, &cluster, tie_breaker_for(&pod), &pod_vols, &storage) {
            Ok(result) if !pod_vols.waiting.is_empty() => {
                self.select_node_for_claims(&key, &pod_vols, &result.node_name).await?;
                Ok(Action::RequeueAfter(VOLUME_WAIT_RETRY))
            }
            Ok(result) => {
                let node = result.node_name;
                let mut bound = pod.as_ref().clone();
                bound.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
                self.assumed.lock().unwrap().insert(uid.clone(), bound);
                tracing::info!(pod = %key, node = %node, feasible = result.feasible_nodes, "scheduled");
                let this = self.clone();
                tokio::spawn(async move { this.bind_and_announce(key, &pod, &node, &uid).await });
                Ok(Action::Done)
            }
            Err(ScheduleError::AlreadyAssigned(_)) => Ok(Action::Done),
            Err(ScheduleError::Unschedulable(fit)) => {
                // Preemption only considers nodes the pod's volumes allow.
                let candidates: Vec<Node> =
                    nodes.iter().filter(|n| volumes::check_node(&pod_vols, &storage, n).is_ok()).cloned().collect();
                let message = match self.preempt(&key, &pod, &candidates, &cluster, &fit).await {
                    Ok(()) => fit.to_string(),
                    Err(why) => format!("{fit} preemption: {why}."),
                };
                tracing::info!(pod = %key, reason = %message, "unschedulable");
                self.wait(&key, &pod);
                self.mark_unschedulable(&key, &pod, &message).await;
                Ok(Action::RequeueAfter(UNSCHEDULABLE_RETRY))
            }
            Err(e) => {
                let message = e.to_string();
                tracing::info!(pod = %key, reason = %message, "unschedulable");
                self.wait(&key, &pod);
                self.mark_unschedulable(&key, &pod, &message).await;
                Ok(Action::RequeueAfter(UNSCHEDULABLE_RETRY))
            }
        }
    }

    /// PostFilter: finds victims for `pod` and evicts them, nominating their node. The
    /// error is why not, in kube-scheduler's words (after `preemption: `).
    async fn preempt(
        &self,
        key: &ObjectKey,
        pod: &Pod,
        candidates: &[Node],
        cluster: &Cluster<'_>,
        fit: &FitError,
    ) -> Result<(), String> {
        if let Some(why) = preemption::ineligible(pod, cluster) {
            return Err(why.to_string());
        }
        // Budgets are read only when someone could be preempted at all.
        let own = priority(pod);
        let budgets: Vec<Budget> = if cluster.placed().any(|(p, _)| priority(p) < own) {
            match self.client.list_all::<PodDisruptionBudget>(None, &ListParams::default()).await {
                Ok((pdbs, _)) => pdbs.iter().map(Budget::of).collect(),
                Err(e) => {
                    tracing::warn!(pod = %key, error = %e, "listing PodDisruptionBudgets failed; preempting without them");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let chosen = preemption::find(pod, candidates, cluster, &budgets)?;
        let node = chosen.node_name.clone();
        let victims: Vec<Pod> = chosen.victims.iter().map(|v| (*v).clone()).collect();
        tracing::info!(pod = %key, node = %node, victims = victims.len(), budget_violations = chosen.budget_violations,
            reasons = %fit, "preempting");
        // Nominate first: the victims' deletion wakes the waiting pods, and by then the
        // cache must show the room as promised to this pod.
        let nominate = serde_json::json!({"status": {"nominatedNodeName": node}});
        if let Err(e) = self.client.patch::<Pod>(key.ns(), &key.name, Some("status"), &Patch::Merge(nominate)).await {
            tracing::warn!(pod = %key, error = %e, "setting nominatedNodeName failed");
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or("");
        for victim in &victims {
            let vkey = ObjectKey::of(victim);
            let condition = serde_json::json!({"status": {"conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": format!("{}: preempting to accommodate a higher priority pod", super::DEFAULT_SCHEDULER_NAME),
                "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
            }]}});
            if let Err(e) =
                self.client.patch::<Pod>(vkey.ns(), &vkey.name, Some("status"), &Patch::Strategic(condition)).await
            {
                tracing::debug!(pod = %vkey, error = %e, "recording DisruptionTarget failed");
            }
            let precondition = serde_json::json!({"preconditions": {"uid": victim.metadata.uid}});
            match self.client.delete::<Pod>(vkey.ns(), &vkey.name, Some(&precondition)).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(format!("deleting victim {vkey} failed: {e}")),
            }
            let message = format!("Preempted by pod {uid} on node {node}");
            self.events.record(victim, EventType::Normal, "Preempted", &message).await;
        }
        Ok(())
    }

    /// Writes the chosen node into the pod's claims that wait for their first consumer
    /// (those with a node already keep it: `volumes::check_node` chose that one).
    async fn select_node_for_claims(
        &self,
        key: &ObjectKey,
        pod_vols: &volumes::PodVolumes<'_>,
        node: &str,
    ) -> Result<(), Error> {
        for (claim, _) in &pod_vols.waiting {
            if selected_node(claim).is_some() {
                continue;
            }
            let claim_key = ObjectKey::of(*claim);
            let patch = Patch::Merge(serde_json::json!({"metadata": {
                "uid": claim.metadata.uid, "annotations": {ANN_SELECTED_NODE: node}}}));
            self.client
                .patch::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(
                    claim_key.ns(),
                    &claim_key.name,
                    None,
                    &patch,
                )
                .await
                .map_err(|source| Error::SelectNode { claim: claim_key.clone(), node: node.to_string(), source })?;
            tracing::info!(pod = %key, claim = %claim_key, node, "selected a node for the pod's claim; binding waits for its volume");
        }
        Ok(())
    }

    /// The binding cycle of one assumed pod: the binding, then the Scheduled event; a
    /// failed binding drops the assumption and sends the pod back to the queue.
    async fn bind_and_announce(&self, key: ObjectKey, pod: &Pod, node: &str, uid: &str) {
        match self.bind(&key, pod, node).await {
            Ok(()) => {
                let message = format!("Successfully assigned {key} to {node}");
                self.events.record(pod, EventType::Normal, "Scheduled", &message).await;
            }
            Err(e) => {
                tracing::warn!(pod = %key, error = %e, "binding failed; the pod goes back to the queue");
                self.assumed.lock().unwrap().remove(uid);
                self.queue.add_rate_limited(key);
            }
        }
    }

    async fn bind(&self, key: &ObjectKey, pod: &Pod, node: &str) -> Result<(), Error> {
        let binding = Binding {
            metadata: ObjectMeta {
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference { kind: Some("Node".into()), name: Some(node.to_string()), ..Default::default() },
        };
        match self
            .client
            .create_subresource::<Pod, _, serde_json::Value>(key.ns(), &key.name, "binding", &binding)
            .await
        {
            Ok(_) => Ok(()),
            // Deleted meanwhile, or bound by someone else: nothing left to do.
            Err(e) if e.is_not_found() || e.code() == Some(409) => Ok(()),
            Err(source) => Err(Error::Bind { pod: key.clone(), node: node.to_string(), source }),
        }
    }

    /// PodScheduled=False with the reason, as `kubectl describe pod` shows, plus an event;
    /// written only when the message changed, so retries do not churn the pod.
    async fn mark_unschedulable(&self, key: &ObjectKey, pod: &Pod, message: &str) {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message)) {
            return;
        }
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
            "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        }]}});
        if let Err(e) = self.client.patch::<Pod>(key.ns(), &key.name, Some("status"), &Patch::Strategic(patch)).await {
            tracing::debug!(pod = %key, error = %e, "recording PodScheduled=False failed");
        }
        self.events.record(pod, EventType::Warning, "FailedScheduling", message).await;
    }
}
