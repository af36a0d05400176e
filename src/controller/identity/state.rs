//! What the Identity controller keeps beside the context every controller shares.

use std::sync::Arc;

use super::{batch, detach, late, markers, pending, status};

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
    /// Creates whose outcome is unknown and how long they may still commit ([`pending`]).
    pub pending: pending::PendingCreates,
    /// Objects whose create may commit later than that ([`late`]).
    pub late: late::LateCreates,
    /// Kratos ids this process created or found, by object uid: a reconcile that runs before the
    /// status it wrote is in the cache must not create the identity again.
    pub known_ids: KnownIds,
    /// New identities being created off the reconciles' path.
    pub detached: detach::Detached,
    /// Status writes, off the reconciles' path.
    pub statuses: status::StatusWriter,
}

impl State {
    /// The state of controllers that start now (this process became leader: the previous
    /// leader's creates may still commit, and a marker index built before may miss them).
    pub fn new(ctx: &crate::controller::Context) -> Self {
        let pending = pending::PendingCreates::new(ctx.settings.create_settle_time);
        pending.begin();
        Self {
            creates: ctx.settings.batch_creates.then(|| {
                batch::CreateBatcher::spawn(ctx.kratos.clone(), ctx.settings.batch_window)
            }),
            markers: markers::MarkerIndex::default(),
            pending,
            late: late::LateCreates::new(ctx.settings.create_settle_time),
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
