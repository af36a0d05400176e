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
        let yaml = yaml_serde::to_string(&crd).unwrap();
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

/// `kubectl explain` prints a description as it is: a line break of the Rust source inside a
/// sentence would break its lines mid-sentence. Only paragraphs and list items start a line.
#[test]
fn descriptions_read_as_prose_in_kubectl_explain() {
    fn walk(v: &Value, path: &str, bad: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if k == "description"
                        && let Some(text) = child.as_str()
                    {
                        for (i, line) in text.split('\n').enumerate().skip(1) {
                            let previous_blank = text.split('\n').nth(i - 1) == Some("");
                            let t = line.trim_start();
                            let item = t.starts_with("- ")
                                || t.starts_with("* ")
                                || t.split_once(". ").is_some_and(|(n, _)| {
                                    !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
                                });
                            if !(line.is_empty() || previous_blank || item) {
                                bad.push(format!("{path}: ...{line:.40}"));
                            }
                        }
                    } else {
                        walk(child, &format!("{path}.{k}"), bad);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, path, bad)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    for crd in api::crds() {
        walk(
            &serde_json::to_value(&crd).unwrap(),
            &crd.spec.names.kind,
            &mut bad,
        );
    }
    assert!(bad.is_empty(), "line breaks inside sentences: {bad:#?}");
}
