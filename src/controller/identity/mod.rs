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
pub mod changes;
pub mod desired;
pub mod detach;
#[cfg(test)]
mod fixtures;
pub mod late;
pub mod markers;
pub mod observe;
pub mod outcome;
pub mod pending;
pub mod plan;
pub mod report;
pub mod session_sweep;
pub mod state;
pub mod status;
pub mod sweep;
pub mod trust;
pub mod watch;

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use kube::{Api, ResourceExt, runtime::controller::Action};
use tracing::Instrument;

pub use self::{
    changes::lifecycle_changed,
    state::{Context, KnownIds, State},
    watch::controller,
};
use self::{
    detach::Handoff,
    outcome::Outcome,
    plan::{Cleanup, Observed, Plan},
};
use crate::{
    Error, Result,
    api::{FINALIZER, GuardedIdentity, identity::Identity},
    controller::finalizer,
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
    /// For a stalled outcome: what can change it that the controller does not watch, so the
    /// object is looked at again periodically (`None`: only a watched change helps).
    pub recheck: Option<Recheck>,
    /// For an outcome that ends by itself at a known time: look again after this long instead of
    /// the resync interval.
    pub retry_after: Option<Duration>,
    /// Whether its Event is a Warning (a problem) rather than Normal (a wait that ends by itself).
    pub warning: bool,
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
            retry_after: None,
            warning: true,
        }
    }
    /// A wait that ends by itself after `after`: looked at again then; a Normal Event.
    pub fn waiting(reason: &'static str, message: impl Into<String>, after: Duration) -> Self {
        Self {
            retry_after: Some(after),
            warning: false,
            ..Self::new(reason, message)
        }
    }
    /// A blocked outcome that needs a spec change.
    pub fn stalled(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            stalled: true,
            ..Self::new(reason, message)
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
                Ok(Finalizer::Keep(wait)) => {
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        "an earlier create of this object's identity may still commit; the \
                         finalizer stays until it has settled"
                    );
                    Ok(Action::requeue(wait + SETTLE_MARGIN))
                }
                Ok(Finalizer::Remove(action)) => {
                    forget(&obj, &ctx);
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
        dispatch(obj, ctx.clone(), &handoff, Finalized::Before).await
    } else if obj.spec.undecodable.is_some() {
        // Nothing will be created for a spec that cannot be read: no finalizer, only the report.
        apply(obj, ctx.clone(), Finalized::Before)
            .await
            .map(Action::from)
    } else {
        match finalizer::add(&api, &*obj, FINALIZER)
            .await
            .map(|GuardedIdentity(i)| i)
        {
            // Decoded without managedFields, as in the cache (a detached create holds this copy
            // until it ends).
            Ok(patched) => dispatch(Arc::new(patched), ctx.clone(), &handoff, Finalized::Now).await,
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
async fn dispatch(
    obj: Arc<Identity>,
    ctx: Arc<Context>,
    handoff: &Handoff,
    finalized: Finalized,
) -> Result<Action> {
    if detach::wanted(&obj, &ctx) {
        handoff.spawn(obj, ctx, finalized).await;
        return Ok(Action::await_change());
    }
    apply(obj, ctx, finalized).await.map(Action::from)
}

/// When the object got the finalizer that guards its Kratos identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finalized {
    /// Before this reconcile (by an earlier one, or at admission): a deletion since has seen it.
    Before,
    /// By this reconcile. A deletion the API server had already begun when the finalizer was
    /// added can remove the object all the same (the API server decides on the finalizers it
    /// read before the patch; kube-apiserver 1.37 does so in about a third of such races, see
    /// docs/reliability.md), and nothing would then delete what this reconcile creates.
    Now,
}

async fn apply(obj: Arc<Identity>, ctx: Arc<Context>, finalized: Finalized) -> Result<Next> {
    match sync(&obj, &ctx).await {
        Ok(outcome) => {
            if let (Outcome::Synced(s), Some(uid)) = (&outcome, obj.metadata.uid.as_deref()) {
                ctx.state.known_ids.set(uid, &s.identity_id);
            }
            if finalized == Finalized::Now && matches!(outcome, Outcome::Synced(_)) {
                if gone_without_cleanup(&obj, &ctx).await? {
                    return Ok(Next::AwaitChange);
                }
                check_again_later(obj.clone(), ctx.clone());
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

/// After a reconcile that added the finalizer and then made (or found) the object's identity:
/// whether the object is gone without its finalizer having run. The finalizer's cleanup, which
/// nothing else will run now, is then run here (it deletes or releases the identity as the
/// object's `deletionPolicy` says, once the marker proves it is this object's).
async fn gone_without_cleanup(obj: &Identity, ctx: &Context) -> Result<bool> {
    let (uid, _) = owner(obj)?;
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Identity> = Api::namespaced(ctx.client.clone(), &ns);
    let current = api.get_opt(&obj.name_any()).await?;
    // Still there, or being deleted with the finalizer: the finalizer's cleanup will run.
    if current.is_some_and(|c| {
        c.uid().as_deref() == Some(uid.as_str())
            && (c.metadata.deletion_timestamp.is_none() || finalizer::has(&c, FINALIZER))
    }) {
        return Ok(false);
    }
    tracing::warn!(
        "the object was deleted while its finalizer was being added, so its finalizer never \
         ran; running its cleanup now"
    );
    if let Finalizer::Keep(wait) = cleanup(obj, ctx).await? {
        // No object is left to look at again: an earlier create that commits later stays.
        tracing::warn!(
            wait_ms = wait.as_millis() as u64,
            "an earlier create of the deleted object's identity may still commit"
        );
    }
    forget(obj, ctx);
    Ok(true)
}

/// The deletion that raced the finalizer may still be under way in the API server when the
/// object is first read back (under load it was, in about one race in ten): the object is read
/// back once more `--create-settle-time` later, off the reconcile's path. Nothing else would
/// look at it again once it is gone.
///
/// A finalizer's cleanup in the meantime makes the read-back unnecessary ([`forget`]).
fn check_again_later(obj: Arc<Identity>, ctx: Arc<Context>) {
    let Some(uid) = obj.metadata.uid.clone() else {
        return;
    };
    let wait = ctx.settings.create_settle_time;
    // It logs in the reconcile's span (object.ref).
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            tokio::time::sleep(wait).await;
            // The id this reconcile recorded is forgotten when the finalizer's cleanup ends
            // ([`forget`]): nothing is left to do.
            if ctx.state.known_ids.get(&uid).is_none() {
                return;
            }
            if let Err(e) = gone_without_cleanup(&obj, &ctx).await {
                tracing::warn!(error = %e, "cannot check whether a new Identity is still there");
            }
        }
        .instrument(span),
    );
}

/// Forgets what this process keeps of an object that is gone.
fn forget(obj: &Identity, ctx: &Context) {
    if let Some(uid) = obj.metadata.uid.as_deref() {
        ctx.state.known_ids.forget(uid);
        ctx.state.pending.forget(uid);
    }
    ctx.state.statuses.forget(obj);
}

/// The most steps one reconcile takes: each step observes or writes one more thing, and a
/// plan never asks for the same one twice, so a reconcile needs about ten.
const MAX_STEPS: usize = 32;

/// The object's uid and `<namespace>/<name>`, as its owner marker in Kratos names it.
fn owner(obj: &Identity) -> Result<(String, String)> {
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    Ok((
        uid,
        format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()),
    ))
}

/// What is observed before the first plan: the object's own fields.
fn observed<'a>(
    obj: &'a Identity,
    ctx: &Context,
    uid: &'a str,
    name: &'a str,
) -> Result<Observed<'a>> {
    let owner = plan::Owner { uid, name };
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
    o.first_generation = obj.metadata.generation == Some(1);
    o.settling = ctx
        .state
        .pending
        .remaining(owner.uid, std::time::Instant::now());
    // A predecessor's (or an earlier) create of it may be under way: watched for a late commit.
    if o.settling.is_some() && o.recorded_id.is_none() {
        ctx.state.late.suspect(owner.uid, namespace);
    }
    Ok(o)
}

/// Brings Kratos in line with the spec: plans, observes or writes what the plan says, and plans
/// again until the plan is an outcome.
pub async fn sync(obj: &Identity, ctx: &Context) -> Result<Outcome> {
    let (uid, name) = owner(obj)?;
    let mut o = observed(obj, ctx, &uid, &name)?;
    for _ in 0..MAX_STEPS {
        match plan::plan(&o) {
            Plan::Observe(need) => observe::observe(ctx, need, &mut o).await?,
            Plan::Write(write) => act::write(ctx, write, &mut o).await?,
            Plan::Done(outcome) => return Ok(outcome),
        }
    }
    Err(Error::Unsettled(MAX_STEPS))
}

/// What becomes of the finalizer after a cleanup.
enum Finalizer {
    /// Remove it: the deletion is over.
    Remove(Action),
    /// Keep it and look again after this long: an earlier create may still commit.
    Keep(Duration),
}

/// Past the end of a wait for creates to settle: timers fire at their deadline or later, and the
/// plan must see the window closed.
const SETTLE_MARGIN: Duration = Duration::from_millis(100);

/// The finalizer's cleanup: looks for this object's identity as [`plan::cleanup`] asks, then
/// deletes or releases it; the finalizer goes only once no earlier create can still commit.
async fn cleanup(obj: &Identity, ctx: &Context) -> Result<Finalizer> {
    let (uid, name) = owner(obj)?;
    let mut o = observed(obj, ctx, &uid, &name)?;
    for _ in 0..MAX_STEPS {
        match plan::cleanup(&o) {
            Cleanup::Observe(need) => observe::observe(ctx, need, &mut o).await?,
            done => {
                act::cleanup(ctx, &done).await?;
                report::cleaned(ctx, obj, &done);
                return Ok(match plan::finalizer_wait(&o) {
                    Some(wait) => Finalizer::Keep(wait),
                    None => Finalizer::Remove(Action::await_change()),
                });
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
            (false, _) => Next::After(
                b.retry_after
                    .map_or(settings.resync_interval, |wait| wait + SETTLE_MARGIN),
            ),
            (true, Some(Recheck::Namespace)) => Next::After(settings.resync_interval),
            (true, Some(Recheck::Schema)) => Next::After(settings.schema_recheck_interval),
            (true, None) => Next::AwaitChange,
        },
    }
}
