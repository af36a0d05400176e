//! Operator metrics (prometheus-client, OpenMetrics text). Every label value is static and
//! low-cardinality: kinds, error classes, Kratos operations and outcomes. Object names go into
//! logs, never into labels, and no secret ever reaches a metric.

use std::{sync::atomic::AtomicI64, time::Instant};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of per-kind series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `Identity`, `IdentitySchemaRef`, `RecoveryRequest`.
    pub kind: &'static str,
}

/// Labels of failure series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The kind.
    pub kind: &'static str,
    /// A static error class ([`crate::Error::metric_label`]).
    pub error: &'static str,
}

/// Labels of outcome series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The kind.
    pub kind: &'static str,
    /// The Ready reason the reconcile ended with (`Synced`, `InvalidSpec`, ...).
    pub reason: &'static str,
}

/// The operator's own metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Family<KindLabels, Counter>,
    /// Reconciles that failed (and are retried with backoff).
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile durations in seconds.
    pub duration: Family<KindLabels, Histogram>,
    /// Reconciles running now.
    pub in_flight: Family<KindLabels, Gauge>,
    /// Ready outcomes by reason.
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// Identity objects whose Kratos identity is in sync.
    pub identities_managed: Gauge<i64, AtomicI64>,
    /// Changes made to Kratos identities, by action (`created`, `updated`, `adopted`, `deleted`).
    pub identity_changes: Family<ActionLabels, Counter>,
    /// Events dropped because the publishing queue was full.
    pub events_dropped: Counter,
    /// Identity statuses waiting to be written.
    pub status_writes_queued: Gauge<i64, AtomicI64>,
    /// Drift sweeps that compared every candidate with Kratos.
    pub drift_sweeps: Counter,
    /// 1 while this process runs the controllers (it holds the leader Lease, or leader election
    /// is off), 0 while it waits for the Lease or stops.
    pub leading: Gauge<i64, AtomicI64>,
    /// The process's resident set in bytes, as of the last scrape.
    pub resident_memory: Gauge<i64, AtomicI64>,
    /// The memory limit of the process's cgroup in bytes (0 without one).
    pub memory_limit: Gauge<i64, AtomicI64>,
}

/// Labels of change series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// What was done.
    pub action: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            outcomes: Family::default(),
            identities_managed: Gauge::default(),
            identity_changes: Family::default(),
            events_dropped: Counter::default(),
            status_writes_queued: Gauge::default(),
            drift_sweeps: Counter::default(),
            leading: Gauge::default(),
            resident_memory: Gauge::default(),
            memory_limit: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every series under the `kratos_operator` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kratos_operator");
        r.register("reconciles", "Reconciles started", self.reconciles.clone());
        r.register(
            "leading",
            "1 while this replica runs the controllers (holds the leader Lease, or leader election is off), 0 while it waits",
            self.leading.clone(),
        );
        r.register(
            "drift_sweeps",
            "Drift sweeps that compared every candidate Identity with Kratos",
            self.drift_sweeps.clone(),
        );
        r.register(
            "reconcile_failures",
            "Reconciles that failed and are retried",
            self.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile durations",
            self.duration.clone(),
        );
        r.register(
            "reconciles_in_flight",
            "Reconciles running now (the work queue being drained)",
            self.in_flight.clone(),
        );
        r.register(
            "reconcile_outcomes",
            "Reconcile outcomes by Ready reason",
            self.outcomes.clone(),
        );
        r.register(
            "identities_managed",
            "Identity objects in sync with Kratos",
            self.identities_managed.clone(),
        );
        r.register(
            "identity_changes",
            "Changes made to Kratos identities by action",
            self.identity_changes.clone(),
        );
        r.register(
            "events_dropped",
            "Events dropped because the publishing queue was full",
            self.events_dropped.clone(),
        );
        r.register(
            "resident_memory_bytes",
            "Resident set size of the process (VmRSS)",
            self.resident_memory.clone(),
        );
        r.register(
            "memory_limit_bytes",
            "Memory limit of the process's cgroup (the container's limit); 0 without one",
            self.memory_limit.clone(),
        );
        r.register(
            "status_writes_queued",
            "Identity statuses waiting to be written",
            self.status_writes_queued.clone(),
        );
    }

    /// Starts measuring one reconcile of `kind`; the guard records duration when dropped.
    pub fn reconcile(&self, kind: &'static str) -> ReconcileMeasure<'_> {
        let labels = KindLabels { kind };
        self.reconciles.get_or_create(&labels).inc();
        self.in_flight.get_or_create(&labels).inc();
        ReconcileMeasure {
            metrics: self,
            kind,
            started: Instant::now(),
        }
    }

    /// Samples the process's memory and its limit ([`crate::memory`]).
    pub fn sample_memory(&self) {
        if let Some(rss) = crate::memory::resident() {
            self.resident_memory
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        let limit = crate::memory::limit().unwrap_or(0);
        self.memory_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Counts a failed reconcile.
    pub fn failure(&self, kind: &'static str, error: &crate::Error) {
        self.failures
            .get_or_create(&FailureLabels {
                kind,
                error: error.metric_label(),
            })
            .inc();
    }

    /// Counts a change made to a Kratos identity.
    pub fn change(&self, action: &'static str) {
        self.identity_changes
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    /// Counts an outcome.
    pub fn outcome(&self, kind: &'static str, reason: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { kind, reason })
            .inc();
    }
}

/// Records the duration of a reconcile when dropped.
pub struct ReconcileMeasure<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    started: Instant,
}

impl Drop for ReconcileMeasure<'_> {
    fn drop(&mut self) {
        let labels = KindLabels { kind: self.kind };
        self.metrics
            .duration
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics.in_flight.get_or_create(&labels).dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_sampled_with_its_limit_or_zero() {
        let m = Metrics::default();
        m.sample_memory();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<i64>().ok())
        };
        assert!(
            value("kratos_operator_resident_memory_bytes").is_some_and(|b| b > 0),
            "{text}"
        );
        let limit = crate::memory::limit().map_or(0, |l| i64::try_from(l).unwrap());
        assert_eq!(
            value("kratos_operator_memory_limit_bytes"),
            Some(limit),
            "{text}"
        );
    }

    #[test]
    fn encodes_static_labels_only() {
        let m = Metrics::default();
        {
            let _g = m.reconcile("Identity");
        }
        m.failure("Identity", &crate::Error::MissingField("metadata.uid"));
        m.outcome("Identity", "Synced");
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("kratos_operator_reconciles_total{kind=\"Identity\"} 1"),
            "{text}"
        );
        assert!(text.contains("kratos_operator_reconcile_failures_total{kind=\"Identity\",error=\"missing_field\"} 1"), "{text}");
        assert!(
            text.contains("kratos_operator_reconciles_in_flight{kind=\"Identity\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kratos_operator_reconcile_duration_seconds_count{kind=\"Identity\"} 1"),
            "{text}"
        );
    }
}
