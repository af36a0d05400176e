//! The generated CRD files must match the Rust types, and the CRDs must be what `kubectl
//! explain` and GitOps tools need: a description on every field, no unsigned formats.
//! Regenerate with `UPDATE_CRDS=1 cargo test --test crds`.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use kratos_operator::api;
use serde_json::Value;

fn crd_path(plural: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crds")
        .join(format!("{plural}.yaml"))
}

#[test]
fn crd_files_match_the_types() {
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for crd in api::crds() {
        let yaml = serde_yaml::to_string(&crd).unwrap();
        let path = crd_path(&crd.spec.names.plural);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &yaml).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "generated CRDs drifted: {stale:?}; run `UPDATE_CRDS=1 cargo test --test crds`"
    );
}

#[test]
fn crds_output_lists_every_kind() {
    let yaml = api::crds_yaml().unwrap();
    for kind in [
        "kind: Identity\n",
        "kind: IdentitySchemaRef\n",
        "kind: RecoveryRequest\n",
    ] {
        assert!(yaml.contains(kind), "missing {kind}");
    }
    assert!(yaml.matches("kind: CustomResourceDefinition").count() == api::crds().len());
}

fn walk(path: &str, schema: &Value, problems: &mut Vec<String>) {
    if let Some(format) = schema.get("format").and_then(Value::as_str)
        && format.starts_with("uint")
    {
        problems.push(format!("{path}: unsigned format {format}"));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let p = format!("{path}.{name}");
            let described = prop
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            // metadata and apiVersion/kind are documented by Kubernetes itself.
            if !described && !["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
                problems.push(format!("{p}: no description"));
            }
            walk(&p, prop, problems);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(&format!("{path}[]"), items, problems);
    }
}

#[test]
fn every_field_is_documented_and_no_unsigned_formats() {
    let mut problems = Vec::new();
    for crd in api::crds() {
        let value = serde_json::to_value(&crd).unwrap();
        for version in value["spec"]["versions"].as_array().unwrap() {
            walk(
                &crd.spec.names.kind,
                &version["schema"]["openAPIV3Schema"],
                &mut problems,
            );
        }
    }
    // Conditions come from k8s-openapi and are documented there; keep them to the standard set.
    problems.retain(|p| !p.contains(".conditions[]."));
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn crds_are_structural_with_status_and_categories() {
    for crd in api::crds() {
        assert_eq!(crd.spec.group, api::GROUP);
        assert!(
            crd.spec
                .names
                .categories
                .as_ref()
                .unwrap()
                .contains(&"kratos".to_string())
        );
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{}",
            crd.spec.names.kind
        );
        let json = serde_json::to_string(&v.schema).unwrap();
        // Free-form JSON must preserve unknown fields and be typed as an object.
        if crd.spec.names.kind == "Identity" {
            let traits = &serde_json::to_value(&v.schema).unwrap()["openAPIV3Schema"]["properties"]
                ["spec"]["properties"]["traits"];
            assert_eq!(traits["type"], "object");
            assert_eq!(traits["x-kubernetes-preserve-unknown-fields"], true);
        }
        assert!(
            !json.contains("\"anyOf\""),
            "{}: anyOf makes the schema non-structural",
            crd.spec.names.kind
        );
    }
}
