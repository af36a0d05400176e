//! The `Identity` kind: one Ory Kratos identity, declared.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An Ory Kratos identity managed by kratos-operator. The operator creates it in Kratos, keeps
/// its traits, state, schema, metadata and verified addresses equal to this spec, puts it back
/// when it is changed or deleted in Kratos, and deletes it (or, with `deletionPolicy: Orphan`,
/// releases it) when this object is deleted.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kratos-operator.dev",
    version = "v1alpha1",
    kind = "Identity",
    plural = "identities",
    singular = "identity",
    shortname = "kid",
    category = "kratos",
    namespaced,
    status = "IdentityStatus",
    doc = "An Ory Kratos identity managed declaratively by kratos-operator.",
    printcolumn(name = "Identifier", type_ = "string", json_path = ".status.identifier"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", priority = 1, json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Kratos ID", type_ = "string", json_path = ".status.identityId"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("has(self.spec.schemaRef) != has(self.spec.schemaId)").message("exactly one of spec.schemaRef and spec.schemaId must be set"),
)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySpec {
    /// The IdentitySchemaRef (in this namespace) whose Kratos schema this identity uses. The
    /// operator validates traits against that schema before calling Kratos. Exactly one of
    /// schemaRef and schemaId must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_ref: Option<LocalObjectRef>,

    /// The id of a Kratos identity schema, used as is (Kratos validates the traits). Exactly one
    /// of schemaRef and schemaId must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("schemaId must not be empty"))]
    pub schema_id: Option<String>,

    /// The identity's traits, as a JSON object that must satisfy the identity schema, for example
    /// `{email: alice@example.com, name: {first: Alice}}`. At most 32 levels deep and 16 KiB as
    /// JSON (otherwise: reason InvalidSpec).
    #[schemars(schema_with = "super::free_form_object")]
    pub traits: serde_json::Value,

    /// `active` (the default) or `inactive`. An inactive identity cannot log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<IdentityState>,

    /// Free JSON visible to the identity itself (Kratos `metadata_public`). At most 32 levels
    /// deep and 16 KiB as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_free_form_object")]
    pub metadata_public: Option<serde_json::Value>,

    /// Free JSON visible only through the admin API (Kratos `metadata_admin`). The operator adds
    /// its owner marker (`kratos-operator.dev/owner` and `kratos-operator.dev/uid`) to it. At
    /// most 32 levels deep and 16 KiB as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_free_form_object")]
    pub metadata_admin: Option<serde_json::Value>,

    /// Credentials to import into Kratos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<IdentityCredentials>,

    /// Addresses (from the traits) to import as already verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_addresses: Option<Vec<VerifiedAddress>>,

    /// What to do with the identity's sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionPolicy>,

    /// What to do when Kratos already has an identity with the same identifier that this object
    /// does not own: `Never` (the default) reports a Conflict; `IfUnowned` takes it over, unless
    /// another kratos-operator object owns it. `IfUnowned` is allowed only in a Namespace a
    /// cluster admin labelled `kratos-operator.dev/allow-adoption: "true"` (otherwise: reason
    /// Forbidden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionPolicy>,

    /// What happens in Kratos when this object is deleted: `Delete` (the default) deletes the
    /// identity; `Orphan` keeps it and removes the operator's owner marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// Why the stored spec could not be read, when it could not (too deeply nested, or of the
    /// wrong shape): set by the operator's decoder ([`super::guard::GuardedIdentity`]), never
    /// read from or written to the API server.
    // Never deserialized, never serialized. (Not `skip`: KubeSchema's derive copies this struct
    // with a Serialize derive, and that copy would leave a `skip`ped field unread.)
    #[serde(skip_deserializing, skip_serializing_if = "never_serialized")]
    #[schemars(skip)]
    pub undecodable: Option<String>,
}

/// How deeply the free JSON of a spec (traits, both metadata) may nest (the operator reports
/// InvalidSpec beyond). Identity schemas need a few levels; the bound keeps one object from
/// costing the operator (or Kratos) unbounded work.
pub const MAX_NESTING: usize = 32;
/// How large (as compact JSON) each free JSON field of a spec may be. Real traits are a few
/// hundred bytes; the bound keeps a drift sweep's page of 500 identities (three such fields each)
/// well under the Kratos client's response cap.
pub const MAX_FREE_JSON_BYTES: usize = 16 * 1024;

fn never_serialized<T>(_: &T) -> bool {
    true
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// `active` (the default) or `inactive`. An inactive identity cannot log in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdentityState {
    /// The identity can log in.
    #[default]
    Active,
    /// The identity cannot log in.
    Inactive,
}

impl IdentityState {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }
}

/// Credentials imported into Kratos.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityCredentials {
    /// A password, in cleartext or as a hash, read from a Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordCredential>,
    /// Social sign-in (OIDC) links to import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcCredential>,
}

/// Where the password comes from and when it is (re)imported. Exactly one of secretRef and
/// hashedSecretRef must be set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.hashedSecretRef)").message("exactly one of secretRef and hashedSecretRef must be set"))]
pub struct PasswordCredential {
    /// A Secret key holding the cleartext password; Kratos hashes it on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// A Secret key holding a password hash to import as is (bcrypt, argon2, pbkdf2, scrypt,
    /// md5, ssha and the other formats Kratos accepts). Kratos re-hashes it at the first login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_secret_ref: Option<SecretKeyRef>,
    /// `SetOnce` (the default): import only when the identity is created in Kratos. `Sync`:
    /// import again whenever the Secret's content changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PasswordPolicy>,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// When the password is imported: `SetOnce` (the default) only when the identity is created in
/// Kratos, so the user may change it later; `Sync` again whenever the Secret's content changes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PasswordPolicy {
    /// Only when the identity is created in Kratos; later changes to the Secret are ignored, so
    /// the user may change the password in Kratos.
    #[default]
    SetOnce,
    /// Whenever the Secret's content changes.
    Sync,
}

/// OIDC (social sign-in) credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct OidcCredential {
    /// Provider links to import; Kratos adds them to the identity's existing ones.
    pub providers: Vec<OidcProvider>,
}

/// One OIDC provider link.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct OidcProvider {
    /// The provider id as configured in Kratos (for example `github`).
    #[schemars(length(min = 1))]
    pub provider: String,
    /// The user's subject at that provider.
    #[schemars(length(min = 1))]
    pub subject: String,
}

/// An address to import as verified.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct VerifiedAddress {
    /// The address, as it appears in the traits.
    #[schemars(length(min = 1))]
    pub value: String,
    /// How it is verified: `email` or `sms`.
    pub via: AddressVia,
}

/// How the address is verified: `email` or `sms`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddressVia {
    /// An email address.
    Email,
    /// A phone number.
    Sms,
}

impl AddressVia {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }
}

/// Session handling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionPolicy {
    /// When the state becomes `inactive`, also revoke every session of the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_on_deactivate: Option<bool>,
    /// Disable every session that was authenticated before this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_before: Option<Time>,
}

/// What to do when Kratos already has an identity with the same identifier that this object
/// does not own: `Never` (the default) reports a Conflict; `IfUnowned` takes it over, unless
/// another kratos-operator object owns it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum AdoptionPolicy {
    /// Never take over an identity this object did not create; report a Conflict.
    #[default]
    Never,
    /// Take over an identity that no kratos-operator object owns.
    IfUnowned,
}

/// What happens in Kratos when this object is deleted: `Delete` (the default) deletes the
/// identity; `Orphan` keeps it and removes the operator's owner marker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeletionPolicy {
    /// Delete the Kratos identity.
    #[default]
    Delete,
    /// Keep the Kratos identity and remove the operator's owner marker.
    Orphan,
}

/// Observed state of an Identity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityStatus {
    /// The Kratos identity id. Set by the operator; never part of the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_id: Option<String>,
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, and Reconciling or Stalled where they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The login identifier (the first identifier trait of the schema), for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    /// The state Kratos reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The schema id Kratos reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<String>,
    /// `sha256:<hex>` of the schema document the traits were last validated against. An
    /// Identity whose IdentitySchemaRef reports another digest is reconciled again, also when
    /// the schema changed while the operator was not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_digest: Option<String>,
    /// What the operator imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsStatus>,
    /// Number of active sessions of the identity (not revoked, not expired), as of the last
    /// reconcile or drift sweep: at most one resync interval old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_sessions: Option<i32>,
    /// When the operator last confirmed that Kratos matches the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_at: Option<Time>,
}

/// Credentials the operator imported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// The password import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordStatus>,
    /// OIDC providers imported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc: Vec<String>,
}

/// The last password import.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordStatus {
    /// `<secret uid>/<resourceVersion>` of the Secret that was imported (never its content).
    pub secret_version: String,
    /// When it was imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_at: Option<Time>,
}

impl IdentitySpec {
    /// The state, defaulting to active.
    pub fn state(&self) -> IdentityState {
        self.state.unwrap_or_default()
    }
    /// The deletion policy, defaulting to Delete.
    pub fn deletion_policy(&self) -> DeletionPolicy {
        self.deletion_policy.unwrap_or_default()
    }
    /// The adoption policy, defaulting to Never.
    pub fn adoption(&self) -> AdoptionPolicy {
        self.adoption.unwrap_or_default()
    }
}

impl crate::api::conditions::WithConditions for IdentityStatus {
    fn conditions_mut(
        &mut self,
    ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        &mut self.conditions
    }
}
