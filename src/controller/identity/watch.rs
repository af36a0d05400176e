//! The Identity controller's watches: which changes reconcile an Identity (its own lifecycle,
//! its password Secret, its IdentitySchemaRef, a drift sweep's finding, the end of a detached
//! create), and the controller that runs [`super::reconcile`] on them.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{
    FutureExt, StreamExt, TryStreamExt, channel::mpsc::UnboundedSender, future::BoxFuture,
    future::Shared,
};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::info;

use super::{
    Context, changes::Changes, detach::Handoff, error_policy, reconcile, report, sweep, trust,
};
use crate::api::{GuardedIdentity, IdentitySchemaRef, identity::Identity};

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

/// An API of kind `K` over the controller's scope.
fn api<K>(ctx: &Context, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// Whether `obj` takes its password from the Secret `name` (of its namespace).
fn uses_secret(obj: &Identity, name: &str) -> bool {
    obj.spec
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref())
        .is_some_and(|p| {
            p.secret_ref.as_ref().is_some_and(|r| r.name == name)
                || p.hashed_secret_ref.as_ref().is_some_and(|r| r.name == name)
        })
}

/// The objects a watch sees change, a deleted one with a `deletionTimestamp` set here (the
/// API server's delete event carries none when no finalizer held the object): the mappers tell
/// a deletion from a change.
fn with_deletions_marked<K>(
    api: Api<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, watcher::Config::default().any_semantic())
        .map_ok(|event| {
            let objects: Vec<K> = match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                watcher::Event::Delete(mut o) => {
                    o.meta_mut()
                        .deletion_timestamp
                        .get_or_insert_with(|| Time(jiff::Timestamp::now()));
                    vec![o]
                }
                watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
            };
            futures::stream::iter(objects.into_iter().map(Ok))
        })
        .try_flatten()
}

/// Reconciles the Identities that use a Secret or IdentitySchemaRef when it changes (and,
/// for an Identity synced as recorded, only when it matters: [`trust`]).
fn watch_dependencies(
    controller: Controller<Identity>,
    ctx: &Context,
    namespace: Option<&str>,
    store: &Store<Identity>,
) -> Controller<Identity> {
    let (secret_store, schema_store) = (store.clone(), store.clone());
    controller
        .watches_stream(
            with_deletions_marked(api::<PartialObjectMeta<Secret>>(ctx, namespace)),
            move |secret| {
                let name = secret.name_any();
                // A Secret that is gone, or going, reads as no version.
                let version = secret
                    .metadata
                    .deletion_timestamp
                    .is_none()
                    .then(|| {
                        Some(trust::secret_version(
                            secret.metadata.uid.as_deref()?,
                            secret.metadata.resource_version.as_deref()?,
                        ))
                    })
                    .flatten();
                referencing(&secret_store, secret.namespace(), |i| {
                    uses_secret(i, &name) && trust::secret_matters(i, version.as_deref())
                })
            },
        )
        .watches_stream(
            with_deletions_marked(api::<IdentitySchemaRef>(ctx, namespace)),
            move |sr| {
                let name = sr.name_any();
                let gone = sr.metadata.deletion_timestamp.is_some();
                referencing(&schema_store, sr.namespace(), |i| {
                    i.spec.schema_ref.as_ref().is_some_and(|r| r.name == name)
                        && (gone || trust::schema_matters(i, &sr))
                })
            },
        )
}

/// The handoff of detached creates, and the sender that says the controller returned.
///
/// Detached creates finish what they started on shutdown (`run` waits for them), and stop at
/// once when the controller's future is dropped (an aborted controller task) together with
/// the sender; a controller that returns says so through the sender, which never aborts them.
fn handoff(
    retrigger: futures::channel::mpsc::UnboundedSender<ObjectRef<Identity>>,
    shutdown: Shared<BoxFuture<'static, ()>>,
) -> (Handoff, futures::channel::oneshot::Sender<()>) {
    let (alive, dropped) = futures::channel::oneshot::channel::<()>();
    let handoff = Handoff {
        retrigger,
        shutdown,
        abort: dropped
            .then(|returned| async move {
                if returned.is_ok() {
                    futures::future::pending::<()>().await;
                }
            })
            .boxed()
            .shared(),
    };
    (handoff, alive)
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
    let identities: Api<GuardedIdentity> = api(&ctx, namespace);
    // Reconcile on spec, finalizer and deletion changes only: the operator's own status writes
    // would otherwise cost a Kratos read per object after every write. The store still sees
    // every change (the sweep reads status from it).
    let (store, writer) = kube::runtime::reflector::store();
    let (first_tx, first_rx) = futures::channel::mpsc::unbounded();
    let first_statuses = report::first_statuses(ctx.clone(), store.clone(), first_rx);
    // A restarted operator trusts synced statuses until its first sweep ([`trust`]).
    let changes = Arc::new(Mutex::new(Changes::new(ctx.settings.drift_sweeps)));
    let forget = changes.clone();
    let stream = kube::runtime::reflector(
        writer,
        // Guarded: one object whose spec cannot be decoded must not stop the watch of all the
        // others; it arrives as a skeleton that reports InvalidSpec. managedFields (most of an
        // object's bytes, never read) are dropped while decoding.
        watcher(identities, ctx.settings.watch_config()).map_ok(unguard),
    )
    .default_backoff()
    .inspect_ok(move |event| {
        if let watcher::Event::Delete(obj) = event
            && let Ok(mut changes) = forget.lock()
        {
            changes.forget(obj);
        }
    })
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
    .try_filter(move |obj| {
        let admit = changes.lock().map_or(true, |mut c| c.admit(obj));
        futures::future::ready(admit)
    });
    let controller = Controller::for_stream(stream, store.clone());
    ctx.caches.add_identities(store.clone());
    let (sweep_tx, sweep_triggers) = futures::channel::mpsc::unbounded();
    let (retrigger, retriggers) = futures::channel::mpsc::unbounded();
    let (handoff, alive) = handoff(retrigger, shutdown.clone());
    if ctx.settings.drift_sweeps {
        tokio::spawn(sweep::run(
            ctx.clone(),
            store.clone(),
            namespace.map(str::to_string),
            sweep_tx,
        ));
    } else {
        drop(sweep_tx);
    }
    info!(
        namespace = namespace.unwrap_or("*"),
        "starting Identity controller"
    );
    let controller = watch_dependencies(controller, &ctx, namespace, &store)
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
