//! The Identity controller: keeps one Kratos identity equal to each `Identity` object.
//!
//! Per reconcile, in a loop ([`sync`]): [`plan::plan`] decides, without I/O, from what has been
//! observed so far, the next step: [`observe`] looks at one more thing (the schema, the
//! namespace's policy, the Kratos identity, the password Secret, the sessions), or [`act`]
//! makes one write to Kratos and records the answer, and the plan is made again; until it says
//! what the outcome is, which [`report`] writes as status and Events. [`desired`] holds what the
//! spec asks of Kratos and how an identity differs from it. Domain problems (invalid traits, a
//! conflict, a missing Secret) are outcomes reported in status, not errors; only transient
//! failures (Kratos or the API server unreachable) are errors, retried with per-object backoff.

pub mod act;
pub mod batch;
pub mod desired;
pub mod detach;
pub mod markers;
pub mod observe;
pub mod outcome;
pub mod plan;
pub mod report;
pub mod status;
pub mod sweep;

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

use self::{
    detach::Handoff,
    outcome::Outcome,
    plan::{Cleanup, Observed, Plan},
};
use crate::{
    Error, Result,
    api::{FINALIZER, GuardedIdentity, IdentitySchemaRef, identity::Identity},
    controller::finalizer,
};
use jiff::Timestamp;

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
    /// For a stalled outcome: what can change it that the controller does not watch, so the
    /// object is looked at again periodically (`None`: only a watched change helps).
    pub recheck: Option<Recheck>,
}

/// Something a stalled Identity depends on that no watch reports a change of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// The Namespace's tenancy labels and annotations (read with a short cache, not watched):
    /// looked at again every resync interval.
    Namespace,
    /// The Kratos schema of a `schemaId` (Kratos does not announce a changed schema): looked at
    /// again every schema recheck interval, with a schema fetched again at that pace.
    Schema,
}

impl Blocked {
    /// A blocked outcome that may resolve by itself (a Secret or schema appearing).
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            stalled: false,
            recheck: None,
        }
    }
    /// A blocked outcome that needs a spec change.
    pub fn stalled(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            stalled: true,
            recheck: None,
        }
    }
    /// The same outcome, looked at again periodically because `what` may change unwatched.
    #[must_use]
    pub fn rechecked(self, what: Recheck) -> Self {
        Self {
            recheck: Some(what),
            ..self
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
        .is_some_and(|uid| ctx.state.detached.defer(uid))
    {
        return Ok(Action::await_change());
    }
    // Guarded: the API server's answers to the finalizer patches hold the whole object.
    let api: Api<GuardedIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let key = crate::controller::backoff::key(&*obj);
    let _measure = ctx.metrics.reconcile("Identity");
    let result = if obj.metadata.deletion_timestamp.is_some() {
        if finalizer::has(&*obj, FINALIZER) {
            match cleanup(&obj, &ctx).await {
                Ok(action) => {
                    if let Some(uid) = obj.metadata.uid.as_deref() {
                        ctx.state.known_ids.forget(uid);
                        ctx.state.markers.forget(uid);
                    }
                    ctx.state.statuses.forget(&obj);
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
    match sync(&obj, &ctx).await {
        Ok(outcome) => {
            if let (Outcome::Synced(s), Some(uid)) = (&outcome, obj.metadata.uid.as_deref()) {
                ctx.state.known_ids.set(uid, &s.identity_id);
            }
            report::outcome(&obj, &ctx, &outcome);
            Ok(next(&outcome, &ctx.settings))
        }
        Err(e) => {
            let transient = e.is_kratos_unavailable();
            if transient {
                report::unavailable(&obj, &ctx, &e);
            }
            Err(e)
        }
    }
}

/// The most steps one reconcile takes: each step observes or writes one more thing, and a
/// plan never asks for the same one twice, so a reconcile needs about ten.
const MAX_STEPS: usize = 32;

/// What is observed before the first plan: the object's own fields.
fn observed<'a>(obj: &'a Identity, ctx: &Context, owner: plan::Owner<'a>) -> Result<Observed<'a>> {
    let namespace = obj
        .metadata
        .namespace
        .as_deref()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let status = obj.status.as_ref();
    let mut o = Observed::new(
        &obj.spec,
        owner,
        namespace,
        status
            .and_then(|s| s.credentials.as_ref())
            .and_then(|c| c.password.as_ref())
            .map(|p| p.secret_version.as_str()),
        Timestamp::now(),
    );
    o.recorded_id = status
        .and_then(|s| s.identity_id.clone())
        .or_else(|| ctx.state.known_ids.get(owner.uid));
    o.batched = ctx.state.creates.is_some();
    Ok(o)
}

/// Brings Kratos in line with the spec: plans, observes or writes what the plan says, and plans
/// again until the plan is an outcome.
pub async fn sync(obj: &Identity, ctx: &Context) -> Result<Outcome> {
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let name = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let mut o = observed(
        obj,
        ctx,
        plan::Owner {
            uid: &uid,
            name: &name,
        },
    )?;
    for _ in 0..MAX_STEPS {
        match plan::plan(&o) {
            Plan::Observe(need) => observe::observe(ctx, need, &mut o).await?,
            Plan::Write(write) => act::write(ctx, write, &mut o).await?,
            Plan::Done(outcome) => return Ok(outcome),
        }
    }
    Err(Error::Unsettled(MAX_STEPS))
}

/// The finalizer's cleanup: looks for this object's identity as [`plan::cleanup`] asks, then
/// deletes or releases it.
async fn cleanup(obj: &Identity, ctx: &Context) -> Result<Action> {
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let name = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let mut o = observed(
        obj,
        ctx,
        plan::Owner {
            uid: &uid,
            name: &name,
        },
    )?;
    for _ in 0..MAX_STEPS {
        match plan::cleanup(&o) {
            Cleanup::Observe(need) => observe::observe(ctx, need, &mut o).await?,
            done => {
                act::cleanup(ctx, &done).await?;
                report::cleaned(ctx, obj, &done);
                return Ok(Action::await_change());
            }
        }
    }
    Err(Error::Unsettled(MAX_STEPS))
}

/// When to look at an object again after a reconcile that did not fail.
fn next(outcome: &Outcome, settings: &crate::controller::Settings) -> Next {
    match outcome {
        // With drift sweeps, a list of all identities per resync finds drift; otherwise each
        // object reads its identity once per resync.
        Outcome::Synced(_) if settings.drift_sweeps => Next::AwaitChange,
        Outcome::Synced(_) => Next::After(settings.resync_interval),
        // A stalled outcome waits for a change, unless what can change it is not watched (the
        // Namespace's policy, a schema in Kratos): then it is looked at again.
        Outcome::Blocked(b) => match (b.stalled, b.recheck) {
            (false, _) | (true, Some(Recheck::Namespace)) => Next::After(settings.resync_interval),
            (true, Some(Recheck::Schema)) => Next::After(settings.schema_recheck_interval),
            (true, None) => Next::AwaitChange,
        },
    }
}

/// What the Identity controller's reconciles get: the context every controller shares, and the
/// Identity controller's own [`State`]. Dereferences to the shared context.
#[derive(Clone)]
pub struct Context {
    /// What every controller shares.
    pub shared: Arc<crate::controller::Context>,
    /// What only the Identity controller keeps.
    pub state: Arc<State>,
}

impl Context {
    /// The Identity controller's context over the shared one.
    pub fn new(shared: Arc<crate::controller::Context>, state: Arc<State>) -> Self {
        Self { shared, state }
    }
}

impl std::ops::Deref for Context {
    type Target = crate::controller::Context;
    fn deref(&self) -> &Self::Target {
        &self.shared
    }
}

/// What the Identity controller keeps between its reconciles, one for the process (all
/// watched namespaces).
pub struct State {
    /// The create batcher, when creates are coalesced.
    pub creates: Option<batch::CreateBatcher>,
    /// Owner markers of Kratos identities, for objects without identifiers ([`markers`]).
    pub markers: markers::MarkerIndex,
    /// Kratos ids this process created or found, by object uid: a reconcile that runs before the
    /// status it wrote is in the cache must not create the identity again.
    pub known_ids: KnownIds,
    /// New identities being created off the reconciles' path.
    pub detached: detach::Detached,
    /// Status writes, off the reconciles' path.
    pub statuses: status::StatusWriter,
}

impl State {
    /// The state of controllers that start now (this process became leader: a marker index
    /// built before may miss identities the previous leader created).
    pub fn new(ctx: &crate::controller::Context) -> Self {
        let markers = markers::MarkerIndex::default();
        markers.begin();
        Self {
            creates: ctx.settings.batch_creates.then(|| {
                batch::CreateBatcher::spawn(ctx.kratos.clone(), ctx.settings.batch_window)
            }),
            markers,
            known_ids: KnownIds::default(),
            detached: detach::Detached::new(ctx.priority.clone()),
            statuses: status::StatusWriter::new(ctx.priority.clone()),
        }
    }
}

/// Kratos identity ids by object uid.
#[derive(Debug, Default)]
pub struct KnownIds(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl KnownIds {
    /// The id recorded for `uid`.
    pub fn get(&self, uid: &str) -> Option<String> {
        self.0.lock().ok().and_then(|m| m.get(uid).cloned())
    }

    /// Records `id` for `uid`.
    pub fn set(&self, uid: &str, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(uid.to_string(), id.to_string());
        }
    }

    /// Forgets `uid` (the object is gone).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(uid);
        }
    }
}

/// What a change to an Identity must alter to be reconciled: generation (spec), deletion, uid (a
/// re-created object), and the loss of the finalizer by a synced object. Not the finalizer's
/// arrival: the reconcile that adds it goes on to apply (see [`finalizer`]), so the event of its
/// own finalizer patch must not reconcile the object a second time (before the status it wrote
/// is in the cache, that second pass would try to create the identity again). But a finalizer
/// removed by hand from an object with an identity is put back at once: without it, deleting
/// the object would leave its Kratos identity behind. Not the status either: the operator
/// writes it.
pub fn lifecycle_changed(obj: &Identity) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.metadata.uid.hash(&mut h);
    obj.metadata.generation.hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    finalizer_lost(obj).hash(&mut h);
    Some(h.finish())
}

/// Whether a live object that has a Kratos identity lacks its finalizer (someone removed it).
fn finalizer_lost(obj: &Identity) -> bool {
    obj.metadata.deletion_timestamp.is_none()
        && obj.status.as_ref().is_some_and(|s| s.identity_id.is_some())
        && !finalizer::has(obj, FINALIZER)
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
    ctx: Context,
    namespace: Option<&str>,
    shutdown: Shared<BoxFuture<'static, ()>>,
    touched: UnboundedSender<ObjectRef<Identity>>,
) {
    let ctx = Arc::new(ctx);
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
    let (first_tx, first_rx) = futures::channel::mpsc::unbounded();
    let first_statuses = report::first_statuses(ctx.clone(), store.clone(), first_rx);
    let stream = kube::runtime::reflector(
        writer,
        // Guarded: one object whose spec cannot be decoded must not stop the watch of all the
        // others; it arrives as a skeleton that reports InvalidSpec. managedFields (most of an
        // object's bytes, never read) are dropped while decoding.
        watcher(identities, ctx.settings.watch_config()).map_ok(unguard),
    )
    .default_backoff()
    .touched_objects()
    .inspect_ok(move |obj| {
        // The receivers end with their controller; nothing to do then.
        let _ = touched.unbounded_send(ObjectRef::from_obj(obj));
        // A new object gets a status at once, not after its create (see
        // `report::first_statuses`).
        if report::wants_first_status(obj) {
            let _ = first_tx.unbounded_send(ObjectRef::from_obj(obj));
        }
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
        tokio::spawn(sweep::run(ctx.clone(), store.clone(), sweep_tx));
    } else {
        drop(sweep_tx);
    }
    info!(
        namespace = namespace.unwrap_or("*"),
        "starting Identity controller"
    );
    let controller = controller
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
        .for_each(|_| futures::future::ready(()));
    // The first-status writers end once the controller (and with it the watch that feeds
    // them) has stopped.
    futures::future::join(controller, first_statuses).await;
    let _ = alive.send(());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(finalizers: &[&str], identity_id: Option<&str>) -> Identity {
        let mut value = json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": "a", "namespace": "ns", "uid": "u1", "generation": 1,
                          "finalizers": finalizers },
            "spec": { "schemaId": "customer", "traits": {} }
        });
        if let Some(id) = identity_id {
            value["status"] = json!({ "identityId": id, "observedGeneration": 1 });
        }
        serde_json::from_value(value).expect("identity")
    }

    #[test]
    fn the_operator_s_own_finalizer_and_status_writes_do_not_reconcile_again() {
        let new = lifecycle_changed(&object(&[], None));
        assert_eq!(new, lifecycle_changed(&object(&[FINALIZER], None)));
        assert_eq!(new, lifecycle_changed(&object(&[FINALIZER], Some("id-1"))));
    }

    #[test]
    fn a_finalizer_removed_from_a_synced_object_reconciles_it() {
        let synced = lifecycle_changed(&object(&[FINALIZER], Some("id-1")));
        assert_ne!(synced, lifecycle_changed(&object(&[], Some("id-1"))));
        assert_ne!(
            synced,
            lifecycle_changed(&object(&["someone.else/keep"], Some("id-1")))
        );
    }
}
