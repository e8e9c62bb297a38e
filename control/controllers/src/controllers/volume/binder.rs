//! The PersistentVolume binder, as upstream's PV controller: it binds each Pending
//! claim to the smallest Available volume that suits it (class, access modes, size,
//! label selector, volume mode; see `helpers::volumes::find_best_match`), keeps the
//! phases of both (Available, Bound, Released, Failed; Pending, Bound, Lost) and
//! reclaims volumes whose claim is gone: Retain leaves them Released, Delete deletes
//! those the local-path provisioner made (the node agent then removes the directory)
//! and fails others, which no plugin here can delete.
//!
//! A claim of a WaitForFirstConsumer class waits for the scheduler's
//! `volume.kubernetes.io/selected-node` and then binds only to volumes reachable from
//! that node. A claim nothing suits is handed to its class's provisioner by the
//! `volume.kubernetes.io/storage-provisioner` annotation.
//!
//! Binding writes the volume first (`claimRef`, conditional on its resourceVersion, so
//! two claims never take one volume), then the claim (`spec.volumeName` and
//! `pv.kubernetes.io/bind-completed`), then both statuses. One worker handles claims
//! and volumes alike (claims keyed with their namespace, volumes without), so decisions
//! never race each other. It must not create volumes (the provisioner does) nor touch
//! pods.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};
use skiff_api::{ObjectKey, Patch};

use super::super::Context;
use crate::events::EventType;
use crate::helpers::volumes::{
    ANN_BETA_STORAGE_PROVISIONER, ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER, ANN_PROVISIONED_BY,
    ANN_STORAGE_PROVISIONER, LOCAL_PATH_PROVISIONER, NO_PROVISIONER, bind_completed, claim_class, claim_reference,
    claim_volume, find_best_match, is_bound_to, is_delayed, mismatch, selected_node,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {what}: {source}")]
    Api {
        action: &'static str,
        what: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn api(action: &'static str, what: impl std::fmt::Display) -> impl FnOnce(skiff_api::client::Error) -> Error {
    let what = what.to_string();
    move |source| Error::Api { action, what, source }
}

/// How often a claim still waiting for a volume is looked at again without any change
/// (a safety net: volume and class changes requeue it).
const PENDING_RETRY: Duration = Duration::from_secs(60);

struct State {
    /// Events already recorded, by (object uid, reason), so a claim that waits gets one
    /// event per cause rather than one per retry.
    told: Mutex<HashSet<(String, &'static str)>>,
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let feeder = {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        async move {
            let mut claims = ctx.informers.persistent_volume_claims.subscribe();
            let mut volumes = ctx.informers.persistent_volumes.subscribe();
            let mut classes = ctx.informers.storage_classes.subscribe();
            loop {
                tokio::select! {
                    Some(c) = claims.recv() => match c {
                        Change::Applied(pvc) => queue.add(ObjectKey::of(pvc.as_ref())),
                        Change::Deleted(pvc) => {
                            // Its volume is released.
                            for pv in ctx.informers.persistent_volumes.list() {
                                if is_bound_to(&pv, &pvc) {
                                    queue.add(ObjectKey::of(pv.as_ref()));
                                }
                            }
                        }
                    },
                    Some(c) = volumes.recv() => {
                        let (Change::Applied(pv) | Change::Deleted(pv)) = &c;
                        queue.add(ObjectKey::of(pv.as_ref()));
                        match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                            Some(r) => queue.add(ObjectKey::new(r.namespace.as_deref(), r.name.as_deref().unwrap_or(""))),
                            // A free volume: every waiting claim may want it.
                            None => pending_claims(&ctx).for_each(|k| queue.add(k)),
                        }
                    }
                    Some(_) = classes.recv() => pending_claims(&ctx).for_each(|k| queue.add(k)),
                    else => return,
                }
            }
        }
    };
    let state = Arc::new(State { told: Mutex::default() });
    // One worker: see the module doc.
    let workers = run_workers("persistentvolume-binder", queue, 1, move |key: ObjectKey| {
        let (ctx, state) = (ctx.clone(), state.clone());
        async move {
            if key.namespace.is_some() {
                reconcile_claim(&ctx, &state, &key).await
            } else {
                reconcile_volume(&ctx, &state, &key.name).await
            }
        }
    });
    tokio::join!(feeder, workers);
}

/// The claims not bound yet.
fn pending_claims(ctx: &Context) -> impl Iterator<Item = ObjectKey> {
    let claims = ctx.informers.persistent_volume_claims.list();
    claims.into_iter().filter(|c| !bind_completed(c)).map(|c| ObjectKey::of(c.as_ref())).collect::<Vec<_>>().into_iter()
}

fn phase_of_claim(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn phase_of_volume(pv: &PersistentVolume) -> &str {
    pv.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

impl State {
    /// Records an event about `obj` once per cause (see `told`).
    async fn tell_once<K>(&self, ctx: &Context, obj: &K, kind: EventType, reason: &'static str, message: &str)
    where
        K: k8s_openapi::Resource
            + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    {
        let uid = obj.metadata().uid.clone().unwrap_or_default();
        if self.told.lock().unwrap().insert((uid, reason)) {
            ctx.events.record(obj, kind, reason, message).await;
        }
    }

    fn forget(&self, uid: Option<&str>) {
        let uid = uid.unwrap_or_default();
        self.told.lock().unwrap().retain(|(u, _)| u != uid);
    }
}

async fn reconcile_claim(ctx: &Context, state: &State, key: &ObjectKey) -> Result<Action> {
    let Some(pvc) = ctx.informers.persistent_volume_claims.get(key) else { return Ok(Action::Done) };
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let pvs = &ctx.informers.persistent_volumes;
    if bind_completed(&pvc) {
        let volume = claim_volume(&pvc).and_then(|v| pvs.get_named(None, v));
        match volume {
            Some(pv) if is_bound_to(&pv, &pvc) => set_claim_phase(ctx, &pvc, Some(&pv), "Bound").await?,
            // Unbound by someone: take it back, as upstream does.
            Some(pv) if pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()) => bind(ctx, &pv, &pvc).await?,
            _ => {
                if phase_of_claim(&pvc) != "Lost" {
                    set_claim_phase(ctx, &pvc, None, "Lost").await?;
                    let msg = "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!";
                    ctx.events.record(pvc.as_ref(), EventType::Warning, "ClaimLost", msg).await;
                }
            }
        }
        return Ok(Action::Done);
    }
    // Asked for a volume by name (by the user, or half-way through our own binding).
    if let Some(name) = claim_volume(&pvc) {
        let Some(pv) = pvs.get_named(None, name) else {
            let msg = format!("volume \"{name}\" not found");
            state.tell_once(ctx, pvc.as_ref(), EventType::Warning, "FailedBinding", &msg).await;
            return Ok(Action::Done);
        };
        let free = pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none());
        if !free && !is_bound_to(&pv, &pvc) {
            let msg = format!("volume \"{name}\" already bound to a different claim.");
            state.tell_once(ctx, pvc.as_ref(), EventType::Warning, "FailedBinding", &msg).await;
            return Ok(Action::Done);
        }
        if let Some(why) = mismatch(&pv, &pvc) {
            let msg = format!("Cannot bind to requested volume \"{name}\": {why}");
            state.tell_once(ctx, pvc.as_ref(), EventType::Warning, "VolumeMismatch", &msg).await;
            return Ok(Action::Done);
        }
        bind(ctx, &pv, &pvc).await?;
        return Ok(Action::Done);
    }
    let class_name = claim_class(&pvc);
    let class = (!class_name.is_empty()).then(|| ctx.informers.storage_classes.get_named(None, class_name)).flatten();
    let delayed = is_delayed(class.as_deref());
    let node = selected_node(&pvc).and_then(|n| ctx.informers.nodes.get_named(None, n));
    let all = pvs.list();
    if let Some(pv) = find_best_match(&pvc, all.iter().map(|p| p.as_ref()), delayed, node.as_deref()) {
        bind(ctx, pv, &pvc).await?;
        return Ok(Action::Done);
    }
    if delayed && selected_node(&pvc).is_none() {
        let msg = "waiting for first consumer to be created before binding";
        state.tell_once(ctx, pvc.as_ref(), EventType::Normal, "WaitForFirstConsumer", msg).await;
        return Ok(Action::Done);
    }
    match class {
        Some(c) if c.provisioner != NO_PROVISIONER => {
            hand_to_provisioner(ctx, &pvc, &c.provisioner).await?;
            let msg = format!(
                "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
                c.provisioner
            );
            state.tell_once(ctx, pvc.as_ref(), EventType::Normal, "ExternalProvisioning", &msg).await;
        }
        Some(_) => {
            let msg = "no persistent volumes available for this claim and no storage class provisioner is set";
            state.tell_once(ctx, pvc.as_ref(), EventType::Normal, "FailedBinding", msg).await;
        }
        None if class_name.is_empty() => {
            let msg = "no persistent volumes available for this claim and no storage class is set";
            state.tell_once(ctx, pvc.as_ref(), EventType::Normal, "FailedBinding", msg).await;
        }
        None => {
            let msg = format!("storageclass.storage.k8s.io \"{class_name}\" not found");
            state.tell_once(ctx, pvc.as_ref(), EventType::Warning, "ProvisioningFailed", &msg).await;
        }
    }
    Ok(Action::RequeueAfter(PENDING_RETRY))
}

/// Marks the claim for `provisioner` (both spellings of the annotation).
async fn hand_to_provisioner(ctx: &Context, pvc: &PersistentVolumeClaim, provisioner: &str) -> Result<()> {
    let has = pvc.metadata.annotations.as_ref().and_then(|a| a.get(ANN_STORAGE_PROVISIONER));
    if has.map(String::as_str) == Some(provisioner) {
        return Ok(());
    }
    let key = ObjectKey::of(pvc);
    let patch = Patch::Merge(serde_json::json!({"metadata": {
        "uid": pvc.metadata.uid,
        "annotations": {ANN_STORAGE_PROVISIONER: provisioner, ANN_BETA_STORAGE_PROVISIONER: provisioner}}}));
    ctx.client
        .patch::<PersistentVolumeClaim>(key.ns(), &key.name, None, &patch)
        .await
        .map_err(api("annotating claim", &key))?;
    Ok(())
}

/// Binds `pv` and `pvc` to each other (see the module doc for the order).
async fn bind(ctx: &Context, pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> Result<()> {
    let claim_key = ObjectKey::of(pvc);
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let mut volume = pv.clone();
    let references_uid = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| r.uid.as_deref().is_some_and(|u| Some(u) == pvc.metadata.uid.as_deref()));
    if !references_uid {
        let spec = volume.spec.get_or_insert_with(Default::default);
        if spec.claim_ref.is_none() {
            volume
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
        }
        spec.claim_ref = Some(claim_reference(pvc));
        volume = ctx.client.replace(None, &pv_name, &volume).await.map_err(api("binding volume", &pv_name))?;
    }
    if phase_of_volume(&volume) != "Bound" {
        set_volume_phase(ctx, &volume, "Bound", None).await?;
    }
    let mut claim = pvc.clone();
    if claim_volume(&claim).is_none() || !bind_completed(&claim) {
        let annotations = claim.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert(ANN_BIND_COMPLETED.into(), "yes".into());
        let spec = claim.spec.get_or_insert_with(Default::default);
        if spec.volume_name.as_deref().is_none_or(str::is_empty) {
            spec.volume_name = Some(pv_name.clone());
            annotations.insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
        }
        claim = ctx
            .client
            .replace(claim_key.ns(), &claim_key.name, &claim)
            .await
            .map_err(api("binding claim", &claim_key))?;
    }
    set_claim_phase(ctx, &claim, Some(&volume), "Bound").await?;
    tracing::info!(claim = %claim_key, volume = %pv_name, "bound");
    Ok(())
}

/// Writes the claim's phase (and, when bound, the volume's capacity and access modes).
async fn set_claim_phase(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    pv: Option<&PersistentVolume>,
    phase: &str,
) -> Result<()> {
    let mut status = serde_json::json!({"phase": phase});
    if let Some(spec) = pv.and_then(|v| v.spec.as_ref()) {
        status["capacity"] = serde_json::json!(spec.capacity);
        status["accessModes"] = serde_json::json!(spec.access_modes);
    }
    let current = serde_json::to_value(&pvc.status).unwrap_or_default();
    let unchanged = status.as_object().is_some_and(|s| s.iter().all(|(k, v)| current.get(k) == Some(v)));
    if unchanged {
        return Ok(());
    }
    let key = ObjectKey::of(pvc);
    let patch = Patch::Merge(serde_json::json!({"metadata": {"uid": pvc.metadata.uid}, "status": status}));
    ctx.client
        .patch::<PersistentVolumeClaim>(key.ns(), &key.name, Some("status"), &patch)
        .await
        .map_err(api("updating the status of claim", &key))?;
    Ok(())
}

async fn set_volume_phase(ctx: &Context, pv: &PersistentVolume, phase: &str, message: Option<&str>) -> Result<()> {
    let name = pv.metadata.name.as_deref().unwrap_or_default();
    let patch = Patch::Merge(serde_json::json!({"metadata": {"uid": pv.metadata.uid}, "status": {
        "phase": phase, "message": message,
        "lastPhaseTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())}}));
    ctx.client
        .patch::<PersistentVolume>(None, name, Some("status"), &patch)
        .await
        .map_err(api("updating the status of volume", name))?;
    Ok(())
}

async fn reconcile_volume(ctx: &Context, state: &State, name: &str) -> Result<Action> {
    let Some(pv) = ctx.informers.persistent_volumes.get_named(None, name) else {
        return Ok(Action::Done);
    };
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.clone());
    let Some(claim_ref) = claim_ref else {
        if phase_of_volume(&pv) != "Available" {
            set_volume_phase(ctx, &pv, "Available", None).await?;
        }
        return Ok(Action::Done);
    };
    let claim_key = ObjectKey::new(claim_ref.namespace.as_deref(), claim_ref.name.as_deref().unwrap_or(""));
    let claim_uid = claim_ref.uid.as_deref().filter(|u| !u.is_empty());
    let Some(claim_uid) = claim_uid else {
        // Pre-bound to a claim by name: free for that claim only.
        if phase_of_volume(&pv) != "Available" {
            set_volume_phase(ctx, &pv, "Available", None).await?;
        }
        return Ok(Action::Done);
    };
    let cached = ctx.informers.persistent_volume_claims.get(&claim_key);
    let claim = match cached.filter(|c| c.metadata.uid.as_deref() == Some(claim_uid)) {
        Some(c) => Some(c),
        // Not in the cache: ask the API server before releasing anything, since a
        // release may end in deleting the volume.
        None => ctx
            .client
            .get_opt::<PersistentVolumeClaim>(claim_key.ns(), &claim_key.name)
            .await
            .map_err(api("reading claim", &claim_key))?
            .filter(|c| c.metadata.uid.as_deref() == Some(claim_uid))
            .map(Arc::new),
    };
    if let Some(claim) = claim {
        match claim_volume(&claim) {
            Some(v) if v == name && phase_of_volume(&pv) != "Bound" => {
                set_volume_phase(ctx, &pv, "Bound", None).await?;
            }
            Some(v) if v == name => {}
            Some(_) if pv.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANN_BOUND_BY_CONTROLLER)) => {
                // The claim went to another volume: this one is free again.
                unbind(ctx, &pv).await?;
            }
            // Binding in progress (the claim's turn comes next) or pre-bound by a user.
            _ => {}
        }
        return Ok(Action::Done);
    }
    // The claim is gone: release and reclaim.
    if !matches!(phase_of_volume(&pv), "Released" | "Failed") {
        set_volume_phase(ctx, &pv, "Released", None).await?;
        tracing::info!(volume = name, claim = %claim_key, "claim deleted; volume released");
    }
    let policy = pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()).unwrap_or("Retain");
    let provisioner = pv.metadata.annotations.as_ref().and_then(|a| a.get(ANN_PROVISIONED_BY)).map(String::as_str);
    match (policy, provisioner) {
        ("Retain", _) => {}
        ("Delete", Some(LOCAL_PATH_PROVISIONER)) => {
            let opts = serde_json::json!({"preconditions": {"uid": pv.metadata.uid}});
            ctx.client
                .delete::<PersistentVolume>(None, name, Some(&opts))
                .await
                .map_err(api("deleting volume", name))?;
            state.forget(pv.metadata.uid.as_deref());
            tracing::info!(volume = name, "deleted the volume of a deleted claim (reclaim policy Delete)");
        }
        (policy, _) if phase_of_volume(&pv) != "Failed" => {
            let msg = match policy {
                "Delete" => "no volume plugin can delete this volume (only skiff.io/local-path volumes are deleted); delete it by hand".to_string(),
                other => format!("reclaim policy {other} is not supported; use Retain or Delete"),
            };
            set_volume_phase(ctx, &pv, "Failed", Some(&msg)).await?;
            state.tell_once(ctx, pv.as_ref(), EventType::Warning, "VolumeFailedDelete", &msg).await;
        }
        _ => {}
    }
    Ok(Action::Done)
}

/// Takes a controller-made `claimRef` off the volume.
async fn unbind(ctx: &Context, pv: &PersistentVolume) -> Result<()> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    let mut volume = pv.clone();
    if let Some(spec) = volume.spec.as_mut() {
        spec.claim_ref = None;
    }
    if let Some(a) = volume.metadata.annotations.as_mut() {
        a.remove(ANN_BOUND_BY_CONTROLLER);
    }
    let volume = ctx.client.replace(None, &name, &volume).await.map_err(api("unbinding volume", &name))?;
    set_volume_phase(ctx, &volume, "Available", None).await
}
