//! Proof that the test environment's parts are real: a real kube-apiserver at the pinned
//! version, CRDs served through server-side apply, garbage collection by a real
//! kube-controller-manager, and a real Kratos storing identities.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
    },
    runtime::{conditions, wait::await_condition},
};
use serde_json::json;
use support::{eventually, setup};

#[tokio::test]
async fn apiserver_reports_the_release_under_test() {
    let t = setup("smoke-version").await;
    let info = t.client.apiserver_version().await.expect("/version");
    // The newest release unless $KRATOS_OPERATOR_TESTENV_KUBERNETES asks for the oldest: this
    // holds the compatibility run to the release it claims.
    let release = kratos_operator_testenv::build::kubernetes_from_env().expect("a known release");
    assert_eq!(info.git_version, release.version);
    assert_eq!(info.major, "1");
    t.cleanup().await;
}

#[tokio::test]
async fn crd_applied_by_ssa_is_established_and_objects_round_trip() {
    let t = setup("smoke-crd").await;
    let crds: Api<CustomResourceDefinition> = Api::all(t.client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.smoke.kratos-operator.dev" },
        "spec": {
            "group": "smoke.kratos-operator.dev",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                    "spec": { "type": "object", "properties": { "size": { "type": "integer" } } }
                } } }
            }]
        }
    }))
    .expect("crd");
    crds.patch(
        "widgets.smoke.kratos-operator.dev",
        &PatchParams::apply("kratos-operator-smoke").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            "widgets.smoke.kratos-operator.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established in time")
    .expect("watch CRD");

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("smoke.kratos-operator.dev", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.namespace, &ar);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "smoke.kratos-operator.dev/v1", "kind": "Widget",
        "metadata": { "name": "w1" }, "spec": { "size": 3 }
    }))
    .expect("widget");
    // Discovery may lag the Established condition by a moment.
    eventually(
        "the Widget create to succeed",
        Duration::from_secs(20),
        || async { widgets.create(&PostParams::default(), &widget).await.ok() },
    )
    .await;
    let back = widgets.get("w1").await.expect("get widget");
    assert_eq!(back.data["spec"]["size"], json!(3));
    t.cleanup().await;
}

#[tokio::test]
async fn garbage_collector_deletes_owned_objects() {
    let t = setup("smoke-gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &t.namespace);
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), &t.namespace);
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "owner" } })).expect("cm"),
        )
        .await
        .expect("create owner");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "owned", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().expect("uid")
        }] },
        "stringData": { "k": "v" }
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create owned secret");
    cms.delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    eventually(
        "the owned Secret to be garbage-collected",
        Duration::from_secs(60),
        || async { matches!(secrets.get_opt("owned").await, Ok(None)).then_some(()) },
    )
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn namespace_controller_finishes_namespace_deletion() {
    let t = setup("smoke-ns").await;
    let namespaces: Api<Namespace> = Api::all(t.client.clone());
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), &t.namespace);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "s" } })).expect("s"),
        )
        .await
        .expect("create secret");
    namespaces
        .delete(&t.namespace, &DeleteParams::default())
        .await
        .expect("delete namespace");
    eventually(
        "the namespace to disappear",
        Duration::from_secs(60),
        || async { matches!(namespaces.get_opt(&t.namespace).await, Ok(None)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn kratos_creates_and_returns_an_identity() {
    let t = setup("smoke-kratos").await;
    let http = reqwest::Client::new();
    let email = format!("{}@example.com", t.namespace);
    let created: serde_json::Value = http
        .post(format!("{}/admin/identities", t.kratos_admin_url))
        .json(&json!({ "schema_id": "customer", "traits": { "email": email } }))
        .send()
        .await
        .expect("POST identity")
        .error_for_status()
        .expect("201")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let got: serde_json::Value = http
        .get(format!("{}/admin/identities/{id}", t.kratos_admin_url))
        .send()
        .await
        .expect("GET identity")
        .error_for_status()
        .expect("200")
        .json()
        .await
        .expect("json");
    assert_eq!(got["traits"]["email"], json!(email));
    assert_eq!(got["schema_id"], json!("customer"));
    let version: serde_json::Value = http
        .get(format!("{}/admin/version", t.kratos_admin_url))
        .send()
        .await
        .expect("GET version")
        .json()
        .await
        .expect("json");
    assert_eq!(
        version["version"],
        json!(kratos_operator_testenv::versions::KRATOS)
    );
    t.cleanup().await;
}
