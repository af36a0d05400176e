//! The Identity controller: keeps one Kratos identity equal to each `Identity` object.
//!
//! Per reconcile: [`observe`] reads the schema, the password Secret and the Kratos identity;
//! [`plan`] decides, without I/O, what differs and what to send; [`act`] writes to Kratos;
//! [`report`] writes the status and Events. Domain problems (invalid traits, a conflict, a missing
//! Secret) are outcomes reported in status, not errors; only transient failures (Kratos or the
//! API server unreachable) are errors, retried with per-object backoff.

pub mod act;
pub mod detach;
pub mod observe;
pub mod plan;
pub mod report;

use std::{sync::Arc, time::Duration};

use futures::{
    FutureExt, StreamExt, TryStreamExt, channel::mpsc::UnboundedSender, future::BoxFuture,
    future::Shared,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::info;

use self::detach::Handoff;
use crate::{
    Error, Result,
    api::{FINALIZER, GuardedIdentity, IdentitySchemaRef, identity::Identity},
    controller::{Context, finalizer},
};

/// Why an Identity cannot be synced right now (reported as `Ready=False` with this reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// Condition reason (`InvalidSpec`, `Conflict`, `SecretNotFound`, ...).
    pub reason: &'static str,
    /// Message for the condition and the Event (never a secret).
    pub message: String,
    /// True when nothing but a change to the spec (or the schema) can help: `Stalled=True` and no
    /// retry.
    pub stalled: bool,
}

impl Blocked {
    /// A blocked outcome that may resolve by itself (a Secret or schema appearing).
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            stalled: false,
        }
    }
    /// A blocked outcome that needs a spec change.
    pub fn stalled(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            stalled: true,
        }
    }
}

/// When to look at an object again after a reconcile that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// When something changes (or a drift sweep finds a difference).
    AwaitChange,
    /// After this long.
    After(Duration),
}

impl From<Next> for Action {
    fn from(next: Next) -> Self {
        match next {
            Next::AwaitChange => Action::await_change(),
            Next::After(d) => Action::requeue(d),
        }
    }
}

/// Reconciles one Identity (with the finalizer that guards its Kratos identity).
pub async fn reconcile(obj: Arc<Identity>, ctx: Arc<Context>, handoff: Handoff) -> Result<Action> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    // Its detached create still runs: it is reconciled again when that ends.
    if obj
        .metadata
        .uid
        .as_deref()
        .is_some_and(|uid| ctx.detached.defer(uid))
    {
        return Ok(Action::await_change());
    }
    // Guarded: the API server's answers to the finalizer patches hold the whole object.
    let api: Api<GuardedIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let key = crate::controller::backoff::key(&*obj);
    let _measure = ctx.metrics.reconcile("Identity");
    let result = if obj.metadata.deletion_timestamp.is_some() {
        if finalizer::has(&*obj, FINALIZER) {
            match act::cleanup(obj.clone(), ctx.clone()).await {
                Ok(action) => {
                    if let Some(uid) = obj.metadata.uid.as_deref() {
                        ctx.known_ids.forget(uid);
                    }
                    ctx.statuses.forget(&obj);
                    finalizer::remove(&api, &*obj, FINALIZER)
                        .await
                        .map(|()| action)
                }
                Err(e) => Err(e),
            }
        } else {
            Ok(Action::await_change())
        }
    } else if finalizer::has(&*obj, FINALIZER) {
        dispatch(obj, ctx.clone(), &handoff).await
    } else if obj.spec.undecodable.is_some() {
        // Nothing will be created for a spec that cannot be read: no finalizer, only the report.
        apply(obj, ctx.clone()).await.map(Action::from)
    } else {
        match finalizer::add(&api, &*obj, FINALIZER)
            .await
            .map(|GuardedIdentity(i)| i)
        {
            // Decoded without managedFields, as in the cache (a detached create holds this copy
            // until it ends).
            Ok(patched) => dispatch(Arc::new(patched), ctx.clone(), &handoff).await,
            Err(e) => Err(e),
        }
    };
    match &result {
        Ok(_) => ctx.backoff.reset(&key),
        Err(e) => ctx.metrics.failure("Identity", e),
    }
    result
}

/// Requeues a failed reconcile with per-object exponential backoff.
pub fn error_policy(obj: Arc<Identity>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::controller::backoff::requeue_after_failure(&*obj, error, &ctx)
}

/// Applies the spec here, or (a new object with batched creates) in a detached task.
async fn dispatch(obj: Arc<Identity>, ctx: Arc<Context>, handoff: &Handoff) -> Result<Action> {
    if detach::wanted(&obj, &ctx) {
        handoff.spawn(obj, ctx).await;
        return Ok(Action::await_change());
    }
    apply(obj, ctx).await.map(Action::from)
}

async fn apply(obj: Arc<Identity>, ctx: Arc<Context>) -> Result<Next> {
    match act::sync(&obj, &ctx).await {
        Ok(outcome) => Ok(report::outcome(&obj, &ctx, outcome)),
        Err(e) => {
            let transient = e.is_kratos_unavailable();
            if transient {
                report::unavailable(&obj, &ctx, &e);
            }
            Err(e)
        }
    }
}

/// What a change to an Identity must alter to be reconciled: generation (spec), deletion, uid (a
/// re-created object). Not the finalizers: the reconcile that adds the finalizer goes on to apply
/// (see [`finalizer`]), so the event of its own finalizer patch must not reconcile the object a
/// second time (before the status it wrote is in the cache, that second pass would try to create
/// the identity again). Not the status either: the operator writes it.
pub fn lifecycle_changed(obj: &Identity) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.metadata.uid.hash(&mut h);
    obj.metadata.generation.hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

fn referencing<F>(store: &Store<Identity>, ns: Option<String>, pred: F) -> Vec<ObjectRef<Identity>>
where
    F: Fn(&Identity) -> bool,
{
    store
        .state()
        .into_iter()
        .filter(|i| i.namespace() == ns && pred(i))
        .map(|i| ObjectRef::from_obj(&*i))
        .collect()
}

/// The watcher's events with the [`GuardedIdentity`] wrapper taken off.
fn unguard(event: watcher::Event<GuardedIdentity>) -> watcher::Event<Identity> {
    match event {
        watcher::Event::Apply(GuardedIdentity(i)) => watcher::Event::Apply(i),
        watcher::Event::Delete(GuardedIdentity(i)) => watcher::Event::Delete(i),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(GuardedIdentity(i)) => watcher::Event::InitApply(i),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Runs the Identity controller for one namespace (or all) until `shutdown`.
///
/// Every Identity its watch sees change is also sent to `touched` (the RecoveryRequest
/// controller of the same scope reacts to them).
pub async fn controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: Shared<BoxFuture<'static, ()>>,
    touched: UnboundedSender<ObjectRef<Identity>>,
) {
    let client = ctx.client.clone();
    let (identities, secrets, schema_refs): (
        Api<GuardedIdentity>,
        Api<PartialObjectMeta<Secret>>,
        Api<IdentitySchemaRef>,
    ) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    // Reconcile on spec, finalizer and deletion changes only: the operator's own status writes
    // would otherwise cost a Kratos read per object after every write. The store still sees
    // every change (the sweep reads status from it).
    let (store, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(
        writer,
        // Guarded: one object whose spec cannot be decoded must not stop the watch of all the
        // others; it arrives as a skeleton that reports InvalidSpec. managedFields (most of an
        // object's bytes, never read) are dropped while decoding.
        watcher(identities, watcher::Config::default().any_semantic()).map_ok(unguard),
    )
    .default_backoff()
    .touched_objects()
    .inspect_ok(move |obj| {
        // The receiver ends with its controller; nothing to do then.
        let _ = touched.unbounded_send(ObjectRef::from_obj(obj));
    })
    .predicate_filter(lifecycle_changed, kube::runtime::PredicateConfig::default());
    let controller = Controller::for_stream(stream, store.clone());
    ctx.caches.add_identities(store.clone());
    let secret_store = store.clone();
    let schema_store = store.clone();
    let (sweep_tx, sweep_triggers) = futures::channel::mpsc::unbounded();
    let (retrigger, retriggers) = futures::channel::mpsc::unbounded();
    // Detached creates finish what they started on shutdown (`run` waits for them), and stop
    // at once when this future is dropped (an aborted controller task) together with `alive`;
    // a controller that returns says so through `alive`, which never aborts them.
    let (alive, dropped) = futures::channel::oneshot::channel::<()>();
    let handoff = Handoff {
        retrigger,
        shutdown: shutdown.clone(),
        abort: dropped
            .then(|returned| async move {
                if returned.is_ok() {
                    futures::future::pending::<()>().await;
                }
            })
            .boxed()
            .shared(),
    };
    if ctx.settings.drift_sweeps {
        tokio::spawn(crate::controller::sweep::run(
            ctx.clone(),
            store.clone(),
            sweep_tx,
        ));
    } else {
        drop(sweep_tx);
    }
    info!(
        namespace = namespace.unwrap_or("*"),
        "starting Identity controller"
    );
    controller
        .watches(
            secrets,
            watcher::Config::default().any_semantic(),
            move |secret| {
                let name = secret.name_any();
                referencing(&secret_store, secret.namespace(), |i| {
                    i.spec
                        .credentials
                        .as_ref()
                        .and_then(|c| c.password.as_ref())
                        .is_some_and(|p| {
                            p.secret_ref.as_ref().is_some_and(|r| r.name == name)
                                || p.hashed_secret_ref.as_ref().is_some_and(|r| r.name == name)
                        })
                })
            },
        )
        .watches(
            schema_refs,
            watcher::Config::default().any_semantic(),
            move |sr| {
                let name = sr.name_any();
                referencing(&schema_store, sr.namespace(), |i| {
                    i.spec.schema_ref.as_ref().is_some_and(|r| r.name == name)
                })
            },
        )
        .reconcile_on(futures::stream::select(sweep_triggers, retriggers))
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(ctx.settings.max_concurrent_reconciles)
                .debounce(Duration::from_millis(200)),
        )
        .graceful_shutdown_on(shutdown)
        .run(
            move |obj, ctx| reconcile(obj, ctx, handoff.clone()),
            error_policy,
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    let _ = alive.send(());
}
