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

/// Every CRD of the operator, in a stable order, with descriptions as prose (see [`prose`]).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Identity::crd(),
        IdentitySchemaRef::crd(),
        RecoveryRequest::crd(),
    ]
    .into_iter()
    .map(prose_descriptions)
    .collect()
}

/// The CRD with every `description` of its schemas made [`prose`].
fn prose_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    match value {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = prose(text);
                        }
                        other => walk(other),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// A doc comment as `kubectl explain` shows it well (pure): the source's hard line breaks inside
/// a paragraph become spaces; paragraphs (blank lines) and list items (lines starting with
/// `- `, `* ` or `1. `) keep their line breaks.
pub fn prose(text: &str) -> String {
    fn starts_item(line: &str) -> bool {
        let t = line.trim_start();
        t.starts_with("- ")
            || t.starts_with("* ")
            || t.split_once(". ")
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    }
    text.split("\n\n")
        .map(|paragraph| {
            let mut out = String::new();
            for line in paragraph.lines() {
                if out.is_empty() {
                    out.push_str(line.trim_end());
                } else if starts_item(line) {
                    out.push('\n');
                    out.push_str(line.trim_end());
                } else {
                    out.push(' ');
                    out.push_str(line.trim());
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n\n")
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
pub fn crds_yaml() -> Result<String, yaml_serde::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_inside_paragraphs_become_spaces_and_the_rest_stays() {
        assert_eq!(prose("one\ntwo three\n four"), "one two three four");
        assert_eq!(
            prose("para one\ncontinued.\n\npara two"),
            "para one continued.\n\npara two"
        );
        assert_eq!(
            prose("Choices:\n- `A`: first\n  more of A\n- `B`\n1. one\n12. twelve"),
            "Choices:\n- `A`: first more of A\n- `B`\n1. one\n12. twelve"
        );
        assert_eq!(
            prose("Version 1.3 is fine.\nNext"),
            "Version 1.3 is fine. Next"
        );
        assert_eq!(prose("single"), "single");
    }
}
