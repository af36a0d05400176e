//! The custom resources of kratos-operator (group `kratos-operator.dev`, version `v1alpha1`)
//! and the helpers they share: kstatus-style conditions, names and markers.

// clippy reads repeated `printcolumn(type_ = ..)` arguments of the kube derive as duplicated
// attributes; they are distinct columns.
#![allow(clippy::duplicated_attributes)]

pub mod conditions;
pub mod guard;
pub mod identity;
pub mod recovery_request;
pub mod schema_ref;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::{Schema, SchemaGenerator, json_schema};

pub use guard::GuardedIdentity;
pub use identity::{Identity, IdentitySpec, IdentityStatus};
pub use recovery_request::{RecoveryRequest, RecoveryRequestSpec, RecoveryRequestStatus};
pub use schema_ref::{IdentitySchemaRef, IdentitySchemaRefSpec, IdentitySchemaRefStatus};

/// API group of every kind.
pub const GROUP: &str = "kratos-operator.dev";
/// API version of every kind.
pub const VERSION: &str = "v1alpha1";
/// Finalizer that guards the Kratos identity of an `Identity`.
pub const FINALIZER: &str = "kratos-operator.dev/cleanup";
/// Field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "kratos-operator";
/// Label key set on everything the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label value set on everything the operator creates.
pub const MANAGED_BY_VALUE: &str = "kratos-operator";
/// Key in Kratos `metadata_admin` naming the owning object as `<namespace>/<name>`.
pub const OWNER_MARKER: &str = "kratos-operator.dev/owner";
/// Key in Kratos `metadata_admin` holding the owning object's uid.
pub const UID_MARKER: &str = "kratos-operator.dev/uid";
/// Key in Kratos `metadata_admin` listing the OIDC links (`provider:subject`) the operator
/// imported from the spec: the ones it unlinks when they leave the spec. Links a user added
/// through self-service are not listed and never touched.
pub const OIDC_MARKER: &str = "kratos-operator.dev/oidc";

/// Every CRD of the operator, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Identity::crd(),
        IdentitySchemaRef::crd(),
        RecoveryRequest::crd(),
    ]
}

/// Schema of a free-form JSON object field (traits, metadata): `type: object` with
/// `x-kubernetes-preserve-unknown-fields: true`, so the CRD stays structural.
pub(crate) fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Like [`free_form_object`], for a field that may be absent.
pub(crate) fn optional_free_form_object(generator: &mut SchemaGenerator) -> Schema {
    free_form_object(generator)
}

/// All CRDs as one multi-document YAML stream, as `kratos-operator crds` prints it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
