//! Tenancy: a namespace is a tenant, and its objects reach only the Kratos identities they own.
//!
//! Two halves:
//! - **Ownership** lives in Kratos, in the owner marker of `metadata_admin` (see
//!   [`crate::controller::identity::plan::ownership`]); every call that changes an identity,
//!   touches its sessions, issues recovery for it or deletes it is preceded by a read of that
//!   marker. `status.identityId` is a cache, never proof.
//! - **Opt-ins** are decided by cluster admins on the Namespace object, which tenants usually
//!   cannot edit (as with Pod Security Admission): [`NamespacePolicy`] reads them. Without them,
//!   adoption of unowned identities and recovery by raw Kratos id are refused with reason
//!   [`REASON_FORBIDDEN`]; an identifier-pattern annotation narrows which identifiers the
//!   namespace's Identities may claim. The chart's ValidatingAdmissionPolicies refuse the same
//!   specs at admission with the same words.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};

/// Namespace label that allows RecoveryRequest `spec.identityId` (any identity of the
/// installation) in that namespace.
pub const LABEL_ALLOW_RECOVERY_BY_ID: &str = "kratos-operator.dev/allow-recovery-by-id";
/// Namespace label that allows Identity `adoption: IfUnowned` in that namespace.
pub const LABEL_ALLOW_ADOPTION: &str = "kratos-operator.dev/allow-adoption";
/// Namespace annotation: comma-separated glob patterns (`*`, `?`; case-insensitive) that every
/// identifier of the namespace's Identities must match. Absent: any identifier.
pub const ANNOTATION_IDENTIFIER_PATTERNS: &str = "kratos-operator.dev/identifier-patterns";
/// Condition reason of a spec the namespace's policy does not allow.
pub const REASON_FORBIDDEN: &str = "Forbidden";

/// What the cluster admin allows in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePolicy {
    /// RecoveryRequest `spec.identityId` is allowed.
    pub recovery_by_id: bool,
    /// Identity `adoption: IfUnowned` is allowed.
    pub adoption: bool,
    /// Identifiers must match one of these (lower-cased) patterns; `None`: any identifier.
    pub identifier_patterns: Option<Vec<String>>,
}

impl NamespacePolicy {
    /// The policy when enforcement is off (`--tenancy-enforce=false`): everything is allowed.
    pub fn unrestricted() -> Self {
        Self {
            recovery_by_id: true,
            adoption: true,
            identifier_patterns: None,
        }
    }

    /// Reads the opt-ins from a Namespace's labels and annotations (pure). Only the exact label
    /// value `"true"` opts in.
    pub fn from_metadata(
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Self {
        let opted_in = |key: &str| labels.get(key).is_some_and(|v| v.trim() == "true");
        Self {
            recovery_by_id: opted_in(LABEL_ALLOW_RECOVERY_BY_ID),
            adoption: opted_in(LABEL_ALLOW_ADOPTION),
            identifier_patterns: annotations
                .get(ANNOTATION_IDENTIFIER_PATTERNS)
                .map(|v| parse_patterns(v)),
        }
    }

    /// Whether `adoption: IfUnowned` may be used; the refusal names the label to set.
    pub fn check_adoption(&self) -> Result<(), String> {
        if self.adoption {
            Ok(())
        } else {
            Err(format!(
                "spec.adoption IfUnowned is not allowed in this namespace: a cluster admin must label the Namespace {LABEL_ALLOW_ADOPTION}=true"
            ))
        }
    }

    /// Whether RecoveryRequest `spec.identityId` may be used; the refusal names the label.
    pub fn check_recovery_by_id(&self) -> Result<(), String> {
        if self.recovery_by_id {
            Ok(())
        } else {
            Err(format!(
                "spec.identityId is not allowed in this namespace (use spec.identityRef): a cluster admin must label the Namespace {LABEL_ALLOW_RECOVERY_BY_ID}=true"
            ))
        }
    }

    /// Whether every identifier matches one of the namespace's patterns; the refusal names the
    /// first identifier that does not and the annotation.
    pub fn check_identifiers<'a>(
        &self,
        identifiers: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        let Some(patterns) = &self.identifier_patterns else {
            return Ok(());
        };
        for identifier in identifiers {
            let lower = identifier.to_lowercase();
            if !patterns.iter().any(|p| glob_match(p, &lower)) {
                return Err(format!(
                    "identifier {identifier:?} does not match the patterns this namespace may claim (Namespace annotation {ANNOTATION_IDENTIFIER_PATTERNS}: {:?})",
                    patterns.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Splits the annotation's comma-separated patterns, trimmed and lower-cased; empty entries are
/// dropped (an annotation with none allows no identifier at all).
pub fn parse_patterns(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Glob match of the whole `text`: `*` is any run of characters (also none), `?` is one
/// character, everything else is literal. Callers lower-case both sides.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with backtracking to the last `*`: linear in practice, never
    // exponential, whatever a tenant writes.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// How long a namespace's policy is cached: a cluster admin's label change applies within this.
pub const POLICY_TTL: Duration = Duration::from_secs(5);

/// The namespaces' policies, read from the API server and cached for [`POLICY_TTL`]. Reads of
/// one namespace are single-flight: the reconciles that miss the cache at the same moment (a bulk
/// apply) wait for one read instead of each sending their own.
pub struct Policies {
    enforce: bool,
    cache: Mutex<HashMap<String, (Instant, NamespacePolicy)>>,
    /// One lock per namespace, held while its policy is read.
    reads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Policies {
    /// `enforce: false` allows everything and reads no Namespace (single-team clusters).
    pub fn new(enforce: bool) -> Self {
        Self {
            enforce,
            cache: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the policy is enforced.
    pub fn enforced(&self) -> bool {
        self.enforce
    }

    /// The policy of namespace `ns`. A Namespace that cannot be read is an error (retried with
    /// backoff), never a silent allow.
    pub async fn get(&self, client: &Client, ns: &str) -> Result<NamespacePolicy, kube::Error> {
        if !self.enforce {
            return Ok(NamespacePolicy::unrestricted());
        }
        if let Some(policy) = self.cached(ns) {
            return Ok(policy);
        }
        let read = self
            .reads
            .lock()
            .ok()
            .map(|mut reads| reads.entry(ns.to_string()).or_default().clone());
        // Without the lock (a poisoned map), every caller reads: slower, never wrong.
        let _reading = match &read {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        // Whoever held the lock before us has just cached it.
        if let Some(policy) = self.cached(ns) {
            return Ok(policy);
        }
        let namespace = Api::<Namespace>::all(client.clone()).get(ns).await?;
        let empty = BTreeMap::new();
        let policy = NamespacePolicy::from_metadata(
            namespace.metadata.labels.as_ref().unwrap_or(&empty),
            namespace.metadata.annotations.as_ref().unwrap_or(&empty),
        );
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(ns.to_string(), (Instant::now(), policy.clone()));
        }
        Ok(policy)
    }

    fn cached(&self, ns: &str) -> Option<NamespacePolicy> {
        let cache = self.cache.lock().ok()?;
        let (at, policy) = cache.get(ns)?;
        (at.elapsed() < POLICY_TTL).then(|| policy.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn opt_ins_need_the_exact_label_value_true() {
        let none = NamespacePolicy::from_metadata(&map(&[]), &map(&[]));
        assert!(!none.adoption && !none.recovery_by_id && none.identifier_patterns.is_none());
        let yes = NamespacePolicy::from_metadata(
            &map(&[
                (LABEL_ALLOW_ADOPTION, "true"),
                (LABEL_ALLOW_RECOVERY_BY_ID, "true"),
            ]),
            &map(&[]),
        );
        assert!(yes.adoption && yes.recovery_by_id);
        let other = NamespacePolicy::from_metadata(
            &map(&[
                (LABEL_ALLOW_ADOPTION, "yes"),
                (LABEL_ALLOW_RECOVERY_BY_ID, ""),
            ]),
            &map(&[]),
        );
        assert!(!other.adoption && !other.recovery_by_id);
        let refusal = none.check_adoption().unwrap_err();
        assert!(refusal.contains(LABEL_ALLOW_ADOPTION), "{refusal}");
        let refusal = none.check_recovery_by_id().unwrap_err();
        assert!(refusal.contains(LABEL_ALLOW_RECOVERY_BY_ID), "{refusal}");
        assert!(NamespacePolicy::unrestricted().check_adoption().is_ok());
    }

    #[test]
    fn identifiers_must_match_a_pattern_case_insensitively() {
        let p = NamespacePolicy::from_metadata(
            &map(&[]),
            &map(&[(
                ANNOTATION_IDENTIFIER_PATTERNS,
                " *@Team-A.example.com, svc-?? ,",
            )]),
        );
        assert_eq!(
            p.identifier_patterns.as_deref(),
            Some(&["*@team-a.example.com".to_string(), "svc-??".to_string()][..])
        );
        assert!(p.check_identifiers(["Alice@TEAM-A.example.com"]).is_ok());
        assert!(
            p.check_identifiers(["svc-01", "bob@team-a.example.com"])
                .is_ok()
        );
        let refusal = p
            .check_identifiers(["bob@team-a.example.com", "eve@team-b.example.com"])
            .unwrap_err();
        assert!(refusal.contains("eve@team-b.example.com"), "{refusal}");
        assert!(
            refusal.contains(ANNOTATION_IDENTIFIER_PATTERNS),
            "{refusal}"
        );
        assert!(p.check_identifiers(["svc-001"]).is_err());
        // A suffix is anchored: no match by containment.
        assert!(p.check_identifiers(["x@team-a.example.com.evil"]).is_err());
        // An empty annotation allows nothing.
        let empty = NamespacePolicy::from_metadata(
            &map(&[]),
            &map(&[(ANNOTATION_IDENTIFIER_PATTERNS, " , ")]),
        );
        assert!(empty.check_identifiers(["a@b.c"]).is_err());
        assert!(empty.check_identifiers([]).is_ok());
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("?", "é"));
        assert!(!glob_match("", "a"));
        assert!(glob_match("**a", "a"));
        // Many stars against a long non-matching text stays fast (no exponential backtracking).
        let text = "a".repeat(2000);
        assert!(!glob_match("*a*a*a*a*a*a*a*a*b", &text));
    }
}
