//! Leader election on a coordination.k8s.io Lease (kube-lease-manager). Only the leader runs the
//! controllers, so only the leader writes; a replica that loses the lease stops its controllers
//! and exits so that Kubernetes restarts it as a follower.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::warn;

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
        .with_field_manager(field_manager(&settings.identity))
        .with_duration(secs)
        .with_grace((secs / 3).max(1))
        .build()
        .await
        .map_err(|e| Error::Config(format!("leader election: {e}")))?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(follow(manager, tx));
    Ok(rx)
}

/// The field manager of this replica's Lease writes (pure). It must differ between replicas:
/// a replica takes a free Lease by server-side apply without force, and only a field owned by
/// another manager makes the second of two simultaneous takers conflict. With one shared manager
/// both applies succeeded and two replicas led at once until the next renewal.
pub fn field_manager(identity: &str) -> String {
    // Field managers are at most 128 characters; pod names fit.
    let mut name = format!("kratos-operator-leader-{identity}");
    name.truncate(128);
    name
}

/// Publishes this replica's leadership until every receiver is gone (then releases the Lease).
///
/// A leader whose renewal fails steps down at once. kube-lease-manager's own `watch()` loop
/// logs the error and keeps reporting leadership while it retries; meanwhile the Lease can
/// expire and another replica take it, and two replicas would write to Kratos at once. Stepping
/// down makes the operator exit and restart as a follower, as on any loss of the Lease.
async fn follow(manager: LeaseManager, tx: watch::Sender<bool>) {
    let mut retry = Duration::from_millis(500);
    loop {
        tokio::select! {
            biased;
            () = tx.closed() => {
                let _ = manager.release().await;
                return;
            }
            changed = manager.changed() => match changed {
                Ok(leader) => {
                    retry = Duration::from_millis(500);
                    if tx.send(leader).is_err() {
                        let _ = manager.release().await;
                        return;
                    }
                }
                // A leader steps down; a follower retries.
                Err(e) if *tx.borrow() => {
                    warn!(error = %e, "cannot renew the leader Lease; stepping down");
                    let _ = tx.send(false);
                    return;
                }
                Err(e) => {
                    warn!(error = %e, ?retry, "leader election failed; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_writes_the_lease_as_its_own_field_manager() {
        assert_ne!(field_manager("replica-a"), field_manager("replica-b"));
        assert_eq!(field_manager("pod-1"), "kratos-operator-leader-pod-1");
        assert_eq!(field_manager(&"x".repeat(300)).len(), 128);
    }
}
