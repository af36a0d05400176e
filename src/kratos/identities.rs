//! The identity operations of [`KratosClient`]: create, read, list, update, patch, delete,
//! batch creates and credential removal (`/admin/identities`).

use std::{borrow::Cow, collections::HashSet};

use futures::{Stream, TryStreamExt};
use reqwest::{Method, StatusCode};
use tracing::debug;

use super::{
    client::KratosClient,
    error::Error,
    models::*,
    pagination::{Page, paged},
    transport::{Request, with_query},
};

impl KratosClient {
    /// `body` as the connected Kratos understands it: fields its release does not know are
    /// left out (asking for its version only when the body has such fields).
    async fn for_server<'b, B: Versioned>(&self, body: &'b B) -> Result<Cow<'b, B>, Error> {
        Ok(if body.has_versioned_fields() {
            Cow::Owned(body.for_server(&self.server_version().await?))
        } else {
            Cow::Borrowed(body)
        })
    }

    /// `POST /admin/identities`. Never retried once the request may have reached Kratos: a
    /// timed-out create may have succeeded, so resolve [`Error::Unavailable`] with
    /// [`KratosClient::find_by_credentials_identifier`] before creating again.
    pub async fn create_identity(&self, body: &CreateIdentityBody) -> Result<Identity, Error> {
        let body = self.for_server(body).await?;
        let request = Request::new(
            "create_identity",
            Method::POST,
            self.transport().admin(&["admin", "identities"])?,
        )
        .json(&*body)?
        .not_idempotent();
        self.transport().call_json(request).await
    }

    /// `GET /admin/identities/{id}`, with the configs of `include_credentials`.
    pub async fn get_identity(
        &self,
        id: &str,
        include_credentials: &[CredentialType],
    ) -> Result<Identity, Error> {
        let query: Vec<_> = include_credentials
            .iter()
            .map(|c| ("include_credential", c.as_str().to_string()))
            .collect();
        let url = with_query(
            self.transport().admin(&["admin", "identities", id])?,
            &query,
        );
        let request = Request::get("get_identity", url).sensitive(!include_credentials.is_empty());
        self.transport().call_json(request).await
    }

    /// `PUT /admin/identities/{id}`: replaces traits and both metadata; see
    /// [`UpdateIdentityBody`].
    pub async fn update_identity(
        &self,
        id: &str,
        body: &UpdateIdentityBody,
    ) -> Result<Identity, Error> {
        let body = self.for_server(body).await?;
        let request = Request::new(
            "update_identity",
            Method::PUT,
            self.transport().admin(&["admin", "identities", id])?,
        )
        .json(&*body)?;
        self.transport().call_json(request).await
    }

    /// `PATCH /admin/identities/{id}` with an RFC 6902 patch. Retried only when every operation
    /// is an `add`/`replace` of a fixed path.
    pub async fn patch_identity(&self, id: &str, ops: &[JsonPatchOp]) -> Result<Identity, Error> {
        let mut request = Request::new(
            "patch_identity",
            Method::PATCH,
            self.transport().admin(&["admin", "identities", id])?,
        )
        .json(&ops)?;
        if ops.is_empty() || !ops.iter().all(JsonPatchOp::is_idempotent) {
            request = request.not_idempotent();
        }
        self.transport().call_json(request).await
    }

    /// `DELETE /admin/identities/{id}`; a missing identity counts as deleted.
    pub async fn delete_identity(&self, id: &str) -> Result<(), Error> {
        let request = Request::new(
            "delete_identity",
            Method::DELETE,
            self.transport().admin(&["admin", "identities", id])?,
        );
        self.transport()
            .call_empty(request, &[StatusCode::NOT_FOUND])
            .await
            .map(drop)
    }

    /// `DELETE /admin/identities/{id}/credentials/{type}`; OIDC needs `identifier`
    /// (`provider:subject`). [`Error::NotFound`] when the identity, the type or the identifier
    /// does not exist; v1.3 refuses password and code with [`Error::Invalid`].
    pub async fn delete_identity_credentials(
        &self,
        id: &str,
        kind: CredentialType,
        identifier: Option<&str>,
    ) -> Result<(), Error> {
        let query: Vec<_> = identifier
            .map(|i| ("identifier", i.to_string()))
            .into_iter()
            .collect();
        let url = with_query(
            self.transport()
                .admin(&["admin", "identities", id, "credentials", kind.as_str()])?,
            &query,
        );
        self.transport()
            .call_empty(
                Request::new("delete_identity_credentials", Method::DELETE, url),
                &[],
            )
            .await
            .map(drop)
    }

    /// `GET /admin/identities` as a stream of identities, following `Link: rel="next"` until the
    /// last page. Page size defaults to 500.
    pub fn list_identities(
        &self,
        params: ListIdentitiesParams,
    ) -> impl Stream<Item = Result<Identity, Error>> + Send + 'static {
        self.list_identities_as("list_identities", params)
    }

    /// One page of `GET /admin/identities` and the next page's token (for sweeps that persist
    /// their position).
    pub async fn list_identities_page(
        &self,
        params: &ListIdentitiesParams,
    ) -> Result<Page<Identity>, Error> {
        self.list_identities_page_as("list_identities", params)
            .await
    }

    fn list_identities_as(
        &self,
        operation: &'static str,
        params: ListIdentitiesParams,
    ) -> impl Stream<Item = Result<Identity, Error>> + Send + 'static {
        let client = self.clone();
        let first = params.page_token.clone();
        paged(first, move |token| {
            let client = client.clone();
            let params = ListIdentitiesParams {
                page_token: token,
                ..params.clone()
            };
            async move { client.list_identities_page_as(operation, &params).await }
        })
    }

    async fn list_identities_page_as(
        &self,
        operation: &'static str,
        params: &ListIdentitiesParams,
    ) -> Result<Page<Identity>, Error> {
        let url = with_query(
            self.transport().admin(&["admin", "identities"])?,
            &params.query(self.page_size()),
        );
        let sensitive = !params.include_credentials.is_empty()
            || params.credentials_identifier.is_some()
            || params.preview_credentials_identifier_similar.is_some();
        self.transport()
            .fetch_page(Request::get(operation, url).sensitive(sensitive))
            .await
    }

    /// The identities whose credential identifier is exactly `identifier` (emails and usernames
    /// compare case-insensitively, `provider:subject` exactly); used to resolve a create whose
    /// outcome is unknown. Credentials are included.
    pub async fn find_by_credentials_identifier(
        &self,
        identifier: &str,
    ) -> Result<Vec<Identity>, Error> {
        let params = ListIdentitiesParams {
            credentials_identifier: Some(identifier.to_string()),
            ..Default::default()
        };
        self.list_identities_as("find_by_credentials_identifier", params)
            .try_collect()
            .await
    }

    /// `PATCH /admin/identities`: creates many identities in one request (at most
    /// [`BATCH_PATCH_MAX_ITEMS`], at most [`BATCH_PATCH_MAX_CLEARTEXT_PASSWORDS`] with cleartext
    /// passwords). Returns one result per item, in request order; items fail on their own
    /// (conflict, invalid traits) while the others are created. Never retried once sent.
    ///
    /// When some item failed, the creates Kratos reports are checked (see
    /// `verify_batch_creates`): an item Kratos claims but did not keep is reported as a transient
    /// [`Error::Unavailable`], so the caller creates it again.
    pub async fn batch_patch_identities(
        &self,
        items: &[BatchPatchItem],
    ) -> Result<Vec<BatchPatchResult>, Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if items.len() > BATCH_PATCH_MAX_ITEMS {
            return Err(Error::Invalid {
                reason: format!(
                    "a batch may carry at most {BATCH_PATCH_MAX_ITEMS} items, not {}",
                    items.len()
                ),
                pointer: None,
            });
        }
        let cleartext = items
            .iter()
            .filter(|i| {
                i.create
                    .as_ref()
                    .is_some_and(|c| c.has_cleartext_password())
            })
            .count();
        if cleartext > BATCH_PATCH_MAX_CLEARTEXT_PASSWORDS {
            return Err(Error::Invalid {
                reason: format!(
                    "a batch may carry at most {BATCH_PATCH_MAX_CLEARTEXT_PASSWORDS} cleartext passwords, not {cleartext}"
                ),
                pointer: None,
            });
        }
        let gated: Cow<'_, [BatchPatchItem]> = if items.iter().any(|i| {
            i.create
                .as_ref()
                .is_some_and(CreateIdentityBody::has_versioned_fields)
        }) {
            let server = self.server_version().await?;
            Cow::Owned(
                items
                    .iter()
                    .map(|i| BatchPatchItem {
                        create: i.create.as_ref().map(|c| c.for_server(&server)),
                        patch_id: i.patch_id.clone(),
                    })
                    .collect(),
            )
        } else {
            Cow::Borrowed(items)
        };
        let request = Request::new(
            "batch_patch_identities",
            Method::PATCH,
            self.transport().admin(&["admin", "identities"])?,
        )
        .json(&BatchPatchRequest { identities: &gated })?
        .not_idempotent();
        let expected = items.len();
        let response: BatchPatchResponse = self.transport().call_json(request).await?;
        if response.identities.len() != expected {
            return Err(Error::Unexpected {
                status: 200,
                body_excerpt: format!(
                    "batch answered {} results for {expected} items",
                    response.identities.len()
                ),
            });
        }
        let mut results: Vec<BatchPatchResult> =
            response.identities.into_iter().map(batch_result).collect();
        if results.iter().any(|r| r.error.is_some()) {
            self.verify_batch_creates(&mut results).await?;
        }
        Ok(results)
    }

    /// Kratos v1.3.1 (seen on sqlite) answers a batch in which some item conflicts with ids for
    /// the other items, yet commits none of them. After a batch with failed items, the reported
    /// creates are therefore looked up (one list request per 500), and those that do not exist
    /// become a transient [`Error::Unavailable`]: creating them again is safe.
    async fn verify_batch_creates(&self, results: &mut [BatchPatchResult]) -> Result<(), Error> {
        let claimed: Vec<String> = results
            .iter()
            .filter(|r| r.is_success())
            .filter_map(|r| r.identity_id.clone())
            .collect();
        let mut existing = HashSet::new();
        for chunk in claimed.chunks(500) {
            let params = ListIdentitiesParams {
                ids: chunk.to_vec(),
                page_size: Some(u32::try_from(chunk.len()).unwrap_or(500)),
                ..Default::default()
            };
            let found: Vec<Identity> = self.list_identities(params).try_collect().await?;
            existing.extend(found.into_iter().map(|i| i.id));
        }
        for result in results.iter_mut().filter(|r| r.is_success()) {
            if result
                .identity_id
                .as_ref()
                .is_some_and(|id| !existing.contains(id))
            {
                debug!(
                    patch_id = result.patch_id.as_deref(),
                    "kratos reported a batch create it did not persist"
                );
                result.action = BatchPatchAction::Error;
                result.error = Some(Error::Unavailable {
                    message: "Kratos reported this item created but did not persist it (another item of the \
                              batch failed); create it again"
                        .into(),
                });
            }
        }
        Ok(())
    }
}

fn batch_result(raw: Option<BatchPatchRawResult>) -> BatchPatchResult {
    let Some(raw) = raw else {
        return BatchPatchResult {
            action: BatchPatchAction::Skipped,
            identity_id: None,
            patch_id: None,
            error: None,
        };
    };
    let action = match raw.action.as_deref() {
        Some("create") => BatchPatchAction::Create,
        Some("error") => BatchPatchAction::Error,
        _ => BatchPatchAction::Other,
    };
    let error = raw.error.as_ref().map(|e| Error::from_generic(0, e));
    let action = if error.is_some() {
        BatchPatchAction::Error
    } else {
        action
    };
    BatchPatchResult {
        action,
        identity_id: raw.identity,
        patch_id: raw.patch_id,
        error,
    }
}
