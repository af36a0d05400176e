//! kratos-operator: manages Ory Kratos identities declaratively from Kubernetes objects.
//!
//! - [`api`]: the custom resources (Identity, IdentitySchemaRef, RecoveryRequest) and their
//!   kstatus conditions.
//! - [`kratos`]: the typed, resilient client of the Kratos admin API.
//! - [`controller`]: the controllers, each split into observe / plan (pure) / act / report.
//! - [`schema`]: compiled identity schemas for client-side validation.
//! - [`config`]: the command line; [`server`]: /metrics, /healthz, /readyz; [`leader`]: leader
//!   election; [`shutdown`]: signals and the shutdown bound; [`export`]: manifests for
//!   identities already in Kratos; [`metrics`].

pub mod api;
pub mod config;
pub mod controller;
pub mod export;
pub mod kratos;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod schema;
pub mod server;
pub mod shutdown;
pub mod tenancy;

/// Errors of the operator's reconcilers and start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Kratos admin API call failed.
    #[error("Kratos: {0}")]
    Kratos(#[from] kratos::Error),
    /// An object lacks a field the API server always sets.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// (De)serialising an object failed.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The configuration cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// A reconcile's plan did not reach an outcome within this many steps (a bug: each step
    /// observes or writes something new).
    #[error("the reconcile did not settle within {0} steps")]
    Unsettled(usize),
}

impl Error {
    /// A static, low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Kratos(e) => e.reason_label(),
            Self::MissingField(_) => "missing_field",
            Self::Serialization(_) => "serialization",
            Self::Config(_) => "config",
            Self::Unsettled(_) => "unsettled",
        }
    }

    /// Whether the object reports this failure as `KratosUnavailable` while the reconcile is
    /// retried with backoff: Kratos unreachable, 5xx, 429, a refused token, or an answer that
    /// does not parse.
    pub fn is_kratos_unavailable(&self) -> bool {
        match self {
            Self::Kratos(k) => {
                k.is_transient()
                    || matches!(
                        k,
                        kratos::Error::Unauthorized { .. } | kratos::Error::Unexpected { .. }
                    )
            }
            _ => false,
        }
    }

    /// How long the server asked us to wait, when it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Kratos(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// Result alias of the operator.
pub type Result<T, E = Error> = std::result::Result<T, E>;
