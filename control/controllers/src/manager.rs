//! The composition root of the controller manager: campaigns for the leader Lease and,
//! while leading, starts the shared informers, every controller in
//! `controllers::CONTROLLERS` and the scheduler. skiff-control calls `run` with the
//! clients it built (over whatever transport it likes) and nothing else.
//!
//! It must not hold reconcile logic: that lives in the controllers and the scheduler.

use std::sync::Arc;

use skiff_api::Client;

use crate::controllers::{CONTROLLERS, Context};
use crate::events::Recorder;
use crate::informers::Informers;
use crate::leader::LeaderElection;

pub use crate::controllers::Config;

/// The name of the leader-election Lease (in kube-system).
pub const LEASE_NAME: &str = "skiff-controller-manager";
/// The `source.component` of the controllers' events.
const EVENT_SOURCE: &str = "skiff-controller-manager";

/// The API clients, one per identity, as upstream runs the controller manager and the
/// scheduler under users of their own (`system:kube-controller-manager`,
/// `system:kube-scheduler`).
#[derive(Debug, Clone)]
pub struct Clients {
    pub controllers: Client,
    pub scheduler: Client,
}

/// Campaigns for the controller-manager Lease and, while leading, runs the informers,
/// every controller and the scheduler. Losing the Lease stops them all; they start
/// again from fresh caches if this replica wins it back.
pub async fn run(clients: Clients, config: Config) {
    let election = LeaderElection::new(clients.controllers.clone(), LEASE_NAME, &config.identity);
    election
        .run(move || {
            let clients = clients.clone();
            let config = config.clone();
            async move { lead(clients, config).await }
        })
        .await;
}

async fn lead(clients: Clients, config: Config) {
    let client = clients.controllers;
    let mut tasks = tokio::task::JoinSet::new();
    let informers = Informers::start(&client, &mut tasks);
    informers.wait_synced().await;
    let events = Recorder::new(client.clone(), EVENT_SOURCE);
    tasks.spawn(crate::scheduler::run::run(clients.scheduler, informers.clone()));
    let ctx = Arc::new(Context { client, informers, config, events });
    for (name, start) in CONTROLLERS {
        tracing::info!(controller = name, "starting controller");
        tasks.spawn(start(ctx.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            tracing::error!(error = %e, "a controller task panicked");
        }
    }
}
