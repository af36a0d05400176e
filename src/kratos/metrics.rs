//! Per-call metrics of the Kratos client: calls by operation and outcome class, their
//! duration, HTTP attempts and retries. All labels are static strings, so the cardinality is
//! bounded by the number of operations times the number of outcome classes.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// The operation names of the Kratos client, used as metric labels and span fields.
pub const OPERATIONS: [&str; 21] = [
    "batch_patch_identities",
    "create_identity",
    "create_recovery_code",
    "create_recovery_link",
    "delete_identity",
    "delete_identity_credentials",
    "delete_identity_sessions",
    "disable_session",
    "extend_session",
    "get_identity",
    "get_identity_schema",
    "get_session",
    "list_identities",
    "list_identity_schemas",
    "list_identity_sessions",
    "list_sessions",
    "patch_identity",
    "update_identity",
    "server_version",
    "server_version_probe",
    "find_by_credentials_identifier",
];

/// Every outcome class a call can end in.
pub const OUTCOMES: [&str; 10] = [
    "success",
    "not_found",
    "conflict",
    "invalid",
    "rate_limited",
    "unavailable",
    "unauthorized",
    "unexpected",
    "config",
    "io",
];

/// Labels of one call: which operation, and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The operation, e.g. `create_identity`.
    pub operation: &'static str,
    /// The outcome class, one of [`OUTCOMES`].
    pub outcome: &'static str,
}

/// Labels of per-operation counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The operation, e.g. `get_identity`.
    pub operation: &'static str,
}

type HistogramConstructor = fn() -> Histogram;

fn duration_histogram() -> Histogram {
    // 5 ms .. ~20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The client's metrics. Clones share the same series.
#[derive(Debug, Clone)]
pub struct KratosMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<CallLabels, Histogram, HistogramConstructor>,
    requests: Family<OperationLabels, Counter>,
    retries: Family<OperationLabels, Counter>,
    total: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

impl Default for KratosMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as HistogramConstructor),
            requests: Family::default(),
            retries: Family::default(),
            total: Arc::default(),
            writes: Arc::default(),
        }
    }
}

impl KratosMetrics {
    /// Registers the series in `registry` (names get the registry's prefix):
    /// `kratos_client_calls_total`, `kratos_client_call_duration_seconds`,
    /// `kratos_client_http_requests_total` and `kratos_client_retries_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kratos_client_calls",
            "Kratos admin API calls by operation and outcome class",
            self.calls.clone(),
        );
        registry.register(
            "kratos_client_call_duration_seconds",
            "Duration of Kratos admin API calls, retries and waits included",
            self.duration.clone(),
        );
        registry.register(
            "kratos_client_http_requests",
            "HTTP requests sent to Kratos (each attempt of a call)",
            self.requests.clone(),
        );
        registry.register(
            "kratos_client_retries",
            "Retried attempts of Kratos admin API calls",
            self.retries.clone(),
        );
    }

    /// Records one finished call.
    pub(crate) fn record_call(
        &self,
        operation: &'static str,
        write: bool,
        outcome: &'static str,
        seconds: f64,
    ) {
        let labels = CallLabels { operation, outcome };
        self.calls.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
        self.total.fetch_add(1, Ordering::Relaxed);
        if write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one HTTP attempt.
    pub(crate) fn record_request(&self, operation: &'static str) {
        self.requests
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// Records one retry.
    pub(crate) fn record_retry(&self, operation: &'static str) {
        self.retries
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// Calls of `operation`, whatever their outcome.
    pub fn calls(&self, operation: &str) -> u64 {
        OUTCOMES
            .iter()
            .map(|outcome| self.outcomes(operation, outcome))
            .sum()
    }

    /// Calls of `operation` that ended in `outcome`.
    pub fn outcomes(&self, operation: &str, outcome: &str) -> u64 {
        // Labels hold `&'static str`; look the series up by value.
        let Some(operation) = static_label(operation) else {
            return 0;
        };
        let Some(outcome) = OUTCOMES.iter().find(|o| **o == outcome) else {
            return 0;
        };
        self.calls
            .get(&CallLabels { operation, outcome })
            .map_or(0, |c| c.get())
    }

    /// HTTP requests sent for `operation` (attempts, retries included).
    pub fn requests(&self, operation: &str) -> u64 {
        static_label(operation)
            .and_then(|operation| {
                self.requests
                    .get(&OperationLabels { operation })
                    .map(|c| c.get())
            })
            .unwrap_or(0)
    }

    /// Retries of `operation`.
    pub fn retries(&self, operation: &str) -> u64 {
        static_label(operation)
            .and_then(|operation| {
                self.retries
                    .get(&OperationLabels { operation })
                    .map(|c| c.get())
            })
            .unwrap_or(0)
    }

    /// All calls of every operation.
    pub fn total_calls(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Calls that used a method other than GET (writes).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

fn static_label(operation: &str) -> Option<&'static str> {
    OPERATIONS.iter().copied().find(|op| *op == operation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn operation_names_are_unique() {
        let mut names = OPERATIONS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPERATIONS.len());
    }

    #[test]
    fn calls_are_counted_and_encoded_with_static_labels() {
        let metrics = KratosMetrics::default();
        metrics.record_call("get_identity", false, "success", 0.01);
        metrics.record_call("get_identity", false, "not_found", 0.02);
        metrics.record_call("create_identity", true, "conflict", 0.03);
        metrics.record_request("create_identity");
        metrics.record_retry("get_identity");
        assert_eq!(metrics.calls("get_identity"), 2);
        assert_eq!(metrics.outcomes("get_identity", "not_found"), 1);
        assert_eq!(metrics.calls("create_identity"), 1);
        assert_eq!(metrics.calls("nope"), 0);
        assert_eq!(metrics.total_calls(), 3);
        assert_eq!(metrics.writes(), 1);
        assert_eq!(metrics.requests("create_identity"), 1);
        assert_eq!(metrics.retries("get_identity"), 1);

        let mut registry = Registry::with_prefix("kratos_operator");
        metrics.clone().register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains(
            "kratos_operator_kratos_client_calls_total{operation=\"get_identity\",outcome=\"not_found\"} 1"
        ));
        assert!(text.contains("kratos_operator_kratos_client_call_duration_seconds_bucket"));
    }
}
