//! The IdentitySchemaRef controller: fetches the named schema from Kratos, keeps it compiled in
//! the shared [`crate::schema::SchemaCache`], and reports digest and trait roles in status. The
//! status changes only when the schema does, and that change re-triggers every Identity that
//! references it (the Identity controller watches IdentitySchemaRefs).

use std::sync::Arc;

use futures::{StreamExt, future::BoxFuture, future::Shared};
use jiff::Timestamp;
use kube::{
    Api,
    runtime::{Controller, controller::Action},
};
use tracing::info;

use crate::{
    Error, Result,
    api::{
        conditions::{self, Desired, Status},
        schema_ref::{IdentitySchemaRef, IdentitySchemaRefStatus},
    },
    controller::Context,
    kratos::{self, KratosClient},
    schema::CompiledSchema,
};

/// What fetching the schema gave.
#[derive(Debug)]
pub enum Fetched {
    /// It compiled.
    Compiled(CompiledSchema),
    /// Kratos does not serve this id.
    NotFound,
    /// Kratos serves something that is not a usable JSON Schema.
    Invalid(String),
}

/// Fetches schema `id` from Kratos and compiles it; an error only when Kratos could not answer.
pub async fn fetch(kratos: &KratosClient, id: &str) -> Result<Fetched, kratos::Error> {
    match kratos.get_identity_schema(id).await {
        Ok(s) => Ok(match CompiledSchema::compile(id, s.raw.as_bytes()) {
            Ok(c) => Fetched::Compiled(c),
            Err(e) => Fetched::Invalid(e.to_string()),
        }),
        Err(kratos::Error::NotFound { .. }) => Ok(Fetched::NotFound),
        Err(e) => Err(e),
    }
}

/// The status for what was fetched (pure).
pub fn status_for(
    obj: &IdentitySchemaRef,
    fetched: &Fetched,
    now: Timestamp,
) -> IdentitySchemaRefStatus {
    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let id = &obj.spec.schema_id;
    match fetched {
        Fetched::Compiled(c) => IdentitySchemaRefStatus {
            observed_generation: generation,
            conditions: conditions::merge(
                &prev.conditions,
                &[Desired::new(
                    conditions::READY,
                    Status::True,
                    "Resolved",
                    format!("Kratos serves schema {id}"),
                )],
                generation,
                now,
            ),
            digest: Some(c.digest.clone()),
            identifier_traits: c.identifier_traits.clone(),
            recovery_traits: c.recovery_traits.clone(),
            verifiable_traits: c.verifiable_traits.clone(),
        },
        Fetched::NotFound | Fetched::Invalid(_) => {
            let (reason, message) = match fetched {
                Fetched::NotFound => (
                    "SchemaNotFound",
                    format!("Kratos has no identity schema with id {id:?}"),
                ),
                Fetched::Invalid(e) => (
                    "InvalidSchema",
                    format!("schema {id:?} cannot be used: {e}"),
                ),
                Fetched::Compiled(_) => ("Resolved", String::new()),
            };
            IdentitySchemaRefStatus {
                observed_generation: generation,
                conditions: conditions::merge(
                    &prev.conditions,
                    &[
                        Desired::new(conditions::READY, Status::False, reason, message.clone()),
                        Desired::new(conditions::STALLED, Status::True, reason, message),
                    ],
                    generation,
                    now,
                ),
                digest: None,
                identifier_traits: Vec::new(),
                recovery_traits: Vec::new(),
                verifiable_traits: Vec::new(),
            }
        }
    }
}

async fn write_status(
    ctx: &Context,
    obj: &IdentitySchemaRef,
    status: &IdentitySchemaRefStatus,
) -> Result<bool> {
    if obj
        .status
        .as_ref()
        .is_some_and(|s| conditions::same_status(s, status))
    {
        return Ok(false);
    }
    crate::controller::report::apply_status(ctx, obj, status).await?;
    Ok(true)
}

async fn publish(
    ctx: &Context,
    obj: &IdentitySchemaRef,
    warning: bool,
    reason: &str,
    note: String,
) {
    crate::controller::report::event(ctx, obj, warning, reason, "Resolve", note);
}

/// Reconciles one IdentitySchemaRef.
pub async fn reconcile(obj: Arc<IdentitySchemaRef>, ctx: Arc<Context>) -> Result<Action> {
    let _measure = ctx.metrics.reconcile("IdentitySchemaRef");
    let id = obj.spec.schema_id.clone();
    let fetched = match fetch(&ctx.kratos, &id).await {
        Ok(f) => f,
        Err(e) => {
            let message = format!("cannot reach Kratos, retrying with backoff: {e}");
            let prev = obj.status.clone().unwrap_or_default();
            let status = IdentitySchemaRefStatus {
                observed_generation: obj.metadata.generation,
                conditions: conditions::merge(
                    &prev.conditions,
                    &conditions::not_ready("KratosUnavailable", &message, false),
                    obj.metadata.generation,
                    Timestamp::now(),
                ),
                ..prev
            };
            // Keep the last known schema usable while Kratos is away: only the conditions change.
            write_status(&ctx, &obj, &status).await?;
            return Err(e.into());
        }
    };
    let status = status_for(&obj, &fetched, Timestamp::now());
    let previous_digest = obj.status.as_ref().and_then(|s| s.digest.clone());
    let changed = write_status(&ctx, &obj, &status).await?;
    if changed {
        match (&fetched, &previous_digest) {
            (Fetched::Compiled(c), Some(old)) if *old != c.digest => {
                publish(
                    &ctx,
                    &obj,
                    false,
                    "SchemaChanged",
                    format!("Schema {id} changed ({old} -> {})", c.digest),
                )
                .await;
            }
            (Fetched::Compiled(c), None) => {
                publish(
                    &ctx,
                    &obj,
                    false,
                    "Resolved",
                    format!("Schema {id} resolved ({})", c.digest),
                )
                .await;
            }
            (Fetched::NotFound, _) => {
                publish(
                    &ctx,
                    &obj,
                    true,
                    "SchemaNotFound",
                    format!("Kratos has no identity schema with id {id:?}"),
                )
                .await;
            }
            (Fetched::Invalid(e), _) => publish(&ctx, &obj, true, "InvalidSchema", e.clone()).await,
            _ => {}
        }
    }
    if let Fetched::Compiled(c) = fetched {
        ctx.schemas.put(c);
    }
    ctx.backoff.reset(&crate::controller::backoff::key(&*obj));
    Ok(Action::requeue(ctx.settings.schema_recheck_interval))
}

/// Requeues a failed reconcile with per-object backoff.
pub fn error_policy(obj: Arc<IdentitySchemaRef>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure("IdentitySchemaRef", error);
    crate::controller::backoff::requeue_after_failure(&*obj, error, &ctx)
}

/// Runs the IdentitySchemaRef controller for one namespace (or all) until `shutdown`.
pub async fn controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: Shared<BoxFuture<'static, ()>>,
) {
    let api: Api<IdentitySchemaRef> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    info!(
        namespace = namespace.unwrap_or("*"),
        "starting IdentitySchemaRef controller"
    );
    let controller = Controller::new(api, ctx.settings.watch_config());
    ctx.caches.add_schema_refs(controller.store());
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(2))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}
