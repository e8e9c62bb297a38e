use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

fn pct(s: &str) -> IntOrString {
    IntOrString::String(s.into())
}

#[test]
fn percentages_round_surge_up_and_unavailable_down() {
    assert_eq!(resolve_fenceposts(None, None, 3), Ok((1, 0)));
    // 25% of 3: surge ceil(0.75) = 1, unavailable floor(0.75) = 0.
    assert_eq!(resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 3), Ok((1, 0)));
    assert_eq!(resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10), Ok((3, 2)));
    assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&pct("50%")), 5), Ok((2, 2)));
    // Both zero would never make progress: one may be unavailable.
    assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&pct("0%")), 5), Ok((0, 1)));
    assert_eq!(resolve_fenceposts(Some(&pct("x")), None, 5), Err(("maxSurge", "x".to_string())));
    assert_eq!(resolve_fenceposts(None, Some(&pct("7")), 5), Err(("maxUnavailable", "7".to_string())));
}

#[test]
fn new_replica_set_grows_within_surge() {
    // 3 replicas, surge 1: old RS has 3 → new may get 1.
    assert_eq!(new_rs_replicas(3, 1, 3, 0), 1);
    // Already at max total: no growth.
    assert_eq!(new_rs_replicas(3, 1, 4, 1), 1);
    // Old shrank to 1: new can go to 3 but no further.
    assert_eq!(new_rs_replicas(3, 1, 2, 1), 3);
    assert_eq!(new_rs_replicas(3, 5, 0, 0), 3);
}

#[test]
fn old_replica_sets_shrink_within_unavailable() {
    // 3 replicas, maxUnavailable 0, new has 1 spec and 1 available, old 3/3: drop 1.
    assert_eq!(old_rs_scale_down(3, 0, 1, 1, &[(3, 3)]), vec![2]);
    // New pod not yet available: nothing may go.
    assert_eq!(old_rs_scale_down(3, 0, 1, 0, &[(3, 3)]), vec![3]);
    // Unhealthy old pods go first and cost no availability; no further one may go.
    assert_eq!(old_rs_scale_down(3, 0, 1, 1, &[(3, 2)]), vec![2]);
    // While the new pod is unavailable, nothing may go, not even unhealthy pods
    // (the surge budget is spent), as in Kubernetes.
    assert_eq!(old_rs_scale_down(3, 0, 1, 0, &[(3, 2)]), vec![3]);
    // maxUnavailable 1: one available old pod may go even before the new one is up.
    assert_eq!(old_rs_scale_down(4, 1, 1, 0, &[(4, 4)]), vec![3]);
    // Oldest first across several old ReplicaSets.
    assert_eq!(old_rs_scale_down(4, 0, 4, 4, &[(1, 1), (2, 2)]), vec![0, 0]);
    assert_eq!(old_rs_scale_down(3, 0, 3, 3, &[(0, 0)]), vec![0]);
}

/// A pod template labelled app=web with one container of `image` (shared with the
/// StatefulSet tests).
pub(crate) fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container { name: "web".into(), image: Some(image.into()), ..Default::default() }],
            ..Default::default()
        }),
    }
}

#[test]
fn template_hash_is_stable_label_safe_and_ignores_its_own_label() {
    let a = template("nginx:1.27");
    let h = pod_template_hash(&a, 0);
    assert_eq!(h, pod_template_hash(&a.clone(), 0));
    assert!(!h.is_empty() && h.len() <= 7 && h.chars().all(|c| c.is_ascii_alphanumeric()), "{h}");
    assert!(!h.chars().any(|c| "aeiou".contains(c)));
    assert_ne!(h, pod_template_hash(&template("nginx:1.28"), 0));
    assert_ne!(h, pod_template_hash(&a, 1), "a collision count gives a new name");
    let mut labeled = a.clone();
    labeled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(HASH_LABEL.into(), h.clone());
    assert_eq!(pod_template_hash(&labeled, 0), h);
    assert!(equal_ignore_hash(&labeled, &a));
    assert!(!equal_ignore_hash(&labeled, &template("nginx:1.28")));
    // Re-encoded by a typed client: empty fields do not make a new revision.
    let mut reencoded = a.clone();
    reencoded.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
    reencoded.spec.as_mut().unwrap().volumes = Some(vec![]);
    assert!(equal_ignore_hash(&reencoded, &a));
    assert_eq!(pod_template_hash(&reencoded, 0), h);
}

#[test]
fn conditions_keep_transition_time_unless_status_changes() {
    let mut c = Vec::new();
    set_condition(&mut c, "Progressing", "True", "ReplicaSetUpdated", "m", 100, true);
    set_condition(&mut c, "Progressing", "True", "ReplicaSetUpdated", "m", 200, true);
    assert_eq!(c[0].last_transition_time.as_ref().unwrap().0.as_second(), 100);
    assert_eq!(c[0].last_update_time.as_ref().unwrap().0.as_second(), 200);
    set_condition(&mut c, "Progressing", "True", "ReplicaSetUpdated", "m", 300, false);
    assert_eq!(c[0].last_update_time.as_ref().unwrap().0.as_second(), 200, "no progress, no touch");
    set_condition(&mut c, "Progressing", "False", "ProgressDeadlineExceeded", "late", 900, false);
    assert_eq!(c[0].last_transition_time.as_ref().unwrap().0.as_second(), 900);
    assert_eq!(c.len(), 1);
}

#[test]
fn progress_deadline() {
    let p = Progress { deadline: Some(60), paused: false, complete: false, progressed: true };
    let mut c = Vec::new();
    assert_eq!(update_progressing(&mut c, &p, Some("web-1"), 1000), Some(61));
    assert_eq!(c[0].reason.as_deref(), Some("ReplicaSetUpdated"));
    let stuck = Progress { progressed: false, ..p };
    assert_eq!(update_progressing(&mut c, &stuck, Some("web-1"), 1030), Some(31), "30 s left");
    assert_eq!(update_progressing(&mut c, &stuck, Some("web-1"), 1061), None);
    assert_eq!((c[0].status.as_str(), c[0].reason.as_deref()), ("False", Some("ProgressDeadlineExceeded")));
    assert_eq!(c[0].message.as_deref(), Some("ReplicaSet \"web-1\" has timed out progressing."));
    // Progress after the deadline makes it True again; completion settles it.
    update_progressing(&mut c, &p, Some("web-1"), 1100);
    assert_eq!(c[0].status, "True");
    let done = Progress { complete: true, ..stuck };
    assert_eq!(update_progressing(&mut c, &done, Some("web-1"), 1200), None);
    assert_eq!(c[0].reason.as_deref(), Some("NewReplicaSetAvailable"));
    // A complete rollout never times out, and a paused one is not judged.
    assert_eq!(update_progressing(&mut c, &stuck, Some("web-1"), 9999), None);
    assert_eq!(c[0].reason.as_deref(), Some("NewReplicaSetAvailable"));
    assert_eq!(update_progressing(&mut c, &Progress { paused: true, ..p }, Some("web-1"), 9999), None);
}

#[test]
fn completeness_and_progress() {
    let s = |replicas, updated, ready, available, generation| DeploymentStatus {
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: Some(generation),
        ..Default::default()
    };
    assert!(is_complete(3, 2, &s(3, 3, 3, 3, 2)));
    assert!(!is_complete(3, 2, &s(4, 3, 3, 3, 2)), "an old pod is left");
    assert!(!is_complete(3, 3, &s(3, 3, 3, 3, 2)), "not yet observed");
    assert!(made_progress(&s(3, 0, 3, 3, 1), &s(4, 1, 3, 3, 2)));
    assert!(made_progress(&s(4, 1, 4, 4, 2), &s(3, 1, 3, 3, 2)), "an old pod went away");
    assert!(!made_progress(&s(4, 1, 4, 4, 2), &s(4, 1, 4, 4, 2)));
}
