//! Lease-based leader election (coordination.k8s.io/v1 Lease in kube-system), so that
//! with several replicas of skiff-control exactly one runs the scheduler and the
//! controllers.
//!
//! A candidate takes the Lease when it is free or its holder has not renewed it within
//! `leaseDurationSeconds`; the leader renews every `RETRY`; every write is a conditional
//! update (resourceVersion), so two candidates can never both win. A leader that cannot
//! renew for `RENEW_DEADLINE` stops leading before the Lease can expire and another
//! replica take over, so two leaders never act at once.

use std::future::Future;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use skiff_api::Client;

const NAMESPACE: &str = "kube-system";
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct LeaderElection {
    client: Client,
    name: String,
    identity: String,
}

impl LeaderElection {
    pub fn new(client: Client, lease_name: &str, identity: &str) -> Self {
        Self { client, name: lease_name.to_string(), identity: identity.to_string() }
    }

    /// Campaigns forever; runs `lead()` each time leadership is won and aborts it when
    /// leadership is lost.
    pub async fn run<F, Fut>(&self, mut lead: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            self.acquire().await;
            tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
            let task = tokio::spawn(lead());
            self.keep().await;
            task.abort();
            let _ = task.await;
            tracing::warn!(lease = %self.name, identity = %self.identity, "lost leadership; stopped controllers");
        }
    }

    async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {
                    if !logged {
                        tracing::info!(lease = %self.name, "another replica leads; waiting");
                        logged = true;
                    }
                }
                Err(e) => tracing::debug!(lease = %self.name, error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews until a renewal fails for longer than the deadline or someone else holds the Lease.
    async fn keep(&self) {
        let mut last_renew = Instant::now();
        loop {
            tokio::time::sleep(RETRY).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renew = Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "renewing the leader Lease failed");
                    if last_renew.elapsed() > RENEW_DEADLINE {
                        return;
                    }
                }
            }
        }
    }

    /// One attempt: `Ok(true)` when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&self) -> skiff_api::client::Result<bool> {
        let now = MicroTime(jiff::Timestamp::now());
        let duration_s = LEASE_DURATION.as_secs() as i32;
        let Some(mut lease) = self.client.get_opt::<Lease>(Some(NAMESPACE), &self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_s),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.client.create(Some(NAMESPACE), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_already_exists() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && !expired(spec, now.0) {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(duration_s);
        spec.renew_time = Some(now);
        match self.client.replace(Some(NAMESPACE), &self.name, &lease).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether the holder has let the Lease lapse (an empty holder is a released Lease).
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    if spec.holder_identity.as_deref().unwrap_or("").is_empty() {
        return true;
    }
    let Some(renew) = spec.renew_time.as_ref() else { return true };
    let duration = spec.lease_duration_seconds.unwrap_or(LEASE_DURATION.as_secs() as i32).max(1) as i64;
    now.as_second() - renew.0.as_second() > duration
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expiry() {
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let spec = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t0)),
            ..Default::default()
        };
        assert!(!expired(&spec, Timestamp::from_second(1_000_010).unwrap()));
        assert!(expired(&spec, Timestamp::from_second(1_000_016).unwrap()));
        assert!(expired(&LeaseSpec { holder_identity: Some(String::new()), ..spec.clone() }, t0));
    }
}
