//! One proxy in front of Kratos for the tests: it forwards every request to the real Kratos,
//! records what it saw, and injects the faults a test asks for (an answer of its own for the
//! requests it picks, or a delay).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};

/// Request headers passed on to Kratos.
const REQUEST_HEADERS: [&str; 3] = ["content-type", "accept", "authorization"];
/// Kratos' answer headers passed back.
const ANSWER_HEADERS: [&str; 4] = ["content-type", "link", "location", "x-total-count"];

/// A request as the proxy received it: when it arrived (`at`), its method, its path (without the
/// query), its `Authorization` header and its body.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Bytes,
}

/// An answer the proxy gives instead of Kratos.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status code.
    pub status: u16,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: String,
}

impl Answer {
    /// A JSON answer (`content-type: application/json`; the body need not be JSON).
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// With the header `name: value` as well.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The value of its header `name`, if any.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the proxy does with a request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Forward it to Kratos, and Kratos' answer back.
    Forward,
    /// Answer this instead of Kratos (Kratos never sees the request).
    Answer(Answer),
    /// Wait this long, then forward it.
    Delay(Duration),
}

/// A request the proxy saw, and what it did with it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request.
    pub request: Request,
    /// What the proxy answered instead of Kratos; `None` when it forwarded the request.
    pub injected: Option<Answer>,
}

type Rule = dyn Fn(&Request) -> Fault + Send + Sync;

/// A proxy in front of a Kratos API, running in the test's runtime for as long as it does.
#[derive(Clone)]
pub struct KratosProxy {
    /// Its base URL, to give the operator instead of Kratos'.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct State {
    upstream: String,
    http: reqwest::Client,
    rule: Box<Rule>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl KratosProxy {
    /// A proxy that forwards everything to `upstream` (a Kratos base URL) and records it.
    pub async fn forwarding(upstream: &str) -> Self {
        Self::start(upstream, |_| Fault::Forward).await
    }

    /// A proxy in front of `upstream` that asks `rule` what to do with each request (in the order
    /// they arrive), and records every request with what it did.
    pub async fn start(
        upstream: &str,
        rule: impl Fn(&Request) -> Fault + Send + Sync + 'static,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy client"),
            rule: Box::new(rule),
            seen: seen.clone(),
        });
        let app = axum::Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            seen,
        }
    }

    /// Every request seen so far (since the last [`KratosProxy::clear`]), in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("proxy records").clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.seen.lock().expect("proxy records").clear();
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: axum::extract::Request,
) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let request = Request {
        at,
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        authorization: parts
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_string()),
        body,
    };
    let fault = (state.rule)(&request);
    let injected = match &fault {
        Fault::Answer(answer) => Some(answer.clone()),
        Fault::Forward | Fault::Delay(_) => None,
    };
    state.seen.lock().expect("proxy records").push(Seen {
        request: request.clone(),
        injected,
    });
    match fault {
        Fault::Answer(answer) => return answer_response(answer),
        Fault::Delay(delay) => tokio::time::sleep(delay).await,
        Fault::Forward => {}
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forward = state
        .http
        .request(parts.method, format!("{}{path_and_query}", state.upstream))
        .body(request.body);
    for name in REQUEST_HEADERS {
        if let Some(v) = parts.headers.get(name) {
            forward = forward.header(name, v.clone());
        }
    }
    match forward.send().await {
        Ok(resp) => {
            let status = resp.status();
            let mut headers = HeaderMap::new();
            for name in ANSWER_HEADERS {
                if let Some(v) = resp.headers().get(name) {
                    headers.insert(name, v.clone());
                }
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            (status, headers, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

fn answer_response(answer: Answer) -> Response {
    let mut headers = HeaderMap::new();
    for (name, value) in &answer.headers {
        headers.append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    let status = StatusCode::from_u16(answer.status).expect("status code");
    (status, headers, answer.body).into_response()
}
