//! The node role: this machine as a Node of the cluster. It registers the Node (the
//! well-known labels; capacity, addresses, nodeInfo and conditions in its status),
//! renews the node's Lease in `kube-node-lease` every 10 s — the heartbeat the node
//! lifecycle controller watches — and reports its status again when a condition
//! changes, or every minute.
//!
//! The API being away is never fatal: every step is retried, and nothing here touches
//! the datapath or pods. What the objects hold is decided in `object` (pure) from
//! `facts` (the machine).

pub mod bootstrap;
pub mod facts;
pub mod object;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use skiff_api::{Client, Patch};
use tracing::{info, warn};

use self::facts::{MachineFacts, RuntimeFacts};
pub use self::object::NodeSettings;
use self::object::{LEASE_DURATION_S, LEASE_NAMESPACE};
use crate::cri::CriClient;

/// How often the Lease is renewed (a quarter of its duration, as upstream).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often a node that is not Ready looks again.
const NOT_READY_LOOK: Duration = Duration::from_secs(1);
/// How often the status is sent when nothing in it changed.
const STATUS_REPORT: Duration = Duration::from_secs(60);
/// How long to wait before trying a failed registration again.
const RETRY: Duration = Duration::from_secs(2);

type Result<T, E = skiff_api::client::Error> = std::result::Result<T, E>;

/// Runs the node role for ever: registers, then heartbeats.
pub async fn run(client: Client, settings: NodeSettings, cri: Option<CriClient>) {
    let (uid, mut reported) = loop {
        match register(&client, &settings, cri.as_ref()).await {
            Ok(registered) => break registered,
            Err(error) => {
                warn!(node = %settings.name, %error, "registering the node failed; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    info!(node = %settings.name, "node registered");
    let mut last_report = tokio::time::Instant::now();
    let mut last_look = tokio::time::Instant::now();
    let mut last_renewal: Option<tokio::time::Instant> = None;
    // A node that is not Ready yet (waiting for its pod network) looks every second, so
    // that it turns Ready as soon as it can; a Ready one every renewal.
    let mut tick = tokio::time::interval(NOT_READY_LOOK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if last_renewal.is_none_or(|t| t.elapsed() >= LEASE_RENEW) {
            match renew_lease(&client, &settings.name, uid.as_deref()).await {
                Ok(()) => last_renewal = Some(tokio::time::Instant::now()),
                Err(error) => warn!(node = %settings.name, %error, "renewing the node Lease failed; retrying"),
            }
        }
        if is_ready(&reported) && last_look.elapsed() < LEASE_RENEW {
            continue;
        }
        last_look = tokio::time::Instant::now();
        let now = Timestamp::now();
        let fresh = object::status(&settings, &read_facts(cri.as_ref()).await, Some(&reported), now);
        if conditions_changed(&reported, &fresh) || last_report.elapsed() >= STATUS_REPORT {
            match patch_status(&client, &settings.name, &fresh).await {
                Ok(()) => {
                    reported = fresh;
                    last_report = tokio::time::Instant::now();
                }
                Err(error) => warn!(node = %settings.name, %error, "reporting the node status failed; retrying"),
            }
        }
    }
}

fn is_ready(status: &NodeStatus) -> bool {
    status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Creates the Node (or brings the labels of an existing one up to date) and sends its
/// status. Returns the Node's uid and the status sent.
async fn register(
    client: &Client,
    settings: &NodeSettings,
    cri: Option<&CriClient>,
) -> Result<(Option<String>, NodeStatus)> {
    let facts = read_facts(cri).await;
    let node = match client.get_opt::<Node>(None, &settings.name).await? {
        Some(_) => {
            let labels = object::labels(settings, &facts);
            let annotations = object::annotations(settings);
            let patch = Patch::Merge(json!({"metadata": {"labels": labels, "annotations": annotations}}));
            client.patch::<Node>(None, &settings.name, None, &patch).await?
        }
        None => match client.create(None, &object::new_node(settings, &facts)).await {
            Ok(node) => node,
            // Another start of this agent won the race; take what it made.
            Err(e) if e.is_already_exists() => client.get::<Node>(None, &settings.name).await?,
            Err(e) => return Err(e),
        },
    };
    let status = object::status(settings, &facts, node.status.as_ref(), Timestamp::now());
    patch_status(client, &settings.name, &status).await?;
    Ok((node.metadata.uid, status))
}

/// The machine's facts, and the runtime's when the agent drives one.
async fn read_facts(cri: Option<&CriClient>) -> MachineFacts {
    let mut facts = MachineFacts::read();
    if let Some(cri) = cri {
        facts.runtime = runtime_facts(cri).await;
    }
    facts
}

/// Whether the runtime can run pods (it answers, and its RuntimeReady and NetworkReady
/// conditions hold: NetworkReady waits for the CNI configuration, which waits for the
/// node's podCIDR), and its images.
async fn runtime_facts(cri: &CriClient) -> RuntimeFacts {
    let not_ready = match cri.status().await {
        Err(e) => Some(format!("container runtime is down: {e}")),
        Ok(status) => status
            .conditions
            .iter()
            .find(|c| !c.status && (c.r#type == "RuntimeReady" || c.r#type == "NetworkReady"))
            .map(|c| {
                let what = if c.r#type == "NetworkReady" { "container runtime network" } else { "container runtime" };
                format!("{what} not ready: {}=false reason:{} message:{}", c.r#type, c.reason, c.message)
            }),
    };
    let images = match cri.list_images().await {
        Ok(images) => {
            images.into_iter().map(|i| (i.repo_digests.into_iter().chain(i.repo_tags).collect(), i.size)).collect()
        }
        Err(_) => Vec::new(),
    };
    RuntimeFacts { not_ready, images }
}

async fn patch_status(client: &Client, name: &str, status: &NodeStatus) -> Result<()> {
    // A merge patch replaces the lists (conditions, addresses) whole: this node owns them.
    let patch = Patch::Merge(json!({ "status": status }));
    client.patch::<Node>(None, name, Some("status"), &patch).await.map(drop)
}

/// Renews the Lease, creating it when it is missing (first start, or deleted).
async fn renew_lease(client: &Client, node: &str, node_uid: Option<&str>) -> Result<()> {
    let now = Timestamp::now();
    match client.get_opt::<Lease>(Some(LEASE_NAMESPACE), node).await? {
        None => client.create(Some(LEASE_NAMESPACE), &object::new_lease(node, node_uid, now)).await.map(drop),
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(node.into());
            spec.lease_duration_seconds = Some(LEASE_DURATION_S);
            spec.renew_time = Some(MicroTime(now));
            // The resourceVersion read above makes this a compare-and-swap; a conflict is
            // retried on the next tick.
            client.replace(Some(LEASE_NAMESPACE), node, &lease).await.map(drop)
        }
    }
}

/// Whether any condition's status differs between two reports.
fn conditions_changed(old: &NodeStatus, new: &NodeStatus) -> bool {
    let statuses = |s: &NodeStatus| -> Vec<(String, String)> {
        s.conditions.iter().flatten().map(|c| (c.type_.clone(), c.status.clone())).collect()
    };
    statuses(old) != statuses(new)
}
