//! Developer tasks: `cargo xtask <task>`.
//!
//! - `testenv build|up|down|status|env`: the local environment (real kube-apiserver, etcd,
//!   kube-controller-manager and Ory Kratos on loopback), see the `kratos-operator-testenv` crate.
//! - `test`: the whole test suite, exactly as CI runs it.
//! - `demo`: builds and starts the environment and shows how to use it.

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    time::Instant,
};

use clap::{Parser, Subcommand};

mod bench;
use kratos_operator_testenv::{Environment, build, env};

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
    /// The whole test suite: fmt, clippy, every test against the real environment, and the
    /// release build.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Build and start the environment, then show how to use it.
    Demo,
    /// Regenerate every generated file: crds/, the chart's crds/ and deploy/base (the tests that
    /// guard them rewrite them in this mode).
    Generate,
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
        Task::Demo => demo(),
        Task::Generate => generate(),
        Task::Bench {
            sizes,
            no_baseline,
            no_passwords,
        } => bench_cmd(&sizes, !no_baseline, !no_passwords),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn dir_or_default(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(env::default_dir)
}

fn build_all(force: bool) -> Result<(), String> {
    let started = Instant::now();
    for component in build::ALL {
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
        TestenvAction::Up { dir } => {
            let dir = dir_or_default(dir);
            let started = Instant::now();
            let env = Environment::up(&dir).map_err(|e| e.to_string())?;
            eprintln!(
                "testenv: up in {:.1?} ({})",
                started.elapsed(),
                dir.display()
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
                    println!("apiserver    {}", env.state.apiserver_url);
                    println!("kratos admin {}", env.state.kratos_admin_url);
                    println!("kratos pub   {}", env.state.kratos_public_url);
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
fn cargo_test(extra: &[String]) -> Result<(u64, u64), String> {
    use std::io::BufRead;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "xtask: cargo test --workspace --no-fail-fast {}",
        extra.join(" ")
    );
    let mut child = Command::new(cargo)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
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
    let dir = env::default_dir();
    let was_running = Environment::attach(&dir)
        .map_err(|e| e.to_string())?
        .is_some();
    let env = Environment::up(&dir).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: environment {} in {}",
        if was_running { "reused" } else { "started" },
        env.dir.display()
    );
    let result = cargo_test(cargo_args);
    if !was_running {
        let _ = env::down(&dir);
    }
    let (passed, failed) = result?;
    // The static release binary the Dockerfile packages.
    let result = cargo(
        &["build", "--release", "--locked", "--bin", "kratos-operator"],
        &[],
    );
    eprintln!("xtask: test command took {:.1?}", started.elapsed());
    println!("tests: {passed} passed, {failed} failed");
    result
}

fn kubectl(env: &Environment, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let kubectl = build::KUBERNETES
        .binary("kubectl")
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

fn generate() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Order matters: the chart copies crds/, and deploy/base renders the chart.
    for (test, var) in [
        ("crds", "UPDATE_CRDS"),
        ("chart", "UPDATE_CRDS"),
        ("deploy", "UPDATE_DEPLOY"),
    ] {
        eprintln!("xtask: {var}=1 cargo test --test {test}");
        let status = Command::new(&cargo)
            .args(["test", "--quiet", "--test", test])
            .env(var, "1")
            .status()
            .map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err(format!(
                "regenerating with `cargo test --test {test}` failed ({status})"
            ));
        }
    }
    Ok(())
}

fn bench_cmd(sizes: &[usize], baseline: bool, passwords: bool) -> Result<(), String> {
    build_all(false)?;
    cargo(
        &["build", "--release", "--quiet", "--bin", "kratos-operator"],
        &[],
    )?;
    let repo = kratos_operator_testenv::repo_root();
    let figures = bench::run(sizes, baseline, passwords, &repo)?;
    let docs = bench::docs_dir(&repo);
    std::fs::create_dir_all(&docs).map_err(|e| e.to_string())?;
    let command = format!(
        "cargo xtask bench --sizes {}",
        sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let md = bench::report(&figures, &command);
    if !baseline {
        println!("{md}");
        return Ok(());
    }
    std::fs::write(docs.join("benchmarks.md"), &md).map_err(|e| e.to_string())?;
    bench::chart(&figures, &docs.join("benchmarks.png"))?;
    println!("{md}");
    Ok(())
}

/// The README's run command: the environment, the CRDs, the operator and the examples.
fn demo() -> Result<(), String> {
    build_all(false)?;
    let dir = env::default_dir();
    let mut env = Environment::up(&dir).map_err(|e| e.to_string())?;
    cargo(&["build", "--quiet", "--bin", "kratos-operator"], &[])?;
    let root = kratos_operator_testenv::repo_root();
    let operator = root.join("target").join("debug").join("kratos-operator");

    let crds = Command::new(&operator)
        .arg("crds")
        .output()
        .map_err(|e| format!("running the operator: {e}"))?;
    kubectl(
        &env,
        &[
            "apply",
            "--server-side",
            "--field-manager=kratos-operator-demo",
            "-f",
            "-",
        ],
        Some(&String::from_utf8_lossy(&crds.stdout)),
    )?;
    kubectl(
        &env,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        None,
    )?;
    let ns = "demo";
    let ns_yaml = kubectl(
        &env,
        &["create", "namespace", ns, "--dry-run=client", "-o", "yaml"],
        None,
    )?;
    kubectl(&env, &["apply", "-f", "-"], Some(&ns_yaml))?;

    let started = env
        .start_process(
            "kratos-operator",
            &operator,
            &[],
            &[
                ("KUBECONFIG", env.state.kubeconfig.display().to_string()),
                ("KRATOS_ADMIN_URL", env.state.kratos_admin_url.clone()),
                ("KRATOS_PUBLIC_URL", env.state.kratos_public_url.clone()),
                ("METRICS_ADDR", "127.0.0.1:0".to_string()),
                ("RESYNC_INTERVAL", "30s".to_string()),
                // Only the demo namespace: tests share this environment and run operators of
                // their own in their namespaces.
                ("WATCH_NAMESPACE", ns.to_string()),
            ],
        )
        .map_err(|e| e.to_string())?;
    println!(
        "operator {} (log: {}/logs/kratos-operator.log)",
        if started {
            "started"
        } else {
            "already running"
        },
        dir.display()
    );

    let examples = root.join("deploy").join("examples");
    kubectl(
        &env,
        &["apply", "-n", ns, "-k", &examples.display().to_string()],
        None,
    )?;
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
                "the example identities did not become Ready: {ready}; see {}/logs/kratos-operator.log",
                dir.display()
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
    println!("\nStop everything with `cargo xtask testenv down`.");
    Ok(())
}
