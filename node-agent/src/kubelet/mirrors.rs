//! Keeps one mirror pod in the API per static pod: makes missing ones (also after a user
//! deleted one), removes those whose static pod is gone or changed. A mirror's graceful
//! deletion is finished here at once: nothing runs under a mirror.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use skiff_api::ObjectKey;
use tracing::{info, warn};

use super::Shared;
use super::static_pods::{self, mirror_of, mirrored_uid};

/// The mirror-pod keeper; remembers the Node's uid (the mirrors' owner).
#[derive(Debug, Default)]
pub(super) struct Mirrors {
    node_uid: Option<String>,
}

impl Mirrors {
    pub(super) async fn sync(&mut self, shared: &Shared) {
        let statics: Vec<(String, Arc<Pod>)> =
            shared.statics.lock().unwrap().iter().map(|(u, p)| (u.clone(), p.clone())).collect();
        for pod in shared.pods.list().into_iter().filter(|p| static_pods::is_mirror(p)) {
            let wanted = mirrored_uid(&pod).is_some_and(|uid| statics.iter().any(|(u, _)| u == uid));
            if !wanted || pod.metadata.deletion_timestamp.is_some() {
                delete_now(shared, &pod).await;
            }
        }
        if statics.is_empty() {
            return;
        }
        let Some(node_uid) = self.node_uid(shared).await else { return };
        for (uid, pod) in statics {
            let key = ObjectKey::of(pod.as_ref());
            match shared.pods.get(&key) {
                Some(existing) if mirrored_uid(&existing) == Some(uid.as_str()) => {}
                // The old mirror of a changed manifest goes first (above); a regular pod of
                // the same name is the user's and stays.
                Some(existing) if !static_pods::is_mirror(&existing) => {
                    warn!(pod = %key, "a pod of the static pod's name exists in the API; no mirror is made");
                }
                Some(_) => {}
                None => {
                    let mirror = mirror_of(&pod, &shared.settings.node_name, &node_uid);
                    match shared.api.create(key.ns(), &mirror).await {
                        Ok(_) => info!(pod = %key, "mirror pod created"),
                        Err(e) if e.is_already_exists() => {}
                        Err(e) => warn!(pod = %key, error = %e, "cannot create the mirror pod; retrying"),
                    }
                }
            }
        }
    }

    async fn node_uid(&mut self, shared: &Shared) -> Option<String> {
        if self.node_uid.is_none() {
            match shared.api.get::<Node>(None, &shared.settings.node_name).await {
                Ok(node) => self.node_uid = node.metadata.uid,
                Err(e) => warn!(error = %e, "cannot read this node's Node object; mirror pods wait"),
            }
        }
        self.node_uid.clone()
    }
}

async fn delete_now(shared: &Shared, pod: &Pod) {
    let key = ObjectKey::of(pod);
    let options = serde_json::json!({"gracePeriodSeconds": 0, "preconditions": {"uid": pod.metadata.uid}});
    match shared.api.delete::<Pod>(key.ns(), &key.name, Some(&options)).await {
        Ok(_) => info!(pod = %key, "mirror pod removed"),
        Err(e) if e.is_not_found() || e.is_conflict() => {}
        Err(e) => warn!(pod = %key, error = %e, "cannot remove a mirror pod; retrying"),
    }
}
