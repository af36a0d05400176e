//! One proxy in front of Kratos for the tests: it forwards every request to the real Kratos,
//! records what it saw, and injects the faults a test asks for (an answer of its own for the
//! requests it picks, a delay, or a hold at a [`Gate`] the test opens).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    http::{HeaderMap, Method, StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use tokio::sync::{oneshot, watch};

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
    /// Hold it until the gate is released, then forward it, even when the client has gone away
    /// meanwhile (killed, or given up after its own timeout): Kratos then carries out a request
    /// its client no longer waits for, as a Kratos under load does.
    Hold(Gate),
}

/// Where [`Fault::Hold`] holds requests until the test releases them. The test can wait until a
/// request arrived at the gate and until Kratos answered it. Clones share the gate.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The requests held so far, in arrival order.
    arrived: watch::Sender<Vec<Request>>,
    /// Whether the gate is released (a request arriving later passes at once).
    released: watch::Sender<bool>,
    /// Kratos' answers to the held requests, in the order they came.
    answered: watch::Sender<Vec<Forwarded>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate that has held nothing yet.
    pub fn new() -> Self {
        Self {
            arrived: watch::Sender::new(Vec::new()),
            released: watch::Sender::new(false),
            answered: watch::Sender::new(Vec::new()),
        }
    }

    /// Waits until a request arrived at the gate and returns the first one; panics after
    /// `timeout`.
    pub async fn wait_arrived(&self, timeout: Duration) -> Request {
        let mut arrived = self.arrived.subscribe();
        let first = tokio::time::timeout(timeout, arrived.wait_for(|held| !held.is_empty()))
            .await
            .unwrap_or_else(|_| panic!("no request reached the gate within {timeout:?}"))
            .expect("the gate");
        first[0].clone()
    }

    /// Releases the gate: the held requests go on to Kratos, and so do later ones.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Waits until Kratos answered the first held request (it was released) and returns the
    /// answer; panics after `timeout`.
    pub async fn wait_answered(&self, timeout: Duration) -> Forwarded {
        let mut answered = self.answered.subscribe();
        let first = tokio::time::timeout(timeout, answered.wait_for(|a| !a.is_empty()))
            .await
            .unwrap_or_else(|_| panic!("Kratos did not answer a held request within {timeout:?}"))
            .expect("the gate");
        first[0].clone()
    }

    async fn pass(&self, request: Request) {
        self.arrived.send_modify(|held| held.push(request));
        let mut released = self.released.subscribe();
        let _ = released.wait_for(|open| *open).await;
    }
}

/// Kratos' answer to a forwarded request (or the proxy's 502 when Kratos could not be reached).
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// When it came.
    pub at: Instant,
    /// Its status code.
    pub status: StatusCode,
    /// The headers of [`ANSWER_HEADERS`] it had.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl IntoResponse for Forwarded {
    fn into_response(self) -> Response {
        (self.status, self.headers, self.body).into_response()
    }
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
        Fault::Forward | Fault::Delay(_) | Fault::Hold(_) => None,
    };
    state.seen.lock().expect("proxy records").push(Seen {
        request: request.clone(),
        injected,
    });
    match fault {
        Fault::Answer(answer) => return answer_response(answer),
        Fault::Delay(delay) => tokio::time::sleep(delay).await,
        Fault::Forward => {}
        Fault::Hold(gate) => {
            // Hyper drops this handler when the client goes away: the hold and the forward run
            // in a task of their own, which completes either way.
            let (answer, answered) = oneshot::channel();
            tokio::spawn(async move {
                gate.pass(request.clone()).await;
                let forwarded = forward(&state, parts, request.body).await;
                gate.answered
                    .send_modify(|answers| answers.push(forwarded.clone()));
                let _ = answer.send(forwarded);
            });
            return match answered.await {
                Ok(forwarded) => forwarded.into_response(),
                Err(_) => (StatusCode::BAD_GATEWAY, "the held request was lost").into_response(),
            };
        }
    }
    forward(&state, parts, request.body).await.into_response()
}

/// Sends the request to Kratos and reads its answer in full.
async fn forward(state: &State, parts: Parts, body: Bytes) -> Forwarded {
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forward = state
        .http
        .request(parts.method, format!("{}{path_and_query}", state.upstream))
        .body(body);
    for name in REQUEST_HEADERS {
        if let Some(v) = parts.headers.get(name) {
            forward = forward.header(name, v.clone());
        }
    }
    let mut headers = HeaderMap::new();
    let (status, body) = match forward.send().await {
        Ok(resp) => {
            for name in ANSWER_HEADERS {
                if let Some(v) = resp.headers().get(name) {
                    headers.insert(name, v.clone());
                }
            }
            let status = resp.status();
            (status, resp.bytes().await.unwrap_or_default())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, Bytes::from(e.to_string())),
    };
    Forwarded {
        at: Instant::now(),
        status,
        headers,
        body,
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
