//! Fault injection with 200+ identities in flight, against the real control plane and a real
//! (private) Kratos, so that Kratos' contents can be compared exactly with the manifests:
//!
//! - the operator process killed with SIGKILL at random moments of mass create, update and
//!   delete, and restarted, 20 times, while busy threads hog every core;
//! - Kratos stopped and restarted mid-sync;
//! - the kube-apiserver restarted (a private control plane);
//! - Kratos answering 429 with `x-ratelimit-reset`, then 503, for a while (a proxy in the test);
//! - a create that Kratos commits only after the operator stopped waiting for it (killed, or
//!   timed out), while the object is deleted or its email changes (issue 26).
//!
//! After each, Kratos must equal the manifests: every object Ready with its identity, traits
//! equal, exactly one Kratos identity per email, no owned identity without its object, no lost
//! deletion. `KRATOS_OPERATOR_SOAK=1` makes the SIGKILL test a long soak (more objects, more
//! rounds); `KRATOS_OPERATOR_FAULT_SEED` replays a run; `KRATOS_OPERATOR_FAULT_KEEP=1` keeps the
//! operator's log and the private Kratos' directory, `KRATOS_OPERATOR_FAULT_LOG` sets the killed
//! operator's `RUST_LOG`. `KRATOS_OPERATOR_FAULT_RUNS=N` repeats the SIGKILL test with N seeds
//! (each printed, to be replayed alone); `KRATOS_OPERATOR_FAULT_HOG=0` runs it without the CPU
//! hog. The hog runs alone: the other tests of this binary, which `cargo test` runs in parallel
//! threads, wait for it to end, and it for them (see [`TIMING`]).

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    num::NonZero,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::http::Method;
use futures::{StreamExt, TryStreamExt};
use kratos_operator::{
    api::{Identity, UID_MARKER},
    controller::json,
    kratos::{Identity as KratosIdentity, KratosClient},
};
use kratos_operator_testenv::{
    Environment,
    kratos::{KratosInstance, KratosOptions, schemas},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IteratorRandom};
use serde_json::{Value, json};
use support::{
    TestEnv, eventually, kratos_client,
    proxy::{Answer, Fault, Forwarded, Gate, KratosProxy, Request, Seen},
    setup, start_operator_with, test_settings,
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn manifest(schema: &str, name: &str, traits: &Value) -> Value {
    json!({
        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
        "metadata": { "name": name },
        "spec": { "schemaId": schema, "traits": traits }
    })
}

fn traits(t: &TestEnv, name: &str, first: &str) -> Value {
    json!({ "email": t.email(name), "name": { "first": first } })
}

fn identities(t: &TestEnv) -> Api<Identity> {
    Api::namespaced(t.client.clone(), &t.namespace)
}

/// Applies many manifests, 16 at a time.
async fn apply_all(t: &TestEnv, objects: &BTreeMap<String, Value>) {
    apply_all_as(t, "customer", objects).await;
}

/// [`apply_all`] with another schema.
async fn apply_all_as(t: &TestEnv, schema: &str, objects: &BTreeMap<String, Value>) {
    let owned: Vec<(String, Value)> = objects.clone().into_iter().collect();
    futures::stream::iter(owned)
        .map(|(name, traits)| async move {
            support::apply::<Identity>(t, manifest(schema, &name, &traits)).await;
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

async fn delete(t: &TestEnv, name: &str) {
    match identities(t).delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete {name}: {e}"),
    }
}

/// A private Kratos (its own database, which survives restarts) in a directory of the test's own.
async fn private_kratos(t: &TestEnv) -> (KratosInstance, PathBuf) {
    support::private_kratos(t, KratosOptions::default()).await
}

async fn drop_kratos(instance: KratosInstance, dir: PathBuf) {
    support::drop_kratos(instance, dir, keep()).await;
}

/// `KRATOS_OPERATOR_FAULT_KEEP=1` keeps the private Kratos' directory and the operator's log.
fn keep() -> bool {
    std::env::var_os("KRATOS_OPERATOR_FAULT_KEEP").is_some()
}

fn ready_reason(obj: &Identity) -> Option<(String, String)> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn is_synced(obj: &Identity) -> bool {
    let status = obj.status.as_ref();
    ready_reason(obj) == Some(("True".into(), "Synced".into()))
        && status.is_some_and(|s| s.observed_generation == obj.metadata.generation)
        && status.is_some_and(|s| s.identity_id.is_some())
}

/// Waits until exactly the `expected` objects exist, each Synced for its current generation with
/// the expected traits in its spec; returns them.
async fn wait_converged(
    t: &TestEnv,
    expected: &BTreeMap<String, Value>,
    timeout: Duration,
) -> Vec<Identity> {
    let api = identities(t);
    let mut last = String::new();
    let deadline = Instant::now() + timeout;
    loop {
        let list = api.list(&ListParams::default()).await;
        if let Ok(list) = list {
            let names: BTreeSet<String> = list.items.iter().map(ResourceExt::name_any).collect();
            let missing: Vec<&String> = expected.keys().filter(|n| !names.contains(*n)).collect();
            let extra: Vec<&String> = names
                .iter()
                .filter(|n| !expected.contains_key(*n))
                .collect();
            let not_synced: Vec<String> = list
                .items
                .iter()
                .filter(|o| !is_synced(o))
                .map(|o| format!("{}={:?}", o.name_any(), ready_reason(o)))
                .collect();
            let spec_differs = list
                .items
                .iter()
                .filter(|o| {
                    expected
                        .get(&o.name_any())
                        .is_some_and(|want| !json::equal(want, &o.spec.traits))
                })
                .count();
            if missing.is_empty() && extra.is_empty() && not_synced.is_empty() && spec_differs == 0
            {
                return list.items;
            }
            last = format!(
                "missing {missing:?}, still present {extra:?}, not synced ({}) {:?}, spec differs {spec_differs}",
                not_synced.len(),
                not_synced.iter().take(8).collect::<Vec<_>>()
            );
        }
        assert!(
            Instant::now() < deadline,
            "not converged after {timeout:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn all_kratos_identities(kratos: &KratosClient) -> Vec<KratosIdentity> {
    kratos
        .list_identities(Default::default())
        .try_collect()
        .await
        .expect("list Kratos identities")
}

/// The number of Kratos identities per email (lowercase) among `all`.
fn per_email(all: &[KratosIdentity]) -> BTreeMap<String, usize> {
    let mut per_email: BTreeMap<String, usize> = BTreeMap::new();
    for k in all {
        let e = k.traits["email"].as_str().unwrap_or("").to_lowercase();
        *per_email.entry(e).or_default() += 1;
    }
    per_email
}

/// The emails that more than one of `all` carries, with how many carry each.
fn duplicates(all: &[KratosIdentity]) -> Vec<(String, usize)> {
    per_email(all).into_iter().filter(|(_, n)| *n > 1).collect()
}

/// The object uid in a Kratos identity's owner marker.
fn marker(k: &KratosIdentity) -> Option<&str> {
    k.metadata_admin.as_ref()?.get(UID_MARKER)?.as_str()
}

/// The identities of `all` whose owner marker names none of `objects`, as `id (email)`.
fn orphans(all: &[KratosIdentity], objects: &[Identity]) -> Vec<String> {
    let uids: BTreeSet<String> = objects.iter().filter_map(ResourceExt::uid).collect();
    all.iter()
        .filter_map(|k| {
            let uid = marker(k)?;
            (!uids.contains(uid)).then(|| format!("{} ({})", k.id, k.traits["email"]))
        })
        .collect()
}

/// Kratos (private, so nothing else is in it) holds exactly one identity per object, owned by
/// it, with its traits; and none of the deleted emails.
async fn assert_kratos_equals_manifests(
    kratos: &KratosClient,
    objects: &[Identity],
    deleted_emails: &BTreeSet<String>,
) {
    let all = all_kratos_identities(kratos).await;
    let by_id: HashMap<&str, &KratosIdentity> = all.iter().map(|k| (k.id.as_str(), k)).collect();
    let per_email = per_email(&all);
    let duplicates = duplicates(&all);
    assert!(
        duplicates.is_empty(),
        "duplicate Kratos identities: {duplicates:?}"
    );
    let orphans = orphans(&all, objects);
    assert!(
        orphans.is_empty(),
        "Kratos identities owned by no existing object: {orphans:?}"
    );
    let lost: Vec<&String> = deleted_emails
        .iter()
        .filter(|e| per_email.contains_key(&e.to_lowercase()))
        .collect();
    assert!(lost.is_empty(), "deletions lost in Kratos: {lost:?}");
    for obj in objects {
        let id = obj
            .status
            .as_ref()
            .and_then(|s| s.identity_id.clone())
            .unwrap();
        let k = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{}: Kratos has no identity {id}", obj.name_any()));
        assert!(
            json::equal(&k.traits, &obj.spec.traits),
            "{}: Kratos traits {} differ from the spec {}",
            obj.name_any(),
            k.traits,
            obj.spec.traits
        );
        assert_eq!(
            k.metadata_admin.as_ref().and_then(|m| m.get(UID_MARKER)),
            Some(&json!(obj.uid().unwrap())),
            "{}",
            obj.name_any()
        );
    }
    assert_eq!(
        all.len(),
        objects.len(),
        "Kratos holds exactly one identity per object"
    );
}

/// Deletes every Identity of the namespace and waits until they are gone and Kratos is empty
/// (the operator must still run).
async fn delete_all_and_wait(t: &TestEnv, kratos: &KratosClient, timeout: Duration) {
    identities(t)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete all identities");
    support::wait_all_gone(&identities(t), timeout).await;
    let left = all_kratos_identities(kratos).await;
    assert!(
        left.is_empty(),
        "{} Kratos identities left after every object was deleted",
        left.len()
    );
}

/// Follows every status change of the namespace's Identities through a watch (not samples of
/// it) and keeps the peak number of objects whose Ready reason was `reason` at once, until the
/// returned task is aborted. Returns once the watch has listed the objects, so that nothing after
/// the call is missed: statuses are written in the background, and a transient one may come and
/// go between two polls, or after a polling window.
async fn follow_reason_peak(
    t: &TestEnv,
    reason: &'static str,
) -> (Arc<Mutex<usize>>, tokio::task::JoinHandle<()>) {
    use kube::runtime::{WatchStreamExt, watcher};
    let api = identities(t);
    let peak = Arc::new(Mutex::new(0usize));
    let (listed, was_listed) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let peak = peak.clone();
        async move {
            let mut listed = Some(listed);
            let mut with_reason: BTreeMap<String, bool> = BTreeMap::new();
            let events = watcher(api, watcher::Config::default()).default_backoff();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        let has = ready_reason(&o).is_some_and(|(_, r)| r == reason);
                        with_reason.insert(o.name_any(), has);
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        with_reason.remove(&o.name_any());
                    }
                    Ok(watcher::Event::Init) => with_reason.clear(),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                    }
                    Err(_) => {}
                }
                let now = with_reason.values().filter(|has| **has).count();
                let mut p = peak.lock().unwrap();
                *p = (*p).max(now);
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), was_listed)
        .await
        .expect("the watch of the Identities to list them in time")
        .expect("the watch task");
    (peak, task)
}

fn count_with_reason(objects: &[Identity], reason: &str) -> usize {
    objects
        .iter()
        .filter(|o| ready_reason(o).is_some_and(|(_, r)| r == reason))
        .count()
}

fn seed() -> u64 {
    std::env::var("KRATOS_OPERATOR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        })
}

/// `KRATOS_OPERATOR_FAULT_RUNS=N` repeats the SIGKILL scenario N times (default once).
fn runs() -> usize {
    std::env::var("KRATOS_OPERATOR_FAULT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The seeds of `n` runs: `first`, then seeds drawn from it, so that a run of N is replayed from
/// its first seed, and each run alone from its own.
fn seeds(first: u64, n: usize) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(first);
    std::iter::once(first)
        .chain(std::iter::repeat_with(|| rng.random()))
        .take(n)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Load: a CPU hog, and the lock that keeps it away from the tests that measure time

/// The tests of this binary run at once, in parallel threads (`cargo test` runs as many as there
/// are cores; `cargo xtask test` does not limit them). A run of the SIGKILL scenario with its CPU
/// hog holds this exclusively; every other test shares it, so that no hog runs while a test
/// measures time (delays, request rates, the window of a held create).
static TIMING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Waits until no CPU hog runs and keeps any from starting until the guard is dropped.
async fn no_hog() -> tokio::sync::RwLockReadGuard<'static, ()> {
    TIMING.read().await
}

/// `KRATOS_OPERATOR_FAULT_HOG=0` runs the SIGKILL scenario without its CPU hog.
fn hog_wanted() -> bool {
    std::env::var("KRATOS_OPERATOR_FAULT_HOG").map_or(true, |v| v != "0")
}

/// Busy OS threads, one per core, until dropped (a panic included): the kills land while the
/// operator, Kratos and the API server compete for the CPU, as on a loaded node, where each
/// request takes longer and more are in flight at a kill.
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(1, NonZero::get);
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) + 1);
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// How many threads it busies.
    fn threads(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL of the operator process

/// The operator binary, as in production (own process, env configuration), logging into `log`.
struct OperatorProcess {
    child: Child,
}

impl OperatorProcess {
    /// Starts the binary with the test's environment and `vars` (a variable of both takes its
    /// value from `vars`).
    fn spawn_with(
        t: &TestEnv,
        admin: &str,
        public: &str,
        log: &Path,
        vars: &[(&str, &str)],
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kratos-operator"))
            .env("KUBECONFIG", &t.env.state.kubeconfig)
            .env("KRATOS_ADMIN_URL", admin)
            .env("KRATOS_PUBLIC_URL", public)
            .env("WATCH_NAMESPACE", &t.namespace)
            .env("RESYNC_INTERVAL", "2s")
            .env("MAX_CONCURRENT_RECONCILES", "16")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("LEADER_ELECT", "false")
            .env("POD_NAME", format!("fault-{}", std::process::id()))
            .env(
                "RUST_LOG",
                std::env::var("KRATOS_OPERATOR_FAULT_LOG")
                    .unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the operator binary");
        Self { child }
    }

    /// SIGKILL: no shutdown, no cleanup, requests in flight are cut.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Random spec updates, deletions and creations; `live` and `deleted` follow.
#[allow(clippy::too_many_arguments)]
async fn mutate(
    t: &TestEnv,
    schema: &str,
    rng: &mut StdRng,
    round: usize,
    when: &str,
    live: &mut BTreeMap<String, Value>,
    deleted: &mut BTreeSet<String>,
    counts: &mut (usize, usize, usize),
) {
    let updates: Vec<String> = live.keys().cloned().choose_multiple(rng, 6);
    let mut changed = BTreeMap::new();
    for name in updates {
        let t2 = traits(t, &name, &format!("{when}-{round}"));
        live.insert(name.clone(), t2.clone());
        changed.insert(name, t2);
    }
    for k in 0..4 {
        let name = format!("n{round:02}-{when}-{k}");
        let t2 = traits(t, &name, "new");
        live.insert(name.clone(), t2.clone());
        changed.insert(name, t2);
    }
    apply_all_as(t, schema, &changed).await;
    counts.0 += 4;
    counts.1 += 6;
    let doomed: Vec<String> = live.keys().cloned().choose_multiple(rng, 3);
    for name in doomed {
        delete(t, &name).await;
        live.remove(&name);
        deleted.insert(t.email(&name));
        counts.2 += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_killed_with_sigkill_20_times_loses_nothing() {
    sigkill_scenario(schemas::CUSTOMER).await;
}

/// The same against a schema without identifier traits: no create conflict finds an identity
/// created before a kill; the owner-marker index must (src/controller/identity/markers.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_killed_with_sigkill_20_times_loses_nothing_without_identifiers() {
    sigkill_scenario(schemas::PROFILE).await;
}

/// Runs the SIGKILL scenario `KRATOS_OPERATOR_FAULT_RUNS` times, each with its own seed, namespace
/// and private Kratos, and sums them up.
async fn sigkill_scenario(schema: &str) {
    let seeds = seeds(seed(), runs());
    let mut all = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        all.push(sigkill_run(schema, *seed, (i + 1, seeds.len())).await);
    }
    let converge: Vec<Duration> = all.iter().map(|r| r.converge).collect();
    println!(
        "FIGURES sigkill ({schema}) summary: {} runs, seeds {seeds:?}; {} kills; orphans {}, duplicates {}; \
         converged in {:?} to {:?} after the last restart; CPU hog {}",
        all.len(),
        all.iter().map(|r| r.kills).sum::<usize>(),
        all.iter().map(|r| r.orphans).sum::<usize>(),
        all.iter().map(|r| r.duplicates).sum::<usize>(),
        converge.iter().min().unwrap(),
        converge.iter().max().unwrap(),
        if hog_wanted() { "on" } else { "off" },
    );
}

/// What one run of the SIGKILL scenario found.
struct SigkillRun {
    kills: usize,
    orphans: usize,
    duplicates: usize,
    converge: Duration,
}

/// `CREATE_SETTLE_TIME` of the SIGKILL scenario's processes. Shorter than most of their lives
/// (0.3 to 4 s), so that deletions and creates of objects without identifiers happen, and are
/// killed, inside the rounds, not only after the last start; far above the time a create takes
/// in Kratos here (the window tests see a held create committed 5 to 30 ms after its release).
const SIGKILL_SETTLE: &str = "2s";

/// One run of the SIGKILL scenario with `seed`, run `run.0` of `run.1`.
async fn sigkill_run(schema: &str, seed: u64, run: (usize, usize)) -> SigkillRun {
    let soak = std::env::var("KRATOS_OPERATOR_SOAK").is_ok_and(|v| v == "1");
    let (objects_n, rounds) = if soak { (1000, 100) } else { (220, 20) };
    // The hog would slow down the other tests of this binary, which run at the same time.
    let _exclusive = if hog_wanted() {
        Some(TIMING.write().await)
    } else {
        None
    };
    println!(
        "run {}/{}: seed {seed} (KRATOS_OPERATOR_FAULT_SEED={seed} replays it), {objects_n} objects of schema \
         {schema}, {rounds} kills",
        run.0, run.1
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let t = setup(&format!("fault-sigkill-{schema}")).await;
    support::install_crds(&t.client).await;
    let (kratos, dir) = private_kratos(&t).await;
    let (admin, public) = (kratos.admin_url(), kratos.public_url());
    let log = std::env::temp_dir().join(format!("{}-operator.log", t.namespace));
    let started = Instant::now();

    let mut live: BTreeMap<String, Value> = (0..objects_n)
        .map(|i| {
            let name = format!("u{i:04}");
            let tr = traits(&t, &name, "v0");
            (name, tr)
        })
        .collect();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut counts = (objects_n, 0, 0);
    apply_all_as(&t, schema, &live).await;

    let hog = hog_wanted().then(CpuHog::start);
    let hogged = hog.as_ref().map_or_else(
        || "no CPU hog".to_string(),
        |h| format!("{} busy threads hogging the CPU", h.threads()),
    );
    let settle = [("CREATE_SETTLE_TIME", SIGKILL_SETTLE)];
    for round in 0..rounds {
        let op = OperatorProcess::spawn_with(&t, &admin, &public, &log, &settle);
        // The first kills land in the mass create; later ones in updates, deletes, resyncs.
        let alive = Duration::from_millis(rng.random_range(300..4000));
        let mutate_at = alive.mul_f64(rng.random_range(0.0..1.0));
        tokio::time::sleep(mutate_at).await;
        if round % 2 == 1 {
            mutate(
                &t,
                schema,
                &mut rng,
                round,
                "alive",
                &mut live,
                &mut deleted,
                &mut counts,
            )
            .await;
        }
        tokio::time::sleep(alive.saturating_sub(mutate_at)).await;
        op.kill();
        if round % 2 == 0 {
            mutate(
                &t,
                schema,
                &mut rng,
                round,
                "dead",
                &mut live,
                &mut deleted,
                &mut counts,
            )
            .await;
        }
    }
    let kills_done = started.elapsed();
    drop(hog);

    let op = OperatorProcess::spawn_with(&t, &admin, &public, &log, &settle);
    let restart = Instant::now();
    let objects =
        wait_converged(&t, &live, Duration::from_secs(if soak { 600 } else { 120 })).await;
    let converge = restart.elapsed();
    let k = kratos_client(&admin, &public);
    let in_kratos = all_kratos_identities(&k).await;
    let figures = SigkillRun {
        kills: rounds,
        orphans: orphans(&in_kratos, &objects).len(),
        duplicates: duplicates(&in_kratos).len(),
        converge,
    };
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(t.client.clone(), &t.namespace);
    let recovered = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Recovered"))
        .count();
    println!(
        "FIGURES sigkill ({schema}) run {}/{} seed {seed}: {rounds} kills in {kills_done:?} with {hogged}; objects \
         created {}, spec updates {}, deleted {}; final {} objects; orphans {}, duplicates {}; converged \
         {converge:?} after the last restart; {recovered} identities taken back (created before a kill, status \
         lost); Kratos identities {}",
        run.0,
        run.1,
        counts.0,
        counts.1,
        counts.2,
        objects.len(),
        figures.orphans,
        figures.duplicates,
        in_kratos.len(),
    );
    assert_kratos_equals_manifests(&k, &objects, &deleted).await;
    // Deleting everything through the operator empties Kratos: no deletion is lost either.
    let cleanup = Instant::now();
    delete_all_and_wait(&t, &k, Duration::from_secs(if soak { 600 } else { 90 })).await;
    println!(
        "FIGURES sigkill ({schema}): all {} objects deleted and Kratos empty in {:?}",
        objects.len(),
        cleanup.elapsed()
    );
    drop(op);
    drop_kratos(kratos, dir).await;
    if keep() {
        println!("kept {}", log.display());
    } else {
        let _ = std::fs::remove_file(log);
    }
    t.cleanup().await;
    figures
}

// ---------------------------------------------------------------------------------------------
// 2. Kratos stopped and restarted mid-sync

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kratos_restarted_mid_sync_reports_unavailable_and_converges() {
    let _timing = no_hog().await;
    let t = setup("fault-kratos").await;
    let (mut kratos, dir) = private_kratos(&t).await;
    let (admin, public) = (kratos.admin_url(), kratos.public_url());
    let op = start_operator_with(&t, &admin, &public, test_settings(&t.namespace)).await;
    let mut expected: BTreeMap<String, Value> = (0..120)
        .map(|i| {
            let name = format!("a{i:03}");
            let tr = traits(&t, &name, "v0");
            (name, tr)
        })
        .collect();
    apply_all(&t, &expected).await;
    eventually(
        "some identities to be synced",
        Duration::from_secs(60),
        || async {
            let list = identities(&t).list(&ListParams::default()).await.ok()?;
            (list.items.iter().filter(|o| is_synced(o)).count() >= 20).then_some(())
        },
    )
    .await;
    let stopped = Instant::now();
    kratos = tokio::task::spawn_blocking(move || {
        kratos.stop();
        kratos
    })
    .await
    .unwrap();
    // More work while Kratos is down: 100 creates and 30 updates.
    let mut more: BTreeMap<String, Value> = (0..100)
        .map(|i| {
            let name = format!("b{i:03}");
            let tr = traits(&t, &name, "v0");
            (name, tr)
        })
        .collect();
    for i in 0..30 {
        let name = format!("a{i:03}");
        more.insert(name.clone(), traits(&t, &name, "during-outage"));
    }
    apply_all(&t, &more).await;
    expected.extend(more);
    let mut peak_unavailable = 0;
    let (updated_unavailable, new_unavailable) = eventually(
        "an updated and a new object to report KratosUnavailable",
        Duration::from_secs(60),
        || async {
            let list = identities(&t).list(&ListParams::default()).await.ok()?;
            let unavailable = |prefix: &str| {
                list.items
                    .iter()
                    .filter(|o| o.name_any().starts_with(prefix))
                    .filter(|o| {
                        ready_reason(o) == Some(("False".into(), "KratosUnavailable".into()))
                    })
                    .count()
            };
            let (a, b) = (unavailable("a0"), unavailable("b"));
            (a > 0 && b > 0).then_some((a, b))
        },
    )
    .await;
    // Stay down a while longer, so that backoffs grow.
    while stopped.elapsed() < Duration::from_secs(8) {
        let list = identities(&t).list(&ListParams::default()).await.unwrap();
        peak_unavailable =
            peak_unavailable.max(count_with_reason(&list.items, "KratosUnavailable"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let down_for = stopped.elapsed();
    let kratos = tokio::task::spawn_blocking(move || {
        kratos.restart().expect("restart Kratos");
        kratos
    })
    .await
    .unwrap();
    let back = Instant::now();
    let objects = wait_converged(&t, &expected, Duration::from_secs(120)).await;
    let converge = back.elapsed();
    let k = kratos_client(&admin, &public);
    assert_kratos_equals_manifests(&k, &objects, &BTreeSet::new()).await;
    println!(
        "FIGURES kratos-restart: {} objects; Kratos down {down_for:?}; KratosUnavailable seen on {updated_unavailable} \
         updated and {new_unavailable} new objects at first, peak {peak_unavailable}; converged {converge:?} after \
         Kratos was back; Kratos calls {}",
        objects.len(),
        op.kratos.metrics().total_calls()
    );
    delete_all_and_wait(&t, &k, Duration::from_secs(60)).await;
    drop(op);
    drop_kratos(kratos, dir).await;
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 3. kube-apiserver restarted (a private control plane)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apiserver_restart_resumes_watches_and_misses_nothing() {
    let _timing = no_hog().await;
    let dir = std::env::temp_dir().join(support::unique_name("kratos-operator-env-fault"));
    let up = Instant::now();
    let env = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || Environment::up(&dir).expect("a private environment")
    })
    .await
    .unwrap();
    let env_up = up.elapsed();
    // The scenario runs in its own task so that the environment is stopped even when it fails.
    let result = tokio::spawn(apiserver_restart_scenario(env)).await;
    tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || kratos_operator_testenv::env::down(&dir)
    })
    .await
    .unwrap()
    .expect("stop the private environment");
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(figures) => {
            println!("FIGURES apiserver-restart: environment up in {env_up:?}; {figures}")
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn apiserver_restart_scenario(mut env: Environment) -> String {
    let leaked: &'static Environment = Box::leak(Box::new(env.clone()));
    let client = support::client(leaked).await;
    let namespace = support::unique_name("fault-apiserver");
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({ "metadata": { "name": namespace } })).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let t = TestEnv {
        env: leaked,
        client,
        namespace,
        kratos_admin_url: env.state.kratos_admin_url.clone(),
        kratos_public_url: env.state.kratos_public_url.clone(),
    };
    let op = start_operator_with(
        &t,
        &t.kratos_admin_url,
        &t.kratos_public_url,
        test_settings(&t.namespace),
    )
    .await;
    let mut expected: BTreeMap<String, Value> = (0..200)
        .map(|i| {
            let name = format!("p{i:03}");
            let tr = traits(&t, &name, "v0");
            (name, tr)
        })
        .collect();
    apply_all(&t, &expected).await;
    eventually(
        "some identities to be synced",
        Duration::from_secs(60),
        || async {
            let list = identities(&t).list(&ListParams::default()).await.ok()?;
            (list.items.iter().filter(|o| is_synced(o)).count() >= 30).then_some(())
        },
    )
    .await;
    // Restart while the rest is being created and statuses written.
    let restart = Instant::now();
    tokio::task::spawn_blocking(move || {
        env.restart_apiserver(Duration::from_secs(10))
            .expect("restart the kube-apiserver");
    })
    .await
    .unwrap();
    let downtime = restart.elapsed();
    // Changes made after the restart must reach Kratos through the resumed watches.
    let after = Instant::now();
    let mut changes = BTreeMap::new();
    changes.insert("p005".to_string(), traits(&t, "p005", "after-restart"));
    changes.insert("after".to_string(), traits(&t, "after", "new"));
    apply_all(&t, &changes).await;
    delete(&t, "p007").await;
    expected.extend(changes);
    expected.remove("p007");
    let objects = wait_converged(&t, &expected, Duration::from_secs(120)).await;
    let converge = after.elapsed();
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    let deleted = BTreeSet::from([t.email("p007")]);
    assert_kratos_equals_manifests(&k, &objects, &deleted).await;
    let p005 = objects.iter().find(|o| o.name_any() == "p005").unwrap();
    let id = p005.status.as_ref().unwrap().identity_id.clone().unwrap();
    let in_kratos = k.get_identity(&id, &[]).await.unwrap();
    assert_eq!(in_kratos.traits["name"]["first"], "after-restart");
    drop(op);
    format!(
        "{} objects; apiserver restart (stop + start + ready) took {downtime:?}; the changes made after it \
         (update, create, delete) and the rest converged in {converge:?}",
        objects.len()
    )
}

// ---------------------------------------------------------------------------------------------
// 4. 429 with x-ratelimit-reset, then 503: a proxy in front of the real Kratos

/// When the proxy injects which fault.
#[derive(Default)]
struct Schedule {
    /// Rate limiting until then: `QUOTA` requests per `WINDOW`, then 429 until the window ends.
    rate_limit_until: Option<Instant>,
    /// 503 for everything until then (after the rate limiting).
    unavailable_until: Option<Instant>,
    window_start: Option<Instant>,
    window_count: u32,
}

const WINDOW: Duration = Duration::from_secs(2);
const QUOTA: u32 = 10;

impl Schedule {
    /// The fault for a request arriving at `now`.
    fn judge(&mut self, now: Instant) -> Fault {
        if self.rate_limit_until.is_some_and(|u| now < u) {
            if self.window_start.is_none_or(|w| now >= w + WINDOW) {
                self.window_start = Some(now);
                self.window_count = 0;
            }
            self.window_count += 1;
            if self.window_count <= QUOTA {
                return Fault::Forward;
            }
            let end = self.window_start.unwrap() + WINDOW;
            let secs = (end - now).as_secs_f64().ceil().max(1.0) as u64;
            Fault::Answer(
                Answer::json(
                    429,
                    r#"{"error":{"code":429,"status":"Too Many Requests","message":"rate limit exceeded"}}"#,
                )
                .header("x-ratelimit-limit", QUOTA.to_string())
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", secs.to_string()),
            )
        } else if self.unavailable_until.is_some_and(|u| now < u) {
            Fault::Answer(Answer::json(
                503,
                r#"{"error":{"code":503,"status":"Service Unavailable","message":"injected outage"}}"#,
            ))
        } else {
            Fault::Forward
        }
    }
}

/// What the proxy answered, and when.
#[derive(Debug, Clone)]
struct Answered {
    at: Instant,
    /// 0 when forwarded to Kratos.
    status: u16,
    /// For a 429: the reset instant it announced.
    reset: Option<Instant>,
}

impl From<&Seen> for Answered {
    fn from(seen: &Seen) -> Self {
        let at = seen.request.at;
        let injected = seen.injected.as_ref();
        Self {
            at,
            status: injected.map_or(0, |a| a.status),
            reset: injected
                .and_then(|a| a.header_value("x-ratelimit-reset"))
                .map(|secs| at + Duration::from_secs(secs.parse().unwrap())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_and_outages_are_backed_off_and_converge() {
    let _timing = no_hog().await;
    let t = setup("fault-429").await;
    let (kratos, dir) = private_kratos(&t).await;
    let schedule = Arc::new(Mutex::new(Schedule::default()));
    let proxy = KratosProxy::start(&kratos.admin_url(), {
        let schedule = schedule.clone();
        move |request| schedule.lock().unwrap().judge(request.at)
    })
    .await;
    let op = start_operator_with(
        &t,
        &proxy.url,
        &kratos.public_url(),
        test_settings(&t.namespace),
    )
    .await;
    let mut expected: BTreeMap<String, Value> = (0..220)
        .map(|i| {
            let name = format!("r{i:03}");
            let tr = traits(&t, &name, "v0");
            (name, tr)
        })
        .collect();
    apply_all(&t, &expected).await;
    wait_converged(&t, &expected, Duration::from_secs(90)).await;

    // Faults: 6 s of rate limiting, then 5 s of 503, while every spec changes and 30 objects
    // are added (each update costs a read and a write per identity).
    const LIMITED: Duration = Duration::from_secs(6);
    const OUTAGE: Duration = Duration::from_secs(5);
    // KratosUnavailable is a transient status written in the background: followed from before
    // the faults until everything converged again, not sampled during the faults only.
    let (unavailable, follower) = follow_reason_peak(&t, "KratosUnavailable").await;
    let fault_start = Instant::now();
    // Forgotten first: no answer of the faults may be missed.
    proxy.clear();
    {
        let mut s = schedule.lock().unwrap();
        s.rate_limit_until = Some(fault_start + LIMITED);
        s.unavailable_until = Some(fault_start + LIMITED + OUTAGE);
    }
    let calls_before = op.kratos.metrics().total_calls();
    let mut changes: BTreeMap<String, Value> = expected
        .keys()
        .map(|name| (name.clone(), traits(&t, name, "during-faults")))
        .collect();
    for i in 0..30 {
        let name = format!("s{i:03}");
        changes.insert(name.clone(), traits(&t, &name, "v0"));
    }
    apply_all(&t, &changes).await;
    expected.extend(changes);
    // The faults' schedule (not a wait for a condition): the proxy heals at this instant.
    tokio::time::sleep_until((fault_start + LIMITED + OUTAGE).into()).await;
    let healed = Instant::now();
    let objects = wait_converged(&t, &expected, Duration::from_secs(150)).await;
    let converge = healed.elapsed();
    follower.abort();
    let unavailable_peak = *unavailable.lock().unwrap();
    let k = kratos_client(&kratos.admin_url(), &kratos.public_url());
    assert_kratos_equals_manifests(&k, &objects, &BTreeSet::new()).await;

    let seen: Vec<Answered> = proxy.seen().iter().map(Answered::from).collect();
    let rel = |at: Instant| at.saturating_duration_since(fault_start).as_secs_f64();
    // 1. No request while a reset the proxy announced is pending, beyond the requests already
    //    in flight when the 429 went out (500 ms) and two stragglers.
    const IN_FLIGHT: Duration = Duration::from_millis(500);
    let announced: Vec<(Instant, Instant)> =
        seen.iter().filter_map(|s| Some((s.at, s.reset?))).collect();
    let violations: Vec<f64> = seen
        .iter()
        .filter(|s| {
            announced.iter().any(|(at, reset)| {
                s.at >= *at + IN_FLIGHT && s.at + Duration::from_millis(20) < *reset
            })
        })
        .map(|s| rel(s.at))
        .collect();
    // 2. The request rate stays bounded: per second of the fault, and over the whole fault.
    let fault_end = fault_start + LIMITED + OUTAGE;
    let mut per_second: BTreeMap<u64, (u32, u32, u32)> = BTreeMap::new();
    for s in seen
        .iter()
        .filter(|s| s.at < fault_end + Duration::from_secs(10))
    {
        let e = per_second.entry(rel(s.at) as u64).or_default();
        match s.status {
            429 => e.1 += 1,
            503 => e.2 += 1,
            _ => e.0 += 1,
        }
    }
    let in_fault: Vec<u32> = per_second
        .iter()
        .filter(|(sec, _)| **sec < (LIMITED + OUTAGE).as_secs())
        .map(|(_, (a, b, c))| a + b + c)
        .collect();
    let max_rps = in_fault.iter().copied().max().unwrap_or(0);
    let total_429 = seen.iter().filter(|s| s.status == 429).count();
    let total_503 = seen.iter().filter(|s| s.status == 503).count();
    let table: Vec<String> = per_second
        .iter()
        .map(|(sec, (ok, r, u))| format!("{sec}s: {ok} forwarded, {r}x429, {u}x503"))
        .collect();
    println!(
        "FIGURES 429/503: {} objects; {total_429} answers 429 and {total_503} answers 503 during {LIMITED:?} + {OUTAGE:?}; \
         max {max_rps} requests in one second of the fault; {} requests announced-reset violations; \
         KratosUnavailable peak {unavailable_peak}; converged {converge:?} after the faults ended; \
         Kratos calls during and after the faults {}\n  per second: {}",
        objects.len(),
        violations.len(),
        op.kratos.metrics().total_calls() - calls_before,
        table.join("; ")
    );
    assert!(total_429 > 0 && total_503 > 0, "the faults were exercised");
    assert!(
        violations.len() <= 2,
        "requests sent before the announced x-ratelimit-reset, at (s after fault start): {violations:?}"
    );
    // Rate limited: QUOTA per 2 s window plus the rejected requests in flight; outage: retries
    // with backoff. A retry loop without backoff would send thousands per second.
    assert!(
        max_rps <= 80,
        "{max_rps} requests in one second during the faults: {table:?}"
    );
    assert!(unavailable_peak > 0, "conditions showed KratosUnavailable");
    delete_all_and_wait(&t, &k, Duration::from_secs(60)).await;
    drop(op);
    drop_kratos(kratos, dir).await;
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 5. A create that commits after the operator stopped waiting for it (issue 26)
//
// Kratos may carry out a create whose client has gone: the operator process was SIGKILLed, or
// its request timed out. Until then, Kratos holds no such identity, and an operator that takes
// "none found" for an answer lets a deleted object go (or creates a second identity); the late
// create then leaves a live account that no object owns. A proxy holds the create at a gate
// while that happens, and lets it through when the test says.

/// `CREATE_SETTLE_TIME` of every operator process of these tests: how long it does not take "no
/// identity" for an answer after it starts, and after a create of its own failed.
const SETTLE_TIME: &str = "8s";

/// How long the held create stays held after the operator was given its chance to go wrong (the
/// object deleted, or its spec changed): long enough for today's operator to let a deleted
/// object go, well within [`SETTLE_TIME`], in which a fixed operator waits.
const HELD_ON: Duration = Duration::from_secs(3);

/// Whether the proxy's `request` creates identities: a batch `PATCH` or a `POST` of
/// `/admin/identities`.
fn is_create(request: &Request) -> bool {
    request.path == "/admin/identities"
        && (request.method == Method::PATCH || request.method == Method::POST)
}

/// A proxy rule that holds the first create at `gate` and forwards everything else.
fn hold_first_create(gate: &Gate) -> impl Fn(&Request) -> Fault + Send + Sync + 'static {
    let gate = gate.clone();
    let held = AtomicBool::new(false);
    move |request| {
        if is_create(request) && !held.swap(true, Ordering::SeqCst) {
            Fault::Hold(gate.clone())
        } else {
            Fault::Forward
        }
    }
}

/// A test of the window: a private Kratos behind a proxy that holds the first create at a gate,
/// and the log of the operator processes of the test.
struct Window {
    t: TestEnv,
    kratos: KratosInstance,
    dir: PathBuf,
    proxy: KratosProxy,
    gate: Gate,
    log: PathBuf,
}

impl Window {
    async fn new(test: &str) -> Self {
        let t = setup(test).await;
        support::install_crds(&t.client).await;
        let (kratos, dir) = private_kratos(&t).await;
        let gate = Gate::new();
        let proxy = KratosProxy::start(&kratos.admin_url(), hold_first_create(&gate)).await;
        let log = std::env::temp_dir().join(format!("{}-operator.log", t.namespace));
        Self {
            t,
            kratos,
            dir,
            proxy,
            gate,
            log,
        }
    }

    /// An operator process that reaches Kratos' admin API through the proxy, with
    /// [`SETTLE_TIME`] and `vars`.
    fn operator(&self, vars: &[(&str, &str)]) -> OperatorProcess {
        let mut all = vec![("CREATE_SETTLE_TIME", SETTLE_TIME)];
        all.extend_from_slice(vars);
        OperatorProcess::spawn_with(
            &self.t,
            &self.proxy.url,
            &self.kratos.public_url(),
            &self.log,
            &all,
        )
    }

    /// A client of the private Kratos itself (not through the proxy).
    fn kratos(&self) -> KratosClient {
        kratos_client(&self.kratos.admin_url(), &self.kratos.public_url())
    }

    /// Applies the Identity `name` of `schema` with `traits`.
    async fn apply(&self, schema: &str, name: &str, traits: &Value) -> Identity {
        support::apply(&self.t, manifest(schema, name, traits)).await
    }

    /// Lets the held create through, then waits until Kratos answered it and the object `name`
    /// is gone; returns what the late create left of the object (uid `uid`).
    async fn release_and_wait_gone(&self, name: &str, uid: &str) -> Late {
        let released = Instant::now();
        self.gate.release();
        let answer = self.gate.wait_answered(Duration::from_secs(30)).await;
        support::wait_gone(&identities(&self.t), name, Duration::from_secs(60)).await;
        let gone = Instant::now();
        let left = identities_of(&self.kratos(), uid, &[self.t.email(name)]).await;
        Late {
            released,
            answer,
            gone,
            left,
        }
    }

    /// Stops the private Kratos and removes the namespace (and, unless kept, the log).
    async fn close(self) {
        drop_kratos(self.kratos, self.dir).await;
        if keep() {
            println!("kept {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
        self.t.cleanup().await;
    }
}

/// What a held create left once it was let through and its object went.
struct Late {
    /// When the test let it through.
    released: Instant,
    /// Kratos' answer to it.
    answer: Forwarded,
    /// When the object was seen gone.
    gone: Instant,
    /// The Kratos identities of the object then ([`identities_of`]).
    left: Vec<String>,
}

/// The Kratos identities that carry the owner marker `uid` or one of `emails`, as
/// `id (email, marker uid)`.
async fn identities_of(kratos: &KratosClient, uid: &str, emails: &[String]) -> Vec<String> {
    all_kratos_identities(kratos)
        .await
        .iter()
        .filter(|k| {
            let email = k.traits["email"].as_str().unwrap_or("");
            marker(k) == Some(uid) || emails.iter().any(|e| e.eq_ignore_ascii_case(email))
        })
        .map(describe)
        .collect()
}

/// A Kratos identity as `id (email, marker uid)`.
fn describe(k: &KratosIdentity) -> String {
    format!(
        "{} ({}, marker {})",
        k.id,
        k.traits["email"].as_str().unwrap_or("no email"),
        marker(k).unwrap_or("none")
    )
}

/// Polls the Identity `name` until it is gone or `deadline` passes; returns when it was first
/// seen gone.
async fn gone_before(t: &TestEnv, name: &str, deadline: Instant) -> Option<Instant> {
    loop {
        if identities(t).get_opt(name).await.unwrap().is_none() {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the test saw of the object when it released the held create.
fn at_release(gone: Option<Instant>, deleted: Instant, released: Instant) -> String {
    match gone {
        Some(at) => format!(
            "the object was already gone ({:?} after its deletion) when the create was released",
            at - deleted
        ),
        None => format!(
            "the object was still present when the create was released, {:?} after its deletion",
            released - deleted
        ),
    }
}

/// Kratos' answer to the late create, its body cut short.
fn late_answer(answer: &Forwarded) -> String {
    let body = String::from_utf8_lossy(&answer.body);
    let body = body.trim_end();
    format!(
        "{} {}",
        answer.status,
        body.chars().take(300).collect::<String>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_held_past_sigkill_commits_late_and_the_deleted_identity_is_still_removed() {
    create_held_past_sigkill(schemas::CUSTOMER).await;
}

/// The same against a schema without identifier traits: only the owner marker finds the late
/// identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_held_past_sigkill_commits_late_and_the_deleted_identity_is_still_removed_without_identifiers()
 {
    create_held_past_sigkill(schemas::PROFILE).await;
}

/// The operator process is SIGKILLed while Kratos holds its create; its successor sees the
/// object deleted and finds no identity; then the create commits. The successor must still
/// delete that identity before it lets the object go.
async fn create_held_past_sigkill(schema: &str) {
    let _timing = no_hog().await;
    let w = Window::new(&format!("fault-held-kill-{schema}")).await;
    let first = w.operator(&[]);
    let name = "held";
    let applied = Instant::now();
    let obj = w.apply(schema, name, &traits(&w.t, name, "v0")).await;
    let uid = obj.uid().unwrap();
    let held = w.gate.wait_arrived(Duration::from_secs(60)).await;
    first.kill();
    let killed = Instant::now();
    let second = w.operator(&[]);
    delete(&w.t, name).await;
    let deleted = Instant::now();
    let gone = gone_before(&w.t, name, deleted + HELD_ON).await;
    let Late {
        released,
        answer,
        gone: gone_at,
        left,
    } = w.release_and_wait_gone(name, &uid).await;
    let deletion = gone_at - deleted;
    println!(
        "FIGURES window sigkill ({schema}): the create ({} {}) was held {:?} after the apply, the operator killed \
         {:?} after it arrived; {}; Kratos answered the late create {:?} after the release: {}; the object was \
         gone {deletion:?} after its deletion; Kratos identities of it left: {}",
        held.method,
        held.path,
        held.at - applied,
        killed - held.at,
        at_release(gone, deleted, released),
        answer.at - released,
        late_answer(&answer),
        left.len()
    );
    drop(second);
    w.close().await;
    assert!(
        left.is_empty(),
        "the deleted Identity {name} (uid {uid}) is gone, but its create, held past the SIGKILL of the \
         operator and committed late, left Kratos identities behind: {left:?}"
    );
}

/// The successor's `CREATE_SETTLE_TIME` in the late-commit tests: shorter than the create is
/// held, so that Kratos carries it out after the window the successor waited for.
const SHORT_SETTLE: &str = "2s";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_committed_after_the_settle_time_of_a_deleted_object_is_removed() {
    create_committed_after_settle(schemas::CUSTOMER, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_committed_after_the_settle_time_of_a_deleted_object_is_removed_without_identifiers()
 {
    create_committed_after_settle(schemas::PROFILE, true).await;
}

/// Without identifiers the successor, having waited its settle time, creates a second
/// identity; the late one must not stay beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_committed_after_the_settle_time_leaves_no_duplicate_without_identifiers() {
    create_committed_after_settle(schemas::PROFILE, false).await;
}

/// The operator is SIGKILLed while Kratos holds its create; its successor, whose settle time is
/// shorter than the hold, is done with the object (it let it go when `delete`d, or created its
/// identity); only then does the create commit. The identity it leaves must be removed: no
/// orphan, no duplicate.
async fn create_committed_after_settle(schema: &str, delete_it: bool) {
    let _timing = no_hog().await;
    let w = Window::new(&format!(
        "fault-late-{schema}-{}",
        if delete_it { "del" } else { "dup" }
    ))
    .await;
    let first = w.operator(&[]);
    let name = "late";
    let obj = w.apply(schema, name, &traits(&w.t, name, "v0")).await;
    let uid = obj.uid().unwrap();
    w.gate.wait_arrived(Duration::from_secs(60)).await;
    first.kill();
    let second = w.operator(&[("CREATE_SETTLE_TIME", SHORT_SETTLE)]);
    let used = if delete_it {
        delete(&w.t, name).await;
        support::wait_gone(&identities(&w.t), name, Duration::from_secs(60)).await;
        None
    } else {
        let synced: Identity = support::wait_for(
            &w.t,
            name,
            "Ready=True Synced with its own identity",
            Duration::from_secs(60),
            is_synced,
        )
        .await;
        synced.status.and_then(|s| s.identity_id)
    };
    let released = Instant::now();
    w.gate.release();
    let answer = w.gate.wait_answered(Duration::from_secs(30)).await;
    let emails = [w.t.email(name)];
    let k = w.kratos();
    let expected: Vec<String> = used.iter().cloned().collect();
    // Only the identity the object uses (if any) is left.
    let done = |left: &[String]| {
        left.len() == expected.len()
            && left
                .iter()
                .all(|d| expected.iter().any(|e| d.starts_with(e.as_str())))
    };
    let mut left = identities_of(&k, &uid, &emails).await;
    let committed = left.len();
    while !done(&left) && released.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = identities_of(&k, &uid, &emails).await;
    }
    println!(
        "FIGURES late commit ({schema}, {}): Kratos answered the create {:?} after the release: {}; {committed} \
         identities of the object right after; {} left {:?} after the release",
        if delete_it {
            "object deleted"
        } else {
            "object synced"
        },
        answer.at - released,
        late_answer(&answer),
        left.len(),
        released.elapsed()
    );
    drop(second);
    w.close().await;
    assert!(
        done(&left),
        "Identity {name} (uid {uid}): a create committed after the settle time left {left:?}, where only \
         {expected:?} should be"
    );
}

/// `KRATOS_REQUEST_TIMEOUT` of the operator in the timeout tests.
const REQUEST_TIMEOUT: &str = "2s";

/// How long after the held create arrived the test releases it: its request has timed out by
/// then ([`REQUEST_TIMEOUT`]), well within [`SETTLE_TIME`].
const TIMED_OUT: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_that_timed_out_commits_late_and_the_deleted_identity_is_still_removed() {
    create_timed_out(schemas::CUSTOMER).await;
}

/// The same against a schema without identifier traits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_that_timed_out_commits_late_and_the_deleted_identity_is_still_removed_without_identifiers()
 {
    create_timed_out(schemas::PROFILE).await;
}

/// The operator's create times out while Kratos holds it, the object is deleted meanwhile; then
/// the create commits. The operator must still delete that identity before it lets the object
/// go.
async fn create_timed_out(schema: &str) {
    let _timing = no_hog().await;
    let w = Window::new(&format!("fault-held-timeout-{schema}")).await;
    let op = w.operator(&[("KRATOS_REQUEST_TIMEOUT", REQUEST_TIMEOUT)]);
    let name = "held";
    let obj = w.apply(schema, name, &traits(&w.t, name, "v0")).await;
    let uid = obj.uid().unwrap();
    let held = w.gate.wait_arrived(Duration::from_secs(60)).await;
    delete(&w.t, name).await;
    let deleted = Instant::now();
    let gone = gone_before(&w.t, name, held.at + TIMED_OUT).await;
    // Not before the operator's request timed out, even when the object went early.
    tokio::time::sleep_until((held.at + TIMED_OUT).into()).await;
    let Late {
        released,
        answer,
        gone: gone_at,
        left,
    } = w.release_and_wait_gone(name, &uid).await;
    let deletion = gone_at - deleted;
    println!(
        "FIGURES window timeout ({schema}): the create ({} {}) held, the object deleted {:?} after it arrived, \
         released {:?} after it arrived (request timeout {REQUEST_TIMEOUT}); {}; Kratos answered the late create \
         {:?} after the release: {}; the object was gone {deletion:?} after its deletion; Kratos identities of it \
         left: {}",
        held.method,
        held.path,
        deleted - held.at,
        released - held.at,
        at_release(gone, deleted, released),
        answer.at - released,
        late_answer(&answer),
        left.len()
    );
    drop(op);
    w.close().await;
    assert!(
        left.is_empty(),
        "the deleted Identity {name} (uid {uid}) is gone, but its create, which timed out in the operator and \
         committed late, left Kratos identities behind: {left:?}"
    );
}

/// The operator process is SIGKILLed while Kratos holds its create, and the object's email
/// changes (a new generation); its successor must not create a second identity for the object
/// next to the one that commits late: one identity, with the new email, and nothing left once
/// the object is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_email_changed_while_a_create_was_in_flight_leaves_one_identity_with_the_new_email() {
    let _timing = no_hog().await;
    let schema = schemas::CUSTOMER;
    let w = Window::new("fault-held-moved").await;
    let first = w.operator(&[]);
    let name = "moved";
    let (before, after) = (traits(&w.t, "before", "v0"), traits(&w.t, "after", "v1"));
    let emails = [w.t.email("before"), w.t.email("after")];
    let obj = w.apply(schema, name, &before).await;
    let uid = obj.uid().unwrap();
    w.gate.wait_arrived(Duration::from_secs(60)).await;
    first.kill();
    let changed = w.apply(schema, name, &after).await;
    let second = w.operator(&[]);
    tokio::time::sleep(HELD_ON).await;
    let released = Instant::now();
    w.gate.release();
    let answer = w.gate.wait_answered(Duration::from_secs(30)).await;
    let synced: Identity = support::wait_for(
        &w.t,
        name,
        "Ready=True Synced for its current generation, with its identity",
        Duration::from_secs(60),
        is_synced,
    )
    .await;
    let synced_after = released.elapsed();
    let k = w.kratos();
    let marked: Vec<KratosIdentity> = all_kratos_identities(&k)
        .await
        .into_iter()
        .filter(|i| marker(i) == Some(uid.as_str()))
        .collect();
    let identity_id = synced.status.as_ref().and_then(|s| s.identity_id.clone());
    let one_with_new_email = marked.len() == 1
        && marked[0].traits["email"] == json!(emails[1])
        && Some(&marked[0].id) == identity_id.as_ref();
    let marked: Vec<String> = marked.iter().map(describe).collect();
    delete(&w.t, name).await;
    support::wait_gone(&identities(&w.t), name, Duration::from_secs(60)).await;
    let left = identities_of(&k, &uid, &emails).await;
    println!(
        "FIGURES window moved ({schema}): generation {} held in flight, {} applied after the kill; Kratos \
         answered the late create: {}; Synced {synced_after:?} after the release with identity {identity_id:?}; \
         identities with the object's marker then: {marked:?}; left after the deletion: {}",
        obj.metadata.generation.unwrap_or_default(),
        changed.metadata.generation.unwrap_or_default(),
        late_answer(&answer),
        left.len()
    );
    drop(second);
    w.close().await;
    assert!(
        one_with_new_email,
        "the Identity {name} (uid {uid}) is Synced with identity {identity_id:?} and email {}, but the Kratos \
         identities with its owner marker are {marked:?}: its create of email {}, held past the SIGKILL of the \
         operator and committed late, was not taken back",
        emails[1], emails[0]
    );
    assert!(
        left.is_empty(),
        "the deleted Identity {name} (uid {uid}) is gone, but Kratos identities of it are left: {left:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A deletion that races the finalizer

/// Objects deleted while the operator adds their finalizer. kube-apiserver may delete such an
/// object although the finalizer patch succeeded and returned it with the finalizer: the
/// deletion decided on the finalizers it had read before (seen on 1.37 in about a third of
/// such races). Nothing would then delete the identity the operator goes on to create; the
/// operator must notice and delete it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_deleted_while_their_finalizer_is_added_leave_nothing_in_kratos() {
    let _timing = no_hog().await;
    let seed = seed();
    println!("seed {seed} (KRATOS_OPERATOR_FAULT_SEED replays it)");
    let t = setup("fault-finalizer-race").await;
    let (kratos, dir) = private_kratos(&t).await;
    let k = kratos_client(&kratos.admin_url(), &kratos.public_url());
    // No resync during the test: once the objects are gone, the operator has nothing to do.
    let settings = kratos_operator::controller::Settings {
        resync_interval: Duration::from_secs(300),
        ..test_settings(&t.namespace)
    };
    let op = start_operator_with(&t, &kratos.admin_url(), &kratos.public_url(), settings).await;
    let mut rng = StdRng::seed_from_u64(seed);
    // Each object is deleted a random moment after it was applied: some before the operator
    // sees them, some while it adds the finalizer, some after it created the identity.
    let plan: Vec<(String, Duration)> = (0..120)
        .map(|i| {
            (
                format!("f{i:03}"),
                Duration::from_millis(rng.random_range(0..200)),
            )
        })
        .collect();
    futures::stream::iter(plan)
        .map(|(name, after)| {
            let t = &t;
            async move {
                let traits = traits(t, &name, "v0");
                support::apply::<Identity>(t, manifest(schemas::CUSTOMER, &name, &traits)).await;
                tokio::time::sleep(after).await;
                delete(t, &name).await;
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    support::wait_all_gone(&identities(&t), Duration::from_secs(90)).await;
    // The operator is done when it stops calling Kratos: its creates, the checks after them and
    // the finalizers' cleanups are all Kratos calls.
    eventually(
        "the operator to stop calling Kratos",
        Duration::from_secs(60),
        || async {
            let before = op.kratos.metrics().total_calls();
            tokio::time::sleep(Duration::from_secs(3)).await;
            (op.kratos.metrics().total_calls() == before).then_some(())
        },
    )
    .await;
    let left: Vec<String> = all_kratos_identities(&k)
        .await
        .iter()
        .map(describe)
        .collect();
    println!(
        "FIGURES finalizer race: 120 objects applied and deleted 0 to 200 ms later; Kratos identities left: {}",
        left.len()
    );
    drop(op);
    drop_kratos(kratos, dir).await;
    t.cleanup().await;
    assert!(
        left.is_empty(),
        "every Identity was deleted, yet Kratos still holds identities of them: {left:?}"
    );
}
