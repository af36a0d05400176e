//! The Kratos admin API client: configuration, transport (token, CA, timeouts, redirects, the
//! response size cap), the retry loop, and one method per IdentityAPI operation.

use std::{borrow::Cow, collections::HashSet, fmt, path::PathBuf, sync::Arc, time::Duration};

use futures::{Stream, TryStreamExt};
use reqwest::{
    Method, StatusCode,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, LINK},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    sync::{OnceCell, Semaphore},
    time::Instant,
};
use tracing::{Instrument, debug};
use url::Url;

use super::{
    body::{DEFAULT_MAX_RESPONSE_BYTES, ReadFailure, read_capped},
    error::{Error, excerpt},
    metrics::KratosMetrics,
    models::*,
    pagination::{DEFAULT_IDENTITY_PAGE_SIZE, Page, next_page_token, paged},
    redirect::{RefusedHop, no_redirects, not_followed, schema_redirects},
    retry::{Idempotency, RateLimiter, RetryPolicy},
    token::TokenFile,
};

/// The page size of identity session lists: the most Kratos returns at once.
const IDENTITY_SESSIONS_PAGE_SIZE: u32 = 1000;

/// How to reach and treat Kratos.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The admin API base URL, e.g. `http://kratos-admin:4434` (a path prefix is kept).
    pub admin_url: Url,
    /// The public API base URL, where self-hosted Kratos serves `/schemas` (the admin port
    /// redirects there, to `serve.public.base_url`, which may not be reachable from the operator).
    /// `None` follows the admin port's redirect.
    pub public_url: Option<Url>,
    /// A file holding the bearer token (Ory Network); re-read whenever it changes.
    pub token_file: Option<PathBuf>,
    /// A PEM bundle of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one attempt may take, from connecting to the end of the response body.
    pub request_timeout: Duration,
    /// Client-side limit of requests per second, shared by all clones (`None`: unlimited).
    pub rate_limit_per_second: Option<f64>,
    /// Requests that may be sent at once before the rate limit applies.
    pub rate_limit_burst: u32,
    /// The most requests in flight at once, shared by all clones.
    pub max_in_flight: usize,
    /// Retries of idempotent calls.
    pub retry: RetryPolicy,
    /// Page size of lists (identities default to 500; Kratos caps sessions at 1000).
    pub page_size: u32,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// The largest response body the client reads, in bytes; a larger answer fails the call
    /// with [`Error::Unexpected`] (not retried). Applies to every response: objects, pages,
    /// schemas and error bodies.
    pub max_response_bytes: usize,
}

impl ClientConfig {
    /// Defaults for `admin_url`: no public URL, no token, no extra CA, 5 s connect and 30 s
    /// request timeouts, no rate limit, 32 requests in flight, 3 retries, pages of 500, and
    /// responses of at most 64 MiB.
    pub fn new(admin_url: Url) -> Self {
        Self {
            admin_url,
            public_url: None,
            token_file: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            rate_limit_per_second: None,
            rate_limit_burst: 10,
            max_in_flight: 32,
            retry: RetryPolicy::default(),
            page_size: DEFAULT_IDENTITY_PAGE_SIZE,
            user_agent: format!("kratos-operator/{}", env!("CARGO_PKG_VERSION")),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// A typed client of the Kratos admin API. Cheap to clone; clones share the connection pool,
/// rate limit, in-flight cap, metrics and detected server version.
#[derive(Clone)]
pub struct KratosClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every call but the schema reads: follows no redirect.
    http: reqwest::Client,
    /// The schema reads: follows the admin port's redirect to the public URL (see
    /// [`super::redirect`]).
    http_schemas: reqwest::Client,
    max_response_bytes: usize,
    admin_url: Url,
    public_url: Option<Url>,
    token: Option<TokenFile>,
    limiter: RateLimiter,
    in_flight: Semaphore,
    retry: RetryPolicy,
    metrics: KratosMetrics,
    version: OnceCell<ServerVersion>,
    page_size: u32,
}

impl fmt::Debug for KratosClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KratosClient")
            .field("admin_url", &self.inner.admin_url.as_str())
            .field(
                "public_url",
                &self.inner.public_url.as_ref().map(Url::as_str),
            )
            .field("token_file", &self.inner.token.as_ref().map(|t| &t.path))
            .finish_non_exhaustive()
    }
}

impl KratosClient {
    /// Builds the client: checks the URLs, loads the CA bundle and reads the token file once.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        check_base_url("admin URL", &config.admin_url)?;
        if let Some(public) = &config.public_url {
            check_base_url("public URL", public)?;
        }
        if config.max_in_flight == 0 {
            return Err(Error::Config("max_in_flight must be at least 1".into()));
        }
        if config.max_response_bytes == 0 {
            return Err(Error::Config(
                "max_response_bytes must be at least 1".into(),
            ));
        }
        let certificates = match &config.ca_file {
            Some(path) => load_ca_bundle(path)?,
            None => Vec::new(),
        };
        let http = http_client(&config, &certificates, no_redirects())?;
        let http_schemas = http_client(&config, &certificates, schema_redirects())?;
        let token = match &config.token_file {
            Some(path) => {
                let token = TokenFile::new(path.clone());
                token.load_sync()?;
                Some(token)
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                http_schemas,
                max_response_bytes: config.max_response_bytes,
                admin_url: config.admin_url,
                public_url: config.public_url,
                token,
                limiter: RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst),
                in_flight: Semaphore::new(config.max_in_flight),
                retry: config.retry,
                metrics: KratosMetrics::default(),
                version: OnceCell::new(),
                page_size: config.page_size.max(1),
            }),
        })
    }

    /// The client's metrics (shared by clones), to read or to register.
    pub fn metrics(&self) -> &KratosMetrics {
        &self.inner.metrics
    }

    // -----------------------------------------------------------------------------------------
    // Version

    /// The server version: `GET /admin/version` (self-hosted), or when that is missing, a
    /// feature probe (v25+ refuses a malformed `organization_id` filter, v1.x ignores it).
    /// Detected once and cached; errors are not cached.
    pub async fn server_version(&self) -> Result<ServerVersion, Error> {
        self.inner
            .version
            .get_or_try_init(|| self.detect_version())
            .await
            .cloned()
    }

    async fn detect_version(&self) -> Result<ServerVersion, Error> {
        let request = Request::get("server_version", self.admin(&["admin", "version"])?);
        match self.call_json::<VersionResponse>(request).await {
            Ok(reported) => {
                if let Some(version) = ServerVersion::parse(&reported.version) {
                    return Ok(version);
                }
            }
            Err(Error::NotFound { .. } | Error::Unexpected { .. } | Error::Unauthorized { .. }) => {
            }
            Err(other) => return Err(other),
        }
        let url = with_query(
            self.admin(&["admin", "identities"])?,
            &[
                ("page_size", "1".into()),
                ("organization_id", "not-a-uuid".into()),
            ],
        );
        match self
            .call_empty(Request::get("server_version_probe", url), &[])
            .await
        {
            Ok(_) => Ok(ServerVersion {
                raw: "probe:v1.x".into(),
                major: 1,
                minor: 3,
                patch: 0,
            }),
            Err(Error::Invalid { .. }) => Ok(ServerVersion {
                raw: "probe:v25+".into(),
                major: 25,
                minor: 4,
                patch: 0,
            }),
            Err(other) => Err(other),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Identities

    /// `POST /admin/identities`. Never retried once the request may have reached Kratos: a
    /// timed-out create may have succeeded, so resolve [`Error::Unavailable`] with
    /// [`KratosClient::find_by_credentials_identifier`] before creating again.
    pub async fn create_identity(&self, body: &CreateIdentityBody) -> Result<Identity, Error> {
        let body = if body.has_versioned_fields() {
            Cow::Owned(body.for_server(&self.server_version().await?))
        } else {
            Cow::Borrowed(body)
        };
        let request = Request::new(
            "create_identity",
            Method::POST,
            self.admin(&["admin", "identities"])?,
        )
        .json(&*body)?
        .not_idempotent();
        self.call_json(request).await
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
        let url = with_query(self.admin(&["admin", "identities", id])?, &query);
        let request = Request::get("get_identity", url).sensitive(!include_credentials.is_empty());
        self.call_json(request).await
    }

    /// `PUT /admin/identities/{id}`: replaces traits and both metadata; see
    /// [`UpdateIdentityBody`].
    pub async fn update_identity(
        &self,
        id: &str,
        body: &UpdateIdentityBody,
    ) -> Result<Identity, Error> {
        let body = if body.has_versioned_fields() {
            Cow::Owned(body.for_server(&self.server_version().await?))
        } else {
            Cow::Borrowed(body)
        };
        let request = Request::new(
            "update_identity",
            Method::PUT,
            self.admin(&["admin", "identities", id])?,
        )
        .json(&*body)?;
        self.call_json(request).await
    }

    /// `PATCH /admin/identities/{id}` with an RFC 6902 patch. Retried only when every operation
    /// is an `add`/`replace` of a fixed path.
    pub async fn patch_identity(&self, id: &str, ops: &[JsonPatchOp]) -> Result<Identity, Error> {
        let mut request = Request::new(
            "patch_identity",
            Method::PATCH,
            self.admin(&["admin", "identities", id])?,
        )
        .json(&ops)?;
        if ops.is_empty() || !ops.iter().all(JsonPatchOp::is_idempotent) {
            request = request.not_idempotent();
        }
        self.call_json(request).await
    }

    /// `DELETE /admin/identities/{id}`; a missing identity counts as deleted.
    pub async fn delete_identity(&self, id: &str) -> Result<(), Error> {
        let request = Request::new(
            "delete_identity",
            Method::DELETE,
            self.admin(&["admin", "identities", id])?,
        );
        self.call_empty(request, &[StatusCode::NOT_FOUND])
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
            self.admin(&["admin", "identities", id, "credentials", kind.as_str()])?,
            &query,
        );
        self.call_empty(
            Request::new("delete_identity_credentials", Method::DELETE, url),
            &[],
        )
        .await
        .map(drop)
    }

    /// `DELETE /admin/identities/{id}/sessions`: deletes all of them; none (404) counts as done.
    pub async fn delete_identity_sessions(&self, id: &str) -> Result<(), Error> {
        let url = self.admin(&["admin", "identities", id, "sessions"])?;
        self.call_empty(
            Request::new("delete_identity_sessions", Method::DELETE, url),
            &[StatusCode::NOT_FOUND],
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
            self.admin(&["admin", "identities"])?,
            &params.query(self.inner.page_size),
        );
        let sensitive = !params.include_credentials.is_empty()
            || params.credentials_identifier.is_some()
            || params.preview_credentials_identifier_similar.is_some();
        self.fetch_page(Request::get(operation, url).sensitive(sensitive))
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
            self.admin(&["admin", "identities"])?,
        )
        .json(&BatchPatchRequest { identities: &gated })?
        .not_idempotent();
        let expected = items.len();
        let response: BatchPatchResponse = self.call_json(request).await?;
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

    // -----------------------------------------------------------------------------------------
    // Schemas

    /// `GET /schemas/{id}` from the public URL, or through the admin port's redirect when no
    /// public URL is configured (at most [`MAX_REDIRECTS`](super::MAX_REDIRECTS) hops, never
    /// from https to http; the token only to the admin URL's origin). The text is kept exactly as
    /// served.
    pub async fn get_identity_schema(&self, id: &str) -> Result<IdentitySchema, Error> {
        let request = Request::get("get_identity_schema", self.schemas_url(&["schemas", id])?);
        let auth = self.sends_token_to(&request.url);
        let request = request.auth(auth).follow_schema_redirects();
        self.observe(request.op, false, async {
            let response = self.execute(&request).await?;
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
                let mut query = vec![("page_size", client.inner.page_size.to_string())];
                query.extend(token.map(|t| ("page_token", t)));
                let url = with_query(client.schemas_url(&["schemas"])?, &query);
                let auth = client.sends_token_to(&url);
                let request = Request::get("list_identity_schemas", url)
                    .auth(auth)
                    .follow_schema_redirects();
                client.fetch_page(request).await
            }
        })
        .try_filter(move |entry: &IdentitySchemaEntry| {
            futures::future::ready(seen.insert(entry.id.clone()))
        })
    }

    // -----------------------------------------------------------------------------------------
    // Recovery

    /// `POST /admin/recovery/link[?return_to=]`: a new recovery link (earlier ones stay valid
    /// until they expire). An unknown identity gives [`Error::Invalid`] in v1.3; a disabled link
    /// method gives [`Error::NotFound`].
    pub async fn create_recovery_link(
        &self,
        body: &CreateRecoveryLinkBody,
        return_to: Option<&str>,
    ) -> Result<RecoveryLink, Error> {
        let query: Vec<_> = return_to
            .map(|r| ("return_to", r.to_string()))
            .into_iter()
            .collect();
        let url = with_query(self.admin(&["admin", "recovery", "link"])?, &query);
        let request = Request::new("create_recovery_link", Method::POST, url)
            .json(body)?
            .not_idempotent()
            .sensitive(true);
        self.call_json(request).await
    }

    /// `POST /admin/recovery/code`: a new recovery code and its flow's link. An unknown identity
    /// gives [`Error::NotFound`].
    pub async fn create_recovery_code(
        &self,
        body: &CreateRecoveryCodeBody,
    ) -> Result<RecoveryCode, Error> {
        let url = self.admin(&["admin", "recovery", "code"])?;
        let request = Request::new("create_recovery_code", Method::POST, url)
            .json(body)?
            .not_idempotent()
            .sensitive(true);
        self.call_json(request).await
    }

    // -----------------------------------------------------------------------------------------
    // Sessions

    /// `GET /admin/sessions/{id}`; nothing is expanded unless asked.
    pub async fn get_session(&self, id: &str, expand: &[SessionExpand]) -> Result<Session, Error> {
        let query: Vec<_> = expand
            .iter()
            .map(|e| ("expand", e.as_str().to_string()))
            .collect();
        let url = with_query(self.admin(&["admin", "sessions", id])?, &query);
        self.call_json(Request::get("get_session", url)).await
    }

    /// `GET /admin/sessions` as a stream (newest first), all or only (in)active ones.
    pub fn list_sessions(
        &self,
        active: Option<bool>,
        expand: &[SessionExpand],
    ) -> impl Stream<Item = Result<Session, Error>> + Send + 'static {
        let client = self.clone();
        let expand = expand.to_vec();
        paged(None, move |token| {
            let client = client.clone();
            let expand = expand.clone();
            async move {
                let mut query = vec![("page_size", client.inner.page_size.to_string())];
                query.extend(active.map(|a| ("active", a.to_string())));
                query.extend(expand.iter().map(|e| ("expand", e.as_str().to_string())));
                query.extend(token.map(|t| ("page_token", t)));
                let url = with_query(client.admin(&["admin", "sessions"])?, &query);
                client.fetch_page(Request::get("list_sessions", url)).await
            }
        })
    }

    /// `GET /admin/identities/{id}/sessions`, all pages (identity and devices expanded).
    ///
    /// Kratos v1.3.1 pages this list wrongly: its offset pagination treats the 0-based page of
    /// its own `next` links as 1-based (page 1 repeats page 0, the last page is never linked) and
    /// answers offsets past the end with the first page again. The client therefore asks for
    /// the largest page Kratos allows (1000), drops repeated sessions and stops at the first page
    /// that brings nothing new.
    pub async fn list_identity_sessions(
        &self,
        identity_id: &str,
        active: Option<bool>,
    ) -> Result<Vec<Session>, Error> {
        let base = self.admin(&["admin", "identities", identity_id, "sessions"])?;
        let mut sessions = Vec::new();
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("page_size", IDENTITY_SESSIONS_PAGE_SIZE.to_string())];
            query.extend(active.map(|a| ("active", a.to_string())));
            query.extend(token.take().map(|t| ("page_token", t)));
            let request = Request::get("list_identity_sessions", with_query(base.clone(), &query));
            let page = self.fetch_page::<Session>(request).await?;
            let before = sessions.len();
            sessions.extend(page.items.into_iter().filter(|s| seen.insert(s.id.clone())));
            match page.next_page_token {
                Some(next) if sessions.len() > before => token = Some(next),
                _ => return Ok(sessions),
            }
        }
    }

    /// `DELETE /admin/sessions/{id}`: revokes it. [`Error::NotFound`] when it does not exist.
    pub async fn disable_session(&self, id: &str) -> Result<(), Error> {
        let url = self.admin(&["admin", "sessions", id])?;
        self.call_empty(Request::new("disable_session", Method::DELETE, url), &[])
            .await
            .map(drop)
    }

    /// `PATCH /admin/sessions/{id}/extend`: the extended session (200), or `None` when the
    /// server answers 204 (`faster_session_extend`). [`Error::NotFound`] when it does not exist
    /// or was extended too recently.
    pub async fn extend_session(&self, id: &str) -> Result<Option<Session>, Error> {
        let url = self.admin(&["admin", "sessions", id, "extend"])?;
        let request = Request::new("extend_session", Method::PATCH, url);
        self.observe(request.op, true, async {
            let response = self.execute(&request).await?;
            if response.status == StatusCode::NO_CONTENT || response.body.is_empty() {
                return Ok(None);
            }
            decode(&response, false).map(Some)
        })
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Plumbing

    fn admin(&self, segments: &[&str]) -> Result<Url, Error> {
        endpoint(&self.inner.admin_url, segments)
    }

    fn schemas_url(&self, segments: &[&str]) -> Result<Url, Error> {
        endpoint(
            self.inner
                .public_url
                .as_ref()
                .unwrap_or(&self.inner.admin_url),
            segments,
        )
    }

    /// The token goes only to the admin API's origin (on Ory Network that is also the public one).
    fn sends_token_to(&self, url: &Url) -> bool {
        url.origin() == self.inner.admin_url.origin()
    }

    async fn call_json<T: DeserializeOwned>(&self, request: Request) -> Result<T, Error> {
        let write = request.method != Method::GET;
        self.observe(request.op, write, async {
            let response = self.execute(&request).await?;
            decode(&response, request.sensitive)
        })
        .await
    }

    /// A call whose body does not matter; `done_statuses` count as success (404 on deletes).
    async fn call_empty(
        &self,
        request: Request,
        done_statuses: &[StatusCode],
    ) -> Result<Option<Response>, Error> {
        let write = request.method != Method::GET;
        self.observe(request.op, write, async {
            match self.execute(&request).await {
                Ok(response) => Ok(Some(response)),
                Err(AttemptFailure {
                    status: Some(status),
                    ..
                }) if done_statuses.contains(&status) => Ok(None),
                Err(failure) => Err(failure.error),
            }
        })
        .await
    }

    async fn fetch_page<T: DeserializeOwned>(&self, request: Request) -> Result<Page<T>, Error> {
        self.observe(request.op, false, async {
            let response = self.execute(&request).await?;
            let items = decode(&response, request.sensitive)?;
            let link = response.headers.get(LINK).and_then(|v| v.to_str().ok());
            Ok(Page {
                items,
                next_page_token: next_page_token(link, &request.url),
            })
        })
        .await
    }

    /// Records the call's metrics and a debug event around `work`, inside a debug span.
    async fn observe<T>(
        &self,
        operation: &'static str,
        write: bool,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let span = tracing::debug_span!("kratos_call", operation);
        let started = Instant::now();
        let result = work.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "success",
            Err(error) => error.reason_label(),
        };
        self.inner
            .metrics
            .record_call(operation, write, outcome, elapsed.as_secs_f64());
        span.in_scope(|| {
            debug!(
                outcome,
                duration_ms = elapsed.as_millis() as u64,
                "kratos call finished"
            )
        });
        result
    }

    /// Sends `request` until it succeeds, fails for good, or may not be retried.
    async fn execute(&self, request: &Request) -> Result<Response, AttemptFailure> {
        let policy = &self.inner.retry;
        let mut retries = 0;
        loop {
            self.inner.limiter.acquire().await;
            let failure = match self.attempt(request, retries + 1).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            let retryable = failure.error.is_transient()
                && (request.idempotency == Idempotency::Idempotent
                    || !failure.may_have_been_processed);
            if !retryable || retries >= policy.max_retries {
                return Err(failure);
            }
            let wait = match failure.error.retry_after() {
                Some(asked) => {
                    self.inner.limiter.cool_down(asked);
                    match policy.server_wait(asked) {
                        Some(wait) => wait,
                        None => return Err(failure),
                    }
                }
                None => policy.backoff(retries + 1),
            };
            retries += 1;
            self.inner.metrics.record_retry(request.op);
            debug!(
                retry = retries,
                wait_ms = wait.as_millis() as u64,
                reason = failure.error.reason_label(),
                "retrying kratos call"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One HTTP exchange.
    async fn attempt(&self, request: &Request, attempt: u32) -> Result<Response, AttemptFailure> {
        let http = if request.follow_schema_redirects {
            &self.inner.http_schemas
        } else {
            &self.inner.http
        };
        let mut builder = http
            .request(request.method.clone(), request.url.clone())
            .header(ACCEPT, "application/json");
        if let Some(body) = &request.body {
            builder = builder
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if request.auth
            && let Some(token) = &self.inner.token
        {
            builder = builder.header(
                AUTHORIZATION,
                token.header().await.map_err(AttemptFailure::local)?,
            );
        }
        let _permit = self.inner.in_flight.acquire().await.map_err(|_| {
            AttemptFailure::local(Error::Unavailable {
                message: "the client is shutting down".into(),
            })
        })?;
        self.inner.metrics.record_request(request.op);
        let started = Instant::now();
        let sent = builder.send().await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                let failure = match RefusedHop::find(&e) {
                    Some(hop) => {
                        AttemptFailure::answered(hop.to_error(&request.method, request.url.path()))
                    }
                    None => AttemptFailure::transport(&request.method, &request.url, e),
                };
                debug!(method = %request.method, path = request.url.path(), attempt, elapsed_ms = started.elapsed().as_millis() as u64, error = %failure.error, "kratos request failed");
                return Err(failure);
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let final_url = response.url().clone();
        if status.is_redirection() {
            let failure = AttemptFailure::answered(not_followed(
                &request.method,
                request.url.path(),
                status,
                &final_url,
                &headers,
                request.follow_schema_redirects,
            ));
            debug!(method = %request.method, path = request.url.path(), attempt, status = status.as_u16(), error = %failure.error, "kratos redirect refused");
            return Err(failure);
        }
        let body = match read_capped(&mut response, self.inner.max_response_bytes).await {
            Ok(body) => body,
            Err(ReadFailure::TooLarge(too_large)) => {
                let failure = AttemptFailure::answered(Error::Unexpected {
                    status: status.as_u16(),
                    body_excerpt: format!("{} {}: {too_large}", request.method, request.url.path()),
                });
                debug!(method = %request.method, path = request.url.path(), attempt, status = status.as_u16(), error = %failure.error, "kratos response too large");
                return Err(failure);
            }
            Err(ReadFailure::Transport(e)) => {
                let failure = AttemptFailure::transport(&request.method, &request.url, e);
                debug!(method = %request.method, path = request.url.path(), attempt, status = status.as_u16(), error = %failure.error, "kratos response body failed");
                return Err(failure);
            }
        };
        debug!(
            method = %request.method,
            path = final_url.path(),
            status = status.as_u16(),
            attempt,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "kratos request"
        );
        if status.is_success() {
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
        if status == StatusCode::UNAUTHORIZED
            && let Some(token) = &self.inner.token
        {
            token.invalidate();
        }
        let error = Error::from_response(status.as_u16(), &headers, &body, request.sensitive);
        // A 429 was turned away before any work; a transient database conflict rolled back.
        let may_have_been_processed = status != StatusCode::TOO_MANY_REQUESTS
            && !(status == StatusCode::BAD_REQUEST && error.is_transient());
        Err(AttemptFailure {
            error,
            status: Some(status),
            may_have_been_processed,
        })
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

fn decode<T: DeserializeOwned>(response: &Response, sensitive: bool) -> Result<T, Error> {
    serde_json::from_slice(&response.body).map_err(|e| Error::Unexpected {
        status: response.status.as_u16(),
        body_excerpt: if sensitive {
            format!("response is not the expected JSON ({:?} error at line {} column {}); body withheld", e.classify(), e.line(), e.column())
        } else {
            format!("response is not the expected JSON ({e}): {}", excerpt(&response.body))
        },
    })
}

fn check_base_url(what: &str, url: &Url) -> Result<(), Error> {
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host().is_none() {
        return Err(Error::Config(format!(
            "the Kratos {what} must be an http(s) URL, not {url}"
        )));
    }
    Ok(())
}

/// The certificates of a PEM bundle; an unreadable file, a bad bundle or an empty one is an
/// error.
fn load_ca_bundle(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, Error> {
    let pem = std::fs::read(path).map_err(|source| Error::Io {
        context: format!("reading CA bundle {}", path.display()),
        source,
    })?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::Config(format!("CA bundle {}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(Error::Config(format!(
            "CA bundle {} holds no certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

/// An HTTP client with the configured timeouts, user agent and extra CA certificates, and the
/// given redirect policy.
fn http_client(
    config: &ClientConfig,
    certificates: &[reqwest::Certificate],
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .user_agent(config.user_agent.clone())
        .redirect(redirects);
    for certificate in certificates {
        builder = builder.add_root_certificate(certificate.clone());
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))
}

/// `base` with `segments` appended to its path (each percent-encoded, so ids cannot escape).
fn endpoint(base: &Url, segments: &[&str]) -> Result<Url, Error> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| Error::Config(format!("{base} cannot be a base URL")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

fn with_query(mut url: Url, pairs: &[(&'static str, String)]) -> Url {
    if !pairs.is_empty() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    url
}

/// One call's request, reusable across attempts.
#[derive(Debug)]
struct Request {
    op: &'static str,
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
    idempotency: Idempotency,
    sensitive: bool,
    auth: bool,
    /// Whether the schema client, which follows the admin port's redirect, sends it.
    follow_schema_redirects: bool,
}

impl Request {
    fn new(op: &'static str, method: Method, url: Url) -> Self {
        Self {
            op,
            method,
            url,
            body: None,
            idempotency: Idempotency::Idempotent,
            sensitive: false,
            auth: true,
            follow_schema_redirects: false,
        }
    }

    fn get(op: &'static str, url: Url) -> Self {
        Self::new(op, Method::GET, url)
    }

    fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| Error::Config(format!("cannot serialize the {} body: {e}", self.op)))?;
        self.body = Some(bytes);
        Ok(self)
    }

    fn not_idempotent(mut self) -> Self {
        self.idempotency = Idempotency::NotIdempotent;
        self
    }

    fn sensitive(mut self, sensitive: bool) -> Self {
        self.sensitive = sensitive;
        self
    }

    fn auth(mut self, auth: bool) -> Self {
        self.auth = auth;
        self
    }

    /// Sends the request with the client that follows schema redirects; only GETs may.
    fn follow_schema_redirects(mut self) -> Self {
        self.follow_schema_redirects = self.method == Method::GET;
        self
    }
}

struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Why an attempt failed, and whether Kratos may have acted on it.
struct AttemptFailure {
    error: Error,
    status: Option<StatusCode>,
    may_have_been_processed: bool,
}

impl AttemptFailure {
    /// A failure of an answer Kratos (or something in between) gave: a refused redirect, a body
    /// over the cap. Never retried: none of these errors is transient.
    fn answered(error: Error) -> Self {
        Self {
            error,
            status: None,
            may_have_been_processed: true,
        }
    }

    /// A failure before anything was sent (token file, shutdown).
    fn local(error: Error) -> Self {
        Self {
            error,
            status: None,
            may_have_been_processed: false,
        }
    }

    fn transport(method: &Method, url: &Url, error: reqwest::Error) -> Self {
        // A connect error means the request never left; anything later may have reached Kratos.
        let connect = error.is_connect();
        let what = if error.is_timeout() {
            "timed out"
        } else if connect {
            "could not connect"
        } else {
            "failed"
        };
        let error = error.without_url();
        let mut message = format!("{method} {} {what}: {error}", url.path());
        // The causes (I/O, TLS, HTTP framing) carry no request data.
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            cause = inner.source();
        }
        Self {
            error: Error::Unavailable { message },
            status: None,
            may_have_been_processed: !connect,
        }
    }
}

impl From<AttemptFailure> for Error {
    fn from(failure: AttemptFailure) -> Self {
        failure.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_prefixes_and_encode_segments() {
        let base = Url::parse("https://kratos.example/prefix/").unwrap();
        assert_eq!(
            endpoint(&base, &["admin", "identities"]).unwrap().as_str(),
            "https://kratos.example/prefix/admin/identities"
        );
        let base = Url::parse("http://127.0.0.1:4434").unwrap();
        assert_eq!(
            endpoint(&base, &["admin", "identities", "../sessions?x=1"])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:4434/admin/identities/..%2Fsessions%3Fx=1"
        );
        let url = with_query(endpoint(&base, &["schemas"]).unwrap(), &[]);
        assert_eq!(url.as_str(), "http://127.0.0.1:4434/schemas");
        let url = with_query(url, &[("page_token", "a b&c".into())]);
        assert_eq!(url.query(), Some("page_token=a+b%26c"));
    }

    #[test]
    fn bad_configuration_is_refused() {
        let config = ClientConfig::new(Url::parse("unix:/tmp/socket").unwrap());
        assert!(matches!(KratosClient::new(config), Err(Error::Config(_))));
        let mut config = ClientConfig::new(Url::parse("http://127.0.0.1:1").unwrap());
        config.token_file = Some(PathBuf::from("/nonexistent/token"));
        assert!(matches!(KratosClient::new(config), Err(Error::Io { .. })));
        let mut config = ClientConfig::new(Url::parse("http://127.0.0.1:1").unwrap());
        config.max_in_flight = 0;
        assert!(matches!(KratosClient::new(config), Err(Error::Config(_))));
        let mut config = ClientConfig::new(Url::parse("http://127.0.0.1:1").unwrap());
        config.max_response_bytes = 0;
        assert!(matches!(KratosClient::new(config), Err(Error::Config(_))));
    }
}
