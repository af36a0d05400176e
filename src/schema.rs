//! Kratos identity schemas as the operator uses them: compiled for client-side validation of
//! traits, with the traits Kratos treats as identifiers, recovery and verifiable addresses.
//! Pure: no I/O here; the IdentitySchemaRef controller fetches and fills the [`SchemaCache`].

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// A problem with one trait value, as reported by schema validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraitError {
    /// JSON pointer into the identity document, e.g. `/traits/email`.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TraitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            if self.pointer.is_empty() {
                "/"
            } else {
                &self.pointer
            },
            self.message
        )
    }
}

/// Why a schema document cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the identity schema is not a valid JSON Schema: {0}")]
pub struct InvalidSchema(String);

/// A compiled identity schema.
pub struct CompiledSchema {
    /// Kratos schema id.
    pub id: String,
    /// `sha256:<hex>` of the document as served.
    pub digest: String,
    /// Traits that are login identifiers, as dotted paths below `traits`.
    pub identifier_traits: Vec<String>,
    /// Traits used for recovery.
    pub recovery_traits: Vec<String>,
    /// Traits that can be verified.
    pub verifiable_traits: Vec<String>,
    validator: jsonschema::Validator,
}

impl fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledSchema")
            .field("id", &self.id)
            .field("digest", &self.digest)
            .field("identifier_traits", &self.identifier_traits)
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of a document.
pub fn digest(raw: &[u8]) -> String {
    let hash = Sha256::digest(raw);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl CompiledSchema {
    /// Compiles `raw` (the schema document exactly as Kratos serves it).
    pub fn compile(id: &str, raw: &[u8]) -> Result<Self, InvalidSchema> {
        let document: Value =
            serde_json::from_slice(raw).map_err(|e| InvalidSchema(e.to_string()))?;
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&document)
            .map_err(|e| InvalidSchema(e.to_string()))?;
        let mut identifier_traits = Vec::new();
        let mut recovery_traits = Vec::new();
        let mut verifiable_traits = Vec::new();
        if let Some(traits) = document.pointer("/properties/traits") {
            walk_traits(traits, "", &mut |path, ext| {
                let identifier = ext
                    .get("credentials")
                    .and_then(Value::as_object)
                    .is_some_and(|c| {
                        c.values()
                            .any(|m| m.get("identifier") == Some(&Value::Bool(true)))
                    });
                if identifier {
                    identifier_traits.push(path.to_string());
                }
                if ext.pointer("/recovery/via").is_some() {
                    recovery_traits.push(path.to_string());
                }
                if ext.pointer("/verification/via").is_some() {
                    verifiable_traits.push(path.to_string());
                }
            });
        }
        Ok(Self {
            id: id.to_string(),
            digest: digest(raw),
            identifier_traits,
            recovery_traits,
            verifiable_traits,
            validator,
        })
    }

    /// Validates `traits` the way Kratos does (the identity document is `{"traits": ...}`).
    /// Returns every problem, sorted by pointer.
    pub fn validate_traits(&self, traits: &Value) -> Result<(), Vec<TraitError>> {
        let document = serde_json::json!({ "traits": traits });
        let mut errors: Vec<TraitError> = self
            .validator
            .iter_errors(&document)
            .map(|e| TraitError {
                pointer: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        errors.sort_by(|a, b| a.pointer.cmp(&b.pointer).then(a.message.cmp(&b.message)));
        errors.dedup();
        Err(errors)
    }

    /// The identifier values of `traits` (trimmed and lower-cased, as Kratos stores password
    /// identifiers), in schema order, without duplicates.
    pub fn identifier_values(&self, traits: &Value) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for path in &self.identifier_traits {
            if let Some(s) = trait_at(traits, path).and_then(Value::as_str) {
                let v = s.trim().to_lowercase();
                if !v.is_empty() && !out.contains(&v) {
                    out.push(v);
                }
            }
        }
        out
    }

    /// The first identifier value as written in the traits, for display.
    pub fn display_identifier(&self, traits: &Value) -> Option<String> {
        self.identifier_traits.iter().find_map(|p| {
            trait_at(traits, p)
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }
}

/// The value at a dotted path below `traits`.
pub fn trait_at<'a>(traits: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(traits, |v, key| v.get(key))
}

fn walk_traits(schema: &Value, prefix: &str, visit: &mut dyn FnMut(&str, &Value)) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, prop) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if let Some(ext) = prop.get("ory.sh/kratos") {
            visit(&path, ext);
        }
        walk_traits(prop, &path, visit);
    }
}

/// Compiled schemas by Kratos schema id, shared by the controllers, each with the time it was
/// last fetched: Kratos can serve a new schema under the same id after a configuration change,
/// so a reader that nothing else refreshes asks for a fresh one ([`SchemaCache::get_fresh`]).
#[derive(Clone, Default, Debug)]
pub struct SchemaCache {
    inner: Arc<RwLock<HashMap<String, Cached>>>,
}

/// A compiled schema and when it was last fetched.
type Cached = (Arc<CompiledSchema>, Instant);

impl SchemaCache {
    /// The compiled schema of `id`, if fetched.
    pub fn get(&self, id: &str) -> Option<Arc<CompiledSchema>> {
        self.inner
            .read()
            .ok()
            .and_then(|m| m.get(id).map(|(s, _)| s.clone()))
    }

    /// The compiled schema of `id` if it was fetched less than `max_age` ago.
    pub fn get_fresh(&self, id: &str, max_age: Duration) -> Option<Arc<CompiledSchema>> {
        self.inner.read().ok().and_then(|m| {
            m.get(id)
                .filter(|(_, fetched)| fetched.elapsed() < max_age)
                .map(|(s, _)| s.clone())
        })
    }

    /// Stores a freshly fetched schema; returns true when its digest differs from the one
    /// stored before.
    pub fn put(&self, schema: CompiledSchema) -> bool {
        let Ok(mut map) = self.inner.write() else {
            return false;
        };
        let now = Instant::now();
        match map.get_mut(&schema.id) {
            Some((old, fetched)) if old.digest == schema.digest => {
                *fetched = now;
                false
            }
            _ => {
                map.insert(schema.id.clone(), (Arc::new(schema), now));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn customer() -> CompiledSchema {
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testenv/kratos/customer.schema.json"
        ))
        .unwrap();
        CompiledSchema::compile("customer", &raw).unwrap()
    }

    #[test]
    fn finds_identifier_recovery_and_verifiable_traits() {
        let s = customer();
        assert_eq!(s.identifier_traits, vec!["email"]);
        assert_eq!(s.recovery_traits, vec!["email"]);
        assert_eq!(s.verifiable_traits, vec!["email"]);
        assert!(s.digest.starts_with("sha256:") && s.digest.len() == 7 + 64);
    }

    #[test]
    fn valid_traits_pass() {
        let s = customer();
        assert_eq!(
            s.validate_traits(&json!({"email": "a@example.com", "name": {"first": "A"}})),
            Ok(())
        );
    }

    #[test]
    fn invalid_traits_report_pointers() {
        let s = customer();
        let errors = s
            .validate_traits(&json!({"email": "not-an-email", "age": -1, "extra": true}))
            .unwrap_err();
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert!(pointers.contains(&"/traits/email"), "{errors:?}");
        assert!(pointers.contains(&"/traits/age"), "{errors:?}");
        assert!(pointers.contains(&"/traits"), "{errors:?}");
        let missing = s
            .validate_traits(&json!({"name": {"first": "A"}}))
            .unwrap_err();
        assert_eq!(missing[0].pointer, "/traits");
        assert!(missing[0].message.contains("email"), "{missing:?}");
    }

    #[test]
    fn identifier_values_are_normalised() {
        let s = customer();
        assert_eq!(
            s.identifier_values(&json!({"email": "  Alice@Example.COM "})),
            vec!["alice@example.com"]
        );
        assert_eq!(
            s.display_identifier(&json!({"email": "Alice@Example.com"}))
                .as_deref(),
            Some("Alice@Example.com")
        );
        assert!(s.identifier_values(&json!({})).is_empty());
    }

    #[test]
    fn rejects_a_document_that_is_not_json() {
        assert!(CompiledSchema::compile("x", b"{not json").is_err());
    }

    #[test]
    fn cache_reports_digest_changes() {
        let cache = SchemaCache::default();
        assert!(cache.put(customer()));
        assert!(!cache.put(customer()));
        let other = CompiledSchema::compile("customer", br#"{"type":"object"}"#).unwrap();
        assert!(cache.put(other));
        assert!(cache.get("customer").unwrap().identifier_traits.is_empty());
    }
}
