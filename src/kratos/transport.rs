//! The HTTP transport of the Kratos client: the connection (token, CA, timeouts, redirects,
//! the response size cap), building requests, sending them with retries under the rate limit
//! and the in-flight cap, decoding answers and errors, and each call's metrics. The operations
//! (one file per Kratos resource) speak only through [`Transport`], [`Request`],
//! [`with_query`] and [`decode`].

use std::fmt;

use reqwest::{
    Method, StatusCode,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, LINK},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{sync::Semaphore, time::Instant};
use tracing::{Instrument, debug};
use url::Url;

use super::{
    body::{ReadFailure, read_capped},
    config::ClientConfig,
    destination::{Base, Failure, transport_message},
    error::{Error, excerpt},
    metrics::KratosMetrics,
    pagination::{Page, next_page_token},
    redirect::{RefusedHop, no_redirects, not_followed, schema_redirects, tracking_hops},
    retry::{Idempotency, RateLimiter, RetryPolicy},
    token::TokenFile,
};

/// The connection to Kratos, shared by all clones of a client.
pub(crate) struct Transport {
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
}

impl Transport {
    /// Checks the URLs and limits, loads the CA bundle and reads the token file once.
    pub(crate) fn new(config: &ClientConfig) -> Result<Self, Error> {
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
        let http = http_client(config, &certificates, no_redirects())?;
        let http_schemas = http_client(config, &certificates, schema_redirects())?;
        let token = match &config.token_file {
            Some(path) => {
                let token = TokenFile::new(path.clone());
                token.load_sync()?;
                Some(token)
            }
            None => None,
        };
        Ok(Self {
            http,
            http_schemas,
            max_response_bytes: config.max_response_bytes,
            admin_url: config.admin_url.clone(),
            public_url: config.public_url.clone(),
            token,
            limiter: RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst),
            in_flight: Semaphore::new(config.max_in_flight),
            retry: config.retry.clone(),
            metrics: KratosMetrics::default(),
        })
    }

    /// The per-call metrics.
    pub(crate) fn metrics(&self) -> &KratosMetrics {
        &self.metrics
    }

    /// Adds where the transport points (never the token itself) to a `Debug` rendering.
    pub(crate) fn describe(&self, out: &mut fmt::DebugStruct<'_, '_>) {
        out.field("admin_url", &self.admin_url.as_str())
            .field("public_url", &self.public_url.as_ref().map(Url::as_str))
            .field("token_file", &self.token.as_ref().map(|t| &t.path));
    }

    /// `segments` under the admin API's base URL.
    pub(crate) fn admin(&self, segments: &[&str]) -> Result<Url, Error> {
        endpoint(&self.admin_url, segments)
    }

    /// A schema read `op`: a GET of `segments` (and `query`) under the public API's base URL, or
    /// under the admin one when none is configured; it follows the admin port's redirect. The
    /// token goes only to the admin API's origin (on Ory Network that is also the public one).
    pub(crate) fn schema_request(
        &self,
        op: &'static str,
        segments: &[&str],
        query: &[(&'static str, String)],
    ) -> Result<Request, Error> {
        let (base, base_url) = match &self.public_url {
            Some(public) => (Base::Public, public),
            None => (Base::Admin, &self.admin_url),
        };
        let url = with_query(endpoint(base_url, segments)?, query);
        let auth = url.origin() == self.admin_url.origin();
        let mut request = Request::get(op, url).auth(auth).follow_schema_redirects();
        request.base = base;
        Ok(request)
    }

    /// A call answered with JSON: the body decoded as `T`.
    pub(crate) async fn call_json<T: DeserializeOwned>(
        &self,
        request: Request,
    ) -> Result<T, Error> {
        self.call_with(&request, |response| decode(&response, request.sensitive))
            .await
    }

    /// A call whose successful answer `read` turns into the result; a failure of `read` counts
    /// as the call's outcome.
    pub(crate) async fn call_with<T>(
        &self,
        request: &Request,
        read: impl FnOnce(Response) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let write = request.method != Method::GET;
        self.observe(request.op, write, async {
            let response = self.execute(request).await?;
            read(response)
        })
        .await
    }

    /// A call whose body does not matter; `done_statuses` count as success (404 on deletes).
    pub(crate) async fn call_empty(
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

    /// One page of a list: its items and the next page's token from the `Link` header.
    pub(crate) async fn fetch_page<T: DeserializeOwned>(
        &self,
        request: Request,
    ) -> Result<Page<T>, Error> {
        self.call_with(&request, |response| {
            let items = decode(&response, request.sensitive)?;
            let link = response.headers.get(LINK).and_then(|v| v.to_str().ok());
            let total = response
                .headers
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            Ok(Page {
                items,
                next_page_token: next_page_token(link, &request.url),
                total,
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
        self.metrics
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
        let policy = &self.retry;
        let mut retries = 0;
        loop {
            self.limiter.acquire().await;
            let failure = match self.attempt(request, retries + 1).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            // The server asked every caller to wait: honoured whether or not this call tries
            // again (a last attempt that got a 429 must hold back the callers that start now).
            let asked = failure.error.retry_after();
            if let Some(asked) = asked {
                self.limiter.cool_down(asked);
            }
            let retryable = failure.error.is_transient()
                && (request.idempotency == Idempotency::Idempotent
                    || !failure.may_have_been_processed);
            if !retryable || retries >= policy.max_retries || request.once {
                return Err(failure);
            }
            let wait = match asked {
                Some(asked) => match policy.server_wait(asked) {
                    Some(wait) => wait,
                    None => return Err(failure),
                },
                None => policy.backoff(retries + 1),
            };
            retries += 1;
            self.metrics.record_retry(request.op);
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
            &self.http_schemas
        } else {
            &self.http
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
            && let Some(token) = &self.token
        {
            builder = builder.header(
                AUTHORIZATION,
                token.header().await.map_err(AttemptFailure::local)?,
            );
        }
        let _permit = self.in_flight.acquire().await.map_err(|_| {
            AttemptFailure::local(Error::Unavailable {
                message: "the client is shutting down".into(),
            })
        })?;
        self.metrics.record_request(request.op);
        let started = Instant::now();
        let (sent, followed) = tracking_hops(builder.send()).await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                let failure = match RefusedHop::find(&e) {
                    Some(hop) => {
                        AttemptFailure::answered(hop.to_error(&request.method, request.url.path()))
                    }
                    None => {
                        // reqwest's error names the original URL even when a followed hop failed.
                        let reached = followed.as_ref().unwrap_or(&request.url);
                        AttemptFailure::transport(request, reached, e)
                    }
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
        let body = match read_capped(&mut response, self.max_response_bytes).await {
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
                let failure = AttemptFailure::transport(request, &final_url, e);
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
            && let Some(token) = &self.token
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

/// `response`'s body as JSON; a `sensitive` body is withheld from the error.
pub(crate) fn decode<T: DeserializeOwned>(
    response: &Response,
    sensitive: bool,
) -> Result<T, Error> {
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
        .dns_resolver(super::resolve::BoundedResolver::for_connect_timeout(
            config.connect_timeout,
        ))
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

/// `url` with `pairs` appended to its query (none: unchanged).
pub(crate) fn with_query(mut url: Url, pairs: &[(&'static str, String)]) -> Url {
    if !pairs.is_empty() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    url
}

/// One call's request, reusable across attempts.
#[derive(Debug)]
pub(crate) struct Request {
    op: &'static str,
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
    idempotency: Idempotency,
    sensitive: bool,
    auth: bool,
    /// Whether the schema client, which follows the admin port's redirect, sends it.
    follow_schema_redirects: bool,
    /// The configured base URL `url` is under, which errors name.
    base: Base,
    /// Sent once, never retried (a readiness check answers within its caller's timeout).
    once: bool,
}

impl Request {
    /// A call `op` (its metrics label) of `method` to `url` under the admin URL: idempotent, not
    /// sensitive, with the token, following no redirect.
    pub(crate) fn new(op: &'static str, method: Method, url: Url) -> Self {
        Self {
            op,
            method,
            url,
            body: None,
            idempotency: Idempotency::Idempotent,
            sensitive: false,
            auth: true,
            follow_schema_redirects: false,
            base: Base::Admin,
            once: false,
        }
    }

    /// A `GET` of `url`.
    pub(crate) fn get(op: &'static str, url: Url) -> Self {
        Self::new(op, Method::GET, url)
    }

    /// Sends `body` as JSON.
    pub(crate) fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| Error::Config(format!("cannot serialize the {} body: {e}", self.op)))?;
        self.body = Some(bytes);
        Ok(self)
    }

    /// Sent once: no retry, whatever the failure.
    pub(crate) fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// Never retried once it may have reached Kratos.
    pub(crate) fn not_idempotent(mut self) -> Self {
        self.idempotency = Idempotency::NotIdempotent;
        self
    }

    /// Whether the answer carries secrets, which errors must not quote.
    pub(crate) fn sensitive(mut self, sensitive: bool) -> Self {
        self.sensitive = sensitive;
        self
    }

    /// Whether the token is sent.
    pub(crate) fn auth(mut self, auth: bool) -> Self {
        self.auth = auth;
        self
    }

    /// Sends the request with the client that follows schema redirects; only GETs may.
    pub(crate) fn follow_schema_redirects(mut self) -> Self {
        self.follow_schema_redirects = self.method == Method::GET;
        self
    }
}

/// A successful answer, its body read in full.
pub(crate) struct Response {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    headers: HeaderMap,
    /// The body, at most the configured size.
    pub(crate) body: Vec<u8>,
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

    /// A failure in transit of `request` at `reached`: its own URL, or where a followed redirect
    /// led. The message names that place and the setting that changes it.
    fn transport(request: &Request, reached: &Url, error: reqwest::Error) -> Self {
        // A connect error means the request never left; anything later may have reached Kratos.
        let connect = error.is_connect();
        let failure = Failure::of(&error);
        // The URL reqwest attached may hold a query (page tokens): the message builds its own.
        let error = error.without_url();
        let mut causes = error.to_string();
        // The causes (I/O, TLS, HTTP framing) carry no request data.
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            causes.push_str(": ");
            causes.push_str(&inner.to_string());
            cause = inner.source();
        }
        let message = transport_message(
            &request.method,
            &request.url,
            reached,
            request.base,
            failure,
            &causes,
        );
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
    use std::path::PathBuf;

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
        assert!(matches!(Transport::new(&config), Err(Error::Config(_))));
        let mut config = ClientConfig::new(Url::parse("http://127.0.0.1:1").unwrap());
        config.token_file = Some(PathBuf::from("/nonexistent/token"));
        assert!(matches!(Transport::new(&config), Err(Error::Io { .. })));
        let mut config = ClientConfig::new(Url::parse("http://127.0.0.1:1").unwrap());
        config.max_in_flight = 0;
        assert!(matches!(Transport::new(&config), Err(Error::Config(_))));
        let mut config = ClientConfig::new(Url::parse("http://127.0.0.1:1").unwrap());
        config.max_response_bytes = 0;
        assert!(matches!(Transport::new(&config), Err(Error::Config(_))));
    }
}
