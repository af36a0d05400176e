//! The identity schema operations of [`KratosClient`] (`/schemas`, served by the public API).

use std::collections::HashSet;

use futures::{Stream, TryStreamExt};

use super::{
    client::KratosClient,
    error::{Error, excerpt},
    models::{IdentitySchema, IdentitySchemaEntry},
    pagination::paged,
};

impl KratosClient {
    /// `GET /schemas/{id}` from the public URL, or through the admin port's redirect when no
    /// public URL is configured (at most [`MAX_REDIRECTS`](super::MAX_REDIRECTS) hops, never
    /// from https to http; the token only to the admin URL's origin). The text is kept exactly as
    /// served.
    pub async fn get_identity_schema(&self, id: &str) -> Result<IdentitySchema, Error> {
        let transport = self.transport();
        let request = transport.schema_request("get_identity_schema", &["schemas", id], &[])?;
        transport
            .call_with(&request, |response| {
                let raw = String::from_utf8(response.body).map_err(|_| Error::Unexpected {
                    status: response.status.as_u16(),
                    body_excerpt: "schema is not UTF-8".into(),
                })?;
                let json = serde_json::from_str(&raw).map_err(|e| Error::Unexpected {
                    status: response.status.as_u16(),
                    body_excerpt: format!("schema is not JSON ({e}): {}", excerpt(raw.as_bytes())),
                })?;
                Ok(IdentitySchema { raw, json })
            })
            .await
    }

    /// `GET /schemas` as a stream, following the pages (and redirects, as
    /// [`KratosClient::get_identity_schema`] does). Kratos v1.3.1 pages this list with the same
    /// off-by-one as an identity's sessions (see [`KratosClient::list_identity_sessions`]): its
    /// last page comes twice. A schema already listed is dropped.
    pub fn list_identity_schemas(
        &self,
    ) -> impl Stream<Item = Result<IdentitySchemaEntry, Error>> + Send + 'static {
        let client = self.clone();
        let mut seen = HashSet::new();
        paged(None, move |token| {
            let client = client.clone();
            async move {
                let mut query = vec![("page_size", client.page_size().to_string())];
                query.extend(token.map(|t| ("page_token", t)));
                let request = client.transport().schema_request(
                    "list_identity_schemas",
                    &["schemas"],
                    &query,
                )?;
                client.transport().fetch_page(request).await
            }
        })
        .try_filter(move |entry: &IdentitySchemaEntry| {
            futures::future::ready(seen.insert(entry.id.clone()))
        })
    }
}
