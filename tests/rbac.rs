//! RBAC proof: the chart's ServiceAccount, (Cluster)Roles and bindings are installed into the real
//! apiserver, and an operator whose Kubernetes client impersonates that ServiceAccount (and
//! nothing else) runs the full Identity and RecoveryRequest flows against the real Kratos. The same
//! client is then refused what the chart does not grant.
//!
//! One test per RBAC mode of the chart: cluster mode (a ClusterRole) and namespace mode
//! (`watchNamespaces`: a Role per namespace). Each uses its own release name, so the cluster-scoped
//! names never clash between tests, and its own namespace; the cluster-scoped objects are owned by
//! that namespace, so deleting it deletes them.
//!
//! The chart's ValidatingAdmissionPolicies are installed too, their bindings confined to the
//! test's namespace (the environment is shared: a binding of the chart selects every namespace
//! in cluster mode). Both RBAC tests run the operator's flows under the policy on its own Secret
//! writes and check that it refuses the ServiceAccount token Secrets and foreign Secrets the RBAC
//! alone would allow; a third test checks the tenancy policies as a tenant sees them.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart_support;
mod support;

use std::time::Duration;

use chart_support::{PLACEHOLDER_ADMIN_URL, json_documents, render};
use futures::FutureExt;
use k8s_openapi::{
    api::{
        admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kratos_operator::api::{Identity, IdentitySchemaRef, RecoveryRequest};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
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
            "ValidatingAdmissionPolicy" => {
                doc["metadata"]["ownerReferences"] = owner.clone();
                let policy: ValidatingAdmissionPolicy = serde_json::from_value(doc).unwrap();
                objects.push(format!("ValidatingAdmissionPolicy/{}", policy.name_any()));
                Api::<ValidatingAdmissionPolicy>::all(t.client.clone())
                    .create(&pp, &policy)
                    .await
                    .unwrap();
            }
            "ValidatingAdmissionPolicyBinding" => {
                doc["metadata"]["ownerReferences"] = owner.clone();
                confine_to_namespace(&mut doc, &t.namespace);
                let binding: ValidatingAdmissionPolicyBinding =
                    serde_json::from_value(doc).unwrap();
                objects.push(format!(
                    "ValidatingAdmissionPolicyBinding/{}",
                    binding.name_any()
                ));
                Api::<ValidatingAdmissionPolicyBinding>::all(t.client.clone())
                    .create(&pp, &binding)
                    .await
                    .unwrap();
            }
            // Kubernetes 1.36 and newer: the finalizer policy (no k8s-openapi type at the crate's
            // API level 1.33, so a dynamic object), confined to the test's namespace like the
            // validating ones.
            "MutatingAdmissionPolicy" | "MutatingAdmissionPolicyBinding" => {
                doc["metadata"]["ownerReferences"] = owner.clone();
                if kind.ends_with("Binding") {
                    confine_to_namespace(&mut doc, &t.namespace);
                }
                let resource = kube::discovery::ApiResource {
                    group: "admissionregistration.k8s.io".into(),
                    version: "v1".into(),
                    api_version: "admissionregistration.k8s.io/v1".into(),
                    plural: if kind.ends_with("Binding") {
                        "mutatingadmissionpolicybindings".into()
                    } else {
                        "mutatingadmissionpolicies".into()
                    },
                    kind: kind.clone(),
                };
                let object: kube::api::DynamicObject = serde_json::from_value(doc).unwrap();
                objects.push(format!("{kind}/{}", object.name_any()));
                Api::<kube::api::DynamicObject>::all_with(t.client.clone(), &resource)
                    .create(&pp, &object)
                    .await
                    .unwrap();
            }
            // The workload itself is not run here: the operator runs in-process.
            "Deployment" | "Service" | "PodDisruptionBudget" => {}
            other => panic!("unexpected kind {other} in the chart's default render"),
        }
    }
    objects.sort();
    Installed {
        service_account: service_account.expect("the chart renders a ServiceAccount"),
        objects,
    }
}

/// What the chart installs besides its RBAC (`rbac`, which differs by mode): the ServiceAccount,
/// the validating admission policies and, where the release under test serves
/// MutatingAdmissionPolicy, the finalizer policy; sorted.
fn chart_objects<const N: usize>(full: &str, rbac: [String; N]) -> Vec<String> {
    let mut all = rbac.to_vec();
    all.push(format!("ServiceAccount/{full}"));
    for policy in ["identity-adoption", "operator-secrets", "recovery-by-id"] {
        all.push(format!("ValidatingAdmissionPolicy/{full}-{policy}"));
        all.push(format!("ValidatingAdmissionPolicyBinding/{full}-{policy}"));
    }
    if chart_support::serves_mutating_admission_policies() {
        all.push(format!("MutatingAdmissionPolicy/{full}-identity-finalizer"));
        all.push(format!(
            "MutatingAdmissionPolicyBinding/{full}-identity-finalizer"
        ));
    }
    all.sort();
    all
}

/// The namespace selector that confines a binding to `namespace`.
fn only_namespace(namespace: &str) -> Value {
    json!({ "matchExpressions": [
        { "key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace] }
    ] })
}

/// Confines a rendered ValidatingAdmissionPolicyBinding to the test's namespace: the environment
/// is shared, and a binding that selects every namespace (as the chart's do in cluster mode)
/// would judge the other tests' requests too. A binding the chart already confines (namespace
/// mode) must select exactly the test's namespace.
fn confine_to_namespace(binding: &mut Value, namespace: &str) {
    let rendered = binding.clone();
    let selector = &mut binding["spec"]["matchResources"]["namespaceSelector"];
    let selects_all = selector.is_null() || selector.as_object().is_some_and(|o| o.is_empty());
    if selects_all {
        *selector = only_namespace(namespace);
    } else {
        assert_eq!(*selector, only_namespace(namespace), "{rendered}");
    }
}

/// A client of the environment's apiserver that acts as `system:serviceaccount:<ns>:<sa>` with
/// the groups every ServiceAccount token carries, and no other rights.
async fn client_as_service_account(t: &TestEnv, sa: &str) -> Client {
    support::client_as(
        t.env,
        &format!("system:serviceaccount:{}:{sa}", t.namespace),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", t.namespace),
            "system:authenticated".into(),
        ],
    )
    .await
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
    let settings = |identity: &str| kratos_operator::leader::LeaseSettings {
        name: kratos_operator::leader::LEASE_NAME.to_string(),
        namespace: t.namespace.clone(),
        identity: identity.into(),
        // Long enough that a handover by expiry could not pass the check below.
        duration: Duration::from_secs(60),
    };
    let mut leader = kratos_operator::leader::elect(operator.clone(), &settings("rbac-proof-0"))
        .await
        .expect("join the election");
    tokio::time::timeout(
        T,
        kratos_operator::leader::wait_for_leadership(&mut leader.leading),
    )
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
    // A follower watches the Lease (list and watch limited to its name) and takes it as soon
    // as the leader releases it.
    let mut follower = kratos_operator::leader::elect(operator.clone(), &settings("rbac-proof-1"))
        .await
        .expect("join the election");
    // The follower's watch must be running before the release for the release to be seen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!*follower.leading.borrow(), "the Lease is held");
    assert!(leader.release().await, "the leader releases the Lease");
    tokio::time::timeout(
        Duration::from_secs(15),
        kratos_operator::leader::wait_for_leadership(&mut follower.leading),
    )
    .await
    .expect("the follower takes the released Lease long before it would expire")
    .expect("leadership");
    assert!(follower.release().await);

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
    let crds = Api::<CustomResourceDefinition>::all(operator.clone());
    // One right of each binding: in namespace mode the CRD read comes from a ClusterRoleBinding
    // of its own, which the authorizer may serve later than the RoleBindings.
    eventually("the chart's RBAC to take effect", T, || async {
        let kinds = identities.list(&ListParams::default()).await.is_ok();
        // 404 (no Lease yet) means allowed; 403 means the binding is not served yet.
        let lease = match leases.get(kratos_operator::leader::LEASE_NAME).await {
            Ok(_) => true,
            Err(e) => status_code(&e) == Some(404),
        };
        let crd = crds.get("identities.kratos-operator.dev").await.is_ok();
        (kinds && lease && crd).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The admission policies

/// The refusal of the chart's policy on the operator's Secret writes.
const OPERATOR_SECRETS_REFUSAL: &str = "the operator's ServiceAccount may only write the Opaque Secrets of its RecoveryRequests (type Opaque, label app.kubernetes.io/managed-by=kratos-operator, controller ownerReference to a kratos-operator.dev RecoveryRequest)";
/// The refusals of the tenancy policies: the operator's own words (src/tenancy.rs).
const ADOPTION_REFUSAL: &str = "spec.adoption IfUnowned is not allowed in this namespace: a cluster admin must label the Namespace kratos-operator.dev/allow-adoption=true";
const RECOVERY_BY_ID_REFUSAL: &str = "spec.identityId is not allowed in this namespace (use spec.identityRef): a cluster admin must label the Namespace kratos-operator.dev/allow-recovery-by-id=true";

/// Whether `e` is a refusal by a ValidatingAdmissionPolicy whose message is `message`.
fn refused_by_policy(e: &kube::Error, message: &str) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403
        && s.reason == "Forbidden"
        && s.message.contains(" is forbidden: ValidatingAdmissionPolicy '")
        && s.message.ends_with(message))
}

/// Asserts that `result` is a refusal by a ValidatingAdmissionPolicy with `message`.
fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, message: &str) {
    match result {
        Err(e) if refused_by_policy(&e, message) => {}
        other => panic!("{what}: expected the refusal {message:?}, got {other:?}"),
    }
}

/// Retries `attempt` (a dry run, so that it changes nothing while the policy is not enforced yet)
/// until a policy refuses it with `message`: the apiserver starts enforcing a new policy and
/// binding a moment after they are created.
async fn until_refused<T, F, Fut>(what: &str, message: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut last = String::new();
    let refused = tokio::time::timeout(T, async {
        loop {
            match attempt().await {
                Err(e) if refused_by_policy(&e, message) => return,
                Err(e) => last = e.to_string(),
                Ok(_) => last = "admitted".into(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "{what} is never refused; last: {last}");
}

/// Retries `attempt` until it succeeds (a Namespace label reaches the policies' Namespace cache
/// a moment after it is set).
async fn until_admitted<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut last = String::new();
    let admitted = tokio::time::timeout(T, async {
        loop {
            match attempt().await {
                Ok(v) => return v,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    admitted.unwrap_or_else(|_| panic!("{what} is never admitted; last: {last}"))
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// Server-side apply as the operator writes its recovery Secrets.
fn operator_apply(dry_run: bool) -> PatchParams {
    PatchParams {
        dry_run,
        ..PatchParams::apply("kratos-operator-test").force()
    }
}

/// A Secret as the operator's ServiceAccount could write it: `type_`, with the operator's
/// managed-by label when `labelled`, and `owners`.
fn secret(name: &str, type_: &str, labelled: bool, owners: Value) -> Secret {
    let mut s = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name, "ownerReferences": owners },
        "type": type_,
        "stringData": { "recoveryLink": "http://forged.example.com/" }
    });
    if labelled {
        s["metadata"]["labels"] = json!({ "app.kubernetes.io/managed-by": "kratos-operator" });
    }
    if type_ == "kubernetes.io/service-account-token" {
        s["metadata"]["annotations"] = json!({ "kubernetes.io/service-account.name": "default" });
        s["stringData"] = json!({});
    }
    serde_json::from_value(s).unwrap()
}

/// An ownerReference to a RecoveryRequest (the uid need not exist: admission does not look).
fn recovery_owner(api_version: &str, kind: &str, controller: bool) -> Value {
    json!([{
        "apiVersion": api_version, "kind": kind, "name": "some-request",
        "uid": "00000000-0000-4000-8000-000000000001",
        "controller": controller, "blockOwnerDeletion": true,
    }])
}

/// The policy on the operator's Secret writes: its Secret rights cannot mint a ServiceAccount
/// token, write another type, or write a Secret that is not a RecoveryRequest's; what the
/// operator itself writes passes (the full flow proves it for the real writes, including the
/// update that clears an expired Secret). Other users are not judged.
async fn operator_secret_policy_holds(t: &TestEnv, operator: &Client) {
    let ns = &t.namespace;
    let secrets = Api::<Secret>::namespaced(operator.clone(), ns);
    let admin_secrets = Api::<Secret>::namespaced(t.client.clone(), ns);
    let token = || {
        secret(
            "minted",
            "kubernetes.io/service-account-token",
            false,
            json!([]),
        )
    };
    until_refused(
        "a ServiceAccount token Secret by the operator",
        OPERATOR_SECRETS_REFUSAL,
        || async { secrets.create(&dry_run(), &token()).await },
    )
    .await;

    assert_refused(
        "create a ServiceAccount token Secret",
        secrets.create(&PostParams::default(), &token()).await,
        OPERATOR_SECRETS_REFUSAL,
    );
    let owned = recovery_owner("kratos-operator.dev/v1alpha1", "RecoveryRequest", true);
    // Dressed up as a recovery Secret, the token type is still refused.
    assert_refused(
        "create a labelled, owned ServiceAccount token Secret",
        secrets
            .create(
                &PostParams::default(),
                &secret(
                    "minted",
                    "kubernetes.io/service-account-token",
                    true,
                    owned.clone(),
                ),
            )
            .await,
        OPERATOR_SECRETS_REFUSAL,
    );
    assert!(admin_secrets.get_opt("minted").await.unwrap().is_none());
    for (what, s) in [
        (
            "an Opaque Secret without the RecoveryRequest owner",
            secret("unowned", "Opaque", true, json!([])),
        ),
        (
            "an Opaque Secret without the managed-by label",
            secret("unlabelled", "Opaque", false, owned.clone()),
        ),
        (
            "a Secret of another type",
            secret("custom", "example.com/custom", true, owned.clone()),
        ),
        (
            "an Opaque Secret whose RecoveryRequest owner is not its controller",
            secret(
                "not-controller",
                "Opaque",
                true,
                recovery_owner("kratos-operator.dev/v1alpha1", "RecoveryRequest", false),
            ),
        ),
        (
            "an Opaque Secret owned by a RecoveryRequest of another group",
            secret(
                "other-group",
                "Opaque",
                true,
                recovery_owner("evil.example.com/v1", "RecoveryRequest", true),
            ),
        ),
    ] {
        assert_refused(
            &format!("create {what}"),
            secrets.create(&PostParams::default(), &s).await,
            OPERATOR_SECRETS_REFUSAL,
        );
        assert_refused(
            &format!("apply {what}"),
            secrets
                .patch(&s.name_any(), &operator_apply(false), &Patch::Apply(&s))
                .await,
            OPERATOR_SECRETS_REFUSAL,
        );
    }
    // A foreign Opaque Secret cannot be taken over (an update must start from a Secret that is
    // already a RecoveryRequest's), even by writing the label and owner into it.
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": { "name": "foreign" }, "stringData": { "k": "v" }
    }))
    .unwrap();
    admin_secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let takeover = secret("foreign", "Opaque", true, owned.clone());
    assert_refused(
        "take over a foreign Opaque Secret",
        secrets
            .patch("foreign", &operator_apply(false), &Patch::Apply(&takeover))
            .await,
        OPERATOR_SECRETS_REFUSAL,
    );
    let unchanged = admin_secrets.get("foreign").await.unwrap();
    assert!(unchanged.owner_references().is_empty());
    assert_eq!(
        unchanged.data.unwrap().get("k").map(|v| v.0.clone()),
        Some(b"v".to_vec())
    );
    // What the operator writes passes (dry run: the owner does not exist).
    let recovery = secret("recovery", "Opaque", true, owned);
    secrets
        .patch("recovery", &operator_apply(true), &Patch::Apply(&recovery))
        .await
        .expect("the operator's own kind of Secret is admitted");
    // The policy judges the operator only: an admin may still create a token Secret.
    admin_secrets
        .create(&dry_run(), &token())
        .await
        .expect("an admin's Secret is not judged by the policy");
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
        chart_objects(
            &full,
            [
                format!("ClusterRole/{full}"),
                format!("ClusterRoleBinding/{full}"),
                format!("Role/{full}-leader-election"),
                format!("RoleBinding/{full}-leader-election"),
            ]
        )
    );
    let operator = client_as_service_account(&t, &installed.service_account).await;
    wait_for_rbac(&t, &operator).await;

    // Before anything: the impersonated identity has no rights beyond the chart's.
    common_denials(&t, &operator).await;
    leader_election_works(&t, &operator).await;
    operator_secret_policy_holds(&t, &operator).await;
    // Tenancy: the operator reads any Namespace (get only), to read its opt-ins.
    let namespaces = Api::<Namespace>::all(operator.clone());
    namespaces.get(&t.namespace).await.unwrap();
    namespaces.get("default").await.unwrap();
    assert_forbidden(
        "list Namespaces",
        namespaces.list(&ListParams::default()).await,
    );
    assert_forbidden(
        "label a Namespace",
        namespaces
            .patch(
                &t.namespace,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": {
                    "kratos-operator.dev/allow-adoption": "true"
                } } })),
            )
            .await,
    );

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
        chart_objects(
            &full,
            [
                format!("ClusterRole/{full}-crds"),
                format!("ClusterRoleBinding/{full}-crds"),
                format!("Role/{full}"),
                format!("Role/{full}-leader-election"),
                format!("RoleBinding/{full}"),
                format!("RoleBinding/{full}-leader-election"),
            ]
        )
    );
    let operator = client_as_service_account(&t, &installed.service_account).await;
    wait_for_rbac(&t, &operator).await;

    common_denials(&t, &operator).await;
    leader_election_works(&t, &operator).await;
    operator_secret_policy_holds(&t, &operator).await;
    // Tenancy: the operator reads the watched Namespace objects only (get, by name).
    let namespaces = Api::<Namespace>::all(operator.clone());
    namespaces.get(&t.namespace).await.unwrap();
    assert_forbidden(
        "get an unwatched Namespace",
        namespaces.get("default").await,
    );
    assert_forbidden(
        "list Namespaces",
        namespaces.list(&ListParams::default()).await,
    );
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

/// The tenancy policies as a tenant sees them: with every right on the operator's kinds in its
/// namespace, the tenant can neither adopt unowned identities nor recover by Kratos id until a
/// cluster admin labels the Namespace; the refusal is the operator's own message. An update that
/// leaves the spec unchanged is not judged again after the label goes (so finalizers and labels
/// can still be changed, and deletion never hangs).
#[tokio::test]
async fn tenancy_policies_refuse_what_the_namespace_does_not_opt_in_to() {
    let t = setup("vap-tenancy").await;
    install_crds(&t.client).await;
    let release = unique_name("vap");
    let installed = install_chart_rbac(&t, &release, &[]).await;
    let full = format!("{release}-kratos-operator");
    for policy in ["identity-adoption", "recovery-by-id"] {
        assert!(
            installed
                .objects
                .contains(&format!("ValidatingAdmissionPolicyBinding/{full}-{policy}")),
            "{:?}",
            installed.objects
        );
    }
    let ns = t.namespace.clone();

    // The tenant: every verb on every resource of the operator's group (status included), in its
    // namespace only.
    let user = format!("tenant-{ns}");
    let tenant = support::bind_tenant(
        &t,
        &user,
        json!([{ "apiGroups": ["kratos-operator.dev"], "resources": ["*"], "verbs": ["*"] }]),
    )
    .await;
    let namespaces = Api::<Namespace>::all(t.client.clone());
    let label = |key: &str, value: Option<&str>| {
        let namespaces = namespaces.clone();
        let patch = json!({ "metadata": { "labels": { key: value } } });
        let ns = ns.clone();
        async move {
            namespaces
                .patch(&ns, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .unwrap();
        }
    };
    let tenant_apply = |dry_run: bool| PatchParams {
        dry_run,
        ..PatchParams::apply("tenant").force()
    };

    // Identity adoption IfUnowned.
    let identities = Api::<Identity>::namespaced(tenant.clone(), &ns);
    let identity = |name: &str, adoption: Option<&str>, first: &str| -> Identity {
        let mut spec = json!({
            "schemaId": "customer",
            "traits": { "email": format!("{name}@{ns}.example.com"), "name": { "first": first } }
        });
        if let Some(a) = adoption {
            spec["adoption"] = json!(a);
        }
        serde_json::from_value(json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": name }, "spec": spec
        }))
        .unwrap()
    };
    let adopter = identity("adopter", Some("IfUnowned"), "Ada");
    until_refused("an adopting Identity", ADOPTION_REFUSAL, || async {
        identities.create(&dry_run(), &adopter).await
    })
    .await;
    assert_refused(
        "create an adopting Identity",
        identities.create(&PostParams::default(), &adopter).await,
        ADOPTION_REFUSAL,
    );
    assert_refused(
        "apply an adopting Identity",
        identities
            .patch("adopter", &tenant_apply(false), &Patch::Apply(&adopter))
            .await,
        ADOPTION_REFUSAL,
    );
    // Without adoption, or with Never, nothing to judge.
    for (name, adoption) in [("plain", None), ("never", Some("Never"))] {
        identities
            .create(&PostParams::default(), &identity(name, adoption, "Pat"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Turning adoption on in an existing Identity is an update of its spec: refused too.
    assert_refused(
        "switch an Identity to adoption",
        identities
            .patch(
                "never",
                &tenant_apply(false),
                &Patch::Apply(&identity("never", Some("IfUnowned"), "Pat")),
            )
            .await,
        ADOPTION_REFUSAL,
    );
    // The cluster admin opts the namespace in: the same Identity is admitted.
    label("kratos-operator.dev/allow-adoption", Some("true")).await;
    until_admitted(
        "the adopting Identity in the opted-in namespace",
        || async {
            identities
                .patch("adopter", &tenant_apply(false), &Patch::Apply(&adopter))
                .await
        },
    )
    .await;
    // The opt-in is withdrawn (only the exact value "true" opts in): a changed spec is refused
    // again, an unchanged one passes (labels, finalizers: the operator's finalizer removal must
    // never be blocked).
    label("kratos-operator.dev/allow-adoption", Some("yes")).await;
    let changed = identity("adopter", Some("IfUnowned"), "Adele");
    until_refused("a changed adopting Identity", ADOPTION_REFUSAL, || async {
        identities
            .patch("adopter", &tenant_apply(true), &Patch::Apply(&changed))
            .await
    })
    .await;
    identities
        .patch(
            "adopter",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": {
                "labels": { "team": "a" }, "finalizers": ["example.com/hold"]
            } })),
        )
        .await
        .expect("a metadata update of an unchanged spec is not judged");
    identities
        .patch(
            "adopter",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .expect("removing a finalizer is not judged");

    // RecoveryRequest spec.identityId.
    let requests = Api::<RecoveryRequest>::namespaced(tenant.clone(), &ns);
    let by_id: RecoveryRequest = serde_json::from_value(json!({
        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
        "metadata": { "name": "by-id" },
        "spec": { "identityId": "00000000-0000-4000-8000-00000000abcd", "method": "link" }
    }))
    .unwrap();
    until_refused(
        "a RecoveryRequest by id",
        RECOVERY_BY_ID_REFUSAL,
        || async { requests.create(&dry_run(), &by_id).await },
    )
    .await;
    assert_refused(
        "create a RecoveryRequest by id",
        requests.create(&PostParams::default(), &by_id).await,
        RECOVERY_BY_ID_REFUSAL,
    );
    assert_refused(
        "apply a RecoveryRequest by id",
        requests
            .patch("by-id", &tenant_apply(false), &Patch::Apply(&by_id))
            .await,
        RECOVERY_BY_ID_REFUSAL,
    );
    // By reference to an Identity of the namespace: nothing to judge.
    let by_ref: RecoveryRequest = serde_json::from_value(json!({
        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
        "metadata": { "name": "by-ref" },
        "spec": { "identityRef": { "name": "plain" }, "method": "link" }
    }))
    .unwrap();
    requests
        .create(&PostParams::default(), &by_ref)
        .await
        .expect("a RecoveryRequest by identityRef needs no opt-in");
    // The adoption opt-in does not open recovery by id.
    label("kratos-operator.dev/allow-adoption", Some("true")).await;
    assert_refused(
        "create a RecoveryRequest by id with only the adoption opt-in",
        requests.create(&dry_run(), &by_id).await,
        RECOVERY_BY_ID_REFUSAL,
    );
    label("kratos-operator.dev/allow-recovery-by-id", Some("true")).await;
    until_admitted(
        "the RecoveryRequest by id in the opted-in namespace",
        || async {
            requests
                .patch("by-id", &tenant_apply(false), &Patch::Apply(&by_id))
                .await
        },
    )
    .await;
    t.cleanup().await;
}
