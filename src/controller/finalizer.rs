//! The finalizer that guards a Kratos identity. Unlike kube-runtime's `finalizer()` helper, adding
//! it does not end the reconcile: the same reconcile goes on to create the identity with the
//! patched object, which saves a watch round trip (and a reconcile) per new object. Both patches
//! `test` the finalizer list first, so a concurrent change makes them fail and retry instead of
//! overwriting someone else's finalizer.

use std::fmt::Debug;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::{Error, Result};

fn patch(ops: serde_json::Value) -> Result<Patch<()>> {
    Ok(Patch::Json(serde_json::from_value::<json_patch::Patch>(
        ops,
    )?))
}

/// Whether `obj` carries `finalizer`.
pub fn has<K: Resource>(obj: &K, finalizer: &str) -> bool {
    obj.finalizers().iter().any(|f| f == finalizer)
}

/// Adds `finalizer` and returns the object as the apiserver stored it.
pub async fn add<K, O>(api: &Api<K>, obj: &O, finalizer: &str) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    O: Resource,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let ops = if obj.finalizers().is_empty() {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [finalizer] }
        ])
    } else {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": obj.finalizers() },
            { "op": "add", "path": "/metadata/finalizers/-", "value": finalizer }
        ])
    };
    Ok(api
        .patch(&name, &PatchParams::default(), &patch(ops)?)
        .await?)
}

/// Removes `finalizer` (a no-op when it is not there).
pub async fn remove<K, O>(api: &Api<K>, obj: &O, finalizer: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    O: Resource,
{
    let Some(index) = obj.finalizers().iter().position(|f| f == finalizer) else {
        return Ok(());
    };
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let path = format!("/metadata/finalizers/{index}");
    let ops = json!([
        { "op": "test", "path": path, "value": finalizer },
        { "op": "remove", "path": path }
    ]);
    match api
        .patch(&name, &PatchParams::default(), &patch(ops)?)
        .await
    {
        Ok(_) => Ok(()),
        // Already gone together with the object.
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
