use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec, StatefulSetStatus, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodCondition, PodStatus, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use serde_json::json;

use super::super::deployment::tests::template;
use super::history::{self, Update};
use super::plan::{self, Deletion, From, Revisions};

const REVS: Revisions<'static> = Revisions { current: "web-a", update: "web-a" };

fn set(replicas: i32, parallel: bool, partition: Option<i32>) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("set-uid".into()),
            generation: Some(4),
            ..Default::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some("nginx".into()),
            pod_management_policy: Some(if parallel { "Parallel" } else { "OrderedReady" }.into()),
            selector: LabelSelector {
                match_labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            template: template("nginx:1"),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: partition
                    .map(|p| RollingUpdateStatefulSetStrategy { partition: Some(p), ..Default::default() }),
            }),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta { name: Some("www".into()), ..Default::default() },
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Pending,
    Ready,
    Terminating,
    Failed,
}

fn pod(ord: i32, rev: &str, state: State) -> Arc<Pod> {
    let ready = state == State::Ready || state == State::Terminating;
    Arc::new(Pod {
        metadata: ObjectMeta {
            name: Some(format!("web-{ord}")),
            uid: Some(format!("uid-{ord}")),
            labels: Some([(plan::REVISION_LABEL.to_string(), rev.to_string())].into()),
            deletion_timestamp: (state == State::Terminating).then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
            ..Default::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some(
                match state {
                    State::Pending => "Pending",
                    State::Failed => "Failed",
                    _ => "Running",
                }
                .into(),
            ),
            conditions: ready.then(|| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    })
}

fn deleted(p: &plan::Plan) -> Vec<&str> {
    p.delete.iter().map(|d: &Deletion| d.name.as_str()).collect()
}

#[test]
fn names_and_ordinals() {
    assert_eq!(plan::parent_and_ordinal("web-12"), Some(("web", 12)));
    assert_eq!(plan::parent_and_ordinal("my-web-0"), Some(("my-web", 0)));
    assert_eq!(plan::parent_and_ordinal("web-x"), None);
    assert_eq!(plan::parent_and_ordinal("web"), None);
    assert_eq!(plan::parent_and_ordinal("web-"), None);
    assert!(plan::is_member("web", &pod(3, "r", State::Ready)));
    assert!(!plan::is_member("we", &pod(3, "r", State::Ready)));
    assert_eq!(plan::claim_name("www", "web", 2), "www-web-2");
}

#[test]
fn ordered_ready_creates_one_at_a_time() {
    let s = set(3, false, None);
    let p = plan::plan(&s, &[], REVS, 100);
    assert_eq!(p.create, [(0, From::Update)]);
    // web-0 exists but is not ready: nothing more.
    let p = plan::plan(&s, &[pod(0, "web-a", State::Pending)], REVS, 100);
    assert!(p.create.is_empty() && p.delete.is_empty());
    let p = plan::plan(&s, &[pod(0, "web-a", State::Ready)], REVS, 100);
    assert_eq!(p.create, [(1, From::Update)]);
    // A gap below is filled first.
    let p = plan::plan(&s, &[pod(1, "web-a", State::Ready)], REVS, 100);
    assert_eq!(p.create, [(0, From::Update)]);
}

#[test]
fn parallel_creates_all_at_once() {
    let s = set(3, true, None);
    let p = plan::plan(&s, &[pod(1, "web-a", State::Pending)], REVS, 100);
    assert_eq!(p.create, [(0, From::Update), (2, From::Update)]);
}

#[test]
fn min_ready_seconds_holds_the_next_pod() {
    let mut s = set(2, false, None);
    s.spec.as_mut().unwrap().min_ready_seconds = Some(30);
    // Ready since the epoch: available at 30.
    let p = plan::plan(&s, &[pod(0, "web-a", State::Ready)], REVS, 10);
    assert!(p.create.is_empty());
    assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(20)));
    assert_eq!(p.status.available_replicas, Some(0));
    let p = plan::plan(&s, &[pod(0, "web-a", State::Ready)], REVS, 30);
    assert_eq!(p.create, [(1, From::Update)]);
}

#[test]
fn failed_pods_are_deleted_and_terminating_ones_awaited() {
    let s = set(3, false, None);
    let pods = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Failed), pod(2, "web-a", State::Ready)];
    let p = plan::plan(&s, &pods, REVS, 100);
    assert_eq!(deleted(&p), ["web-1"]);
    let pods = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Terminating)];
    let p = plan::plan(&s, &pods, REVS, 100);
    assert!(p.create.is_empty() && p.delete.is_empty(), "web-1 comes back only when it is gone");
}

#[test]
fn scale_down_goes_from_the_top_one_at_a_time() {
    let s = set(1, false, None);
    let pods = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Ready), pod(2, "web-a", State::Ready)];
    assert_eq!(deleted(&plan::plan(&s, &pods, REVS, 100)), ["web-2"]);
    let pods = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Ready), pod(2, "web-a", State::Terminating)];
    assert!(deleted(&plan::plan(&s, &pods, REVS, 100)).is_empty(), "web-1 waits for web-2 to be gone");
    let pods = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Ready)];
    assert_eq!(deleted(&plan::plan(&s, &pods, REVS, 100)), ["web-1"]);
    // Nothing is removed while a pod in range is unhealthy.
    let pods = [pod(0, "web-a", State::Pending), pod(1, "web-a", State::Ready)];
    assert!(deleted(&plan::plan(&s, &pods, REVS, 100)).is_empty());
    // Parallel removes every surplus pod at once.
    let s = set(1, true, None);
    let pods = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Ready), pod(2, "web-a", State::Pending)];
    assert_eq!(deleted(&plan::plan(&s, &pods, REVS, 100)), ["web-2", "web-1"]);
}

#[test]
fn rolling_update_respects_partition() {
    let revs = Revisions { current: "web-a", update: "web-b" };
    let s = set(3, false, Some(1));
    let all_old = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Ready), pod(2, "web-a", State::Ready)];
    assert_eq!(deleted(&plan::plan(&s, &all_old, revs, 100)), ["web-2"]);
    let two_new = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Ready), pod(2, "web-b", State::Pending)];
    assert!(deleted(&plan::plan(&s, &two_new, revs, 100)).is_empty(), "waits for web-2 to be ready");
    let two_new = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Ready), pod(2, "web-b", State::Ready)];
    assert_eq!(deleted(&plan::plan(&s, &two_new, revs, 100)), ["web-1"]);
    let done = [pod(0, "web-a", State::Ready), pod(1, "web-b", State::Ready), pod(2, "web-b", State::Ready)];
    let p = plan::plan(&s, &done, revs, 100);
    assert!(p.delete.is_empty(), "web-0 is below the partition");
    assert_eq!(p.status.updated_replicas, Some(2));
    assert_eq!(p.status.current_replicas, Some(1));
    assert_eq!(p.status.current_revision.as_deref(), Some("web-a"));
    // Recreating below the partition uses the current revision, above it the update.
    assert_eq!(plan::from_for(&s, 0), From::Current);
    assert_eq!(plan::from_for(&s, 1), From::Update);
    // Partition 0: the update completes and becomes current.
    let s = set(3, false, Some(0));
    let all_new = [pod(0, "web-b", State::Ready), pod(1, "web-b", State::Ready), pod(2, "web-b", State::Ready)];
    let st = plan::plan(&s, &all_new, revs, 100).status;
    assert_eq!(st.current_revision.as_deref(), Some("web-b"));
    assert_eq!((st.current_replicas, st.updated_replicas, st.ready_replicas), (Some(3), Some(3), Some(3)));
    assert_eq!(st.observed_generation, Some(4));
}

#[test]
fn on_delete_only_recreates() {
    let revs = Revisions { current: "web-a", update: "web-b" };
    let mut s = set(2, false, None);
    s.spec.as_mut().unwrap().update_strategy =
        Some(StatefulSetUpdateStrategy { type_: Some("OnDelete".into()), rolling_update: None });
    let pods = [pod(0, "web-a", State::Ready), pod(1, "web-a", State::Ready)];
    let p = plan::plan(&s, &pods, revs, 100);
    assert!(p.delete.is_empty() && p.create.is_empty());
    assert_eq!(p.status.current_revision.as_deref(), Some("web-a"));
    let p = plan::plan(&s, &[pod(0, "web-a", State::Ready)], revs, 100);
    assert_eq!(p.create, [(1, From::Update)]);
}

#[test]
fn deleting_set_only_reports() {
    let mut s = set(3, false, None);
    s.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let p = plan::plan(&s, &[pod(0, "web-a", State::Ready)], REVS, 100);
    assert!(p.create.is_empty() && p.delete.is_empty());
    assert_eq!(p.status.replicas, 1);
}

#[test]
fn pods_get_identity_and_claims() {
    let mut s = set(3, false, None);
    s.spec.as_mut().unwrap().template.spec.as_mut().unwrap().volumes = Some(vec![
        Volume { name: "www".into(), ..Default::default() },
        Volume { name: "tmp".into(), ..Default::default() },
    ]);
    let p = plan::new_pod(&s, &s.spec.clone().unwrap().template, 2, "web-abc");
    assert_eq!(p.metadata.name.as_deref(), Some("web-2"));
    let labels = p.metadata.labels.clone().unwrap();
    assert_eq!(labels[plan::POD_NAME_LABEL], "web-2");
    assert_eq!(labels[plan::POD_INDEX_LABEL], "2");
    assert_eq!(labels[plan::REVISION_LABEL], "web-abc");
    assert_eq!(labels["app"], "web");
    let spec = p.spec.unwrap();
    assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("web-2"), Some("nginx")));
    let vols = spec.volumes.unwrap();
    assert_eq!(vols.len(), 2);
    assert_eq!(vols[0].persistent_volume_claim.as_ref().unwrap().claim_name, "www-web-2");
    let owner = &p.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("StatefulSet", Some(true)));

    let claims = plan::new_claims(&s, 2);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("www-web-2"));
    assert_eq!(claims[0].metadata.labels.as_ref().unwrap()["app"], "web");
    assert!(claims[0].metadata.owner_references.is_none(), "Retain: the claim outlives the set");
    s.spec.as_mut().unwrap().persistent_volume_claim_retention_policy =
        serde_json::from_value(json!({"whenDeleted": "Delete", "whenScaled": "Delete"})).unwrap();
    let owner = plan::new_claims(&s, 2)[0].metadata.owner_references.clone().unwrap();
    assert_eq!((owner[0].name.as_str(), owner[0].controller), ("web", None));
    let claims = ["www-web-0".to_string(), "www-web-3".into(), "www-web-4".into(), "www-other-5".into()];
    let pods = [pod(4, "web-a", State::Terminating)];
    assert_eq!(plan::scaled_away_claims(&s, &pods, &claims), ["www-web-3"]);
}

#[test]
fn status_counts_created_pods() {
    let revs = Revisions { current: "web-a", update: "web-b" };
    let s = set(3, false, Some(0));
    let pods = [pod(0, "web-a", State::Ready), pod(1, "web-b", State::Pending), pod(2, "web-b", State::Terminating)];
    let st: StatefulSetStatus = plan::status(&s, &pods, revs, 100);
    assert_eq!(st.replicas, 3);
    assert_eq!(st.ready_replicas, Some(2));
    assert_eq!(st.current_replicas, Some(1));
    assert_eq!(st.updated_replicas, Some(1), "terminating pods are neither current nor updated");
    assert_eq!(st.update_revision.as_deref(), Some("web-b"));
}

#[test]
fn revisions_track_templates() {
    let s = set(1, false, None);
    let Update::Create(first) = history::update_revision(&s, &[]) else { panic!("expected a new revision") };
    assert_eq!(first.revision, 1);
    assert!(first.metadata.name.as_deref().unwrap().starts_with("web-"));
    assert_eq!(first.metadata.labels.as_ref().unwrap()["app"], "web");
    let data = &first.data.as_ref().unwrap().0;
    assert_eq!(data["spec"]["template"]["$patch"], "replace");
    assert_eq!(history::template_of(&first).unwrap(), s.spec.clone().unwrap().template);
    let first = *first;
    let name1 = first.metadata.name.clone().unwrap();
    assert_eq!(history::update_revision(&s, std::slice::from_ref(&first)), Update::Latest(name1.clone()));

    let mut s2 = s.clone();
    s2.spec.as_mut().unwrap().template = template("nginx:2");
    let Update::Create(second) = history::update_revision(&s2, std::slice::from_ref(&first)) else {
        panic!("expected a new revision")
    };
    assert_eq!(second.revision, 2);
    assert_ne!(second.metadata.name.as_deref(), Some(name1.as_str()));
    // Rolling back to the first template renumbers the first revision, even when a
    // client re-encoded it with empty fields.
    let mut back = s.clone();
    back.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
    let revs = [first.clone(), *second.clone()];
    assert_eq!(history::update_revision(&back, &revs), Update::Renumber { name: name1.clone(), number: 3 });
    // A hash collision gives another name.
    let mut collided = s.clone();
    collided.status = Some(StatefulSetStatus { collision_count: Some(1), ..Default::default() });
    let Update::Create(other) = history::update_revision(&collided, &[]) else { panic!() };
    assert_ne!(other.metadata.name.as_deref(), Some(name1.as_str()));
}

#[test]
fn orphan_revisions_of_the_set_are_adoptable() {
    let s = set(1, false, None);
    let Update::Create(rev) = history::update_revision(&s, &[]) else { panic!() };
    let matches = |l: &std::collections::BTreeMap<String, String>| l.get("app").is_some_and(|v| v == "web");
    assert!(history::adoptable(&s, &rev, matches));
    let mut other = (*rev).clone();
    other.metadata.name = Some("webx-abc".into());
    assert!(!history::adoptable(&s, &other, matches), "another set's name");
    let mut unlabelled = *rev;
    unlabelled.metadata.labels = None;
    assert!(!history::adoptable(&s, &unlabelled, matches));
}

#[test]
fn history_keeps_live_revisions() {
    let rev = |name: &str, n: i64| k8s_openapi::api::apps::v1::ControllerRevision {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: None,
        revision: n,
    };
    let revs = [rev("a", 1), rev("b", 2), rev("c", 3), rev("d", 4), rev("e", 5)];
    assert_eq!(history::surplus(&revs, &["e", "b"], 1), ["a", "c"]);
    assert!(history::surplus(&revs, &["e"], 10).is_empty());
    assert_eq!(history::surplus(&revs, &["e"], 0), ["a", "b", "c", "d"]);
}
