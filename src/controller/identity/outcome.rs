//! What one Identity reconcile did: the facts [`super::act`] hands to [`super::report`] for the
//! status and Events.

use super::{Blocked, desired::Difference};

/// What happened to the Kratos identity in this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It was created.
    Created,
    /// An unowned identity was adopted (and then updated as needed).
    Adopted,
    /// An identity carrying this object's marker was found and used (after a lost status write).
    TookBack,
    /// It was updated; these fields differed.
    Updated(Vec<Difference>),
    /// Nothing differed.
    Unchanged,
}

/// A reconcile that reached Kratos.
#[derive(Debug, Clone)]
pub struct Synced {
    /// The Kratos identity id.
    pub identity_id: String,
    /// Its state as Kratos reports it (`active`, `inactive`).
    pub state: String,
    /// Its schema id.
    pub schema_id: String,
    /// The digest of the schema the traits were validated against (none without a compiled
    /// schema).
    pub schema_digest: Option<String>,
    /// What changed.
    pub change: Change,
    /// The display identifier.
    pub identifier: Option<String>,
    /// The Secret version of a password imported in this reconcile.
    pub password_imported: Option<String>,
    /// OIDC providers of the spec.
    pub oidc: Vec<String>,
    /// Active sessions after session work.
    pub active_sessions: i32,
}

/// How a reconcile ended (transient failures are errors instead).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Kratos matches the spec.
    Synced(Box<Synced>),
    /// It cannot be synced now.
    Blocked(Blocked),
}
