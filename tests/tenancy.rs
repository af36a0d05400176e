//! Tenancy, tested as the attacker: a user with every right on the operator's kinds (status
//! included) in one namespace, and nothing else, tries to reach identities that belong to another
//! namespace or to nobody. One operator watches both namespaces, as one installation serves a
//! whole cluster. The user's requests go through the real API server with impersonation, so RBAC
//! applies to them as it would in a cluster.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kratos_operator::{
    api::{Identity, RecoveryRequest},
    kratos::{CreateIdentityBody, Identity as KratosIdentity, KratosClient},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::{
    Operator, TestEnv, eventually, kratos_client, ready_message, setup, start_operator_with,
    test_settings, wait_ready,
};

const T: Duration = Duration::from_secs(60);
const OWNER_MARKER: &str = "kratos-operator.dev/owner";
const UID_MARKER: &str = "kratos-operator.dev/uid";

/// Two namespaces: `tenant` (the attacker's) and `victim` (another team's), one operator for both.
struct Cluster {
    tenant: TestEnv,
    victim: TestEnv,
    /// The attacker: all rights on kratos-operator.dev in `tenant`, Secrets readable there.
    attacker: Client,
    operator: Option<Operator>,
}

impl Cluster {
    async fn new(test: &str) -> Self {
        let mut c = Self::without_operator(test).await;
        c.start_operator().await;
        c
    }

    /// The namespaces and the attacker, with the CRDs installed but no operator yet.
    async fn without_operator(test: &str) -> Self {
        let tenant = setup(&format!("{test}-a")).await;
        let victim = setup(&format!("{test}-b")).await;
        support::install_crds(&tenant.client).await;
        let attacker = tenant_user(&tenant).await;
        Self {
            tenant,
            victim,
            attacker,
            operator: None,
        }
    }

    async fn start_operator(&mut self) {
        let settings = kratos_operator::controller::Settings {
            watch_namespaces: vec![self.tenant.namespace.clone(), self.victim.namespace.clone()],
            ..test_settings(&self.tenant.namespace)
        };
        self.operator = Some(
            start_operator_with(
                &self.tenant,
                &self.tenant.kratos_admin_url,
                &self.tenant.kratos_public_url,
                settings,
            )
            .await,
        );
    }

    /// Applies the Identity `name` with `spec` as the attacker, in the tenant namespace.
    async fn attack(&self, name: &str, spec: Value) -> Identity {
        apply_as(&self.attacker, &self.tenant.namespace, identity(name, spec)).await
    }

    /// The attacker's own Identity `name` (its own email), once Synced.
    async fn own_identity(&self, name: &str) -> Identity {
        self.attack(
            name,
            json!({ "schemaId": "customer", "traits": { "email": self.tenant.email(name) } }),
        )
        .await;
        wait_ready(&self.tenant, name, "True", Some("Synced"), T).await
    }

    fn kratos(&self) -> KratosClient {
        kratos_client(
            &self.tenant.kratos_admin_url,
            &self.tenant.kratos_public_url,
        )
    }

    async fn cleanup(self) {
        self.tenant.cleanup().await;
        self.victim.cleanup().await;
    }
}

/// A user bound by a Role to `*` on the operator's API group (status subresources included) and
/// to reading Secrets, in `t`'s namespace only, as a platform team grants a tenant.
async fn tenant_user(t: &TestEnv) -> Client {
    let client = support::bind_tenant(
        t,
        &format!("tenant-{}", t.namespace),
        json!([
            { "apiGroups": ["kratos-operator.dev"], "resources": ["*"], "verbs": ["*"] },
            { "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"] }
        ]),
    )
    .await;
    // The binding is in force once the user can list (RBAC is read from an informer).
    let api: Api<Identity> = Api::namespaced(client.clone(), &t.namespace);
    eventually("the tenant's Role to apply", T, || async {
        api.list(&Default::default()).await.ok()
    })
    .await;
    // ...and it is only a tenant: the Namespace itself is out of reach.
    assert!(
        Api::<Namespace>::all(client.clone())
            .get(&t.namespace)
            .await
            .is_err(),
        "the tenant must not read its Namespace"
    );
    client
}

async fn apply_as<K: support::Namespaced>(client: &Client, ns: &str, manifest: Value) -> K {
    support::apply_as(client, ns, "tenant", manifest).await
}

fn identity(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
        "metadata": { "name": name }, "spec": spec
    })
}

fn recovery(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
        "metadata": { "name": name }, "spec": spec
    })
}

/// An Identity in `t`'s namespace, applied by the admin (another team), Ready; returns its
/// Kratos id.
async fn team_identity(t: &TestEnv, name: &str) -> String {
    apply_as::<Identity>(
        &t.client,
        &t.namespace,
        identity(
            name,
            json!({ "schemaId": "customer", "traits": { "email": t.email(name) } }),
        ),
    )
    .await;
    let obj: Identity = wait_ready(t, name, "True", Some("Synced"), T).await;
    obj.status.unwrap().identity_id.unwrap()
}

/// An identity created in Kratos directly, as a self-service sign-up does: no owner marker.
async fn self_service_identity(kratos: &KratosClient, address: &str) -> String {
    let body = CreateIdentityBody {
        schema_id: "customer".into(),
        traits: json!({ "email": address }),
        ..Default::default()
    };
    kratos.create_identity(&body).await.unwrap().id
}

async fn kratos_identity(kratos: &KratosClient, id: &str) -> Option<KratosIdentity> {
    match kratos.get_identity(id, &[]).await {
        Ok(i) => Some(i),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("get identity {id}: {e}"),
    }
}

fn marker<'a>(identity: &'a KratosIdentity, key: &str) -> Option<&'a str> {
    identity
        .metadata_admin
        .as_ref()
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
}

/// Sets `status.identityId` of the tenant's Identity `name` through the status subresource,
/// with the tenant's own rights.
async fn forge_status(c: &Cluster, name: &str, id: &str) {
    Api::<Identity>::namespaced(c.attacker.clone(), &c.tenant.namespace)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "identityId": id } })),
        )
        .await
        .expect("the tenant may write status: that is the attack");
}

/// Waits until the Identity `name` reports `Ready=False` with `reason` for its current generation.
async fn wait_reason(t: &TestEnv, name: &str, reason: &str) -> Identity {
    wait_ready::<Identity>(t, name, "False", Some(reason), T).await
}

async fn label_namespace(t: &TestEnv, labels: Value, annotations: Value) {
    Api::<Namespace>::all(t.client.clone())
        .patch(
            &t.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": labels, "annotations": annotations } })),
        )
        .await
        .unwrap();
}

/// Whether the Secret `name` holds a recovery link or code.
async fn secret_has_recovery_data(t: &TestEnv, name: &str) -> bool {
    Api::<Secret>::namespaced(t.client.clone(), &t.namespace)
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|s| s.data)
        .is_some_and(|d| d.contains_key("recoveryLink") || d.contains_key("recoveryCode"))
}

async fn wait_gone<K: support::Namespaced>(t: &TestEnv, name: &str) {
    let api: Api<K> = Api::namespaced(t.client.clone(), &t.namespace);
    eventually(&format!("{name} to be gone"), T, || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 1. status.identityId is not ownership

#[tokio::test]
async fn a_forged_status_identity_id_never_reaches_another_namespaces_identity() {
    let c = Cluster::new("ten-forge").await;
    let kratos = c.kratos();
    let victim_id = team_identity(&c.victim, "victim").await;
    let before = kratos_identity(&kratos, &victim_id).await.unwrap();

    let own = c.own_identity("x").await;
    let own_id = own.status.unwrap().identity_id.unwrap();
    forge_status(&c, "x", &victim_id).await;
    // A spec change makes the operator act on the object at once (a drift sweep would too).
    c.attack(
        "x",
        json!({ "schemaId": "customer", "traits": { "email": c.tenant.email("x") },
                    "metadataPublic": { "plan": "stolen" } }),
    )
    .await;
    let refused = wait_reason(&c.tenant, "x", "Conflict").await;
    let message = ready_message(&refused);
    assert!(
        !message.contains(&victim_id) && !message.contains(&c.victim.namespace),
        "{message}"
    );
    let after = kratos_identity(&kratos, &victim_id).await.unwrap();
    assert_eq!(after.traits, before.traits, "the victim's traits");
    assert_eq!(after.metadata_public, before.metadata_public);
    assert_eq!(
        after.metadata_admin, before.metadata_admin,
        "the victim's owner marker"
    );

    // Deleting the tenant's object deletes its own identity, never the victim's.
    Api::<Identity>::namespaced(c.attacker.clone(), &c.tenant.namespace)
        .delete("x", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone::<Identity>(&c.tenant, "x").await;
    assert!(
        kratos_identity(&kratos, &victim_id).await.is_some(),
        "the victim's identity must survive"
    );
    assert!(
        kratos_identity(&kratos, &own_id).await.is_none(),
        "the tenant's own identity is deleted with its object (nothing leaks)"
    );
    c.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Recovery by raw id

#[tokio::test]
async fn recovery_by_raw_id_needs_the_namespace_label() {
    let c = Cluster::new("ten-rawid").await;
    let victim_id = team_identity(&c.victim, "victim").await;
    apply_as::<RecoveryRequest>(
        &c.attacker,
        &c.tenant.namespace,
        recovery(
            "steal",
            json!({ "identityId": victim_id, "method": "code" }),
        ),
    )
    .await;
    let refused: RecoveryRequest =
        wait_ready(&c.tenant, "steal", "False", Some("Forbidden"), T).await;
    let status = serde_json::to_value(refused.status.unwrap()).unwrap();
    let message = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("kratos-operator.dev/allow-recovery-by-id"),
        "the refusal names the label: {message}"
    );
    assert!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Stalled" && c["status"] == "True"),
        "{status}"
    );
    assert!(!secret_has_recovery_data(&c.tenant, "steal").await);

    // The cluster admin opts the namespace in: the same request is issued.
    label_namespace(
        &c.tenant,
        json!({ "kratos-operator.dev/allow-recovery-by-id": "true" }),
        json!({}),
    )
    .await;
    wait_ready::<RecoveryRequest>(&c.tenant, "steal", "True", Some("Issued"), T).await;
    assert!(secret_has_recovery_data(&c.tenant, "steal").await);
    c.cleanup().await;
}

#[tokio::test]
async fn recovery_through_a_forged_identity_status_is_refused() {
    let c = Cluster::new("ten-rref").await;
    let victim_id = team_identity(&c.victim, "victim").await;
    c.own_identity("x").await;
    forge_status(&c, "x", &victim_id).await;
    apply_as::<RecoveryRequest>(
        &c.attacker,
        &c.tenant.namespace,
        recovery(
            "steal",
            json!({ "identityRef": { "name": "x" }, "method": "code" }),
        ),
    )
    .await;
    let api: Api<RecoveryRequest> = Api::namespaced(c.tenant.client.clone(), &c.tenant.namespace);
    let message = eventually("the request to refuse the forged identity", T, || async {
        let r = api.get("steal").await.ok()?;
        let ready = r
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.reason == "IdentityNotReady" && ready.message.contains("does not own"))
            .then_some(ready.message)
    })
    .await;
    assert!(!message.contains(&victim_id), "{message}");
    assert!(!secret_has_recovery_data(&c.tenant, "steal").await);
    c.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Adoption of self-service identities, and the identifier patterns

#[tokio::test]
async fn self_service_identities_are_adopted_only_where_the_cluster_admin_allows() {
    let c = Cluster::new("ten-adopt").await;
    let kratos = c.kratos();
    let address = format!("signup.{}@example.com", c.tenant.namespace);
    let id = self_service_identity(&kratos, &address).await;
    c.attack(
        "grab",
        json!({ "schemaId": "customer", "traits": { "email": address },
                    "adoption": "IfUnowned", "metadataPublic": { "owned": "by tenant" } }),
    )
    .await;
    let refused = wait_reason(&c.tenant, "grab", "Forbidden").await;
    assert!(
        ready_message(&refused).contains("kratos-operator.dev/allow-adoption"),
        "{}",
        ready_message(&refused)
    );
    let untouched = kratos_identity(&kratos, &id).await.unwrap();
    assert_eq!(marker(&untouched, UID_MARKER), None, "not adopted");
    assert_eq!(untouched.metadata_public, None);

    // Opted in, but the namespace may only claim its own domain.
    label_namespace(
        &c.tenant,
        json!({ "kratos-operator.dev/allow-adoption": "true" }),
        json!({ "kratos-operator.dev/identifier-patterns": "*@team-a.example.com" }),
    )
    .await;
    let api: Api<Identity> = Api::namespaced(c.tenant.client.clone(), &c.tenant.namespace);
    eventually("a refusal naming the identifier patterns", T, || async {
        let obj = api.get("grab").await.ok()?;
        ready_message(&obj)
            .contains("kratos-operator.dev/identifier-patterns")
            .then_some(())
    })
    .await;
    assert_eq!(
        marker(&kratos_identity(&kratos, &id).await.unwrap(), UID_MARKER),
        None
    );

    // The patterns are case-insensitive globs; a matching one lets the adoption through.
    label_namespace(
        &c.tenant,
        json!({}),
        json!({ "kratos-operator.dev/identifier-patterns": "other@x.org, SIGNUP.*@EXAMPLE.COM" }),
    )
    .await;
    let adopted: Identity = wait_ready(&c.tenant, "grab", "True", Some("Synced"), T).await;
    assert_eq!(adopted.status.unwrap().identity_id.as_deref(), Some(&*id));
    let now = kratos_identity(&kratos, &id).await.unwrap();
    assert_eq!(marker(&now, UID_MARKER), adopted.metadata.uid.as_deref());
    c.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Concurrent adoption

#[tokio::test]
async fn two_objects_adopting_one_identity_end_with_exactly_one_owner() {
    let c = Cluster::new("ten-race").await;
    let kratos = c.kratos();
    label_namespace(
        &c.tenant,
        json!({ "kratos-operator.dev/allow-adoption": "true" }),
        json!({}),
    )
    .await;
    label_namespace(
        &c.victim,
        json!({ "kratos-operator.dev/allow-adoption": "true" }),
        json!({}),
    )
    .await;
    let address = format!("shared.{}@example.com", c.tenant.namespace);
    let id = self_service_identity(&kratos, &address).await;
    let spec =
        json!({ "schemaId": "customer", "traits": { "email": address }, "adoption": "IfUnowned" });
    // Both at once, from two namespaces.
    let (one, two) = futures::join!(
        c.attack("one", spec.clone()),
        apply_as::<Identity>(
            &c.victim.client,
            &c.victim.namespace,
            identity("two", spec.clone())
        ),
    );
    let (one_uid, two_uid) = (one.uid().unwrap(), two.uid().unwrap());
    let one_api: Api<Identity> = Api::namespaced(c.tenant.client.clone(), &c.tenant.namespace);
    let two_api: Api<Identity> = Api::namespaced(c.victim.client.clone(), &c.victim.namespace);
    let reason = |o: &Identity| {
        o.status
            .as_ref()
            .filter(|s| s.observed_generation == o.metadata.generation)
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    };
    // One winner: Synced with the id, the marker naming it in Kratos; the other in Conflict.
    let (winner, loser) = eventually("exactly one owner", T, || async {
        let (a, b) = (
            one_api.get("one").await.ok()?,
            two_api.get("two").await.ok()?,
        );
        let k = kratos_identity(&kratos, &id).await?;
        let owner = marker(&k, UID_MARKER)?.to_string();
        match (reason(&a).as_str(), reason(&b).as_str()) {
            ("Synced", "Conflict") if owner == one_uid => Some(("one", "two")),
            ("Conflict", "Synced") if owner == two_uid => Some(("two", "one")),
            _ => None,
        }
    })
    .await;
    // Deleting the loser leaves the identity to the winner. (The loser's status may still
    // record the id, if it was Ready for a moment before the winner's write: that is a cache,
    // and the marker in Kratos is what every call checks.)
    let (loser_env, loser_api) = if loser == "one" {
        (&c.tenant, &one_api)
    } else {
        (&c.victim, &two_api)
    };
    loser_api
        .delete(loser, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone::<Identity>(loser_env, loser).await;
    let k = kratos_identity(&kratos, &id)
        .await
        .expect("deleting the loser must not delete the identity");
    let winner_uid = if winner == "one" { &one_uid } else { &two_uid };
    assert_eq!(marker(&k, UID_MARKER), Some(winner_uid.as_str()));
    c.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Messages name no other namespace

#[tokio::test]
async fn conflict_messages_name_no_other_namespace_object_or_kratos_id() {
    let c = Cluster::new("ten-oracle").await;
    let victim_id = team_identity(&c.victim, "victim").await;
    c.attack(
        "probe",
        json!({ "schemaId": "customer", "traits": { "email": c.victim.email("victim") } }),
    )
    .await;
    let refused = wait_reason(&c.tenant, "probe", "Conflict").await;
    let event = support::wait_event(&c.tenant, "probe", "Conflict").await;
    for text in [
        ready_message(&refused),
        event.note.clone().unwrap_or_default(),
    ] {
        for secret in [&victim_id, &c.victim.namespace, &"victim".to_string()] {
            assert!(!text.contains(secret.as_str()), "{text:?} reveals {secret}");
        }
    }
    c.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Restores: an object recreated under its name is not locked out

#[tokio::test]
async fn an_object_recreated_under_the_same_name_takes_its_identity_back() {
    let c = Cluster::new("ten-restore").await;
    let kratos = c.kratos();
    let id = team_identity(&c.tenant, "r").await;
    let api: Api<Identity> = Api::namespaced(c.tenant.client.clone(), &c.tenant.namespace);
    // A force-removed finalizer: the object goes, its identity stays in Kratos.
    api.patch(
        "r",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
    api.delete("r", &DeleteParams::default()).await.unwrap();
    wait_gone::<Identity>(&c.tenant, "r").await;
    assert!(kratos_identity(&kratos, &id).await.is_some());

    let again = team_identity(&c.tenant, "r").await;
    assert_eq!(again, id, "the same Kratos identity, taken back");
    let k = kratos_identity(&kratos, &id).await.unwrap();
    let obj = api.get("r").await.unwrap();
    assert_eq!(marker(&k, UID_MARKER), obj.metadata.uid.as_deref());
    assert_eq!(
        marker(&k, OWNER_MARKER),
        Some(format!("{}/r", c.tenant.namespace).as_str())
    );
    c.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 7. No tenant can stall the operator for the others

/// `levels` nested objects around a string.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("leaf"), |v, _| json!({ "k": v }))
}

/// Applies an Identity as the tenant. The answer is not decoded: its spec is what this is about
/// (the test reads objects with requests of its own, independent of the operator's decoder).
async fn apply_raw(c: &Cluster, name: &str, traits: Value) {
    let manifest = identity(name, json!({ "schemaId": "customer", "traits": traits }));
    let url = <Identity as kube::Resource>::url_path(&(), Some(&c.tenant.namespace));
    let request = kube::core::Request::new(url)
        .patch(
            name,
            &PatchParams::apply("tenant").force(),
            &Patch::Apply(&manifest),
        )
        .unwrap();
    c.attacker
        .request_text(request)
        .await
        .unwrap_or_else(|e| panic!("the API server stores {name}: {e}"));
}

/// What the test reads of an Identity: its generation and status. serde skips the rest (spec,
/// managedFields) without decoding it, however deeply it nests.
#[derive(serde::Deserialize)]
struct Observed {
    metadata: ObservedMeta,
    #[serde(default)]
    status: Option<ObservedStatus>,
}

#[derive(serde::Deserialize)]
struct ObservedMeta {
    generation: Option<i64>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObservedStatus {
    observed_generation: Option<i64>,
    #[serde(default)]
    conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// The object `name` as [`Observed`], `None` once it is gone.
async fn observe(c: &Cluster, name: &str) -> Option<Observed> {
    let url = <Identity as kube::Resource>::url_path(&(), Some(&c.tenant.namespace));
    let request = kube::core::Request::new(url)
        .get(name, &Default::default())
        .unwrap();
    match c.tenant.client.request::<Observed>(request).await {
        Ok(o) => Some(o),
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => panic!("get {name}: {e}"),
    }
}

/// Waits for `Ready=False reason=InvalidSpec` and `Stalled=True` on the current generation;
/// returns the message.
async fn invalid_spec_message(c: &Cluster, name: &str) -> String {
    eventually(&format!("{name} to report InvalidSpec"), T, || async {
        let o = observe(c, name).await?;
        let status = o.status?;
        if status.observed_generation != o.metadata.generation {
            return None;
        }
        let condition = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
        let ready = condition("Ready")?;
        (ready.status == "False"
            && ready.reason == "InvalidSpec"
            && condition("Stalled").is_some_and(|s| s.status == "True"))
        .then(|| ready.message.clone())
    })
    .await
}

#[tokio::test]
async fn deep_or_huge_specs_in_one_namespace_do_not_stop_the_others() {
    // The bad objects exist before the operator starts, as after any restart: its first list
    // of Identities holds them.
    let mut c = Cluster::without_operator("ten-dos").await;
    let address = c.tenant.email("t");
    // Deeper than any JSON decoder's default limit (128), stored by the API server as it is.
    apply_raw(&c, "deep", json!({ "email": address, "x": nested(300) })).await;
    // Decodable, but past the operator's own limits of nesting and size.
    apply_raw(&c, "nested", json!({ "email": address, "x": nested(40) })).await;
    apply_raw(
        &c,
        "huge",
        json!({ "email": address, "blob": "x".repeat(100 * 1024) }),
    )
    .await;
    c.start_operator().await;

    // Another team's Identities keep converging meanwhile, and so do the tenant's good ones
    // (they share a watch with the bad objects, as every namespace does in cluster mode).
    let victim_id = team_identity(&c.victim, "unaffected").await;
    assert!(!victim_id.is_empty());
    let own_id = team_identity(&c.tenant, "fine").await;
    assert!(!own_id.is_empty());

    let deep = invalid_spec_message(&c, "deep").await;
    assert!(deep.contains("nests too deeply"), "{deep}");
    let nested_message = invalid_spec_message(&c, "nested").await;
    assert!(
        nested_message.contains("spec.traits") && nested_message.contains("32"),
        "{nested_message}"
    );
    let huge = invalid_spec_message(&c, "huge").await;
    assert!(
        huge.contains("spec.traits") && huge.contains("bytes"),
        "{huge}"
    );
    // Nothing was created in Kratos for them.
    assert!(
        c.kratos()
            .find_by_credentials_identifier(&address)
            .await
            .unwrap()
            .is_empty()
    );
    // And they can be deleted (no finalizer is left hanging on them).
    let url = <Identity as kube::Resource>::url_path(&(), Some(&c.tenant.namespace));
    for name in ["deep", "nested", "huge"] {
        let request = kube::core::Request::new(&url)
            .delete(name, &DeleteParams::default())
            .unwrap();
        c.attacker.request_text(request).await.unwrap();
    }
    for name in ["deep", "nested", "huge"] {
        eventually(&format!("{name} to be gone"), T, || async {
            observe(&c, name).await.is_none().then_some(())
        })
        .await;
    }
    c.cleanup().await;
}

/// A namespace's tenancy policy is read once per cache lifetime, however many reconciles ask for
/// it at the same moment (a bulk apply in one namespace): concurrent misses share one read of the
/// Namespace instead of each sending its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reconciles_share_one_read_of_the_namespace_policy() {
    use std::sync::{Arc, Mutex};
    let t = setup("ten-policy-reads").await;
    let reads: Arc<Mutex<usize>> = Arc::default();
    let counted = reads.clone();
    let path = format!("/api/v1/namespaces/{}", t.namespace);
    let client = support::client_seeing(&t, move |req| {
        if req.method() == "GET" && req.uri().path() == path {
            *counted.lock().unwrap() += 1;
        }
    })
    .await;
    let policies = Arc::new(kratos_operator::tenancy::Policies::new(true));
    let burst = || {
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (policies, client, ns) =
                    (policies.clone(), client.clone(), t.namespace.clone());
                tokio::spawn(async move { policies.get(&client, &ns).await.map(|_| ()) })
            })
            .collect();
        futures::future::join_all(tasks)
    };
    for result in burst().await {
        result.unwrap().unwrap();
    }
    assert_eq!(*reads.lock().unwrap(), 1, "64 concurrent asks, one read");
    // Once the cache has expired, the next burst reads it once more.
    tokio::time::sleep(kratos_operator::tenancy::POLICY_TTL + Duration::from_millis(200)).await;
    for result in burst().await {
        result.unwrap().unwrap();
    }
    assert_eq!(*reads.lock().unwrap(), 2, "one read per cache lifetime");
    t.cleanup().await;
}
