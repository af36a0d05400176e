//! Drift sweeps: as soon as the caches are synced, then every resync interval, the Kratos
//! identities of the watched Identity objects are listed by id, 500 per request, and compared
//! with the objects; only objects whose Kratos identity differs or is missing are reconciled.
//! What Kratos cannot show is compared with the cluster: the IdentitySchemaRef's digest, and on
//! a process's first sweep the password Secrets (see [`trust`]). Active sessions are then
//! observed ([`session_sweep`]), so that `status.activeSessions` and `spec.sessions`
//! (revokeBefore, revokeOnDeactivate) hold without a per-identity call for identities without
//! sessions: an object whose session count differs, or which has a session its spec revokes,
//! is reconciled. With nothing changed, a resync of N objects costs ceil(N/500) identity list
//! requests, one session list request (the first sweep: ceil(S/500), S active sessions in
//! Kratos), and one request per object with active sessions (or the whole session list, when
//! that is cheaper), however many other identities and sessions Kratos holds.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::reflector::{ObjectRef, Store},
};
use tracing::{debug, warn};

use super::{
    Context, desired, late, markers,
    session_sweep::{self, ActiveSessions},
    trust,
};
use crate::{
    api::{
        Identity, IdentitySchemaRef, conditions,
        identity::{IdentityState, PasswordPolicy},
    },
    kratos::{Identity as KratosIdentity, ListIdentitiesParams},
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

/// The candidates that a sweep of Kratos cannot judge (pure): those whose IdentitySchemaRef
/// (`schema_ref`: from the cache, by namespace and name) reports a digest other than the one
/// their traits were validated against, and, when `secrets` is given (`namespace/name` to the
/// version, see [`trust::secret_version`]), those whose password Secret under policy `Sync` is
/// not the one they imported.
pub fn cluster_drifted(
    candidates: &[(Arc<Identity>, String)],
    schema_ref: impl Fn(&str, &str) -> Option<Arc<IdentitySchemaRef>>,
    secrets: Option<&HashMap<String, String>>,
) -> Vec<ObjectRef<Identity>> {
    select(candidates, |o, _| {
        let ns = o.namespace().unwrap_or_default();
        let schema = o
            .spec
            .schema_ref
            .as_ref()
            .and_then(|r| schema_ref(&ns, &r.name))
            .is_some_and(|r| trust::schema_matters(o, &r));
        let secret = secrets.is_some_and(|secrets| {
            password_secret(o).is_some_and(|name| {
                let version = secrets.get(&format!("{ns}/{name}"));
                trust::secret_matters(o, version.map(String::as_str))
            })
        });
        schema || secret
    })
}

/// The name of the Secret `obj` imports its password from under policy `Sync`.
fn password_secret(obj: &Identity) -> Option<&str> {
    let password = obj.spec.credentials.as_ref()?.password.as_ref()?;
    if password.policy != Some(PasswordPolicy::Sync) {
        return None;
    }
    password
        .secret_ref
        .as_ref()
        .or(password.hashed_secret_ref.as_ref())
        .map(|r| r.name.as_str())
}

/// The versions of the Secrets of the namespaces `candidates` import passwords from, by
/// `namespace/name`, listed (metadata only, 500 per request) from the API server: a Secret
/// changed while the operator was down is not announced by its watch once the watch's first
/// list has gone by before the Identities were known. `None` when no candidate needs one.
async fn secret_versions(
    ctx: &Context,
    candidates: &[(Arc<Identity>, String)],
) -> Result<Option<HashMap<String, String>>, kube::Error> {
    let namespaces: std::collections::BTreeSet<String> = candidates
        .iter()
        .filter(|(o, _)| password_secret(o).is_some())
        .filter_map(|(o, _)| o.namespace())
        .collect();
    if namespaces.is_empty() {
        return Ok(None);
    }
    let mut out = HashMap::new();
    for ns in namespaces {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let mut params = ListParams::default().limit(500);
        loop {
            let page = api.list_metadata(&params).await?;
            for s in &page.items {
                if let (Some(uid), Some(rv)) = (
                    s.metadata.uid.as_deref(),
                    s.metadata.resource_version.as_deref(),
                ) {
                    out.insert(
                        format!("{ns}/{}", s.name_any()),
                        trust::secret_version(uid, rv),
                    );
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    Ok(Some(out))
}

/// One sweep: the objects to reconcile, or `None` when Kratos (or the API server) could not
/// be asked (tried again next interval). `first`: this process's first sweep, which also
/// compares password Secrets with what was imported (later changes arrive through the watch).
async fn sweep(
    ctx: &Context,
    store: &Store<Identity>,
    first: bool,
    sessions: &mut session_sweep::Cursor,
) -> Option<(usize, Vec<ObjectRef<Identity>>)> {
    let objects = store.state();
    let candidates = candidates(&objects);
    drop(objects);
    let secrets = if first {
        match secret_versions(ctx, &candidates).await {
            Ok(secrets) => secrets,
            Err(e) => {
                warn!(error = %e, "drift sweep could not list Secrets; trying again next interval");
                return None;
            }
        }
    } else {
        None
    };
    let mut drifted_refs = cluster_drifted(
        &candidates,
        |ns, name| ctx.caches.schema_ref(ns, name),
        secrets.as_ref(),
    );
    // One chunk at a time, so that at most 500 Kratos identities are held at once.
    for chunk in candidates.chunks(IDS_PER_REQUEST) {
        let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
        match fetch(ctx, &ids).await {
            Ok(kratos) => drifted_refs.extend(drifted(chunk, &kratos)),
            Err(e) => {
                warn!(error = %e, "drift sweep could not list Kratos identities; trying again next interval");
                return None;
            }
        }
    }
    if !candidates.is_empty() {
        match session_sweep::observe(ctx, sessions, &candidates).await {
            Ok(sessions) => {
                drifted_refs.extend(sessions_drifted_objects(&candidates, &sessions));
            }
            Err(e) => {
                warn!(error = %e, "drift sweep could not list Kratos sessions; trying again next interval");
                return None;
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    drifted_refs.retain(|r| seen.insert(r.clone()));
    Some((candidates.len(), drifted_refs))
}

/// Removes the identities that creates committed after their settle time left behind
/// ([`late`]): one list of all Kratos identities, only while a suspect is due.
async fn late_creates(ctx: &Context, store: &Store<Identity>, namespace: Option<&str>) {
    let due = ctx.state.late.due(std::time::Instant::now(), namespace);
    if due.is_empty() {
        return;
    }
    let objects = store.state();
    // Indexed once: a mass create makes thousands of suspects.
    let by_uid: HashMap<&str, &Arc<Identity>> = objects
        .iter()
        .filter_map(|o| Some((o.metadata.uid.as_deref()?, o)))
        .collect();
    let find = |uid: &str| by_uid.get(uid).copied();
    // Only where a late create can still leave something: one list of every identity is paid
    // for those alone.
    let at_risk: std::collections::HashSet<String> = due
        .into_iter()
        .filter(|uid| late::at_risk(find(uid).map(|o| &**o)))
        .collect();
    if at_risk.is_empty() {
        return;
    }
    let marked = match markers::marked_by(&ctx.kratos, &at_risk).await {
        Ok(marked) => marked,
        Err(e) => {
            warn!(error = %e, "drift sweep could not list Kratos identities for late creates; trying again next interval");
            return;
        }
    };
    for (uid, ids) in marked {
        let object = find(&uid);
        let used = object.map(|o| {
            o.status
                .as_ref()
                .and_then(|s| s.identity_id.clone())
                .or_else(|| ctx.state.known_ids.get(&uid))
        });
        let verdict = match &used {
            None => late::Object::Gone,
            Some(used) => late::Object::Uses(used.as_deref()),
        };
        for id in late::left_over(&ids, verdict) {
            match ctx.kratos.delete_identity(&id).await {
                Ok(()) => warn!(
                    identity_id = %id,
                    object.uid = %uid,
                    object_gone = object.is_none(),
                    "deleted a Kratos identity that a create committed after its settle time: its \
                     object is gone or uses another identity"
                ),
                Err(e) => {
                    warn!(identity_id = %id, error = %e, "cannot delete a late-created identity; trying again next interval")
                }
            }
        }
    }
}

/// Runs sweeps until the trigger channel closes: the first as soon as the caches are synced
/// (a restarted operator trusted the synced statuses until then, see [`trust`]), then one every
/// resync interval.
pub async fn run(
    ctx: Arc<Context>,
    store: Store<Identity>,
    namespace: Option<String>,
    trigger: UnboundedSender<ObjectRef<Identity>>,
) {
    let interval = ctx.settings.resync_interval;
    while !ctx.caches.synced().await {
        if trigger.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first = true;
    let mut sessions = session_sweep::Cursor::default();
    loop {
        if trigger.is_closed() {
            return;
        }
        if !first {
            late_creates(&ctx, &store, namespace.as_deref()).await;
        }
        if let Some((checked, drifted)) = sweep(&ctx, &store, first, &mut sessions).await {
            first = false;
            ctx.metrics.drift_sweeps.inc();
            debug!(checked, drifted = drifted.len(), "drift sweep");
            for r in drifted {
                if trigger.unbounded_send(r).is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(interval).await;
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

    fn at(s: &str) -> jiff::Timestamp {
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
    fn a_changed_schema_digest_or_sync_secret_is_drift_the_kratos_list_cannot_show() {
        let mut v = serde_json::to_value(&*obj(true, Some("k1"))).unwrap();
        v["metadata"]["finalizers"] = json!([crate::api::FINALIZER]);
        v["spec"]["schemaRef"] = json!({ "name": "customer" });
        v["spec"]["credentials"] = json!({ "password": {
            "secretRef": { "name": "pw", "key": "p" }, "policy": "Sync" } });
        v["status"]["schemaDigest"] = json!("sha256:aa");
        v["status"]["credentials"] = json!({ "password": { "secretVersion": "s1/7" } });
        let o: Arc<Identity> = Arc::new(serde_json::from_value(v).unwrap());
        let c = candidates(&[o]);
        let schema_ref = |digest: &'static str| {
            move |ns: &str, name: &str| {
                assert_eq!((ns, name), ("ns", "customer"));
                Some(Arc::new(
                    serde_json::from_value::<IdentitySchemaRef>(json!({
                        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef",
                        "metadata": { "name": "customer", "namespace": "ns" },
                        "spec": { "schemaId": "customer" }, "status": { "digest": digest } }))
                    .unwrap(),
                ))
            }
        };
        let same = HashMap::from([("ns/pw".to_string(), "s1/7".to_string())]);
        let changed = HashMap::from([("ns/pw".to_string(), "s1/8".to_string())]);
        assert!(cluster_drifted(&c, schema_ref("sha256:aa"), Some(&same)).is_empty());
        assert!(cluster_drifted(&c, schema_ref("sha256:aa"), None).is_empty());
        assert_eq!(cluster_drifted(&c, schema_ref("sha256:bb"), None).len(), 1);
        assert_eq!(
            cluster_drifted(&c, schema_ref("sha256:aa"), Some(&changed)).len(),
            1
        );
        assert_eq!(
            cluster_drifted(&c, schema_ref("sha256:aa"), Some(&HashMap::new())).len(),
            1,
            "the Secret is gone"
        );
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
