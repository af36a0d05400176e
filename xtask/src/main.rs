//! Developer tasks: `cargo xtask <task>`.
//!
//! - `testenv build|up|down|status|env`: the local environment (real kube-apiserver, etcd,
//!   kube-controller-manager and Ory Kratos on loopback), see the `kratos-operator-testenv` crate.
//! - `test`: the whole test suite, exactly as CI runs it.
//! - `lint-workflows`: actionlint (with shellcheck) on the GitHub workflows, as `test` runs it.
//! - `demo`: checks the machine (installing Debian's missing packages as root, see `prereq.rs`),
//!   builds and starts the environment and shows how to use it.
//! - `generate`: every generated file (the chart's README and Artifact Hub annotations, the
//!   CRDs, deploy/base).
//! - `image`: the operator's container image (or the test node's pause image) as an OCI archive,
//!   assembled without docker.
//! - `release`: the image and the chart published to an OCI registry by digest, signed with
//!   cosign, with the SBOM attached (see `release.rs`).
//! - `sbom`: the SBOM of the operator's binary (CycloneDX JSON from Cargo.lock).

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    time::Instant,
};

use clap::{Parser, Subcommand};

mod artifacthub;
mod bench;
mod chart_readme;
mod prereq;
mod release;
use kratos_operator_testenv::{
    Environment, build, cluster, env, image, kratos::Database, registry, registry::Published,
};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks of kratos-operator")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build, start, stop or inspect the local test environment.
    Testenv {
        #[command(subcommand)]
        action: TestenvAction,
    },
    /// The whole test suite: fmt, clippy, actionlint on the GitHub workflows, every test
    /// against the real environment, and the release build.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Lint .github/workflows with the pinned actionlint and Debian's shellcheck (part of
    /// `test`); builds actionlint when it is not cached.
    LintWorkflows,
    /// Check the machine (as root with apt-get, install the missing Debian packages of
    /// testenv/debian-packages), build and start the environment, then show how to use it.
    Demo,
    /// Regenerate every generated file: the chart's README (from its values.yaml), crds/, the
    /// chart's Artifact Hub annotations (Chart.yaml), the chart's crds/ and deploy/base (the
    /// tests that guard these rewrite them in this mode).
    Generate,
    /// Build the operator's image without docker: a static release binary (glibc,
    /// crt-static, in target/image) packaged like the Dockerfile's image as the OCI archive
    /// target/image/kratos-operator-dev.oci.tar (localhost/kratos-operator:dev).
    Image {
        /// The test node's pause (sandbox) image instead (localhost/pause:testenv, built from
        /// testenv/go/pause), as target/image/pause-testenv.oci.tar.
        #[arg(long)]
        pause: bool,
    },
    /// Publish a release: the image (the static binary of `image`) and the chart to an OCI
    /// registry, the chart pinning the image's digest, both signed with cosign, the SBOM
    /// attached to the image as a signed attestation. Refuses, pushing nothing, a version that
    /// disagrees with Cargo.toml and Chart.yaml, a dirty tree (but for a `-dev` version) and a
    /// version already in the registry.
    Release {
        /// Where to publish, `host[:port]/path`: the image goes to
        /// `<registry>/kratos-operator`, the chart to `oci://<registry>/charts/kratos-operator`.
        #[arg(long)]
        registry: String,
        /// The registry has no TLS (a registry on loopback, such as the test environment's).
        #[arg(long)]
        plain_http: bool,
        /// The version (default: Cargo.toml's); `<version>-dev.<suffix>` for a development
        /// release.
        #[arg(long)]
        version: Option<String>,
        /// cosign private key (its password in $COSIGN_PASSWORD; the public key beside it as
        /// `.pub`). Default: a local key pair generated once in target/release-key.
        #[arg(long, conflicts_with = "keyless")]
        key: Option<PathBuf>,
        /// Sign keyless (Fulcio and Rekor), as the release workflow does.
        #[arg(long)]
        keyless: bool,
        /// The chart directory to release (default: charts/kratos-operator; the upgrade test
        /// releases a changed copy).
        #[arg(long)]
        chart: Option<PathBuf>,
    },
    /// Write the SBOM of the operator's binary: CycloneDX JSON generated from Cargo.lock by
    /// cargo-cyclonedx, with each crate's licence.
    Sbom {
        /// Where to write it.
        #[arg(long, default_value = "target/releases/sbom.cdx.json")]
        out: PathBuf,
    },
    /// Measure convergence of N new identities against the Kratos and apiserver floors, the cost
    /// of an idle resync and peak memory; writes docs/benchmarks.md and docs/benchmarks.png.
    Bench {
        /// Object counts (passwords are measured at the first).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        sizes: Vec<usize>,
        /// Skip the per-object baseline (c): a quicker run that prints its table and leaves
        /// docs/benchmarks.md alone.
        #[arg(long)]
        no_baseline: bool,
        /// Skip the scenario with passwords (with --no-baseline: a quicker run while tuning).
        #[arg(long, requires = "no_baseline")]
        no_passwords: bool,
        /// Runs of the largest size (ratios reported as their median; (c) runs once).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        runs: u16,
        /// Skip the comparison row with Kratos on sqlite.
        #[arg(long)]
        no_sqlite: bool,
        /// Skip the comparison row where the operator writes the finalizer itself (run when
        /// the API server serves the chart's MutatingAdmissionPolicy, which every other
        /// scenario then uses).
        #[arg(long)]
        no_operator_finalizer: bool,
        /// Skip the latencies users feel ((f), (g), (i)), measured once the largest size is
        /// idle.
        #[arg(long)]
        no_latencies: bool,
    },
}

#[derive(Subcommand)]
enum TestenvAction {
    /// Build kube-apiserver, kube-controller-manager, etcd, Kratos and Helm (cached by version).
    Build {
        /// Rebuild even when cached.
        #[arg(long)]
        force: bool,
    },
    /// Start the environment (or reuse the running one) and print its variables.
    Up {
        /// Directory of the environment (default: target/testenv/default or $KRATOS_OPERATOR_TESTENV).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also start the node (containerd, a kubelet and kube-scheduler; needs root) and publish
        /// a development release of the operator to the environment's registry.
        #[arg(long)]
        node: bool,
        /// Also start Flux: a Git server, and Flux's source-controller and kustomize-controller
        /// against the environment's API server (`GIT_URL`, `GIT_URL_FROM_FLUX`).
        #[arg(long)]
        flux: bool,
        /// Kratos' database: `postgres` (its own PostgreSQL server, the default) or `sqlite`
        /// (a file; a second faster to start). Default: $KRATOS_OPERATOR_TESTENV_DATABASE, else
        /// postgres. Ignored when the environment already runs.
        #[arg(long)]
        database: Option<Database>,
        /// Kubernetes release: `newest` (the default) or `oldest` (the oldest the chart's
        /// `kubeVersion` admits). Default: $KRATOS_OPERATOR_TESTENV_KUBERNETES, else newest.
        /// Ignored when the environment already runs.
        #[arg(long)]
        kubernetes: Option<String>,
    },
    /// Stop exactly the processes `up` started.
    Down {
        /// Directory of the environment.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show whether the environment runs and which binaries are built.
    Status {
        /// Directory of the environment.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print `export` lines for KUBECONFIG, KRATOS_ADMIN_URL and KRATOS_PUBLIC_URL.
    Env {
        /// Directory of the environment.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Testenv { action } => testenv(action),
        Task::Test { cargo_args } => test(&cargo_args),
        Task::LintWorkflows => lint_workflows(),
        Task::Demo => demo(),
        Task::Generate => generate(),
        Task::Image { pause } => image_cmd(pause),
        Task::Release {
            registry,
            plain_http,
            version,
            key,
            keyless,
            chart,
        } => release_cmd(registry, plain_http, version, key, keyless, chart),
        Task::Sbom { out } => release::sbom(&out),
        Task::Bench {
            sizes,
            no_baseline,
            no_passwords,
            runs,
            no_sqlite,
            no_operator_finalizer,
            no_latencies,
        } => bench_cmd(&bench::Plan {
            operator_finalizer: !no_operator_finalizer,
            latencies: !no_latencies,
            sizes,
            baseline: !no_baseline,
            passwords: !no_passwords,
            runs: usize::from(runs),
            sqlite: !no_sqlite,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Where `cargo xtask demo` installs the chart.
const DEMO_RELEASE_NAMESPACE: &str = "kratos-operator";

fn dir_or_default(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(env::default_dir)
}

fn build_all(force: bool) -> Result<(), String> {
    build_components(&build::ALL, force)
}

/// The components `cargo xtask demo` uses, with the Kubernetes release and the Helm the
/// environment's variables select (the newest of each by default): the control plane and the
/// node's kubelet and kube-scheduler (`kubernetes`), Kratos, the registry the node pulls from,
/// the node's pause image, cosign and crane (the release it publishes) and Helm (the release's
/// chart, and the install). Not the compatibility row's other Kubernetes and Helm, nor
/// actionlint: on a fresh machine those would only add build time.
fn demo_components(kubernetes: build::Component, helm: build::Component) -> Vec<build::Component> {
    vec![
        kubernetes,
        build::KRATOS,
        build::SIGSTORE,
        build::REGISTRY,
        helm,
        build::PAUSE,
        // The node's network: kube-router's firewall, cluster DNS, and the probe the node's
        // start publishes with them.
        build::KUBE_ROUTER,
        build::COREDNS,
        build::PROBE,
    ]
}

/// Builds `components` unless cached (all of them with `force`), reporting each.
fn build_components(components: &[build::Component], force: bool) -> Result<(), String> {
    let started = Instant::now();
    for component in components {
        let took = component.build(force).map_err(|e| e.to_string())?;
        if took.is_zero() {
            eprintln!(
                "testenv: {} {} cached in {}",
                component.name,
                component.version,
                component.cache_dir().display()
            );
        } else {
            eprintln!(
                "testenv: built {} {} in {:.0?}",
                component.name, component.version, took
            );
        }
    }
    eprintln!("testenv: build finished in {:.1?}", started.elapsed());
    Ok(())
}

fn testenv(action: TestenvAction) -> Result<(), String> {
    match action {
        TestenvAction::Build { force } => build_all(force),
        TestenvAction::Up {
            dir,
            node,
            flux,
            database,
            kubernetes,
        } => {
            let dir = dir_or_default(dir);
            let started = Instant::now();
            let database = database
                .map_or_else(Database::from_env, Ok)
                .map_err(|e| e.to_string())?;
            let kubernetes = kubernetes
                .map_or_else(build::kubernetes_from_env, |k| build::kubernetes(&k))
                .map_err(|e| e.to_string())?;
            let mut env =
                Environment::up_with(&dir, database, kubernetes).map_err(|e| e.to_string())?;
            if node {
                env = node_with_release(&dir)?.0;
            }
            if flux {
                env = Environment::ensure_flux(&dir).map_err(|e| e.to_string())?;
            }
            eprintln!(
                "testenv: up in {:.1?} ({}, Kubernetes {}, Kratos on {})",
                started.elapsed(),
                dir.display(),
                env.state.kubernetes_version,
                env.state.kratos_database
            );
            print!("{}", env.env_lines());
            Ok(())
        }
        TestenvAction::Down { dir } => {
            let stopped = env::down(&dir_or_default(dir)).map_err(|e| e.to_string())?;
            if stopped.is_empty() {
                eprintln!("testenv: nothing was running");
            } else {
                eprintln!("testenv: stopped {}", stopped.join(", "));
            }
            Ok(())
        }
        TestenvAction::Status { dir } => {
            let dir = dir_or_default(dir);
            for component in build::ALL {
                let state = if component.is_built() {
                    "built"
                } else {
                    "NOT BUILT"
                };
                println!("{:<12} {:<10} {state}", component.name, component.version);
            }
            match Environment::attach(&dir).map_err(|e| e.to_string())? {
                Some(env) => {
                    println!("environment  running in {}", dir.display());
                    println!(
                        "apiserver    {} (Kubernetes {})",
                        env.state.apiserver_url, env.state.kubernetes_version
                    );
                    println!("kratos admin {}", env.state.kratos_admin_url);
                    println!("kratos pub   {}", env.state.kratos_public_url);
                    println!("kratos db    {}", env.state.kratos_database);
                    for p in &env.state.processes {
                        println!("process      {:<24} pid {}", p.name, p.pid);
                    }
                }
                None => println!("environment  not running in {}", dir.display()),
            }
            Ok(())
        }
        TestenvAction::Env { dir } => {
            let dir = dir_or_default(dir);
            let env = Environment::attach(&dir)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "no environment runs in {}; start it with `cargo xtask testenv up`",
                        dir.display()
                    )
                })?;
            print!("{}", env.env_lines());
            Ok(())
        }
    }
}

fn cargo(args: &[&str], extra: &[String]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {} {}", args.join(" "), extra.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .args(extra)
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// Runs `cargo test --workspace`, echoing its output, and sums the passed and failed counts of
/// every test binary. Fails when any test failed.
fn cargo_test(extra: &[String], vars: &[(&str, String)]) -> Result<(u64, u64), String> {
    use std::io::BufRead;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let shown: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!(
        "xtask: {} cargo test --workspace --no-fail-fast {}",
        shown.join(" "),
        extra.join(" ")
    );
    let mut child = Command::new(cargo)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running cargo test: {e}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(label), Some(n)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().unwrap_or(0);
                    match label {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("running cargo test: {e}"))?;
    if status.success() && failed == 0 {
        Ok((passed, failed))
    } else {
        println!("tests: {passed} passed, {failed} failed");
        Err(format!("`cargo test` failed ({status}): {failed} failed"))
    }
}

/// The test binaries the compatibility run repeats on the oldest Kubernetes the chart admits,
/// with Helm 3: those whose outcome depends on the API server's release or on Helm. The CRDs and
/// their CEL rules (crds, smoke), the operator end to end (identity), its RBAC and admission
/// policies (rbac), and the chart rendered, dry-run, installed and run as pods (chart, deploy,
/// node).
const COMPATIBILITY_TESTS: [&str; 7] = [
    "smoke", "crds", "identity", "rbac", "chart", "deploy", "node",
];

fn test(cargo_args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    build_all(false)?;
    lint_workflows()?;
    // Every test on the newest Kubernetes with Helm 4 (or what the variables select).
    let newest = build::kubernetes_from_env()
        .map_err(|e| e.to_string())
        .and_then(|kubernetes| test_phase(&env::default_dir(), kubernetes, cargo_args, &[]));
    // A focused run (`cargo xtask test -- <filter>`) stops here; the whole command goes on with
    // the other corner of the matrix, whatever the first phase found.
    let oldest = if cargo_args.is_empty() {
        let dir = env::default_dir().with_file_name("oldest");
        let mut args = Vec::new();
        for name in COMPATIBILITY_TESTS {
            args.extend(["--test".to_string(), name.to_string()]);
        }
        let vars = [
            ("KRATOS_OPERATOR_TESTENV", dir.display().to_string()),
            (build::KUBERNETES_ENV, "oldest".to_string()),
            (build::HELM_ENV, "3".to_string()),
        ];
        Some(test_phase(&dir, build::KUBERNETES_OLDEST, &args, &vars))
    } else {
        None
    };
    eprintln!("xtask: test command took {:.1?}", started.elapsed());
    let mut passed = 0;
    let mut failed = 0;
    let mut errors = Vec::new();
    for result in std::iter::once(newest).chain(oldest) {
        match result {
            Ok((p, f)) => {
                passed += p;
                failed += f;
            }
            Err(e) => errors.push(e),
        }
    }
    println!("tests: {passed} passed, {failed} failed");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Debian's shellcheck, which actionlint runs on every `run:` script. A fixed path rather than
/// whatever `PATH` offers, so that every machine reports the same findings.
const SHELLCHECK: &str = "/usr/bin/shellcheck";

/// Runs the pinned actionlint ([`build::ACTIONLINT`], built unless cached) on every workflow in
/// `.github/workflows`, with [`SHELLCHECK`] for the `run:` scripts and without pyflakes (no step
/// runs Python; whether it is installed must not change the result). Fails on any finding.
fn lint_workflows() -> Result<(), String> {
    if !std::path::Path::new(SHELLCHECK).is_file() {
        return Err(format!(
            "{SHELLCHECK} is missing: `apt-get install shellcheck` (actionlint checks the \
             workflows' run: scripts with it)"
        ));
    }
    build::ACTIONLINT.build(false).map_err(|e| e.to_string())?;
    let actionlint = build::ACTIONLINT
        .binary("actionlint")
        .map_err(|e| e.to_string())?;
    let root = kratos_operator_testenv::repo_root();
    let dir = root.join(".github").join("workflows");
    let mut workflows: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|ext| ext.to_str()),
                Some("yml" | "yaml")
            )
        })
        .collect();
    workflows.sort();
    if workflows.is_empty() {
        return Err(format!("no workflows in {}", dir.display()));
    }
    eprintln!(
        "xtask: actionlint {} on {} workflows",
        build::ACTIONLINT.version,
        workflows.len()
    );
    let status = Command::new(&actionlint)
        .current_dir(&root)
        .arg(format!("-shellcheck={SHELLCHECK}"))
        .arg("-pyflakes=")
        .args(
            workflows
                .iter()
                .map(|path| path.strip_prefix(&root).unwrap_or(path)),
        )
        .status()
        .map_err(|e| format!("running {}: {e}", actionlint.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "actionlint reported problems in {} ({status}), listed above",
            dir.display()
        ))
    }
}

/// One phase of the test command: the environment in `dir` (started unless it runs, on
/// `kubernetes`), its node and the operator's image, then `cargo test` with `vars`. Stops what it
/// started.
fn test_phase(
    dir: &std::path::Path,
    kubernetes: build::Component,
    cargo_args: &[String],
    vars: &[(&str, String)],
) -> Result<(u64, u64), String> {
    let was_running = Environment::attach(dir)
        .map_err(|e| e.to_string())?
        .is_some();
    let database = Database::from_env().map_err(|e| e.to_string())?;
    let env = Environment::up_with(dir, database, kubernetes).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: environment {} in {} (Kubernetes {}, Kratos on {})",
        if was_running { "reused" } else { "started" },
        env.dir.display(),
        env.state.kubernetes_version,
        env.state.kratos_database
    );
    // The node and a development release of the operator in the environment's registry (a
    // static release build: the release build the Dockerfile ships, checked here too), which
    // tests/node.rs installs from there.
    let node_was_running = env.state.node.is_some();
    let result = node_with_release(dir).and_then(|_| cargo_test(cargo_args, vars));
    if !was_running {
        let _ = env::down(dir);
    } else if !node_was_running {
        // One node per machine: the next phase starts its own.
        let _ = Environment::stop_node_in(dir);
    }
    result
}

/// Starts the node of the environment in `dir` (unless it runs) and publishes a development
/// release of the work tree to the environment's registry (unless that very release is there):
/// `cargo xtask release --registry $REGISTRY/kratos-operator --plain-http --version
/// <version>-dev.h<hash>`, signed with the local key pair. The hash covers the binary, the chart
/// and the version, so a changed source gives a new version and an unchanged one is not pushed
/// twice. The record ([`Published`]) is what the node tests and the demo install.
fn node_with_release(dir: &std::path::Path) -> Result<(Environment, Published), String> {
    let started = Instant::now();
    let env = Environment::ensure_node(dir).map_err(|e| e.to_string())?;
    eprintln!("xtask: node up in {:.1?}", started.elapsed());
    let root = kratos_operator_testenv::repo_root();
    let built = image::build_static_operator(&root.join("target").join("image"))
        .map_err(|e| e.to_string())?;
    eprintln!("xtask: {} (static, runs)", built.version);
    let version = dev_version(&root, &built.binary)?;
    if let Some(published) = Published::read(dir).map_err(|e| e.to_string())? {
        let chart = format!(
            "{}:{version}",
            published.chart().trim_start_matches("oci://")
        );
        if published.version == version
            && registry::digest_of(&chart, published.plain_http)
                .map_err(|e| e.to_string())?
                .is_some()
        {
            eprintln!("xtask: release {version} is in the registry already");
            return Ok((env, published));
        }
    }
    let started = Instant::now();
    let key = release::local_key(&root.join("target").join("release-key"))?;
    let options = release::Options {
        registry: format!("{}/{}", env.state.registry, release::IMAGE_NAME),
        plain_http: true,
        version: Some(version),
        signer: release::Signer::Key(key),
        chart: root.join("charts").join(registry::CHART_NAME),
        out: root.join("target").join("releases"),
    };
    let checked = release::preflight(&options)?;
    let published = release::release(&options, checked, &built.binary)?;
    published.write(dir).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: released {} to {} in {:.1?} (image {})",
        published.version,
        published.chart(),
        started.elapsed(),
        published.image_by_digest()
    );
    Ok((env, published))
}

/// The development version of the work tree: Cargo.toml's version, `-dev.h` and 12 hex digits of
/// a hash of the static binary and every file of the chart.
fn dev_version(root: &std::path::Path, binary: &std::path::Path) -> Result<String, String> {
    use sha2::Digest;
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).map_err(|e| e.to_string())?;
    let cargo = release::cargo_version(&cargo).ok_or("Cargo.toml has no [package] version")?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(cargo.as_bytes());
    hasher.update(std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?);
    let mut files = Vec::new();
    collect_files(&root.join("charts").join("kratos-operator"), &mut files)?;
    files.sort();
    for file in files {
        hasher.update(file.display().to_string().as_bytes());
        hasher.update(std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?);
    }
    let hex: String = hasher.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("{cargo}-dev.h{hex}"))
}

fn collect_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn release_cmd(
    registry: String,
    plain_http: bool,
    version: Option<String>,
    key: Option<PathBuf>,
    keyless: bool,
    chart: Option<PathBuf>,
) -> Result<(), String> {
    let started = Instant::now();
    for component in [build::SIGSTORE, build::HELM] {
        component.build(false).map_err(|e| e.to_string())?;
    }
    let root = kratos_operator_testenv::repo_root();
    let signer = if keyless {
        release::Signer::Keyless
    } else {
        match key {
            Some(key) => release::Signer::Key(key),
            None => release::Signer::Key(release::local_key(
                &root.join("target").join("release-key"),
            )?),
        }
    };
    let options = release::Options {
        registry,
        plain_http,
        version,
        signer,
        chart: chart.unwrap_or_else(|| root.join("charts").join(registry::CHART_NAME)),
        out: root.join("target").join("releases"),
    };
    // The cheap refusals first: no build for a release that cannot happen.
    let checked = release::preflight(&options)?;
    let built = image::build_static_operator(&root.join("target").join("image"))
        .map_err(|e| e.to_string())?;
    let published = release::release(&options, checked, &built.binary)?;
    println!("released {}", published.version);
    println!("image    {}", published.image_by_digest());
    println!(
        "chart    {} ({})",
        published.chart(),
        published.chart_digest
    );
    println!("sbom     {}", published.sbom.display());
    println!(
        "
{}",
        release::user_commands(&published)
    );
    eprintln!("xtask: release took {:.1?}", started.elapsed());
    Ok(())
}

fn kubectl(env: &Environment, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let kubectl = env
        .state
        .kubernetes()
        .and_then(|k| k.binary("kubectl"))
        .map_err(|e| e.to_string())?;
    let mut child = Command::new(kubectl)
        .args(args)
        .env("KUBECONFIG", &env.state.kubeconfig)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running kubectl: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("writing to kubectl: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes `charts/kratos-operator/README.md` from the chart's values.yaml, values.schema.json
/// and Chart.yaml (see [`chart_readme`]).
fn generate_chart_readme() -> Result<(), String> {
    let chart = kratos_operator_testenv::repo_root()
        .join("charts")
        .join("kratos-operator");
    let read = |name: &str| {
        std::fs::read_to_string(chart.join(name))
            .map_err(|e| format!("reading {}: {e}", chart.join(name).display()))
    };
    let readme = chart_readme::readme(
        &read("values.yaml")?,
        &read("values.schema.json")?,
        &read("Chart.yaml")?,
    )?;
    let path = chart.join("README.md");
    std::fs::write(&path, readme).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// Rewrites the Artifact Hub annotations at the end of the chart's Chart.yaml
/// (xtask/src/artifacthub.rs), after crds/ is current.
fn generate_chart_annotations() -> Result<(), String> {
    let repo = kratos_operator_testenv::repo_root();
    let text = artifacthub::chart_yaml(&repo)?;
    let path = repo
        .join("charts")
        .join("kratos-operator")
        .join("Chart.yaml");
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!(
        "xtask: wrote the artifacthub.io annotations of {}",
        path.display()
    );
    Ok(())
}

/// `UPDATE_<X>=1 cargo test --test <test> -- --exact <name>`: the one test that rewrites a
/// generated file. Only that test runs, so that generating needs no test environment.
fn regenerate_with_test(test: &str, var: &str, name: &str) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: {var}=1 cargo test --test {test} -- --exact {name}");
    let status = Command::new(&cargo)
        .args(["test", "--quiet", "--test", test, "--", "--exact", name])
        .env(var, "1")
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "regenerating with `cargo test --test {test}` failed ({status})"
        ));
    }
    Ok(())
}

fn generate() -> Result<(), String> {
    generate_chart_readme()?;
    // Order matters: the annotations and the chart copy crds/, and deploy/base renders the chart.
    regenerate_with_test("crds", "UPDATE_CRDS", "crd_files_match_the_types")?;
    generate_chart_annotations()?;
    regenerate_with_test("chart", "UPDATE_CRDS", "chart_crds_are_the_generated_crds")?;
    regenerate_with_test(
        "deploy",
        "UPDATE_DEPLOY",
        "deploy_base_is_the_chart_rendered_with_default_values",
    )
}

fn image_cmd(pause: bool) -> Result<(), String> {
    let started = Instant::now();
    let out_dir = kratos_operator_testenv::repo_root()
        .join("target")
        .join("image");
    let (binary, size, written) = if pause {
        let took = build::PAUSE.build(false).map_err(|e| e.to_string())?;
        if !took.is_zero() {
            eprintln!("xtask: built pause in {took:.1?}");
        }
        let spec = image::pause_spec().map_err(|e| e.to_string())?;
        let written = image::write_oci_archive(&spec, &out_dir.join(image::PAUSE_ARCHIVE))
            .map_err(|e| e.to_string())?;
        let binary = build::PAUSE.binary("pause").map_err(|e| e.to_string())?;
        let size = std::fs::metadata(&binary)
            .map_err(|e| format!("reading {}: {e}", binary.display()))?
            .len();
        (binary, size, written)
    } else {
        let built = image::build_static_operator(&out_dir).map_err(|e| e.to_string())?;
        eprintln!("xtask: {} (static, runs)", built.version);
        let written =
            image::operator_archive(&built.binary, &out_dir).map_err(|e| e.to_string())?;
        (built.binary, built.size, written)
    };
    println!("image    {}", written.name);
    println!("digest   {}", written.digest);
    println!("config   {}", written.config_digest);
    println!(
        "binary   {} ({:.1} MiB)",
        binary.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "archive  {} ({:.1} MiB)",
        written.archive.display(),
        written.archive_size as f64 / (1024.0 * 1024.0)
    );
    eprintln!("xtask: image took {:.1?}", started.elapsed());
    Ok(())
}

fn bench_cmd(plan: &bench::Plan) -> Result<(), String> {
    build_all(false)?;
    let repo = kratos_operator_testenv::repo_root();
    // The binary the image ships and the node runs: the static glibc build of `cargo xtask image`
    // (and of the Dockerfile), in the same target directory.
    let built =
        kratos_operator_testenv::image::build_static_operator(&repo.join("target").join("image"))
            .map_err(|e| e.to_string())?;
    let figures = bench::run(plan, &repo, &built.binary)?;
    let docs = bench::docs_dir(&repo);
    std::fs::create_dir_all(&docs).map_err(|e| e.to_string())?;
    let mut command = format!(
        "cargo xtask bench --sizes {} --runs {}",
        plan.sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        plan.runs
    );
    if !plan.sqlite {
        command.push_str(" --no-sqlite");
    }
    let md = bench::report(&figures, &command);
    if !plan.baseline {
        println!("{md}");
        return Ok(());
    }
    std::fs::write(docs.join("benchmarks.md"), &md).map_err(|e| e.to_string())?;
    bench::chart(&figures, &docs.join("benchmarks.png"))?;
    println!("{md}");
    Ok(())
}

/// The README's run command: the environment with its node, the operator installed with the
/// chart as users run it (a pod), and the examples.
fn demo() -> Result<(), String> {
    let kubernetes = build::kubernetes_from_env().map_err(|e| e.to_string())?;
    let helm = build::helm_from_env().map_err(|e| e.to_string())?;
    let components = demo_components(kubernetes, helm);
    // Before any build: on a machine without them, the builds' minutes would end in a missing
    // package all the same.
    prereq::ensure(&components)?;
    build_components(&components, false)?;
    let dir = env::default_dir();
    Environment::up(&dir).map_err(|e| e.to_string())?;
    let (env, published) = node_with_release(&dir)?;
    let root = kratos_operator_testenv::repo_root();
    env.state.node.as_ref().ok_or("the node did not start")?;
    let ns = "demo";
    for namespace in [ns, DEMO_RELEASE_NAMESPACE] {
        let yaml = kubectl(
            &env,
            &[
                "create",
                "namespace",
                namespace,
                "--dry-run=client",
                "-o",
                "yaml",
            ],
            None,
        )?;
        kubectl(&env, &["apply", "-f", "-"], Some(&yaml))?;
    }
    // The README's install command, as written but for where the chart comes from (this
    // environment's registry, plain HTTP, the development version) and `upgrade --install`, so
    // that a second run upgrades: the release `kratos-operator` in namespace `kratos-operator`,
    // Kratos at the README's Service URLs (Kratos runs in-cluster, namespace `kratos`). The
    // demo's operator watches only the demo namespace: tests share this environment and run
    // operators of their own in their namespaces.
    let helm = build::helm_from_env()
        .and_then(|h| h.binary("helm"))
        .map_err(|e| e.to_string())?;
    let helm_home = root.join("target").join("helm-home");
    let readme = std::fs::read_to_string(root.join("README.md")).map_err(|e| e.to_string())?;
    let readme_args = cluster::readme_install_args(&readme)
        .ok_or("README.md has no `helm install kratos-operator oci://…` command")?;
    let mut args = cluster::install_from(&readme_args, &published.chart(), &published.version);
    if args.first().map(String::as_str) == Some("install") {
        args.splice(0..1, ["upgrade".to_string(), "--install".to_string()]);
    }
    args.extend([
        "--wait".to_string(),
        "--timeout".into(),
        "180s".into(),
        "--set".into(),
        format!("watchNamespaces={{{ns}}}"),
    ]);
    println!("$ helm {}", args.join(" "));
    let out = Command::new(helm)
        .env("KUBECONFIG", &env.state.kubeconfig)
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .args(&args)
        .output()
        .map_err(|e| format!("running helm: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "helm install failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    println!(
        "Installed from the environment's registry with the README's command (image {}, signed; \
         verify: cargo xtask release prints the commands)",
        published.image_by_digest()
    );
    println!("\n$ kubectl get pods -n {DEMO_RELEASE_NAMESPACE} -o wide");
    print!(
        "{}",
        kubectl(
            &env,
            &["get", "pods", "-n", DEMO_RELEASE_NAMESPACE, "-o", "wide"],
            None
        )?
    );

    // Helm 4 returns before the CRDs it installed are served: wait until they are Established,
    // and give the API server the few seconds it may still need to serve their objects
    // (Kubernetes 1.35+ answers 503 ServiceUnavailable until then).
    kubectl(
        &env,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/identities.kratos-operator.dev",
            "crd/identityschemarefs.kratos-operator.dev",
            "crd/recoveryrequests.kratos-operator.dev",
        ],
        None,
    )?;
    let examples = root.join("deploy").join("examples");
    let apply = ["apply", "-n", ns, "-k", &examples.display().to_string()];
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while let Err(e) = kubectl(&env, &apply, None) {
        if !e.contains("ServiceUnavailable") || Instant::now() > deadline {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let ready = kubectl(
            &env,
            &[
                "get",
                "identities",
                "alice",
                "bob",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\" \"}{end}",
            ],
            None,
        )?;
        let states: Vec<&str> = ready.split_whitespace().collect();
        if !states.is_empty() && states.iter().all(|s| *s == "True") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the example identities did not become Ready: {ready}; see `kubectl logs -n {DEMO_RELEASE_NAMESPACE} deploy/kratos-operator`"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    println!("\n$ kubectl get kratos -A");
    print!("{}", kubectl(&env, &["get", "kratos", "-A"], None)?);
    println!(
        "\nIdentities in Kratos ({}/admin/identities):",
        env.state.kratos_admin_url
    );
    let list: serde_json::Value = ureq::get(&format!(
        "{}/admin/identities?page_size=500",
        env.state.kratos_admin_url
    ))
    .call()
    .map_err(|e| format!("listing Kratos identities: {e}"))?
    .body_mut()
    .read_json()
    .map_err(|e| format!("listing Kratos identities: {e}"))?;
    println!(
        "{:<38} {:<10} {:<28} {:<8} MANAGED BY",
        "ID", "SCHEMA", "IDENTIFIER", "STATE"
    );
    let all = list.as_array().cloned().unwrap_or_default();
    let demo: Vec<&serde_json::Value> = all
        .iter()
        .filter(|i| {
            i["metadata_admin"]["kratos-operator.dev/owner"]
                .as_str()
                .is_some_and(|o| o.starts_with(&format!("{ns}/")))
        })
        .collect();
    if demo.len() < all.len() {
        println!(
            "(the {} identities managed from namespace {ns}; Kratos holds {} in all)",
            demo.len(),
            all.len()
        );
    }
    for i in demo {
        let traits = &i["traits"];
        let identifier = traits["email"]
            .as_str()
            .or(traits["username"].as_str())
            .unwrap_or("");
        let owner = i["metadata_admin"]["kratos-operator.dev/owner"]
            .as_str()
            .unwrap_or("-");
        println!(
            "{:<38} {:<10} {:<28} {:<8} {owner}",
            i["id"].as_str().unwrap_or(""),
            i["schema_id"].as_str().unwrap_or(""),
            identifier,
            i["state"].as_str().unwrap_or("")
        );
    }
    println!("\nThe environment and the operator keep running. Use them from a shell with:\n");
    print!("{}", env.env_lines());
    println!(
        "\nThe operator's log: kubectl logs -n {DEMO_RELEASE_NAMESPACE} deploy/kratos-operator\nStop everything with `cargo xtask testenv down`."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_builds_the_newest_kubernetes_and_helm_and_nothing_of_the_compatibility_row() {
        let modules: Vec<&str> = demo_components(build::KUBERNETES, build::HELM)
            .iter()
            .map(|c| c.module)
            .collect();
        // Everything the test command builds but the compatibility row, the workflow lint and
        // Flux (the GitOps tests'): a new component is in the demo unless it is added to this
        // list of exceptions.
        let skipped = [
            build::KUBERNETES_OLDEST,
            build::HELM_3,
            build::ACTIONLINT,
            build::FLUX_SOURCE,
            build::FLUX_KUSTOMIZE,
            build::GITSERVER,
        ];
        let mut want: Vec<&str> = build::ALL
            .iter()
            .map(|c| c.module)
            .filter(|m| !skipped.iter().any(|s| s.module == *m))
            .collect();
        let mut have = modules.clone();
        want.sort_unstable();
        have.sort_unstable();
        assert_eq!(have, want);
        for skipped in skipped {
            assert!(!modules.contains(&skipped.module), "{}", skipped.module);
        }
        // Every one is a component the test command builds too.
        let all: Vec<&str> = build::ALL.iter().map(|c| c.module).collect();
        assert!(modules.iter().all(|m| all.contains(m)), "{modules:?}");
        // The variables' choice is honoured: the oldest row's demo builds the oldest row.
        let oldest: Vec<&str> = demo_components(build::KUBERNETES_OLDEST, build::HELM_3)
            .iter()
            .map(|c| c.module)
            .collect();
        assert!(oldest.contains(&"kubernetes-oldest") && oldest.contains(&"helm3"));
    }
}
