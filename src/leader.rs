//! Leader election on a coordination.k8s.io Lease (kube-lease-manager). Only the leader runs the
//! controllers, so only the leader writes; a replica that loses the lease stops its controllers
//! and exits so that Kubernetes restarts it as a follower.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::{Error, Result};

/// Name of the Lease.
pub const LEASE_NAME: &str = "kratos-operator-leader";

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
}

/// Joins the election; the receiver says whether this replica leads.
pub async fn elect(client: Client, settings: &LeaseSettings) -> Result<watch::Receiver<bool>> {
    let secs = settings.duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(settings.namespace.clone())
        .with_identity(settings.identity.clone())
        .with_field_manager("kratos-operator/leader")
        .with_duration(secs)
        .with_grace((secs / 3).max(1))
        .build()
        .await
        .map_err(|e| Error::Config(format!("leader election: {e}")))?;
    let (rx, _task) = manager.watch().await;
    Ok(rx)
}

/// Waits until `rx` says this replica leads.
pub async fn wait_for_leadership(rx: &mut watch::Receiver<bool>) -> Result<()> {
    rx.wait_for(|leader| *leader)
        .await
        .map(|_| ())
        .map_err(|_| Error::Config("leader election stopped".into()))
}

/// Resolves when leadership is lost.
pub async fn lost(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|leader| !*leader).await;
}
