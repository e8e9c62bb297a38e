//! GET and LIST (a LIST with `watch` is `watch`'s), with selectors, paging by continue
//! token, and the Table view kubectl asks for.

use base64::Engine;
use http::StatusCode;
use serde_json::{Value, json};

use super::super::api_server::ApiServer;
use super::super::object::{Named, to_obj};
use super::super::request::{Ctx, Resp, Subresource, full, ok};
use super::super::resource_def::ResourceDef;
use super::super::selectors::Selectors;
use super::super::status::{ApiError, ApiResult};
use super::super::{rawjson, table, table_object};
use super::subresources::scale_of;
use crate::store::KeyValue;

/// Continue tokens: the revision the listing started at and the last key returned.
fn encode_continue(rv: u64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"rv": rv, "start": key}).to_string())
}

fn decode_continue(tok: &str) -> ApiResult<(u64, String)> {
    let bad = || ApiError::bad_request("continue key is not valid: please restart the list without a continue token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tok).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v.get("rv").and_then(|r| r.as_u64()).ok_or_else(bad)?,
        v.get("start").and_then(|s| s.as_str()).ok_or_else(bad)?.to_string(),
    ))
}

impl ApiServer {
    pub(super) async fn get_kv(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> ApiResult<KeyValue> {
        self.store.get(&def.key(ns, name)).await?.ok_or_else(|| ApiError::not_found(def.plural, def.group, name))
    }

    pub(crate) async fn get(&self, target: Named<'_>, ctx: &Ctx) -> ApiResult<Resp> {
        let Named { def, ns, name, sub } = target;
        let obj = to_obj(&self.get_kv(def, ns, name).await?)?;
        if sub == Some(Subresource::Scale) {
            return ok(&scale_of(def, &obj));
        }
        if ctx.wants_table() {
            let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
            return ok(&table::table_of(def, &[obj], meta, table_object::Include::parse(ctx.q("includeObject"))));
        }
        ok(&obj)
    }

    pub(crate) async fn list(&self, def: &ResourceDef, ns: Option<&str>, ctx: &Ctx) -> ApiResult<Resp> {
        let sel = Selectors::from_ctx(def, ctx)?;
        let limit: usize = match ctx.q("limit") {
            None => 0,
            Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        };
        let prefix = def.ns_prefix(ns);
        let (mut start, mut first_rv) = match ctx.q("continue") {
            Some(tok) => {
                let (rv, key) = decode_continue(tok)?;
                if !key.starts_with(&prefix) {
                    return Err(ApiError::bad_request("continue key is not valid for this list"));
                }
                (Some(key), Some(rv))
            }
            None => (None, None),
        };
        if sel.is_empty()
            && !ctx.wants_table()
            && let Some(resp) = self.list_raw(def, &prefix, start.as_deref(), first_rv, limit).await?
        {
            return Ok(resp);
        }
        let mut items = Vec::new();
        let mut cont = None;
        // Page through the store until `limit` matching items or the end; filtering
        // happens here, so a selective LIST may read several store pages.
        let page_size = if limit == 0 { 0 } else { limit.max(100) };
        'outer: loop {
            let page = self.store.list(&prefix, start.as_deref(), page_size).await?;
            let rv = *first_rv.get_or_insert(page.revision);
            let n = page.kvs.len();
            for (i, kv) in page.kvs.iter().enumerate() {
                let obj = to_obj(kv)?;
                if !sel.matches(def, &obj) {
                    continue;
                }
                items.push(obj);
                if limit > 0 && items.len() == limit {
                    if i + 1 < n || page.more {
                        cont = Some(encode_continue(rv, &kv.key));
                    }
                    break 'outer;
                }
            }
            if !page.more || n == 0 {
                break;
            }
            start = page.kvs.last().map(|k| k.key.clone());
        }
        let rv = first_rv.unwrap_or(0).to_string();
        let mut list_meta = json!({"resourceVersion": rv});
        if let Some(c) = cont {
            list_meta["continue"] = json!(c);
        }
        if ctx.wants_table() {
            return ok(&table::table_of(def, &items, list_meta, table_object::Include::parse(ctx.q("includeObject"))));
        }
        ok(&json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(),
            "metadata": list_meta,
            "items": items,
        }))
    }

    /// An unfiltered LIST as one store page spliced into the response without decoding
    /// each object (see `rawjson`); `None` if a stored object is not in the expected
    /// shape, and the caller takes the decoding path.
    async fn list_raw(
        &self,
        def: &ResourceDef,
        prefix: &str,
        start: Option<&str>,
        continued_rv: Option<u64>,
        limit: usize,
    ) -> ApiResult<Option<Resp>> {
        let page = self.store.list(prefix, start, limit).await?;
        let rv = continued_rv.unwrap_or(page.revision);
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if page.more
            && let Some(last) = page.kvs.last()
        {
            meta["continue"] = json!(encode_continue(rv, &last.key));
        }
        let head = format!(
            "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
            def.kind,
            def.api_version(),
            meta
        );
        let mut out = Vec::with_capacity(head.len() + page.kvs.iter().map(|kv| kv.value.len() + 40).sum::<usize>() + 2);
        out.extend_from_slice(head.as_bytes());
        for (i, kv) in page.kvs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if !rawjson::append_with_revision(&mut out, &kv.value, kv.mod_revision) {
                return Ok(None);
            }
        }
        out.extend_from_slice(b"]}");
        Ok(Some(
            http::Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(full(out))
                .unwrap(),
        ))
    }
}
