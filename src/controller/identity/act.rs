//! Writes for one Identity reconcile: create or update the Kratos identity, verify addresses,
//! revoke sessions; and the finalizer's cleanup.

use std::sync::Arc;

use jiff::Timestamp;
use kube::{ResourceExt, runtime::controller::Action};
use tracing::info;

use super::{
    Blocked, observe,
    outcome::{Change, Outcome, Synced},
    plan::{self, Difference, Existing},
    report,
};
use crate::{
    Error, Result,
    api::identity::{DeletionPolicy, Identity},
    controller::Context,
    kratos::{self, Identity as KratosIdentity, JsonPatchOp},
};

/// InvalidSpec for traits the schema (or Kratos) refuses. A `schemaId`'s schema can change in
/// Kratos without any watch event (an IdentitySchemaRef's change is watched): such an object is
/// validated again every schema recheck interval.
fn schema_invalid(obj: &Identity, message: String) -> Blocked {
    let blocked = Blocked::stalled("InvalidSpec", message);
    if obj.spec.schema_ref.is_none() {
        blocked.rechecked(super::Recheck::Schema)
    } else {
        blocked
    }
}

/// InvalidSpec for a request Kratos refused: a refusal of the traits (Kratos names a pointer
/// into them) may end when the schema changes; any other (a password hash in a format Kratos
/// does not know) needs a change to the spec or its Secret.
fn kratos_invalid(obj: &Identity, reason: &str, pointer: Option<&str>) -> Blocked {
    let message = invalid_message(reason, pointer);
    if pointer.is_some_and(|p| p.trim_start_matches('#').starts_with("/traits")) {
        schema_invalid(obj, message)
    } else {
        Blocked::stalled("InvalidSpec", message)
    }
}

fn invalid_message(reason: &str, pointer: Option<&str>) -> String {
    match pointer {
        Some(p) => format!("Kratos rejected the identity at {p}: {reason}"),
        None => format!("Kratos rejected the identity: {reason}"),
    }
}

/// Brings Kratos in line with the spec.
pub async fn sync(obj: &Identity, ctx: &Context) -> Result<Outcome> {
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let owner = format!("{ns}/{}", obj.name_any());
    let status = obj.status.clone().unwrap_or_default();
    if let Some(why) = &obj.spec.undecodable {
        return Ok(Outcome::Blocked(Blocked::stalled(
            "InvalidSpec",
            why.clone(),
        )));
    }
    if let Err(message) = plan::check_limits(&obj.spec) {
        return Ok(Outcome::Blocked(Blocked::stalled("InvalidSpec", message)));
    }

    let schema = match observe::schema(obj, ctx).await? {
        Ok(s) => s,
        Err(b) => return Ok(Outcome::Blocked(b)),
    };
    if let Some(compiled) = &schema.compiled
        && let Err(errors) = compiled.validate_traits(&obj.spec.traits)
    {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Ok(Outcome::Blocked(schema_invalid(
            obj,
            format!(
                "traits do not match schema {}: {}",
                schema.schema_id,
                list.join("; ")
            ),
        )));
    }
    let identifier = schema
        .compiled
        .as_ref()
        .and_then(|c| c.display_identifier(&obj.spec.traits));
    let last_password = status
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref())
        .map(|p| p.secret_version.clone());

    let identifiers = schema
        .compiled
        .as_ref()
        .map(|c| c.identifier_values(&obj.spec.traits))
        .unwrap_or_default();
    // What the namespace may do: decided by the cluster admin on the Namespace.
    let policy = ctx.tenancy.get(&ctx.client, &ns).await?;
    if let Some(blocked) =
        plan::tenancy_refusal(&obj.spec, &policy, schema.compiled.is_some(), &identifiers)
    {
        return Ok(Outcome::Blocked(blocked));
    }
    let me = plan::Owner {
        uid: &uid,
        name: &owner,
    };

    // The Kratos identity this object manages, if it exists. The id in status (or in this
    // process' memory) only says where to look: the marker in Kratos decides whether it is ours.
    let known = status
        .identity_id
        .clone()
        .or_else(|| ctx.identity.known_ids.get(&uid));
    let mut current = match &known {
        Some(id) => match ctx.kratos.get_identity(id, &[]).await {
            Ok(i) if plan::ownership(&i, me).is_ours() => Some(i),
            Ok(_) => return Ok(Outcome::Blocked(not_owned())),
            Err(kratos::Error::NotFound { .. }) => {
                info!(%owner, identity = %id, "Kratos identity is gone; re-creating it");
                None
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let mut change = None;
    // Per-object mode looks the identifiers up before creating. With batched creates the
    // lookup happens only when a create conflicts: an identifier is unique in Kratos, so the
    // conflict is what finds an identity created before (and the lookup then resolves it).
    if current.is_none() && ctx.identity.creates.is_none() {
        match resolve(ctx, &identifiers, me, obj).await? {
            Ok(found) => {
                if let Some((identity, how)) = found {
                    current = Some(identity);
                    change = Some(how);
                }
            }
            Err(blocked) => return Ok(Outcome::Blocked(blocked)),
        }
    }

    // Without identifiers nothing in Kratos refuses a second create: an identity this object
    // created before a crash (or a create whose answer was lost) is found by its marker.
    if current.is_none()
        && identifiers.is_empty()
        && let Some(found) = by_marker(ctx, &uid, me).await?
    {
        current = Some(found);
        change = Some(Change::TookBack);
    }

    // The password is needed to create, or to re-import under policy Sync.
    let needs_password = current.is_none()
        || obj
            .spec
            .credentials
            .as_ref()
            .and_then(|c| c.password.as_ref())
            .and_then(|p| p.policy)
            == Some(crate::api::identity::PasswordPolicy::Sync);
    let password = if needs_password {
        match observe::password(obj, ctx).await? {
            Ok(p) => p,
            Err(b) => return Ok(Outcome::Blocked(b)),
        }
    } else {
        None
    };
    let password_version = password.as_ref().map(|p| p.version.clone());
    let desired = plan::desired(&obj.spec, schema.schema_id.clone(), &owner, &uid, password);
    let oidc: Vec<String> = desired.oidc.iter().map(|(p, _)| p.clone()).collect();

    if current.is_none() {
        let body = plan::create_body(&desired);
        let created = match &ctx.identity.creates {
            Some(batcher) => batcher.create(body).await,
            None => ctx.kratos.create_identity(&body).await.map(|i| i.id),
        };
        if created.is_err() && identifiers.is_empty() {
            // It may have reached Kratos all the same.
            ctx.identity.markers.create_failed(&uid);
        }
        match created {
            Ok(id) => {
                ctx.identity.markers.forget(&uid);
                // A new identity: addresses were imported verified and it has no sessions.
                return Ok(Outcome::Synced(Box::new(Synced {
                    identity_id: id,
                    state: desired.state.as_str().to_string(),
                    schema_id: desired.schema_id.clone(),
                    change: Change::Created,
                    identifier,
                    password_imported: password_version,
                    oidc,
                    active_sessions: 0,
                })));
            }
            Err(kratos::Error::Conflict { reason }) => {
                let found = if ctx.identity.creates.is_some() {
                    resolve(ctx, &identifiers, me, obj).await?
                } else {
                    Ok(None)
                };
                match found {
                    Ok(Some((identity, how))) => {
                        current = Some(identity);
                        change = Some(how);
                    }
                    Ok(None) => {
                        return Ok(Outcome::Blocked(Blocked::new(
                            "Conflict",
                            format!(
                                "Kratos already has an identity with one of these identifiers or addresses: {reason}"
                            ),
                        )));
                    }
                    Err(blocked) => return Ok(Outcome::Blocked(blocked)),
                }
            }
            Err(kratos::Error::Invalid { reason, pointer }) => {
                return Ok(Outcome::Blocked(kratos_invalid(
                    obj,
                    &reason,
                    pointer.as_deref(),
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let Some(mut existing) = current else {
        return Err(Error::MissingField("Kratos identity"));
    };
    // An identity found by a lookup (a list) comes without credentials; the OIDC links to add
    // or remove are decided on the identity itself.
    if existing.credentials.is_none() {
        existing = ctx.kratos.get_identity(&existing.id, &[]).await?;
    }
    // Links the operator imported and the spec no longer has are removed before the update
    // that drops them from the marker: a failure here leaves the marker, and the next
    // reconcile tries again.
    for link in plan::oidc_to_unlink(&desired, &existing) {
        match ctx
            .kratos
            .delete_identity_credentials(&existing.id, kratos::CredentialType::Oidc, Some(&link))
            .await
        {
            Ok(()) | Err(kratos::Error::NotFound { .. }) => {
                info!(%owner, identity = %existing.id, "unlinked an OIDC provider removed from the spec");
            }
            Err(kratos::Error::Invalid { reason, .. }) => {
                return Ok(Outcome::Blocked(Blocked::stalled(
                    "InvalidSpec",
                    format!("Kratos refused to remove an OIDC link that left the spec: {reason}"),
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }

    let mut password_imported = None;
    if change == Some(Change::TookBack) {
        // It was created by this object with the password of that moment.
        password_imported = password_version.clone();
    }
    let last = password_imported.as_deref().or(last_password.as_deref());
    let diffs = plan::differences(&desired, &existing, last);
    let mut identity = if diffs.is_empty() {
        change.get_or_insert(Change::Unchanged);
        existing
    } else {
        let body = plan::update_body(&desired, &existing, last);
        match ctx.kratos.update_identity(&existing.id, &body).await {
            Ok(updated) => {
                if diffs.contains(&Difference::Password) {
                    password_imported = password_version.clone();
                }
                if change.is_none() {
                    change = Some(Change::Updated(diffs));
                }
                updated
            }
            Err(kratos::Error::Conflict { reason }) => {
                return Ok(Outcome::Blocked(Blocked::new(
                    "Conflict",
                    format!(
                        "another Kratos identity already uses one of these identifiers or addresses: {reason}"
                    ),
                )));
            }
            Err(kratos::Error::Invalid { reason, pointer }) => {
                return Ok(Outcome::Blocked(kratos_invalid(
                    obj,
                    &reason,
                    pointer.as_deref(),
                )));
            }
            Err(e) => return Err(e.into()),
        }
    };

    if change == Some(Change::Adopted) {
        // Kratos has no compare-and-swap: two objects adopting one identity at once both write
        // their marker and the last write wins. Read it back; the loser backs off to Conflict
        // without touching the identity again (and its status never records the id).
        let written = ctx.kratos.get_identity(&identity.id, &[]).await?;
        if plan::ownership(&written, me) != plan::Ownership::Ours {
            return Ok(Outcome::Blocked(Blocked::new(
                "Conflict",
                plan::OWNED_ELSEWHERE,
            )));
        }
        identity = written;
    }

    let ops: Vec<JsonPatchOp> = plan::verify_address_ops(&desired, &identity, Timestamp::now());
    if !ops.is_empty() {
        identity = ctx.kratos.patch_identity(&identity.id, &ops).await?;
    }

    // Active ones only (flag set and not expired), as the sweep counts them.
    let sessions = ctx
        .kratos
        .list_identity_sessions(&identity.id, Some(true))
        .await?;
    let session_plan = plan::plan_sessions(&desired, &sessions);
    if session_plan.revoke_all {
        ctx.kratos.delete_identity_sessions(&identity.id).await?;
    }
    for id in &session_plan.disable {
        match ctx.kratos.disable_session(id).await {
            Ok(()) | Err(kratos::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }

    Ok(Outcome::Synced(Box::new(Synced {
        identity_id: identity.id.clone(),
        state: identity.state.as_str().to_string(),
        schema_id: identity.schema_id.clone(),
        change: change.unwrap_or(Change::Unchanged),
        identifier,
        password_imported,
        oidc,
        active_sessions: session_plan.active_after,
    })))
}

/// The Conflict of an object whose status (or memory) points at an identity it does not own.
fn not_owned() -> Blocked {
    Blocked::new(
        "Conflict",
        "the Kratos identity recorded in status.identityId is not owned by this object (its owner \
         marker names another object, or none); nothing is changed in Kratos. Clear \
         status.identityId to let the operator create or take back this object's own identity",
    )
}

/// Looks the identifiers up and decides between take back, adopt and conflict.
async fn resolve(
    ctx: &Context,
    identifiers: &[String],
    me: plan::Owner<'_>,
    obj: &Identity,
) -> Result<Result<Option<(KratosIdentity, Change)>, Blocked>> {
    let candidates = observe::candidates(ctx, identifiers).await?;
    Ok(
        match plan::resolve_existing(&candidates, me, obj.spec.adoption()) {
            Existing::None => Ok(None),
            Existing::TakeBack(id) => Ok(candidates
                .into_iter()
                .find(|i| i.id == id)
                .map(|i| (i, Change::TookBack))),
            Existing::Adopt(id) => Ok(candidates
                .into_iter()
                .find(|i| i.id == id)
                .map(|i| (i, Change::Adopted))),
            Existing::Conflict(message) => Err(Blocked::new("Conflict", message)),
        },
    )
}

/// The identity carrying `me`'s marker, looked up in the marker index (for objects without
/// identifiers); `None` when there is none, or it is gone, or it is not ours after all.
async fn by_marker(
    ctx: &Context,
    uid: &str,
    me: plan::Owner<'_>,
) -> Result<Option<KratosIdentity>> {
    let Some(id) = ctx.identity.markers.find(&ctx.kratos, uid).await? else {
        return Ok(None);
    };
    match ctx.kratos.get_identity(&id, &[]).await {
        Ok(identity) if plan::ownership(&identity, me).is_ours() => Ok(Some(identity)),
        Ok(_) | Err(kratos::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Finalizer cleanup: delete the Kratos identity (policy Delete) or release it (policy Orphan),
/// only after its marker in Kratos proved it is this object's: an id in status alone never
/// deletes or releases anything.
pub async fn cleanup(obj: Arc<Identity>, ctx: Arc<Context>) -> Result<Action> {
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let owner = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let me = plan::Owner {
        uid: &uid,
        name: &owner,
    };
    let status = obj.status.clone().unwrap_or_default();
    // The identity id from status (or this process' memory of it), if its marker proves it is
    // ours; otherwise (a lost status write, or a status that names someone else's identity) the
    // one carrying our marker among those with this object's identifiers.
    let recorded = match status
        .identity_id
        .clone()
        .or_else(|| ctx.identity.known_ids.get(&uid))
    {
        Some(id) => match ctx.kratos.get_identity(&id, &[]).await {
            Ok(identity) if plan::ownership(&identity, me).is_ours() => Some(identity),
            Ok(_) => {
                info!(%owner, "the Kratos identity in status is not owned by this object; it is left alone");
                report::event(
                    &ctx,
                    &obj,
                    true,
                    "NotOwned",
                    "Delete",
                    "The Kratos identity recorded in status is not owned by this object; it was neither deleted nor released".to_string(),
                );
                None
            }
            // Gone already: its identifiers may still name one of ours (a re-created one).
            Err(kratos::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let identity = match recorded {
        Some(identity) => Some(identity),
        None => {
            let compiled = match observe::schema(&obj, &ctx).await? {
                Ok(s) => s.compiled,
                Err(_) => None,
            };
            let identifiers = compiled
                .map(|c| c.identifier_values(&obj.spec.traits))
                .unwrap_or_default();
            if identifiers.is_empty() {
                by_marker(&ctx, &uid, me).await?
            } else {
                observe::candidates(&ctx, &identifiers)
                    .await?
                    .into_iter()
                    .find(|i| plan::ownership(i, me).is_ours())
            }
        }
    };
    let Some(identity) = identity else {
        return Ok(Action::await_change());
    };
    let id = identity.id.clone();
    match obj.spec.deletion_policy() {
        DeletionPolicy::Delete => {
            ctx.kratos.delete_identity(&id).await?;
            ctx.metrics.change("deleted");
            report::event(
                &ctx,
                &obj,
                false,
                "Deleted",
                "Delete",
                format!("Deleted Kratos identity {id}"),
            );
        }
        DeletionPolicy::Orphan => {
            let released = plan::released_metadata_admin(identity.metadata_admin.as_ref());
            let op = JsonPatchOp::replace(
                "/metadata_admin",
                released.unwrap_or(serde_json::Value::Null),
            );
            match ctx.kratos.patch_identity(&id, &[op]).await {
                Ok(_) | Err(kratos::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            report::event(
                &ctx,
                &obj,
                false,
                "Orphaned",
                "Orphan",
                format!("Released Kratos identity {id}; it stays in Kratos"),
            );
        }
    }
    Ok(Action::await_change())
}
