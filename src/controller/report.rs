//! Reporting shared by every controller: status written by server-side apply, Events published
//! through the shared recorder.

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::NamespaceResourceScope,
    runtime::events::{Event, EventType},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tracing::warn;

use super::Context;
use crate::{Error, Result, api::FIELD_MANAGER};

/// Applies `status` to `obj`'s status subresource (field manager `kratos-operator`, forced).
pub async fn apply_status<K, S>(ctx: &Context, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize,
{
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Err(e) = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        // The status is where every outcome is reported. When it cannot be stored (an object at
        // etcd's size limit: "etcdserver: request is too large"), an Event, a separate object,
        // is the one place left to say so.
        event(
            ctx,
            obj,
            true,
            "StatusNotWritten",
            "Reconcile",
            format!("cannot write the status: {e}"),
        )
        .await;
        return Err(e.into());
    }
    Ok(())
}

/// Publishes an Event about `obj`; a failure to publish is logged, never fatal. `note` must never
/// carry a secret.
pub async fn event<K>(
    ctx: &Context,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) where
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
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}
