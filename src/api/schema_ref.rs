//! The `IdentitySchemaRef` kind: a Kratos identity schema made visible in a namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Names an identity schema that Kratos serves. The operator fetches it, keeps it for
/// client-side validation of the traits of every Identity that references it, reports its digest
/// and the traits Kratos uses as identifiers, and reconciles those Identities again when the
/// schema changes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kratos-operator.dev",
    version = "v1alpha1",
    kind = "IdentitySchemaRef",
    plural = "identityschemarefs",
    singular = "identityschemaref",
    shortname = "kschema",
    category = "kratos",
    namespaced,
    status = "IdentitySchemaRefStatus",
    doc = "A reference to an identity schema served by Ory Kratos.",
    printcolumn(name = "Schema ID", type_ = "string", json_path = ".spec.schemaId"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.digest"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySchemaRefSpec {
    /// The id of the schema in Kratos (`identity.schemas[].id` in its configuration). Immutable:
    /// to move identities to another schema, create another IdentitySchemaRef and point them at it.
    #[x_kube(validation = Rule::new("self == oldSelf").message("schemaId is immutable"))]
    #[schemars(length(min = 1, max = 253))]
    pub schema_id: String,
}

/// Observed state of an IdentitySchemaRef.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySchemaRefStatus {
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, and Reconciling or Stalled where they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `sha256:<hex>` of the schema document as Kratos serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Traits that are login identifiers (credentials.*.identifier), as dotted paths below `traits`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifier_traits: Vec<String>,
    /// Traits used for account recovery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovery_traits: Vec<String>,
    /// Traits that can be verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verifiable_traits: Vec<String>,
}

impl crate::api::conditions::WithConditions for IdentitySchemaRefStatus {
    fn conditions_mut(
        &mut self,
    ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        &mut self.conditions
    }
}
