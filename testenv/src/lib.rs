//! The local test environment of kratos-operator: a real kube-apiserver with etcd and
//! kube-controller-manager (garbage collection and namespace deletion), and a real Ory Kratos,
//! built at pinned versions from their published Go modules and started on loopback.
//!
//! `cargo xtask testenv build | up | down | status | env` drives it from the shell; integration
//! tests use [`shared`] to start it once (or reuse a running one) and [`kratos::KratosInstance`]
//! for a private Kratos they may stop, restart or reconfigure.

pub mod build;
pub mod certs;
pub mod cluster;
pub mod env;
pub mod flux;
pub mod image;
pub mod kratos;
pub mod node;
pub mod postgres;
mod process;
pub mod registry;

use std::path::PathBuf;

pub use env::{Environment, shared};

/// Pinned versions of every component. Changing one changes the cache key, so the next
/// `cargo xtask testenv build` rebuilds exactly that component.
pub mod versions {
    /// The newest Kubernetes release: the environment's default, every test runs on it.
    pub const KUBERNETES: &str = "v1.37.2";
    /// The oldest Kubernetes release the chart's `kubeVersion` admits (k8s-openapi 0.29 supports
    /// 1.33 to 1.37, and the crate builds against 1.33's API): the compatibility run.
    pub const KUBERNETES_OLDEST: &str = "v1.33.13";
    /// etcd release of the newest Kubernetes, taken from the same module graph.
    pub const ETCD: &str = "v3.7.0";
    /// etcd release of the oldest Kubernetes.
    pub const ETCD_OLDEST: &str = "v3.5.21";
    /// Ory Kratos release.
    pub const KRATOS: &str = "v1.3.1";
    /// Helm release of the chart tests: the current major release, the default.
    pub const HELM: &str = "v4.3.1";
    /// Helm 3 release of the compatibility run.
    pub const HELM_3: &str = "v3.18.6";
    /// Our own sandbox program (testenv/go/pause). Its source joins the cache key, so this only
    /// names the build; bump it when the recipe changes in a way the source does not show.
    pub const PAUSE: &str = "v1";
    /// CNCF Distribution: the environment's OCI registry, from which the node pulls every image.
    pub const REGISTRY: &str = "v3.1.2";
    /// cosign (signatures and attestations of a release). Its wrapper module also pins crane
    /// (go-containerregistry v0.22.1), which pushes the image.
    pub const COSIGN: &str = "v2.6.5";
    /// actionlint, which lints the GitHub workflows in the test command.
    pub const ACTIONLINT: &str = "v1.7.12";
    /// Our own network probe (testenv/go/probe); like [`PAUSE`], its source joins the cache key.
    pub const PROBE: &str = "v1";
    /// CoreDNS: the cluster DNS of the environment's node.
    pub const COREDNS: &str = "v1.15.0";
    /// kube-router: the node's NetworkPolicy engine. v2.10.0 is the newest the module proxy here
    /// serves whole (v2.11 is refused; v2.1.0 has reported security flaws).
    pub const KUBE_ROUTER: &str = "v2.10.0";
    /// Flux's source-controller and kustomize-controller (one release line of both: v1.9 builds
    /// with the Go here; v1.10 asks for Go 1.27).
    pub const FLUX: &str = "v1.9.6";
    /// fluxcd/gitkit, the Git server of the environment (testenv/go/gitserver).
    pub const GITKIT: &str = "v0.6.0";
}

/// Everything that can go wrong while building, starting or stopping the environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A binary of the environment has not been built yet.
    #[error("{binary} {version} is not built (looked in {}); run `cargo xtask testenv build` first", path.display())]
    MissingBinary {
        /// Binary name.
        binary: String,
        /// Pinned version.
        version: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// `go build` (or another build step) failed.
    #[error("building {component} failed: {message}")]
    Build {
        /// Component being built.
        component: String,
        /// What failed.
        message: String,
    },
    /// A component did not become ready in time or exited early.
    #[error("{component} did not become ready: {message}\n--- last lines of {} ---\n{log_tail}", log.display())]
    NotReady {
        /// Component name.
        component: String,
        /// What was observed.
        message: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Certs(#[from] rcgen::Error),
    /// An OCI image could not be assembled, checked or imported into containerd.
    #[error("image {image}: {message}")]
    Image {
        /// The image name (or the file being packaged).
        image: String,
        /// What failed.
        message: String,
    },
    /// A setting of the environment has a value it cannot use.
    #[error("{0}")]
    Config(String),
    /// The state file of a running environment could not be read or written.
    #[error("state file {}: {message}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Where built binaries and other expensive artefacts are cached:
/// `$KRATOS_OPERATOR_CACHE`, else `$XDG_CACHE_HOME/kratos-operator`, else `~/.cache/kratos-operator`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KRATOS_OPERATOR_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kratos-operator");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("kratos-operator")
}

/// The repository root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}
