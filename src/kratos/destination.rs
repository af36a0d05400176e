//! Where a request that failed in transit (no connection, a timeout, a broken connection) went,
//! as its error says it: the host and port of the configured base URL it was built from, or the
//! URL a followed redirect led to, and the setting that changes it, so that whoever reads the
//! condition knows which setting to fix. Never a query string (page tokens), never credentials.

use reqwest::Method;
use url::Url;

/// The longest path of a redirect target an error quotes, in characters.
const MAX_PATH_CHARS: usize = 120;

/// The configured base URL a request was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base {
    /// The admin API base URL: every call but the schema reads, and those when no public URL is
    /// configured.
    Admin,
    /// The public API base URL: the schema reads, when it is configured.
    Public,
}

impl Base {
    /// What the error calls the base URL.
    fn name(self) -> &'static str {
        match self {
            Self::Admin => "the admin URL",
            Self::Public => "the public URL",
        }
    }
}

/// The settings of the public URL, in the chart and on the command line.
const PUBLIC_SETTING: &str = "kratos.publicUrl in the chart or --kratos-public-url";

/// The settings of `base`, in the chart and on the command line.
fn setting(base: Base) -> &'static str {
    match base {
        Base::Admin => "kratos.adminUrl in the chart or --kratos-admin-url",
        Base::Public => PUBLIC_SETTING,
    }
}

/// How an attempt failed in transit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection was made: the request never left.
    Connect,
    /// The connect or request timeout ran out.
    Timeout,
    /// Anything else: the connection broke, the answer was not HTTP.
    Other,
}

impl Failure {
    /// The failure of a reqwest error.
    pub(crate) fn of(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout
        } else if error.is_connect() {
            Self::Connect
        } else {
            Self::Other
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Connect => "could not connect to",
            Self::Timeout => "timed out at",
            Self::Other => "failed at",
        }
    }
}

/// The message of an attempt of `method requested` (built from `base`) that failed with
/// `failure` at `reached`: the requested URL itself, or where a followed redirect led.
/// `causes` is the chain of the transport's error texts, which carry no request data.
///
/// Direct: `GET /admin/identities/x could not connect to kratos-admin:4434 (the admin URL, set
/// by kratos.adminUrl in the chart or --kratos-admin-url): …`. Redirected: `GET /schemas/customer
/// could not connect to http://kratos.example:4433/schemas/customer (where the admin URL
/// redirected it; set kratos.publicUrl in the chart or --kratos-public-url to a URL the operator
/// can reach): …`.
pub(crate) fn transport_message(
    method: &Method,
    requested: &Url,
    reached: &Url,
    base: Base,
    failure: Failure,
    causes: &str,
) -> String {
    let path = requested.path();
    let verb = failure.verb();
    let name = base.name();
    if reached == requested {
        let host = host_port(requested);
        let setting = setting(base);
        format!("{method} {path} {verb} {host} ({name}, set by {setting}): {causes}")
    } else {
        let target = without_query(reached);
        format!(
            "{method} {path} {verb} {target} (where {name} redirected it; set {PUBLIC_SETTING} \
             to a URL the operator can reach): {causes}"
        )
    }
}

/// `host:port` of `url` (the port given or the scheme's default).
fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or("(no host)");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// `scheme://host:port/path` of `url`: no user or password, no query, no fragment, and a path of
/// at most [`MAX_PATH_CHARS`] characters.
fn without_query(url: &Url) -> String {
    let path = url.path();
    let path = match path.char_indices().nth(MAX_PATH_CHARS) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path.to_string(),
    };
    format!("{}://{}{path}", url.scheme(), host_port(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    const CAUSES: &str = "error sending request: tcp connect error: Connection refused";

    #[test]
    fn a_direct_failure_names_the_host_port_and_setting_of_its_base_url() {
        let requested = url("http://kratos-admin:4434/admin/identities/x");
        assert_eq!(
            transport_message(
                &Method::GET,
                &requested,
                &requested,
                Base::Admin,
                Failure::Connect,
                CAUSES
            ),
            "GET /admin/identities/x could not connect to kratos-admin:4434 (the admin URL, set \
             by kratos.adminUrl in the chart or --kratos-admin-url): error sending request: tcp \
             connect error: Connection refused"
        );
        // The scheme's default port, no credentials, no query.
        let requested = url("https://user:pw@project.oryapis.com/admin/identities?page_token=t0k");
        assert_eq!(
            transport_message(
                &Method::POST,
                &requested,
                &requested,
                Base::Admin,
                Failure::Timeout,
                "operation timed out"
            ),
            "POST /admin/identities timed out at project.oryapis.com:443 (the admin URL, set by \
             kratos.adminUrl in the chart or --kratos-admin-url): operation timed out"
        );
        let requested = url("http://[::1]:4433/schemas/customer");
        assert_eq!(
            transport_message(
                &Method::GET,
                &requested,
                &requested,
                Base::Public,
                Failure::Other,
                "connection reset"
            ),
            "GET /schemas/customer failed at [::1]:4433 (the public URL, set by kratos.publicUrl \
             in the chart or --kratos-public-url): connection reset"
        );
    }

    #[test]
    fn a_failure_after_a_redirect_names_the_target_and_the_public_url_setting() {
        let requested = url("http://kratos-admin:4434/schemas/customer");
        let reached = url("http://kratos.example/schemas/customer");
        assert_eq!(
            transport_message(
                &Method::GET,
                &requested,
                &reached,
                Base::Admin,
                Failure::Connect,
                CAUSES
            ),
            "GET /schemas/customer could not connect to http://kratos.example:80/schemas/customer \
             (where the admin URL redirected it; set kratos.publicUrl in the chart or \
             --kratos-public-url to a URL the operator can reach): error sending request: tcp \
             connect error: Connection refused"
        );
        let requested = url("https://public.example/schemas?page_size=500&page_token=secret");
        let reached = url("https://u:p@cdn.example:8443/kratos/schemas?page_token=secret#frag");
        let text = transport_message(
            &Method::GET,
            &requested,
            &reached,
            Base::Public,
            Failure::Timeout,
            "operation timed out",
        );
        assert_eq!(
            text,
            "GET /schemas timed out at https://cdn.example:8443/kratos/schemas (where the public \
             URL redirected it; set kratos.publicUrl in the chart or --kratos-public-url to a URL \
             the operator can reach): operation timed out"
        );
        for leak in ["secret", "page_", "u:p", "frag", "?", "#"] {
            assert!(!text.contains(leak), "{leak}: {text}");
        }
    }

    #[test]
    fn long_redirect_paths_are_cut() {
        let long = "a".repeat(500);
        let reached = url(&format!("http://kratos.example:4433/{long}?x=1"));
        let text = without_query(&reached);
        assert_eq!(
            text,
            format!(
                "http://kratos.example:4433/{}…",
                "a".repeat(MAX_PATH_CHARS - 1)
            )
        );
        assert_eq!(
            without_query(&url("http://kratos.example:4433/")),
            "http://kratos.example:4433/"
        );
    }
}
