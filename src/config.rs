//! The command line (clap). Every flag can also be set through the environment variable named
//! in its help.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use url::Url;

use crate::{controller::Settings, kratos::ClientConfig};

/// kratos-operator: manages Ory Kratos identities declaratively.
#[derive(Debug, Parser)]
#[command(name = "kratos-operator", version, about, long_about = None)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run` (accepted without the subcommand too).
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator (the default).
    Run(Box<RunArgs>),
    /// Print every CRD as one multi-document YAML stream.
    Crds,
    /// Write Identity manifests (and IdentitySchemaRefs) for the identities already in Kratos,
    /// with `adoption: IfUnowned`, to standard output.
    Export(Box<ExportArgs>),
    /// Print the version.
    Version,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// How to reach Kratos.
#[derive(Debug, Clone, Args)]
pub struct KratosArgs {
    /// Kratos admin API base URL.
    #[arg(
        long,
        env = "KRATOS_ADMIN_URL",
        default_value = "http://127.0.0.1:4434"
    )]
    pub kratos_admin_url: Url,
    /// Kratos public API base URL (self-hosted Kratos serves schemas there; default: follow the
    /// admin port's redirect).
    #[arg(long, env = "KRATOS_PUBLIC_URL")]
    pub kratos_public_url: Option<Url>,
    /// File holding a bearer token for the admin API (Ory Network); re-read when it changes.
    #[arg(long, env = "KRATOS_TOKEN_FILE")]
    pub kratos_token_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the Kratos URLs.
    #[arg(long, env = "KRATOS_CA_FILE")]
    pub kratos_ca_file: Option<PathBuf>,
    /// Client-side limit of Kratos requests per second (0: unlimited).
    #[arg(long, env = "KRATOS_RATE_LIMIT", default_value_t = 0.0)]
    pub kratos_rate_limit: f64,
    /// How long one Kratos request may take, from connecting to the end of the answer, e.g.
    /// `30s`. A create that times out may still be carried out by Kratos: see
    /// `--create-settle-time`.
    #[arg(long, env = "KRATOS_REQUEST_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub kratos_request_timeout: Duration,
}

impl KratosArgs {
    /// The Kratos client configuration these options describe.
    pub fn kratos_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.kratos_admin_url.clone());
        c.public_url = self.kratos_public_url.clone();
        c.token_file = self.kratos_token_file.clone();
        c.ca_file = self.kratos_ca_file.clone();
        c.rate_limit_per_second = (self.kratos_rate_limit > 0.0).then_some(self.kratos_rate_limit);
        c.request_timeout = self.kratos_request_timeout;
        c
    }
}

/// Options of `export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// How to reach Kratos.
    #[command(flatten)]
    pub kratos: KratosArgs,
    /// Namespace to put into the generated objects (the one whose team will own these users).
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// Also export identities that a kratos-operator object already manages.
    #[arg(long)]
    pub include_managed: bool,
    /// What to name the Identity objects after: `id` (the Kratos id, no personal data) or
    /// `identifier` (the email address or username: readable, but personal data in names,
    /// Events and file paths).
    #[arg(long, value_enum, default_value = "id")]
    pub name_from: crate::export::NameFrom,
    /// Write one file per object and a kustomization.yaml into this directory (created if
    /// missing; existing files of the same names are replaced) instead of one stream to stdout.
    #[arg(long)]
    pub output_dir: Option<std::path::PathBuf>,
}

/// Options of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// How to reach Kratos.
    #[command(flatten)]
    pub kratos: KratosArgs,
    /// Namespace to watch (repeat, or comma-separate in the variable); none: all namespaces.
    #[arg(
        long = "watch-namespace",
        env = "WATCH_NAMESPACE",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader among replicas (a Lease in POD_NAMESPACE); only the leader writes.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Name of the leader Lease. Operators that share a namespace as shards (see
    /// `--label-selector`) each need a Lease of their own.
    #[arg(long, env = "LEASE_NAME", default_value = crate::leader::LEASE_NAME, value_parser = lease_name)]
    pub lease_name: String,
    /// Handle only the Identity, IdentitySchemaRef and RecoveryRequest objects whose labels match
    /// this selector (Kubernetes syntax, e.g. `shard=a` or `shard notin (a,b)`), so that several
    /// operators can each own a disjoint share of the objects. References cross shards: an
    /// Identity may name an IdentitySchemaRef of another shard. None: every object.
    #[arg(long, env = "LABEL_SELECTOR")]
    pub label_selector: Option<String>,
    /// How long the leader's Lease lasts without renewal, e.g. `15s`.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long the operator may take, after SIGTERM, to finish the reconciles and Kratos calls
    /// in flight and write the statuses they queued before it releases the Lease and exits,
    /// e.g. `20s`. Keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// How often each Identity is compared with Kratos (drift detection), e.g. `5m`.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// The longest Kratos may still take to carry out a create after the operator stopped
    /// waiting for it (its process was killed, its leadership ended, or the request failed or
    /// timed out), e.g. `30s`. Until that long after such a create, the operator does not take
    /// "no identity in Kratos" for an answer: it neither creates the identity again where Kratos
    /// would not refuse a second one, nor lets a deleted Identity go (docs/reliability.md).
    #[arg(long, env = "CREATE_SETTLE_TIME", default_value = "30s", value_parser = humantime::parse_duration)]
    pub create_settle_time: Duration,
    /// How often each IdentitySchemaRef re-fetches its schema, e.g. `1m`.
    #[arg(long, env = "SCHEMA_RECHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub schema_recheck_interval: Duration,
    /// Reconciles running at once per controller (creates waiting for a batch count too).
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Coalesce creates into batch requests (`false`: one POST per identity).
    #[arg(long, env = "BATCH_CREATES", default_value_t = true, action = clap::ArgAction::Set)]
    pub batch_creates: bool,
    /// Detect drift with one paginated list of Kratos per resync (`false`: one read per object).
    #[arg(long, env = "DRIFT_SWEEPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub drift_sweeps: bool,
    /// Enforce the tenancy opt-ins of each Namespace (labels kratos-operator.dev/allow-adoption
    /// and kratos-operator.dev/allow-recovery-by-id, annotation
    /// kratos-operator.dev/identifier-patterns). `false` allows adoption, recovery by Kratos id
    /// and any identifier in every namespace: only for clusters where one team owns all of them.
    #[arg(long, env = "TENANCY_ENFORCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub tenancy_enforce: bool,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// The Kratos client configuration these options describe.
    pub fn kratos_config(&self) -> ClientConfig {
        self.kratos.kratos_config()
    }

    /// The controller settings these options describe.
    pub fn settings(&self) -> Settings {
        Settings {
            resync_interval: self.resync_interval,
            schema_recheck_interval: self.schema_recheck_interval,
            max_concurrent_reconciles: self.max_concurrent_reconciles,
            watch_namespaces: self
                .watch_namespaces
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect(),
            instance: std::env::var("POD_NAME").ok(),
            batch_creates: self.batch_creates,
            create_settle_time: self.create_settle_time,
            drift_sweeps: self.drift_sweeps,
            tenancy_enforce: self.tenancy_enforce,
            label_selector: self
                .label_selector
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            ..Settings::default()
        }
    }
}

/// A duration above zero (a request timeout of 0 would fail every call).
fn positive_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than 0s".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A Lease name: a DNS subdomain (lowercase alphanumerics, `-` and `.`, at most 253
/// characters, starting and ending with an alphanumeric).
fn lease_name(value: &str) -> Result<String, String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !value.is_empty()
        && value.len() <= 253
        && value.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && value.starts_with(alnum)
        && value.ends_with(alnum);
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a valid Lease name (lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit, at most 253 characters)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default_and_flags_parse() {
        let cli = Cli::try_parse_from([
            "kratos-operator",
            "--kratos-admin-url",
            "http://kratos:4434",
            "--watch-namespace",
            "a,b",
            "--resync-interval",
            "30s",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let settings = cli.run.settings();
        assert_eq!(settings.watch_namespaces, vec!["a", "b"]);
        assert_eq!(settings.resync_interval, Duration::from_secs(30));
        assert_eq!(
            cli.run.kratos_config().admin_url.as_str(),
            "http://kratos:4434/"
        );
    }

    #[test]
    fn bad_input_is_rejected_with_a_message() {
        let err =
            Cli::try_parse_from(["kratos-operator", "--resync-interval", "soon"]).unwrap_err();
        assert!(err.to_string().contains("resync-interval"), "{err}");
        assert!(
            Cli::try_parse_from(["kratos-operator", "--max-concurrent-reconciles", "0"]).is_err()
        );
        let err =
            Cli::try_parse_from(["kratos-operator", "--kratos-request-timeout", "0s"]).unwrap_err();
        assert!(err.to_string().contains("longer than 0s"), "{err}");
    }

    #[test]
    fn timeouts_reach_the_client_and_the_controllers() {
        let cli = Cli::try_parse_from([
            "kratos-operator",
            "--kratos-request-timeout",
            "2s",
            "--create-settle-time",
            "8s",
        ])
        .unwrap();
        assert_eq!(
            cli.run.kratos_config().request_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            cli.run.settings().create_settle_time,
            Duration::from_secs(8)
        );
        let defaults = Cli::try_parse_from(["kratos-operator"]).unwrap();
        assert_eq!(
            defaults.run.kratos_config().request_timeout,
            Duration::from_secs(30)
        );
        assert_eq!(
            defaults.run.settings().create_settle_time,
            Settings::default().create_settle_time
        );
    }
}
