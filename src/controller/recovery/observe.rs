//! Reads for one RecoveryRequest reconcile: the target Secret (what it says about itself, never
//! its data) and the Kratos identity the request is for.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::plan::{
    ANNOTATION_EXPIRES_AT, ANNOTATION_GENERATION, ANNOTATION_IDENTITY_ID, ANNOTATION_ISSUED_AT,
    IdentityResolution, KEY_CODE, KEY_LINK, SecretState,
};
use crate::{
    Error, Result,
    api::{GuardedIdentity, recovery_request::RecoveryRequest},
    controller::{
        Context,
        identity::plan::{Owner, Ownership, ownership},
    },
};

/// What `secret` says about itself, relative to the request with uid `owner_uid`.
pub fn secret_state(secret: &Secret, owner_uid: &str) -> SecretState {
    let annotations = secret.annotations();
    let annotation = |key: &str| annotations.get(key).map(|v| v.trim().to_string());
    let time = |key: &str| annotation(key).and_then(|v| v.parse::<Timestamp>().ok());
    let ours = secret
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid && r.kind == "RecoveryRequest");
    let has_data = secret.data.as_ref().is_some_and(|d| {
        [KEY_LINK, KEY_CODE]
            .iter()
            .any(|k| d.get(*k).is_some_and(|v| !v.0.is_empty()))
    });
    SecretState {
        ours,
        issued_generation: annotation(ANNOTATION_GENERATION).and_then(|v| v.parse().ok()),
        issued_at: time(ANNOTATION_ISSUED_AT),
        expires_at: time(ANNOTATION_EXPIRES_AT),
        identity_id: annotation(ANNOTATION_IDENTITY_ID).filter(|v| !v.is_empty()),
        has_data,
    }
}

/// Reads the Secret `name` straight from the API server (never from a cache: its annotation is
/// what keeps issuing one-shot when a status write was lost).
pub async fn secret(
    ctx: &Context,
    ns: &str,
    name: &str,
    owner_uid: &str,
) -> Result<Option<SecretState>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .get_opt(name)
        .await?
        .map(|s| secret_state(&s, owner_uid)))
}

/// The Kratos identity of the request: `spec.identityId` where the namespace allows recovery by
/// id, or the Kratos identity of the referenced Identity, once its owner marker in Kratos proves
/// that it belongs to that Identity (its `status.identityId` alone proves nothing: a tenant can
/// write status).
pub async fn identity(ctx: &Context, obj: &RecoveryRequest) -> Result<IdentityResolution> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    if let Some(id) = &obj.spec.identity_id {
        let policy = ctx.tenancy.get(&ctx.client, &ns).await?;
        return Ok(match policy.check_recovery_by_id() {
            Ok(()) => IdentityResolution::Resolved(id.clone()),
            Err(message) => IdentityResolution::Forbidden(message),
        });
    }
    let Some(r) = &obj.spec.identity_ref else {
        return Ok(IdentityResolution::NotReady(
            "spec names no identity".into(),
        ));
    };
    let api: Api<GuardedIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(GuardedIdentity(identity)) = api.get_opt(&r.name).await? else {
        return Ok(IdentityResolution::NotReady(format!(
            "Identity {} does not exist in namespace {ns}",
            r.name
        )));
    };
    if identity.metadata.deletion_timestamp.is_some() {
        return Ok(IdentityResolution::NotReady(format!(
            "Identity {} is being deleted",
            r.name
        )));
    }
    let Some(id) = identity.status.as_ref().and_then(|s| s.identity_id.clone()) else {
        let why = identity
            .status
            .as_ref()
            .and_then(|s| crate::api::conditions::ready(&s.conditions))
            .map(|c| format!(" ({}: {})", c.reason, c.message))
            .unwrap_or_default();
        return Ok(IdentityResolution::NotReady(format!(
            "Identity {} has no Kratos identity yet{why}",
            r.name
        )));
    };
    let uid = identity.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let owner = format!("{ns}/{}", r.name);
    let me = Owner {
        uid: &uid,
        name: &owner,
    };
    match ctx.kratos.get_identity(&id, &[]).await {
        Ok(k) if ownership(&k, me) == Ownership::Ours => Ok(IdentityResolution::Resolved(id)),
        // Not (yet) marked as this Identity's: its own reconcile either fixes the marker or
        // reports the Conflict. Nothing is issued meanwhile.
        Ok(_) => Ok(IdentityResolution::NotReady(format!(
            "Identity {} does not own the Kratos identity recorded in its status; waiting until it is Ready",
            r.name
        ))),
        Err(crate::kratos::Error::NotFound { .. }) => Ok(IdentityResolution::NotReady(format!(
            "the Kratos identity of Identity {} does not exist (yet); waiting until it is Ready",
            r.name
        ))),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_ownership_annotations_and_data_presence() {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {
                "name": "s",
                "annotations": {
                    ANNOTATION_GENERATION: "3",
                    ANNOTATION_ISSUED_AT: "2026-01-01T00:00:00Z",
                    ANNOTATION_EXPIRES_AT: "2026-01-01T01:00:00Z",
                    ANNOTATION_IDENTITY_ID: "id-1"
                },
                "ownerReferences": [{
                    "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
                    "name": "r", "uid": "u-1", "controller": true
                }]
            },
            "data": { KEY_LINK: "aHR0cDovL3g=" }
        }))
        .unwrap();
        let state = secret_state(&secret, "u-1");
        assert!(state.ours && state.has_data);
        assert_eq!(state.issued_generation, Some(3));
        assert_eq!(
            state.expires_at,
            Some("2026-01-01T01:00:00Z".parse().unwrap())
        );
        assert_eq!(
            state.issued_at,
            Some("2026-01-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(state.identity_id.as_deref(), Some("id-1"));
        assert!(!secret_state(&secret, "other").ours);

        let bare: Secret = serde_json::from_value(
            json!({ "metadata": { "name": "s" }, "data": {"other": "eA=="} }),
        )
        .unwrap();
        assert_eq!(secret_state(&bare, "u-1"), SecretState::default());
    }
}
