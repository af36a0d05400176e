//! The `RecoveryRequest` kind: a one-shot Kratos recovery link or code, delivered into a Secret.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::identity::LocalObjectRef;

/// Asks Kratos for a recovery link or code for one identity and delivers it into a Secret owned
/// by this object, so that an administrator can hand a user a way back into their account
/// without the link passing through a chat or a log. One link or code is issued per
/// `metadata.generation`: resyncs and operator restarts never issue another, a change to the
/// spec issues a new one. When it expires, the operator clears the Secret's data.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kratos-operator.dev",
    version = "v1alpha1",
    kind = "RecoveryRequest",
    plural = "recoveryrequests",
    singular = "recoveryrequest",
    shortname = "krr",
    category = "kratos",
    namespaced,
    status = "RecoveryRequestStatus",
    doc = "A one-shot Ory Kratos recovery link or code, delivered into a Secret by kratos-operator.",
    printcolumn(name = "Identity", type_ = "string", json_path = ".status.identity"),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(name = "Secret", type_ = "string", priority = 1, json_path = ".status.secretName"),
    printcolumn(name = "Reason", type_ = "string", priority = 1, json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("has(self.spec.identityRef) != has(self.spec.identityId)").message("exactly one of spec.identityRef and spec.identityId must be set"),
    validation = Rule::new("!has(self.spec.returnTo) || self.spec.method == 'link'").message("spec.returnTo is only supported with method link"),
)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryRequestSpec {
    /// The Identity (in this namespace) to recover. The link or code is issued as soon as that
    /// Identity has a Kratos identity (`status.identityId`). Exactly one of identityRef and
    /// identityId must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ref: Option<LocalObjectRef>,

    /// The id of any Kratos identity to recover, used as is. Exactly one of identityRef and
    /// identityId must be set. Allowed only in a Namespace a cluster admin labelled
    /// `kratos-operator.dev/allow-recovery-by-id: "true"` (otherwise: reason Forbidden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub identity_id: Option<String>,

    /// How the user recovers the account.
    #[serde(default)]
    pub method: RecoveryMethod,

    /// How long the link or code stays valid, as a Go duration of hours, minutes, seconds and
    /// milliseconds (`15m`, `1h`, `1h30m`; at least `1s`). Default: the lifespan configured in
    /// Kratos (`selfservice.methods.<method>.config.lifespan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64), regex(pattern = r"^([0-9]+(h|m|s|ms))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("expiresIn must be a duration of at least 1s, such as 15m, 1h or 1h30m"))]
    pub expires_in: Option<String>,

    /// Where Kratos sends the user after recovery (method `link` only). Kratos accepts only URLs
    /// listed in its `selfservice.allowed_return_urls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https']").message("returnTo must be an absolute http(s) URL"))]
    pub return_to: Option<String>,

    /// The Secret (in this namespace) that receives the link or code. Default: the name of this
    /// RecoveryRequest. The operator creates it and owns it; an existing Secret that this
    /// RecoveryRequest does not own is never overwritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,
}

/// How the user recovers the account: `link` (the default), a one-click link that signs the
/// user in and opens the settings flow; or `code`, a 6-digit code to enter in the recovery flow
/// whose URL is delivered with it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryMethod {
    /// A recovery link (`POST /admin/recovery/link`).
    #[default]
    Link,
    /// A recovery code and the URL of its flow (`POST /admin/recovery/code`).
    Code,
}

impl RecoveryMethod {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Link => "link",
            Self::Code => "code",
        }
    }
}

/// Where the request stands: `Pending` (nothing issued for the current spec yet), `Issued` (the
/// Secret holds a valid link or code), `Expired` (it expired and the Secret's data was cleared)
/// or `Failed` (Kratos refused; see the Ready condition).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecoveryPhase {
    /// Nothing has been issued for the current spec yet.
    Pending,
    /// The Secret holds a link or code that is still valid.
    Issued,
    /// The link or code expired and the Secret's data was cleared.
    Expired,
    /// Kratos refused to issue one; the Ready condition says why.
    Failed,
}

/// Observed state of a RecoveryRequest. It never contains the link or the code.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryRequestStatus {
    /// Where the request stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RecoveryPhase>,
    /// The identity to recover, for display: the Identity's name, or the raw Kratos id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The Kratos identity id the current link or code was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_id: Option<String>,
    /// When the current link or code was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// When the current link or code expires (as Kratos reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The Secret that holds the link or code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The metadata.generation for which the current link or code was issued. A link or code is
    /// issued only while this differs from metadata.generation, so one is issued per spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_generation: Option<i64>,
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, and Reconciling or Stalled where they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl RecoveryRequestSpec {
    /// The identity to recover, for display: the Identity's name, or the raw Kratos id.
    pub fn identity_display(&self) -> Option<String> {
        self.identity_ref
            .as_ref()
            .map(|r| r.name.clone())
            .or_else(|| self.identity_id.clone())
    }
}

impl crate::api::conditions::WithConditions for RecoveryRequestStatus {
    fn conditions_mut(
        &mut self,
    ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        &mut self.conditions
    }
}
