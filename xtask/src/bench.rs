//! `cargo xtask bench`: how fast N new Identity objects converge, beside the floors of Kratos and
//! the apiserver measured in the same run, and what an idle resync costs.
//!
//! Everything runs on a private environment (`target/testenv/bench`) and a fresh Kratos per
//! scenario. The operator is the release binary, started after its objects exist; the clock
//! starts when it starts. Results go to docs/benchmarks.md and docs/benchmarks.png.

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
    kratos::{KratosInstance, KratosOptions},
};
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

/// Concurrency of the apiserver floor: the operator's default reconcile concurrency.
const CONCURRENCY: usize = 128;
/// The longest the per-object baseline may run; past it, (c) is reported as a lower bound with
/// the number of objects Ready by then.
pub const PER_OBJECT_CAP: Duration = Duration::from_secs(480);
/// Resync interval of the benchmarked operator (drift sweeps).
/// 30 s: a tenth of the 5 minute default, short enough for (d) to fit in the run. (At 10 s,
/// four or five sweeps ran during (a2) at 10k: 23 to 28 list requests, while Kratos used 24 CPU
/// seconds against 20 in its floor.)
const RESYNC: Duration = Duration::from_secs(30);

/// One scenario's figures, in seconds unless said otherwise.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Objects.
    pub n: usize,
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
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A TCP proxy that counts the bytes in both directions.
struct Proxy {
    port: u16,
    bytes: Arc<AtomicU64>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream, bytes: Arc<AtomicU64>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn proxy(target: &str) -> Result<Proxy, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let port = listener.local_addr().map_err(err)?.port();
    let bytes = Arc::new(AtomicU64::new(0));
    let target = target.trim_start_matches("http://").to_string();
    let counter = bytes.clone();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => continue,
            };
            let (up, down) = (counter.clone(), counter.clone());
            thread::spawn(move || pipe(client, server, up));
            thread::spawn(move || pipe(s2, c2, down));
        }
    });
    Ok(Proxy { port, bytes })
}

fn kratos_client(admin: &str, public: &str) -> Result<KratosClient, String> {
    let mut c = ClientConfig::new(admin.parse().map_err(err)?);
    c.public_url = Some(public.parse().map_err(err)?);
    c.request_timeout = Duration::from_secs(120);
    KratosClient::new(c).map_err(err)
}

fn body(i: usize, run: &str, password: bool) -> CreateIdentityBody {
    let mut b = CreateIdentityBody::new(
        "customer",
        json!({ "email": format!("user{i}.{run}@bench.example.com"), "name": { "first": format!("User{i}") } }),
    );
    if password {
        b.credentials = Some(IdentityCredentialsImport::password(
            format!("Bench-Password-{i}").into(),
        ));
    }
    b
}

fn fresh_kratos(root: &Path, name: &str) -> Result<KratosInstance, String> {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    KratosInstance::start(&dir, &KratosOptions::default()).map_err(err)
}

/// (b): the same N identities imported directly through the batch endpoint, batch after batch.
async fn kratos_floor(root: &Path, n: usize, passwords: bool) -> Result<(f64, f64), String> {
    let kratos = fresh_kratos(root, &format!("floor-{n}-{passwords}"))?;
    let client = kratos_client(&kratos.admin_url(), &kratos.public_url())?;
    let per = if passwords {
        BATCH_PATCH_MAX_CLEARTEXT_PASSWORDS
    } else {
        BATCH_PATCH_MAX_ITEMS
    };
    let items: Vec<BatchPatchItem> = (0..n)
        .map(|i| BatchPatchItem::create(body(i, "floor", passwords), None))
        .collect();
    let kratos_cpu = || kratos.pid().map_or(0.0, cpu_seconds);
    let cpu_before = kratos_cpu();
    let started = Instant::now();
    for chunk in items.chunks(per) {
        let results = client.batch_patch_identities(chunk).await.map_err(err)?;
        if results.iter().any(|r| !r.is_success()) {
            return Err("the Kratos floor batch had failures".into());
        }
    }
    Ok((started.elapsed().as_secs_f64(), kratos_cpu() - cpu_before))
}

async fn namespace(client: &Client, name: &str) -> Result<(), String> {
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name } })).map_err(err)?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(err)?;
    Ok(())
}

async fn create_objects(
    client: &Client,
    ns: &str,
    n: usize,
    passwords: bool,
    run: &str,
) -> Result<(), String> {
    let ids: Api<Identity> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let (ids, secrets) = (ids.clone(), secrets.clone());
            async move {
                let mut spec = json!({ "schemaId": "customer",
                    "traits": { "email": format!("user{i}.{run}@bench.example.com"), "name": { "first": format!("User{i}") } } });
                if passwords {
                    let s: Secret = serde_json::from_value(json!({ "metadata": { "name": format!("pw-{i}") },
                        "stringData": { "password": format!("Bench-Password-{i}") } })).map_err(err)?;
                    secrets.create(&PostParams::default(), &s).await.map_err(err)?;
                    spec["credentials"] = json!({ "password": { "secretRef": { "name": format!("pw-{i}"), "key": "password" } } });
                }
                let obj: Identity = serde_json::from_value(json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
                    "metadata": { "name": format!("user-{i}") }, "spec": spec })).map_err(err)?;
                ids.create(&PostParams::default(), &obj).await.map_err(err)?;
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// (k): N status writes by server-side apply at the operator's concurrency.
async fn apiserver_floor(client: &Client, n: usize, tag: &str) -> Result<f64, String> {
    let ns = format!("bench-k-{tag}");
    namespace(client, &ns).await?;
    create_objects(client, &ns, n, false, "k").await?;
    let api: Api<Identity> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let patch = json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity", "status": {
                    "identityId": format!("00000000-0000-0000-0000-{i:012}"), "observedGeneration": 1,
                    "conditions": [{ "type": "Ready", "status": "True", "reason": "Synced", "message": "floor",
                        "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z" }] } });
                api.patch_status(&format!("user-{i}"), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
                    .await
                    .map_err(err)
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

fn metrics(url: &str) -> String {
    ureq::get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

fn metric_sum(text: &str, prefix: &str, filter: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && filter(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const WRITE_OPS: [&str; 9] = [
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

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Default)]
struct OperatorRun {
    a1: f64,
    a2: f64,
    ready: usize,
    rss_mib: f64,
    idle: Option<(u64, u64, u64)>,
    cpu: Vec<(&'static str, f64)>,
    requests: Vec<(String, f64)>,
}

/// CPU seconds (user + system) a process has used so far; 0 when it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    // /proc/<pid>/stat: the fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the line, in clock ticks (100 per second on Linux).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The processes whose CPU time a scenario reports.
fn cpu_snapshot(processes: &[(&'static str, u32)]) -> Vec<(&'static str, f64)> {
    processes
        .iter()
        .map(|(name, pid)| (*name, cpu_seconds(*pid)))
        .collect()
}

/// CPU seconds each process used between two snapshots of the same processes.
fn cpu_used(
    after: &[(&'static str, f64)],
    before: &[(&'static str, f64)],
) -> Vec<(&'static str, f64)> {
    after
        .iter()
        .zip(before)
        .map(|((name, after), (_, before))| (*name, after - before))
        .collect()
}

/// The API server's request counts by verb, resource and subresource (its /metrics).
async fn apiserver_requests(client: &Client) -> std::collections::BTreeMap<String, f64> {
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

/// Waits (at most 30 s) until `processes` together use less than a tenth of a core.
async fn settle(processes: &[(&'static str, u32)]) {
    let total = || cpu_snapshot(processes).iter().map(|(_, s)| s).sum::<f64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = total();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = total();
        if now - before < 0.1 {
            return;
        }
        before = now;
    }
}

#[allow(clippy::too_many_arguments)]
async fn operator_run(
    env: &Environment,
    client: &Client,
    root: &Path,
    binary: &Path,
    n: usize,
    passwords: bool,
    fast: bool,
    tag: &str,
) -> Result<OperatorRun, String> {
    let ns = format!("bench-{tag}");
    namespace(client, &ns).await?;
    create_objects(client, &ns, n, passwords, tag).await?;
    let kratos = fresh_kratos(root, &format!("kratos-{tag}"))?;
    let proxy = proxy(&kratos.admin_url())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(err)?
        .local_addr()
        .map_err(err)?
        .port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let log = std::fs::File::create(root.join(format!("operator-{tag}.log"))).map_err(err)?;
    let kratos_pid = kratos.pid();
    let mut environment: Vec<(&'static str, u32)> = env
        .state
        .processes
        .iter()
        .filter_map(|p| {
            ["kube-apiserver", "etcd", "kube-controller-manager"]
                .into_iter()
                .find(|n| *n == p.name)
                .map(|n| (n, p.pid as u32))
        })
        .collect();
    environment.extend(kratos_pid.map(|pid| ("kratos", pid)));
    // The clock must not start while the environment still digests the objects just created
    // (the garbage collector's graph, the watch cache): wait until it is idle.
    settle(&environment).await;
    let mut child: Child = Command::new(binary)
        .env("KUBECONFIG", &env.state.kubeconfig)
        .env(
            "KRATOS_ADMIN_URL",
            format!("http://127.0.0.1:{}", proxy.port),
        )
        .env("KRATOS_PUBLIC_URL", kratos.public_url())
        .env("WATCH_NAMESPACE", &ns)
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        // The per-object baseline keeps the default 5 minute resync: at 10k objects a short one
        // makes its one-read-per-object resyncs saturate Kratos on their own.
        .env(
            "RESYNC_INTERVAL",
            if fast {
                format!("{}s", RESYNC.as_secs())
            } else {
                "5m".to_string()
            },
        )
        .env("BATCH_CREATES", fast.to_string())
        .env("DRIFT_SWEEPS", fast.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(err)?;
    let mut watched: Vec<(&'static str, u32)> = vec![("operator", child.id())];
    watched.extend(environment);
    let requests_before = apiserver_requests(client).await;
    let cpu_before = cpu_snapshot(&watched);
    let started = Instant::now();
    let cap = if fast {
        Duration::from_secs(3600)
    } else {
        PER_OBJECT_CAP
    };
    let deadline = started + cap;
    let mut a1 = None;
    let mut ready: usize;
    // One line per second: where the time goes (see `timeline-<tag>.tsv` under target/bench).
    let mut timeline = String::from(
        "t\tcreated\tready\treconciles\tstatus_queued\tbatch_requests\tcpu_by_process\n",
    );
    let mut last_line = (Instant::now(), cpu_before.clone());
    let result = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = metrics(&url);
        ready = metric_sum(&text, "kratos_operator_identities_managed", |_| true) as usize;
        let created = metric_sum(&text, "kratos_operator_identity_changes_total", |l| {
            l.contains("action=\"created\"")
        });
        if last_line.0.elapsed() >= Duration::from_secs(1) {
            let now = cpu_snapshot(&watched);
            let interval = last_line.0.elapsed().as_secs_f64();
            let cpu = cpu_used(&now, &last_line.1)
                .iter()
                .map(|(name, used)| format!("{name}={:.2}", used / interval))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                timeline,
                "{:.1}\t{created}\t{ready}\t{}\t{}\t{}\t{cpu}",
                started.elapsed().as_secs_f64(),
                metric_sum(&text, "kratos_operator_reconciles_total", |_| true),
                metric_sum(&text, "kratos_operator_status_writes_queued", |_| true),
                metric_sum(&text, "kratos_client_http_requests_total", |l| {
                    l.contains("operation=\"batch_patch_identities\"")
                }),
            );
            last_line = (Instant::now(), now);
        }
        if a1.is_none() && created >= n as f64 {
            a1 = Some(started.elapsed().as_secs_f64());
        }
        if metric_sum(&text, "kratos_operator_identities_managed", |_| true) >= n as f64 {
            break Ok(started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            if fast {
                break Err(format!("{tag}: not converged after {cap:?}"));
            }
            break Ok(started.elapsed().as_secs_f64());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "{tag}: the operator exited ({status}); see {}",
                root.join(format!("operator-{tag}.log")).display()
            ));
        }
    };
    let cpu = cpu_used(&cpu_snapshot(&watched), &cpu_before);
    let requests_after = apiserver_requests(client).await;
    let _ = std::fs::write(root.join(format!("metrics-{tag}.txt")), metrics(&url));
    let mut requests = Vec::new();
    for (key, after) in &requests_after {
        let delta = after - requests_before.get(key).copied().unwrap_or(0.0);
        if delta >= 1.0 {
            let _ = writeln!(timeline, "# apiserver requests during (a2): {key} {delta}");
            if !key.starts_with("GET ") && !key.starts_with("WATCH ") {
                requests.push((key.clone(), delta));
            }
        }
    }
    let _ = std::fs::write(root.join(format!("timeline-{tag}.tsv")), &timeline);
    let a2 = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = child.kill();
            return Err(e);
        }
    };
    let idle = if fast {
        Some(idle_resync(&url, &proxy).await)
    } else {
        None
    };
    let rss_mib = peak_rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    drop(kratos);
    Ok(OperatorRun {
        a1: a1.unwrap_or(a2),
        a2,
        ready,
        rss_mib,
        idle,
        cpu,
        requests,
    })
}

/// (d): the Kratos traffic of one idle resync: the window from the end of one sweep to the end
/// of the next.
async fn idle_resync(url: &str, proxy: &Proxy) -> (u64, u64, u64) {
    let requests = |t: &str| metric_sum(t, "kratos_client_http_requests_total", |_| true) as u64;
    let writes = |t: &str| {
        metric_sum(t, "kratos_client_http_requests_total", |l| {
            WRITE_OPS
                .iter()
                .any(|op| l.contains(&format!("operation=\"{op}\"")))
        }) as u64
    };
    let sweeps = |t: &str| metric_sum(t, "kratos_operator_drift_sweeps_total", |_| true);
    // From the end of the first sweep after convergence to the end of the next one: exactly one
    // sweep, whatever their timing (the operator counts finished sweeps).
    let next_sweep = || async {
        let before = sweeps(&metrics(url));
        let deadline = Instant::now() + 2 * RESYNC + Duration::from_secs(30);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let text = metrics(url);
            if sweeps(&text) > before || Instant::now() > deadline {
                return text;
            }
        }
    };
    let t0 = next_sweep().await;
    let (r0, w0, b0) = (
        requests(&t0),
        writes(&t0),
        proxy.bytes.load(Ordering::Relaxed),
    );
    let t1 = next_sweep().await;
    (
        requests(&t1) - r0,
        writes(&t1) - w0,
        proxy.bytes.load(Ordering::Relaxed) - b0,
    )
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

/// Runs every scenario and writes the report.
/// Runs every scenario; without `baseline`, (c) is skipped, without `passwords` the scenario
/// with passwords (quicker runs while tuning).
pub fn run(
    sizes: &[usize],
    baseline: bool,
    passwords: bool,
    root_repo: &Path,
) -> Result<Vec<Figures>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(err)?;
    runtime.block_on(run_async(sizes, baseline, passwords, root_repo))
}

async fn run_async(
    sizes: &[usize],
    baseline: bool,
    with_passwords: bool,
    repo: &Path,
) -> Result<Vec<Figures>, String> {
    let root = repo.join("target").join("bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(err)?;
    let binary = repo.join("target").join("release").join("kratos-operator");
    let env_dir = repo.join("target").join("testenv").join("bench");
    let _ = env::down(&env_dir);
    let env = Environment::up(&env_dir).map_err(err)?;
    let client = kube_client(&env).await?;
    install_crds(&client).await?;
    let mut scenarios: Vec<(usize, bool)> = sizes.iter().map(|n| (*n, false)).collect();
    if with_passwords {
        scenarios.push((sizes.first().copied().unwrap_or(1000), true));
    }
    let mut all = Vec::new();
    for (n, passwords) in scenarios {
        let tag = format!("{n}{}", if passwords { "-pw" } else { "" });
        eprintln!("bench: N={n} passwords={passwords}");
        let (b, b_cpu) = kratos_floor(&root, n, passwords).await?;
        eprintln!("bench:   (b) Kratos floor {b:.1}s ({b_cpu:.1} CPU seconds)");
        let k = apiserver_floor(&client, n, &tag).await?;
        eprintln!("bench:   (k) apiserver floor {k:.1}s");
        let fast = operator_run(
            &env,
            &client,
            &root,
            &binary,
            n,
            passwords,
            true,
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
                &binary,
                n,
                passwords,
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
        });
    }
    let _ = env::down(&env_dir);
    Ok(all)
}

/// The markdown report.
pub fn report(figures: &[Figures], command: &str) -> String {
    let mut md = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "Generated by `{command}` on the built-in local environment (kube-apiserver v1.33.13 + etcd, Kratos v1.3.1 on sqlite, \
         2 cores). Each scenario uses a fresh Kratos; the objects exist before the operator (release build) starts, and the clock \
         starts with it. Times in seconds; all figures of a row come from the same run, so compare the ratios, not the absolute \
         times, across machines.\n"
    );
    md.push_str("| N | passwords | (a1) all in Kratos | (a2) all Ready | (b) Kratos floor | (k) apiserver floor | (c) per-object | a1/b | a2/(b+k) | c/a2 | (d) idle resync: requests / writes / bytes | ceil(N/500) + 1 | (e) peak RSS MiB (per-object) |\n");
    md.push_str("|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
    for f in figures {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {:.2} | {} | {} / {} / {} | {} | {:.0} ({:.0}) |",
            f.n,
            if f.passwords { "yes" } else { "no" },
            f.a1,
            f.a2,
            f.b,
            f.k,
            if f.c == 0.0 {
                "not run".to_string()
            } else if f.c_ready < f.n {
                format!(">= {:.0} ({} of {} Ready)", f.c, f.c_ready, f.n)
            } else {
                format!("{:.1}", f.c)
            },
            f.a1 / f.b.max(1e-9),
            f.a2 / (f.b + f.k).max(1e-9),
            if f.c == 0.0 {
                "-".to_string()
            } else if f.c_ready < f.n {
                format!(">= {:.1}", f.c / f.a2.max(1e-9))
            } else {
                format!("{:.1}", f.c / f.a2.max(1e-9))
            },
            f.d_requests,
            f.d_writes,
            f.d_bytes,
            // One page of sessions: the bench's identities have none.
            f.n.div_ceil(500) + 1,
            f.rss_mib,
            f.rss_per_object_mib
        );
    }
    md.push_str(
        "\nTargets at N = 10,000: (a1)/(b) <= 1.5; (a2)/((b)+(k)) <= 1.5; (c)/(a2) >= 5; an idle resync makes at most \
         ceil(N/500) identity list requests plus ceil(S/500) session list requests (S active sessions, at least one request; \
         none here) and no writes; peak RSS <= 200 MiB.\n\n\
         - (a1) time until every identity exists in Kratos (the operator's `identity_changes_total{action=\"created\"}`).\n\
         - (a2) time until every object is Ready (the operator's `identities_managed`).\n\
         - (b) the same N identities imported directly with batch `PATCH /admin/identities` (1000 per request, 200 with passwords).\n\
         - (k) N status writes by server-side apply at the operator's concurrency (128).\n\
         - (c) as (a2) with `BATCH_CREATES=false DRIFT_SWEEPS=false` and the default 5 minute resync: one lookup and one POST per identity, one read per object per resync. It is stopped after 480 s; then the figure is a lower bound and says how many objects were Ready.\n\
         - (d) Kratos HTTP requests, write requests and bytes (both directions, through a counting proxy) during one idle resync: from the end of one drift sweep to the end of the next (`kratos_operator_drift_sweeps_total`), with a 30 s resync interval.\n\
         - (e) VmHWM of the operator process.\n\n![chart](benchmarks.png)\n",
    );
    md.push_str(
        "\n## Where the CPU goes during (a2)\n\nCPU seconds (user + system, from /proc) each process used between the operator's \
         start and the last object becoming Ready; the machine has 2 cores, so the busy share is the sum over 2 x (a2).\n\n\
         | N | passwords | operator | kube-apiserver | etcd | kube-controller-manager | Kratos | sum | busy share | Kratos in (b) |\n|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in figures {
        let of = |name: &str| {
            f.cpu
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |(_, v)| *v)
        };
        let sum: f64 = f.cpu.iter().map(|(_, v)| v).sum();
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.1} |",
            f.n,
            if f.passwords { "yes" } else { "no" },
            of("operator"),
            of("kube-apiserver"),
            of("etcd"),
            of("kube-controller-manager"),
            of("kratos"),
            sum,
            100.0 * sum / (2.0 * f.a2).max(1e-9),
            f.b_cpu
        );
    }
    md.push_str(
        "\n## API server requests during (a2)\n\nFrom the API server's `apiserver_request_total`, \
         taken before the operator starts and when the last object is Ready (GET and WATCH left out). \
         Per new object the operator writes the finalizer (PATCH identities) and the status (APPLY \
         identities/status); its Events wait until the creates are over. The apiserver floor (k) is one \
         write per object.\n\n| N | passwords | requests |\n|---:|:---:|---|\n",
    );
    for f in figures {
        let list = f
            .requests
            .iter()
            .map(|(k, v)| format!("{k}: {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            md,
            "| {} | {} | {list} |",
            f.n,
            if f.passwords { "yes" } else { "no" }
        );
    }
    md
}

/// The PNG chart: per scenario, bars for (a1), (a2), (b), (b)+(k) and (c).
pub fn chart(figures: &[Figures], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .ok_or("no DejaVuSans.ttf for the chart's labels (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "cannot load the font".to_string())?;
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let series = [
        "(a1) in Kratos",
        "(a2) Ready",
        "(b) Kratos floor",
        "(b)+(k) floors",
        "(c) per-object",
    ];
    let colors = [BLUE, GREEN, RGBColor(120, 120, 120), BLACK, RED];
    let max = figures
        .iter()
        .map(|f| f.c.max(f.a2).max(f.b + f.k))
        .fold(1.0, f64::max)
        * 1.1;
    let groups = figures.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "kratos-operator: seconds until N new identities converge",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(groups as f64), 0f64..max)
        .map_err(err)?;
    let labels: Vec<String> = figures
        .iter()
        .map(|f| format!("N={}{}", f.n, if f.passwords { " + passwords" } else { "" }))
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("seconds")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (s, name) in series.iter().enumerate() {
        let color = colors[s];
        let bars: Vec<(f64, f64)> = figures
            .iter()
            .enumerate()
            .map(|(g, f)| {
                let v = match s {
                    0 => f.a1,
                    1 => f.a2,
                    2 => f.b,
                    3 => f.b + f.k,
                    _ => f.c,
                };
                (g as f64 + 0.1 + s as f64 * 0.16, v)
            })
            .collect();
        chart
            .draw_series(
                bars.iter()
                    .map(|(x, v)| Rectangle::new([(*x, 0.0), (*x + 0.14, *v)], color.filled())),
            )
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Where the report goes.
pub fn docs_dir(repo: &Path) -> PathBuf {
    repo.join("docs")
}
