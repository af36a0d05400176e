//! JSON models of the Kratos admin API (snake_case on the wire).
//!
//! Responses: every field the client does not need to exist is optional or defaulted, and unknown
//! fields are ignored, so newer servers parse. Requests: `None` fields are skipped, because
//! Kratos v1.x decodes create and batch bodies strictly and rejects unknown fields with 400;
//! fields only v25+ knows are dropped for older servers (see [`ServerVersion`]).
//!
//! Passwords, hashes, credential configs, recovery links and codes are wrapped so that `Debug`
//! never shows them; they are exposed only when a request body is serialized.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Identities (responses)

/// The state of an identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityState {
    /// It can sign in.
    #[default]
    Active,
    /// It cannot sign in.
    Inactive,
}

impl IdentityState {
    /// The wire value, `active` or `inactive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }
}

/// A Kratos identity as the admin API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The identity's UUID.
    pub id: String,
    /// The id of its identity schema.
    #[serde(default)]
    pub schema_id: String,
    /// Where Kratos serves its schema (the public URL).
    #[serde(default)]
    pub schema_url: String,
    /// Active or inactive.
    #[serde(default)]
    pub state: IdentityState,
    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_changed_at: Option<Timestamp>,
    /// The traits, as validated against the schema.
    #[serde(default)]
    pub traits: Value,
    /// Metadata the identity may read (`None` when unset).
    #[serde(default)]
    pub metadata_public: Option<Value>,
    /// Metadata only admins may read (`None` when unset).
    #[serde(default)]
    pub metadata_admin: Option<Value>,
    /// Addresses that can be verified, derived from the traits.
    #[serde(default, deserialize_with = "null_as_default")]
    pub verifiable_addresses: Vec<VerifiableAddress>,
    /// Addresses that can recover the account, derived from the traits.
    #[serde(default, deserialize_with = "null_as_default")]
    pub recovery_addresses: Vec<RecoveryAddress>,
    /// Credentials by type; absent from list responses unless asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<BTreeMap<String, Credentials>>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last updated.
    pub updated_at: Timestamp,
    /// The caller's id for it (Kratos v25+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Its organization (Ory Network B2B; settable on create from v25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
}

impl Identity {
    /// The credential of `kind`, if the response carried it.
    pub fn credential(&self, kind: CredentialType) -> Option<&Credentials> {
        self.credentials.as_ref()?.get(kind.as_str())
    }

    /// Whether a password is set: a password credential with a non-empty hash. Only a response
    /// fetched with `include_credential=password` can say yes; Kratos creates an empty password
    /// credential for every identifier trait.
    pub fn has_password(&self) -> bool {
        self.credential(CredentialType::Password)
            .and_then(Credentials::hashed_password)
            .is_some()
    }
}

/// An address that can be verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifiableAddress {
    /// Its UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The address, e.g. an email.
    pub value: String,
    /// Whether it is verified.
    #[serde(default)]
    pub verified: bool,
    /// `email` or `sms`.
    #[serde(default)]
    pub via: String,
    /// `pending`, `sent` or `completed`.
    #[serde(default)]
    pub status: String,
    /// When it was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Timestamp>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// When it was last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

/// An address that can recover the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryAddress {
    /// Its UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The address.
    pub value: String,
    /// `email`.
    #[serde(default)]
    pub via: String,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// When it was last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

/// One credential of an identity. Its `config` (password hash, OIDC tokens) is redacted from
/// `Debug`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    /// The credential type, e.g. `password` (see [`Credentials::credential_type`]).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Its identifiers: lower-cased email or username for passwords, `provider:subject` for OIDC.
    #[serde(default, deserialize_with = "null_as_default")]
    pub identifiers: Vec<String>,
    /// Its configuration; only present when asked for with `include_credential`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RedactedJson>,
    /// The config format version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// When it was created (rewritten by every PUT/PATCH in v1.3: never use it for drift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// When it was last updated (rewritten by every PUT/PATCH in v1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

impl Credentials {
    /// The type as an enum, if known.
    pub fn credential_type(&self) -> Option<CredentialType> {
        self.kind.parse().ok()
    }

    /// The stored password hash (`include_credential=password`), if non-empty.
    pub fn hashed_password(&self) -> Option<SecretString> {
        let hash = self
            .config
            .as_ref()?
            .expose()
            .get("hashed_password")?
            .as_str()?;
        (!hash.is_empty()).then(|| SecretString::from(hash))
    }

    /// The `(provider, subject)` pairs of an OIDC credential (`include_credential=oidc`).
    pub fn oidc_providers(&self) -> Vec<(String, String)> {
        let providers = self
            .config
            .as_ref()
            .and_then(|c| c.expose().get("providers"))
            .and_then(Value::as_array);
        providers
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("provider")?.as_str()?.to_string(),
                    p.get("subject")?.as_str()?.to_string(),
                ))
            })
            .collect()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("kind", &self.kind)
            .field("identifiers", &self.identifiers)
            .field("config", &self.config)
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// JSON that may hold secrets: serialized and deserialized as is, shown as `[REDACTED]` by
/// `Debug`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RedactedJson(Value);

impl RedactedJson {
    /// Wraps a value.
    pub fn new(value: Value) -> Self {
        Self(value)
    }

    /// The value; do not log it.
    pub fn expose(&self) -> &Value {
        &self.0
    }
}

impl fmt::Debug for RedactedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Credential types Kratos knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    /// Identifier + password.
    Password,
    /// Social sign-in.
    Oidc,
    /// Time-based one-time passwords.
    Totp,
    /// Backup codes.
    LookupSecret,
    /// Security keys.
    Webauthn,
    /// One-time codes by email or SMS.
    Code,
    /// Passkeys.
    Passkey,
    /// Profile (not accepted by `include_credential`).
    Profile,
    /// Recovery by link.
    LinkRecovery,
    /// Recovery by code.
    CodeRecovery,
    /// SAML (v25+).
    Saml,
}

impl CredentialType {
    /// All types.
    pub const ALL: [CredentialType; 11] = [
        Self::Password,
        Self::Oidc,
        Self::Totp,
        Self::LookupSecret,
        Self::Webauthn,
        Self::Code,
        Self::Passkey,
        Self::Profile,
        Self::LinkRecovery,
        Self::CodeRecovery,
        Self::Saml,
    ];

    /// The wire name, e.g. `lookup_secret`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Oidc => "oidc",
            Self::Totp => "totp",
            Self::LookupSecret => "lookup_secret",
            Self::Webauthn => "webauthn",
            Self::Code => "code",
            Self::Passkey => "passkey",
            Self::Profile => "profile",
            Self::LinkRecovery => "link_recovery",
            Self::CodeRecovery => "code_recovery",
            Self::Saml => "saml",
        }
    }
}

impl fmt::Display for CredentialType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown credential type {s:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Identities (requests)

/// The body of `POST /admin/identities` (and of one batch item).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateIdentityBody {
    /// The schema id; empty means the server's default schema.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub schema_id: String,
    /// The traits.
    pub traits: Value,
    /// The initial state (default active).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<IdentityState>,
    /// Public metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_public: Option<Value>,
    /// Admin metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_admin: Option<Value>,
    /// Imported verification state of addresses derived from the traits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifiable_addresses: Option<Vec<VerifiableAddressImport>>,
    /// Imported recovery addresses (kept only where they match the traits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_addresses: Option<Vec<RecoveryAddressImport>>,
    /// Credentials to import.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<IdentityCredentialsImport>,
    /// The caller's id (v25+; dropped for older servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The organization (v25+; dropped for older servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
}

/// A request body with fields that only some Kratos releases know (`external_id`,
/// `organization_id`, the password migration hook).
pub trait Versioned: Clone {
    /// Whether it sets any field an older Kratos may not know.
    fn has_versioned_fields(&self) -> bool;
    /// A copy without the fields `server` does not know.
    fn for_server(&self, server: &ServerVersion) -> Self;
}

impl Versioned for CreateIdentityBody {
    fn has_versioned_fields(&self) -> bool {
        self.organization_id.is_some() || versioned(&self.external_id, self.credentials.as_ref())
    }

    fn for_server(&self, server: &ServerVersion) -> Self {
        let mut body = self.clone();
        gate(&mut body.external_id, body.credentials.as_mut(), server);
        if !server.supports_organization_id_on_create() {
            body.organization_id = None;
        }
        body
    }
}

impl Versioned for UpdateIdentityBody {
    fn has_versioned_fields(&self) -> bool {
        versioned(&self.external_id, self.credentials.as_ref())
    }

    fn for_server(&self, server: &ServerVersion) -> Self {
        let mut body = self.clone();
        gate(&mut body.external_id, body.credentials.as_mut(), server);
        body
    }
}

/// Whether the parts both bodies have depend on the server version.
fn versioned(
    external_id: &Option<String>,
    credentials: Option<&IdentityCredentialsImport>,
) -> bool {
    external_id.is_some()
        || credentials.is_some_and(IdentityCredentialsImport::has_versioned_fields)
}

/// Leaves out of the parts both bodies have what `server` does not know.
fn gate(
    external_id: &mut Option<String>,
    credentials: Option<&mut IdentityCredentialsImport>,
    server: &ServerVersion,
) {
    if !server.supports_external_id() {
        *external_id = None;
    }
    if let Some(credentials) = credentials {
        credentials.gate(server);
    }
}

impl CreateIdentityBody {
    /// A body with just a schema and traits.
    pub fn new(schema_id: impl Into<String>, traits: Value) -> Self {
        Self {
            schema_id: schema_id.into(),
            traits,
            ..Self::default()
        }
    }

    /// Whether it imports a cleartext password (batches allow at most 200 of those).
    pub fn has_cleartext_password(&self) -> bool {
        self.credentials
            .as_ref()
            .and_then(|c| c.password.as_ref())
            .is_some_and(|p| p.config.password.is_some())
    }
}

/// The body of `PUT /admin/identities/{id}`. PUT replaces traits and both metadata (omitted
/// metadata is cleared); omitted schema, state and credentials are kept.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdateIdentityBody {
    /// The schema id; empty keeps the current one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub schema_id: String,
    /// The full traits.
    pub traits: Value,
    /// The state; `None` keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<IdentityState>,
    /// Public metadata; `None` clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_public: Option<Value>,
    /// Admin metadata; `None` clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_admin: Option<Value>,
    /// Credentials to import: a password replaces the current one, OIDC providers are added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<IdentityCredentialsImport>,
    /// The caller's id (v25+, where omitting it clears it; dropped for older servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// Verification state to import for an address derived from the traits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifiableAddressImport {
    /// The address; must match one the traits produce.
    pub value: String,
    /// `email` or `sms`.
    pub via: String,
    /// Whether it is verified.
    pub verified: bool,
    /// `pending`, `sent` or `completed`.
    pub status: String,
}

impl VerifiableAddressImport {
    /// A verified email address.
    pub fn verified_email(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            via: "email".into(),
            verified: true,
            status: "completed".into(),
        }
    }
}

/// A recovery address to import.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecoveryAddressImport {
    /// The address; must match one the traits produce.
    pub value: String,
    /// `email`.
    pub via: String,
}

/// Credentials to import on create or PUT.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdentityCredentialsImport {
    /// A password, in clear or hashed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordImport>,
    /// OIDC links.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcImport>,
}

impl IdentityCredentialsImport {
    /// A cleartext password, hashed by Kratos.
    pub fn password(password: SecretString) -> Self {
        Self {
            password: Some(PasswordImport::cleartext(password)),
            oidc: None,
        }
    }

    /// A password hash in one of the formats Kratos imports (bcrypt, argon2, pbkdf2, scrypt, ...).
    pub fn hashed_password(hash: SecretString) -> Self {
        Self {
            password: Some(PasswordImport::hashed(hash)),
            oidc: None,
        }
    }

    /// OIDC links, as `(provider, subject)` pairs.
    pub fn oidc<I, P, S>(providers: I) -> Self
    where
        I: IntoIterator<Item = (P, S)>,
        P: Into<String>,
        S: Into<String>,
    {
        let providers = providers
            .into_iter()
            .map(|(p, s)| OidcProviderImport::new(p, s))
            .collect();
        Self {
            password: None,
            oidc: Some(OidcImport {
                config: OidcImportConfig { providers },
            }),
        }
    }

    fn has_versioned_fields(&self) -> bool {
        self.password
            .as_ref()
            .is_some_and(|p| p.config.use_password_migration_hook.is_some())
            || self.oidc.as_ref().is_some_and(|o| {
                o.config
                    .providers
                    .iter()
                    .any(|p| p.use_auto_link.is_some() || p.organization.is_some())
            })
    }

    fn gate(&mut self, server: &ServerVersion) {
        if !server.supports_password_migration_hook()
            && let Some(password) = &mut self.password
        {
            password.config.use_password_migration_hook = None;
        }
        if !server.supports_external_id()
            && let Some(oidc) = &mut self.oidc
        {
            for provider in &mut oidc.config.providers {
                provider.use_auto_link = None;
                provider.organization = None;
            }
        }
    }
}

/// A password import.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PasswordImport {
    /// What to import.
    pub config: PasswordImportConfig,
}

impl PasswordImport {
    /// A cleartext password.
    pub fn cleartext(password: SecretString) -> Self {
        Self {
            config: PasswordImportConfig {
                password: Some(password),
                ..PasswordImportConfig::default()
            },
        }
    }

    /// A password hash.
    pub fn hashed(hash: SecretString) -> Self {
        Self {
            config: PasswordImportConfig {
                hashed_password: Some(hash),
                ..PasswordImportConfig::default()
            },
        }
    }
}

/// The password or hash to import. When both are set, Kratos uses the cleartext one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PasswordImportConfig {
    /// A cleartext password (Kratos hashes it; no policy checks).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_optional"
    )]
    pub password: Option<SecretString>,
    /// A hash in a format Kratos recognizes, re-hashed by Kratos at the first login.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_optional"
    )]
    pub hashed_password: Option<SecretString>,
    /// Verify at first login through the password migration webhook (v1.3+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_password_migration_hook: Option<bool>,
}

/// An OIDC import.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OidcImport {
    /// What to import.
    pub config: OidcImportConfig,
}

/// The OIDC providers to link.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OidcImportConfig {
    /// The links.
    pub providers: Vec<OidcProviderImport>,
}

/// One OIDC link: the identity signs in at `provider` as `subject`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OidcProviderImport {
    /// The provider id in the Kratos configuration.
    pub provider: String,
    /// The subject the provider reports.
    pub subject: String,
    /// Auto-link on sign-in (v25+; dropped for older servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_auto_link: Option<bool>,
    /// Organization of the provider (v25+; dropped for older servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

impl OidcProviderImport {
    /// A link.
    pub fn new(provider: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            provider: provider.into(),
            subject: subject.into(),
            use_auto_link: None,
            organization: None,
        }
    }
}

/// One RFC 6902 operation of `PATCH /admin/identities/{id}`. Kratos accepts only `add`, `remove`
/// and `replace`, and refuses paths under `/credentials` and `/id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonPatchOp {
    /// The operation.
    pub op: PatchOperation,
    /// A JSON pointer, e.g. `/traits/email`.
    pub path: String,
    /// The value for `add` and `replace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The source for `move` and `copy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl JsonPatchOp {
    /// `add` at `path`.
    pub fn add(path: impl Into<String>, value: Value) -> Self {
        Self {
            op: PatchOperation::Add,
            path: path.into(),
            value: Some(value),
            from: None,
        }
    }

    /// `replace` at `path` (Kratos turns it into `add` when the key is missing).
    pub fn replace(path: impl Into<String>, value: Value) -> Self {
        Self {
            op: PatchOperation::Replace,
            path: path.into(),
            value: Some(value),
            from: None,
        }
    }

    /// `remove` at `path`. Kratos v1.3.1 ignores it for the top-level `/metadata_public` and
    /// `/metadata_admin` (the patched JSON is decoded over the stored identity); clear those with
    /// `replace(path, Value::Null)`.
    pub fn remove(path: impl Into<String>) -> Self {
        Self {
            op: PatchOperation::Remove,
            path: path.into(),
            value: None,
            from: None,
        }
    }

    /// Whether applying it twice equals applying it once: `add`/`replace` of a fixed path (not
    /// the array append `/-`).
    pub fn is_idempotent(&self) -> bool {
        matches!(self.op, PatchOperation::Add | PatchOperation::Replace)
            && !self.path.ends_with("/-")
    }
}

/// RFC 6902 operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchOperation {
    /// Add or set.
    Add,
    /// Remove.
    Remove,
    /// Replace.
    Replace,
    /// Move (refused by Kratos).
    Move,
    /// Copy (refused by Kratos).
    Copy,
    /// Test (refused by Kratos).
    Test,
}

/// Query parameters of `GET /admin/identities`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListIdentitiesParams {
    /// Items per page (default 500).
    pub page_size: Option<u32>,
    /// Start at this page (from [`super::Page::next_page_token`]).
    pub page_token: Option<String>,
    /// Only these ids.
    pub ids: Vec<String>,
    /// Only the identity with exactly this credential identifier (email, username,
    /// `provider:subject`); the response then includes credentials.
    pub credentials_identifier: Option<String>,
    /// Identifiers starting with this (experimental in Kratos).
    pub preview_credentials_identifier_similar: Option<String>,
    /// Include these credentials' configs.
    pub include_credentials: Vec<CredentialType>,
    /// Read consistency (Ory Network only).
    pub consistency: Option<ReadConsistency>,
    /// Only this organization (v25+; older servers ignore it).
    pub organization_id: Option<String>,
}

impl ListIdentitiesParams {
    /// The query string pairs, page size defaulted to `default_page_size`.
    pub(crate) fn query(&self, default_page_size: u32) -> Vec<(&'static str, String)> {
        let mut query = vec![(
            "page_size",
            self.page_size.unwrap_or(default_page_size).to_string(),
        )];
        if let Some(token) = &self.page_token {
            query.push(("page_token", token.clone()));
        }
        query.extend(self.ids.iter().map(|id| ("ids", id.clone())));
        if let Some(identifier) = &self.credentials_identifier {
            query.push(("credentials_identifier", identifier.clone()));
        }
        if let Some(prefix) = &self.preview_credentials_identifier_similar {
            query.push(("preview_credentials_identifier_similar", prefix.clone()));
        }
        query.extend(
            self.include_credentials
                .iter()
                .map(|c| ("include_credential", c.as_str().to_string())),
        );
        if let Some(consistency) = self.consistency {
            query.push(("consistency", consistency.as_str().to_string()));
        }
        if let Some(organization) = &self.organization_id {
            query.push(("organization_id", organization.clone()));
        }
        query
    }
}

/// Read consistency of lists on Ory Network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Up to date.
    Strong,
    /// Possibly a few seconds stale, cheaper.
    Eventual,
}

impl ReadConsistency {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strong => "strong",
            Self::Eventual => "eventual",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Batch

/// The most items one batch may carry (Kratos v25+ and Ory Network; v1.3 allows 2000).
pub const BATCH_PATCH_MAX_ITEMS: usize = 1000;
/// The most items of one batch that may carry a cleartext password (v25+, Ory Network).
pub const BATCH_PATCH_MAX_CLEARTEXT_PASSWORDS: usize = 200;

/// One item of `PATCH /admin/identities`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchPatchItem {
    /// The identity to create (`None` gives a skipped result).
    pub create: Option<CreateIdentityBody>,
    /// The caller's UUID for the item, echoed in the result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_id: Option<String>,
}

impl BatchPatchItem {
    /// A create item.
    pub fn create(body: CreateIdentityBody, patch_id: Option<String>) -> Self {
        Self {
            create: Some(body),
            patch_id,
        }
    }
}

/// What happened to one batch item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPatchAction {
    /// Created.
    Create,
    /// Failed; see [`BatchPatchResult::error`].
    Error,
    /// The item carried nothing to do (`create: null`).
    Skipped,
    /// An action this client does not know.
    Other,
}

/// The result of one batch item, at the item's position.
#[derive(Debug)]
pub struct BatchPatchResult {
    /// What happened.
    pub action: BatchPatchAction,
    /// The created identity's id.
    pub identity_id: Option<String>,
    /// The item's `patch_id`, echoed.
    pub patch_id: Option<String>,
    /// Why it failed (Conflict, Invalid, ...).
    pub error: Option<super::Error>,
}

impl BatchPatchResult {
    /// Whether the identity was created.
    pub fn is_success(&self) -> bool {
        self.action == BatchPatchAction::Create && self.error.is_none()
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct BatchPatchRequest<'a> {
    pub(crate) identities: &'a [BatchPatchItem],
}

#[derive(Debug, Deserialize)]
pub(crate) struct BatchPatchResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) identities: Vec<Option<BatchPatchRawResult>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BatchPatchRawResult {
    #[serde(default)]
    pub(crate) action: Option<String>,
    #[serde(default)]
    pub(crate) identity: Option<String>,
    #[serde(default)]
    pub(crate) patch_id: Option<String>,
    #[serde(default)]
    pub(crate) error: Option<super::error::GenericError>,
}

// ---------------------------------------------------------------------------------------------
// Schemas

/// An identity schema exactly as Kratos serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentitySchema {
    /// The served text, byte for byte (for digests).
    pub raw: String,
    /// The parsed JSON Schema.
    pub json: Value,
}

/// One entry of `GET /schemas`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentitySchemaEntry {
    /// The schema id.
    pub id: String,
    /// The JSON Schema.
    #[serde(default)]
    pub schema: Value,
}

// ---------------------------------------------------------------------------------------------
// Recovery

/// The body of `POST /admin/recovery/link`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateRecoveryLinkBody {
    /// The identity to recover.
    pub identity_id: String,
    /// How long the link is valid (default: the server's link lifespan).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub expires_in: Option<Duration>,
}

/// The body of `POST /admin/recovery/code`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateRecoveryCodeBody {
    /// The identity to recover.
    pub identity_id: String,
    /// How long the code is valid (default: the server's code lifespan).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub expires_in: Option<Duration>,
    /// The kind of recovery flow (default browser).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_type: Option<RecoveryFlowType>,
}

/// The recovery flow kind of a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryFlowType {
    /// For browsers.
    Browser,
    /// For API clients.
    Api,
}

/// A recovery link; `Debug` does not show it.
#[derive(Debug, Clone, Deserialize)]
pub struct RecoveryLink {
    /// The link; whoever has it can take over the account.
    pub recovery_link: SecretString,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// A recovery code and the link of its flow; `Debug` shows neither.
#[derive(Debug, Clone, Deserialize)]
pub struct RecoveryCode {
    /// The recovery flow's URL (no code in it).
    pub recovery_link: SecretString,
    /// The code to enter in that flow.
    pub recovery_code: SecretString,
    /// When it expires.
    pub expires_at: Timestamp,
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// A session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Its UUID.
    pub id: String,
    /// Whether it is usable now (stored flag, not expired, identity active).
    #[serde(default)]
    pub active: bool,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When the identity authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated_at: Option<Timestamp>,
    /// When it was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Timestamp>,
    /// `aal0` .. `aal3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator_assurance_level: Option<String>,
    /// How the identity authenticated.
    #[serde(default, deserialize_with = "null_as_default")]
    pub authentication_methods: Vec<AuthenticationMethod>,
    /// The identity, when expanded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Box<Identity>>,
    /// The devices, when expanded.
    #[serde(default, deserialize_with = "null_as_default")]
    pub devices: Vec<Device>,
}

/// One authentication step of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthenticationMethod {
    /// `password`, `oidc`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Its assurance level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aal: Option<String>,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// The OIDC provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// A device a session was used from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Its UUID.
    pub id: String,
    /// The client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// The user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// What session endpoints may expand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionExpand {
    /// The identity.
    Identity,
    /// The devices.
    Devices,
}

impl SessionExpand {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Devices => "devices",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Version

/// The Kratos server version, which decides the request fields the client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// As reported (`v1.3.1`), or how it was inferred (`probe:v25+`).
    pub raw: String,
    /// Major version (1, 25, 26, ...).
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Patch version.
    pub patch: u64,
}

impl ServerVersion {
    /// Parses `v1.3.1`, `1.3.1`, `v25.4.0-pre.1` and the like.
    pub fn parse(raw: &str) -> Option<Self> {
        let trimmed = raw.trim();
        let core = trimmed.strip_prefix('v').unwrap_or(trimmed);
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(Self {
            raw: trimmed.to_string(),
            major,
            minor,
            patch,
        })
    }

    /// Whether it is at least `major.minor`.
    pub fn at_least(&self, major: u64, minor: u64) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// `external_id` on identities (v25.4+).
    pub fn supports_external_id(&self) -> bool {
        self.at_least(25, 4)
    }

    /// `organization_id` in create bodies (v25+).
    pub fn supports_organization_id_on_create(&self) -> bool {
        self.at_least(25, 0)
    }

    /// `use_password_migration_hook` in password imports (v1.3+).
    pub fn supports_password_migration_hook(&self) -> bool {
        self.at_least(1, 3)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct VersionResponse {
    pub(crate) version: String,
}

// ---------------------------------------------------------------------------------------------
// serde helpers

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn expose_optional<S: Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => serializer.serialize_str(secret.expose_secret()),
        None => serializer.serialize_none(),
    }
}

/// A duration in Go's `time.ParseDuration` syntax: whole seconds as `Ns`, else milliseconds.
fn go_duration<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) if d.subsec_millis() == 0 => serializer.serialize_str(&format!("{}s", d.as_secs())),
        Some(d) => serializer.serialize_str(&format!("{}ms", d.as_millis())),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(raw: &str) -> ServerVersion {
        ServerVersion::parse(raw).unwrap()
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            v("v1.3.1"),
            ServerVersion {
                raw: "v1.3.1".into(),
                major: 1,
                minor: 3,
                patch: 1
            }
        );
        assert_eq!(v("25.4.0-pre.1").major, 25);
        assert_eq!(v("v26").minor, 0);
        assert_eq!(ServerVersion::parse("master"), None);
        assert_eq!(ServerVersion::parse(""), None);
        assert!(!v("v1.3.1").supports_external_id());
        assert!(v("v25.4.0").supports_external_id());
        assert!(!v("v25.3.0").supports_external_id());
        assert!(v("v25.3.0").supports_organization_id_on_create());
        assert!(!v("v1.2.0").supports_password_migration_hook());
    }

    fn full_body() -> CreateIdentityBody {
        let mut credentials = IdentityCredentialsImport::password(SecretString::from("s3cr3t-pw"));
        if let Some(p) = &mut credentials.password {
            p.config.use_password_migration_hook = Some(false);
        }
        let mut oidc = IdentityCredentialsImport::oidc([("github", "42")]);
        if let Some(o) = &mut oidc.oidc {
            o.config.providers[0].use_auto_link = Some(true);
            o.config.providers[0].organization = Some("org".into());
        }
        credentials.oidc = oidc.oidc;
        CreateIdentityBody {
            external_id: Some("ext-1".into()),
            organization_id: Some("7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1".into()),
            credentials: Some(credentials),
            ..CreateIdentityBody::new("customer", json!({"email": "a@example.com"}))
        }
    }

    #[test]
    fn v1_bodies_carry_no_v25_fields_and_no_nulls() {
        let body = full_body();
        assert!(body.has_versioned_fields());
        let wire = serde_json::to_value(body.for_server(&v("v1.3.1"))).unwrap();
        assert_eq!(
            wire,
            json!({
                "schema_id": "customer",
                "traits": {"email": "a@example.com"},
                "credentials": {
                    "password": {"config": {"password": "s3cr3t-pw", "use_password_migration_hook": false}},
                    "oidc": {"config": {"providers": [{"provider": "github", "subject": "42"}]}}
                }
            })
        );
        let wire = serde_json::to_value(body.for_server(&v("v1.2.0"))).unwrap();
        assert_eq!(
            wire["credentials"]["password"],
            json!({"config": {"password": "s3cr3t-pw"}})
        );
        let minimal = serde_json::to_value(CreateIdentityBody::new("", json!({}))).unwrap();
        assert_eq!(minimal, json!({"traits": {}}));
        assert!(!CreateIdentityBody::new("", json!({})).has_versioned_fields());
    }

    #[test]
    fn v25_bodies_keep_their_fields() {
        let wire = serde_json::to_value(full_body().for_server(&v("v25.4.0"))).unwrap();
        assert_eq!(wire["external_id"], json!("ext-1"));
        assert_eq!(
            wire["organization_id"],
            json!("7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1")
        );
        assert_eq!(
            wire["credentials"]["oidc"]["config"]["providers"][0]["use_auto_link"],
            json!(true)
        );

        let update = UpdateIdentityBody {
            schema_id: "customer".into(),
            traits: json!({}),
            state: Some(IdentityState::Inactive),
            external_id: Some("x".into()),
            ..UpdateIdentityBody::default()
        };
        assert!(update.has_versioned_fields());
        assert_eq!(
            serde_json::to_value(update.for_server(&v("v25.4.0"))).unwrap()["external_id"],
            json!("x")
        );
        assert_eq!(
            serde_json::to_value(update.for_server(&v("v1.3.1"))).unwrap(),
            json!({"schema_id": "customer", "traits": {}, "state": "inactive"})
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let body = full_body();
        let debug = format!("{body:?} {:#?}", body);
        assert!(!debug.contains("s3cr3t-pw"), "{debug}");
        let hashed =
            IdentityCredentialsImport::hashed_password(SecretString::from("$2a$04$abcdefghijk"));
        assert!(!format!("{hashed:?}").contains("$2a$04$"));
        let credentials: Credentials = serde_json::from_value(json!({
            "type": "password", "identifiers": ["a@example.com"], "version": 0,
            "config": {"hashed_password": "$2a$04$secrethash"}
        }))
        .unwrap();
        assert!(!format!("{credentials:?}").contains("secrethash"));
        assert_eq!(
            credentials.credential_type(),
            Some(CredentialType::Password)
        );
        assert!(credentials.hashed_password().is_some());
        let link: RecoveryLink = serde_json::from_value(json!({
            "recovery_link": "http://x/self-service/recovery?flow=1&token=TOPSECRET",
            "expires_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        assert!(!format!("{link:?}").contains("TOPSECRET"));
        assert!(link.recovery_link.expose_secret().contains("TOPSECRET"));
    }

    #[test]
    fn identities_parse_with_nulls_and_unknown_fields() {
        let identity: Identity = serde_json::from_value(json!({
            "id": "f0b1c2d3-0000-0000-0000-000000000000",
            "schema_id": "customer",
            "schema_url": "http://127.0.0.1:4433/schemas/Y3VzdG9tZXI",
            "state": "active",
            "traits": {"email": "a@example.com"},
            "verifiable_addresses": null,
            "metadata_public": null,
            "metadata_admin": null,
            "created_at": "2024-10-01T10:00:00.123456Z",
            "updated_at": "2024-10-01T10:00:00.123456789Z",
            "organization_id": null,
            "some_future_field": {"x": 1}
        }))
        .unwrap();
        assert!(identity.verifiable_addresses.is_empty());
        assert_eq!(identity.metadata_public, None);
        assert_eq!(identity.organization_id, None);
        assert!(!identity.has_password());
    }

    #[test]
    fn small_wire_values() {
        let body = CreateRecoveryLinkBody {
            identity_id: "x".into(),
            expires_in: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            json!({"identity_id": "x", "expires_in": "3600s"})
        );
        let body = CreateRecoveryCodeBody {
            identity_id: "x".into(),
            expires_in: Some(Duration::from_millis(1500)),
            flow_type: Some(RecoveryFlowType::Api),
        };
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            json!({"identity_id": "x", "expires_in": "1500ms", "flow_type": "api"})
        );
        assert_eq!(
            serde_json::to_value(JsonPatchOp::remove("/metadata_public")).unwrap(),
            json!({"op": "remove", "path": "/metadata_public"})
        );
        assert!(JsonPatchOp::replace("/traits/email", json!("x")).is_idempotent());
        assert!(!JsonPatchOp::add("/verifiable_addresses/-", json!({})).is_idempotent());
        assert!(!JsonPatchOp::remove("/traits/name").is_idempotent());
        assert_eq!(
            "lookup_secret".parse::<CredentialType>(),
            Ok(CredentialType::LookupSecret)
        );
        let params = ListIdentitiesParams {
            ids: vec!["a".into(), "b".into()],
            include_credentials: vec![CredentialType::Password],
            ..ListIdentitiesParams::default()
        };
        assert_eq!(
            params.query(500),
            vec![
                ("page_size", "500".to_string()),
                ("ids", "a".into()),
                ("ids", "b".into()),
                ("include_credential", "password".into())
            ]
        );
    }
}
