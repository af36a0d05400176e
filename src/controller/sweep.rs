//! Drift sweeps: every resync interval, the Kratos identities of the watched Identity objects are
//! listed by id, 500 per request, and compared with the objects; only objects whose Kratos
//! identity differs or is missing are reconciled. With nothing changed, a resync of N objects
//! costs ceil(N/500) list requests and no per-identity call, however many other identities
//! Kratos holds.

use std::{collections::HashMap, sync::Arc};

use futures::channel::mpsc::UnboundedSender;
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use tracing::{debug, warn};

use super::{Context, identity::plan};
use crate::{
    api::{Identity, conditions},
    kratos::{Identity as KratosIdentity, ListIdentitiesParams},
};

/// Whether the Kratos identity still matches what the operator last made it (pure). Compares
/// traits, state, both metadata (with the owner marker) and the schema id last written.
pub fn in_sync(obj: &Identity, kratos: &KratosIdentity) -> bool {
    let Some(uid) = obj.uid() else { return false };
    let Some(status) = obj.status.as_ref() else {
        return false;
    };
    let Some(schema_id) = status.schema_id.clone() else {
        return false;
    };
    let owner = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let desired = plan::desired(&obj.spec, schema_id, &owner, &uid, None);
    plan::differences(&desired, kratos, None).is_empty()
}

/// The objects a sweep checks (pure): Ready, current, not being deleted, with a Kratos id.
/// Objects not Ready are left to their own retries.
pub fn candidates(objects: &[Arc<Identity>]) -> Vec<(Arc<Identity>, String)> {
    objects
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter(|o| {
            let status = o.status.as_ref();
            let ready = status.is_some_and(|s| conditions::is_ready(&s.conditions));
            let current = status.is_some_and(|s| s.observed_generation == o.metadata.generation);
            ready && current
        })
        .filter_map(|o| Some((o.clone(), o.status.as_ref()?.identity_id.clone()?)))
        .collect()
}

/// The candidates whose Kratos identity is missing or differs (pure).
pub fn drifted(
    candidates: &[(Arc<Identity>, String)],
    kratos: &HashMap<String, KratosIdentity>,
) -> Vec<ObjectRef<Identity>> {
    candidates
        .iter()
        .filter(|(o, id)| kratos.get(id).is_none_or(|k| !in_sync(o, k)))
        .map(|(o, _)| ObjectRef::from_obj(&**o))
        .collect()
}

/// Ids per list request (Kratos v25+ allows at most 500 ids per request).
pub const IDS_PER_REQUEST: usize = 500;

async fn fetch(
    ctx: &Context,
    ids: &[String],
) -> Result<HashMap<String, KratosIdentity>, crate::kratos::Error> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_REQUEST) {
        let params = ListIdentitiesParams {
            page_size: Some(u32::try_from(IDS_PER_REQUEST).unwrap_or(500)),
            ids: chunk.to_vec(),
            ..Default::default()
        };
        let page = ctx.kratos.list_identities_page(&params).await?;
        out.extend(page.items.into_iter().map(|i| (i.id.clone(), i)));
    }
    Ok(out)
}

/// Runs sweeps until the trigger channel closes.
pub async fn run(
    ctx: Arc<Context>,
    store: Store<Identity>,
    trigger: UnboundedSender<ObjectRef<Identity>>,
) {
    let interval = ctx.settings.resync_interval;
    // The first sweep comes one interval after start; an empty store (not listed yet) only
    // means nothing is checked that time.
    loop {
        tokio::time::sleep(interval).await;
        if trigger.is_closed() {
            return;
        }
        let objects = store.state();
        let candidates = candidates(&objects);
        drop(objects);
        // One chunk at a time, so that at most 500 Kratos identities are held at once.
        let mut drifted_refs = Vec::new();
        let mut failed = false;
        for chunk in candidates.chunks(IDS_PER_REQUEST) {
            let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
            match fetch(&ctx, &ids).await {
                Ok(kratos) => drifted_refs.extend(drifted(chunk, &kratos)),
                Err(e) => {
                    warn!(error = %e, "drift sweep could not list Kratos identities; trying again next interval");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            continue;
        }
        ctx.metrics.drift_sweeps.inc();
        let drifted = drifted_refs;
        debug!(
            checked = candidates.len(),
            drifted = drifted.len(),
            "drift sweep"
        );
        for r in drifted {
            if trigger.unbounded_send(r).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(ready: bool, id: Option<&str>) -> Arc<Identity> {
        let mut v = json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": "a", "namespace": "ns", "uid": "u1", "generation": 1 },
            "spec": { "schemaId": "customer", "traits": { "email": "a@example.com" } },
            "status": { "observedGeneration": 1, "schemaId": "customer",
                "conditions": [ { "type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "r", "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z" } ] }
        });
        if let Some(id) = id {
            v["status"]["identityId"] = json!(id);
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn kratos(id: &str, email: &str) -> KratosIdentity {
        serde_json::from_value(json!({
            "id": id, "schema_id": "customer", "state": "active", "traits": { "email": email },
            "metadata_admin": { "kratos-operator.dev/owner": "ns/a", "kratos-operator.dev/uid": "u1" },
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn only_missing_or_changed_identities_are_reconciled() {
        let ready = candidates(&[obj(true, Some("k1"))]);
        assert_eq!(ready.len(), 1);
        let same = HashMap::from([("k1".to_string(), kratos("k1", "a@example.com"))]);
        assert!(drifted(&ready, &same).is_empty());
        let changed = HashMap::from([("k1".to_string(), kratos("k1", "b@example.com"))]);
        assert_eq!(drifted(&ready, &changed).len(), 1);
        assert_eq!(
            drifted(&ready, &HashMap::new()).len(),
            1,
            "deleted in Kratos"
        );
        assert!(
            candidates(&[obj(false, Some("k1"))]).is_empty(),
            "not Ready: left to its retries"
        );
        assert!(candidates(&[obj(true, None)]).is_empty());
    }
}
