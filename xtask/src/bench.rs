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
    kratos::{Database, KratosInstance, KratosOptions},
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

/// Latencies and restart costs measured with N objects Ready and idle.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// (f) seconds from creating one new Identity to its `Ready=True`, one after the other.
    pub apply_to_ready: Vec<f64>,
    /// (g) seconds from a spec change to Kratos serving the new traits, one after the other.
    pub change_to_kratos: Vec<f64>,
    /// (i) seconds from the restarted operator's start to `/readyz` answering 200.
    pub restart_ready: f64,
    /// (i) seconds from its start to the end of its first drift sweep (everything checked).
    pub restart_settled: f64,
    /// (i) API server requests other than GET and WATCH until settled, by verb and resource.
    pub restart_api_writes: Vec<(String, f64)>,
    /// (i) Kratos requests and write requests until settled.
    pub restart_kratos: (u64, u64),
    /// (h) seconds from a change made directly in Kratos to the operator's revert, with the
    /// default resync interval; the changes are spread over one interval.
    pub drift_to_revert: Vec<f64>,
    /// (h) drift sweeps, Kratos requests and write requests from the first change to the last
    /// revert.
    pub drift_cost: (f64, u64, u64),
}

/// Samples of a latency, sorted.
fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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

fn fresh_kratos(root: &Path, name: &str, database: Database) -> Result<KratosInstance, String> {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let options = KratosOptions {
        database,
        ..KratosOptions::default()
    };
    KratosInstance::start(&dir, &options).map_err(err)
}

/// The CPU seconds of Kratos and its database: Kratos' own, plus (PostgreSQL) the server's and
/// its backends', which do Kratos' SQL work.
fn kratos_cpu(kratos: &KratosInstance) -> f64 {
    kratos.pid().map_or(0.0, cpu_seconds) + kratos.postgres_pid().map_or(0.0, cpu_seconds_tree)
}

/// (b): the same N identities imported directly through the batch endpoint, batch after batch.
async fn kratos_floor(
    root: &Path,
    n: usize,
    passwords: bool,
    database: Database,
    run: usize,
) -> Result<(f64, f64), String> {
    let kratos = fresh_kratos(
        root,
        &format!("floor-{n}-{passwords}-{database}-{run}"),
        database,
    )?;
    let client = kratos_client(&kratos.admin_url(), &kratos.public_url())?;
    let per = if passwords {
        BATCH_PATCH_MAX_CLEARTEXT_PASSWORDS
    } else {
        BATCH_PATCH_MAX_ITEMS
    };
    let items: Vec<BatchPatchItem> = (0..n)
        .map(|i| BatchPatchItem::create(body(i, "floor", passwords), None))
        .collect();
    let cpu_before = kratos_cpu(&kratos);
    let started = Instant::now();
    for chunk in items.chunks(per) {
        let results = client.batch_patch_identities(chunk).await.map_err(err)?;
        if results.iter().any(|r| !r.is_success()) {
            return Err("the Kratos floor batch had failures".into());
        }
    }
    Ok((
        started.elapsed().as_secs_f64(),
        kratos_cpu(&kratos) - cpu_before,
    ))
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

/// The operator's Kratos requests and write requests so far (its /metrics text).
fn kratos_requests(text: &str) -> (u64, u64) {
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
fn api_deltas(
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
fn is_read(key: &str) -> bool {
    key.starts_with("GET ") || key.starts_with("WATCH ")
}

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
    latencies: Option<Latencies>,
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

/// The fields of /proc/<pid>/stat after the parenthesised command name (state is the first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds of a process, of its children that ended (cutime, cstime) and of its living
/// children: PostgreSQL's work is done by backends, one per connection, that live as long as
/// Kratos keeps the connection. Taken twice, the difference counts a backend that ended in
/// between once (its time moves from the living children to cutime).
fn cpu_seconds_tree(pid: u32) -> f64 {
    let ticks = |fields: &[String], from: usize, to: usize| -> f64 {
        fields[from..=to.min(fields.len().saturating_sub(1))]
            .iter()
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>()
            / 100.0
    };
    let Some(own) = stat_fields(pid) else {
        return 0.0;
    };
    let parent = pid.to_string();
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat_fields)
        .filter(|fields| fields.get(1) == Some(&parent))
        .map(|fields| ticks(&fields, 11, 14))
        .sum();
    ticks(&own, 11, 14) + children
}

/// The processes whose CPU time a scenario reports (PostgreSQL with its backends).
fn cpu_snapshot(processes: &[(&'static str, u32)]) -> Vec<(&'static str, f64)> {
    processes
        .iter()
        .map(|(name, pid)| {
            let cpu = if *name == "postgres" {
                cpu_seconds_tree(*pid)
            } else {
                cpu_seconds(*pid)
            };
            (*name, cpu)
        })
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
    database: Database,
    measure_latencies: bool,
    tag: &str,
) -> Result<OperatorRun, String> {
    let ns = format!("bench-{tag}");
    namespace(client, &ns).await?;
    create_objects(client, &ns, n, passwords, tag).await?;
    let kratos = fresh_kratos(root, &format!("kratos-{tag}"), database)?;
    let proxy = proxy(&kratos.admin_url())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(err)?
        .local_addr()
        .map_err(err)?
        .port();
    let url = format!("http://127.0.0.1:{port}/metrics");
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
    environment.extend(kratos.postgres_pid().map(|pid| ("postgres", pid)));
    // The clock must not start while the environment still digests the objects just created
    // (the garbage collector's graph, the watch cache): wait until it is idle.
    settle(&environment).await;
    let spawn = |resync: &str| -> Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join(format!("operator-{tag}.log")))
            .map_err(err)?;
        Command::new(binary)
            .env("KUBECONFIG", &env.state.kubeconfig)
            .env(
                "KRATOS_ADMIN_URL",
                format!("http://127.0.0.1:{}", proxy.port),
            )
            .env("KRATOS_PUBLIC_URL", kratos.public_url())
            .env("WATCH_NAMESPACE", &ns)
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            // The per-object baseline keeps the default 5 minute resync: at 10k objects a short
            // one makes its one-read-per-object resyncs saturate Kratos on their own.
            .env("RESYNC_INTERVAL", resync)
            .env("BATCH_CREATES", fast.to_string())
            .env("DRIFT_SWEEPS", fast.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(err)
    };
    let resync = if fast {
        format!("{}s", RESYNC.as_secs())
    } else {
        DEFAULT_RESYNC.to_string()
    };
    let mut child = spawn(&resync)?;
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
    for (key, delta) in api_deltas(&requests_before, &requests_after) {
        let _ = writeln!(timeline, "# apiserver requests during (a2): {key} {delta}");
        if !is_read(&key) {
            requests.push((key, delta));
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
    let latencies = if measure_latencies {
        let measured = latencies(client, &ns, &kratos, &url, &mut child, |r| spawn(r)).await;
        match measured {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = child.kill();
                return Err(format!("{tag}: latencies: {e}"));
            }
        }
    } else {
        None
    };
    let _ = child.kill();
    let _ = child.wait();
    drop(kratos);
    Ok(OperatorRun {
        latencies,
        a1: a1.unwrap_or(a2),
        a2,
        ready,
        rss_mib,
        idle,
        cpu,
        requests,
    })
}

/// How many samples (f) and (g) take.
const LATENCY_SAMPLES: usize = 100;

/// Whether an Identity's `Ready` condition is `True` for its current generation.
fn ready_now(obj: &Identity) -> bool {
    let generation = obj.metadata.generation;
    obj.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready" && c.status == "True" && c.observed_generation == generation
        })
    })
}

/// (f), (g) and (i), with the N objects of `ns` Ready and the operator `child` idle.
async fn latencies(
    client: &Client,
    ns: &str,
    kratos: &KratosInstance,
    url: &str,
    child: &mut Child,
    spawn: impl Fn(&str) -> Result<Child, String>,
) -> Result<Latencies, String> {
    const POLL: Duration = Duration::from_millis(5);
    const LIMIT: Duration = Duration::from_secs(60);
    let api: Api<Identity> = Api::namespaced(client.clone(), ns);
    let mut out = Latencies::default();
    // (f) one new Identity at a time, from the create to Ready=True.
    for i in 0..LATENCY_SAMPLES {
        let obj: Identity = serde_json::from_value(json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": format!("latency-{i}") },
            "spec": { "schemaId": "customer", "traits": { "email": format!("latency{i}.{ns}@bench.example.com") } } }))
        .map_err(err)?;
        let started = Instant::now();
        api.create(&PostParams::default(), &obj)
            .await
            .map_err(err)?;
        loop {
            if api
                .get(&format!("latency-{i}"))
                .await
                .is_ok_and(|o| ready_now(&o))
            {
                break;
            }
            if started.elapsed() > LIMIT {
                return Err(format!("latency-{i} not Ready after {LIMIT:?}"));
            }
            tokio::time::sleep(POLL).await;
        }
        out.apply_to_ready.push(started.elapsed().as_secs_f64());
    }
    // (g) one spec change at a time, from the patch to Kratos serving it.
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    for i in 0..LATENCY_SAMPLES {
        let name = format!("user-{i}");
        let id = api
            .get(&name)
            .await
            .map_err(err)?
            .status
            .and_then(|s| s.identity_id)
            .ok_or_else(|| format!("{name} has no identity id"))?;
        let first = format!("Changed{i}");
        let patch = json!({ "spec": { "traits": { "name": { "first": first } } } });
        let started = Instant::now();
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err)?;
        let identity_url = format!("{}/admin/identities/{id}", kratos.admin_url());
        loop {
            let served = agent
                .get(&identity_url)
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
                .is_some_and(|v| v["traits"]["name"]["first"] == json!(first));
            if served {
                break;
            }
            if started.elapsed() > LIMIT {
                return Err(format!("{name}'s change not in Kratos after {LIMIT:?}"));
            }
            tokio::time::sleep(POLL).await;
        }
        out.change_to_kratos.push(started.elapsed().as_secs_f64());
    }
    // (i) a restart as a rollout does it: SIGTERM, then a new process.
    let _ = nix_term(child.id());
    let _ = child.wait();
    let requests_before = apiserver_requests(client).await;
    let started = Instant::now();
    *child = spawn(&format!("{}s", RESYNC.as_secs()))?;
    let readyz = url.replace("/metrics", "/readyz");
    loop {
        if ureq::get(&readyz).call().is_ok_and(|r| r.status() == 200) {
            break;
        }
        if started.elapsed() > LIMIT {
            return Err(format!("the restarted operator not ready after {LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.restart_ready = started.elapsed().as_secs_f64();
    let text = until_sweeps(url, 1.0).await;
    out.restart_settled = started.elapsed().as_secs_f64();
    out.restart_kratos = kratos_requests(&text);
    let requests_after = apiserver_requests(client).await;
    out.restart_api_writes = api_deltas(&requests_before, &requests_after)
        .into_iter()
        .filter(|(key, _)| !is_read(key))
        .collect();
    // (h) as users run it: the default resync interval.
    let _ = nix_term(child.id());
    let _ = child.wait();
    *child = spawn(DEFAULT_RESYNC)?;
    let (samples, cost) = drift(&agent, kratos, &api, url).await?;
    out.drift_to_revert = samples;
    out.drift_cost = cost;
    Ok(out)
}

/// The default resync interval (`--resync-interval`).
const DEFAULT_RESYNC: &str = "5m";
/// (h): changes made directly in Kratos, spread evenly over one default resync interval.
const DRIFT_SAMPLES: usize = 60;

/// (h): once the operator (just started with the default resync interval) has settled, changes
/// one identity directly in Kratos every interval / [`DRIFT_SAMPLES`], then waits until the
/// operator has put every one back. Returns each change's time to its revert, and the drift
/// sweeps, Kratos requests and writes the operator made from the first change to the last revert.
async fn drift(
    agent: &ureq::Agent,
    kratos: &KratosInstance,
    api: &Api<Identity>,
    url: &str,
) -> Result<(Vec<f64>, (f64, u64, u64)), String> {
    const INTERVAL: Duration = Duration::from_secs(300);
    let readyz = url.replace("/metrics", "/readyz");
    let started = Instant::now();
    while !ureq::get(&readyz).call().is_ok_and(|r| r.status() == 200) {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the operator for (h) not ready after 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its start-up reconciles are over when its Kratos requests stop growing.
    let mut last = kratos_requests(&metrics(url)).0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = kratos_requests(&metrics(url)).0;
        if now == last {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            return Err("the operator for (h) still busy after 180 s".into());
        }
        last = now;
    }
    let before = metrics(url);
    // Objects (g) left alone: their spec is what the bench created.
    let mut targets = Vec::new();
    for i in 0..DRIFT_SAMPLES {
        let name = format!("user-{}", 1000 + i);
        let obj = api.get(&name).await.map_err(err)?;
        let id = obj
            .status
            .and_then(|s| s.identity_id)
            .ok_or_else(|| format!("{name} has no identity id"))?;
        targets.push(format!("{}/admin/identities/{id}", kratos.admin_url()));
    }
    let drifted = |v: &serde_json::Value| v["traits"]["name"]["last"] == json!("Drifted");
    let patch = json!([{ "op": "add", "path": "/traits/name/last", "value": "Drifted" }]);
    let step = INTERVAL / DRIFT_SAMPLES as u32;
    let mut changed_at: Vec<Instant> = Vec::new();
    let mut reverted: Vec<Option<f64>> = vec![None; DRIFT_SAMPLES];
    let check = |target: &str| -> Option<bool> {
        agent
            .get(target)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
            .map(|v| drifted(&v))
    };
    let deadline = Instant::now() + 3 * INTERVAL;
    let mut next_change = Instant::now();
    loop {
        if changed_at.len() < DRIFT_SAMPLES && Instant::now() >= next_change {
            let target = &targets[changed_at.len()];
            agent
                .patch(target)
                .header("Content-Type", "application/json")
                .send_json(&patch)
                .map_err(|e| format!("changing {target} in Kratos: {e}"))?;
            changed_at.push(Instant::now());
            next_change += step;
        }
        for (i, at) in changed_at.iter().enumerate() {
            if reverted[i].is_none() && check(&targets[i]) == Some(false) {
                reverted[i] = Some(at.elapsed().as_secs_f64());
            }
        }
        if changed_at.len() == DRIFT_SAMPLES && reverted.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "(h): {} of {DRIFT_SAMPLES} changes not reverted after {:?}",
                reverted.iter().filter(|r| r.is_none()).count(),
                3 * INTERVAL
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = metrics(url);
    let (requests_before, writes_before) = kratos_requests(&before);
    let (requests_after, writes_after) = kratos_requests(&after);
    let mut samples: Vec<f64> = reverted.into_iter().flatten().collect();
    samples.sort_by(f64::total_cmp);
    Ok((
        samples,
        (
            sweeps(&after) - sweeps(&before),
            requests_after - requests_before,
            writes_after - writes_before,
        ),
    ))
}

/// SIGTERM to a process (the operator shuts down as a pod stop asks it to).
fn nix_term(pid: u32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill exited with {status}")))
    }
}

/// (d): the Kratos traffic of one idle resync: the window from the end of one sweep to the end
/// of the next.
async fn idle_resync(url: &str, proxy: &Proxy) -> (u64, u64, u64) {
    // From the end of the first sweep after convergence to the end of the next one: exactly one
    // sweep, whatever their timing (the operator counts finished sweeps).
    let next_sweep = || async { until_sweeps(url, sweeps(&metrics(url)) + 1.0).await };
    let t0 = next_sweep().await;
    let ((r0, w0), b0) = (kratos_requests(&t0), proxy.bytes.load(Ordering::Relaxed));
    let t1 = next_sweep().await;
    let (r1, w1) = kratos_requests(&t1);
    (r1 - r0, w1 - w0, proxy.bytes.load(Ordering::Relaxed) - b0)
}

/// The drift sweeps the operator has finished (its /metrics text).
fn sweeps(text: &str) -> f64 {
    metric_sum(text, "kratos_operator_drift_sweeps_total", |_| true)
}

/// Waits until the operator has finished `at_least` drift sweeps (at most two resync intervals
/// and 30 s) and returns its /metrics text then.
async fn until_sweeps(url: &str, at_least: f64) -> String {
    let deadline = Instant::now() + 2 * RESYNC + Duration::from_secs(30);
    loop {
        let text = metrics(url);
        if sweeps(&text) >= at_least || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Whether the API server serves `admissionregistration.k8s.io/v1` MutatingAdmissionPolicy.
async fn serves_mutating_admission_policies(client: &Client) -> Result<bool, String> {
    match client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
    {
        Ok(list) => Ok(list
            .resources
            .iter()
            .any(|r| r.name == "mutatingadmissionpolicies")),
        Err(e) => Err(format!("discovering admissionregistration.k8s.io/v1: {e}")),
    }
}

/// Installs (`on`) or removes the chart's finalizer policy, rendered from the chart as users get
/// it, and waits until a server-side dry-run create of an Identity shows it in effect (or gone).
async fn finalizer_policy(env: &Environment, repo: &Path, on: bool) -> Result<(), String> {
    let helm = kratos_operator_testenv::build::HELM
        .binary("helm")
        .map_err(err)?;
    let chart = repo.join("charts").join("kratos-operator");
    let out = std::process::Command::new(helm)
        .args(["template", "bench"])
        .arg(&chart)
        .args([
            "--show-only",
            "templates/admission-policies.yaml",
            "--set",
            "kratos.adminUrl=http://127.0.0.1:4434,tenancy.enforce=false,admissionPolicies.operatorSecrets=false",
            "--kube-version",
            kratos_operator_testenv::versions::KUBERNETES,
            "--api-versions",
            "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
        ])
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(format!(
            "rendering the finalizer policy: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let manifests = String::from_utf8_lossy(&out.stdout).into_owned();
    if on {
        super::kubectl(
            env,
            &["apply", "--server-side", "-f", "-"],
            Some(&manifests),
        )?;
    } else {
        super::kubectl(
            env,
            &["delete", "--ignore-not-found", "-f", "-"],
            Some(&manifests),
        )?;
    }
    let probe = json!({
        "apiVersion": "kratos-operator.dev/v1alpha1",
        "kind": "Identity",
        "metadata": { "name": "finalizer-probe", "namespace": "default" },
        "spec": { "schemaId": "customer", "traits": { "email": "probe@bench.test" } }
    })
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let created = super::kubectl(
            env,
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&probe),
        )?;
        let has = created.contains(kratos_operator::api::FINALIZER);
        if has == on {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the finalizer policy is not {} after 60 s",
                if on { "in effect" } else { "gone" }
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A scenario's name in tables: N, passwords, database and run.
fn scenario_cells(f: &Figures) -> String {
    format!(
        "{} | {} | {} | {} | {}",
        f.n,
        if f.passwords { "yes" } else { "no" },
        f.database,
        f.finalizer,
        f.run
    )
}

/// The markdown report.
pub fn report(figures: &[Figures], command: &str) -> String {
    let mut md = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "Generated by `{command}` on the built-in local environment (kube-apiserver {kube} + etcd, Kratos {kratos} on \
         PostgreSQL {pg} unless the row says sqlite; 2 cores). Each scenario uses a fresh Kratos with a fresh database; the \
         objects exist before the operator (the binary the image ships and the test node runs: the static release build of `cargo xtask image` and of the \
         Dockerfile, glibc with crt-static, glibc's allocator) \
         starts, and the clock starts with it. Times in seconds; all figures of a row come from the same run, so compare the \
         ratios, not the absolute times, across machines.\n",
        kube = kratos_operator_testenv::versions::KUBERNETES,
        kratos = kratos_operator_testenv::versions::KRATOS,
        pg = postgres_version()
    );
    md.push_str("| N | passwords | database | finalizer | run | (a1) all in Kratos | (a2) all Ready | (b) Kratos floor | (k) apiserver floor | (c) per-object | a1/b | a2/(b+k) | c/a2 | (d) idle resync: requests / writes / bytes | ceil(N/500) + 1 | (e) peak RSS MiB (per-object) |\n");
    md.push_str(
        "|---:|:---:|:---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for f in figures {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {:.2} | {} | {} / {} / {} | {} | {} |",
            scenario_cells(f),
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
            if f.rss_per_object_mib > 0.0 {
                format!("{:.0} ({:.0})", f.rss_mib, f.rss_per_object_mib)
            } else {
                format!("{:.0}", f.rss_mib)
            }
        );
    }
    md.push_str(&medians(figures));
    for f in figures {
        if let Some(l) = &f.latencies {
            md.push_str(&latency_report(f.n, l));
        }
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
         PostgreSQL counts its server and backends (the SQL work Kratos asks for).\n\n\
         | N | passwords | database | finalizer | run | operator | kube-apiserver | etcd | kube-controller-manager | Kratos | PostgreSQL | sum | busy share | Kratos (+ PostgreSQL) in (b) |\n|---:|:---:|:---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
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
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.1} |",
            scenario_cells(f),
            of("operator"),
            of("kube-apiserver"),
            of("etcd"),
            of("kube-controller-manager"),
            of("kratos"),
            of("postgres"),
            sum,
            100.0 * sum / (2.0 * f.a2).max(1e-9),
            f.b_cpu
        );
    }
    md.push_str(
        "\n## API server requests during (a2)\n\nFrom the API server's `apiserver_request_total`, \
         taken before the operator starts and when the last object is Ready (GET and WATCH left out). \
         Per new object the operator writes the finalizer (PATCH identities; not where the chart's \
         MutatingAdmissionPolicy set it at admission, the `admission` rows) and the status (APPLY \
         identities/status); its Events wait until the creates are over. The apiserver floor (k) is one \
         write per object.\n\n| N | passwords | database | finalizer | run | requests |\n|---:|:---:|:---:|:---:|---:|---|\n",
    );
    for f in figures {
        let list = f
            .requests
            .iter()
            .map(|(k, v)| format!("{k}: {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(md, "| {} | {list} |", scenario_cells(f));
    }
    md
}

/// The medians of the repeated scenarios (same N, passwords and database, more than one run).
fn medians(figures: &[Figures]) -> String {
    let mut md = String::new();
    let mut seen = Vec::new();
    for f in figures {
        let key = (f.n, f.passwords, f.database, f.finalizer);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let runs: Vec<&Figures> = figures
            .iter()
            .filter(|g| (g.n, g.passwords, g.database, g.finalizer) == key)
            .collect();
        if runs.len() < 2 {
            continue;
        }
        let of = |v: fn(&Figures) -> f64| median(runs.iter().map(|g| v(g)).collect());
        let _ = writeln!(
            md,
            "\nMedian of {} runs at N = {} ({}, finalizer by {}{}): (a1) {:.1} s, (a2) {:.1} s, (b) {:.1} s, (k) {:.1} s; \
             a1/b {:.2}, a2/(b+k) {:.2} (the median of each run's ratio).",
            runs.len(),
            f.n,
            f.database,
            f.finalizer,
            if f.passwords { ", passwords" } else { "" },
            of(|g| g.a1),
            of(|g| g.a2),
            of(|g| g.b),
            of(|g| g.k),
            of(|g| g.a1 / g.b.max(1e-9)),
            of(|g| g.a2 / (g.b + g.k).max(1e-9)),
        );
    }
    md
}

/// The section on (f), (g) and (i).
fn latency_report(n: usize, l: &Latencies) -> String {
    let mut md = format!(
        "\n## What users feel, with {n} objects managed and idle\n\n\
         The operator of the first {n}-object run on PostgreSQL, once all were Ready and one idle resync had passed. \
         Each sample waits for the one before it. Milliseconds.\n\n\
         | | p50 | p99 | max | samples | goal |\n|---|---:|---:|---:|---:|---|\n"
    );
    let ms = |v: f64| format!("{:.0}", v * 1000.0);
    for (name, samples, goal) in [
        (
            "(f) create of a new Identity until `Ready=True`",
            &l.apply_to_ready,
            "p50 < 300",
        ),
        (
            "(g) spec change until Kratos serves it",
            &l.change_to_kratos,
            "",
        ),
        (
            "(h) change made in Kratos until the operator reverts it (default 5 minute resync)",
            &l.drift_to_revert,
            "at most one interval and a sweep",
        ),
    ] {
        let max = samples.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {goal} |",
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 99.0)),
            ms(max),
            samples.len()
        );
    }
    let writes = if l.restart_api_writes.is_empty() {
        "none".to_string()
    } else {
        l.restart_api_writes
            .iter()
            .map(|(k, v)| format!("{k}: {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        md,
        "\n(i) Restart (SIGTERM, then a new process) with {n} Ready objects: `/readyz` answered 200 after {:.1} s (caches \
         synced: ready to act); its first drift sweep, which checks every object against Kratos, ended after {:.1} s. \
         Until then it sent Kratos {} requests, {} of them writes (goal: none); the API server served these requests \
         other than GET and WATCH (goal: no write by the operator; PUT leases are the API server's own identity Lease, \
         renewed every 10 s, as the bench runs the operator without leader election): {writes}.\n",
        l.restart_ready, l.restart_settled, l.restart_kratos.0, l.restart_kratos.1
    );
    let (sweeps, requests, writes) = l.drift_cost;
    let _ = writeln!(
        md,
        "\n(h) The operator restarted with the default resync interval (5 minutes) and settled; then one identity was \
         changed directly in Kratos every {:.0} s ({} in all, a trait each), and each change timed until Kratos served \
         the spec's value again. From the first change to the last revert the operator made {sweeps:.0} drift sweeps and \
         sent Kratos {requests} requests, {writes} of them writes: a sweep lists every identity (ceil(N/500) pages) and \
         reconciles only the objects that differ.\n",
        300.0 / DRIFT_SAMPLES as f64,
        l.drift_to_revert.len(),
    );
    md
}

/// The version the environment's PostgreSQL server reports (`postgres --version`).
fn postgres_version() -> String {
    kratos_operator_testenv::postgres::bin_dir()
        .ok()
        .and_then(|bin| {
            Command::new(bin.join("postgres"))
                .arg("--version")
                .output()
                .ok()
        })
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "(unknown version)".into())
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
    let root = BitMapBackend::new(path, (1300, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let series = [
        "(a1) in Kratos",
        "(a2) Ready",
        "(b) Kratos floor",
        "(b)+(k) floors",
        "(c) per-object",
    ];
    let colors = [BLUE, GREEN, RGBColor(120, 120, 120), BLACK, RED];
    // A log scale: the per-object baseline runs for minutes, the floors for seconds.
    const FLOOR: f64 = 0.5;
    let max = figures
        .iter()
        .map(|f| f.c.max(f.a2).max(f.b + f.k))
        .fold(1.0, f64::max)
        * 2.0;
    let groups = figures.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "kratos-operator: seconds until N new identities converge (log scale; \u{2265}: a lower bound, stopped at the cap)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(groups as f64), (FLOOR..max).log_scale())
        .map_err(err)?;
    let mixed_finalizers = figures.iter().any(|f| f.finalizer == Finalizer::Admission);
    let labels: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "N={}{}{}{}{}",
                f.n,
                if f.passwords { " + passwords" } else { "" },
                if f.database == Database::Sqlite {
                    " sqlite"
                } else {
                    ""
                },
                if f.finalizer == Finalizer::Operator && mixed_finalizers {
                    " op. finalizer"
                } else {
                    ""
                },
                if f.run > 1 {
                    format!(" #{}", f.run)
                } else {
                    String::new()
                }
            )
        })
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
        .y_desc("seconds (log scale)")
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
            .draw_series(bars.iter().filter(|(_, v)| *v > 0.0).map(|(x, v)| {
                Rectangle::new([(*x, FLOOR), (*x + 0.14, v.max(FLOOR))], color.filled())
            }))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    // Lower bounds (the per-object baseline stopped at its cap) say so above their bar.
    chart
        .draw_series(
            figures
                .iter()
                .enumerate()
                .filter(|(_, f)| f.c > 0.0 && f.c_ready < f.n)
                .map(|(g, f)| {
                    Text::new(
                        format!("\u{2265}{:.0}", f.c),
                        (g as f64 + 0.1 + 4.0 * 0.16 - 0.04, f.c * 1.15),
                        ("sans-serif", 14).into_font().color(&RED),
                    )
                }),
        )
        .map_err(err)?;
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

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn the_chart_draws_every_scenario_on_a_log_scale_with_lower_bounds() {
        let figure = |n, c, c_ready| Figures {
            n,
            a1: 3.0,
            a2: 4.5,
            b: 1.7,
            k: 1.4,
            c,
            c_ready,
            ..Figures::default()
        };
        let figures = [
            figure(1000, 128.9, 1000),
            figure(10000, 480.0, 1510),
            figure(10000, 0.0, 0),
        ];
        let dir = kratos_operator_testenv::repo_root()
            .join("target")
            .join("chart-test");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("benchmarks.png");
        chart(&figures, &path).expect("chart");
        let png = std::fs::read(&path).expect("png");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        assert!(png.len() > 10_000, "an empty chart ({} bytes)", png.len());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn repeated_scenarios_report_the_median_of_each_ratio() {
        let run = |run, a1, b| Figures {
            n: 10000,
            run,
            a1,
            a2: a1 + 10.0,
            b,
            k: 10.0,
            ..Figures::default()
        };
        let md = medians(&[run(1, 30.0, 20.0), run(2, 60.0, 20.0), run(3, 40.0, 20.0)]);
        assert!(
            md.contains("Median of 3 runs at N = 10000 (postgres, finalizer by operator)"),
            "{md}"
        );
        assert!(md.contains("a1/b 2.00"), "{md}");
        assert!(medians(&[run(1, 30.0, 20.0)]).is_empty());
    }
}
