//! Reads for one Identity reconcile: what a [`Need`] of the plan asks for, recorded raw in
//! [`Observed`] (nothing here decides; [`super::plan`] reads the facts).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tracing::info;

use super::Context;
use super::plan::{Need, Observed};
use crate::controller::schema_ref::Fetched;
use crate::{
    Result,
    api::IdentitySchemaRef,
    kratos::{self, Identity as KratosIdentity},
    schema::CompiledSchema,
};

/// Looks at what `need` names and records it in `o`.
pub async fn observe(ctx: &Context, need: Need, o: &mut Observed<'_>) -> Result<()> {
    match need {
        Need::SchemaRef(name) => o.schema_ref = Some(schema_ref(ctx, o.namespace, &name).await?),
        Need::Schema { id, recheck } => o.schema = Some(schema(ctx, &id, recheck).await?),
        Need::Namespace => o.policy = Some(ctx.tenancy.get(&ctx.client, o.namespace).await?),
        Need::Recorded(id) => o.recorded = Some(identity(ctx, &id).await?),
        Need::Candidates(identifiers) => o.candidates = Some(candidates(ctx, &identifiers).await?),
        Need::Marked => o.marked = Some(marked(ctx, o.owner.uid).await?),
        Need::Secret(name) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), o.namespace);
            o.secret = Some(secrets.get_opt(&name).await?);
        }
        Need::Full(id) => o.full = Some(ctx.kratos.get_identity(&id, &[]).await?),
        Need::ReadBack(id) => o.read_back = Some(ctx.kratos.get_identity(&id, &[]).await?),
        Need::Sessions(id) => {
            o.sessions = Some(ctx.kratos.list_identity_sessions(&id, Some(true)).await?);
        }
    }
    Ok(())
}

/// The IdentitySchemaRef `name` of `namespace`, from the cache or else the API server.
async fn schema_ref(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<IdentitySchemaRef>>> {
    if let Some(cached) = ctx.caches.schema_ref(namespace, name) {
        return Ok(Some(cached));
    }
    let refs: Api<IdentitySchemaRef> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(refs.get_opt(name).await?.map(Arc::new))
}

/// The compiled schema `id`, from the cache or else Kratos. An IdentitySchemaRef's controller
/// refreshes its schema every schema recheck interval; nothing refreshes the schema of a
/// `schemaId` (`recheck`), so it is fetched again at that pace here.
async fn schema(ctx: &Context, id: &str, recheck: bool) -> Result<Option<Arc<CompiledSchema>>> {
    let cached = if recheck {
        ctx.schemas
            .get_fresh(id, ctx.settings.schema_recheck_interval)
    } else {
        ctx.schemas.get(id)
    };
    match cached {
        Some(c) => Ok(Some(c)),
        None => fetch_schema(ctx, id).await,
    }
}

/// Fetches and compiles a schema into the cache. `None` when Kratos does not serve it or it does
/// not compile (Kratos then validates on its own).
async fn fetch_schema(ctx: &Context, id: &str) -> Result<Option<Arc<CompiledSchema>>> {
    match crate::controller::schema_ref::fetch(&ctx.kratos, id).await? {
        Fetched::Compiled(c) => {
            ctx.schemas.put(c);
            Ok(ctx.schemas.get(id))
        }
        Fetched::Invalid(e) => {
            tracing::warn!(schema = id, error = %e, "schema does not compile; relying on Kratos' validation");
            Ok(None)
        }
        Fetched::NotFound => Ok(None),
    }
}

/// The Kratos identity `id`; `None` when Kratos has none.
async fn identity(ctx: &Context, id: &str) -> Result<Option<KratosIdentity>> {
    match ctx.kratos.get_identity(id, &[]).await {
        Ok(identity) => Ok(Some(identity)),
        Err(kratos::Error::NotFound { .. }) => {
            info!(identity = %id, "the Kratos identity recorded for the object is gone");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The Kratos identities that carry one of `identifiers` as a credential identifier.
async fn candidates(ctx: &Context, identifiers: &[String]) -> Result<Vec<KratosIdentity>> {
    let mut out: Vec<KratosIdentity> = Vec::new();
    for identifier in identifiers {
        for found in ctx
            .kratos
            .find_by_credentials_identifier(identifier)
            .await?
        {
            if !out.iter().any(|i| i.id == found.id) {
                out.push(found);
            }
        }
    }
    Ok(out)
}

/// The identity the marker index names for `uid` (for objects without identifiers); `None` when
/// there is none, or it is gone. Whose it is, the plan reads from its marker.
async fn marked(ctx: &Context, uid: &str) -> Result<Option<KratosIdentity>> {
    let not_before = ctx.state.pending.horizon(uid);
    let Some(id) = ctx.state.markers.find(&ctx.kratos, uid, not_before).await? else {
        return Ok(None);
    };
    match ctx.kratos.get_identity(&id, &[]).await {
        Ok(identity) => Ok(Some(identity)),
        Err(kratos::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
