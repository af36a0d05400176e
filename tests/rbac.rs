//! RBAC proof: the chart's ServiceAccount, (Cluster)Roles and bindings are installed into the real
//! apiserver, and an operator whose Kubernetes client impersonates that ServiceAccount (and
//! nothing else) runs the full Identity and RecoveryRequest flows against the real Kratos. The same
//! client is then refused what the chart does not grant.
//!
//! One test per RBAC mode of the chart: cluster mode (a ClusterRole) and namespace mode
//! (`watchNamespaces`: a Role per namespace). Each uses its own release name, so the cluster-scoped
//! names never clash between tests, and its own namespace; the cluster-scoped objects are owned by
//! that namespace, so deleting it deletes them.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart_support;
mod support;

use std::time::Duration;

use chart_support::{PLACEHOLDER_ADMIN_URL, json_documents, render};
use futures::FutureExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kratos_operator::api::{Identity, IdentitySchemaRef, RecoveryRequest};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};
use support::{
    TestEnv, eventually, install_crds, kratos_client, login, setup, test_settings, unique_name,
    wait_ready,
};

const T: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------------------
// Installing the chart's RBAC and impersonating its ServiceAccount

/// What was installed: the ServiceAccount's name and the objects, as `Kind/name`.
struct Installed {
    service_account: String,
    objects: Vec<String>,
}

/// Renders the chart into the test namespace with `set` and creates its ServiceAccount and RBAC
/// objects (and nothing else). Cluster-scoped objects get the test namespace as owner.
async fn install_chart_rbac(t: &TestEnv, release: &str, set: &[&str]) -> Installed {
    let admin = format!("kratos.adminUrl={PLACEHOLDER_ADMIN_URL}");
    let mut args = vec!["--set", admin.as_str()];
    for s in set {
        args.extend(["--set", s]);
    }
    let docs = json_documents(&render(release, &t.namespace, &args));
    let namespace = Api::<Namespace>::all(t.client.clone())
        .get(&t.namespace)
        .await
        .unwrap();
    let owner = json!([{
        "apiVersion": "v1", "kind": "Namespace",
        "name": t.namespace, "uid": namespace.uid().unwrap(),
    }]);
    let pp = PostParams::default();
    let mut service_account = None;
    let mut objects = Vec::new();
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap().to_string();
        let ns = doc["metadata"]["namespace"].as_str().map(str::to_string);
        match kind.as_str() {
            "ServiceAccount" => {
                let sa: ServiceAccount = serde_json::from_value(doc).unwrap();
                service_account = Some(sa.name_any());
                let api = Api::<ServiceAccount>::namespaced(t.client.clone(), &ns.unwrap());
                objects.push(format!("ServiceAccount/{}", sa.name_any()));
                api.create(&pp, &sa).await.unwrap();
            }
            "ClusterRole" => {
                doc["metadata"]["ownerReferences"] = owner.clone();
                let role: ClusterRole = serde_json::from_value(doc).unwrap();
                objects.push(format!("ClusterRole/{}", role.name_any()));
                Api::<ClusterRole>::all(t.client.clone())
                    .create(&pp, &role)
                    .await
                    .unwrap();
            }
            "ClusterRoleBinding" => {
                doc["metadata"]["ownerReferences"] = owner.clone();
                let binding: ClusterRoleBinding = serde_json::from_value(doc).unwrap();
                objects.push(format!("ClusterRoleBinding/{}", binding.name_any()));
                Api::<ClusterRoleBinding>::all(t.client.clone())
                    .create(&pp, &binding)
                    .await
                    .unwrap();
            }
            "Role" => {
                let role: Role = serde_json::from_value(doc).unwrap();
                objects.push(format!("Role/{}", role.name_any()));
                Api::<Role>::namespaced(t.client.clone(), &ns.unwrap())
                    .create(&pp, &role)
                    .await
                    .unwrap();
            }
            "RoleBinding" => {
                let binding: RoleBinding = serde_json::from_value(doc).unwrap();
                objects.push(format!("RoleBinding/{}", binding.name_any()));
                Api::<RoleBinding>::namespaced(t.client.clone(), &ns.unwrap())
                    .create(&pp, &binding)
                    .await
                    .unwrap();
            }
            // The workload itself is not run here: the operator runs in-process.
            "Deployment" | "Service" => {}
            other => panic!("unexpected kind {other} in the chart's default render"),
        }
    }
    objects.sort();
    Installed {
        service_account: service_account.expect("the chart renders a ServiceAccount"),
        objects,
    }
}

/// A client of the environment's apiserver that acts as `system:serviceaccount:<ns>:<sa>` with
/// the groups every ServiceAccount token carries, and no other rights.
async fn client_as_service_account(t: &TestEnv, sa: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(&t.env.state.kubeconfig).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{}:{sa}", t.namespace));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{}", t.namespace),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).unwrap()
}

/// An operator running inside the test process with the given (impersonating) client.
struct Operator {
    ctx: std::sync::Arc<kratos_operator::controller::Context>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_operator_as(t: &TestEnv, client: Client) -> Operator {
    let kratos = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    let ctx = std::sync::Arc::new(kratos_operator::controller::Context::new(
        client,
        kratos,
        test_settings(&t.namespace),
    ));
    let task = tokio::spawn(kratos_operator::controller::run(
        ctx.clone(),
        futures::future::pending().boxed(),
    ));
    Operator { ctx, task }
}

/// The operator's /readyz verdict (CRDs readable, Kratos answers, caches synced) turns ready.
async fn becomes_ready(op: &Operator) {
    let names: Vec<String> = kratos_operator::api::crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let mut last = None;
    let ready = tokio::time::timeout(T, async {
        loop {
            last = kratos_operator::server::not_ready_reason(&op.ctx, &names).await;
            if last.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "/readyz never turned ready: {last:?}");
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Asserts that `result` is a 403 Forbidden.
fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(e) if status_code(&e) == Some(403) => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The flows

async fn apply_as_admin<K>(t: &TestEnv, manifest: Value) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    support::apply::<K>(t, manifest).await
}

fn recovery_phase(r: &RecoveryRequest) -> Option<String> {
    r.status.as_ref().and_then(|s| s.phase).map(|p| {
        serde_json::to_value(p)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    })
}

/// Identity with a password Secret -> Ready and login works; RecoveryRequest -> Secret written,
/// moved to a new Secret (the old one deleted), expired (data cleared); Identity deleted -> gone
/// from Kratos. Everything the operator does here, it does with `operator`'s rights.
async fn full_flow(t: &TestEnv) {
    let kratos = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    let email = format!("rbac.{}@example.com", t.namespace);
    let password = "rbac-Proof-Password-1";

    // IdentitySchemaRef -> Ready (status subresource write).
    apply_as_admin::<IdentitySchemaRef>(
        t,
        json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef",
            "metadata": { "name": "customer" }, "spec": { "schemaId": "customer" }
        }),
    )
    .await;
    wait_ready::<IdentitySchemaRef>(t, "customer", "True", None, T).await;

    // Identity with a password from a Secret -> Ready, finalizer added, the password works.
    apply_as_admin::<Secret>(
        t,
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "alice-pw" },
            "stringData": { "password": password }
        }),
    )
    .await;
    apply_as_admin::<Identity>(
        t,
        json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": "alice" },
            "spec": {
                "schemaRef": { "name": "customer" },
                "traits": { "email": email, "name": { "first": "Alice" } },
                "credentials": { "password": { "secretRef": { "name": "alice-pw", "key": "password" } } }
            }
        }),
    )
    .await;
    let alice = wait_ready::<Identity>(t, "alice", "True", Some("Synced"), T).await;
    assert!(
        alice
            .finalizers()
            .contains(&"kratos-operator.dev/cleanup".to_string())
    );
    let id = alice.status.as_ref().unwrap().identity_id.clone().unwrap();
    login(&t.kratos_public_url, &email, password)
        .await
        .expect("login with the password from the Secret");
    // Events were recorded (events.k8s.io create).
    eventually("an Event about alice", T, || async {
        (!support::events_for(t, "alice").await.is_empty()).then_some(())
    })
    .await;

    // RecoveryRequest -> a link in a Secret the request owns.
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), &t.namespace);
    let requests: Api<RecoveryRequest> = Api::namespaced(t.client.clone(), &t.namespace);
    let request = |secret_name: &str, expires_in: &str| {
        json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
            "metadata": { "name": "alice-recovery" },
            "spec": {
                "identityRef": { "name": "alice" }, "method": "link",
                "expiresIn": expires_in, "secretName": secret_name
            }
        })
    };
    apply_as_admin::<RecoveryRequest>(t, request("alice-link", "1h")).await;
    let rr = wait_ready::<RecoveryRequest>(t, "alice-recovery", "True", None, T).await;
    assert_eq!(recovery_phase(&rr).as_deref(), Some("Issued"));
    let link = secrets
        .get("alice-link")
        .await
        .expect("the recovery Secret");
    assert!(
        link.data
            .as_ref()
            .and_then(|d| d.get("recoveryLink"))
            .is_some_and(|v| !v.0.is_empty()),
        "the Secret holds the link"
    );
    assert!(
        link.owner_references()
            .iter()
            .any(|o| o.kind == "RecoveryRequest" && o.uid == rr.uid().unwrap()),
        "the request owns its Secret"
    );

    // A new secretName: a new link in the new Secret, the old Secret deleted (Secret delete). A
    // short lifetime: the link expires and the Secret's data is cleared (Secret patch).
    apply_as_admin::<RecoveryRequest>(t, request("alice-link-2", "3s")).await;
    eventually("the old recovery Secret to be deleted", T, || async {
        secrets
            .get_opt("alice-link")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    eventually("the recovery request to expire", T, || async {
        let rr = requests.get("alice-recovery").await.unwrap();
        (recovery_phase(&rr).as_deref() == Some("Expired")).then_some(())
    })
    .await;
    let cleared = secrets.get("alice-link-2").await.unwrap();
    let data = cleared.data.unwrap_or_default();
    assert!(
        ["recoveryLink", "recoveryCode"]
            .iter()
            .all(|k| data.get(*k).is_none_or(|v| v.0.is_empty())),
        "the expired link is cleared; keys left: {:?}",
        data.keys().collect::<Vec<_>>()
    );

    // Delete -> the finalizer removes the Kratos identity, then the object goes.
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    identities
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    eventually("alice to be deleted", T, || async {
        identities
            .get_opt("alice")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    match kratos.get_identity(&id, &[]).await {
        Err(e) if e.is_not_found() => {}
        other => panic!("the Kratos identity must be gone, got {other:?}"),
    }
}

/// What every mode refuses the operator's ServiceAccount.
async fn common_denials(t: &TestEnv, operator: &Client) {
    let ns = &t.namespace;
    assert_forbidden(
        "list ConfigMaps",
        Api::<ConfigMap>::namespaced(operator.clone(), ns)
            .list(&ListParams::default())
            .await,
    );
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "intruder" },
        "spec": {
            "selector": { "matchLabels": { "app": "x" } },
            "template": { "metadata": { "labels": { "app": "x" } },
                          "spec": { "containers": [ { "name": "x", "image": "x" } ] } }
        }
    }))
    .unwrap();
    assert_forbidden(
        "create a Deployment",
        Api::<Deployment>::namespaced(operator.clone(), ns)
            .create(&PostParams::default(), &deployment)
            .await,
    );
    assert_forbidden(
        "delete the Namespace",
        Api::<Namespace>::all(operator.clone())
            .delete(ns, &DeleteParams::default())
            .await,
    );
    // Its own kinds: read and patched, never created or deleted.
    let identity: Identity = serde_json::from_value(json!({
        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
        "metadata": { "name": "forged" },
        "spec": { "schemaId": "customer", "traits": { "email": "forged@example.com" } }
    }))
    .unwrap();
    assert_forbidden(
        "create an Identity",
        Api::<Identity>::namespaced(operator.clone(), ns)
            .create(&PostParams::default(), &identity)
            .await,
    );
    assert_forbidden(
        "delete Identities",
        Api::<Identity>::namespaced(operator.clone(), ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await,
    );
    // Secrets: no update (replace) and no delete-collection.
    let secrets = Api::<Secret>::namespaced(operator.clone(), ns);
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "scratch" }, "stringData": { "k": "v" }
    }))
    .unwrap();
    secret = Api::<Secret>::namespaced(t.client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_forbidden(
        "update (replace) a Secret",
        secrets
            .replace("scratch", &PostParams::default(), &secret)
            .await,
    );
    assert_forbidden(
        "delete all Secrets",
        secrets
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await,
    );
    // No rights on RBAC itself (no escalation).
    assert_forbidden(
        "list ClusterRoles",
        Api::<ClusterRole>::all(operator.clone())
            .list(&ListParams::default())
            .await,
    );
    // The CRD read that /readyz needs is granted.
    let crds = Api::<CustomResourceDefinition>::all(operator.clone());
    crds.get("identities.kratos-operator.dev").await.unwrap();
    crds.list(&ListParams::default()).await.unwrap();
    assert_forbidden(
        "delete a CRD",
        crds.delete("identities.kratos-operator.dev", &DeleteParams::default())
            .await,
    );
}

/// The leader-election Role: the operator's own leader election (kube-lease-manager on the Lease
/// kratos-operator-leader) wins with these rights; any other Lease can only be created (create
/// cannot be limited by name), never read or changed; no Lease can be deleted.
async fn leader_election_works(t: &TestEnv, operator: &Client) {
    let settings = kratos_operator::leader::LeaseSettings {
        namespace: t.namespace.clone(),
        identity: "rbac-proof-0".into(),
        duration: Duration::from_secs(5),
    };
    let mut rx = kratos_operator::leader::elect(operator.clone(), &settings)
        .await
        .expect("join the election");
    tokio::time::timeout(T, kratos_operator::leader::wait_for_leadership(&mut rx))
        .await
        .expect("leadership in time")
        .expect("leadership");
    let leases = Api::<Lease>::namespaced(operator.clone(), &t.namespace);
    let lease = leases
        .get(kratos_operator::leader::LEASE_NAME)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("rbac-proof-0")
    );

    let other: Lease = serde_json::from_value(
        json!({ "metadata": { "name": "someone-else" }, "spec": { "holderIdentity": "x" } }),
    )
    .unwrap();
    Api::<Lease>::namespaced(t.client.clone(), &t.namespace)
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    assert_forbidden("get another Lease", leases.get("someone-else").await);
    assert_forbidden(
        "patch another Lease",
        leases
            .patch(
                "someone-else",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "holderIdentity": "me" } })),
            )
            .await,
    );
    assert_forbidden(
        "delete the Lease",
        leases
            .delete(
                kratos_operator::leader::LEASE_NAME,
                &DeleteParams::default(),
            )
            .await,
    );
    assert_forbidden("list Leases", leases.list(&ListParams::default()).await);
}

/// Waits until the RBAC authorizer serves the new bindings (its caches follow the API quickly,
/// but not instantly).
async fn wait_for_rbac(t: &TestEnv, operator: &Client) {
    let identities = Api::<Identity>::namespaced(operator.clone(), &t.namespace);
    let leases = Api::<Lease>::namespaced(operator.clone(), &t.namespace);
    eventually("the chart's RBAC to take effect", T, || async {
        let kinds = identities.list(&ListParams::default()).await.is_ok();
        // 404 (no Lease yet) means allowed; 403 means the binding is not served yet.
        let lease = match leases.get(kratos_operator::leader::LEASE_NAME).await {
            Ok(_) => true,
            Err(e) => status_code(&e) == Some(404),
        };
        (kinds && lease).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn cluster_mode_rbac_runs_every_flow_and_refuses_the_rest() {
    let t = setup("rbac-cluster").await;
    install_crds(&t.client).await;
    let release = unique_name("rbac");
    let installed = install_chart_rbac(&t, &release, &[]).await;
    let full = format!("{release}-kratos-operator");
    assert_eq!(
        installed.objects,
        [
            format!("ClusterRole/{full}"),
            format!("ClusterRoleBinding/{full}"),
            format!("Role/{full}-leader-election"),
            format!("RoleBinding/{full}-leader-election"),
            format!("ServiceAccount/{full}"),
        ]
    );
    let operator = client_as_service_account(&t, &installed.service_account).await;
    wait_for_rbac(&t, &operator).await;

    // Before anything: the impersonated identity has no rights beyond the chart's.
    common_denials(&t, &operator).await;
    leader_election_works(&t, &operator).await;

    let op = start_operator_as(&t, operator.clone());
    becomes_ready(&op).await;
    full_flow(&t).await;

    // Cluster mode reads its kinds and Secrets in every namespace (that is what the mode is for).
    Api::<Identity>::all(operator.clone())
        .list(&ListParams::default().limit(1))
        .await
        .unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn namespace_mode_rbac_runs_every_flow_and_refuses_other_namespaces() {
    let t = setup("rbac-ns").await;
    install_crds(&t.client).await;
    let release = unique_name("rbacns");
    let watch = format!("watchNamespaces={{{}}}", t.namespace);
    let installed = install_chart_rbac(&t, &release, &[&watch]).await;
    let full = format!("{release}-kratos-operator");
    assert_eq!(
        installed.objects,
        [
            format!("ClusterRole/{full}-crds"),
            format!("ClusterRoleBinding/{full}-crds"),
            format!("Role/{full}"),
            format!("Role/{full}-leader-election"),
            format!("RoleBinding/{full}"),
            format!("RoleBinding/{full}-leader-election"),
            format!("ServiceAccount/{full}"),
        ]
    );
    let operator = client_as_service_account(&t, &installed.service_account).await;
    wait_for_rbac(&t, &operator).await;

    common_denials(&t, &operator).await;
    leader_election_works(&t, &operator).await;
    // Nothing outside the watched namespace: not its kinds, not Secrets, not cluster-wide lists.
    assert_forbidden(
        "list Identities in all namespaces",
        Api::<Identity>::all(operator.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "list Secrets in all namespaces",
        Api::<Secret>::all(operator.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "get a Secret in another namespace",
        Api::<Secret>::namespaced(operator.clone(), "default")
            .get("anything")
            .await,
    );

    let op = start_operator_as(&t, operator.clone());
    becomes_ready(&op).await;
    full_flow(&t).await;
    t.cleanup().await;
}
