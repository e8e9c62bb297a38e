//! WATCH: a chunked stream of `{"type": ..., "object": ...}` lines over a store watch.
//!
//! Without a resourceVersion (or with "0") the stream starts with synthetic ADDED
//! events for the current state, then follows changes; with one, it replays changes
//! after it, or sends a 410 Expired ERROR event when that history is compacted. Label
//! and field selectors turn transitions into ADDED/DELETED as the object enters or
//! leaves the selection. Bookmarks (when asked for) carry the revision of the last
//! event delivered, never more, so a client resuming from one misses nothing.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::api_server::ApiServer;
use super::object::to_obj;
use super::request::{Ctx, Resp};
use super::resource_def::ResourceDef;
use super::selectors::Selectors;
use super::status::{ApiError, ApiResult};
use super::{table, table_object};
use crate::store::{self, EventType};

/// How often an idle watch sends a bookmark (when the client allows them).
const BOOKMARK_EVERY: Duration = Duration::from_secs(15);
/// Watches end after this unless `timeoutSeconds` says otherwise (clients re-watch).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// A response body fed from a channel: each message is one chunk.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

struct Encoder {
    def: &'static ResourceDef,
    table: bool,
    include: table_object::Include,
}

impl Encoder {
    fn line(&self, ty: &str, obj: &Value) -> Bytes {
        let object = if self.table && ty != "ERROR" && ty != "BOOKMARK" {
            table::table_of(self.def, std::slice::from_ref(obj), json!({}), self.include)
        } else {
            obj.clone()
        };
        let mut v = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
        v.push(b'\n');
        Bytes::from(v)
    }
}

impl ApiServer {
    pub(crate) async fn watch(
        &self,
        def: &'static ResourceDef,
        ns: Option<&str>,
        name: Option<&str>,
        ctx: &Ctx,
        open: crate::metrics::OpenWatch,
    ) -> ApiResult<Resp> {
        let sel = Selectors::from_ctx(def, ctx)?;
        let timeout = match ctx.q("timeoutSeconds") {
            Some(t) => Duration::from_secs(
                t.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
            ),
            None => DEFAULT_TIMEOUT,
        };
        let bookmarks = matches!(ctx.q("allowWatchBookmarks"), Some("true" | "1"));
        let requested: Option<u64> = match ctx.q("resourceVersion") {
            None | Some("0") => None,
            Some(rv) => Some(rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?),
        };
        let prefix = def.ns_prefix(ns);
        let only_name = name.map(str::to_string).or_else(|| sel.fields.exact("metadata.name").map(str::to_string));
        let enc =
            Encoder { def, table: ctx.wants_table(), include: table_object::Include::parse(ctx.q("includeObject")) };
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let wanted = move |obj: &Value| -> bool {
            if let Some(n) = &only_name
                && obj.pointer("/metadata/name").and_then(|v| v.as_str()) != Some(n)
            {
                return false;
            }
            sel.matches(def, obj)
        };

        // Initial state for "any"/"most recent" watches, then changes after it.
        let mut initial = Vec::new();
        let start = match requested {
            Some(rv) => rv,
            None => {
                let page = self.store.list(&prefix, None, 0).await?;
                for kv in &page.kvs {
                    let obj = to_obj(kv)?;
                    if wanted(&obj) {
                        initial.push(enc.line("ADDED", &obj));
                    }
                }
                page.revision
            }
        };
        let watch = self.store.watch(&prefix, start).await;
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(ChannelBody(rx).boxed())
            .unwrap();
        let mut watch = match watch {
            Ok(w) => w,
            Err(store::Error::Compacted { .. }) => {
                let err = ApiError::from(store::Error::Compacted { requested: start, compacted: 0 });
                let _ = tx.try_send(enc.line("ERROR", &err.to_status()));
                return Ok(resp);
            }
            Err(e) => return Err(e.into()),
        };
        tokio::spawn(async move {
            // Counted as open for as long as the stream runs.
            let _open = open;
            for line in initial {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut last_rv = start;
            let mut tick = tokio::time::interval(BOOKMARK_EVERY);
            tick.tick().await;
            loop {
                let line = tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = tick.tick() => {
                        if !bookmarks { continue; }
                        enc.line("BOOKMARK", &json!({"kind": def.kind, "apiVersion": def.api_version(),
                            "metadata": {"resourceVersion": last_rv.to_string()}}))
                    }
                    ev = watch.next() => match ev {
                        None => return,
                        Some(Err(e)) => {
                            let _ = tx.send(enc.line("ERROR", &ApiError::from(e).to_status())).await;
                            return;
                        }
                        Some(Ok(ev)) => {
                            last_rv = ev.kv.mod_revision;
                            let prev = ev.prev.as_ref().and_then(|p| to_obj(p).ok());
                            let prev_in = prev.as_ref().is_some_and(&wanted);
                            match ev.kind {
                                EventType::Put => {
                                    let Ok(obj) = to_obj(&ev.kv) else { continue };
                                    match (prev_in, wanted(&obj)) {
                                        (true, true) => enc.line("MODIFIED", &obj),
                                        (false, true) => enc.line("ADDED", &obj),
                                        (true, false) => enc.line("DELETED", &obj),
                                        (false, false) => continue,
                                    }
                                }
                                EventType::Delete => {
                                    let Some(mut obj) = prev.filter(|_| prev_in) else { continue };
                                    obj["metadata"]["resourceVersion"] = json!(ev.kv.mod_revision.to_string());
                                    enc.line("DELETED", &obj)
                                }
                            }
                        }
                    }
                };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        Ok(resp)
    }
}
