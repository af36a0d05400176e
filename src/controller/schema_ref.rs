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
    controller::{Context, report::update_status},
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

/// The status while Kratos cannot be reached (pure): only the conditions change, so the last
/// known schema stays usable.
pub fn unavailable_status(
    obj: &IdentitySchemaRef,
    error: &kratos::Error,
    now: Timestamp,
) -> IdentitySchemaRefStatus {
    let message = format!("cannot reach Kratos, retrying with backoff: {error}");
    let prev = obj.status.clone().unwrap_or_default();
    IdentitySchemaRefStatus {
        observed_generation: obj.metadata.generation,
        conditions: conditions::merge(
            &prev.conditions,
            &conditions::not_ready("KratosUnavailable", &message, false),
            obj.metadata.generation,
            now,
        ),
        ..prev
    }
}

/// The Event a changed status is worth (pure): `(warning, reason, note)`, or none.
pub fn news(
    id: &str,
    fetched: &Fetched,
    previous_digest: Option<&str>,
) -> Option<(bool, &'static str, String)> {
    match (fetched, previous_digest) {
        (Fetched::Compiled(c), Some(old)) if old != c.digest => Some((
            false,
            "SchemaChanged",
            format!("Schema {id} changed ({old} -> {})", c.digest),
        )),
        (Fetched::Compiled(c), None) => Some((
            false,
            "Resolved",
            format!("Schema {id} resolved ({})", c.digest),
        )),
        (Fetched::Compiled(_), Some(_)) => None,
        (Fetched::NotFound, _) => Some((
            true,
            "SchemaNotFound",
            format!("Kratos has no identity schema with id {id:?}"),
        )),
        (Fetched::Invalid(e), _) => Some((true, "InvalidSchema", e.clone())),
    }
}

/// Reconciles one IdentitySchemaRef: fetches the schema ([`fetch`]), decides its status and
/// Event ([`status_for`], [`news`]), writes them, and keeps the compiled schema for the
/// Identities that reference it.
pub async fn reconcile(obj: Arc<IdentitySchemaRef>, ctx: Arc<Context>) -> Result<Action> {
    let _measure = ctx.metrics.reconcile("IdentitySchemaRef");
    let id = &obj.spec.schema_id;
    let fetched = match fetch(&ctx.kratos, id).await {
        Ok(f) => f,
        Err(e) => {
            let status = unavailable_status(&obj, &e, Timestamp::now());
            update_status(&ctx, &*obj, &status).await?;
            return Err(e.into());
        }
    };
    let status = status_for(&obj, &fetched, Timestamp::now());
    let previous_digest = obj.status.as_ref().and_then(|s| s.digest.as_deref());
    if update_status(&ctx, &*obj, &status).await?
        && let Some((warning, reason, note)) = news(id, &fetched, previous_digest)
    {
        crate::controller::report::event(&ctx, &*obj, warning, reason, "Resolve", note);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compiled(raw: &str) -> CompiledSchema {
        CompiledSchema::compile("customer", raw.as_bytes()).unwrap()
    }

    fn object() -> IdentitySchemaRef {
        serde_json::from_value(json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef",
            "metadata": {"name": "customer", "namespace": "ns", "generation": 2},
            "spec": {"schemaId": "customer"},
            "status": {"observedGeneration": 1, "digest": "sha256:old", "conditions": []}
        }))
        .unwrap()
    }

    #[test]
    fn an_event_says_what_changed_and_nothing_when_the_digest_did_not() {
        let c = compiled(r#"{"type":"object"}"#);
        let digest = c.digest.clone();
        let fetched = Fetched::Compiled(c);
        let (warning, reason, note) = news("customer", &fetched, None).unwrap();
        assert_eq!((warning, reason), (false, "Resolved"));
        assert!(note.contains(&digest));
        let (_, reason, note) = news("customer", &fetched, Some("sha256:old")).unwrap();
        assert_eq!(reason, "SchemaChanged");
        assert!(note.contains("sha256:old -> sha256:"));
        assert_eq!(news("customer", &fetched, Some(&digest)), None);
        let (warning, reason, _) = news("customer", &Fetched::NotFound, Some("x")).unwrap();
        assert_eq!((warning, reason), (true, "SchemaNotFound"));
        let (warning, reason, note) =
            news("customer", &Fetched::Invalid("bad".into()), None).unwrap();
        assert_eq!(
            (warning, reason, note.as_str()),
            (true, "InvalidSchema", "bad")
        );
    }

    #[test]
    fn kratos_away_changes_only_the_conditions() {
        let obj = object();
        let error = kratos::Error::Unavailable {
            message: "connection refused".into(),
        };
        let status = unavailable_status(&obj, &error, Timestamp::UNIX_EPOCH);
        assert_eq!(status.digest.as_deref(), Some("sha256:old"));
        assert_eq!(status.observed_generation, Some(2));
        let ready = conditions::ready(&status.conditions).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "KratosUnavailable")
        );
        assert!(ready.message.contains("connection refused"));
    }
}
