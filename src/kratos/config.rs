//! How to reach and treat Kratos: the settings the client is built from.

use std::{path::PathBuf, time::Duration};

use url::Url;

use super::{
    body::DEFAULT_MAX_RESPONSE_BYTES, pagination::DEFAULT_IDENTITY_PAGE_SIZE, retry::RetryPolicy,
};

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
    /// with [`Error::Unexpected`](super::error::Error::Unexpected) (not retried). Applies to
    /// every response: objects, pages, schemas and error bodies.
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
