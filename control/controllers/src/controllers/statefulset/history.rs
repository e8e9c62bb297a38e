//! A StatefulSet's ControllerRevisions, as upstream keeps them and as `kubectl rollout
//! history|undo statefulset` reads them: one revision per distinct pod template, named
//! `<set>-<hash>`, its `data` the strategic merge patch
//! `{"spec":{"template":{..., "$patch":"replace"}}}` that restores the template (kubectl
//! applies exactly that on undo), labelled with the template's labels (kubectl finds
//! them with the set's selector) and numbered by `revision`. Pure functions.

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{Value, json};

use super::super::deployment::{equal_ignore_hash, pod_template_hash};
use super::super::owned_pods;

/// The patch that restores `template` on a set.
pub fn data_of(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template a revision restores.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// Whether a revision restores the same template (apart from what clients add when they
/// decode and re-encode it, such as `resources: {}`).
pub fn restores(rev: &ControllerRevision, template: &PodTemplateSpec) -> bool {
    template_of(rev).is_some_and(|t| equal_ignore_hash(&t, template))
}

/// The revision of the set's current template, numbered `number`.
pub fn new_revision(set: &StatefulSet, number: i64, collision_count: i32) -> ControllerRevision {
    let template = set.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    // Names stay within 253 characters with the hash and dash.
    let prefix: String = set_name.chars().take(223).collect();
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{prefix}-{}", pod_template_hash(&template, collision_count))),
            namespace: set.metadata.namespace.clone(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            // Carried over as upstream does, so `rollout history` shows change-cause.
            annotations: set.metadata.annotations.clone(),
            owner_references: Some(vec![owned_pods::controller_ref(set)]),
            ..Default::default()
        },
        data: Some(RawExtension(data_of(&template))),
        revision: number,
    }
}

/// Whether an orphan revision is the set's to adopt: named `<set>-...` and labelled so
/// that the set's selector matches.
pub fn adoptable(
    set: &StatefulSet,
    rev: &ControllerRevision,
    selector_matches: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
) -> bool {
    let prefix = format!("{}-", set.metadata.name.as_deref().unwrap_or_default());
    rev.metadata.name.as_deref().is_some_and(|n| n.starts_with(&prefix))
        && selector_matches(&rev.metadata.labels.clone().unwrap_or_default())
}

/// What to do about the update revision.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The newest revision already is the template.
    Latest(String),
    /// An older revision is (a rollback): renumber it to the next number.
    Renumber { name: String, number: i64 },
    /// No revision is: create this one.
    Create(Box<ControllerRevision>),
}

/// Sorts revisions oldest first (by number, then name).
pub fn sort(revs: &mut [ControllerRevision]) {
    revs.sort_by(|a, b| (a.revision, &a.metadata.name).cmp(&(b.revision, &b.metadata.name)));
}

/// The update revision for `set` among its revisions (sorted oldest first).
pub fn update_revision(set: &StatefulSet, revs: &[ControllerRevision]) -> Update {
    let template = set.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let next = revs.last().map_or(1, |r| r.revision + 1);
    match revs.iter().rposition(|r| restores(r, &template)) {
        Some(i) if i + 1 == revs.len() => Update::Latest(revs[i].metadata.name.clone().unwrap_or_default()),
        Some(i) => Update::Renumber { name: revs[i].metadata.name.clone().unwrap_or_default(), number: next },
        None => {
            let collisions = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
            Update::Create(Box::new(new_revision(set, next, collisions)))
        }
    }
}

/// Revisions to delete beyond `limit`: the oldest of those that are neither current,
/// update, nor the revision of a live pod.
pub fn surplus<'a>(revs: &'a [ControllerRevision], live: &[&str], limit: usize) -> Vec<&'a str> {
    let dead: Vec<&str> =
        revs.iter().filter_map(|r| r.metadata.name.as_deref()).filter(|n| !live.contains(n)).collect();
    dead[..dead.len().saturating_sub(limit)].to_vec()
}
