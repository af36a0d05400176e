//! Finding the Kratos identity an object created when its identifiers cannot: a schema without
//! identifier traits (OIDC-only, or profiles without credentials) gives Kratos nothing unique
//! to refuse a second create with, and nothing to look the first one up by.
//!
//! After a crash between a create and the status write (or a create whose answer was lost), the
//! object has its finalizer and no identity id. For such an object without identifiers, the
//! reconcile looks its uid up in an index of the owner markers of every Kratos identity before
//! it creates. The index is built by one paged list of all identities and kept: an identity this
//! process creates afterwards is in its memory of created ids. It is built again only for an
//! object whose create failed after the index was built (the failed create may have reached
//! Kratos). Building waits for no other reconcile than those that need the index.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use futures::TryStreamExt;

use crate::{
    api::UID_MARKER,
    kratos::{self, KratosClient},
};

/// The uid -> Kratos id index of owner markers, and the creates whose outcome is unknown.
#[derive(Debug)]
pub struct MarkerIndex {
    /// When this process began to reconcile (it became leader): identities created before may
    /// have been created by someone else.
    started: Mutex<Instant>,
    built: tokio::sync::Mutex<Option<Built>>,
    uncertain: Mutex<HashMap<String, Instant>>,
}

#[derive(Debug)]
struct Built {
    at: Instant,
    by_uid: HashMap<String, String>,
}

impl Default for MarkerIndex {
    fn default() -> Self {
        Self {
            started: Mutex::new(Instant::now()),
            built: tokio::sync::Mutex::default(),
            uncertain: Mutex::default(),
        }
    }
}

impl MarkerIndex {
    /// The controllers start (this process became leader): an index built before may miss
    /// identities the previous leader created.
    pub fn begin(&self) {
        if let Ok(mut started) = self.started.lock() {
            *started = Instant::now();
        }
    }

    fn started(&self) -> Instant {
        self.started.lock().map_or_else(|_| Instant::now(), |s| *s)
    }

    /// Records that a create for `uid` failed: it may have reached Kratos, so the next lookup
    /// for `uid` needs an index built after now.
    pub fn create_failed(&self, uid: &str) {
        if let Ok(mut m) = self.uncertain.lock() {
            m.insert(uid.to_string(), Instant::now());
        }
    }

    /// Forgets `uid` (its identity is known, or the object is gone).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.uncertain.lock() {
            m.remove(uid);
        }
    }

    /// The id of the Kratos identity whose marker carries `uid`, from an index built after any
    /// create for `uid` could have happened unseen (this process' start, or its last failed
    /// create). The caller still checks ownership on the identity itself.
    pub async fn find(
        &self,
        kratos: &KratosClient,
        uid: &str,
    ) -> Result<Option<String>, kratos::Error> {
        let since = self
            .uncertain
            .lock()
            .ok()
            .and_then(|m| m.get(uid).copied())
            .unwrap_or_else(|| self.started());
        let mut built = self.built.lock().await;
        if built.as_ref().is_none_or(|b| b.at < since) {
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

    #[test]
    fn a_failed_create_asks_for_an_index_built_after_it() {
        let index = MarkerIndex::default();
        assert!(index.uncertain.lock().unwrap().get("u1").is_none());
        index.create_failed("u1");
        let at = *index.uncertain.lock().unwrap().get("u1").unwrap();
        assert!(at >= index.started());
        index.begin();
        assert!(index.started() >= at, "leadership starts a new era");
        index.forget("u1");
        assert!(index.uncertain.lock().unwrap().get("u1").is_none());
    }
}
