//! The decision of one Identity reconcile, without I/O. From what the reconcile has observed so
//! far ([`Observed`]), [`plan`] says what to do next ([`Plan`]): look at one more thing, make
//! one write to Kratos, or stop with an [`Outcome`]. The reconcile (`super::sync`) carries the
//! plan out, records what it saw or what Kratos answered, and plans again until it is done; a
//! create that conflicts is recorded like any answer, and the next plan looks the identifiers
//! up. Every decision lives here:
//!
//! - whether the spec can be served at all (limits, schema, the namespace's policy, the Secret);
//! - which Kratos identity is this object's: ownership is read from the marker in Kratos, never
//!   from `status.identityId` (a field a tenant can write), so an id in status only says where
//!   to look;
//! - whether to create, take back, adopt or refuse, and what to update;
//! - which addresses to verify and which sessions to revoke;
//! - on deletion, which identity to delete or release ([`cleanup`]).
//!
//! No client, no clock (the reconcile passes `now`), no logging; every branch is unit-tested
//! below.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use secrecy::SecretString;
use serde_json::Value;

use super::{
    Blocked, Recheck,
    desired::{self, Desired, Difference, PasswordInput},
    outcome::{Change, Outcome, Synced},
};
use crate::{
    api::{
        IdentitySchemaRef, OWNER_MARKER, UID_MARKER, conditions,
        identity::{
            AdoptionPolicy, DeletionPolicy, IdentitySpec, MAX_FREE_JSON_BYTES, MAX_NESTING,
            PasswordPolicy,
        },
    },
    kratos::{CreateIdentityBody, Identity, JsonPatchOp, Session, UpdateIdentityBody},
    schema::CompiledSchema,
    tenancy::{ANNOTATION_IDENTIFIER_PATTERNS, NamespacePolicy, REASON_FORBIDDEN},
};

/// A Kratos answer that is an outcome for the object (reported in status), not a failure to
/// retry: the request was refused for what it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 409: another identity already uses one of the identifiers or addresses.
    Conflict(String),
    /// 400: Kratos rejected the request; `pointer` names the field when Kratos says which.
    Invalid {
        /// Kratos' reason.
        reason: String,
        /// JSON pointer into the request (`#/traits/email`), when given.
        pointer: Option<String>,
    },
}

/// What Kratos answered to a write: its result, or a [`Refusal`].
pub type Answer<T> = Result<T, Refusal>;

/// What one reconcile has seen so far, and what Kratos answered to its writes. A field that is
/// `None` has not been looked at (or written) yet; the reconcile fills it when a [`Plan`] asks.
/// No `Debug`: it holds the password Secret.
#[derive(Clone)]
pub struct Observed<'a> {
    /// The object's spec.
    pub spec: &'a IdentitySpec,
    /// The object's uid and `<namespace>/<name>`.
    pub owner: Owner<'a>,
    /// The object's namespace.
    pub namespace: &'a str,
    /// The Secret version of the password last imported (from status).
    pub last_password: Option<&'a str>,
    /// The Kratos id recorded for the object (`status.identityId`, or this process' memory of an
    /// id it wrote): where to look first, not a proof of ownership.
    pub recorded_id: Option<String>,
    /// Whether creates go through the batcher (identifiers are then looked up only after a
    /// create conflicts).
    pub batched: bool,
    /// Whether the spec never changed (`metadata.generation` 1): every create ever sent for the
    /// object carried the identifiers it has now, so Kratos refuses another one with them.
    pub first_generation: bool,
    /// How long a create for the object whose outcome is unknown (a predecessor's, or one of
    /// this process that failed) may still commit; `None` when none can. Until then "no
    /// identity" is not an answer ([`super::pending`]).
    pub settling: Option<std::time::Duration>,
    /// The time of this reconcile.
    pub now: Timestamp,
    /// The IdentitySchemaRef named by `spec.schemaRef` (`Some(None)`: it does not exist).
    pub schema_ref: Option<Option<Arc<IdentitySchemaRef>>>,
    /// The compiled schema (`Some(None)`: Kratos does not serve it or it does not compile;
    /// Kratos then validates alone).
    pub schema: Option<Option<Arc<CompiledSchema>>>,
    /// The namespace's tenancy policy.
    pub policy: Option<NamespacePolicy>,
    /// The identity at [`Self::recorded_id`] (`Some(None)`: Kratos has none there).
    pub recorded: Option<Option<Identity>>,
    /// The identities that carry one of the object's identifiers.
    pub candidates: Option<Vec<Identity>>,
    /// The identity the marker index names for the object's uid (objects without identifiers).
    pub marked: Option<Option<Identity>>,
    /// The password Secret (`Some(None)`: it does not exist).
    pub secret: Option<Option<Secret>>,
    /// The answer to the create: the new identity's id.
    pub created: Option<Answer<String>>,
    /// The identity read again with its credentials (a lookup's list carries none).
    pub full: Option<Identity>,
    /// The answer to removing the OIDC links that left the spec.
    pub unlinked: Option<Answer<()>>,
    /// The answer to the update: the updated identity.
    pub updated: Option<Answer<Identity>>,
    /// An adopted identity read back after the update wrote its marker.
    pub read_back: Option<Identity>,
    /// The identity after its addresses were marked verified.
    pub verified: Option<Identity>,
    /// The identity's active sessions.
    pub sessions: Option<Vec<Session>>,
    /// Whether the sessions the plan named were revoked.
    pub revoked: bool,
}

impl<'a> Observed<'a> {
    /// Nothing observed yet about the object with these fields.
    pub fn new(
        spec: &'a IdentitySpec,
        owner: Owner<'a>,
        namespace: &'a str,
        last_password: Option<&'a str>,
        now: Timestamp,
    ) -> Self {
        Self {
            spec,
            owner,
            namespace,
            last_password,
            recorded_id: None,
            batched: false,
            first_generation: true,
            settling: None,
            now,
            schema_ref: None,
            schema: None,
            policy: None,
            recorded: None,
            candidates: None,
            marked: None,
            secret: None,
            created: None,
            full: None,
            unlinked: None,
            updated: None,
            read_back: None,
            verified: None,
            sessions: None,
            revoked: false,
        }
    }
}

/// Something to look at before deciding further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The IdentitySchemaRef of this name in the object's namespace.
    SchemaRef(String),
    /// The compiled schema of this Kratos schema id. `recheck`: fetched again when older than
    /// the schema recheck interval (a `schemaId`'s schema; an IdentitySchemaRef refreshes its
    /// own).
    Schema {
        /// Kratos schema id.
        id: String,
        /// Whether a cached schema must be fresh.
        recheck: bool,
    },
    /// The namespace's tenancy policy.
    Namespace,
    /// The identity at the recorded id.
    Recorded(String),
    /// The identities carrying any of these identifiers.
    Candidates(Vec<String>),
    /// The identity the marker index names for the object.
    Marked,
    /// The password Secret of this name.
    Secret(String),
    /// The identity of this id with its credentials.
    Full(String),
    /// The adopted identity of this id, after the update.
    ReadBack(String),
    /// The active sessions of the identity of this id.
    Sessions(String),
}

/// One write to Kratos. `Debug` shows no secret: the password inside a body is redacted.
#[derive(Debug, Clone)]
pub enum Write {
    /// Create the identity. A failure that is not a refusal may still commit in Kratos later:
    /// the reconcile records it ([`super::pending`]).
    Create {
        /// The POST body.
        body: Box<CreateIdentityBody>,
    },
    /// Remove these OIDC links (imported by the operator, no longer in the spec).
    Unlink {
        /// Kratos identity id.
        id: String,
        /// `provider:subject` links.
        links: Vec<String>,
    },
    /// Replace the identity with this body.
    Update {
        /// Kratos identity id.
        id: String,
        /// The PUT body.
        body: Box<UpdateIdentityBody>,
    },
    /// Mark addresses verified.
    Verify {
        /// Kratos identity id.
        id: String,
        /// JSON Patch operations.
        ops: Vec<JsonPatchOp>,
    },
    /// Revoke sessions.
    Revoke {
        /// Kratos identity id.
        id: String,
        /// Delete every session of the identity.
        all: bool,
        /// Disable these sessions.
        disable: Vec<String>,
    },
}

/// The next step of a reconcile.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Look at something, then plan again.
    Observe(Need),
    /// Write to Kratos, record the answer, then plan again.
    Write(Write),
    /// Done: report this.
    Done(Outcome),
}

impl From<Blocked> for Plan {
    fn from(blocked: Blocked) -> Self {
        Self::Done(Outcome::Blocked(blocked))
    }
}

/// A step of the decision: the value it settled, or the plan to stop at.
type Decided<T> = Result<T, Plan>;

/// The next step for the Identity as observed (pure).
pub fn plan(o: &Observed<'_>) -> Plan {
    match decide(o) {
        Ok(plan) | Err(plan) => plan,
    }
}

fn decide(o: &Observed<'_>) -> Decided<Plan> {
    let admitted = admit(o)?;
    let found = existing(o, &admitted.identifiers)?;
    // The password is needed to create, or to re-import under policy Sync.
    let needs_password = found.is_none()
        || o.spec
            .credentials
            .as_ref()
            .and_then(|c| c.password.as_ref())
            .and_then(|p| p.policy)
            == Some(PasswordPolicy::Sync);
    let password = if needs_password { password(o)? } else { None };
    let desired = desired::desired(
        o.spec,
        admitted.schema_id,
        o.owner.name,
        o.owner.uid,
        password,
    );
    let report = Report {
        identifier: admitted
            .compiled
            .and_then(|c| c.display_identifier(&o.spec.traits)),
        oidc: desired.oidc.iter().map(|(p, _)| p.clone()).collect(),
        password_version: desired.password.as_ref().map(|p| p.version.clone()),
        schema_digest: admitted.compiled.map(|c| c.digest.clone()),
    };
    match found {
        None => create(o, &desired, report),
        Some((existing, how)) => {
            let (identity, change, password_imported) =
                update(o, &desired, existing, how, &report)?;
            finish(o, &desired, identity, change, password_imported, report)
        }
    }
}

/// What the spec resolved to once the plan admitted it.
struct Admitted<'o> {
    /// The Kratos schema id.
    schema_id: String,
    /// The compiled schema, when there is one.
    compiled: Option<&'o CompiledSchema>,
    /// The identifier values of the traits (none without a compiled schema).
    identifiers: Vec<String>,
}

/// What the status reports besides the identity itself.
struct Report {
    /// The display identifier.
    identifier: Option<String>,
    /// The spec's OIDC providers.
    oidc: Vec<String>,
    /// The Secret version of the password read in this reconcile.
    password_version: Option<String>,
    /// The digest of the compiled schema the traits were validated against.
    schema_digest: Option<String>,
}

/// Whether the spec can be served at all, before Kratos is asked anything: it decodes and
/// stays within the limits, its schema resolves and accepts the traits, and the namespace's
/// policy allows what it asks.
fn admit<'o>(o: &'o Observed<'_>) -> Decided<Admitted<'o>> {
    let spec = o.spec;
    if let Some(why) = &spec.undecodable {
        return Err(Blocked::stalled("InvalidSpec", why.clone()).into());
    }
    check_limits(spec).map_err(|message| Blocked::stalled("InvalidSpec", message))?;
    let schema_id = schema_id(o, spec)?;
    let Some(compiled) = &o.schema else {
        return Err(Plan::Observe(Need::Schema {
            recheck: spec.schema_ref.is_none(),
            id: schema_id,
        }));
    };
    let compiled = compiled.as_deref();
    if let Some(c) = compiled
        && let Err(errors) = c.validate_traits(&spec.traits)
    {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(schema_invalid(
            spec,
            format!(
                "traits do not match schema {schema_id}: {}",
                list.join("; ")
            ),
        )
        .into());
    }
    let identifiers = compiled
        .map(|c| c.identifier_values(&spec.traits))
        .unwrap_or_default();
    // What the namespace may do: decided by the cluster admin on the Namespace.
    let Some(policy) = &o.policy else {
        return Err(Plan::Observe(Need::Namespace));
    };
    if let Some(blocked) = tenancy_refusal(spec, policy, compiled.is_some(), &identifiers) {
        return Err(blocked.into());
    }
    Ok(Admitted {
        schema_id,
        compiled,
        identifiers,
    })
}

/// Brings an existing identity's fields in line with the spec: the OIDC links that left it
/// are removed, then one update sends every difference. Returns the identity as it now is,
/// what changed, and the Secret version of a password imported.
fn update<'o>(
    o: &'o Observed<'_>,
    desired: &Desired,
    existing: &'o Identity,
    how: Option<Change>,
    report: &Report,
) -> Decided<(&'o Identity, Option<Change>, Option<String>)> {
    // An identity found by a lookup (a list) comes without credentials; the OIDC links to add
    // or remove are decided on the identity itself.
    let existing = if existing.credentials.is_none() {
        o.full
            .as_ref()
            .ok_or_else(|| Plan::Observe(Need::Full(existing.id.clone())))?
    } else {
        existing
    };
    // Links the operator imported and the spec no longer has are removed before the update
    // that drops them from the marker: a failure here leaves the marker, and the next
    // reconcile tries again.
    let links = desired::oidc_to_unlink(desired, existing);
    if !links.is_empty() {
        match &o.unlinked {
            None => {
                return Err(Plan::Write(Write::Unlink {
                    id: existing.id.clone(),
                    links,
                }));
            }
            Some(Err(Refusal::Invalid { reason, .. } | Refusal::Conflict(reason))) => {
                return Err(Blocked::stalled(
                    "InvalidSpec",
                    format!("Kratos refused to remove an OIDC link that left the spec: {reason}"),
                )
                .into());
            }
            Some(Ok(())) => {}
        }
    }

    let mut change = how;
    // An identity taken back was created by this object with the password of that moment.
    let mut password_imported = if change == Some(Change::TookBack) {
        report.password_version.clone()
    } else {
        None
    };
    let last = password_imported.as_deref().or(o.last_password);
    let diffs = desired::differences(desired, existing, last);
    if diffs.is_empty() {
        return Ok((existing, change, password_imported));
    }
    match &o.updated {
        None => Err(Plan::Write(Write::Update {
            id: existing.id.clone(),
            body: Box::new(desired::update_body(desired, existing, last)),
        })),
        Some(Ok(updated)) => {
            if diffs.contains(&Difference::Password) {
                password_imported.clone_from(&report.password_version);
            }
            change.get_or_insert(Change::Updated(diffs));
            Ok((updated, change, password_imported))
        }
        Some(Err(refusal)) => Err(refused(
            o.spec,
            refusal,
            "another Kratos identity already uses one of these identifiers or addresses",
        )
        .into()),
    }
}

/// After the update: an adoption is read back, addresses are verified, sessions revoked; then
/// the identity is Synced.
fn finish(
    o: &Observed<'_>,
    desired: &Desired,
    identity: &Identity,
    change: Option<Change>,
    password_imported: Option<String>,
    report: Report,
) -> Decided<Plan> {
    // Kratos has no compare-and-swap: two objects adopting one identity at once both write
    // their marker and the last write wins. It is read back; the loser backs off to Conflict
    // without touching the identity again (and its status never records the id).
    let identity = if change == Some(Change::Adopted) {
        match &o.read_back {
            None => return Ok(Plan::Observe(Need::ReadBack(identity.id.clone()))),
            Some(written) if ownership(written, o.owner) == Ownership::Ours => written,
            Some(_) => return Err(Blocked::new("Conflict", OWNED_ELSEWHERE).into()),
        }
    } else {
        identity
    };

    let identity = match &o.verified {
        Some(verified) => verified,
        None => {
            let ops = desired::verify_address_ops(desired, identity, o.now);
            if !ops.is_empty() {
                return Ok(Plan::Write(Write::Verify {
                    id: identity.id.clone(),
                    ops,
                }));
            }
            identity
        }
    };

    // Active ones only (flag set and not expired), as the sweep counts them.
    let Some(sessions) = &o.sessions else {
        return Ok(Plan::Observe(Need::Sessions(identity.id.clone())));
    };
    let sessions = desired::plan_sessions(desired, sessions);
    if (sessions.revoke_all || !sessions.disable.is_empty()) && !o.revoked {
        return Ok(Plan::Write(Write::Revoke {
            id: identity.id.clone(),
            all: sessions.revoke_all,
            disable: sessions.disable,
        }));
    }
    Ok(Plan::Done(Outcome::Synced(Box::new(Synced {
        identity_id: identity.id.clone(),
        state: identity.state.as_str().to_string(),
        schema_id: identity.schema_id.clone(),
        schema_digest: report.schema_digest,
        change: change.unwrap_or(Change::Unchanged),
        identifier: report.identifier,
        password_imported,
        oidc: report.oidc,
        active_sessions: sessions.active_after,
    }))))
}

/// An object of the namespace the spec names (an IdentitySchemaRef, a Secret), once
/// observed: `need` asks for it first; one that does not exist blocks the reconcile.
fn named<'o, T>(o: &Observed<'_>, seen: &'o Option<Option<T>>, need: Need) -> Decided<&'o T> {
    match seen {
        Some(Some(found)) => Ok(found),
        Some(None) => {
            let (reason, what) = match &need {
                Need::Secret(name) => ("SecretNotFound", format!("Secret {name}")),
                Need::SchemaRef(name) => ("SchemaNotReady", format!("IdentitySchemaRef {name}")),
                // Only the two above name an object of the namespace.
                _ => ("NotFound", "the object".to_string()),
            };
            Err(Blocked::new(
                reason,
                format!("{what} does not exist in namespace {}", o.namespace),
            )
            .into())
        }
        None => Err(Plan::Observe(need)),
    }
}

/// The Kratos schema id the spec uses: `spec.schemaId`, or the one of the IdentitySchemaRef it
/// names, which must be Ready.
fn schema_id(o: &Observed<'_>, spec: &IdentitySpec) -> Decided<String> {
    match (&spec.schema_ref, &spec.schema_id) {
        (Some(r), _) => {
            let sr = named(o, &o.schema_ref, Need::SchemaRef(r.name.clone()))?;
            let conds = sr
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            if !conditions::is_ready(conds) {
                let why = conditions::ready(conds)
                    .map(|c| c.message.clone())
                    .unwrap_or_else(|| "not resolved yet".into());
                return Err(Blocked::new(
                    "SchemaNotReady",
                    format!("IdentitySchemaRef {} is not Ready: {why}", r.name),
                )
                .into());
            }
            Ok(sr.spec.schema_id.clone())
        }
        (None, Some(id)) => Ok(id.clone()),
        // CEL rejects this at admission; kept for objects created before the rule existed.
        (None, None) => Err(Blocked::stalled(
            "InvalidSpec",
            "exactly one of spec.schemaRef and spec.schemaId must be set",
        )
        .into()),
    }
}

/// The Kratos identity this object manages, if it exists, and how it was found (`None`: by the
/// recorded id). The recorded id only says where to look: the marker in Kratos decides.
fn existing<'o>(
    o: &'o Observed<'_>,
    identifiers: &[String],
) -> Decided<Option<(&'o Identity, Option<Change>)>> {
    if let Some(id) = &o.recorded_id {
        match &o.recorded {
            None => return Err(Plan::Observe(Need::Recorded(id.clone()))),
            Some(Some(identity)) if ownership(identity, o.owner).is_ours() => {
                return Ok(Some((identity, None)));
            }
            Some(Some(_)) => return Err(not_owned().into()),
            // Gone: created again (or found by its identifiers or marker) below.
            Some(None) => {}
        }
    }
    // Kratos refuses a second create with the same identifiers, so while the spec has never
    // changed they find (or, by a conflict, make Kratos find) every identity this object's
    // creates made.
    let identifiers_suffice = !identifiers.is_empty() && o.first_generation;
    // Per-object mode looks the identifiers up before creating. With batched creates the
    // lookup happens only when a create conflicts: an identifier is unique in Kratos, so the
    // conflict is what finds an identity created before (and the lookup then resolves it).
    let conflicted = matches!(o.created, Some(Err(Refusal::Conflict(_))));
    if !identifiers.is_empty() && (!o.batched || conflicted || !identifiers_suffice) {
        let Some(candidates) = &o.candidates else {
            return Err(Plan::Observe(Need::Candidates(identifiers.to_vec())));
        };
        let found = match resolve_existing(candidates, o.owner, o.spec.adoption()) {
            Existing::None => None,
            Existing::TakeBack(id) => Some((id, Change::TookBack)),
            Existing::Adopt(id) => Some((id, Change::Adopted)),
            Existing::Conflict(message) => return Err(Blocked::new("Conflict", message).into()),
        };
        if let Some((id, how)) = found {
            return Ok(candidates
                .iter()
                .find(|i| i.id == id)
                .map(|i| (i, Some(how))));
        }
    }
    if identifiers_suffice {
        return Ok(None);
    }
    // Without identifiers (or with identifiers that may have changed since an earlier create)
    // nothing in Kratos refuses a second create: an identity this object created before a crash
    // (or by a create whose answer was lost) is found by its marker, once no create whose
    // outcome is unknown can still commit.
    if let Some(wait) = o.settling {
        return Err(create_pending(o, wait).into());
    }
    let Some(marked) = &o.marked else {
        return Err(Plan::Observe(Need::Marked));
    };
    if let Some(identity) = marked
        && ownership(identity, o.owner).is_ours()
    {
        return Ok(Some((identity, Some(Change::TookBack))));
    }
    Ok(None)
}

/// The object waits before it creates: an earlier create of its identity may still commit, and
/// nothing in Kratos would refuse a second one.
fn create_pending(o: &Observed<'_>, wait: std::time::Duration) -> Blocked {
    let until = settled_at(o, wait);
    Blocked::waiting(
        REASON_CREATE_PENDING,
        format!(
            "an earlier create of this object's Kratos identity (by an operator process that \
             stopped, or a request that failed) may still reach Kratos until {until}; the \
             operator looks for it again then, before it creates one"
        ),
        wait,
    )
}

/// When a wait of `wait` from this reconcile ends, to the second (a stable message).
fn settled_at(o: &Observed<'_>, wait: std::time::Duration) -> Timestamp {
    let secs = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX / 2) + 1;
    o.now
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .and_then(|t| t.round(jiff::Unit::Second))
        .unwrap_or(o.now)
}

/// The reason of an object that waits for an earlier create to settle.
pub const REASON_CREATE_PENDING: &str = "CreatePending";

/// Creates the identity, or reports what Kratos answered to the create.
fn create(o: &Observed<'_>, desired: &Desired, report: Report) -> Decided<Plan> {
    match &o.created {
        None => Ok(Plan::Write(Write::Create {
            body: Box::new(desired::create_body(desired)),
        })),
        // A new identity: addresses were imported verified and it has no sessions.
        Some(Ok(id)) => Ok(Plan::Done(Outcome::Synced(Box::new(Synced {
            identity_id: id.clone(),
            state: desired.state.as_str().to_string(),
            schema_id: desired.schema_id.clone(),
            schema_digest: report.schema_digest,
            change: Change::Created,
            identifier: report.identifier,
            password_imported: report.password_version,
            oidc: report.oidc,
            active_sessions: 0,
        })))),
        Some(Err(refusal)) => Err(refused(
            o.spec,
            refusal,
            "Kratos already has an identity with one of these identifiers or addresses",
        )
        .into()),
    }
}

/// What a refused create or update reports: a conflict (`conflict`, then Kratos' reason), or
/// the spec Kratos rejected.
fn refused(spec: &IdentitySpec, refusal: &Refusal, conflict: &str) -> Blocked {
    match refusal {
        Refusal::Conflict(reason) => Blocked::new("Conflict", format!("{conflict}: {reason}")),
        Refusal::Invalid { reason, pointer } => kratos_invalid(spec, reason, pointer.as_deref()),
    }
}

/// The password to import, read from the Secret the spec names; `None` when no password is
/// configured.
fn password(o: &Observed<'_>) -> Decided<Option<PasswordInput>> {
    let Some(pc) = o
        .spec
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref())
    else {
        return Ok(None);
    };
    let (sref, hashed) = match (&pc.secret_ref, &pc.hashed_secret_ref) {
        (Some(r), None) => (r, false),
        (None, Some(r)) => (r, true),
        _ => {
            return Err(Blocked::stalled(
                "InvalidSpec",
                "exactly one of credentials.password.secretRef and hashedSecretRef must be set",
            )
            .into());
        }
    };
    let secret = named(o, &o.secret, Need::Secret(sref.name.clone()))?;
    let value = secret_value(secret, &sref.name, &sref.key)?;
    let version = format!(
        "{}/{}",
        secret.metadata.uid.as_deref().unwrap_or(""),
        secret.metadata.resource_version.as_deref().unwrap_or("")
    );
    Ok(Some(PasswordInput {
        value: SecretString::from(value),
        hashed,
        version,
        policy: pc.policy.unwrap_or_default(),
    }))
}

/// The text under `key` of the password Secret `name` (a trailing newline taken off), or why
/// it cannot be used.
fn secret_value(secret: &Secret, name: &str, key: &str) -> Result<String, Blocked> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        });
    let Some(bytes) = bytes else {
        return Err(Blocked::new(
            "SecretNotFound",
            format!("Secret {name} has no key {key:?}"),
        ));
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Err(Blocked::new(
            "InvalidSecret",
            format!("the value of key {key:?} in Secret {name} is not UTF-8 text"),
        ));
    };
    // A trailing newline is what `kubectl create secret --from-file` of an edited file leaves.
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text)
        .to_string();
    if value.is_empty() {
        return Err(Blocked::new(
            "InvalidSecret",
            format!("key {key:?} of Secret {name} is empty"),
        ));
    }
    Ok(value)
}

/// What the finalizer's cleanup does.
#[derive(Debug, Clone, PartialEq)]
pub enum Cleanup {
    /// Look at something, then decide again.
    Observe(Need),
    /// Delete this Kratos identity (deletionPolicy Delete).
    Delete {
        /// Kratos identity id.
        id: String,
        /// The identity recorded in status is another's (it is left alone).
        not_owned: bool,
    },
    /// Release this identity: write `metadata_admin` without the marker (deletionPolicy Orphan).
    Release {
        /// Kratos identity id.
        id: String,
        /// The new `metadata_admin` (`Null` when nothing else was in it).
        metadata_admin: Value,
        /// The identity recorded in status is another's (it is left alone).
        not_owned: bool,
    },
    /// Nothing of this object's is in Kratos.
    Nothing {
        /// The identity recorded in status is another's (it is left alone).
        not_owned: bool,
    },
    /// Nothing of this object's is in Kratos yet, but an earlier create of it may still commit:
    /// look again after this long (the finalizer stays).
    Wait(std::time::Duration),
}

impl Cleanup {
    /// Whether the identity recorded in status turned out to be another's.
    pub fn not_owned(&self) -> bool {
        match self {
            Self::Delete { not_owned, .. }
            | Self::Release { not_owned, .. }
            | Self::Nothing { not_owned } => *not_owned,
            Self::Observe(_) | Self::Wait(_) => false,
        }
    }
}

/// The finalizer's decision (pure): delete or release the Kratos identity only after its marker
/// proved it is this object's. An id in status alone never deletes or releases anything; when it
/// names another's identity (or none), the one carrying this object's marker among those with
/// its identifiers (or in the marker index) is the one.
pub fn cleanup(o: &Observed<'_>) -> Cleanup {
    let mut not_owned = false;
    let mut ours = None;
    if let Some(id) = &o.recorded_id {
        match &o.recorded {
            None => return Cleanup::Observe(Need::Recorded(id.clone())),
            Some(Some(identity)) if ownership(identity, o.owner).is_ours() => ours = Some(identity),
            Some(Some(_)) => not_owned = true,
            // Gone already: its identifiers may still name one of ours (a re-created one).
            Some(None) => {}
        }
    }
    if ours.is_none() {
        // The schema only gives the identifiers: one that cannot be resolved gives none.
        let schema_id = match schema_id(o, o.spec) {
            Ok(id) => Some(id),
            Err(Plan::Observe(need)) => return Cleanup::Observe(need),
            Err(_) => None,
        };
        let compiled = match (schema_id, &o.schema) {
            (Some(id), None) => {
                return Cleanup::Observe(Need::Schema {
                    recheck: o.spec.schema_ref.is_none(),
                    id,
                });
            }
            (Some(_), Some(compiled)) => compiled.as_deref(),
            (None, _) => None,
        };
        let identifiers = compiled
            .map(|c| c.identifier_values(&o.spec.traits))
            .unwrap_or_default();
        // As for a create: the identifiers find every identity of this object only while the
        // spec never changed; otherwise (and without identifiers) the marker index does, once no
        // create whose outcome is unknown can still commit.
        let identifiers_suffice = !identifiers.is_empty() && o.first_generation;
        if !identifiers.is_empty() {
            match &o.candidates {
                None => return Cleanup::Observe(Need::Candidates(identifiers)),
                Some(candidates) => {
                    ours = candidates.iter().find(|i| ownership(i, o.owner).is_ours());
                }
            }
        }
        if ours.is_none() && !identifiers_suffice && o.settling.is_none() {
            ours = match &o.marked {
                None => return Cleanup::Observe(Need::Marked),
                Some(marked) => marked.as_ref(),
            }
            .filter(|i| ownership(i, o.owner).is_ours());
        }
    }
    let Some(identity) = ours else {
        return match o.settling {
            Some(wait) => Cleanup::Wait(wait),
            None => Cleanup::Nothing { not_owned },
        };
    };
    let id = identity.id.clone();
    match o.spec.deletion_policy() {
        DeletionPolicy::Delete => Cleanup::Delete { id, not_owned },
        DeletionPolicy::Orphan => Cleanup::Release {
            id,
            metadata_admin: desired::released_metadata_admin(identity.metadata_admin.as_ref())
                .unwrap_or(Value::Null),
            not_owned,
        },
    }
}

/// How long the finalizer stays after the cleanup was carried out (pure): while an earlier
/// create of the object may still commit, the deletion is not over, since that create would
/// leave an identity no object owns. The object is then looked at again.
pub fn finalizer_wait(o: &Observed<'_>) -> Option<std::time::Duration> {
    o.settling
}

/// The Conflict of an object whose status (or memory) points at an identity it does not own.
fn not_owned() -> Blocked {
    Blocked::new(
        "Conflict",
        "the Kratos identity recorded in status.identityId is not owned by this object (its owner \
         marker names another object, or none); nothing is changed in Kratos. Clear \
         status.identityId to let the operator create or take back this object's own identity",
    )
}

/// InvalidSpec for traits the schema (or Kratos) refuses. A `schemaId`'s schema can change in
/// Kratos without any watch event (an IdentitySchemaRef's change is watched): such an object is
/// validated again every schema recheck interval.
fn schema_invalid(spec: &IdentitySpec, message: String) -> Blocked {
    let blocked = Blocked::stalled("InvalidSpec", message);
    if spec.schema_ref.is_none() {
        blocked.rechecked(Recheck::Schema)
    } else {
        blocked
    }
}

/// InvalidSpec for a request Kratos refused: a refusal of the traits (Kratos names a pointer
/// into them) may end when the schema changes; any other (a password hash in a format Kratos
/// does not know) needs a change to the spec or its Secret.
fn kratos_invalid(spec: &IdentitySpec, reason: &str, pointer: Option<&str>) -> Blocked {
    let message = match pointer {
        Some(p) => format!("Kratos rejected the identity at {p}: {reason}"),
        None => format!("Kratos rejected the identity: {reason}"),
    };
    if pointer.is_some_and(|p| p.trim_start_matches('#').starts_with("/traits")) {
        schema_invalid(spec, message)
    } else {
        Blocked::stalled("InvalidSpec", message)
    }
}

/// Nesting depth of `v`: 0 for a scalar, 1 + the deepest child for an array or object. Iterative,
/// so a deep value cannot overflow the stack.
pub fn nesting(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}

/// Whether the spec's free JSON fields stay within [`MAX_NESTING`] and [`MAX_FREE_JSON_BYTES`]
/// (pure); the refusal names the field and the limit.
pub fn check_limits(spec: &IdentitySpec) -> Result<(), String> {
    let fields = [
        ("spec.traits", Some(&spec.traits)),
        ("spec.metadataPublic", spec.metadata_public.as_ref()),
        ("spec.metadataAdmin", spec.metadata_admin.as_ref()),
    ];
    for (name, value) in fields {
        let Some(value) = value else { continue };
        if nesting(value) > MAX_NESTING {
            return Err(format!(
                "{name} nests deeper than {MAX_NESTING} levels, the most the operator accepts"
            ));
        }
        let size = serde_json::to_vec(value).map_or(usize::MAX, |b| b.len());
        if size > MAX_FREE_JSON_BYTES {
            return Err(format!(
                "{name} is {size} bytes as JSON; the operator accepts at most {MAX_FREE_JSON_BYTES}"
            ));
        }
    }
    Ok(())
}

/// Why the namespace's policy refuses this spec, if it does (pure): adoption without the
/// opt-in label, or an identifier outside the namespace's patterns (reason Forbidden, Stalled).
/// Without the compiled schema the identifiers are unknown: a namespace with patterns then
/// refuses for now (retried) rather than let them pass unchecked.
pub fn tenancy_refusal(
    spec: &IdentitySpec,
    policy: &NamespacePolicy,
    schema_compiled: bool,
    identifiers: &[String],
) -> Option<Blocked> {
    if spec.adoption() == AdoptionPolicy::IfUnowned
        && let Err(message) = policy.check_adoption()
    {
        return Some(Blocked::stalled(REASON_FORBIDDEN, message).rechecked(Recheck::Namespace));
    }
    if policy.identifier_patterns.is_some() && !schema_compiled {
        return Some(Blocked::new(
            REASON_FORBIDDEN,
            format!(
                "this namespace restricts identifiers (Namespace annotation {ANNOTATION_IDENTIFIER_PATTERNS}) and the identity schema could not be read to find them; retried"
            ),
        ));
    }
    policy
        .check_identifiers(identifiers.iter().map(String::as_str))
        .err()
        .map(|message| Blocked::stalled(REASON_FORBIDDEN, message).rechecked(Recheck::Namespace))
}

/// Who a Kratos identity belongs to, relative to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Its marker carries this object's uid.
    Ours,
    /// Its marker names this object's `<namespace>/<name>` with another uid: an earlier object of
    /// the same name created it and no longer exists (only one object can hold a namespace and
    /// name at a time), as after a restore from backup or a force-removed finalizer. The object
    /// takes it back; the next write puts its own uid into the marker.
    Recreated,
    /// It carries no marker.
    Unowned,
    /// Another object owns it. Deliberately without its name: messages a tenant reads never
    /// name another namespace's object.
    Other,
}

impl Ownership {
    /// Whether the object may change, recover, revoke or delete the identity.
    pub fn is_ours(&self) -> bool {
        matches!(self, Self::Ours | Self::Recreated)
    }
}

/// The object whose ownership is checked: its uid and its `<namespace>/<name>`.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// `metadata.uid`.
    pub uid: &'a str,
    /// `<namespace>/<name>`.
    pub name: &'a str,
}

/// Reads the owner marker of `identity` relative to `owner` (pure).
pub fn ownership(identity: &Identity, owner: Owner<'_>) -> Ownership {
    let meta = identity.metadata_admin.as_ref();
    let marker_uid = meta.and_then(|m| m.get(UID_MARKER)).and_then(Value::as_str);
    let marker_owner = meta
        .and_then(|m| m.get(OWNER_MARKER))
        .and_then(Value::as_str);
    match (marker_uid, marker_owner) {
        (Some(u), _) if u == owner.uid => Ownership::Ours,
        (_, Some(o)) if o == owner.name => Ownership::Recreated,
        (None, None) => Ownership::Unowned,
        _ => Ownership::Other,
    }
}

/// What to do about identities Kratos already has with this object's identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// None exists: create one.
    None,
    /// One carries this object's marker (a crash between create and status write, or an earlier
    /// object of the same name): use it.
    TakeBack(String),
    /// An unowned one may be adopted (adoption IfUnowned).
    Adopt(String),
    /// It cannot be used; the message says why (never naming another object or its id).
    Conflict(String),
}

/// Message of a conflict with an identity another object owns.
pub const OWNED_ELSEWHERE: &str = "Kratos already has an identity with one of this object's identifiers, and another Identity object manages it; two objects cannot own one identity";

/// Decides between create, take back, adopt and conflict.
pub fn resolve_existing(
    candidates: &[Identity],
    owner: Owner<'_>,
    adoption: AdoptionPolicy,
) -> Existing {
    if let Some(ours) = candidates.iter().find(|i| ownership(i, owner).is_ours()) {
        return Existing::TakeBack(ours.id.clone());
    }
    let Some(first) = candidates.first() else {
        return Existing::None;
    };
    match (ownership(first, owner), adoption) {
        (Ownership::Other, _) => Existing::Conflict(OWNED_ELSEWHERE.into()),
        (_, AdoptionPolicy::IfUnowned) if candidates.len() == 1 => {
            Existing::Adopt(first.id.clone())
        }
        (_, AdoptionPolicy::IfUnowned) => Existing::Conflict(format!(
            "{} Kratos identities share this object's identifiers; refusing to adopt one",
            candidates.len()
        )),
        (_, AdoptionPolicy::Never) => Existing::Conflict(
            "Kratos already has an identity with one of this object's identifiers that no object manages; \
             set spec.adoption to IfUnowned to take it over"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests;
