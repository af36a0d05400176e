//! The RecoveryRequest controller: issues one Kratos recovery link or code per generation of each
//! `RecoveryRequest`, delivers it into a Secret the request owns, and clears that Secret when it
//! expires.
//!
//! Per reconcile: [`observe`] reads the target Secret (its annotations, not its data) and
//! resolves the identity; [`plan`] decides, without I/O, whether to issue, adopt, expire or wait;
//! [`act`] calls Kratos and writes the Secret; [`report`] writes the status and Events.
//!
//! One-shot: a link or code is issued only while `status.issuedGeneration` differs from
//! `metadata.generation`. The Secret is written before the status and carries the generation it
//! was issued for (annotation `kratos-operator.dev/issued-generation`), read straight from the API
//! server; so a lost status write, a stale cache or an operator restart never issues a second
//! one. The link and the code go nowhere but into that Secret.

pub mod act;
pub mod observe;
pub mod plan;
pub mod report;

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, channel::mpsc::UnboundedReceiver, future::BoxFuture, future::Shared};
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    runtime::{Controller, controller::Action, reflector::ObjectRef},
};
use tracing::info;

use crate::{
    Error, Result,
    api::{
        Identity,
        recovery_request::{RecoveryPhase, RecoveryRequest},
    },
    controller::Context,
};
use plan::{IdentityResolution, Plan};

/// Why nothing can be issued right now (reported as `Ready=False` with this reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// Condition reason (`IdentityNotReady`, `InvalidSpec`, `MethodDisabled`, ...).
    pub reason: &'static str,
    /// Message for the condition and the Event (never a link or code).
    pub message: String,
    /// `Pending` (it may resolve by itself) or `Failed` (Kratos or the operator refused).
    pub phase: RecoveryPhase,
    /// `Stalled=True`: only a change (to the spec, or to Kratos' configuration) can help.
    pub stalled: bool,
    /// Whether to look again after the resync interval (else only when the spec changes).
    pub retry: bool,
}

impl Blocked {
    /// Waiting for something that may appear by itself (an Identity, a Secret going away).
    pub fn pending(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            phase: RecoveryPhase::Pending,
            stalled: false,
            retry: true,
        }
    }
    /// Refused for good: nothing is retried until the spec changes.
    pub fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            phase: RecoveryPhase::Failed,
            stalled: true,
            retry: false,
        }
    }
    /// Refused because of Kratos' configuration: checked again after the resync interval.
    pub fn failed_retry(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            phase: RecoveryPhase::Failed,
            stalled: true,
            retry: true,
        }
    }
}

/// Observes and plans for `obj`.
async fn decide(obj: &RecoveryRequest, ctx: &Context) -> Result<Plan> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let name = obj.name_any();
    let status = obj.status.clone().unwrap_or_default();
    let target = plan::secret_name(&obj.spec, &name);
    let secret = observe::secret(ctx, &ns, &target, &uid).await?;
    let issued_now =
        status.issued_generation.is_some() && status.issued_generation == obj.metadata.generation;
    // The identity matters only when something may be issued.
    let identity = if issued_now {
        IdentityResolution::NotReady(String::new())
    } else {
        observe::identity(ctx, obj).await?
    };
    Ok(plan::plan(&plan::Observed {
        generation: obj.metadata.generation.unwrap_or(0),
        name: &name,
        spec: &obj.spec,
        status: &status,
        secret: secret.as_ref(),
        identity: &identity,
        now: Timestamp::now(),
    }))
}

/// [`decide`], reporting `KratosUnavailable` when reading the identity from Kratos failed.
async fn decided(obj: &RecoveryRequest, ctx: &Context) -> Result<Plan> {
    let decided = decide(obj, ctx).await;
    if let Err(e) = &decided
        && e.is_kratos_unavailable()
    {
        report::unavailable(ctx, obj, e).await;
    }
    decided
}

/// Reconciles one RecoveryRequest.
pub async fn reconcile(obj: Arc<RecoveryRequest>, ctx: Arc<Context>) -> Result<Action> {
    let key = crate::controller::backoff::key(&*obj);
    let result = apply(obj, &ctx).await;
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    result
}

async fn apply(obj: Arc<RecoveryRequest>, ctx: &Context) -> Result<Action> {
    if obj.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes the Secret with its owner.
        return Ok(Action::await_change());
    }
    let mut obj = obj;
    let mut plan = decided(&obj, ctx).await?;
    if matches!(plan, Plan::Issue(_) | Plan::Adopt(_)) {
        // Never issue (or report an adoption) on the word of a possibly stale cache.
        let ns = obj
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let api: Api<RecoveryRequest> = Api::namespaced(ctx.client.clone(), &ns);
        let Some(fresh) = api.get_opt(&obj.name_any()).await? else {
            return Ok(Action::await_change());
        };
        if fresh.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        obj = Arc::new(fresh);
        plan = decided(&obj, ctx).await?;
    }
    let resync = ctx.settings.resync_interval;
    match plan {
        Plan::Issue(issue) => match act::issue(ctx, &obj, &issue).await {
            Ok(Ok(facts)) => {
                report::issued(ctx, &obj, &facts).await?;
                let previous = obj.status.as_ref().and_then(|s| s.secret_name.clone());
                if let Some(previous) = previous.filter(|p| *p != facts.secret_name) {
                    act::delete_previous_secret(ctx, &obj, &previous).await?;
                }
                Ok(Action::requeue(
                    plan::until(facts.expires_at, Timestamp::now()).min(resync),
                ))
            }
            Ok(Err(blocked)) => {
                report::blocked(ctx, &obj, &blocked).await?;
                Ok(if blocked.retry {
                    Action::requeue(resync)
                } else {
                    Action::await_change()
                })
            }
            Err(e) => {
                let transient = e.is_kratos_unavailable();
                if transient {
                    report::unavailable(ctx, &obj, &e).await;
                }
                Err(e)
            }
        },
        Plan::Adopt(facts) => {
            info!(
                namespace = obj.namespace().unwrap_or_default(),
                name = obj.name_any(),
                generation = facts.generation,
                "found the Secret of an earlier issue whose status write was lost"
            );
            report::adopted(ctx, &obj, &facts).await?;
            Ok(Action::requeue(
                plan::until(facts.expires_at, Timestamp::now()).min(resync),
            ))
        }
        Plan::Wait(facts) => {
            report::waiting(ctx, &obj, &facts).await?;
            Ok(Action::requeue(
                plan::until(facts.expires_at, Timestamp::now()).min(resync),
            ))
        }
        Plan::Expire(facts) => {
            act::clear(ctx, &obj, &facts).await?;
            report::expired(ctx, &obj, &facts).await?;
            Ok(Action::await_change())
        }
        Plan::Done => Ok(Action::await_change()),
        Plan::Blocked(blocked) => {
            report::blocked(ctx, &obj, &blocked).await?;
            Ok(if blocked.retry {
                Action::requeue(resync)
            } else {
                Action::await_change()
            })
        }
    }
}

/// Requeues a failed reconcile with per-object exponential backoff.
pub fn error_policy(obj: Arc<RecoveryRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::controller::backoff::requeue_after_failure(&*obj, error, &ctx)
}

/// Runs the RecoveryRequest controller for one namespace (or all) until `shutdown`.
///
/// A request waiting for its Identity is issued as soon as that Identity is ready: `identities`
/// are the Identity objects the Identity controller's watch saw change (in the same scope), and
/// each one reconciles the requests that name it. Sharing that watch, rather than watching
/// Identities a second time, keeps every Identity change to one list and one watch event from
/// the API server.
pub async fn controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: Shared<BoxFuture<'static, ()>>,
    identities: UnboundedReceiver<ObjectRef<Identity>>,
) {
    let client = ctx.client.clone();
    let requests: Api<RecoveryRequest> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let controller = Controller::new(requests, ctx.settings.watch_config());
    let store = controller.store();
    let naming = identities.flat_map(move |identity| {
        futures::stream::iter(
            store
                .state()
                .into_iter()
                .filter(|r| {
                    r.namespace() == identity.namespace
                        && r.spec
                            .identity_ref
                            .as_ref()
                            .is_some_and(|i| i.name == identity.name)
                })
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>(),
        )
    });
    info!(
        namespace = namespace.unwrap_or("*"),
        "starting RecoveryRequest controller"
    );
    controller
        .reconcile_on(naming)
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(ctx.settings.max_concurrent_reconciles)
                .debounce(Duration::from_millis(200)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}
