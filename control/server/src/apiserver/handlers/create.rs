//! POST of a new object: the decoding path the fuzz target runs
//! (`decode::decode_for_create`), then what needs the store and the clock: uid and
//! timestamp, the namespace's existence, admission, ClusterIP allocation, quota
//! admission, the store.

use http::StatusCode;
use serde_json::{Value, json};

use super::super::allocator;
use super::super::api_server::ApiServer;
use super::super::crd;
use super::super::decode::{self, NewObject};
use super::super::managed;
use super::super::meta;
use super::super::object::{invalid, str_at, to_bytes, to_obj};
use super::super::request::{Ctx, Resp, json_response};
use super::super::resource_def::ResourceDef;
use super::super::resources::by_kind;
use super::super::status::{ApiError, ApiResult, Cause};
use super::write::walk_of;
use crate::store;

impl ApiServer {
    pub(crate) async fn create(&self, def: &ResourceDef, ns: Option<&str>, ctx: &Ctx) -> ApiResult<Resp> {
        self.create_from(def, ns, ctx, None).await
    }

    /// A create of the request's body, or with `applied` of that object (a server-side
    /// apply that found nothing to update), whose managedFields it keeps; otherwise the
    /// new object's fields are recorded as an Update by the request's field manager.
    pub(super) async fn create_from(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        ctx: &Ctx,
        applied: Option<Value>,
    ) -> ApiResult<Resp> {
        if let Some(refused) = crd::refuse_create(def) {
            return Err(refused);
        }
        let uid = meta::new_uid();
        let name_suffix = meta::name_suffix();
        let new = NewObject { namespace: ns, strict: ctx.strict(), uid: &uid, name_suffix: &name_suffix };
        let mut obj = match &applied {
            Some(a) => {
                decode::decode_for_create(def, "application/json", &serde_json::to_vec(a).unwrap_or_default(), &new)?
            }
            None => decode::decode_for_create(def, &ctx.content_type, &ctx.body, &new)?,
        };
        let entries = match &applied {
            Some(a) => managed::decode(a).unwrap_or_default(),
            None => {
                let (api_version, now) = (def.api_version(), meta::now());
                let w = managed::Write {
                    manager: ctx.field_manager(),
                    api_version: &api_version,
                    subresource: None,
                    has_status: def.status,
                    now: &now,
                };
                managed::record_create(&obj, &walk_of(def), &w)
            }
        };
        managed::encode(&mut obj, entries);
        def.strategy.record_requester(&mut obj, &ctx.user);
        crate::auth::node::admit_create(&ctx.user, def.kind, &obj)
            .map_err(|why| ApiError::forbidden(format!("{} is forbidden: {why}", def.plural)))?;
        let m = obj["metadata"].as_object_mut().unwrap();
        m.insert("uid".into(), json!(uid));
        m.insert("creationTimestamp".into(), json!(meta::now()));
        if def.has_spec() {
            m.insert("generation".into(), json!(1));
        }
        let name = str_at(&obj, "/metadata/name").unwrap_or("").to_string();
        if def.namespaced {
            let nsdef = by_kind("Namespace").unwrap();
            let ns = ns.unwrap_or("");
            let Some(nskv) = self.store.get(&nsdef.key(None, ns)).await? else {
                return Err(ApiError::not_found("namespaces", "", ns));
            };
            if to_obj(&nskv)?.pointer("/metadata/deletionTimestamp").is_some() {
                let mut e = ApiError::forbidden_object(
                    def.plural,
                    def.group,
                    &name,
                    &format!("unable to create new content in namespace {ns} because it is being terminated"),
                );
                e.causes.push(Cause {
                    reason: "NamespaceTerminating",
                    field: "metadata.namespace".into(),
                    message: format!("namespace {ns} is being terminated"),
                });
                return Err(e);
            }
        }
        self.admit_create(def, ns, &mut obj).await?;
        // Held until the object is stored, so concurrent creates see each other's IPs.
        let _alloc = if def.strategy.allocates_cluster_ip() { Some(self.alloc_lock.lock().await) } else { None };
        if def.strategy.allocates_cluster_ip() {
            // The index's answer on a copy: a refusal may be a Service deleted a moment
            // ago that the index has not seen go, so the store decides any refusal.
            let mut attempt = obj.clone();
            let cidr = self.service_cidr;
            match self.service_ips.with_current(|used| allocator::allocate(cidr, used, &mut attempt)).await {
                Some(Ok(())) => obj = attempt,
                _ => {
                    let mut used = allocator::InUse::default();
                    for kv in self.store.list(&def.prefix(), None, 0).await?.kvs {
                        used.add(&to_obj(&kv)?);
                    }
                    allocator::allocate(cidr, &used, &mut obj).map_err(|c| invalid(def, &obj, c))?;
                }
            }
        }
        // Last, on the final object: a charge taken here is only lost (until the quota
        // controller recounts) if the store refuses the create below.
        if let Some(ns) = ns.filter(|_| def.namespaced) {
            self.admit_quota(def, ns, &obj, None, ctx.dry_run()).await?;
        }
        if ctx.dry_run() {
            return Ok(json_response(StatusCode::CREATED, &obj));
        }
        let kv = match self.store.create(&def.key(ns, &name), to_bytes(&obj)).await {
            Ok(kv) => kv,
            Err(store::Error::AlreadyExists { .. }) => {
                return Err(ApiError::already_exists(def.plural, def.group, &name));
            }
            Err(e) => return Err(e.into()),
        };
        if def.strategy.allocates_cluster_ip() {
            self.service_ips.created(kv.mod_revision);
        }
        tracing::debug!(kind = def.kind, namespace = ns.unwrap_or(""), name = %name, rv = kv.mod_revision, user = %ctx.user.name, "created");
        Ok(json_response(StatusCode::CREATED, &to_obj(&kv)?))
    }
}
