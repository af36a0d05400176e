//! Finding the Kratos identity an object created when its identifiers cannot: a schema without
//! identifier traits (OIDC-only, or profiles without credentials) gives Kratos nothing unique
//! to refuse a second create with, and nothing to look the first one up by.
//!
//! After a crash between a create and the status write (or a create whose answer was lost), the
//! object has its finalizer and no identity id. For such an object without identifiers (or whose
//! identifiers may have changed since), the reconcile looks its uid up in an index of the owner
//! markers of every Kratos identity. The index is built by one paged list of all identities and
//! kept: an identity this process creates afterwards is in its memory of created ids. A lookup
//! says how recent the index must be: built after any create for that object whose outcome is
//! unknown could still commit ([`super::pending`]); an older one is built again. Building waits
//! for no other reconcile than those that need the index.

use std::{collections::HashMap, time::Instant};

use futures::TryStreamExt;

use crate::{
    api::UID_MARKER,
    kratos::{self, KratosClient},
};

/// The uid -> Kratos id index of owner markers.
#[derive(Debug, Default)]
pub struct MarkerIndex {
    built: tokio::sync::Mutex<Option<Built>>,
}

#[derive(Debug)]
struct Built {
    at: Instant,
    by_uid: HashMap<String, String>,
}

impl MarkerIndex {
    /// The id of the Kratos identity whose marker carries `uid`, from an index built after
    /// `not_before` (the instant after which no unknown create for `uid` can still commit). The
    /// caller still checks ownership on the identity itself.
    pub async fn find(
        &self,
        kratos: &KratosClient,
        uid: &str,
        not_before: Instant,
    ) -> Result<Option<String>, kratos::Error> {
        let mut built = self.built.lock().await;
        if built.as_ref().is_none_or(|b| b.at < not_before) {
            let at = Instant::now();
            let by_uid = index(kratos).await?;
            tracing::info!(
                identities = by_uid.len(),
                "indexed the owner markers of Kratos identities"
            );
            *built = Some(Built { at, by_uid });
        }
        Ok(built.as_ref().and_then(|b| b.by_uid.get(uid).cloned()))
    }
}

async fn index(kratos: &KratosClient) -> Result<HashMap<String, String>, kratos::Error> {
    let mut by_uid = HashMap::new();
    let mut identities = Box::pin(kratos.list_identities(Default::default()));
    while let Some(identity) = identities.try_next().await? {
        if let Some(uid) = marker_uid(&identity) {
            by_uid.insert(uid, identity.id);
        }
    }
    Ok(by_uid)
}

/// The ids of the Kratos identities whose owner marker carries one of `uids`, by uid: one
/// paged list of all identities.
pub async fn marked_by(
    kratos: &KratosClient,
    uids: &std::collections::HashSet<String>,
) -> Result<HashMap<String, Vec<String>>, kratos::Error> {
    let mut by_uid: HashMap<String, Vec<String>> = HashMap::new();
    let mut identities = Box::pin(kratos.list_identities(Default::default()));
    while let Some(identity) = identities.try_next().await? {
        if let Some(uid) = marker_uid(&identity).filter(|u| uids.contains(u)) {
            by_uid.entry(uid).or_default().push(identity.id);
        }
    }
    Ok(by_uid)
}

/// The uid in an identity's owner marker (pure).
pub fn marker_uid(identity: &kratos::Identity) -> Option<String> {
    identity
        .metadata_admin
        .as_ref()?
        .get(UID_MARKER)?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_marker_uid_is_read_from_metadata_admin_only() {
        let identity = |admin: serde_json::Value| -> kratos::Identity {
            serde_json::from_value(json!({
                "id": "k1", "schema_id": "profile", "traits": { "uid": "not-this" },
                "metadata_admin": admin,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
            }))
            .unwrap()
        };
        assert_eq!(
            marker_uid(&identity(json!({ UID_MARKER: "u1" }))).as_deref(),
            Some("u1")
        );
        assert_eq!(marker_uid(&identity(json!({ "other": "u1" }))), None);
        assert_eq!(marker_uid(&identity(json!(null))), None);
        assert_eq!(marker_uid(&identity(json!({ UID_MARKER: 7 }))), None);
    }
}
