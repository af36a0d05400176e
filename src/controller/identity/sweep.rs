//! Drift sweeps: every resync interval, the Kratos identities of the watched Identity objects are
//! listed by id, 500 per request, and compared with the objects; only objects whose Kratos
//! identity differs or is missing are reconciled. The active sessions of all of Kratos are then
//! listed (a page of the client's page size, 500 by default, per request, each session with
//! its identity to learn the id), so that `status.activeSessions` and
//! `spec.sessions` (revokeBefore, revokeOnDeactivate) hold without a per-identity call: an
//! object whose session count differs, or which has a session its spec revokes, is reconciled.
//! With nothing changed, a resync of N objects costs ceil(N/500) identity list requests plus
//! ceil(S/500) session list requests (S: active sessions in Kratos, at least one request), and
//! no per-identity call, however many other identities Kratos holds.

use std::{collections::HashMap, sync::Arc};

use futures::{TryStreamExt, channel::mpsc::UnboundedSender};
use jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use tracing::{debug, warn};

use super::Context;
use super::desired;
use crate::{
    api::{Identity, conditions, identity::IdentityState},
    kratos::{Identity as KratosIdentity, ListIdentitiesParams, SessionExpand},
};

/// Whether the Kratos identity still matches what the operator last made it (pure). Compares
/// traits, state, both metadata (with the owner marker), the schema id last written and the
/// addresses the spec says are verified.
pub fn in_sync(obj: &Identity, kratos: &KratosIdentity) -> bool {
    let Some(uid) = obj.uid() else { return false };
    let Some(status) = obj.status.as_ref() else {
        return false;
    };
    let Some(schema_id) = status.schema_id.clone() else {
        return false;
    };
    let owner = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let desired = desired::desired(&obj.spec, schema_id, &owner, &uid, None);
    desired::differences(&desired, kratos, None).is_empty()
        && desired::addresses_to_verify(&desired, kratos).is_empty()
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
    select(candidates, |o, id| {
        kratos.get(id).is_none_or(|k| !in_sync(o, k))
    })
}

/// The candidates (object, Kratos id) for which `pred` holds, as references.
fn select(
    candidates: &[(Arc<Identity>, String)],
    pred: impl Fn(&Identity, &str) -> bool,
) -> Vec<ObjectRef<Identity>> {
    candidates
        .iter()
        .filter(|(o, id)| pred(o, id))
        .map(|(o, _)| ObjectRef::from_obj(&**o))
        .collect()
}

/// What a sweep knows of one identity's active sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveSessions {
    /// How many there are.
    pub count: i32,
    /// The earliest authentication among them (sessions without one are not counted here).
    pub earliest_authenticated_at: Option<Timestamp>,
}

impl ActiveSessions {
    /// Adds one active session authenticated at `at`.
    pub fn add(&mut self, at: Option<Timestamp>) {
        self.count = self.count.saturating_add(1);
        if let Some(at) = at {
            self.earliest_authenticated_at = Some(
                self.earliest_authenticated_at
                    .map_or(at, |earliest| earliest.min(at)),
            );
        }
    }
}

/// Whether the object's sessions call for a reconcile (pure): the count in status is not the
/// count in Kratos, a session was authenticated before `sessions.revokeBefore`, or an inactive
/// identity with `revokeOnDeactivate` has one. The same rules as the reconcile's session plan.
pub fn sessions_drifted(obj: &Identity, sessions: ActiveSessions) -> bool {
    let spec = obj.spec.sessions.as_ref();
    let recorded = obj.status.as_ref().and_then(|s| s.active_sessions);
    let revoke_all = obj.spec.state() == IdentityState::Inactive
        && spec.and_then(|s| s.revoke_on_deactivate).unwrap_or(false);
    let too_old = match (
        spec.and_then(|s| s.revoke_before.as_ref()),
        sessions.earliest_authenticated_at,
    ) {
        (Some(cutoff), Some(earliest)) => earliest < cutoff.0,
        _ => false,
    };
    recorded.unwrap_or(0) != sessions.count || too_old || (revoke_all && sessions.count > 0)
}

/// The candidates whose sessions drifted (pure); `sessions` holds every identity with an active
/// session.
pub fn sessions_drifted_objects(
    candidates: &[(Arc<Identity>, String)],
    sessions: &HashMap<String, ActiveSessions>,
) -> Vec<ObjectRef<Identity>> {
    select(candidates, |o, id| {
        sessions_drifted(o, sessions.get(id).copied().unwrap_or_default())
    })
}

/// Every active session of Kratos, by identity id (the identity is expanded to learn its id).
async fn active_sessions(
    ctx: &Context,
) -> Result<HashMap<String, ActiveSessions>, crate::kratos::Error> {
    let mut out: HashMap<String, ActiveSessions> = HashMap::new();
    let mut sessions = Box::pin(
        ctx.kratos
            .list_sessions(Some(true), &[SessionExpand::Identity]),
    );
    while let Some(session) = sessions.try_next().await? {
        if let Some(identity) = session.identity.as_ref() {
            out.entry(identity.id.clone())
                .or_default()
                .add(session.authenticated_at);
        }
    }
    Ok(out)
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
        if !candidates.is_empty() {
            match active_sessions(&ctx).await {
                Ok(sessions) => {
                    let known: std::collections::HashSet<ObjectRef<Identity>> =
                        drifted_refs.iter().cloned().collect();
                    drifted_refs.extend(
                        sessions_drifted_objects(&candidates, &sessions)
                            .into_iter()
                            .filter(|r| !known.contains(r)),
                    );
                }
                Err(e) => {
                    warn!(error = %e, "drift sweep could not list Kratos sessions; trying again next interval");
                    continue;
                }
            }
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

    fn with_sessions(
        spec_sessions: serde_json::Value,
        state: &str,
        recorded: Option<i32>,
    ) -> Identity {
        let mut o = (*obj(true, Some("k1"))).clone();
        let mut v = serde_json::to_value(&o).unwrap();
        v["spec"]["sessions"] = spec_sessions;
        v["spec"]["state"] = json!(state);
        if let Some(n) = recorded {
            v["status"]["activeSessions"] = json!(n);
        }
        o = serde_json::from_value(v).unwrap();
        o
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn session_counts_and_revocations_are_drift_like_the_reconcile_sees_them() {
        let none = ActiveSessions::default();
        let mut two = ActiveSessions::default();
        two.add(Some(at("2026-03-01T00:00:00Z")));
        two.add(None);
        assert_eq!(two.count, 2);
        assert_eq!(
            two.earliest_authenticated_at,
            Some(at("2026-03-01T00:00:00Z"))
        );

        let plain = with_sessions(json!(null), "active", Some(2));
        assert!(!sessions_drifted(&plain, two), "count matches");
        assert!(sessions_drifted(&plain, none), "sessions ended");
        let never_counted = with_sessions(json!(null), "active", None);
        assert!(!sessions_drifted(&never_counted, none));
        assert!(sessions_drifted(&never_counted, two), "a login since");

        let cutoff = with_sessions(
            json!({"revokeBefore": "2026-04-01T00:00:00Z"}),
            "active",
            Some(2),
        );
        assert!(
            sessions_drifted(&cutoff, two),
            "a session from before the cutoff"
        );
        let late = with_sessions(
            json!({"revokeBefore": "2026-02-01T00:00:00Z"}),
            "active",
            Some(2),
        );
        assert!(!sessions_drifted(&late, two));

        let off = with_sessions(json!({"revokeOnDeactivate": true}), "inactive", Some(0));
        assert!(
            sessions_drifted(&off, two),
            "an inactive identity keeps a session"
        );
        assert!(!sessions_drifted(&off, none));
    }

    #[test]
    fn an_address_un_verified_in_kratos_is_drift() {
        let mut v = serde_json::to_value(&*obj(true, Some("k1"))).unwrap();
        v["spec"]["verifiedAddresses"] = json!([{ "value": "a@example.com", "via": "email" }]);
        let o: Arc<Identity> = Arc::new(serde_json::from_value(v).unwrap());
        let with_address = |verified: bool| {
            let mut k = serde_json::to_value(kratos("k1", "a@example.com")).unwrap();
            k["verifiable_addresses"] = json!([{ "value": "a@example.com", "via": "email",
                "verified": verified, "status": if verified { "completed" } else { "pending" } }]);
            serde_json::from_value::<KratosIdentity>(k).unwrap()
        };
        assert!(in_sync(&o, &with_address(true)));
        assert!(!in_sync(&o, &with_address(false)));
    }

    #[test]
    fn only_candidates_with_drifted_sessions_are_listed() {
        let a = obj(true, Some("k1"));
        let c = candidates(&[a]);
        let mut sessions = HashMap::new();
        assert!(
            sessions_drifted_objects(&c, &sessions).is_empty(),
            "none recorded, none found"
        );
        let mut one = ActiveSessions::default();
        one.add(None);
        sessions.insert("other".to_string(), one);
        assert!(
            sessions_drifted_objects(&c, &sessions).is_empty(),
            "another identity's"
        );
        sessions.insert("k1".to_string(), one);
        assert_eq!(sessions_drifted_objects(&c, &sessions).len(), 1);
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
