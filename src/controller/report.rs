//! Reporting shared by every controller: status written by server-side apply, Events published
//! through the background publishers.

use kube::{
    Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::NamespaceResourceScope,
    runtime::events::{Event, EventType},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::Context;
use crate::{
    Result,
    api::{
        FIELD_MANAGER, Identity, IdentitySchemaRef, RecoveryRequest,
        conditions::{WithConditions, same_status},
    },
};

/// A kind whose status the operator computes and writes: every kind's status goes the same
/// way, compared by [`unchanged`] and written by [`update_status`] (the Identity controller
/// queues its writes first, see [`super::identity::status`]).
pub trait Reported: StatusOwner {
    /// The status type.
    type Status: WithConditions + Serialize;
    /// The status the object has now.
    fn current_status(&self) -> Option<&Self::Status>;
}

impl Reported for Identity {
    type Status = crate::api::identity::IdentityStatus;
    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl Reported for RecoveryRequest {
    type Status = crate::api::recovery_request::RecoveryRequestStatus;
    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl Reported for IdentitySchemaRef {
    type Status = crate::api::schema_ref::IdentitySchemaRefStatus;
    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

/// Whether `status` says nothing `obj`'s current status does not (condition timestamps and
/// order aside; every other field counts, see [`same_status`]).
pub fn unchanged<K: Reported>(obj: &K, status: &K::Status) -> bool {
    obj.current_status()
        .is_some_and(|current| same_status(current, status))
}

/// Writes `status` unless it is [`unchanged`]. Returns whether it wrote.
pub async fn update_status<K: Reported>(
    ctx: &Context,
    obj: &K,
    status: &K::Status,
) -> Result<bool> {
    if unchanged(obj, status) {
        return Ok(false);
    }
    apply_status(ctx, obj, status).await?;
    Ok(true)
}

/// Applies `status` to `obj`'s status subresource (field manager `kratos-operator`, forced).
/// When it cannot be stored a Warning Event says so: the status is where every outcome is
/// reported, and an object at etcd's size limit ("etcdserver: request is too large") has no room
/// for it.
pub async fn apply_status<K: StatusOwner, S: Serialize>(
    ctx: &Context,
    obj: &K,
    status: &S,
) -> Result<()> {
    if let Err(e) = apply_status_returning_version(ctx, obj, status).await {
        status_not_written(ctx, obj, &e);
        return Err(e.into());
    }
    Ok(())
}

/// The Warning Event for a status that cannot be written.
pub fn status_not_written<K: StatusOwner>(ctx: &Context, obj: &K, error: &kube::Error) {
    event(
        ctx,
        obj,
        true,
        "StatusNotWritten",
        "Reconcile",
        format!("cannot write the status: {error}"),
    );
}

/// The kinds whose status the operator writes.
pub trait StatusOwner:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> StatusOwner for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// What is read of the API server's answer to a status write: the new resourceVersion. The
/// answer holds the whole object, which the operator does not need and which (an Identity's
/// free JSON) may nest deeper than a typed decode accepts; unread fields are skipped without
/// recursing.
#[derive(serde::Deserialize)]
struct Written {
    metadata: WrittenMeta,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrittenMeta {
    #[serde(default)]
    resource_version: Option<String>,
}

/// Applies `status` and returns the object's new resourceVersion; reports nothing.
pub async fn apply_status_returning_version<K: StatusOwner, S: Serialize>(
    ctx: &Context,
    obj: &K,
    status: &S,
) -> std::result::Result<Option<String>, kube::Error> {
    write_status(ctx, obj, status, None).await
}

/// Applies `status` only if the object is still at `obj`'s resourceVersion (the API server
/// answers 409 Conflict otherwise); returns the new resourceVersion.
pub async fn apply_status_if_unchanged<K: StatusOwner, S: Serialize>(
    ctx: &Context,
    obj: &K,
    status: &S,
) -> std::result::Result<Option<String>, kube::Error> {
    let rv = obj
        .resource_version()
        .ok_or_else(|| kube::Error::Service("no resourceVersion to apply a status at".into()))?;
    write_status(ctx, obj, status, Some(&rv)).await
}

async fn write_status<K: StatusOwner, S: Serialize>(
    ctx: &Context,
    obj: &K,
    status: &S,
    resource_version: Option<&str>,
) -> std::result::Result<Option<String>, kube::Error> {
    let ns = obj.namespace().unwrap_or_default();
    let mut patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(rv) = resource_version {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    let request = kube::core::Request::new(K::url_path(&(), Some(&ns)))
        .patch_subresource(
            "status",
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .map_err(kube::Error::BuildRequest)?;
    let written: Written = ctx.client.request(request).await?;
    Ok(written.metadata.resource_version)
}

/// Queues an Event about `obj` for the background publishers ([`super::events`]); a failure to
/// publish is logged, never fatal. `note` must never carry a secret.
pub fn event<K>(ctx: &Context, obj: &K, warning: bool, reason: &str, action: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    ctx.events.publish(ev, obj.object_ref(&()));
}
