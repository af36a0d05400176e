//! GitOps through a running Flux: source-controller and kustomize-controller (v1.9.6, built from
//! their modules) and a Git server in the environment (`cargo xtask testenv up --flux`). Every
//! object of our kinds arrives through Flux only: a test pushes to Git, never applies them.
//!
//! The Flux objects are the manifests of deploy/flux.md, read out of it ([`guide`]); a test
//! changes only their namespace, the repository URL, paths, intervals (seconds instead of
//! minutes) and what it names in the test's namespace, and says so where it does.
//!
//! The operator runs in the test process (watching the test's namespace), except in
//! [`flux_installs_the_operator_then_the_identities_that_depend_on_it`], where Flux installs it
//! from deploy/base as pods on the environment's node.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart_support;
mod node_support;
mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kratos_operator::api::{Identity, IdentitySchemaRef, RecoveryRequest};
use kratos_operator_testenv::{Environment, env::default_dir, flux::FluxState};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::{
    TestEnv, condition, eventually, kratos_client, setup, start_operator_with, test_settings,
};

const T: Duration = Duration::from_secs(180);

/// The test that installs deploy/base through Flux puts cluster-wide admission policies in place
/// (adoption and recovery by id refused without the Namespace's opt-in): it runs alone.
static CLUSTER_WIDE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The environment's Flux, started if needed.
async fn flux() -> FluxState {
    tokio::task::spawn_blocking(|| Environment::ensure_flux(&default_dir()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("Flux does not start: {e}"))
        .state
        .flux
        .expect("Flux state")
}

/// `kubectl <args> -o json` against the environment, parsed.
fn kubectl_json(env: &Environment, args: &[&str]) -> Value {
    let args = [args, &["-o", "json"]].concat();
    let out = chart_support::kubectl_run(&env.state.kubeconfig, &args, None);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        chart_support::describe(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Git

/// A working copy whose pushes go to the environment's Git server, as repository `name`.
struct Repo {
    dir: PathBuf,
    push_url: String,
    /// What a GitRepository names as its `spec.url`.
    flux_url: String,
}

impl Repo {
    fn new(flux: &FluxState, name: &str) -> Self {
        let dir = repo_root().join("target").join("gitops").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let repo = Self {
            dir,
            push_url: format!("{}/{name}.git", flux.git_url),
            flux_url: format!("{}/{name}.git", flux.git_url_from_flux),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args([
                "-c",
                "user.name=kratos-operator tests",
                "-c",
                "user.email=tests@kratos-operator.dev",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn write(&self, path: &str, content: &str) {
        let path = self.dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn remove(&self, path: &str) {
        std::fs::remove_file(self.dir.join(path)).unwrap();
    }

    /// Commits everything and pushes it; returns the commit's id.
    fn push(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["push", "-q", "--force", &self.push_url, "HEAD:main"]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// Copies the files of `from` (a directory of the repository) into `repo` under `to`, with
/// `edit` applied to each file's text.
fn copy_dir(from: &Path, repo: &Repo, to: &str, edit: &dyn Fn(&str) -> String) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_str().unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            repo.write(&format!("{to}/{name}"), &edit(&text));
        }
    }
}

/// deploy/examples with addresses, usernames and OIDC subjects of this namespace's own: the
/// examples' identifiers are fixed, and Kratos is shared by every test (and keeps what an
/// `Orphan` example leaves).
fn unique_examples(text: &str, ns: &str) -> String {
    text.replace("@example.com", &format!("@{ns}.example.com"))
        .replace("username: bob", &format!("username: bob-{ns}"))
        .replace("subject: \"1234567\"", &format!("subject: \"{ns}\""))
}

// ---------------------------------------------------------------------------------------------
// The guide's manifests and Flux's objects

/// The manifests of deploy/flux.md: every YAML document of its `yaml` code blocks.
fn guide_manifests() -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("deploy").join("flux.md")).unwrap();
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```yaml") => block = Some(String::new()),
            (Some(b), "```") => {
                for doc in yaml_serde::Deserializer::from_str(b) {
                    let v: Value = serde::Deserialize::deserialize(doc).unwrap();
                    if !v.is_null() {
                        out.push(v);
                    }
                }
                block = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// The guide's manifest of `kind` named `name`.
fn guide(kind: &str, name: &str) -> Value {
    guide_manifests()
        .into_iter()
        .find(|m| m["kind"] == kind && m["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/flux.md has no {kind} {name}"))
}

fn api_resource(manifest: &Value) -> ApiResource {
    let api_version = manifest["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = manifest["kind"].as_str().unwrap();
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn flux_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let api_version = match kind {
        "GitRepository" => "source.toolkit.fluxcd.io/v1",
        _ => "kustomize.toolkit.fluxcd.io/v1",
    };
    Api::namespaced_with(
        client.clone(),
        ns,
        &api_resource(&json!({ "apiVersion": api_version, "kind": kind })),
    )
}

/// Applies a manifest (namespaced, with its namespace set) as the tests' field manager.
async fn apply_manifest(client: &Client, manifest: &Value) {
    let ns = manifest["metadata"]["namespace"].as_str().unwrap();
    let name = manifest["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(manifest));
    api.patch(
        name,
        &PatchParams::apply("kratos-operator-tests").force(),
        &Patch::Apply(manifest),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {} {name}: {e}", manifest["kind"]));
}

/// A GitRepository of the guide (`name`), in `ns`, reading `repo` every 2 seconds.
fn git_repository(name: &str, ns: &str, repo: &Repo) -> Value {
    let mut m = guide("GitRepository", name);
    m["metadata"]["namespace"] = ns.into();
    m["spec"]["url"] = repo.flux_url.clone().into();
    m["spec"]["interval"] = "2s".into();
    m
}

/// A Kustomization of the guide (`name`), in `ns`, every 5 seconds, its sources and
/// dependencies in `ns` too.
fn kustomization(name: &str, ns: &str) -> Value {
    let mut m = guide("Kustomization", name);
    m["metadata"]["namespace"] = ns.into();
    m["spec"]["interval"] = "5s".into();
    m
}

/// The Ready condition of a Flux object: (status, reason, message, observedGeneration). Flux
/// keeps the object's `status.observedGeneration` at -1 until a reconcile succeeds; the
/// condition's own says which generation it is about.
fn flux_ready(obj: &DynamicObject) -> Option<(String, String, String, Option<i64>)> {
    let c = obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((
        s("status"),
        s("reason"),
        s("message"),
        c["observedGeneration"].as_i64(),
    ))
}

/// Waits until the Kustomization has dealt with `revision` (a commit id) and says Ready
/// `status`; returns its Ready condition.
async fn wait_kustomization(
    client: &Client,
    ns: &str,
    name: &str,
    revision: &str,
    status: &str,
    timeout: Duration,
) -> (String, String, String) {
    let api = flux_api(client, ns, "Kustomization");
    eventually(
        &format!("Kustomization {ns}/{name} Ready={status} at {revision}"),
        timeout,
        || async {
            let k = api.get(name).await.ok()?;
            let attempted = k.data["status"]["lastAttemptedRevision"]
                .as_str()
                .unwrap_or_default();
            let ready = flux_ready(&k)?;
            (attempted.ends_with(revision) && ready.0 == status && ready.3 == k.metadata.generation)
                .then_some((ready.0, ready.1, ready.2))
        },
    )
    .await
}

/// Asks source-controller to fetch the repository now, as `flux reconcile source git` does.
async fn fetch_now(client: &Client, ns: &str, name: &str) {
    let now = jiff::Timestamp::now().to_string();
    flux_api(client, ns, "GitRepository")
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": now } } })),
        )
        .await
        .unwrap();
}

async fn delete_flux_objects(client: &Client, ns: &str) {
    for kind in ["Kustomization", "GitRepository"] {
        let _ = flux_api(client, ns, kind)
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await;
    }
}

/// The operator in the test process, watching the test's namespace, with no resync inside a
/// test (drift sweeps read; nothing else happens unless something changes).
async fn operator(t: &TestEnv) -> support::Operator {
    let settings = kratos_operator::controller::Settings {
        resync_interval: Duration::from_secs(300),
        schema_recheck_interval: Duration::from_secs(300),
        ..test_settings(&t.namespace)
    };
    start_operator_with(t, &t.kratos_admin_url, &t.kratos_public_url, settings).await
}

fn identity_yaml(name: &str, email: &str, extra: &str) -> String {
    format!(
        "apiVersion: kratos-operator.dev/v1alpha1\nkind: Identity\nmetadata:\n  name: {name}\nspec:\n  schemaId: customer\n  traits:\n    email: {email}\n{extra}"
    )
}

fn is_ready(obj: &impl serde::Serialize) -> bool {
    condition(obj, "Ready")["status"] == "True"
}

/// `Kind/name` and resource version of every object of `K` in `ns`.
async fn versions_of<K>(client: &Client, ns: &str) -> Vec<(String, String)>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|o| {
            (
                format!("{}/{}", K::kind(&()), o.name_any()),
                o.resource_version().unwrap(),
            )
        })
        .collect()
}

/// Resource versions of every object of our kinds in `ns`.
async fn versions(client: &Client, ns: &str) -> Vec<(String, String)> {
    let mut out = versions_of::<Identity>(client, ns).await;
    out.extend(versions_of::<IdentitySchemaRef>(client, ns).await);
    out.extend(versions_of::<RecoveryRequest>(client, ns).await);
    out.sort();
    out
}

/// Installs the chart's MutatingAdmissionPolicy that gives every new Identity the operator's
/// finalizer at admission, bound to the test's namespace and owned by it; `false` where the API
/// server does not serve the kind.
async fn admission_finalizer(t: &TestEnv) -> bool {
    if !chart_support::serves_mutating_admission_policies() {
        return false;
    }
    let admin = format!("kratos.adminUrl={}", t.kratos_admin_url);
    let watch = format!("watchNamespaces={{{}}}", t.namespace);
    let docs = chart_support::json_documents(&chart_support::render(
        &t.namespace,
        &t.namespace,
        &[
            "--set",
            &admin,
            "--set",
            &watch,
            "--show-only",
            "templates/admission-policies.yaml",
        ],
    ));
    let namespace = Api::<Namespace>::all(t.client.clone())
        .get(&t.namespace)
        .await
        .unwrap();
    let owner = json!([{
        "apiVersion": "v1", "kind": "Namespace",
        "name": t.namespace, "uid": namespace.uid().unwrap(),
    }]);
    let mut installed = 0;
    for mut doc in docs {
        if doc["kind"]
            .as_str()
            .unwrap_or_default()
            .starts_with("MutatingAdmissionPolicy")
        {
            doc["metadata"]["ownerReferences"] = owner.clone();
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            Api::<DynamicObject>::all_with(t.client.clone(), &api_resource(&doc))
                .patch(
                    &name,
                    &PatchParams::apply("kratos-operator-tests").force(),
                    &Patch::Apply(&doc),
                )
                .await
                .unwrap();
            installed += 1;
        }
    }
    assert_eq!(installed, 2, "the chart's policy and its binding");
    true
}

// ---------------------------------------------------------------------------------------------

/// Bootstrap: a repository with deploy/examples and 500 Identities. The Kustomization
/// (`wait: true`, `prune: true`, a timeout) turns Ready only once every object is Ready. Then,
/// over several Flux intervals with no change in Git, neither our objects nor Kratos get a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_of_500_identities_is_ready_once_every_object_is_and_then_idle() {
    const N: usize = 500;
    let _shared = CLUSTER_WIDE.read().await;
    let t = setup("gitops-boot").await;
    let flux = flux().await;
    // Everything that writes our objects is there: Flux, the operator with its drift sweeps
    // (every 2 s here), and where served the admission policy's finalizer.
    let admission = admission_finalizer(&t).await;
    let op = support::start_operator(&t).await;
    let repo = Repo::new(&flux, &t.namespace);
    let examples = repo_root().join("deploy").join("examples");
    copy_dir(&examples, &repo, "identities/team-a/examples", &|text| {
        unique_examples(text, &t.namespace)
    });
    let mut generated = String::new();
    for i in 0..N {
        generated.push_str("---\n");
        generated.push_str(&identity_yaml(
            &format!("user-{i:04}"),
            &t.email(&format!("user-{i:04}")),
            "",
        ));
    }
    repo.write("identities/team-a/generated.yaml", &generated);
    repo.write(
        "identities/team-a/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - examples\n  - generated.yaml\n",
    );
    let pushed = Instant::now();
    let revision = repo.push("500 identities and the examples");

    // The guide's objects, in the test's namespace; the identities' Kustomization depends on no
    // operator Kustomization here (the operator runs in the test process).
    apply_manifest(&t.client, &git_repository("platform", &t.namespace, &repo)).await;
    let mut k = kustomization("team-a-identities", &t.namespace);
    k["spec"]["targetNamespace"] = t.namespace.clone().into();
    k["spec"].as_object_mut().unwrap().remove("dependsOn");
    apply_manifest(&t.client, &k).await;

    // Ready only once every object is: each time the Kustomization is seen Ready, every object
    // is Ready too; before, it says why it waits.
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let requests: Api<RecoveryRequest> = Api::namespaced(t.client.clone(), &t.namespace);
    let kustomizations = flux_api(&t.client, &t.namespace, "Kustomization");
    let seen_waiting = std::sync::Mutex::new(None);
    let ready_after = eventually("the Kustomization to be Ready", T, || async {
        let k = kustomizations.get("team-a-identities").await.ok()?;
        let ready = flux_ready(&k)?;
        if ready.0 != "True" {
            seen_waiting.lock().unwrap().get_or_insert(ready);
            return None;
        }
        let all = identities.list(&Default::default()).await.unwrap();
        let not_ready: Vec<String> = all
            .iter()
            .filter(|i| !is_ready(*i))
            .map(ResourceExt::name_any)
            .collect();
        assert_eq!(all.items.len(), N + 2, "every Identity applied");
        assert!(
            not_ready.is_empty(),
            "the Kustomization is Ready ({ready:?}) while these are not: {not_ready:?}"
        );
        for r in requests.list(&Default::default()).await.unwrap() {
            assert!(
                is_ready(&r),
                "RecoveryRequest {} is not Ready",
                r.name_any()
            );
        }
        Some(pushed.elapsed())
    })
    .await;
    let waiting = seen_waiting
        .into_inner()
        .unwrap()
        .expect("the Kustomization was seen waiting before it was Ready");
    println!(
        "FIGURE bootstrap: {N} Identities + examples Ready {ready_after:.1?} after the push; while waiting: {waiting:?}"
    );
    let (_, _, message) = wait_kustomization(
        &t.client,
        &t.namespace,
        "team-a-identities",
        &revision,
        "True",
        T,
    )
    .await;
    assert!(message.contains(&revision), "{message}");

    // Idle: several Flux intervals (5 s each) without a change in Git.
    let kratos_writes = op.kratos.metrics().writes();
    let before = versions(&t.client, &t.namespace).await;
    let applied_before =
        kustomizations.get("team-a-identities").await.unwrap().data["status"]["conditions"].clone();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let after = versions(&t.client, &t.namespace).await;
    let changed: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, _)| b.0.clone())
        .collect();
    let writes = op.kratos.metrics().writes() - kratos_writes;
    println!(
        "FIGURE idle: 25 s (5 Flux intervals, 12 drift sweeps, admission finalizer {admission}): {} objects written, {writes} Kratos writes",
        changed.len()
    );
    assert_eq!(before.len(), after.len());
    assert!(
        changed.is_empty(),
        "objects written while idle: {changed:?}"
    );
    assert_eq!(writes, 0, "Kratos writes while idle");
    // Flux did look during the window: its Ready condition was refreshed (it reconciles each
    // interval and reports the time it did so).
    let applied_after =
        kustomizations.get("team-a-identities").await.unwrap().data["status"]["conditions"].clone();
    assert_ne!(
        applied_before, applied_after,
        "kustomize-controller reconciled during the idle window"
    );

    // Pruned as a whole: deleting the Kustomization deletes every object, and the identities
    // (deletionPolicy Delete) in Kratos; bob (Orphan) stays.
    kustomizations
        .delete("team-a-identities", &DeleteParams::default())
        .await
        .unwrap();
    support::wait_all_gone(&identities, T).await;
    delete_flux_objects(&t.client, &t.namespace).await;
    t.cleanup().await;
}

/// Changes in Git reach Kratos; a removed file is pruned, and its identity deleted in Kratos
/// (kept under `deletionPolicy: Orphan`); a `kubectl edit` of a managed Identity is reverted by
/// Flux, and Kratos ends at Git's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_changes_reach_kratos_prunes_delete_or_orphan_and_edits_are_reverted() {
    let _shared = CLUSTER_WIDE.read().await;
    let t = setup("gitops-change").await;
    let flux = flux().await;
    let _op = operator(&t).await;
    let kratos = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    let repo = Repo::new(&flux, &t.namespace);
    repo.write(
        "identities/schema.yaml",
        "apiVersion: kratos-operator.dev/v1alpha1\nkind: IdentitySchemaRef\nmetadata:\n  name: customer\nspec:\n  schemaId: customer\n",
    );
    let with_tier = |tier: &str| format!("    tier: {tier}\n");
    repo.write(
        "identities/carol.yaml",
        &identity_yaml("carol", &t.email("carol"), &with_tier("free")),
    );
    repo.write(
        "identities/dave.yaml",
        &identity_yaml("dave", &t.email("dave"), ""),
    );
    repo.write(
        "identities/erin.yaml",
        &identity_yaml("erin", &t.email("erin"), "  deletionPolicy: Orphan\n"),
    );
    let revision = repo.push("three identities");
    apply_manifest(&t.client, &git_repository("platform", &t.namespace, &repo)).await;
    let mut k = kustomization("team-a-identities", &t.namespace);
    k["spec"]["targetNamespace"] = t.namespace.clone().into();
    k["spec"]["path"] = "./identities".into();
    k["spec"].as_object_mut().unwrap().remove("dependsOn");
    apply_manifest(&t.client, &k).await;
    wait_kustomization(
        &t.client,
        &t.namespace,
        "team-a-identities",
        &revision,
        "True",
        T,
    )
    .await;
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let id_of = |i: &Identity| i.status.as_ref().unwrap().identity_id.clone().unwrap();
    let carol = id_of(&identities.get("carol").await.unwrap());
    let dave = id_of(&identities.get("dave").await.unwrap());
    let erin = id_of(&identities.get("erin").await.unwrap());
    let tier_in_kratos = |id: String| {
        let kratos = kratos.clone();
        async move { kratos.get_identity(&id, &[]).await.unwrap().traits["tier"].clone() }
    };
    assert_eq!(tier_in_kratos(carol.clone()).await, "free");

    // A trait changed in Git reaches Kratos.
    repo.write(
        "identities/carol.yaml",
        &identity_yaml("carol", &t.email("carol"), &with_tier("pro")),
    );
    let changed_at = Instant::now();
    let revision = repo.push("carol is pro");
    fetch_now(&t.client, &t.namespace, "platform").await;
    eventually("carol's tier to be pro in Kratos", T, || async {
        (tier_in_kratos(carol.clone()).await == "pro").then_some(())
    })
    .await;
    println!(
        "FIGURE change: a trait changed in Git reached Kratos {:.1?} after the push",
        changed_at.elapsed()
    );
    wait_kustomization(
        &t.client,
        &t.namespace,
        "team-a-identities",
        &revision,
        "True",
        T,
    )
    .await;

    // A manual edit is reverted by Flux (at its next interval), and Kratos ends at Git's value.
    let edit = chart_support::kubectl_run(
        &t.env.state.kubeconfig,
        &[
            "-n",
            &t.namespace,
            "patch",
            "identity",
            "carol",
            "--type=merge",
            "--field-manager=kubectl-edit",
            "-p",
            r#"{"spec":{"traits":{"tier":"free"}}}"#,
        ],
        None,
    );
    assert!(edit.status.success(), "{}", chart_support::describe(&edit));
    let edited_at = Instant::now();
    eventually("Flux to revert the edit", T, || async {
        let c = identities.get("carol").await.ok()?;
        (c.spec.traits["tier"] == "pro").then_some(())
    })
    .await;
    let reverted = edited_at.elapsed();
    eventually("Kratos to end at Git's value", T, || async {
        let c = identities.get("carol").await.ok()?;
        let synced = condition(&c, "Ready")["status"] == "True"
            && c.status.as_ref()?.observed_generation == c.metadata.generation;
        (synced && tier_in_kratos(carol.clone()).await == "pro").then_some(())
    })
    .await;
    println!("FIGURE edit: a kubectl edit was reverted by Flux {reverted:.1?} after it");

    // A file removed from Git is pruned, and the identity is deleted in Kratos; the Orphan one
    // stays in Kratos.
    repo.remove("identities/dave.yaml");
    repo.remove("identities/erin.yaml");
    let pushed_at = Instant::now();
    let revision = repo.push("dave and erin leave");
    fetch_now(&t.client, &t.namespace, "platform").await;
    // When Flux pruned the object (it has a deletionTimestamp, or is gone), and when its identity
    // was gone from Kratos.
    let pruned_at = std::sync::Mutex::new(None);
    eventually("dave's identity to be deleted in Kratos", T, || async {
        let object = identities.get_opt("dave").await.unwrap();
        if object.is_none_or(|d| d.metadata.deletion_timestamp.is_some()) {
            pruned_at.lock().unwrap().get_or_insert_with(Instant::now);
        }
        kratos.get_identity(&dave, &[]).await.is_err().then_some(())
    })
    .await;
    let pruned_at = pruned_at
        .into_inner()
        .unwrap()
        .expect("Flux pruned the object");
    println!(
        "FIGURE prune: Flux pruned the object {:.1?} after the push; its identity was gone from Kratos {:.1?} after that",
        pruned_at - pushed_at,
        pruned_at.elapsed()
    );
    wait_kustomization(
        &t.client,
        &t.namespace,
        "team-a-identities",
        &revision,
        "True",
        T,
    )
    .await;
    for name in ["dave", "erin"] {
        eventually(&format!("{name} to be pruned"), T, || async {
            identities
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }
    let kept = kratos
        .get_identity(&erin, &[])
        .await
        .expect("erin (Orphan) stays in Kratos");
    assert_eq!(kept.traits["email"], t.email("erin"));
    assert!(
        matches!(
            kratos.get_identity(&dave, &[]).await,
            Err(kratos_operator::kratos::Error::NotFound { .. })
        ),
        "dave is gone from Kratos"
    );

    flux_api(&t.client, &t.namespace, "Kustomization")
        .delete("team-a-identities", &DeleteParams::default())
        .await
        .unwrap();
    support::wait_all_gone(&identities, T).await;
    delete_flux_objects(&t.client, &t.namespace).await;
    let _ = kratos.delete_identity(&erin).await;
    t.cleanup().await;
}

/// Traits the schema refuses, in Git: the Kustomization's Ready=False message names the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_spec_in_git_is_named_in_the_kustomizations_ready_condition() {
    let _shared = CLUSTER_WIDE.read().await;
    let t = setup("gitops-bad").await;
    let flux = flux().await;
    let _op = operator(&t).await;
    let repo = Repo::new(&flux, &t.namespace);
    repo.write(
        "identities/good.yaml",
        &identity_yaml("good", &t.email("good"), ""),
    );
    repo.write(
        "identities/bad.yaml",
        &identity_yaml("bad", "not-an-email", ""),
    );
    let revision = repo.push("one good, one bad");
    apply_manifest(&t.client, &git_repository("platform", &t.namespace, &repo)).await;
    let mut k = kustomization("team-a-identities", &t.namespace);
    k["spec"]["targetNamespace"] = t.namespace.clone().into();
    k["spec"]["path"] = "./identities".into();
    k["spec"]["timeout"] = "60s".into();
    k["spec"].as_object_mut().unwrap().remove("dependsOn");
    apply_manifest(&t.client, &k).await;
    let (_, reason, message) = wait_kustomization(
        &t.client,
        &t.namespace,
        "team-a-identities",
        &revision,
        "False",
        T,
    )
    .await;
    println!("FIGURE bad spec: Kustomization Ready=False {reason}: {message}");
    assert!(
        message.contains(&format!("Identity/{}/bad", t.namespace)),
        "the message names the object: {message}"
    );
    assert!(
        !message.contains("Identity/") || !message.contains("/good"),
        "only the bad object: {message}"
    );
    let bad = Api::<Identity>::namespaced(t.client.clone(), &t.namespace)
        .get("bad")
        .await
        .unwrap();
    assert_eq!(condition(&bad, "Ready")["reason"], "InvalidSpec");
    delete_flux_objects(&t.client, &t.namespace).await;
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    support::wait_all_gone(&identities, T).await;
    t.cleanup().await;
}

/// A tenant's Kustomization impersonating its ServiceAccount (the guide's, with rights in its
/// namespace only) cannot write outside its namespace, adopt an identity, or recover one by id:
/// the Forbidden reason surfaces in the Kustomization's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_kustomization_cannot_reach_outside_its_namespace() {
    let _shared = CLUSTER_WIDE.read().await;
    let t = setup("gitops-tenant").await;
    let other = setup("gitops-other").await;
    let flux = flux().await;
    let op = operator(&t).await;
    // The other team's identity, made by its own operator.
    let other_op = operator(&other).await;
    other
        .identity(
            "victim",
            json!({ "schemaId": "customer", "traits": { "email": other.email("victim") } }),
        )
        .await;
    let victim = support::wait_ready::<Identity>(&other, "victim", "True", Some("Synced"), T).await;
    let victim_id = victim.status.unwrap().identity_id.unwrap();

    // The guide's tenant objects, in the tenant's namespace (team-a -> the test's).
    let tenant = |m: Value| -> Value {
        let text = serde_json::to_string(&m)
            .unwrap()
            .replace("\"team-a\"", &format!("\"{}\"", t.namespace));
        serde_json::from_str(&text).unwrap()
    };
    for (kind, name) in [
        ("ServiceAccount", "identities-reconciler"),
        ("Role", "identities-reconciler"),
        ("RoleBinding", "identities-reconciler"),
    ] {
        apply_manifest(&t.client, &tenant(guide(kind, name))).await;
    }
    let repo = Repo::new(&flux, &t.namespace);
    let ns = &t.namespace;
    repo.write(
        "outside/identity.yaml",
        &format!(
            "apiVersion: kratos-operator.dev/v1alpha1\nkind: Identity\nmetadata:\n  name: intruder\n  namespace: {}\nspec:\n  schemaId: customer\n  traits:\n    email: {}\n",
            other.namespace,
            t.email("intruder")
        ),
    );
    repo.write(
        "adopt/identity.yaml",
        &format!(
            "apiVersion: kratos-operator.dev/v1alpha1\nkind: Identity\nmetadata:\n  name: takeover\n  namespace: {ns}\nspec:\n  schemaId: customer\n  adoption: IfUnowned\n  traits:\n    email: {}\n",
            other.email("victim")
        ),
    );
    repo.write(
        "recover/request.yaml",
        &format!(
            "apiVersion: kratos-operator.dev/v1alpha1\nkind: RecoveryRequest\nmetadata:\n  name: steal\n  namespace: {ns}\nspec:\n  identityId: {victim_id}\n  method: code\n"
        ),
    );
    let revision = repo.push("a tenant reaching out");
    let mut source = tenant(guide("GitRepository", "team-a"));
    source["spec"]["url"] = repo.flux_url.clone().into();
    source["spec"]["interval"] = "2s".into();
    apply_manifest(&t.client, &source).await;
    let base = tenant(guide("Kustomization", "identities"));
    for path in ["outside", "adopt", "recover"] {
        let mut k = base.clone();
        k["metadata"]["name"] = path.into();
        k["spec"]["path"] = format!("./{path}").into();
        k["spec"]["interval"] = "5s".into();
        k["spec"]["timeout"] = "60s".into();
        apply_manifest(&t.client, &k).await;
    }
    let outside = wait_kustomization(&t.client, ns, "outside", &revision, "False", T).await;
    println!("FIGURE tenant, outside its namespace: {outside:?}");
    assert!(
        outside.2.contains("forbidden")
            && outside
                .2
                .contains(&format!("system:serviceaccount:{ns}:identities-reconciler")),
        "the API server refused the impersonated ServiceAccount: {outside:?}"
    );
    let intruder = Api::<Identity>::namespaced(other.client.clone(), &other.namespace)
        .get_opt("intruder")
        .await
        .unwrap();
    assert!(
        intruder.is_none(),
        "nothing was written in the other namespace"
    );

    for (path, kind, name) in [
        ("adopt", "Identity", "takeover"),
        ("recover", "RecoveryRequest", "steal"),
    ] {
        let (_, reason, message) =
            wait_kustomization(&t.client, ns, path, &revision, "False", T).await;
        println!("FIGURE tenant, {path}: Ready=False {reason}: {message}");
        assert!(
            message.contains(&format!("{kind}/{ns}/{name}")) || message.contains("Forbidden"),
            "{path}: {message}"
        );
    }
    let takeover = Api::<Identity>::namespaced(t.client.clone(), ns)
        .get("takeover")
        .await
        .unwrap();
    let steal = Api::<RecoveryRequest>::namespaced(t.client.clone(), ns)
        .get("steal")
        .await
        .unwrap();
    for (name, c) in [
        ("takeover", condition(&takeover, "Ready")),
        ("steal", condition(&steal, "Ready")),
    ] {
        assert_eq!(c["reason"], "Forbidden", "{name}: {c}");
    }
    // The victim's identity is untouched and still its owner's.
    let still = kratos_client(&t.kratos_admin_url, &t.kratos_public_url)
        .get_identity(&victim_id, &[])
        .await
        .unwrap();
    assert_eq!(still.traits["email"], other.email("victim"));
    assert_eq!(
        op.kratos.metrics().writes(),
        0,
        "the tenant's operator wrote nothing to Kratos"
    );

    delete_flux_objects(&t.client, ns).await;
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), ns);
    support::wait_all_gone(&identities, T).await;
    Api::<Identity>::namespaced(other.client.clone(), &other.namespace)
        .delete("victim", &DeleteParams::default())
        .await
        .unwrap();
    support::wait_all_gone(
        &Api::<Identity>::namespaced(other.client.clone(), &other.namespace),
        T,
    )
    .await;
    drop(other_op);
    t.cleanup().await;
    other.cleanup().await;
}

/// The add-on itself: Kustomizations of the guide apply the CRDs, then deploy/base (`dependsOn`),
/// and the operator runs as a pod on the environment's node; then the identities that depend on
/// it turn Ready. deploy/base's image is the release the test command published to the
/// environment's registry, and the operator watches the test's namespace only (two changes to
/// the guide's Kustomization, besides namespace, URL and intervals).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flux_installs_the_operator_then_the_identities_that_depend_on_it() {
    let _alone = CLUSTER_WIDE.write().await;
    let t = setup("gitops-addon").await;
    let flux = flux().await;
    let env = node_support::node_env().await;
    let published = kratos_operator_testenv::registry::Published::read(&env.dir)
        .unwrap()
        .expect("no release in the environment's registry; `cargo xtask test` (or `cargo xtask testenv up --node`) publishes one");
    let repo = Repo::new(&flux, &t.namespace);
    let base = repo_root().join("deploy").join("base");
    copy_dir(&base, &repo, "deploy/base", &|text| text.to_string());
    copy_dir(&base.join("crds"), &repo, "deploy/base/crds", &|text| {
        text.to_string()
    });
    repo.write(
        "identities/team-a/alice.yaml",
        &identity_yaml("alice", &t.email("alice"), ""),
    );
    let revision = repo.push("the operator and one identity");
    let started = Instant::now();
    let ns = &t.namespace;
    apply_manifest(&t.client, &git_repository("platform", ns, &repo)).await;
    apply_manifest(&t.client, &kustomization("kratos-operator-crds", ns)).await;
    let mut operator = kustomization("kratos-operator", ns);
    let (image, digest) = (published.image.clone(), published.image_digest.clone());
    operator["spec"]["images"] = json!([{
        "name": "ghcr.io/kratos-operator/kratos-operator",
        "newName": image,
        "digest": digest,
    }]);
    operator["spec"]["patches"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "target": { "kind": "Deployment", "name": "kratos-operator" },
            "patch": format!("- op: add\n  path: /spec/template/spec/containers/0/env/-\n  value:\n    name: WATCH_NAMESPACE\n    value: {ns}\n"),
        }));
    apply_manifest(&t.client, &operator).await;
    let mut identities_k = kustomization("team-a-identities", ns);
    identities_k["spec"]["targetNamespace"] = ns.clone().into();
    apply_manifest(&t.client, &identities_k).await;

    let crds =
        wait_kustomization(&t.client, ns, "kratos-operator-crds", &revision, "True", T).await;
    let installed =
        wait_kustomization(&t.client, ns, "kratos-operator", &revision, "True", T).await;
    println!(
        "FIGURE add-on: CRDs {crds:?}; operator Ready {:.1?} after the push: {installed:?}",
        started.elapsed()
    );
    wait_kustomization(&t.client, ns, "team-a-identities", &revision, "True", T).await;
    let alice = Api::<Identity>::namespaced(t.client.clone(), ns)
        .get("alice")
        .await
        .unwrap();
    assert_eq!(condition(&alice, "Ready")["reason"], "Synced");
    let id = alice.status.as_ref().unwrap().identity_id.clone().unwrap();
    let kratos = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    assert_eq!(
        kratos.get_identity(&id, &[]).await.unwrap().traits["email"],
        t.email("alice")
    );
    // The operator that made it is the pod Flux installed, from the published image.
    let pods = kubectl_json(
        &env,
        &[
            "-n",
            "kratos-operator",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=kratos-operator",
        ],
    );
    let images: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["spec"]["containers"][0]["image"].as_str())
        .collect();
    assert!(
        !images.is_empty() && images.iter().all(|i| i.ends_with(&published.image_digest)),
        "{images:?}"
    );
    // Every object of deploy/base has one owner: the CRDs belong to the CRDs' Kustomization.
    let crd_owner = kubectl_json(&env, &["get", "crd", "identities.kratos-operator.dev"]);
    assert_eq!(
        crd_owner["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"],
        "kratos-operator-crds"
    );

    // Removed in order: the identities (while the operator runs, so their finalizers run), then
    // the operator. The CRDs stay: their Kustomization does not prune.
    let kustomizations = flux_api(&t.client, ns, "Kustomization");
    kustomizations
        .delete("team-a-identities", &DeleteParams::default())
        .await
        .unwrap();
    support::wait_all_gone(&Api::<Identity>::namespaced(t.client.clone(), ns), T).await;
    assert!(
        kratos.get_identity(&id, &[]).await.is_err(),
        "deleted in Kratos"
    );
    kustomizations
        .delete("kratos-operator", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the operator's namespace to go", T, || async {
        let ns = Api::<Namespace>::all(t.client.clone())
            .get_opt("kratos-operator")
            .await
            .unwrap();
        ns.is_none().then_some(())
    })
    .await;
    delete_flux_objects(&t.client, ns).await;
    t.cleanup().await;
}

/// The manifests of deploy/flux.md the tests above apply: a manifest added to the guide must be
/// applied by one of them (and added here), or this fails.
const GUIDE_APPLIED: [(&str, &str); 9] = [
    ("GitRepository", "platform"),
    ("Kustomization", "kratos-operator-crds"),
    ("Kustomization", "kratos-operator"),
    ("Kustomization", "team-a-identities"),
    ("ServiceAccount", "identities-reconciler"),
    ("Role", "identities-reconciler"),
    ("RoleBinding", "identities-reconciler"),
    ("GitRepository", "team-a"),
    ("Kustomization", "identities"),
];

#[test]
fn every_manifest_of_the_guide_is_one_a_test_applies() {
    let mut in_guide: Vec<(String, String)> = guide_manifests()
        .iter()
        .map(|m| {
            (
                m["kind"].as_str().unwrap().to_string(),
                m["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut applied: Vec<(String, String)> = GUIDE_APPLIED
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
    in_guide.sort();
    applied.sort();
    assert_eq!(in_guide, applied);
}
