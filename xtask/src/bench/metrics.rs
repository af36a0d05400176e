//! Reading the operator's and the API server's /metrics: Kratos requests and writes, API
//! requests by verb and resource, drift sweeps.

use super::*;

pub(super) fn metrics(url: &str) -> String {
    ureq::get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

pub(super) fn metric_sum(text: &str, prefix: &str, filter: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && filter(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(super) const WRITE_OPS: [&str; 9] = [
    "create_identity",
    "update_identity",
    "patch_identity",
    "delete_identity",
    "batch_patch_identities",
    "delete_identity_sessions",
    "disable_session",
    "delete_identity_credentials",
    "create_recovery_link",
];

/// The operator's Kratos requests and write requests so far (its /metrics text).
pub(super) fn kratos_requests(text: &str) -> (u64, u64) {
    let requests = metric_sum(text, "kratos_client_http_requests_total", |_| true);
    let writes = metric_sum(text, "kratos_client_http_requests_total", |l| {
        WRITE_OPS
            .iter()
            .any(|op| l.contains(&format!("operation=\"{op}\"")))
    });
    (requests as u64, writes as u64)
}

/// The API server requests (by verb and resource) that grew by at least one between two
/// readings of [`apiserver_requests`], with their growth.
pub(super) fn api_deltas(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(key, after)| (key.clone(), after - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, delta)| *delta >= 1.0)
        .collect()
}

/// Whether an [`apiserver_requests`] key is a read (GET or WATCH).
pub(super) fn is_read(key: &str) -> bool {
    key.starts_with("GET ") || key.starts_with("WATCH ")
}

/// The API server's request counts by verb, resource and subresource (its /metrics).
pub(super) async fn apiserver_requests(client: &Client) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
        return out;
    };
    let text = client.request_text(request).await.unwrap_or_default();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\"")[..])
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let mut key = format!("{} {}", label("verb"), label("resource"));
        let sub = label("subresource");
        if !sub.is_empty() {
            key = format!("{key}/{sub}");
        }
        *out.entry(key).or_default() += value;
    }
    out
}

/// The drift sweeps the operator has finished (its /metrics text).
pub(super) fn sweeps(text: &str) -> f64 {
    metric_sum(text, "kratos_operator_drift_sweeps_total", |_| true)
}

/// Waits until the operator has finished `at_least` drift sweeps (at most two resync intervals
/// and 30 s) and returns its /metrics text then.
pub(super) async fn until_sweeps(url: &str, at_least: f64) -> String {
    let deadline = Instant::now() + 2 * RESYNC + Duration::from_secs(30);
    loop {
        let text = metrics(url);
        if sweeps(&text) >= at_least || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
