//! `kratos-operator export`: Identity manifests (and one IdentitySchemaRef per schema) for the
//! identities already in Kratos, with `adoption: IfUnowned` and `deletionPolicy: Orphan`, so an
//! existing installation moves to GitOps in one command (the target Namespace needs the adoption
//! opt-in). Passwords are never exported: adopted identities keep theirs.

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt;
use serde_json::{Map, Value, json};

use crate::{
    Result,
    api::{OIDC_MARKER, OWNER_MARKER, UID_MARKER},
    kratos::{CredentialType, Identity, IdentityState, KratosClient, ListIdentitiesParams},
};

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Namespace of the generated objects.
    pub namespace: String,
    /// Also export identities another kratos-operator object already manages.
    pub include_managed: bool,
    /// What the Identity objects are named after.
    pub names: NameFrom,
}

/// What exported Identity objects are named after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NameFrom {
    /// The Kratos identity id (`identity-<uuid>`): no personal data in object names, Events or
    /// file paths.
    #[default]
    Id,
    /// The identifier (an email address or username, made a DNS label): readable, but personal
    /// data then appears in names, Events and Git paths.
    Identifier,
}

/// A DNS-1123 label made from `text`, at most 63 characters; `None` when nothing usable remains.
pub fn dns_label(text: &str) -> Option<String> {
    let mut out = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out: String = out.chars().take(63).collect();
    let out = out.trim_matches('-').to_string();
    (!out.is_empty()).then_some(out)
}

fn display_identifier(identity: &Identity) -> Option<String> {
    let password_ids = identity
        .credentials
        .as_ref()
        .and_then(|c| c.get("password"))
        .map(|c| c.identifiers.clone())
        .unwrap_or_default();
    password_ids.into_iter().next().or_else(|| {
        ["email", "username"].iter().find_map(|k| {
            identity
                .traits
                .get(*k)
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    })
}

/// Whether a kratos-operator object already owns the identity.
pub fn is_managed(identity: &Identity) -> bool {
    identity
        .metadata_admin
        .as_ref()
        .is_some_and(|m| m.get(UID_MARKER).is_some() || m.get(OWNER_MARKER).is_some())
}

/// The manifests for `identities` (pure): IdentitySchemaRefs first, then Identities, names unique.
pub fn manifests(identities: &[Identity], options: &ExportOptions) -> Vec<Value> {
    let mut out = Vec::new();
    let schemas: BTreeSet<&str> = identities.iter().map(|i| i.schema_id.as_str()).collect();
    let mut schema_names = BTreeMap::new();
    for id in schemas {
        let name = dns_label(id).unwrap_or_else(|| "schema".into());
        schema_names.insert(id.to_string(), name.clone());
        out.push(json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef",
            "metadata": { "name": name, "namespace": options.namespace },
            "spec": { "schemaId": id }
        }));
    }
    let mut used = BTreeSet::new();
    for identity in identities {
        let short: String = identity
            .id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        let by_id = || {
            dns_label(&format!("identity-{}", identity.id))
                .unwrap_or_else(|| format!("identity-{short}"))
        };
        let base = match options.names {
            NameFrom::Id => by_id(),
            NameFrom::Identifier => display_identifier(identity)
                .and_then(|s| dns_label(&s))
                .unwrap_or_else(by_id),
        };
        let name = if used.contains(&base) {
            let trimmed: String = base.chars().take(54).collect();
            format!("{}-{short}", trimmed.trim_end_matches('-'))
        } else {
            base
        };
        used.insert(name.clone());
        let mut spec = Map::new();
        spec.insert(
            "schemaRef".into(),
            json!({ "name": schema_names.get(&identity.schema_id) }),
        );
        spec.insert("traits".into(), identity.traits.clone());
        if identity.state == IdentityState::Inactive {
            spec.insert("state".into(), json!("inactive"));
        }
        if let Some(public) = identity.metadata_public.as_ref().filter(|v| !v.is_null()) {
            spec.insert("metadataPublic".into(), public.clone());
        }
        if let Some(Value::Object(admin)) = &identity.metadata_admin {
            let mut admin = admin.clone();
            admin.remove(OWNER_MARKER);
            admin.remove(UID_MARKER);
            admin.remove(OIDC_MARKER);
            if !admin.is_empty() {
                spec.insert("metadataAdmin".into(), Value::Object(admin));
            }
        }
        let verified: Vec<Value> = identity
            .verifiable_addresses
            .iter()
            .filter(|a| a.verified)
            .map(|a| json!({ "value": a.value, "via": a.via }))
            .collect();
        if !verified.is_empty() {
            spec.insert("verifiedAddresses".into(), Value::Array(verified));
        }
        let oidc: Vec<Value> = identity
            .credentials
            .as_ref()
            .and_then(|c| c.get("oidc"))
            .map(|c| {
                c.identifiers
                    .iter()
                    .filter_map(|id| id.split_once(':'))
                    .map(|(p, s)| json!({ "provider": p, "subject": s }))
                    .collect()
            })
            .unwrap_or_default();
        if !oidc.is_empty() {
            spec.insert(
                "credentials".into(),
                json!({ "oidc": { "providers": oidc } }),
            );
        }
        spec.insert("adoption".into(), json!("IfUnowned"));
        // These users existed before the operator: pruning the manifests (a deleted file, a
        // GitOps prune) must release them, never delete them.
        spec.insert("deletionPolicy".into(), json!("Orphan"));
        out.push(json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": name, "namespace": options.namespace },
            "spec": Value::Object(spec)
        }));
    }
    out
}

/// The manifests of an export and the comment that goes with them.
#[derive(Debug, Clone)]
pub struct Export {
    /// What the reader must know (adoption opt-in, identities left out), as `#` lines.
    pub header: String,
    /// IdentitySchemaRefs, then Identities.
    pub manifests: Vec<Value>,
}

fn to_yaml(manifest: &Value) -> Result<String> {
    yaml_serde::to_string(manifest).map_err(|e| crate::Error::Config(e.to_string()))
}

impl Export {
    /// One YAML stream: the header, then every manifest.
    pub fn stream(&self) -> Result<String> {
        let mut out = self.header.clone();
        for manifest in &self.manifests {
            out.push_str("---\n");
            out.push_str(&to_yaml(manifest)?);
        }
        Ok(out)
    }

    /// The files of a directory a GitOps tool can apply as is: one file per object
    /// (`schemas/<name>.yaml`, `identities/<name>.yaml`) and a `kustomization.yaml` listing
    /// them (with the header), as relative path and content.
    pub fn files(&self) -> Result<Vec<(String, String)>> {
        let mut files = Vec::new();
        let mut resources = Vec::new();
        for manifest in &self.manifests {
            let folder = if manifest["kind"] == "Identity" {
                "identities"
            } else {
                "schemas"
            };
            let name = manifest["metadata"]["name"].as_str().unwrap_or("object");
            let path = format!("{folder}/{name}.yaml");
            files.push((path.clone(), to_yaml(manifest)?));
            resources.push(Value::String(path));
        }
        let kustomization = json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": resources,
        });
        files.push((
            "kustomization.yaml".into(),
            format!("{}{}", self.header, to_yaml(&kustomization)?),
        ));
        Ok(files)
    }
}

/// Lists every identity in Kratos (paginated) and renders the manifests as a YAML stream.
pub async fn export(kratos: &KratosClient, options: &ExportOptions) -> Result<String> {
    collect(kratos, options).await?.stream()
}

/// Lists every identity in Kratos (paginated) and builds the manifests.
pub async fn collect(kratos: &KratosClient, options: &ExportOptions) -> Result<Export> {
    let params = ListIdentitiesParams {
        include_credentials: vec![CredentialType::Oidc],
        ..Default::default()
    };
    let mut identities: Vec<Identity> = kratos.list_identities(params).try_collect().await?;
    let skipped = identities.iter().filter(|i| is_managed(i)).count();
    if !options.include_managed {
        identities.retain(|i| !is_managed(i));
    }
    let mut out = format!(
        "# Generated by `kratos-operator export`.\n\
         # These Identities adopt existing users (adoption: IfUnowned) and release them when deleted\n\
         # (deletionPolicy: Orphan). Adoption needs the cluster admin's opt-in on the target\n\
         # Namespace: kubectl label namespace {} {}=true\n",
        options.namespace,
        crate::tenancy::LABEL_ALLOW_ADOPTION
    );
    if skipped > 0 && !options.include_managed {
        out.push_str(&format!(
            "# {skipped} identities already managed by kratos-operator were left out.\n"
        ));
    }
    Ok(Export {
        header: out,
        manifests: manifests(&identities, options),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(v: Value) -> Identity {
        let mut base = json!({ "id": "0a1b2c3d-aaaa-bbbb-cccc-000000000000", "schema_id": "customer", "traits": {},
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z" });
        if let (Value::Object(b), Value::Object(o)) = (&mut base, v) {
            b.extend(o);
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn dns_labels_are_valid() {
        assert_eq!(
            dns_label("Alice.Smith@Example.com").as_deref(),
            Some("alice-smith-example-com")
        );
        assert_eq!(dns_label("--"), None);
        assert_eq!(dns_label(&"x".repeat(100)).unwrap().len(), 63);
    }

    #[test]
    fn manifests_adopt_and_keep_data_without_the_marker() {
        let opts = ExportOptions {
            namespace: "team".into(),
            include_managed: false,
            names: NameFrom::Identifier,
        };
        let a = identity(
            json!({ "traits": { "email": "a@example.com" }, "state": "inactive",
            "metadata_public": { "p": 1 }, "metadata_admin": { "crm": 2, UID_MARKER: "x" },
            "verifiable_addresses": [ { "value": "a@example.com", "verified": true, "via": "email", "status": "completed" } ],
            "credentials": { "oidc": { "type": "oidc", "identifiers": ["github:42"] } } }),
        );
        let b = identity(
            json!({ "id": "ffff0000-0000-0000-0000-000000000000", "traits": { "email": "a@example.com" } }),
        );
        let out = manifests(&[a, b], &opts);
        assert_eq!(out[0]["kind"], "IdentitySchemaRef");
        assert_eq!(out[1]["metadata"]["name"], "a-example-com");
        assert_eq!(out[2]["metadata"]["name"], "a-example-com-ffff0000");
        let spec = &out[1]["spec"];
        assert_eq!(spec["adoption"], "IfUnowned");
        assert_eq!(
            spec["deletionPolicy"], "Orphan",
            "pruning never deletes a pre-existing user"
        );
        assert_eq!(spec["state"], "inactive");
        assert_eq!(spec["metadataAdmin"], json!({ "crm": 2 }));
        assert_eq!(
            spec["credentials"]["oidc"]["providers"][0],
            json!({ "provider": "github", "subject": "42" })
        );
        assert_eq!(spec["verifiedAddresses"][0]["value"], "a@example.com");
        assert!(out[2]["spec"].get("state").is_none());
    }

    #[test]
    fn names_come_from_the_kratos_id_by_default_never_from_an_address() {
        let opts = ExportOptions {
            namespace: "team".into(),
            include_managed: false,
            names: NameFrom::default(),
        };
        let a = identity(json!({ "traits": { "email": "alice@example.com" } }));
        let out = manifests(&[a], &opts);
        assert_eq!(
            out[1]["metadata"]["name"],
            "identity-0a1b2c3d-aaaa-bbbb-cccc-000000000000"
        );
        assert_eq!(out[1]["metadata"]["namespace"], "team");
        let export = Export {
            header: "# header\n".into(),
            manifests: out,
        };
        let files = export.files().unwrap();
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "schemas/customer.yaml",
                "identities/identity-0a1b2c3d-aaaa-bbbb-cccc-000000000000.yaml",
                "kustomization.yaml"
            ]
        );
        assert!(files.iter().all(|(p, c)| !p.contains("alice")
            && (p == "identities/identity-0a1b2c3d-aaaa-bbbb-cccc-000000000000.yaml"
                || !c.contains("alice"))));
        let kustomization: Value = yaml_serde::from_str(&files[2].1).unwrap();
        assert_eq!(kustomization["resources"][1], paths[1]);
        assert!(files[2].1.starts_with("# header"));
    }
}
