//! Priority admission, as upstream's `Priority` plugin: a new pod gets `spec.priority`
//! (and `spec.preemptionPolicy`) from the PriorityClass it names, or from the cluster's
//! global default class, else priority 0; a pod naming a class that does not exist, or
//! giving a priority of its own that differs, is Forbidden. A new PriorityClass may be
//! the global default only while no other one is.
//!
//! It only reads the store; preemption itself is the scheduler's (later work).

use serde_json::{Value, json};

use super::api_server::ApiServer;
use super::object::{str_at, to_obj};
use super::resource_def::ResourceDef;
use super::resources::by_kind;
use super::status::{ApiError, ApiResult, Cause};

impl ApiServer {
    async fn priority_classes(&self) -> ApiResult<Vec<Value>> {
        let def = by_kind("PriorityClass").ok_or_else(|| ApiError::internal("PriorityClass is not served"))?;
        self.store.list(&def.prefix(), None, 0).await?.kvs.iter().map(to_obj).collect()
    }

    /// Runs priority admission on a new object of `def`'s kind (pods and PriorityClasses;
    /// other kinds pass).
    pub(super) async fn admit_priority(&self, def: &ResourceDef, obj: &mut Value) -> ApiResult<()> {
        match (def.group, def.kind) {
            ("", "Pod") => self.admit_pod_priority(def, obj).await,
            ("scheduling.k8s.io", "PriorityClass") if obj.get("globalDefault") == Some(&json!(true)) => {
                let name = str_at(obj, "/metadata/name").unwrap_or("").to_string();
                let classes = self.priority_classes().await?;
                let other = classes.iter().find(|c| c.get("globalDefault") == Some(&json!(true)));
                match other.and_then(|c| str_at(c, "/metadata/name")) {
                    Some(o) if o != name => Err(ApiError::invalid(
                        def.kind,
                        def.group,
                        &name,
                        vec![Cause::invalid(
                            "globalDefault",
                            &json!(true),
                            format!("PriorityClass {o} is already marked as default. Only one default can exist"),
                        )],
                    )),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    async fn admit_pod_priority(&self, def: &ResourceDef, obj: &mut Value) -> ApiResult<()> {
        let pod = str_at(obj, "/metadata/name").unwrap_or("").to_string();
        let forbidden = |why: String| ApiError::forbidden(format!("{} \"{pod}\" is forbidden: {why}", def.plural));
        let classes = self.priority_classes().await?;
        let class = match str_at(obj, "/spec/priorityClassName").filter(|n| !n.is_empty()) {
            Some(name) => {
                let found = classes.iter().find(|c| str_at(c, "/metadata/name") == Some(name));
                Some(found.ok_or_else(|| forbidden(format!("no PriorityClass with name {name} was found")))?)
            }
            None => classes.iter().find(|c| c.get("globalDefault") == Some(&json!(true))),
        };
        let (value, policy) = match class {
            Some(c) => (
                c.get("value").and_then(Value::as_i64).unwrap_or(0),
                str_at(c, "/preemptionPolicy").unwrap_or("PreemptLowerPriority").to_string(),
            ),
            None => (0, "PreemptLowerPriority".to_string()),
        };
        if let Some(given) = obj.pointer("/spec/priority").and_then(Value::as_i64)
            && given != value
        {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            if let Some(c) = class.and_then(|c| str_at(c, "/metadata/name")) {
                spec.insert("priorityClassName".into(), json!(c));
            }
            spec.insert("priority".into(), json!(value));
            spec.entry("preemptionPolicy").or_insert(json!(policy));
        }
        Ok(())
    }
}
