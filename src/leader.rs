//! Leader election on a coordination.k8s.io Lease (kube-lease-manager). Only the leader runs the
//! controllers, so only the leader writes; a replica that loses the lease stops its controllers
//! and exits so that Kubernetes restarts it as a follower. A leader that shuts down releases the
//! Lease, and the followers watch it, so that one of them takes over at once instead of waiting
//! for the Lease to expire.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{Error, Result};

/// Name of the Lease.
pub const LEASE_NAME: &str = "kratos-operator-leader";

/// How long [`Election::release`] may take (one Lease patch and one read).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Name of the Lease: [`LEASE_NAME`] unless several operators (shards) share a namespace,
    /// each with a Lease of its own.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
}

/// This replica's part in the election: whether it leads, and the way out.
#[derive(Debug)]
pub struct Election {
    /// Whether this replica leads.
    pub leading: watch::Receiver<bool>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Election {
    /// Leaves the election: a leader releases the Lease, so that a follower takes over at once.
    /// Bounded by [`RELEASE_TIMEOUT`]; returns whether the Lease was released in time.
    pub async fn release(self) -> bool {
        let _ = self.stop.send(());
        matches!(
            tokio::time::timeout(RELEASE_TIMEOUT, self.task).await,
            Ok(Ok(()))
        )
    }
}

/// Joins the election.
pub async fn elect(client: Client, settings: &LeaseSettings) -> Result<Election> {
    let manager = manager(client.clone(), settings).await?;
    let (tx, rx) = watch::channel(false);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(follow(client, settings.clone(), manager, tx, stopped));
    Ok(Election {
        leading: rx,
        stop,
        task,
    })
}

async fn manager(client: Client, settings: &LeaseSettings) -> Result<LeaseManager> {
    let secs = settings.duration.as_secs().max(2);
    LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(settings.namespace.clone())
        .with_identity(settings.identity.clone())
        .with_field_manager(field_manager(&settings.identity))
        .with_duration(secs)
        .with_grace((secs / 3).max(1))
        .build()
        .await
        .map_err(|e| Error::Config(format!("leader election: {e}")))
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

/// Whether a Lease is free to take (pure): nobody holds it, as after a leader released it.
pub fn is_released(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

/// Resolves when the Lease is seen becoming free (released by its holder) after the watch
/// started. A follower's kube-lease-manager sleeps until the holder's Lease would expire, so
/// without this a released Lease waited out its whole duration. The state the watch starts
/// with is ignored: the manager reads that itself, and reacting to it would restart the manager
/// before it could take the Lease. Watch errors are retried with the watcher's backoff.
async fn released(client: Client, namespace: &str, name: &str) {
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(leases, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(lease)) if is_released(&lease) => return,
            Ok(watcher::Event::Delete(_)) => return,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot watch the leader Lease"),
        }
    }
}

/// Publishes this replica's leadership until told to stop (then releases the Lease).
///
/// A leader whose renewal fails steps down at once. kube-lease-manager's own `watch()` loop
/// logs the error and keeps reporting leadership while it retries; meanwhile the Lease can
/// expire and another replica take it, and two replicas would write to Kratos at once. Stepping
/// down makes the operator exit and restart as a follower, as on any loss of the Lease.
async fn follow(
    client: Client,
    settings: LeaseSettings,
    mut manager: LeaseManager,
    tx: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut retry = Duration::from_millis(500);
    loop {
        let leading = *tx.borrow();
        tokio::select! {
            biased;
            _ = &mut stop => {
                if let Err(e) = manager.release().await {
                    warn!(error = %e, "cannot release the leader Lease");
                } else if leading {
                    info!(identity = %settings.identity, "released the leader Lease");
                }
                return;
            }
            changed = manager.changed() => match changed {
                Ok(leader) => {
                    retry = Duration::from_millis(500);
                    let _ = tx.send(leader);
                }
                // A leader steps down; a follower retries.
                Err(e) if leading => {
                    warn!(error = %e, "cannot renew the leader Lease; stepping down");
                    let _ = tx.send(false);
                    let _ = stop.await;
                    return;
                }
                Err(e) => {
                    warn!(error = %e, ?retry, "leader election failed; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(10));
                }
            },
            // A follower whose leader released the Lease starts over with a fresh manager,
            // whose first look reads the Lease instead of sleeping until it would expire.
            () = released(client.clone(), &settings.namespace, &settings.name), if !leading => {
                match manager_fresh(&client, &settings).await {
                    Some(fresh) => manager = fresh,
                    None => tokio::time::sleep(retry).await,
                }
            }
        }
    }
}

async fn manager_fresh(client: &Client, settings: &LeaseSettings) -> Option<LeaseManager> {
    match manager(client.clone(), settings).await {
        Ok(m) => Some(m),
        Err(e) => {
            warn!(error = %e, "cannot rejoin the election");
            None
        }
    }
}

/// Waits until this replica leads.
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
    use serde_json::json;

    #[test]
    fn every_replica_writes_the_lease_as_its_own_field_manager() {
        assert_ne!(field_manager("replica-a"), field_manager("replica-b"));
        assert_eq!(field_manager("pod-1"), "kratos-operator-leader-pod-1");
        assert_eq!(field_manager(&"x".repeat(300)).len(), 128);
    }

    #[test]
    fn a_lease_without_holder_is_released() {
        let lease = |v| serde_json::from_value::<Lease>(v).unwrap();
        assert!(is_released(&lease(json!({ "metadata": {} }))));
        assert!(is_released(&lease(json!({ "metadata": {}, "spec": {} }))));
        assert!(is_released(&lease(
            json!({ "metadata": {}, "spec": { "holderIdentity": "" } })
        )));
        assert!(!is_released(&lease(
            json!({ "metadata": {}, "spec": { "holderIdentity": "pod-a" } })
        )));
    }
}
