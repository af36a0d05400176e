//! `cargo xtask bench`: how fast N new Identity objects converge, beside the floors of Kratos and
//! the apiserver measured in the same run, and what an idle resync costs.
//!
//! Everything runs on a private environment (`target/testenv/bench`) and a fresh Kratos per
//! scenario. The operator is the release binary, started after its objects exist; the clock
//! starts when it starts. Results go to docs/benchmarks.md and docs/benchmarks.png.
//!
//! Where each figure is measured: the floors (b) and (k) in [`floors`], one operator run with
//! (a1), (a2), the idle resync and peak RSS in [`operator`], the latencies (f), (g), (i) and the
//! default resync's drift in [`latency`]; CPU and RSS from /proc in [`procs`], the Kratos bytes in
//! [`proxy`], the operator's and API server's /metrics in [`metrics`], the finalizer policy in
//! [`admission`]; the report in [`report`] and its chart in [`chart`]. This module plans the
//! scenarios and runs them.

mod admission;
mod chart;
mod floors;
mod latency;
mod metrics;
mod operator;
mod procs;
mod proxy;
mod report;

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kratos_operator::{
    api::{FIELD_MANAGER, Identity},
    kratos::{
        BATCH_PATCH_MAX_CLEARTEXT_PASSWORDS, BATCH_PATCH_MAX_ITEMS, BatchPatchItem, ClientConfig,
        CreateIdentityBody, IdentityCredentialsImport, KratosClient,
    },
};

use kratos_operator_testenv::{
    Environment, env,
    kratos::{Database, KratosInstance, KratosOptions},
};

use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

// The modules share one namespace: each takes the others' items with `use super::*`.
use self::{admission::*, floors::*, latency::*, metrics::*, operator::*, procs::*, proxy::*};

pub use self::{chart::chart, report::report};

/// The longest the per-object baseline may run; past it, (c) is reported as a lower bound with
/// the number of objects Ready by then.
pub const PER_OBJECT_CAP: Duration = Duration::from_secs(480);

/// Resync interval of the benchmarked operator (drift sweeps).
/// 30 s: a tenth of the 5 minute default, short enough for (d) to fit in the run. (At 10 s,
/// four or five sweeps ran during (a2) at 10k: 23 to 28 list requests, while Kratos used 24 CPU
/// seconds against 20 in its floor.)
const RESYNC: Duration = Duration::from_secs(30);

/// Who puts the operator's finalizer on a new Identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Finalizer {
    /// The chart's MutatingAdmissionPolicy, at admission (Kubernetes 1.36 and newer): the
    /// operator's first write to an object is its status.
    Admission,
    /// The operator, with a patch before it creates the identity (where the policy is not
    /// served or not installed).
    #[default]
    Operator,
}

impl std::fmt::Display for Finalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Admission => "admission",
            Self::Operator => "operator",
        })
    }
}

/// One scenario's figures, in seconds unless said otherwise.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Objects.
    pub n: usize,
    /// Kratos' database in this scenario.
    pub database: Database,
    /// Who puts the finalizer on new objects.
    pub finalizer: Finalizer,
    /// Which run of a repeated scenario (1 when it ran once).
    pub run: usize,
    /// With cleartext passwords.
    pub passwords: bool,
    /// (a1) all identities exist in Kratos.
    pub a1: f64,
    /// (a2) all objects Ready.
    pub a2: f64,
    /// (b) Kratos batch-import floor.
    pub b: f64,
    /// (k) apiserver status-write floor.
    pub k: f64,
    /// (c) per-object baseline (a2 without batching and sweeps); a lower bound when `c_ready < n`.
    pub c: f64,
    /// Objects Ready when the per-object run ended (`n` unless it hit [`PER_OBJECT_CAP`]).
    pub c_ready: usize,
    /// (d) Kratos requests in one idle resync.
    pub d_requests: u64,
    /// (d) Kratos write requests in one idle resync.
    pub d_writes: u64,
    /// (d) bytes exchanged with Kratos in one idle resync.
    pub d_bytes: u64,
    /// (e) the operator's peak RSS in MiB.
    pub rss_mib: f64,
    /// (e) the per-object operator's peak RSS in MiB.
    pub rss_per_object_mib: f64,
    /// CPU seconds each process used during (a2), by process name.
    pub cpu: Vec<(&'static str, f64)>,
    /// CPU seconds Kratos used for (b).
    pub b_cpu: f64,
    /// API server requests during (a2) other than GET and WATCH, by verb and resource.
    pub requests: Vec<(String, f64)>,
    /// (f), (g), (i): what users feel once the N objects are managed and idle (measured in one
    /// scenario: the first run of the largest size on PostgreSQL).
    pub latencies: Option<Latencies>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn kube_client(env: &Environment) -> Result<Client, String> {
    let kubeconfig = Kubeconfig::read_from(&env.state.kubeconfig).map_err(err)?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(err)?;
    config.read_timeout = Some(Duration::from_secs(120));
    Client::try_from(config).map_err(err)
}

async fn install_crds(client: &Client) -> Result<(), String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in kratos_operator::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("kratos-operator-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(err)?;
    }
    // Until each is Established: served by the API server.
    let deadline = Instant::now() + Duration::from_secs(60);
    for crd in kratos_operator::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let established = crds.get(&name).await.map_err(err)?.status.is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the CRD {name} is not Established after 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// What to run: the sizes, the per-object baseline (c), the scenario with passwords, how often
/// to repeat the largest scenario, and a row on sqlite for comparison.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Object counts (passwords are measured at the first).
    pub sizes: Vec<usize>,
    /// Run the per-object baseline (c) (once, in the first run of each size).
    pub baseline: bool,
    /// Add the scenario with passwords at the first size.
    pub passwords: bool,
    /// Runs of the largest size without passwords (the ratios are reported as their median).
    pub runs: usize,
    /// Add one run of the largest size on sqlite, without (c).
    pub sqlite: bool,
    /// Measure (f), (g) and (i) in the first run of the largest size.
    pub latencies: bool,
    /// Where the API server serves MutatingAdmissionPolicy (every scenario then runs with the
    /// chart's finalizer policy), add one run of the largest size without it: the operator
    /// writes the finalizer itself, as on older clusters.
    pub operator_finalizer: bool,
}

/// One scenario of a [`Plan`].
#[derive(Debug, Clone, Copy)]
struct Scenario {
    n: usize,
    passwords: bool,
    database: Database,
    finalizer: Finalizer,
    run: usize,
    baseline: bool,
}

impl Plan {
    /// The scenarios, in run order; `admission` says whether the API server serves the
    /// finalizer policy.
    fn scenarios(&self, admission: bool) -> Vec<Scenario> {
        let finalizer = if admission {
            Finalizer::Admission
        } else {
            Finalizer::Operator
        };
        let largest = self.sizes.iter().copied().max().unwrap_or(1000);
        let mut all = Vec::new();
        for &n in &self.sizes {
            let runs = if n == largest { self.runs.max(1) } else { 1 };
            for run in 1..=runs {
                all.push(Scenario {
                    n,
                    passwords: false,
                    database: Database::Postgres,
                    finalizer,
                    run,
                    baseline: self.baseline && run == 1,
                });
            }
        }
        if self.passwords {
            all.push(Scenario {
                n: self.sizes.first().copied().unwrap_or(1000),
                passwords: true,
                database: Database::Postgres,
                finalizer,
                run: 1,
                baseline: self.baseline,
            });
        }
        if self.sqlite {
            all.push(Scenario {
                n: largest,
                passwords: false,
                database: Database::Sqlite,
                finalizer,
                run: 1,
                baseline: false,
            });
        }
        if admission && self.operator_finalizer {
            all.push(Scenario {
                n: largest,
                passwords: false,
                database: Database::Postgres,
                finalizer: Finalizer::Operator,
                run: 1,
                baseline: false,
            });
        }
        all
    }
}

/// Runs every scenario of `plan`.
pub fn run(plan: &Plan, root_repo: &Path, binary: &Path) -> Result<Vec<Figures>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(err)?;
    runtime.block_on(run_async(plan, root_repo, binary))
}

async fn run_async(plan: &Plan, repo: &Path, binary: &Path) -> Result<Vec<Figures>, String> {
    let root = repo.join("target").join("bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(err)?;
    let env_dir = repo.join("target").join("testenv").join("bench");
    let _ = env::down(&env_dir);
    let env = Environment::up(&env_dir).map_err(err)?;
    let client = kube_client(&env).await?;
    install_crds(&client).await?;
    let admission = serves_mutating_admission_policies(&client).await?;
    let mut policy: Option<bool> = None;
    let mut all = Vec::new();
    for Scenario {
        n,
        passwords,
        database,
        finalizer,
        run,
        baseline,
    } in plan.scenarios(admission)
    {
        let tag = format!(
            "{n}{}-{database}-{finalizer}-{run}",
            if passwords { "-pw" } else { "" }
        );
        eprintln!(
            "bench: N={n} passwords={passwords} database={database} finalizer={finalizer} run={run}"
        );
        // Installed or removed only when the scenario's setting differs from the last one.
        let wanted = finalizer == Finalizer::Admission;
        if policy != Some(wanted) {
            finalizer_policy(&env, repo, wanted).await?;
            policy = Some(wanted);
        }
        // What users feel is measured once, at the largest size on PostgreSQL.
        let measure_latencies = plan.latencies
            && run == 1
            && !passwords
            && database == Database::Postgres
            && Some(n) == plan.sizes.iter().copied().max();
        let (b, b_cpu) = kratos_floor(&root, n, passwords, database, run).await?;
        eprintln!("bench:   (b) Kratos floor {b:.1}s ({b_cpu:.1} CPU seconds)");
        let k = apiserver_floor(&client, n, &tag).await?;
        eprintln!("bench:   (k) apiserver floor {k:.1}s");
        let fast = operator_run(
            &env,
            &client,
            &root,
            binary,
            n,
            passwords,
            true,
            database,
            measure_latencies,
            &format!("{tag}-fast"),
        )
        .await?;
        eprintln!(
            "bench:   (a1) {:.1}s (a2) {:.1}s rss {:.0} MiB idle {:?} cpu {:?}",
            fast.a1, fast.a2, fast.rss_mib, fast.idle, fast.cpu
        );
        let slow = if baseline {
            let slow = operator_run(
                &env,
                &client,
                &root,
                binary,
                n,
                passwords,
                false,
                database,
                false,
                &format!("{tag}-slow"),
            )
            .await?;
            eprintln!(
                "bench:   (c) {:.1}s ({} of {n} Ready) rss {:.0} MiB",
                slow.a2, slow.ready, slow.rss_mib
            );
            slow
        } else {
            OperatorRun::default()
        };
        let (d_requests, d_writes, d_bytes) = fast.idle.unwrap_or_default();
        all.push(Figures {
            n,
            database,
            finalizer,
            run,
            passwords,
            a1: fast.a1,
            a2: fast.a2,
            b,
            k,
            c: slow.a2,
            c_ready: slow.ready.min(n),
            d_requests,
            d_writes,
            d_bytes,
            rss_mib: fast.rss_mib,
            rss_per_object_mib: slow.rss_mib,
            cpu: fast.cpu,
            b_cpu,
            requests: fast.requests,
            latencies: fast.latencies,
        });
    }
    let _ = env::down(&env_dir);
    Ok(all)
}

/// Where the report goes.
pub fn docs_dir(repo: &Path) -> PathBuf {
    repo.join("docs")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_largest_size_repeats_c_runs_once_and_sqlite_gets_one_row() {
        let plan = Plan {
            sizes: vec![1000, 10000],
            baseline: true,
            passwords: true,
            runs: 3,
            sqlite: true,
            latencies: true,
            operator_finalizer: true,
        };
        let got = |admission| -> Vec<(usize, bool, Database, Finalizer, usize, bool)> {
            plan.scenarios(admission)
                .iter()
                .map(|s| (s.n, s.passwords, s.database, s.finalizer, s.run, s.baseline))
                .collect()
        };
        use Database::{Postgres, Sqlite};
        use Finalizer::{Admission, Operator};
        // Where the policy is served, every scenario runs with it and one row without.
        assert_eq!(
            got(true),
            [
                (1000, false, Postgres, Admission, 1, true),
                (10000, false, Postgres, Admission, 1, true),
                (10000, false, Postgres, Admission, 2, false),
                (10000, false, Postgres, Admission, 3, false),
                (1000, true, Postgres, Admission, 1, true),
                (10000, false, Sqlite, Admission, 1, false),
                (10000, false, Postgres, Operator, 1, false),
            ]
        );
        // Elsewhere the operator writes every finalizer, and there is nothing to compare.
        assert_eq!(
            got(false),
            [
                (1000, false, Postgres, Operator, 1, true),
                (10000, false, Postgres, Operator, 1, true),
                (10000, false, Postgres, Operator, 2, false),
                (10000, false, Postgres, Operator, 3, false),
                (1000, true, Postgres, Operator, 1, true),
                (10000, false, Sqlite, Operator, 1, false),
            ]
        );
    }
}
