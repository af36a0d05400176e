//! What the spec asks of Kratos ([`Desired`]) and how a Kratos identity differs from it: the
//! bodies to send, the OIDC links to add or remove, the addresses to verify, the sessions to
//! revoke. Pure functions the plan ([`super::plan`]) and the drift sweep build on; no client,
//! no clock, no I/O; every branch is unit-tested below.

use jiff::Timestamp;
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::{
    api::{
        OIDC_MARKER, OWNER_MARKER, UID_MARKER,
        identity::{IdentitySpec, IdentityState, PasswordPolicy},
    },
    controller::json,
    kratos::{
        CreateIdentityBody, Identity, IdentityCredentialsImport, IdentityState as KratosState,
        JsonPatchOp, OidcImport, OidcImportConfig, OidcProviderImport, PasswordImport, Session,
        UpdateIdentityBody, VerifiableAddressImport,
    },
};

/// A password to import, with the Secret version it came from.
#[derive(Debug, Clone)]
pub struct PasswordInput {
    /// The cleartext password or the hash.
    pub value: SecretString,
    /// Whether `value` is a hash.
    pub hashed: bool,
    /// `<uid>/<resourceVersion>` of the Secret.
    pub version: String,
    /// SetOnce or Sync.
    pub policy: PasswordPolicy,
}

/// What the spec asks for, resolved (schema id known, Secret read, marker merged).
#[derive(Debug, Clone)]
pub struct Desired {
    /// Kratos schema id.
    pub schema_id: String,
    /// Traits.
    pub traits: Value,
    /// State.
    pub state: IdentityState,
    /// `metadata_public`.
    pub metadata_public: Option<Value>,
    /// `metadata_admin`, with the owner marker merged in.
    pub metadata_admin: Value,
    /// `(value, via)` pairs to import as verified.
    pub verified_addresses: Vec<(String, String)>,
    /// `(provider, subject)` pairs.
    pub oidc: Vec<(String, String)>,
    /// The password, when one is configured and its Secret could be read.
    pub password: Option<PasswordInput>,
    /// Revoke all sessions while the state is inactive.
    pub revoke_on_deactivate: bool,
    /// Disable sessions authenticated before this instant.
    pub revoke_before: Option<Timestamp>,
}

/// `metadata_admin` as the operator writes it: the user's object plus the owner marker and,
/// when the spec has OIDC links, the list of them ([`OIDC_MARKER`], sorted; a value the user
/// wrote under that key is replaced).
pub fn desired_metadata_admin(
    user: Option<&Value>,
    owner: &str,
    uid: &str,
    oidc: &[(String, String)],
) -> Value {
    let mut map = match user {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    map.insert(OWNER_MARKER.into(), Value::String(owner.into()));
    map.insert(UID_MARKER.into(), Value::String(uid.into()));
    map.remove(OIDC_MARKER);
    let links = oidc_identifiers(oidc);
    if !links.is_empty() {
        map.insert(
            OIDC_MARKER.into(),
            Value::Array(links.into_iter().map(Value::String).collect()),
        );
    }
    Value::Object(map)
}

/// Kratos' identifier of an OIDC link.
pub fn oidc_identifier(provider: &str, subject: &str) -> String {
    format!("{provider}:{subject}")
}

/// The identifiers of `(provider, subject)` links, sorted, each once.
fn oidc_identifiers(oidc: &[(String, String)]) -> Vec<String> {
    let mut links: Vec<String> = oidc.iter().map(|(p, s)| oidc_identifier(p, s)).collect();
    links.sort();
    links.dedup();
    links
}

/// `metadata_admin` with the owner marker removed (deletionPolicy Orphan). `None` when nothing
/// else is left.
pub fn released_metadata_admin(current: Option<&Value>) -> Option<Value> {
    match current {
        Some(Value::Object(m)) => {
            let mut m = m.clone();
            m.remove(OWNER_MARKER);
            m.remove(UID_MARKER);
            m.remove(OIDC_MARKER);
            (!m.is_empty()).then_some(Value::Object(m))
        }
        Some(Value::Null) | None => None,
        Some(other) => Some(other.clone()),
    }
}

/// Builds [`Desired`] from the spec and the resolved inputs.
pub fn desired(
    spec: &IdentitySpec,
    schema_id: String,
    owner: &str,
    uid: &str,
    password: Option<PasswordInput>,
) -> Desired {
    let oidc: Vec<(String, String)> = spec
        .credentials
        .as_ref()
        .and_then(|c| c.oidc.as_ref())
        .map(|o| {
            o.providers
                .iter()
                .map(|p| (p.provider.clone(), p.subject.clone()))
                .collect()
        })
        .unwrap_or_default();
    Desired {
        schema_id,
        traits: spec.traits.clone(),
        state: spec.state(),
        metadata_public: spec.metadata_public.clone().filter(|v| !v.is_null()),
        metadata_admin: desired_metadata_admin(spec.metadata_admin.as_ref(), owner, uid, &oidc),
        verified_addresses: spec
            .verified_addresses
            .iter()
            .flatten()
            .map(|a| (a.value.clone(), a.via.as_str().to_string()))
            .collect(),
        oidc,
        password,
        revoke_on_deactivate: spec
            .sessions
            .as_ref()
            .and_then(|s| s.revoke_on_deactivate)
            .unwrap_or(false),
        revoke_before: spec
            .sessions
            .as_ref()
            .and_then(|s| s.revoke_before.as_ref())
            .map(|t| t.0),
    }
}

/// One way in which Kratos differs from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// `schema_id`.
    Schema,
    /// `traits`.
    Traits,
    /// `state`.
    State,
    /// `metadata_public`.
    MetadataPublic,
    /// `metadata_admin` (including the owner marker).
    MetadataAdmin,
    /// OIDC providers missing in Kratos.
    Oidc,
    /// OIDC links the operator imported that are no longer in the spec.
    OidcRemoved,
    /// A password import is due.
    Password,
}

impl Difference {
    /// Short name for Events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schema => "schema",
            Self::Traits => "traits",
            Self::State => "state",
            Self::MetadataPublic => "metadataPublic",
            Self::MetadataAdmin => "metadataAdmin",
            Self::Oidc => "oidc",
            Self::OidcRemoved => "oidc (unlinked)",
            Self::Password => "password",
        }
    }
}

fn kratos_state(state: IdentityState) -> KratosState {
    match state {
        IdentityState::Active => KratosState::Active,
        IdentityState::Inactive => KratosState::Inactive,
    }
}

/// The OIDC links (`provider:subject`) of a Kratos identity; `None` when its credentials are not
/// known (identity lists carry none).
fn oidc_links(identity: &Identity) -> Option<Vec<String>> {
    let credentials = identity.credentials.as_ref()?;
    Some(
        credentials
            .get("oidc")
            .map(|c| c.identifiers.clone())
            .unwrap_or_default(),
    )
}

/// OIDC `(provider, subject)` pairs of the spec that Kratos does not have. None when the
/// identity's credentials are not known (a sweep's list): a missing link is then found by the
/// next read of the identity itself.
pub fn missing_oidc(desired: &Desired, identity: &Identity) -> Vec<(String, String)> {
    let Some(present) = oidc_links(identity) else {
        return Vec::new();
    };
    desired
        .oidc
        .iter()
        .filter(|(p, s)| !present.contains(&oidc_identifier(p, s)))
        .cloned()
        .collect()
}

/// OIDC links to remove from Kratos: imported by the operator (listed in the identity's
/// [`OIDC_MARKER`]), still linked, and no longer in the spec. Links the operator did not import
/// (self-service ones) are never removed. None when the credentials are not known.
pub fn oidc_to_unlink(desired: &Desired, identity: &Identity) -> Vec<String> {
    let Some(present) = oidc_links(identity) else {
        return Vec::new();
    };
    let imported: Vec<&str> = identity
        .metadata_admin
        .as_ref()
        .and_then(|m| m.get(OIDC_MARKER))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let wanted = oidc_identifiers(&desired.oidc);
    let mut out: Vec<String> = imported
        .into_iter()
        .filter(|link| present.iter().any(|p| p == link) && !wanted.iter().any(|w| w == link))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a password import is due for an identity that exists in Kratos. `SetOnce` imports only
/// at creation; `Sync` whenever the Secret version differs from the one last imported.
pub fn password_due(desired: &Desired, last_imported: Option<&str>) -> bool {
    match &desired.password {
        Some(p) => p.policy == PasswordPolicy::Sync && last_imported != Some(p.version.as_str()),
        None => false,
    }
}

/// Every difference between the spec and the Kratos identity.
pub fn differences(
    desired: &Desired,
    identity: &Identity,
    last_password: Option<&str>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    if identity.schema_id != desired.schema_id {
        out.push(Difference::Schema);
    }
    if !json::equal(&identity.traits, &desired.traits) {
        out.push(Difference::Traits);
    }
    if identity.state != kratos_state(desired.state) {
        out.push(Difference::State);
    }
    if !json::equal_opt(
        identity.metadata_public.as_ref(),
        desired.metadata_public.as_ref(),
    ) {
        out.push(Difference::MetadataPublic);
    }
    if !json::equal_opt(
        identity.metadata_admin.as_ref(),
        Some(&desired.metadata_admin),
    ) {
        out.push(Difference::MetadataAdmin);
    }
    if !missing_oidc(desired, identity).is_empty() {
        out.push(Difference::Oidc);
    }
    if !oidc_to_unlink(desired, identity).is_empty() {
        out.push(Difference::OidcRemoved);
    }
    if password_due(desired, last_password) {
        out.push(Difference::Password);
    }
    out
}

fn password_import(p: &PasswordInput) -> PasswordImport {
    if p.hashed {
        PasswordImport::hashed(p.value.clone())
    } else {
        PasswordImport::cleartext(p.value.clone())
    }
}

fn oidc_import(pairs: &[(String, String)]) -> Option<OidcImport> {
    (!pairs.is_empty()).then(|| OidcImport {
        config: OidcImportConfig {
            providers: pairs
                .iter()
                .map(|(p, s)| OidcProviderImport::new(p.clone(), s.clone()))
                .collect(),
        },
    })
}

/// The POST body that creates the identity.
pub fn create_body(desired: &Desired) -> CreateIdentityBody {
    let mut body = CreateIdentityBody::new(desired.schema_id.clone(), desired.traits.clone());
    body.state = Some(kratos_state(desired.state));
    body.metadata_public = desired.metadata_public.clone();
    body.metadata_admin = Some(desired.metadata_admin.clone());
    if !desired.verified_addresses.is_empty() {
        body.verifiable_addresses = Some(
            desired
                .verified_addresses
                .iter()
                .map(|(value, via)| VerifiableAddressImport {
                    value: value.clone(),
                    via: via.clone(),
                    verified: true,
                    status: "completed".into(),
                })
                .collect(),
        );
    }
    let password = desired.password.as_ref().map(password_import);
    let oidc = oidc_import(&desired.oidc);
    if password.is_some() || oidc.is_some() {
        body.credentials = Some(IdentityCredentialsImport { password, oidc });
    }
    body
}

/// The PUT body that makes the identity equal to the spec. Full traits and both metadata are
/// always sent (PUT replaces them); credentials only when an import is due.
pub fn update_body(
    desired: &Desired,
    identity: &Identity,
    last_password: Option<&str>,
) -> UpdateIdentityBody {
    let password = password_due(desired, last_password)
        .then(|| desired.password.as_ref().map(password_import))
        .flatten();
    let oidc = oidc_import(&missing_oidc(desired, identity));
    UpdateIdentityBody {
        schema_id: desired.schema_id.clone(),
        traits: desired.traits.clone(),
        state: Some(kratos_state(desired.state)),
        metadata_public: desired.metadata_public.clone(),
        metadata_admin: Some(desired.metadata_admin.clone()),
        credentials: (password.is_some() || oidc.is_some())
            .then_some(IdentityCredentialsImport { password, oidc }),
        external_id: identity.external_id.clone(),
    }
}

/// The positions of the Kratos identity's addresses that the spec says are verified and Kratos
/// does not (also drift: someone un-verified them in Kratos).
pub fn addresses_to_verify(desired: &Desired, identity: &Identity) -> Vec<usize> {
    identity
        .verifiable_addresses
        .iter()
        .enumerate()
        .filter(|(_, addr)| {
            !addr.verified
                && desired.verified_addresses.iter().any(|(v, via)| {
                    v.trim().eq_ignore_ascii_case(addr.value.trim()) && *via == addr.via
                })
        })
        .map(|(i, _)| i)
        .collect()
}

/// JSON Patch operations that mark the spec's verified addresses as verified, for addresses
/// Kratos has but has not verified. Addresses Kratos does not derive from the traits are skipped.
pub fn verify_address_ops(
    desired: &Desired,
    identity: &Identity,
    now: Timestamp,
) -> Vec<JsonPatchOp> {
    let mut ops = Vec::new();
    for i in addresses_to_verify(desired, identity) {
        ops.push(JsonPatchOp::replace(
            format!("/verifiable_addresses/{i}/verified"),
            Value::Bool(true),
        ));
        ops.push(JsonPatchOp::replace(
            format!("/verifiable_addresses/{i}/status"),
            Value::String("completed".into()),
        ));
        ops.push(JsonPatchOp::replace(
            format!("/verifiable_addresses/{i}/verified_at"),
            Value::String(now.to_string()),
        ));
    }
    ops
}

/// Session work for one reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionPlan {
    /// Delete every session of the identity (inactive with revokeOnDeactivate).
    pub revoke_all: bool,
    /// Disable these sessions (authenticated before revokeBefore).
    pub disable: Vec<String>,
    /// Active sessions after the plan is carried out.
    pub active_after: i32,
}

/// Decides which sessions to revoke.
pub fn plan_sessions(desired: &Desired, sessions: &[Session]) -> SessionPlan {
    if desired.state == IdentityState::Inactive && desired.revoke_on_deactivate {
        return SessionPlan {
            revoke_all: !sessions.is_empty(),
            disable: Vec::new(),
            active_after: 0,
        };
    }
    let mut disable = Vec::new();
    let mut active_after = 0;
    for s in sessions.iter().filter(|s| s.active) {
        let old = match (desired.revoke_before, s.authenticated_at) {
            (Some(cutoff), Some(at)) => at < cutoff,
            _ => false,
        };
        if old {
            disable.push(s.id.clone());
        } else {
            active_after += 1;
        }
    }
    SessionPlan {
        revoke_all: false,
        disable,
        active_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::{
        AddressVia, IdentityCredentials, OidcCredential, OidcProvider, SessionPolicy,
        VerifiedAddress,
    };
    use crate::controller::identity::fixtures::{UID, base_spec, identity};
    use secrecy::ExposeSecret;
    use serde_json::json;

    fn desired_of(s: &IdentitySpec, password: Option<PasswordInput>) -> Desired {
        desired(s, "customer".into(), "ns/a", UID, password)
    }

    fn pw(policy: PasswordPolicy, version: &str, hashed: bool) -> PasswordInput {
        PasswordInput {
            value: SecretString::from("s3cret-pw"),
            hashed,
            version: version.into(),
            policy,
        }
    }

    #[test]
    fn metadata_admin_merges_the_marker_and_release_removes_it() {
        let m = desired_metadata_admin(Some(&json!({"crm": "42"})), "ns/a", UID, &[]);
        assert_eq!(
            m,
            json!({"crm": "42", OWNER_MARKER: "ns/a", UID_MARKER: UID})
        );
        assert_eq!(
            released_metadata_admin(Some(&m)),
            Some(json!({"crm": "42"}))
        );
        let only_marker = desired_metadata_admin(None, "ns/a", UID, &[]);
        assert_eq!(released_metadata_admin(Some(&only_marker)), None);
        assert_eq!(released_metadata_admin(None), None);
        assert_eq!(released_metadata_admin(Some(&Value::Null)), None);
    }

    #[test]
    fn no_difference_when_kratos_matches_even_with_float_and_null_representation() {
        let d = desired_of(&base_spec(), None);
        assert!(differences(&d, &identity(json!({})), None).is_empty());
    }

    #[test]
    fn each_field_difference_is_detected() {
        let d = desired_of(&base_spec(), None);
        let cases = [
            (json!({"schema_id": "employee"}), Difference::Schema),
            (
                json!({"traits": {"email": "b@example.com", "age": 3}}),
                Difference::Traits,
            ),
            (json!({"state": "inactive"}), Difference::State),
            (
                json!({"metadata_public": {"x": 1}}),
                Difference::MetadataPublic,
            ),
            (json!({"metadata_admin": null}), Difference::MetadataAdmin),
            (
                json!({"metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: UID, "extra": 1}}),
                Difference::MetadataAdmin,
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(
                differences(&d, &identity(patch.clone()), None),
                vec![expected],
                "{patch}"
            );
        }
    }

    #[test]
    fn create_body_carries_everything_including_password_oidc_and_verified_addresses() {
        let mut s = base_spec();
        s.metadata_public = Some(json!({"plan": "pro"}));
        s.state = Some(IdentityState::Inactive);
        s.verified_addresses = Some(vec![VerifiedAddress {
            value: "a@example.com".into(),
            via: AddressVia::Email,
        }]);
        s.credentials = Some(IdentityCredentials {
            password: None,
            oidc: Some(OidcCredential {
                providers: vec![OidcProvider {
                    provider: "github".into(),
                    subject: "1".into(),
                }],
            }),
        });
        let body = create_body(&desired_of(
            &s,
            Some(pw(PasswordPolicy::SetOnce, "v1", false)),
        ));
        assert_eq!(body.state, Some(KratosState::Inactive));
        assert_eq!(body.metadata_public, Some(json!({"plan": "pro"})));
        assert_eq!(
            body.metadata_admin.as_ref().and_then(|m| m.get(UID_MARKER)),
            Some(&json!(UID))
        );
        let addrs = body.verifiable_addresses.as_ref().unwrap();
        assert!(addrs[0].verified && addrs[0].status == "completed");
        let creds = body.credentials.as_ref().unwrap();
        assert_eq!(
            creds
                .password
                .as_ref()
                .unwrap()
                .config
                .password
                .as_ref()
                .unwrap()
                .expose_secret(),
            "s3cret-pw"
        );
        assert_eq!(
            creds.oidc.as_ref().unwrap().config.providers[0].provider,
            "github"
        );
        assert!(!format!("{body:?}").contains("s3cret-pw"));
    }

    #[test]
    fn hashed_password_goes_into_hashed_password() {
        let body = create_body(&desired_of(
            &base_spec(),
            Some(pw(PasswordPolicy::SetOnce, "v1", true)),
        ));
        let config = &body.credentials.unwrap().password.unwrap().config;
        assert!(config.password.is_none());
        assert!(config.hashed_password.is_some());
    }

    #[test]
    fn set_once_never_reimports_and_sync_reimports_on_a_new_version() {
        let once = desired_of(&base_spec(), Some(pw(PasswordPolicy::SetOnce, "v2", false)));
        assert!(!password_due(&once, Some("v1")));
        assert!(!password_due(&once, None));
        let sync = desired_of(&base_spec(), Some(pw(PasswordPolicy::Sync, "v2", false)));
        assert!(password_due(&sync, Some("v1")));
        assert!(password_due(&sync, None));
        assert!(!password_due(&sync, Some("v2")));
        assert_eq!(
            differences(&sync, &identity(json!({})), Some("v1")),
            vec![Difference::Password]
        );
        let body = update_body(&sync, &identity(json!({})), Some("v1"));
        assert!(body.credentials.unwrap().password.is_some());
        let body = update_body(&sync, &identity(json!({})), Some("v2"));
        assert!(body.credentials.is_none());
    }

    #[test]
    fn update_body_sends_full_traits_and_metadata_and_only_missing_oidc() {
        let mut s = base_spec();
        s.credentials = Some(IdentityCredentials {
            password: None,
            oidc: Some(OidcCredential {
                providers: vec![
                    OidcProvider {
                        provider: "github".into(),
                        subject: "1".into(),
                    },
                    OidcProvider {
                        provider: "google".into(),
                        subject: "2".into(),
                    },
                ],
            }),
        });
        let d = desired_of(&s, None);
        let have = identity(json!({
            "credentials": {"oidc": {"type": "oidc", "identifiers": ["github:1"]}},
            "metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: UID, OIDC_MARKER: ["github:1", "google:2"]}
        }));
        assert_eq!(differences(&d, &have, None), vec![Difference::Oidc]);
        let body = update_body(&d, &have, None);
        assert_eq!(body.traits, json!({"email": "a@example.com", "age": 3}));
        assert!(body.metadata_admin.is_some());
        let providers = body.credentials.unwrap().oidc.unwrap().config.providers;
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].provider, "google");
    }

    fn with_oidc(links: &[(&str, &str)]) -> IdentitySpec {
        let mut s = base_spec();
        s.credentials = Some(IdentityCredentials {
            password: None,
            oidc: Some(OidcCredential {
                providers: links
                    .iter()
                    .map(|(p, sub)| OidcProvider {
                        provider: (*p).into(),
                        subject: (*sub).into(),
                    })
                    .collect(),
            }),
        });
        s
    }

    #[test]
    fn the_marker_lists_the_spec_s_oidc_links_and_no_user_value_under_its_key() {
        let mut s = with_oidc(&[("google", "2"), ("github", "1"), ("github", "1")]);
        s.metadata_admin = Some(json!({"crm": 1, OIDC_MARKER: ["victim:9"]}));
        let d = desired_of(&s, None);
        assert_eq!(
            d.metadata_admin[OIDC_MARKER],
            json!(["github:1", "google:2"])
        );
        let mut none = base_spec();
        none.metadata_admin = Some(json!({OIDC_MARKER: ["victim:9"]}));
        assert!(
            desired_of(&none, None)
                .metadata_admin
                .get(OIDC_MARKER)
                .is_none()
        );
        assert_eq!(
            released_metadata_admin(Some(&d.metadata_admin)),
            Some(json!({"crm": 1}))
        );
    }

    #[test]
    fn only_imported_links_that_left_the_spec_are_unlinked() {
        let d = desired_of(&with_oidc(&[("github", "1")]), None);
        let have = identity(json!({
            "credentials": {"oidc": {"type": "oidc", "identifiers": ["github:1", "google:2", "self:3"]}},
            "metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: UID, OIDC_MARKER: ["github:1", "google:2", "gone:4"]}
        }));
        // google:2 was imported and left the spec; self:3 was linked by the user; gone:4 is
        // listed but no longer linked.
        assert_eq!(oidc_to_unlink(&d, &have), vec!["google:2".to_string()]);
        assert_eq!(
            differences(&d, &have, None),
            vec![Difference::MetadataAdmin, Difference::OidcRemoved]
        );
        let none = desired_of(&base_spec(), None);
        assert_eq!(
            oidc_to_unlink(&none, &have),
            vec!["github:1".to_string(), "google:2".to_string()]
        );
    }

    #[test]
    fn a_list_without_credentials_shows_no_oidc_difference() {
        let d = desired_of(&with_oidc(&[("github", "1")]), None);
        let listed = identity(json!({
            "metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: UID, OIDC_MARKER: ["github:1", "google:2"]}
        }));
        assert!(listed.credentials.is_none());
        assert!(missing_oidc(&d, &listed).is_empty());
        assert!(oidc_to_unlink(&d, &listed).is_empty());
        let in_sync = identity(json!({
            "metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: UID, OIDC_MARKER: ["github:1"]}
        }));
        assert!(
            differences(&d, &in_sync, None).is_empty(),
            "a sweep sees no drift"
        );
    }

    #[test]
    fn verify_ops_target_unverified_matching_addresses_only() {
        let mut s = base_spec();
        s.verified_addresses = Some(vec![VerifiedAddress {
            value: "A@example.com".into(),
            via: AddressVia::Email,
        }]);
        let d = desired_of(&s, None);
        let addr = |value: &str, verified: bool| json!({"value": value, "verified": verified, "via": "email", "status": "pending"});
        let have = identity(
            json!({"verifiable_addresses": [addr("other@example.com", false), addr("a@example.com", false)]}),
        );
        let ops = verify_address_ops(&d, &have, Timestamp::UNIX_EPOCH);
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].path, "/verifiable_addresses/1/verified");
        let done = identity(json!({"verifiable_addresses": [addr("a@example.com", true)]}));
        assert!(verify_address_ops(&d, &done, Timestamp::UNIX_EPOCH).is_empty());
    }

    fn session(id: &str, active: bool, at: &str) -> Session {
        serde_json::from_value(json!({"id": id, "active": active, "authenticated_at": at})).unwrap()
    }

    #[test]
    fn sessions_are_revoked_on_deactivation_or_before_the_cutoff() {
        let sessions = vec![
            session("old", true, "2026-01-01T00:00:00Z"),
            session("new", true, "2026-06-01T00:00:00Z"),
            session("gone", false, "2025-01-01T00:00:00Z"),
        ];
        let d = desired_of(&base_spec(), None);
        assert_eq!(
            plan_sessions(&d, &sessions),
            SessionPlan {
                revoke_all: false,
                disable: vec![],
                active_after: 2
            }
        );

        let mut s = base_spec();
        s.sessions = Some(SessionPolicy {
            revoke_on_deactivate: None,
            revoke_before: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-03-01T00:00:00Z".parse().unwrap(),
            )),
        });
        let plan = plan_sessions(&desired_of(&s, None), &sessions);
        assert_eq!(
            plan,
            SessionPlan {
                revoke_all: false,
                disable: vec!["old".into()],
                active_after: 1
            }
        );

        let mut s = base_spec();
        s.state = Some(IdentityState::Inactive);
        s.sessions = Some(SessionPolicy {
            revoke_on_deactivate: Some(true),
            revoke_before: None,
        });
        let plan = plan_sessions(&desired_of(&s, None), &sessions);
        assert!(plan.revoke_all);
        assert!(!plan_sessions(&desired_of(&s, None), &[]).revoke_all);
        // Inactive without revokeOnDeactivate leaves sessions alone.
        s.sessions = None;
        assert!(!plan_sessions(&desired_of(&s, None), &sessions).revoke_all);
    }
}
