//! The in-process transport: the scheduler and controllers that run inside
//! skiff-control call the API server's request path directly, as a user named by a
//! certificate-like subject. They go through authentication, RBAC, validation and
//! optimistic concurrency exactly as a remote client would; only TLS and the socket are
//! skipped. It must not bypass `ApiServer::serve`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use skiff_api::transport::{BoxError, BoxFuture, ResponseBody, Result, Transport};

use super::ApiServer;
use crate::tls::x509::Subject;

pub struct LocalTransport {
    api: Arc<ApiServer>,
    subject: Subject,
}

impl LocalTransport {
    /// A transport acting as user `user` in `groups`.
    pub fn new(api: Arc<ApiServer>, user: &str, groups: &[&str]) -> Self {
        let subject = Subject {
            common_name: Some(user.to_string()),
            organizations: groups.iter().map(|g| g.to_string()).collect(),
        };
        Self { api, subject }
    }
}

impl Transport for LocalTransport {
    fn send(&self, req: http::Request<Bytes>) -> BoxFuture<'_, Result<http::Response<ResponseBody>>> {
        let req = req.map(http_body_util::Full::new);
        Box::pin(async move {
            let resp = self.api.clone().serve(req, Some(self.subject.clone())).await;
            Ok(resp.map(|b| b.map_err(|never| -> BoxError { match never {} }).boxed()))
        })
    }
}
