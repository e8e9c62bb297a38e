//! ResourceQuota admission, as upstream's plugin: the last step of a create before the
//! store. Every quota of the namespace that counts the new object (its kind, its scopes;
//! `usage` decides) must have room for it, else the create is Forbidden with upstream's
//! message (`exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2`, or
//! `failed quota: q: must specify requests.cpu for: app` when a quota on cpu or memory
//! meets a container that states none). The charge is written at once to the quota's
//! `status.used` (a quota the controller has not counted yet is counted here first);
//! the resource quota controller recounts it later (and gives back what
//! a failed or deleted create took). An update of a Service or a claim is charged what
//! it adds (a Service turned NodePort, a claim grown), as upstream's evaluators do.
//!
//! Concurrency: the charge is a compare-and-swap of the quota at the revision it was
//! read, retried from a fresh read on conflict, as upstream's quota evaluator does.
//! Without it two creates racing for the last slot would both read `used: 4` of 5, both
//! fit, and both be stored. A dry run checks but charges nothing.
//!
//! It must not change the object; it writes only quota status.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use skiff_controllers::controllers::resourcequota::usage::{self, Charge};

use super::api_server::ApiServer;
use super::object::{str_at, to_bytes, to_obj};
use super::resource_def::{ResourceDef, prefix_of};
use super::resources::by_kind;
use super::status::{ApiError, ApiResult};
use crate::store;

/// How often a charge is retried when other writers keep changing the quota; a busy
/// namespace's creates each win within a few tries.
const MAX_ATTEMPTS: usize = 50;

impl ApiServer {
    /// Charges the new object `obj` of `def` in `ns` to every quota that counts it, or,
    /// with `old`, what an update of a Service or claim adds.
    pub(super) async fn admit_quota(
        &self,
        def: &ResourceDef,
        ns: &str,
        obj: &Value,
        old: Option<&Value>,
        dry_run: bool,
    ) -> ApiResult<()> {
        let quotas = by_kind("ResourceQuota").ok_or_else(|| ApiError::internal("ResourceQuota is not served"))?;
        let resource = (def.group.to_string(), def.plural.to_string());
        let name = str_at(obj, "/metadata/name").unwrap_or("");
        let refuse = |why: String| ApiError::forbidden_object(def.plural, def.group, name, &why);
        let page = self.store.list(&quotas.ns_prefix(Some(ns)), None, 0).await?;
        if page.kvs.is_empty() {
            return Ok(());
        }
        // Check every quota before charging any, so a refusal by one leaves the others
        // untouched.
        let mut charges = Vec::new();
        for kv in &page.kvs {
            let quota = self.counted(ns, to_obj(kv)?).await?;
            match usage::charge(&quota, &resource, obj, old) {
                Charge::NotCounted => {}
                Charge::Refused(why) => return Err(refuse(why)),
                Charge::Fits(_) => charges.push(kv.key.clone()),
            }
        }
        if dry_run {
            return Ok(());
        }
        for key in charges {
            let mut attempts = 0;
            loop {
                attempts += 1;
                let Some(kv) = self.store.get(&key).await? else { break };
                let mut quota = self.counted(ns, to_obj(&kv)?).await?;
                let used = match usage::charge(&quota, &resource, obj, old) {
                    Charge::NotCounted => break,
                    Charge::Refused(why) => return Err(refuse(why)),
                    Charge::Fits(used) => used,
                };
                quota["status"]["used"] = usage::to_json(&used);
                match self.store.update(&key, to_bytes(&quota), Some(kv.mod_revision)).await {
                    Ok(_) => break,
                    Err(store::Error::Conflict { .. }) if attempts < MAX_ATTEMPTS => continue,
                    Err(store::Error::Conflict { .. }) => {
                        let quota_name = str_at(&quota, "/metadata/name").unwrap_or("");
                        let why = format!("too many concurrent creates to charge {} \"{name}\"; try again", def.plural);
                        return Err(ApiError::conflict(quotas.plural, quotas.group, quota_name, &why));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// `quota` with `status.hard` and `status.used` counted here from the store when the
    /// controller has not yet counted it (just created, or the controllers not running):
    /// upstream refuses creates then ("status unknown for quota"); counting the same way
    /// the controller does serves them instead, and the charge persists the count.
    async fn counted(&self, ns: &str, mut quota: Value) -> ApiResult<Value> {
        let spec = usage::spec_hard(&quota);
        let hard = usage::resource_list(quota.pointer("/status/hard"));
        let used = usage::resource_list(quota.pointer("/status/used"));
        if spec.keys().all(|k| hard.contains_key(k) && used.contains_key(k)) {
            return Ok(quota);
        }
        let mut objects = BTreeMap::new();
        for (group, plural) in usage::counted_resources(&spec) {
            let prefix = format!("{}{ns}/", prefix_of(&group, &plural));
            let kvs = self.store.list(&prefix, None, 0).await?.kvs;
            objects.insert((group, plural), kvs.iter().map(to_obj).collect::<ApiResult<Vec<_>>>()?);
        }
        let used = usage::used(&quota, &objects, jiff::Timestamp::now());
        quota["status"] = json!({"hard": usage::to_json(&spec), "used": usage::to_json(&used)});
        Ok(quota)
    }
}
