//! Which redirects the client follows, and where.
//!
//! Calls with a body (every method but GET) never follow one: a 307 or 308 re-sends the body
//! (cleartext passwords, password hashes, recovery requests) to wherever `Location` points, and a
//! 301, 302 or 303 silently turns the write into a GET. Reads do not follow redirects either,
//! except those of the identity schema endpoints, where Kratos uses them: the admin port answers
//! `/schemas` with a redirect to `serve.public.base_url`. Even there the client follows at most
//! [`MAX_REDIRECTS`] hops, never from https to http.
//!
//! The bearer token is attached only to requests for the admin URL's origin. reqwest removes the
//! `Authorization` header from a followed hop that changes the host or the port; the one change
//! of origin it does not notice, another scheme on the same host and port, is refused here.
//!
//! reqwest's error of a request that failed on a followed hop names the original URL, not the
//! hop's; [`tracking_hops`] remembers where the last followed hop led, so that the error can
//! name it.

use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode, header::HeaderMap, header::LOCATION, redirect};
use url::Url;

use super::error::Error;

/// The most redirects a schema request follows.
pub const MAX_REDIRECTS: usize = 5;

/// Why a hop of a schema redirect chain is not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The chain is longer than [`MAX_REDIRECTS`].
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooMany,
    /// The hop leads from https to http.
    #[error("it would downgrade https to http")]
    Downgrade,
    /// The hop leads to a scheme other than http and https.
    #[error("it leads to neither http nor https")]
    NotHttp,
    /// The hop changes the scheme but keeps host and port: reqwest would keep the
    /// `Authorization` header on it.
    #[error("it changes the scheme but keeps host and port, so the bearer token would follow")]
    SchemeOnly,
}

/// Whether the schema client may follow a redirect to `next`, given the URLs requested so far in
/// the chain (`previous`: the original request's URL first, then each followed hop; on the
/// first redirect it holds one URL).
pub(crate) fn check_hop(previous: &[Url], next: &Url) -> Result<(), Refusal> {
    if previous.len() > MAX_REDIRECTS {
        return Err(Refusal::TooMany);
    }
    if !matches!(next.scheme(), "http" | "https") {
        return Err(Refusal::NotHttp);
    }
    if let Some(last) = previous.last() {
        if last.scheme() == "https" && next.scheme() == "http" {
            return Err(Refusal::Downgrade);
        }
        if last.scheme() != next.scheme()
            && last.host_str() == next.host_str()
            && last.port_or_known_default() == next.port_or_known_default()
        {
            return Err(Refusal::SchemeOnly);
        }
    }
    Ok(())
}

/// The policy of every call but the schema reads: no redirect is followed; the 3xx answer comes
/// back as it is and [`not_followed`] turns it into an error.
pub(crate) fn no_redirects() -> redirect::Policy {
    redirect::Policy::none()
}

tokio::task_local! {
    /// Where the last hop followed by the request sent inside [`tracking_hops`] led.
    static FOLLOWED: Arc<Mutex<Option<Url>>>;
}

/// Awaits `send` (a request being sent) and returns its outcome with the URL of the last redirect
/// hop it followed (`None`: it followed none). reqwest runs the redirect policy while `send` is
/// polled, so the policy records each hop it follows into this call's slot.
pub(crate) async fn tracking_hops<T>(send: impl Future<Output = T>) -> (T, Option<Url>) {
    let slot = Arc::new(Mutex::new(None));
    let outcome = FOLLOWED.scope(slot.clone(), send).await;
    let followed = slot.lock().ok().and_then(|mut last| last.take());
    (outcome, followed)
}

/// Records `next` as the last followed hop of the request sent inside [`tracking_hops`], if any.
fn record_hop(next: &Url) {
    let _outside = FOLLOWED.try_with(|slot| {
        if let Ok(mut last) = slot.lock() {
            *last = Some(next.clone());
        }
    });
}

/// The policy of the schema reads: hops that pass [`check_hop`] are followed (and recorded for
/// [`tracking_hops`]); any other fails the request with a [`RefusedHop`].
pub(crate) fn schema_redirects() -> redirect::Policy {
    redirect::Policy::custom(
        |attempt| match check_hop(attempt.previous(), attempt.url()) {
            Ok(()) => {
                record_hop(attempt.url());
                attempt.follow()
            }
            Err(refusal) => {
                let hop = RefusedHop {
                    status: attempt.status(),
                    target: describe(attempt.url()),
                    refusal,
                };
                attempt.error(hop)
            }
        },
    )
}

/// A hop the schema policy refused; reqwest returns it as the source of its redirect error.
#[derive(Debug, thiserror::Error)]
#[error("redirect to {target} refused: {refusal}")]
pub(crate) struct RefusedHop {
    status: StatusCode,
    target: String,
    refusal: Refusal,
}

impl RefusedHop {
    /// The refused hop inside a reqwest error, if that is what failed the request.
    pub(crate) fn find(error: &reqwest::Error) -> Option<&Self> {
        if !error.is_redirect() {
            return None;
        }
        let mut cause = std::error::Error::source(error);
        while let Some(inner) = cause {
            if let Some(hop) = inner.downcast_ref::<Self>() {
                return Some(hop);
            }
            cause = inner.source();
        }
        None
    }

    /// The error of the call: `method path` was answered with the redirect that was refused.
    pub(crate) fn to_error(&self, method: &Method, path: &str) -> Error {
        Error::Unexpected {
            status: self.status.as_u16(),
            body_excerpt: format!(
                "redirect to {} refused: {method} {path}: {}",
                self.target, self.refusal
            ),
        }
    }
}

/// The error of a 3xx answer the client did not follow: `method path` (of the original request)
/// was answered with `status` by `answered_by`. Names only the origin of the `Location`, never
/// its path or query.
pub(crate) fn not_followed(
    method: &Method,
    path: &str,
    status: StatusCode,
    answered_by: &Url,
    headers: &HeaderMap,
    follows_schema_redirects: bool,
) -> Error {
    let target = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|location| answered_by.join(location).ok())
        .map(|url| format!("redirect to {}", describe(&url)))
        .unwrap_or_else(|| String::from("redirect without a usable Location"));
    let why = if follows_schema_redirects {
        "this answer is not a redirect the client follows"
    } else if method == Method::GET {
        "follows no redirect (only the identity schema endpoints do)"
    } else {
        "follows no redirect (that would send the request body elsewhere)"
    };
    Error::Unexpected {
        status: status.as_u16(),
        body_excerpt: format!(
            "{target} refused: {method} {path} {why}; point the Kratos URL at Kratos itself"
        ),
    }
}

/// What an error names of a redirect target: its origin (scheme, host, port), never its path
/// or query.
fn describe(url: &Url) -> String {
    let origin = url.origin();
    if origin.is_tuple() {
        origin.ascii_serialization()
    } else {
        format!("a {}: URL", url.scheme())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn chain(n: usize) -> Vec<Url> {
        (0..n)
            .map(|i| url(&format!("http://kratos:4434/hop/{i}")))
            .collect()
    }

    #[tokio::test]
    async fn the_last_followed_hop_is_recorded_inside_tracking_hops_only() {
        record_hop(&url("http://outside:1/schemas"));
        let ((), last) = tracking_hops(async {
            record_hop(&url("http://first:4434/schemas/a"));
            record_hop(&url("http://second:4433/schemas/a"));
        })
        .await;
        assert_eq!(last, Some(url("http://second:4433/schemas/a")));
        let ((), none) = tracking_hops(async {}).await;
        assert_eq!(none, None, "nothing leaks from an earlier call");
    }

    #[test]
    fn at_most_five_hops_are_followed() {
        let next = url("http://kratos:4433/schemas");
        for hops in 1..=MAX_REDIRECTS {
            assert_eq!(check_hop(&chain(hops), &next), Ok(()), "hop {hops}");
        }
        assert_eq!(
            check_hop(&chain(MAX_REDIRECTS + 1), &next),
            Err(Refusal::TooMany)
        );
    }

    #[test]
    fn https_is_never_downgraded() {
        let from = [url("https://kratos.example/admin/schemas")];
        assert_eq!(
            check_hop(&from, &url("http://kratos.example/schemas")),
            Err(Refusal::Downgrade)
        );
        assert_eq!(
            check_hop(&from, &url("http://public.example:8080/schemas")),
            Err(Refusal::Downgrade)
        );
        // Later in the chain as well.
        let from = [
            url("http://kratos:4434/schemas"),
            url("https://a.example/x"),
        ];
        assert_eq!(
            check_hop(&from, &url("http://b.example/schemas")),
            Err(Refusal::Downgrade)
        );
        assert_eq!(
            check_hop(&from[..1], &url("https://public.example/schemas")),
            Ok(()),
            "upgrades to another origin are fine"
        );
        assert_eq!(
            check_hop(&from[1..], &url("https://public.example/schemas")),
            Ok(())
        );
    }

    #[test]
    fn scheme_changes_on_the_same_host_and_port_and_other_schemes_are_refused() {
        let from = [url("http://kratos:4434/schemas")];
        assert_eq!(
            check_hop(&from, &url("https://kratos:4434/schemas")),
            Err(Refusal::SchemeOnly)
        );
        // http://kratos is port 80; https://kratos:80 keeps host and port.
        assert_eq!(
            check_hop(
                &[url("http://kratos/schemas")],
                &url("https://kratos:80/schemas")
            ),
            Err(Refusal::SchemeOnly)
        );
        assert_eq!(
            check_hop(
                &[url("http://kratos/schemas")],
                &url("https://kratos/schemas")
            ),
            Ok(()),
            "80 to 443: reqwest drops the token"
        );
        assert_eq!(
            check_hop(&from, &url("ftp://kratos/schemas")),
            Err(Refusal::NotHttp)
        );
        assert_eq!(
            check_hop(&from, &url("file:///etc/passwd")),
            Err(Refusal::NotHttp)
        );
    }

    #[test]
    fn refusals_name_the_origin_only() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LOCATION,
            "http://elsewhere:8080/collect?token=abc".parse().unwrap(),
        );
        let error = not_followed(
            &Method::POST,
            "/admin/identities",
            StatusCode::TEMPORARY_REDIRECT,
            &url("http://kratos:4434/admin/identities"),
            &headers,
            false,
        );
        let text = error.to_string();
        assert!(
            text.contains("redirect to http://elsewhere:8080 refused: POST /admin/identities"),
            "{text}"
        );
        assert!(
            !text.contains("token=abc") && !text.contains("collect"),
            "{text}"
        );
        assert!(!error.is_transient());

        let error = not_followed(
            &Method::GET,
            "/admin/identities/x",
            StatusCode::FOUND,
            &url("http://kratos:4434/admin/identities/x"),
            &HeaderMap::new(),
            false,
        );
        assert!(
            matches!(&error, Error::Unexpected { status: 302, body_excerpt } if body_excerpt.contains("without a usable Location")),
            "{error:?}"
        );

        let hop = RefusedHop {
            status: StatusCode::FOUND,
            target: describe(&url("http://a.example/x?y=z")),
            refusal: Refusal::Downgrade,
        };
        assert_eq!(
            hop.to_error(&Method::GET, "/schemas/customer").to_string(),
            "unexpected response from Kratos (status 302): redirect to http://a.example refused: \
             GET /schemas/customer: it would downgrade https to http"
        );
    }
}
