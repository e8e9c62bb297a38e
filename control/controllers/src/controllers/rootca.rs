//! The root-CA publisher: every namespace that is not terminating has a ConfigMap
//! `kube-root-ca.crt` whose `ca.crt` is the cluster CA certificate (PEM), so that pods
//! can verify the API server (the `kube-api-access-*` volume that ServiceAccount
//! admission adds to every pod projects it as `ca.crt`). A ConfigMap that is deleted is
//! created again; one whose data was changed is put back.
//!
//! It must not touch any other ConfigMap, nor anything of `kube-root-ca.crt` but its
//! `data` (labels and annotations users add stay). It watches only ConfigMaps of that
//! name, with a reflector of its own, so no controller caches every ConfigMap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::ListParams;
use skiff_api::reflector::{self, Cache, Change};
use skiff_api::workqueue::{Action, WorkQueue, run_workers};

use super::Context;
use super::serviceaccount::is_active;

/// The ConfigMap's name, in every namespace.
pub const CONFIG_MAP_NAME: &str = "kube-root-ca.crt";
/// Its one key: the CA certificate, PEM.
pub const CA_KEY: &str = "ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating ConfigMap {namespace}/kube-root-ca.crt failed: {source}")]
    Create {
        namespace: String,
        #[source]
        source: skiff_api::client::Error,
    },
    #[error("repairing ConfigMap {namespace}/kube-root-ca.crt failed: {source}")]
    Update {
        namespace: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

/// How long after its ConfigMap is deleted a namespace is looked at again (see `run`).
const RECREATE_DELAY: Duration = Duration::from_secs(2);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a namespace's ConfigMap needs.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// As it should be, or the namespace is gone or terminating.
    Nothing,
    Create(ConfigMap),
    /// The current object (with its resourceVersion) with the data put right.
    Update(ConfigMap),
}

fn desired_data(ca_pem: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CA_KEY.to_string(), ca_pem.to_string())])
}

/// Decides what namespace `ns` (`None`: gone) with ConfigMap `current` needs, for CA
/// certificate `ca_pem`. Pure, so every case is a unit test.
pub fn plan(ns_name: &str, ns: Option<&Namespace>, current: Option<&ConfigMap>, ca_pem: &str) -> Plan {
    if !ns.is_some_and(is_active) {
        return Plan::Nothing;
    }
    let data = desired_data(ca_pem);
    match current {
        None => Plan::Create(ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIG_MAP_NAME.into()),
                namespace: Some(ns_name.to_string()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }),
        // Being deleted: it is created again once it is gone.
        Some(cm) if cm.metadata.deletion_timestamp.is_some() => Plan::Nothing,
        Some(cm) if cm.data.as_ref() == Some(&data) => Plan::Nothing,
        Some(cm) => Plan::Update(ConfigMap { data: Some(data), ..cm.clone() }),
    }
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    if ctx.config.root_ca_pem.trim().is_empty() {
        tracing::warn!("no cluster CA certificate configured; kube-root-ca.crt is not published");
        return;
    }
    let params = ListParams::default().fields(format!("metadata.name={CONFIG_MAP_NAME}"));
    let (config_maps, reflect) = reflector::reflector::<ConfigMap>(ctx.client.clone(), None, params);
    let queue: WorkQueue<String> = WorkQueue::new();
    let feeder = {
        let (ctx, queue, config_maps) = (ctx.clone(), queue.clone(), config_maps.clone());
        async move {
            // Acting before the cache is full would "create" ConfigMaps that exist.
            config_maps.wait_synced().await;
            let mut namespaces = ctx.informers.namespaces.subscribe();
            let mut changes = config_maps.subscribe();
            loop {
                tokio::select! {
                    Some(c) = namespaces.recv() => {
                        if let Change::Applied(ns) = c && let Some(name) = ns.metadata.name.clone() {
                            queue.add(name);
                        }
                    }
                    Some(c) = changes.recv() => match c {
                        Change::Applied(cm) => {
                            if let Some(ns) = cm.metadata.namespace.clone() {
                                queue.add(ns);
                            }
                        }
                        // The namespace controller deletes it from a terminating
                        // namespace; by the time this looks again the cache knows the
                        // namespace is terminating (or gone) and nothing is recreated.
                        Change::Deleted(cm) => {
                            if let Some(ns) = cm.metadata.namespace.clone() {
                                queue.add_after(ns, RECREATE_DELAY);
                            }
                        }
                    },
                    else => return,
                }
            }
        }
    };
    let workers = run_workers("root-ca-publisher", queue, 1, move |ns: String| {
        let (ctx, config_maps) = (ctx.clone(), config_maps.clone());
        async move { reconcile(&ctx, &config_maps, &ns).await }
    });
    tokio::join!(reflect, feeder, workers);
}

async fn reconcile(ctx: &Context, config_maps: &Cache<ConfigMap>, ns: &str) -> Result<Action> {
    let namespace = ctx.informers.namespaces.get_named(None, ns);
    let current = config_maps.get_named(Some(ns), CONFIG_MAP_NAME);
    type Wrap = fn(String, skiff_api::client::Error) -> Error;
    let (what, result, wrap): (&str, _, Wrap) =
        match plan(ns, namespace.as_deref(), current.as_deref(), &ctx.config.root_ca_pem) {
            Plan::Nothing => return Ok(Action::Done),
            Plan::Create(cm) => ("created", ctx.client.create(Some(ns), &cm).await.map(drop), |namespace, source| {
                Error::Create { namespace, source }
            }),
            Plan::Update(cm) => {
                ("repaired", ctx.client.replace(Some(ns), CONFIG_MAP_NAME, &cm).await.map(drop), |namespace, source| {
                    Error::Update { namespace, source }
                })
            }
        };
    match result {
        Ok(()) => {
            tracing::info!(namespace = ns, configmap = CONFIG_MAP_NAME, action = what, "published the root CA");
            Ok(Action::Done)
        }
        // Our cache lagged: the watch event that follows brings the key back if needed.
        Err(e) if e.is_already_exists() || e.is_conflict() || e.is_not_found() => Ok(Action::Done),
        // The namespace started terminating meanwhile: nothing belongs in it any more.
        Err(e) if e.is_forbidden() && !ctx.informers.namespaces.get_named(None, ns).is_some_and(|n| is_active(&n)) => {
            Ok(Action::Done)
        }
        Err(source) => Err(wrap(ns.to_string(), source)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn ns() -> Namespace {
        Namespace { metadata: ObjectMeta { name: Some("team".into()), ..Default::default() }, ..Default::default() }
    }

    fn cm(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIG_MAP_NAME.into()),
                namespace: Some("team".into()),
                resource_version: Some("7".into()),
                labels: Some(BTreeMap::from([("mine".into(), "yes".into())])),
                ..Default::default()
            },
            data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_namespace_gets_the_config_map() {
        let Plan::Create(c) = plan("team", Some(&ns()), None, CA) else { panic!("expected a create") };
        assert_eq!(c.metadata.name.as_deref(), Some(CONFIG_MAP_NAME));
        assert_eq!(c.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(c.data, Some(BTreeMap::from([("ca.crt".to_string(), CA.to_string())])));
    }

    #[test]
    fn a_correct_config_map_is_left_alone() {
        assert_eq!(plan("team", Some(&ns()), Some(&cm(&[("ca.crt", CA)])), CA), Plan::Nothing);
    }

    #[test]
    fn a_changed_config_map_is_repaired_keeping_its_metadata() {
        for bad in [&[("ca.crt", "forged")][..], &[("ca.crt", CA), ("extra", "x")], &[]] {
            let Plan::Update(c) = plan("team", Some(&ns()), Some(&cm(bad)), CA) else { panic!("expected an update") };
            assert_eq!(c.data, Some(desired_data(CA)));
            assert_eq!(c.metadata.resource_version.as_deref(), Some("7"), "the update is conditional");
            assert_eq!(c.metadata.labels, cm(&[]).metadata.labels);
        }
        let mut no_data = cm(&[]);
        no_data.data = None;
        assert!(matches!(plan("team", Some(&ns()), Some(&no_data), CA), Plan::Update(_)));
    }

    #[test]
    fn gone_or_terminating_namespaces_and_deleting_config_maps_are_skipped() {
        assert_eq!(plan("team", None, None, CA), Plan::Nothing);
        let mut t = ns();
        t.status = Some(NamespaceStatus { phase: Some("Terminating".into()), ..Default::default() });
        assert_eq!(plan("team", Some(&t), None, CA), Plan::Nothing);
        let mut going = cm(&[("ca.crt", "old")]);
        going.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(plan("team", Some(&ns()), Some(&going), CA), Plan::Nothing);
    }
}
