//! The CertificateSigningRequest approver and signer, in-process in skiff-control: the
//! approver approves kubelet client requests of bootstrapping and renewing nodes (as
//! upstream's csrapproving controller), and the signer issues approved requests of
//! `kubernetes.io/kube-apiserver-client-kubelet` and `kubernetes.io/kube-apiserver-client`
//! with the cluster CA, writing `status.certificate`.
//!
//! Why here and not in `skiff-controllers`: signing needs the CA's private key, which
//! only this process has, and the approver's rule is an authorization question the
//! server's own authorizer answers (no SubjectAccessReview API is served). They still
//! change CSRs only through the API, as the controller manager's user, so validation,
//! RBAC and optimistic concurrency apply. Both are idempotent, so two replicas running
//! them at once only race to the same result (a 409 for the loser).
//!
//! The decisions are `rules` (pure); this module lists, watches and writes.

pub mod rules;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use serde_json::json;
use skiff_api::{Client, ListParams, Patch, WatchEvent};

use crate::apiserver::ApiServer;
use crate::tls::Pki;
use crate::tls::signer::parse_csr;
use rules::State;

const RETRY: Duration = Duration::from_secs(1);
const WATCH_TIMEOUT_S: u32 = 300;

/// Runs until the task is aborted: list, handle each request, watch, relist.
pub async fn run(client: Client, api: Arc<ApiServer>, pki: Pki) {
    loop {
        if let Err(error) = list_and_watch(&client, &api, &pki).await {
            tracing::warn!(%error, "CertificateSigningRequest approver and signer: retrying");
            tokio::time::sleep(RETRY).await;
        }
    }
}

async fn list_and_watch(client: &Client, api: &ApiServer, pki: &Pki) -> skiff_api::client::Result<()> {
    let list = client.list::<CertificateSigningRequest>(None, &ListParams::default()).await?;
    for csr in &list.items {
        handle(client, api, pki, csr).await;
    }
    let rv = list.metadata.resource_version.unwrap_or_default();
    let mut w = client.watch::<CertificateSigningRequest>(None, &ListParams::default(), &rv, WATCH_TIMEOUT_S).await?;
    while let Some(ev) = w.next().await {
        match ev? {
            WatchEvent::Added(csr) | WatchEvent::Modified(csr) => handle(client, api, pki, &csr).await,
            _ => {}
        }
    }
    Ok(())
}

/// One step for one request: approve it, or sign it, or nothing. Failures are logged
/// and retried on the request's next event or the next relist.
async fn handle(client: &Client, api: &ApiServer, pki: &Pki, csr: &CertificateSigningRequest) {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let state = rules::state(csr);
    if !matches!(state, State::Pending | State::Approved) {
        return;
    }
    if !matches!(csr.spec.signer_name.as_str(), rules::KUBELET_CLIENT | rules::APISERVER_CLIENT) {
        return;
    }
    let parsed = match parse_csr(&csr.spec.request.0) {
        Ok(p) => p,
        Err(e) if state == State::Approved => return fail(client, &name, &e.to_string()).await,
        Err(e) => {
            tracing::info!(csr = %name, error = %e, "not auto-approving an unreadable request");
            return;
        }
    };
    let result = if state == State::Pending {
        let Some(how) = rules::auto_approve(csr, &parsed, api.authz.as_ref()) else { return };
        let mut conditions = csr.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        conditions.push(k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some("AutoApproved".into()),
            message: Some("Auto approving kubelet client certificate after SubjectAccessReview.".into()),
            ..Default::default()
        });
        let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
        let r = client.patch::<CertificateSigningRequest>(None, &name, Some("approval"), &patch).await;
        if r.is_ok() {
            tracing::info!(csr = %name, requester = csr.spec.username.as_deref().unwrap_or(""), subject = %parsed.common_name, how, "approved kubelet client certificate request");
        }
        r
    } else {
        let (usages, lifetime) = match rules::signing(csr, &parsed) {
            Ok(x) => x,
            Err(why) => return fail(client, &name, &why).await,
        };
        let pem = match pki.sign_client_csr(&parsed, usages, lifetime) {
            Ok(pem) => pem,
            Err(e) => {
                tracing::error!(csr = %name, error = %e, "signing failed");
                return;
            }
        };
        let cert = base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
        let patch = Patch::Merge(json!({"status": {"certificate": cert}}));
        let r = client.patch::<CertificateSigningRequest>(None, &name, Some("status"), &patch).await;
        if r.is_ok() {
            tracing::info!(csr = %name, subject = %parsed.common_name, signer = %csr.spec.signer_name, lifetime_s = lifetime, "issued certificate");
        }
        r
    };
    if let Err(error) = result {
        tracing::warn!(csr = %name, %error, "updating the request failed; retrying on its next change");
    }
}

/// Marks an approved request that cannot be signed as Failed, as upstream's signer.
async fn fail(client: &Client, name: &str, why: &str) {
    tracing::info!(csr = %name, reason = why, "request cannot be signed");
    let cur = match client.get::<CertificateSigningRequest>(None, name).await {
        Ok(c) => c,
        Err(error) => return tracing::warn!(csr = %name, %error, "reading the request failed"),
    };
    let mut conditions = cur.status.and_then(|s| s.conditions).unwrap_or_default();
    conditions.push(k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition {
        type_: "Failed".into(),
        status: "True".into(),
        reason: Some("SignerValidationFailure".into()),
        message: Some(why.into()),
        ..Default::default()
    });
    let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
    if let Err(error) = client.patch::<CertificateSigningRequest>(None, name, Some("status"), &patch).await {
        tracing::warn!(csr = %name, %error, "marking the request Failed failed");
    }
}
