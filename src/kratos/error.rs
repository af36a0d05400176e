//! The one error type of the Kratos client, built from the HTTP status and Kratos' herodot
//! error body (`{"error": {"code", "status", "reason", "message", ...}}`).
//!
//! Kratos puts the actionable detail into `reason`; `message` is mostly the generic text of the
//! status code. No `error.id` is set by the admin endpoints, so classification keys on
//! status code + reason only.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;

/// The Kratos text of a database serialization failure (CockroachDB, Ory Network). Kratos
/// answers it with 400, but it is transient: the same request succeeds when retried.
const SERIALIZATION_FAILURE: &str = "Unable to serialize access due to a concurrent update";

/// How many characters of an unexpected response body an error keeps.
const EXCERPT_CHARS: usize = 256;

/// An error of a Kratos admin API call.
///
/// None of the variants ever carries a password, hash, token, recovery link or code: bodies of
/// responses that may contain secrets are withheld from [`Error::Unexpected`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 404: the identity, session, schema or credential does not exist (or the endpoint is
    /// disabled, as the recovery endpoints are when their method is off).
    #[error("not found: {message}")]
    NotFound {
        /// Kratos' reason, or its message when there is no reason.
        message: String,
    },
    /// 409: a unique identifier or address is taken by another identity.
    #[error("conflict: {reason}")]
    Conflict {
        /// Kratos' reason, or its message when there is no reason.
        reason: String,
    },
    /// 400: the request was refused; retrying it unchanged fails again.
    #[error("invalid request: {reason}")]
    Invalid {
        /// Kratos' reason (for schema violations `I[#/traits/x] S[...] message`), or its message.
        reason: String,
        /// The JSON pointer into the identity that Kratos blamed (`/traits/x`), when it named one.
        pointer: Option<String>,
    },
    /// 429: Kratos (Ory Network) rate-limited the call.
    #[error("rate limited by Kratos{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited {
        /// How long the server asked to wait (`x-ratelimit-reset` or `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// 401 or 403: the bearer token is missing, wrong or lacks the permission.
    #[error("unauthorized ({status}): {message}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// Kratos' reason or message.
        message: String,
    },
    /// Kratos could not be reached, timed out, answered 5xx, or hit a transient database
    /// conflict. Retrying later may succeed.
    #[error("Kratos unavailable: {message}")]
    Unavailable {
        /// What went wrong (no bodies of the request).
        message: String,
    },
    /// Any other answer: an unexpected status, a body that does not parse, a redirect the client
    /// does not follow, or a body larger than `max_response_bytes`. Not transient: the call is not
    /// retried.
    #[error("unexpected response from Kratos (status {status}): {body_excerpt}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// A short excerpt of the body, or why it is withheld.
        body_excerpt: String,
    },
    /// The client configuration is unusable (bad URL, CA bundle, token file content).
    #[error("invalid Kratos client configuration: {0}")]
    Config(String),
    /// A local file (token, CA bundle) could not be read.
    #[error("{context}: {source}")]
    Io {
        /// Which file, for what.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the same call may succeed later without any change: rate limits, outages,
    /// timeouts, 5xx and transient database conflicts.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Unavailable { .. })
    }

    /// A static, low-cardinality label of the error class, for metrics and conditions.
    pub fn reason_label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::Invalid { .. } => "invalid",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Unavailable { .. } => "unavailable",
            Self::Unexpected { .. } => "unexpected",
            Self::Config(_) => "config",
            Self::Io { .. } => "io",
        }
    }

    /// How long the server asked to wait before the next call, if it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// Whether this is a 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Whether this is a 409.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// Builds the error of a non-success response. `sensitive` withholds the body from
    /// [`Error::Unexpected`] (responses that carry recovery links or codes).
    pub(crate) fn from_response(
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        sensitive: bool,
    ) -> Self {
        if status == 429 {
            return Self::RateLimited {
                retry_after: retry_after_from_headers(headers),
            };
        }
        match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(envelope) => Self::from_generic(status, &envelope.error),
            Err(_) if sensitive => classify(status, None, withheld()),
            Err(_) => classify(status, Some(excerpt(body)), excerpt(body)),
        }
    }

    /// Builds the error of a herodot error object (a failed response, or one batch item).
    pub(crate) fn from_generic(status: u16, generic: &GenericError) -> Self {
        let status = if status == 0 {
            generic.code.unwrap_or(0)
        } else {
            status
        };
        let detail = generic.detail();
        classify(status, Some(detail.clone()), detail)
    }
}

fn classify(status: u16, detail: Option<String>, excerpt: String) -> Error {
    let text = detail.clone().unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        400 if text.contains(SERIALIZATION_FAILURE) => Error::Unavailable {
            message: format!("transient database conflict: {text}"),
        },
        400 | 422 => {
            let pointer = parse_instance_pointer(&text);
            Error::Invalid {
                reason: text,
                pointer,
            }
        }
        401 | 403 => Error::Unauthorized {
            status,
            message: text,
        },
        404 => Error::NotFound { message: text },
        409 => Error::Conflict { reason: text },
        429 => Error::RateLimited { retry_after: None },
        500..=599 => Error::Unavailable {
            message: format!("HTTP {status}: {text}"),
        },
        _ => Error::Unexpected {
            status,
            body_excerpt: excerpt,
        },
    }
}

/// The herodot envelope of every Kratos error response.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorEnvelope {
    pub(crate) error: GenericError,
}

/// A herodot error object, as Kratos serializes it (all fields optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct GenericError {
    #[serde(default)]
    pub(crate) code: Option<u16>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
}

impl GenericError {
    /// The actionable text: the reason, plus the message when that says more than the generic
    /// text of its status code (as for JSON Patch and decode errors); else the message.
    fn detail(&self) -> String {
        let reason = self
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty());
        let message = self
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        match (reason, message) {
            (Some(r), Some(m)) if m != r && !GENERIC_MESSAGES.contains(&m) => format!("{r}: {m}"),
            (Some(r), _) => r.to_string(),
            (None, Some(m)) => m.to_string(),
            (None, None) => String::from("(no reason given)"),
        }
    }
}

/// herodot's and sqlcon's fixed texts per status code, which add nothing to a reason.
const GENERIC_MESSAGES: &[&str] = &[
    "The request was malformed or contained invalid parameters",
    "The requested resource could not be found",
    "Unable to locate the resource",
    "The resource could not be created due to a conflict",
    "Unable to insert or update resource because a resource with that value exists already",
    "The request could not be authorized",
    "The requested action was forbidden",
    "An internal server error occurred, please contact the system administrator",
];

/// Parses the instance pointer out of a Kratos schema-validation reason such as
/// `I[#/traits/bar] S[#/properties/traits/properties/bar/type] expected string, but got number`
/// into `/traits/bar`. With several causes (one per line), the first specific one wins: a cause
/// at the document root (`I[#]`) is only the wrapper "validation failed" unless nothing else is
/// named. Returns `None` when the reason names no instance.
pub fn parse_instance_pointer(reason: &str) -> Option<String> {
    let mut root = None;
    let mut rest = reason;
    while let Some(start) = rest.find("I[#") {
        let after = &rest[start + 3..];
        let end = after.find(']')?;
        let pointer = &after[..end];
        if pointer.is_empty() {
            root.get_or_insert_with(String::new);
        } else {
            return Some(pointer.to_string());
        }
        rest = &after[end..];
    }
    root
}

/// The longest wait a rate-limit header is taken to ask for. A larger value (a bogus header, or
/// one of a proxy in between) is capped: it would otherwise overflow `Duration`/`Instant`
/// arithmetic (a panic) or stop every Kratos call for years through the shared cool-down.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(300);

/// Reads how long to wait from `x-ratelimit-reset` (seconds until the reset; an epoch
/// timestamp is tolerated) or `Retry-After` (seconds or an HTTP date), at most
/// [`MAX_SERVER_WAIT`].
pub fn retry_after_from_headers(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(reset) = header("x-ratelimit-reset").and_then(parse_seconds) {
        return Some(reset.min(MAX_SERVER_WAIT));
    }
    let value = header("retry-after")?;
    parse_seconds(value)
        .or_else(|| {
            let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
            let now = jiff::Timestamp::now();
            let secs = at.as_second().saturating_sub(now.as_second());
            Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
        })
        .map(|wait| wait.min(MAX_SERVER_WAIT))
}

/// Seconds as an integer or decimal; values that look like a Unix timestamp are turned into the
/// time left until then.
fn parse_seconds(value: &str) -> Option<Duration> {
    let secs: f64 = value.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    // Anything beyond ~30 years is an absolute epoch time, not a delay.
    if secs > 1.0e9 {
        let now = jiff::Timestamp::now().as_second() as f64;
        // Saturating: a time beyond what a Duration holds is "very long", not a panic.
        return Some(Duration::try_from_secs_f64((secs - now).max(0.0)).unwrap_or(Duration::MAX));
    }
    Some(Duration::from_secs_f64(secs))
}

/// The first characters of a body, for [`Error::Unexpected`].
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::from("(empty body)");
    }
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// The excerpt of a body that may carry secrets.
pub(crate) fn withheld() -> String {
    String::from("(body withheld: it may contain secrets)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn err(status: u16, body: &str) -> Error {
        Error::from_response(status, &HeaderMap::new(), body.as_bytes(), false)
    }

    #[test]
    fn pointer_is_parsed_from_a_schema_reason() {
        let reason = "I[#/traits/bar] S[#/properties/traits/properties/bar/type] expected string, but got number";
        assert_eq!(
            parse_instance_pointer(reason).as_deref(),
            Some("/traits/bar")
        );
    }

    #[test]
    fn pointer_skips_the_root_wrapper_of_multi_line_reasons() {
        let reason = "I[#] S[#] validation failed\n  I[#/traits] S[#/properties/traits/additionalProperties] additionalProperties \"department\" not allowed";
        assert_eq!(parse_instance_pointer(reason).as_deref(), Some("/traits"));
        assert_eq!(
            parse_instance_pointer("I[#] S[#] validation failed").as_deref(),
            Some("")
        );
        assert_eq!(
            parse_instance_pointer("Unable to find JSON Schema ID: nope"),
            None
        );
        assert_eq!(parse_instance_pointer("I[#/traits broken"), None);
    }

    #[test]
    fn statuses_and_reasons_are_classified() {
        let e = err(
            400,
            r#"{"error":{"code":400,"status":"Bad Request","message":"The request was malformed or contained invalid parameters","reason":"I[#/traits/age] S[#/properties/traits/properties/age/type] expected integer, but got string"}}"#,
        );
        match &e {
            Error::Invalid { reason, pointer } => {
                assert!(reason.starts_with("I[#/traits/age]"));
                assert_eq!(pointer.as_deref(), Some("/traits/age"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!e.is_transient());
        assert_eq!(e.reason_label(), "invalid");

        let e = err(
            400,
            r#"{"error":{"code":400,"message":"Unable to serialize access due to a concurrent update in another session"}}"#,
        );
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        assert!(e.is_transient());

        let e = err(
            409,
            r#"{"error":{"code":409,"status":"Conflict","message":"Unable to insert or update resource because a resource with that value exists already"}}"#,
        );
        assert!(
            matches!(&e, Error::Conflict { reason } if reason.contains("exists already")),
            "{e:?}"
        );
        let e = err(
            400,
            r#"{"error":{"code":400,"status":"Bad Request","reason":"An error occured when applying the JSON patch","message":"patch includes denied path: /credentials"}}"#,
        );
        assert!(
            matches!(&e, Error::Invalid { reason, pointer: None } if reason == "An error occured when applying the JSON patch: patch includes denied path: /credentials"),
            "{e:?}"
        );
        let e = err(
            404,
            r#"{"error":{"code":404,"message":"Unable to locate the resource"}}"#,
        );
        assert!(
            matches!(&e, Error::NotFound { message } if message == "Unable to locate the resource")
        );
        assert!(matches!(
            err(401, "{}"),
            Error::Unauthorized { status: 401, .. }
        ));
        assert!(matches!(
            err(403, ""),
            Error::Unauthorized { status: 403, .. }
        ));
        assert!(matches!(
            err(502, "<html>bad gateway</html>"),
            Error::Unavailable { .. }
        ));
        assert!(
            matches!(err(418, "teapot"), Error::Unexpected { status: 418, ref body_excerpt } if body_excerpt == "teapot")
        );
        let long = "x".repeat(1000);
        match err(418, &long) {
            Error::Unexpected { body_excerpt, .. } => {
                assert!(body_excerpt.chars().count() <= EXCERPT_CHARS + 1)
            }
            other => panic!("unexpected {other:?}"),
        }
        match Error::from_response(418, &HeaderMap::new(), b"secret-link", true) {
            Error::Unexpected { body_excerpt, .. } => {
                assert!(!body_excerpt.contains("secret-link"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rate_limit_headers_are_honoured() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("7"));
        let e = Error::from_response(429, &headers, b"", false);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.reason_label(), "rate_limited");

        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(
            retry_after_from_headers(&headers),
            Some(Duration::from_secs(2))
        );

        let in_a_minute = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
        let date =
            jiff::fmt::rfc2822::to_string(&in_a_minute.to_zoned(jiff::tz::TimeZone::UTC)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        let wait = retry_after_from_headers(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );

        let mut headers = HeaderMap::new();
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after_from_headers(&headers), Some(Duration::ZERO));
        assert_eq!(retry_after_from_headers(&HeaderMap::new()), None);
    }
}
