//! The Kratos admin API client against the real Kratos v1.3.1 of the test environment: every
//! operation's success path, its errors, pagination, batches, credentials, real sessions from the
//! public login flow, and — against a small local stub server — the faults Kratos cannot produce
//! on demand (429, 503, slow and malformed responses).
// Helpers outside `#[test]` functions (fixtures, the stub server) fail the test on setup errors,
// as the tests themselves do.
#![allow(clippy::expect_used)]

mod support;

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use kratos_operator::kratos::{
    BatchPatchAction, BatchPatchItem, ClientConfig, CreateIdentityBody, CreateRecoveryCodeBody,
    CreateRecoveryLinkBody, CredentialType, Error, IdentityCredentialsImport, IdentityState,
    JsonPatchOp, KratosClient, ListIdentitiesParams, RecoveryFlowType, RetryPolicy, SessionExpand,
    UpdateIdentityBody, VerifiableAddressImport,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use support::{SessionPart, TestEnv, login_for, setup};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use url::Url;

// ---------------------------------------------------------------------------------------------
// helpers

fn config(url: &str) -> ClientConfig {
    ClientConfig::new(Url::parse(url).expect("url"))
}

fn client(t: &TestEnv) -> KratosClient {
    KratosClient::new(config(&t.kratos_admin_url)).expect("client")
}

fn customer(email: &str) -> CreateIdentityBody {
    CreateIdentityBody::new("customer", json!({ "email": email }))
}

fn with_password(email: &str, password: &str) -> CreateIdentityBody {
    CreateIdentityBody {
        credentials: Some(IdentityCredentialsImport::password(SecretString::from(
            password,
        ))),
        ..customer(email)
    }
}

// ---------------------------------------------------------------------------------------------
// identities

#[tokio::test]
async fn identity_create_get_update_patch_delete_round_trip() {
    let t = setup("kc-crud").await;
    let kratos = client(&t);
    let address = t.email("Alice");
    let created = kratos
        .create_identity(&CreateIdentityBody {
            state: Some(IdentityState::Active),
            metadata_public: Some(json!({ "plan": "pro" })),
            metadata_admin: Some(json!({ "crm": "42" })),
            verifiable_addresses: Some(vec![VerifiableAddressImport::verified_email(
                address.to_lowercase(),
            )]),
            ..CreateIdentityBody::new(
                "customer",
                json!({ "email": address, "name": { "first": "Alice" } }),
            )
        })
        .await
        .expect("create");
    assert_eq!(created.schema_id, "customer");
    assert_eq!(created.state, IdentityState::Active);
    assert_eq!(created.metadata_public, Some(json!({ "plan": "pro" })));
    assert_eq!(created.verifiable_addresses.len(), 1);
    assert!(
        created.verifiable_addresses[0].verified,
        "imported verification state"
    );
    assert_eq!(
        created.verifiable_addresses[0].value,
        address.to_lowercase()
    );

    let got = kratos.get_identity(&created.id, &[]).await.expect("get");
    assert_eq!(
        got.traits,
        json!({ "email": address, "name": { "first": "Alice" } })
    );
    assert_eq!(got.metadata_admin, Some(json!({ "crm": "42" })));
    let password = got
        .credential(CredentialType::Password)
        .expect("password credential from the identifier trait");
    assert_eq!(password.identifiers, vec![address.to_lowercase()]);
    assert!(!got.has_password(), "no password was imported");

    let updated = kratos
        .update_identity(
            &created.id,
            &UpdateIdentityBody {
                schema_id: "customer".into(),
                traits: json!({ "email": address, "tier": "enterprise" }),
                state: Some(IdentityState::Inactive),
                metadata_public: Some(json!({ "plan": "enterprise" })),
                metadata_admin: None,
                ..UpdateIdentityBody::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.state, IdentityState::Inactive);
    assert_eq!(updated.traits["tier"], json!("enterprise"));
    assert_eq!(updated.traits.get("name"), None, "PUT replaces the traits");
    assert_eq!(updated.metadata_admin, None, "PUT clears omitted metadata");
    assert!(updated.state_changed_at > created.state_changed_at);

    let patched = kratos
        .patch_identity(
            &created.id,
            &[
                JsonPatchOp::replace("/traits/age", json!(33)),
                JsonPatchOp::remove("/traits/tier"),
                JsonPatchOp::replace("/state", json!("active")),
                JsonPatchOp::add("/metadata_admin", json!({ "crm": "43" })),
            ],
        )
        .await
        .expect("patch");
    assert_eq!(patched.traits, json!({ "email": address, "age": 33 }));
    assert_eq!(patched.state, IdentityState::Active);
    assert_eq!(patched.metadata_admin, Some(json!({ "crm": "43" })));
    // Kratos v1.3.1 quirk: `remove` of a top-level metadata field is a no-op (the patched JSON is
    // decoded over the stored identity); replacing it with null clears it.
    let kept = kratos
        .patch_identity(&created.id, &[JsonPatchOp::remove("/metadata_public")])
        .await
        .expect("patch");
    assert_eq!(kept.metadata_public, Some(json!({ "plan": "enterprise" })));
    let cleared = kratos
        .patch_identity(
            &created.id,
            &[JsonPatchOp::replace("/metadata_public", Value::Null)],
        )
        .await
        .expect("patch");
    assert_eq!(cleared.metadata_public, None);

    kratos.delete_identity(&created.id).await.expect("delete");
    kratos
        .delete_identity(&created.id)
        .await
        .expect("deleting a deleted identity is done");
    assert!(matches!(
        kratos.get_identity(&created.id, &[]).await,
        Err(Error::NotFound { .. })
    ));

    let metrics = kratos.metrics();
    assert_eq!(metrics.calls("create_identity"), 1);
    assert_eq!(metrics.calls("delete_identity"), 2);
    assert_eq!(metrics.outcomes("get_identity", "not_found"), 1);
    assert_eq!(metrics.outcomes("get_identity", "success"), 1);
    assert_eq!(metrics.calls("patch_identity"), 3);
    assert_eq!(metrics.writes(), 7, "create, update, 3 patches, 2 deletes");
    assert_eq!(metrics.total_calls(), 9);
    t.cleanup().await;
}

#[tokio::test]
async fn missing_identities_give_not_found_except_delete() {
    let t = setup("kc-missing").await;
    let kratos = client(&t);
    let missing = "7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1";
    let err = kratos.get_identity(missing, &[]).await.expect_err("get");
    assert!(
        matches!(&err, Error::NotFound { message } if message.contains("Unable to locate")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let err = kratos
        .update_identity(
            missing,
            &UpdateIdentityBody {
                traits: json!({ "email": t.email("x") }),
                ..Default::default()
            },
        )
        .await
        .expect_err("update");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let err = kratos
        .patch_identity(missing, &[JsonPatchOp::replace("/traits/age", json!(1))])
        .await
        .expect_err("patch");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    kratos
        .delete_identity(missing)
        .await
        .expect("404 on delete counts as done");
    kratos
        .delete_identity_sessions(missing)
        .await
        .expect("404 on delete sessions counts as done");
    assert!(matches!(
        kratos.get_identity("not-a-uuid", &[]).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(kratos.metrics().outcomes("delete_identity", "success"), 1);
    t.cleanup().await;
}

#[tokio::test]
async fn duplicate_identifiers_conflict_on_create_and_update() {
    let t = setup("kc-conflict").await;
    let kratos = client(&t);
    let taken = t.email("taken");
    let first = kratos
        .create_identity(&customer(&taken))
        .await
        .expect("create");
    // Identifiers compare lower-cased.
    let err = kratos
        .create_identity(&customer(&taken.to_uppercase()))
        .await
        .expect_err("duplicate create");
    assert!(
        matches!(&err, Error::Conflict { reason } if reason.contains("conflicts with another identity")),
        "{err:?}"
    );
    assert_eq!(err.reason_label(), "conflict");

    let second = kratos
        .create_identity(&customer(&t.email("other")))
        .await
        .expect("create other");
    let err = kratos
        .update_identity(
            &second.id,
            &UpdateIdentityBody {
                schema_id: "customer".into(),
                traits: json!({ "email": taken }),
                ..Default::default()
            },
        )
        .await
        .expect_err("duplicate update");
    assert!(
        matches!(&err, Error::Conflict { reason } if reason.contains("exists already")),
        "{err:?}"
    );
    let err = kratos
        .patch_identity(
            &second.id,
            &[JsonPatchOp::replace("/traits/email", json!(taken))],
        )
        .await
        .expect_err("duplicate patch");
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");

    // The timed-out-create resolution path: look the identifier up.
    let found = kratos
        .find_by_credentials_identifier(&taken.to_uppercase())
        .await
        .expect("lookup");
    assert_eq!(
        found.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![first.id.as_str()]
    );
    assert!(
        found[0].credentials.is_some(),
        "lookups include credentials"
    );
    assert!(
        kratos
            .find_by_credentials_identifier(&t.email("nobody"))
            .await
            .expect("lookup")
            .is_empty()
    );
    assert_eq!(kratos.metrics().calls("find_by_credentials_identifier"), 2);

    for id in [first.id, second.id] {
        kratos.delete_identity(&id).await.expect("delete");
    }
    t.cleanup().await;
}

#[tokio::test]
async fn schema_violations_surface_reason_and_pointer() {
    let t = setup("kc-invalid").await;
    let kratos = client(&t);
    let address = t.email("bad");

    let err = kratos
        .create_identity(&CreateIdentityBody::new(
            "customer",
            json!({ "email": address, "age": "old" }),
        ))
        .await
        .expect_err("wrong type");
    match &err {
        Error::Invalid { reason, pointer } => {
            assert_eq!(pointer.as_deref(), Some("/traits/age"));
            assert!(
                reason.contains("expected integer, but got string"),
                "{reason}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(!err.is_transient());

    let err = kratos
        .create_identity(&CreateIdentityBody::new(
            "customer",
            json!({ "email": address, "department": "x" }),
        ))
        .await
        .expect_err("unknown trait");
    assert!(
        matches!(&err, Error::Invalid { reason, pointer: Some(p) } if p == "/traits" && reason.contains("\"department\" not allowed")),
        "{err:?}"
    );

    let err = kratos
        .create_identity(&CreateIdentityBody::new(
            "customer",
            json!({ "email": "not an email" }),
        ))
        .await
        .expect_err("format");
    assert!(
        matches!(&err, Error::Invalid { pointer: Some(p), .. } if p == "/traits/email"),
        "{err:?}"
    );

    let err = kratos
        .create_identity(&CreateIdentityBody::new(
            "employee",
            json!({ "username": "Upper", "email": address }),
        ))
        .await
        .expect_err("pattern");
    assert!(
        matches!(&err, Error::Invalid { pointer: Some(p), .. } if p == "/traits/username"),
        "{err:?}"
    );

    let err = kratos
        .create_identity(&CreateIdentityBody::new("no-such-schema", json!({})))
        .await
        .expect_err("schema");
    assert!(
        matches!(&err, Error::Invalid { reason, pointer: None } if reason.contains("Unable to find JSON Schema ID: no-such-schema")),
        "{err:?}"
    );

    let err = kratos
        .create_identity(&CreateIdentityBody {
            credentials: Some(IdentityCredentialsImport::hashed_password(
                SecretString::from("plain-not-a-hash"),
            )),
            ..customer(&address)
        })
        .await
        .expect_err("hash format");
    assert!(
        matches!(&err, Error::Invalid { reason, .. } if reason.contains("does not match any known hash format")),
        "{err:?}"
    );
    assert!(!format!("{err:?}{err}").contains("plain-not-a-hash"));

    // Patches are validated too, and credentials cannot be patched.
    let created = kratos
        .create_identity(&customer(&address))
        .await
        .expect("create");
    let err = kratos
        .patch_identity(
            &created.id,
            &[JsonPatchOp::replace("/traits/tier", json!("gold"))],
        )
        .await;
    assert!(
        matches!(&err, Err(Error::Invalid { pointer: Some(p), .. }) if p == "/traits/tier"),
        "{err:?}"
    );
    let err = kratos
        .patch_identity(&created.id, &[JsonPatchOp::remove("/credentials")])
        .await;
    assert!(
        matches!(&err, Err(Error::Invalid { reason, .. }) if reason.contains("/credentials")),
        "{err:?}"
    );
    kratos.delete_identity(&created.id).await.expect("delete");
    assert_eq!(kratos.metrics().outcomes("create_identity", "invalid"), 6);
    t.cleanup().await;
}

#[tokio::test]
async fn server_version_is_detected_once_and_gates_v25_fields() {
    let t = setup("kc-version").await;
    let kratos = client(&t);
    let version = kratos.server_version().await.expect("version");
    assert_eq!(version.raw, kratos_operator_testenv::versions::KRATOS);
    assert_eq!((version.major, version.minor, version.patch), (1, 3, 1));
    assert!(!version.supports_external_id());

    // v1.3.1 refuses unknown fields with 400; the client drops them instead.
    let address = t.email("ext");
    let created = kratos
        .create_identity(&CreateIdentityBody {
            external_id: Some("crm-42".into()),
            organization_id: Some("7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1".into()),
            ..customer(&address)
        })
        .await
        .expect("create with v25-only fields");
    assert_eq!(created.external_id, None);
    assert_eq!(created.organization_id, None);
    let updated = kratos
        .update_identity(
            &created.id,
            &UpdateIdentityBody {
                schema_id: "customer".into(),
                traits: json!({ "email": address }),
                external_id: Some("crm-43".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update with v25-only fields");
    assert_eq!(updated.external_id, None);
    let results = kratos
        .batch_patch_identities(&[BatchPatchItem::create(
            CreateIdentityBody {
                external_id: Some("crm-44".into()),
                ..customer(&t.email("ext2"))
            },
            None,
        )])
        .await
        .expect("batch with v25-only fields");
    assert!(results[0].is_success(), "{results:?}");
    assert_eq!(kratos.metrics().calls("server_version"), 1, "detected once");
    for id in [Some(created.id), results[0].identity_id.clone()]
        .into_iter()
        .flatten()
    {
        kratos.delete_identity(&id).await.expect("delete");
    }
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// lists and batches

#[tokio::test]
async fn identity_lists_follow_next_links_across_pages() {
    let t = setup("kc-pages").await;
    let kratos = client(&t);
    let mut mine = HashSet::new();
    for i in 0..12 {
        let created = kratos
            .create_identity(&customer(&t.email(&format!("p{i:02}"))))
            .await
            .expect("create");
        mine.insert(created.id);
    }
    let ids: Vec<String> = mine.iter().cloned().collect();

    // 12 identities, 5 per page: 3 pages.
    let before = kratos.metrics().calls("list_identities");
    let listed: Vec<_> = kratos
        .list_identities(ListIdentitiesParams {
            page_size: Some(5),
            ids: ids.clone(),
            ..Default::default()
        })
        .try_collect()
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|i| i.id.clone()).collect::<HashSet<_>>(),
        mine
    );
    assert_eq!(listed.len(), 12, "no duplicates across pages");
    assert_eq!(
        kratos.metrics().calls("list_identities") - before,
        3,
        "three pages"
    );
    assert!(
        listed.windows(2).all(|w| w[0].id < w[1].id),
        "keyset order is by id"
    );

    // Page by page, as a sweep does.
    let mut params = ListIdentitiesParams {
        page_size: Some(5),
        ids,
        ..Default::default()
    };
    let mut sizes = Vec::new();
    loop {
        let page = kratos.list_identities_page(&params).await.expect("page");
        sizes.push(page.items.len());
        match page.next_page_token {
            Some(token) => params.page_token = Some(token),
            None => break,
        }
    }
    assert_eq!(sizes, vec![5, 5, 2]);

    // Unfiltered, small pages, filtered to this test's addresses afterwards.
    let domain = format!(".{}@example.com", t.namespace);
    let swept: HashSet<String> = kratos
        .list_identities(ListIdentitiesParams {
            page_size: Some(5),
            ..Default::default()
        })
        .try_filter(|i| {
            futures::future::ready(
                i.traits["email"]
                    .as_str()
                    .is_some_and(|e| e.ends_with(&domain)),
            )
        })
        .map_ok(|i| i.id)
        .try_collect()
        .await
        .expect("sweep");
    assert_eq!(swept, mine);
    assert!(kratos.metrics().calls("list_identities") - before >= 3 + 3 + 3);

    // The default page size is 500.
    let page = kratos
        .list_identities_page(&ListIdentitiesParams::default())
        .await
        .expect("default page");
    assert!(page.items.len() <= 500);

    for id in &mine {
        kratos.delete_identity(id).await.expect("delete");
    }
    t.cleanup().await;
}

#[tokio::test]
async fn batch_reports_per_item_results_in_request_order() {
    let t = setup("kc-batch").await;
    let kratos = client(&t);
    let existing = kratos
        .create_identity(&customer(&t.email("existing")))
        .await
        .expect("create");
    let patch_ids: Vec<String> = (0..5)
        .map(|i| format!("00000000-0000-4000-8000-00000000000{i}"))
        .collect();
    let items = vec![
        BatchPatchItem::create(
            with_password(&t.email("b0"), "batch-password-0"),
            Some(patch_ids[0].clone()),
        ),
        BatchPatchItem::create(
            CreateIdentityBody::new("customer", json!({ "email": t.email("b1"), "age": -1 })),
            Some(patch_ids[1].clone()),
        ),
        BatchPatchItem::create(customer(&t.email("existing")), Some(patch_ids[2].clone())),
        BatchPatchItem::create(customer(&t.email("b3")), Some(patch_ids[3].clone())),
        BatchPatchItem {
            create: None,
            patch_id: Some(patch_ids[4].clone()),
        },
    ];
    let results = kratos.batch_patch_identities(&items).await.expect("batch");
    assert_eq!(results.len(), 5);
    for (result, patch_id) in results.iter().zip(&patch_ids).take(4) {
        assert_eq!(result.patch_id.as_ref(), Some(patch_id), "{results:?}");
    }
    assert_eq!(results[1].action, BatchPatchAction::Error);
    // Kratos v1.3.1 gives batch items only the generic 400 text, not the schema reason.
    assert!(
        matches!(&results[1].error, Some(Error::Invalid { .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].action, BatchPatchAction::Error);
    assert!(
        matches!(&results[2].error, Some(Error::Conflict { .. })),
        "{:?}",
        results[2]
    );
    assert_eq!(results[4].action, BatchPatchAction::Skipped);
    // Kratos v1.3.1 answers "create" with an id for the valid items of a batch in which another
    // item conflicts, yet keeps none of them; the client checks and reports them as transient.
    for valid in [&results[0], &results[3]] {
        assert_eq!(valid.action, BatchPatchAction::Error, "{valid:?}");
        assert!(
            valid.error.as_ref().is_some_and(Error::is_transient),
            "{valid:?}"
        );
    }
    for local in ["b0", "b1", "b3"] {
        let found = kratos
            .find_by_credentials_identifier(&t.email(local))
            .await
            .expect("lookup");
        assert!(found.is_empty(), "{local}: {found:?}");
    }

    // Sent again without the failing items, they are created and carry what was sent.
    let again = kratos
        .batch_patch_identities(&[items[0].clone(), items[3].clone()])
        .await
        .expect("batch again");
    assert!(
        again
            .iter()
            .all(|r| r.is_success() && r.identity_id.is_some()),
        "{again:?}"
    );
    assert_eq!(again[0].patch_id.as_ref(), Some(&patch_ids[0]));
    let b0_id = again[0].identity_id.clone().expect("id");
    let b0 = kratos
        .get_identity(&b0_id, &[CredentialType::Password])
        .await
        .expect("get b0");
    assert_eq!(b0.traits["email"], json!(t.email("b0")));
    assert!(b0.has_password());
    login_for(
        &t.kratos_public_url,
        &t.email("b0"),
        "batch-password-0",
        SessionPart::Id,
    )
    .await
    .expect("login with the batch password");

    // An item that fails schema validation does not take the others down.
    let mixed = kratos
        .batch_patch_identities(&[
            BatchPatchItem::create(customer(&t.email("b7")), None),
            BatchPatchItem::create(
                CreateIdentityBody::new("customer", json!({ "email": t.email("b8"), "age": "x" })),
                None,
            ),
        ])
        .await
        .expect("batch with an invalid item");
    assert!(mixed[0].is_success(), "{mixed:?}");
    assert!(
        matches!(mixed[1].error, Some(Error::Invalid { .. })),
        "{mixed:?}"
    );
    let b7 = kratos
        .find_by_credentials_identifier(&t.email("b7"))
        .await
        .expect("lookup");
    assert_eq!(
        b7.iter().map(|i| Some(i.id.clone())).collect::<Vec<_>>(),
        vec![mixed[0].identity_id.clone()]
    );

    // A whole-request failure (a bad hash in any item) creates nothing.
    let err = kratos
        .batch_patch_identities(&[
            BatchPatchItem::create(customer(&t.email("b5")), None),
            BatchPatchItem::create(
                CreateIdentityBody {
                    credentials: Some(IdentityCredentialsImport::hashed_password(
                        SecretString::from("nope"),
                    )),
                    ..customer(&t.email("b6"))
                },
                None,
            ),
        ])
        .await
        .expect_err("bad hash fails the batch");
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(
        kratos
            .find_by_credentials_identifier(&t.email("b5"))
            .await
            .expect("lookup")
            .is_empty()
    );

    // Client-side limits.
    let too_many = vec![BatchPatchItem::default(); 1001];
    assert!(matches!(
        kratos.batch_patch_identities(&too_many).await,
        Err(Error::Invalid { .. })
    ));
    assert!(
        kratos
            .batch_patch_identities(&[])
            .await
            .expect("empty")
            .is_empty()
    );
    assert_eq!(
        kratos.metrics().calls("batch_patch_identities"),
        4,
        "refused batches are not sent"
    );

    let created = [
        Some(existing.id),
        again[0].identity_id.clone(),
        again[1].identity_id.clone(),
        mixed[0].identity_id.clone(),
    ];
    for id in created.into_iter().flatten() {
        kratos.delete_identity(&id).await.expect("delete");
    }
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// credentials and sessions

#[tokio::test]
async fn oidc_credentials_are_imported_and_deleted() {
    let t = setup("kc-oidc").await;
    let kratos = client(&t);
    let subject = format!("sub-{}", t.namespace);
    let identifier = format!("github:{subject}");
    let created = kratos
        .create_identity(&CreateIdentityBody {
            credentials: Some(IdentityCredentialsImport::oidc([
                ("github", subject.as_str()),
                ("gitlab", "7"),
            ])),
            ..customer(&t.email("oidc"))
        })
        .await
        .expect("create with oidc");
    let oidc = created
        .credential(CredentialType::Oidc)
        .expect("oidc credential");
    assert!(oidc.identifiers.contains(&identifier), "{oidc:?}");

    let found = kratos
        .find_by_credentials_identifier(&identifier)
        .await
        .expect("lookup by provider:subject");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, created.id);

    let with_config = kratos
        .get_identity(&created.id, &[CredentialType::Oidc])
        .await
        .expect("get");
    let providers = with_config
        .credential(CredentialType::Oidc)
        .expect("oidc")
        .oidc_providers();
    assert!(
        providers.contains(&("github".to_string(), subject.clone())),
        "{providers:?}"
    );

    kratos
        .delete_identity_credentials(&created.id, CredentialType::Oidc, Some(&identifier))
        .await
        .expect("delete oidc link");
    let after = kratos
        .get_identity(&created.id, &[CredentialType::Oidc])
        .await
        .expect("get");
    let identifiers = after
        .credential(CredentialType::Oidc)
        .map(|c| c.identifiers.clone())
        .unwrap_or_default();
    assert!(!identifiers.contains(&identifier), "{identifiers:?}");
    assert!(
        identifiers.contains(&"gitlab:7".to_string()),
        "the other link stays: {identifiers:?}"
    );
    assert!(
        kratos
            .find_by_credentials_identifier(&identifier)
            .await
            .expect("lookup")
            .is_empty()
    );

    let err = kratos
        .delete_identity_credentials(&created.id, CredentialType::Oidc, Some(&identifier))
        .await;
    assert!(matches!(err, Err(Error::NotFound { .. })), "{err:?}");
    let err = kratos
        .delete_identity_credentials(&created.id, CredentialType::Oidc, None)
        .await;
    assert!(
        matches!(&err, Err(Error::Invalid { reason, .. }) if reason.contains("identifier")),
        "{err:?}"
    );
    let err = kratos
        .delete_identity_credentials(&created.id, CredentialType::Password, None)
        .await;
    assert!(
        matches!(&err, Err(Error::Invalid { reason, .. }) if reason.contains("first factor")),
        "{err:?}"
    );
    let err = kratos
        .delete_identity_credentials(&created.id, CredentialType::Totp, None)
        .await;
    assert!(matches!(err, Err(Error::NotFound { .. })), "{err:?}");

    kratos.delete_identity(&created.id).await.expect("delete");
    t.cleanup().await;
}

#[tokio::test]
async fn cleartext_password_import_allows_login_and_sessions_are_managed() {
    let t = setup("kc-sessions").await;
    let kratos = client(&t);
    let address = t.email("Sessions");
    let password = "imported cleartext password 1";
    let created = kratos
        .create_identity(&with_password(&address, password))
        .await
        .expect("create");
    let stored = kratos
        .get_identity(&created.id, &[CredentialType::Password])
        .await
        .expect("get");
    assert!(stored.has_password());

    // Refused by Kratos (an unreachable Kratos is no refusal).
    assert!(
        login_for(
            &t.kratos_public_url,
            &address,
            "wrong password",
            SessionPart::Id
        )
        .await
        .is_err_and(|e| !e.starts_with("Kratos unreachable"))
    );
    let first = login_for(&t.kratos_public_url, &address, password, SessionPart::Id)
        .await
        .expect("login 1");
    let second = login_for(
        &t.kratos_public_url,
        &address.to_lowercase(),
        password,
        SessionPart::Id,
    )
    .await
    .expect("login 2");

    let session = kratos.get_session(&first, &[]).await.expect("get session");
    assert_eq!(session.id, first);
    assert!(session.active);
    assert_eq!(session.identity, None, "nothing expanded by default");
    assert_eq!(
        session.authentication_methods[0].method.as_deref(),
        Some("password")
    );
    let expanded = kratos
        .get_session(&first, &[SessionExpand::Identity, SessionExpand::Devices])
        .await
        .expect("expand");
    assert_eq!(
        expanded.identity.as_ref().map(|i| i.id.as_str()),
        Some(created.id.as_str())
    );
    assert!(!expanded.devices.is_empty());

    let sessions = kratos
        .list_identity_sessions(&created.id, None)
        .await
        .expect("identity sessions");
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        sessions
            .iter()
            .map(|s| s.id.as_str())
            .collect::<HashSet<_>>(),
        HashSet::from([first.as_str(), second.as_str()])
    );
    assert!(
        sessions.iter().all(|s| s.identity.is_some()),
        "identity sessions expand the identity"
    );

    // All sessions, across pages of one.
    let small_pages = KratosClient::new(ClientConfig {
        page_size: 1,
        ..config(&t.kratos_admin_url)
    })
    .expect("client");

    // All sessions, newest first, across pages.
    let all: Vec<_> = small_pages
        .list_sessions(Some(true), &[SessionExpand::Identity])
        .try_filter(|s| {
            futures::future::ready(s.identity.as_ref().is_some_and(|i| i.id == created.id))
        })
        .try_collect()
        .await
        .expect("list active sessions");
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(small_pages.metrics().outcomes("list_sessions", "success") >= 2);
    let mine: Vec<_> = kratos
        .list_sessions(None, &[])
        .try_filter(|s| futures::future::ready(s.id == first || s.id == second))
        .try_collect()
        .await
        .expect("list sessions");
    assert_eq!(mine.len(), 2);

    let extended = kratos.extend_session(&first).await.expect("extend");
    let extended = extended.expect("v1.3.1 answers 200 with the session");
    assert!(extended.expires_at >= session.expires_at);

    kratos.disable_session(&first).await.expect("disable");
    assert!(!kratos.get_session(&first, &[]).await.expect("get").active);
    let active = kratos
        .list_identity_sessions(&created.id, Some(true))
        .await
        .expect("active");
    assert_eq!(
        active.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![second.as_str()]
    );
    assert!(matches!(
        kratos
            .disable_session("7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1")
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        kratos
            .get_session("7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1", &[])
            .await,
        Err(Error::NotFound { .. })
    ));

    kratos
        .delete_identity_sessions(&created.id)
        .await
        .expect("delete sessions");
    assert!(
        kratos
            .list_identity_sessions(&created.id, None)
            .await
            .expect("none left")
            .is_empty()
    );
    kratos
        .delete_identity_sessions(&created.id)
        .await
        .expect("no sessions (404) counts as done");
    assert!(matches!(
        kratos.get_session(&second, &[]).await,
        Err(Error::NotFound { .. })
    ));

    kratos.delete_identity(&created.id).await.expect("delete");
    t.cleanup().await;
}

#[tokio::test]
async fn bcrypt_hash_import_allows_login() {
    let t = setup("kc-bcrypt").await;
    let kratos = client(&t);
    let address = t.email("hashed");
    let password = "legacy system password";
    let hash = bcrypt::hash(password, 4).expect("bcrypt");
    let created = kratos
        .create_identity(&CreateIdentityBody {
            credentials: Some(IdentityCredentialsImport::hashed_password(
                SecretString::from(hash.clone()),
            )),
            ..customer(&address)
        })
        .await
        .expect("create with hash");
    let stored = kratos
        .get_identity(&created.id, &[CredentialType::Password])
        .await
        .expect("get");
    let stored_hash = stored
        .credential(CredentialType::Password)
        .and_then(|c| c.hashed_password())
        .expect("hash");
    assert_eq!(stored_hash.expose_secret(), hash);
    assert!(
        !format!("{stored:?}").contains(&hash),
        "hashes stay out of Debug"
    );
    assert!(
        login_for(&t.kratos_public_url, &address, "not it", SessionPart::Id)
            .await
            .is_err_and(|e| !e.starts_with("Kratos unreachable"))
    );
    login_for(&t.kratos_public_url, &address, password, SessionPart::Id)
        .await
        .expect("login with the imported hash");

    // Re-import through PUT replaces the password.
    let new_hash = bcrypt::hash("rotated password", 4).expect("bcrypt");
    kratos
        .update_identity(
            &created.id,
            &UpdateIdentityBody {
                schema_id: "customer".into(),
                traits: json!({ "email": address }),
                credentials: Some(IdentityCredentialsImport::hashed_password(
                    SecretString::from(new_hash),
                )),
                ..Default::default()
            },
        )
        .await
        .expect("re-import");
    assert!(
        login_for(&t.kratos_public_url, &address, password, SessionPart::Id)
            .await
            .is_err_and(|e| !e.starts_with("Kratos unreachable"))
    );
    login_for(
        &t.kratos_public_url,
        &address,
        "rotated password",
        SessionPart::Id,
    )
    .await
    .expect("login with the new hash");
    kratos.delete_identity(&created.id).await.expect("delete");
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// schemas and recovery

#[tokio::test]
async fn schemas_come_from_the_public_url_or_through_the_admin_redirect() {
    let t = setup("kc-schemas").await;
    let served = std::fs::read_to_string(
        kratos_operator_testenv::repo_root()
            .join("testenv")
            .join("kratos")
            .join("customer.schema.json"),
    )
    .expect("schema file");
    let expected: Value = serde_json::from_str(&served).expect("schema json");

    let via_redirect = client(&t);
    let schema = via_redirect
        .get_identity_schema("customer")
        .await
        .expect("schema via admin redirect");
    assert_eq!(schema.json, expected);
    assert_eq!(schema.raw, served, "the text is kept as served");

    let public = KratosClient::new(ClientConfig {
        public_url: Some(Url::parse(&t.kratos_public_url).expect("url")),
        page_size: 1,
        ..config(&t.kratos_admin_url)
    })
    .expect("client");
    let schema = public
        .get_identity_schema("customer")
        .await
        .expect("schema from the public URL");
    assert_eq!(schema.json, expected);
    // Kratos also accepts the base64url-encoded id it puts into schema_url.
    assert_eq!(
        public
            .get_identity_schema("Y3VzdG9tZXI")
            .await
            .expect("encoded id")
            .json,
        expected
    );

    let err = public
        .get_identity_schema("no-such-schema")
        .await
        .expect_err("missing schema");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");

    let listed: Vec<_> = public
        .list_identity_schemas()
        .try_collect()
        .await
        .expect("list schemas");
    let ids: Vec<_> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec!["customer", "employee", "profile"]);
    assert_eq!(listed[0].schema, expected);
    assert_eq!(
        public.metrics().calls("list_identity_schemas"),
        3,
        "pages of one"
    );
    let listed: Vec<_> = via_redirect
        .list_identity_schemas()
        .try_collect()
        .await
        .expect("list via redirect");
    assert_eq!(listed.len(), 3);
    t.cleanup().await;
}

#[tokio::test]
async fn recovery_links_and_codes_are_issued() {
    let t = setup("kc-recovery").await;
    let kratos = client(&t);
    let created = kratos
        .create_identity(&customer(&t.email("recover")))
        .await
        .expect("create");
    let return_to = kratos_operator_testenv::kratos::ALLOWED_RETURN_URL;

    let link = kratos
        .create_recovery_link(
            &CreateRecoveryLinkBody {
                identity_id: created.id.clone(),
                expires_in: Some(Duration::from_secs(600)),
            },
            Some(return_to),
        )
        .await
        .expect("link");
    let url = Url::parse(link.recovery_link.expose_secret()).expect("link is a URL");
    assert!(
        link.recovery_link
            .expose_secret()
            .starts_with(&t.kratos_public_url),
        "{}",
        url.path()
    );
    assert_eq!(url.path(), "/self-service/recovery");
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "token" && !v.is_empty())
    );
    let left = link.expires_at.duration_since(jiff::Timestamp::now());
    assert!(
        left > jiff::SignedDuration::from_secs(500) && left <= jiff::SignedDuration::from_secs(600),
        "{left:?}"
    );

    let code = kratos
        .create_recovery_code(&CreateRecoveryCodeBody {
            identity_id: created.id.clone(),
            expires_in: None,
            flow_type: Some(RecoveryFlowType::Browser),
        })
        .await
        .expect("code");
    let digits = code.recovery_code.expose_secret();
    assert!(
        digits.len() == 6 && digits.chars().all(|c| c.is_ascii_digit()),
        "a 6-digit code"
    );
    assert!(code.recovery_link.expose_secret().contains("flow="));
    assert!(!code.recovery_link.expose_secret().contains(digits));

    let unknown = "7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1";
    let err = kratos
        .create_recovery_link(
            &CreateRecoveryLinkBody {
                identity_id: unknown.into(),
                expires_in: None,
            },
            None,
        )
        .await
        .expect_err("unknown identity");
    assert!(
        matches!(&err, Error::Invalid { reason, .. } if reason.contains("does not exist")),
        "{err:?}"
    );
    let err = kratos
        .create_recovery_code(&CreateRecoveryCodeBody {
            identity_id: unknown.into(),
            expires_in: None,
            flow_type: None,
        })
        .await
        .expect_err("unknown identity");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let err = kratos
        .create_recovery_link(
            &CreateRecoveryLinkBody {
                identity_id: created.id.clone(),
                expires_in: None,
            },
            Some("https://evil.example/"),
        )
        .await
        .expect_err("return_to not allowed");
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");

    kratos.delete_identity(&created.id).await.expect("delete");
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// secrets

#[tokio::test]
async fn secrets_never_reach_debug_output_or_logs() {
    // The process-wide subscriber (a scoped one misses events of callsites that other test
    // threads registered first); it also receives `log` records (reqwest) at TRACE.
    let logs = support::logs::capture();

    let t = setup("kc-secrets").await;
    let dir = std::env::temp_dir().join(format!("{}-token", t.namespace));
    std::fs::create_dir_all(&dir).expect("dir");
    let token_file = dir.join("token");
    let token = format!("ory_pat_{}_TOKENSECRET", t.namespace);
    std::fs::write(&token_file, &token).expect("token");
    let kratos = KratosClient::new(ClientConfig {
        token_file: Some(token_file),
        ..config(&t.kratos_admin_url)
    })
    .expect("client");

    let password = format!("pw-{}-NEVER-LOGGED", t.namespace);
    let address = t.email("secret");
    let body = with_password(&address, &password);
    let debug = format!(
        "{body:?} {body:#?} {:?}",
        BatchPatchItem::create(body.clone(), None)
    );
    assert!(
        !debug.contains(&password),
        "Debug of a request body shows the password"
    );
    assert!(debug.contains(&address), "the Debug output is real");

    let created = kratos.create_identity(&body).await.expect("create");
    let err = kratos.create_identity(&body).await.expect_err("conflict");
    let with_hash = kratos
        .get_identity(&created.id, &[CredentialType::Password])
        .await
        .expect("get");
    let hash = with_hash
        .credential(CredentialType::Password)
        .and_then(|c| c.hashed_password())
        .expect("hash");
    let batch = [BatchPatchItem::create(
        with_password(&t.email("secret2"), &password),
        None,
    )];
    let results = kratos.batch_patch_identities(&batch).await.expect("batch");
    let link_body = CreateRecoveryLinkBody {
        identity_id: created.id.clone(),
        expires_in: None,
    };
    let link = kratos
        .create_recovery_link(&link_body, None)
        .await
        .expect("link");
    let code_body = CreateRecoveryCodeBody {
        identity_id: created.id.clone(),
        expires_in: None,
        flow_type: None,
    };
    let code = kratos.create_recovery_code(&code_body).await.expect("code");
    let secrets = [
        password.clone(),
        hash.expose_secret().to_string(),
        link.recovery_link.expose_secret().to_string(),
        code.recovery_code.expose_secret().to_string(),
        token.clone(),
    ];
    let shown = format!(
        "{err:?} {err} {with_hash:?} {results:?} {link:?} {code:?} {kratos:?} {:?}",
        with_hash.credentials
    );
    let logged = logs.text();
    assert!(
        logged.contains("kratos_call") && logged.contains("create_recovery_link"),
        "logs were captured:\n{logged}"
    );
    assert!(
        logged.contains("status=201"),
        "request events were captured:\n{logged}"
    );
    for secret in &secrets {
        assert!(
            !shown.contains(secret.as_str()),
            "a secret reached Debug/Display output"
        );
        assert!(
            !logged.contains(secret.as_str()),
            "a secret reached the logs"
        );
    }

    for id in [Some(created.id), results[0].identity_id.clone()]
        .into_iter()
        .flatten()
    {
        kratos.delete_identity(&id).await.expect("delete");
    }
    std::fs::remove_dir_all(&dir).ok();
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// transport: CA bundle and token file

#[tokio::test]
async fn custom_ca_bundle_is_trusted() {
    let t = setup("kc-ca").await;
    // The environment's apiserver serves TLS from its own CA; it is no Kratos, so an HTTP answer
    // (403) proves the handshake, and the lack of the CA makes it fail.
    let ca = t
        .env
        .dir
        .join("pki")
        .join(kratos_operator_testenv::certs::files::CA_CERT);
    let trusted = KratosClient::new(ClientConfig {
        ca_file: Some(ca),
        ..config(&t.env.state.apiserver_url)
    })
    .expect("client");
    let err = trusted
        .get_identity("x", &[])
        .await
        .expect_err("not Kratos");
    assert!(
        matches!(err, Error::Unauthorized { status: 403, .. }),
        "{err:?}"
    );

    let untrusted = KratosClient::new(ClientConfig {
        retry: RetryPolicy::none(),
        ..config(&t.env.state.apiserver_url)
    })
    .expect("client");
    let err = untrusted
        .get_identity("x", &[])
        .await
        .expect_err("unknown CA");
    assert!(
        matches!(&err, Error::Unavailable { message } if message.to_lowercase().contains("certificate")),
        "{err:?}"
    );

    let bogus = std::env::temp_dir().join(format!("{}-bogus.pem", t.namespace));
    std::fs::write(&bogus, "not a certificate").expect("write");
    let err = KratosClient::new(ClientConfig {
        ca_file: Some(bogus.clone()),
        ..config(&t.kratos_admin_url)
    });
    assert!(matches!(err, Err(Error::Config(_))), "{err:?}");
    std::fs::remove_file(bogus).ok();
    t.cleanup().await;
}

#[tokio::test]
async fn bearer_token_is_sent_and_reread_when_the_file_changes() {
    let stub = Stub::start(vec![Canned::json(200, r#"{"version":"v1.3.1"}"#)]).await;
    let dir = std::env::temp_dir().join(format!("kc-token-{}-{}", std::process::id(), stub.port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "first-token\n").expect("write");
    let kratos = KratosClient::new(ClientConfig {
        token_file: Some(token_file.clone()),
        ..config(&stub.url)
    })
    .expect("client");
    assert!(!format!("{kratos:?}").contains("first-token"));
    kratos.server_version().await.expect("call 1");

    // Kubernetes rotates a mounted Secret by swapping the file.
    let next = dir.join("token.next");
    std::fs::write(&next, "second-token-rotated").expect("write");
    std::fs::rename(&next, &token_file).expect("swap");
    let fresh = KratosClient::new(ClientConfig {
        token_file: Some(PathBuf::from(&token_file)),
        ..config(&stub.url)
    })
    .expect("client");
    fresh.server_version().await.expect("call 2");
    // The long-lived client notices the change too.
    let _ = kratos.delete_identity("x").await;

    let auth: Vec<_> = stub
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default())
        .collect();
    assert_eq!(
        auth,
        vec![
            "Bearer first-token",
            "Bearer second-token-rotated",
            "Bearer second-token-rotated"
        ]
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------------
// faults, against a local stub server

const STUB_IDENTITY: &str = r#"{"id":"7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1","schema_id":"customer","schema_url":"","state":"active","traits":{"email":"stub@example.com"},"metadata_public":null,"created_at":"2024-10-01T10:00:00Z","updated_at":"2024-10-01T10:00:00Z"}"#;

fn fast_retries(url: &str) -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(5),
        },
        ..config(url)
    }
}

#[tokio::test]
async fn rate_limited_calls_wait_for_the_reset_and_succeed() {
    let stub = Stub::start(vec![
        Canned::json(
            429,
            r#"{"error":{"code":429,"status":"Too Many Requests","message":"slow down"}}"#,
        )
        .header("x-ratelimit-reset", "1"),
        Canned::json(200, STUB_IDENTITY),
    ])
    .await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    let started = Instant::now();
    let identity = kratos
        .get_identity("7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1", &[])
        .await
        .expect("retried");
    assert_eq!(identity.traits["email"], json!("stub@example.com"));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for the reset: {:?}",
        started.elapsed()
    );
    assert_eq!(stub.count(), 2);
    assert_eq!(kratos.metrics().retries("get_identity"), 1);
    assert_eq!(kratos.metrics().requests("get_identity"), 2);
    assert_eq!(kratos.metrics().outcomes("get_identity", "success"), 1);

    // A reset beyond what the client sleeps through is returned, with the wait.
    let stub = Stub::start(vec![
        Canned::json(429, "{}").header("x-ratelimit-reset", "120"),
    ])
    .await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    let err = kratos
        .get_identity("x", &[])
        .await
        .expect_err("rate limited");
    assert!(
        matches!(err, Error::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(120)),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(stub.count(), 1);
    assert_eq!(kratos.metrics().outcomes("get_identity", "rate_limited"), 1);

    // Retry-After works as well, and a 429 on a create is safe to retry: nothing was done.
    let stub = Stub::start(vec![
        Canned::json(429, "").header("retry-after", "0"),
        Canned::json(201, STUB_IDENTITY),
    ])
    .await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    kratos
        .create_identity(&customer("stub@example.com"))
        .await
        .expect("create after 429");
    assert_eq!(stub.count(), 2);
}

#[tokio::test]
async fn a_429_on_the_last_attempt_still_holds_back_the_next_caller() {
    // No retries left: the call fails with the 429, and the reset it announced still applies
    // to every caller (found by faults::rate_limits_and_outages_are_backed_off_and_converge:
    // requests sent before an announced reset by callers that started after such a failure).
    let limited = Canned::json(429, "{}").header("x-ratelimit-reset", "1");
    let stub = Stub::start(vec![limited.clone(), limited]).await;
    let kratos = KratosClient::new(ClientConfig {
        retry: RetryPolicy {
            max_retries: 0,
            ..fast_retries(&stub.url).retry
        },
        ..fast_retries(&stub.url)
    })
    .expect("client");
    kratos
        .get_identity("x", &[])
        .await
        .expect_err("rate limited, no retry");
    let second = Instant::now();
    kratos
        .get_identity("x", &[])
        .await
        .expect_err("rate limited again");
    assert!(
        second.elapsed() >= Duration::from_millis(900),
        "the second call waited for the announced reset: {:?}",
        second.elapsed()
    );
    assert_eq!(stub.count(), 2);
}

#[tokio::test]
async fn service_unavailable_is_retried_with_backoff_then_succeeds() {
    let unavailable = Canned::json(503, "<html>upstream unavailable</html>");
    let stub = Stub::start(vec![
        unavailable.clone(),
        unavailable.clone(),
        Canned::json(200, STUB_IDENTITY),
    ])
    .await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    kratos
        .get_identity("7b2e0ab4-5a2c-4f6b-9a55-0fa3f4b1f0a1", &[])
        .await
        .expect("third attempt");
    assert_eq!(stub.count(), 3);
    assert_eq!(kratos.metrics().retries("get_identity"), 2);

    // Retries run out: the last error is returned.
    let stub = Stub::start(vec![unavailable.clone()]).await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    let err = kratos
        .update_identity("x", &UpdateIdentityBody::default())
        .await
        .expect_err("always 503");
    assert!(
        matches!(&err, Error::Unavailable { message } if message.contains("503")),
        "{err:?}"
    );
    assert_eq!(stub.count(), 4, "1 + 3 retries");
    assert_eq!(
        stub.requests()[0].header("content-type").as_deref(),
        Some("application/json")
    );

    // A 5xx on a create is not retried: it may have been created.
    let stub = Stub::start(vec![unavailable.clone(), Canned::json(201, STUB_IDENTITY)]).await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    let err = kratos
        .create_identity(&customer("stub@example.com"))
        .await
        .expect_err("503 on create");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(stub.count(), 1);

    // The transient database conflict (400) is retried.
    let serialization = Canned::json(
        400,
        r#"{"error":{"code":400,"status":"Bad Request","message":"Unable to serialize access due to a concurrent update in another session"}}"#,
    );
    let stub = Stub::start(vec![serialization, Canned::json(200, STUB_IDENTITY)]).await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    kratos
        .patch_identity("x", &[JsonPatchOp::replace("/traits/age", json!(1))])
        .await
        .expect("retried");
    assert_eq!(stub.count(), 2);
}

#[tokio::test]
async fn responses_slower_than_the_timeout_are_unavailable() {
    let slow = Canned::json(200, STUB_IDENTITY).delay(Duration::from_secs(2));
    let stub = Stub::start(vec![slow]).await;
    let kratos = KratosClient::new(ClientConfig {
        request_timeout: Duration::from_millis(300),
        retry: RetryPolicy {
            max_retries: 1,
            ..fast_retries(&stub.url).retry
        },
        ..fast_retries(&stub.url)
    })
    .expect("client");
    let started = Instant::now();
    let err = kratos.get_identity("x", &[]).await.expect_err("timeout");
    assert!(
        matches!(&err, Error::Unavailable { message } if message.contains("timed out")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stub.count(), 2, "an idempotent call is retried once");
    assert_eq!(kratos.metrics().outcomes("get_identity", "unavailable"), 1);
}

#[tokio::test]
async fn a_create_that_times_out_is_not_retried() {
    let stub = Stub::start(vec![
        Canned::json(201, STUB_IDENTITY).delay(Duration::from_secs(2)),
    ])
    .await;
    let kratos = KratosClient::new(ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..fast_retries(&stub.url)
    })
    .expect("client");
    let err = kratos
        .create_identity(&customer("stub@example.com"))
        .await
        .expect_err("timeout");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let err = kratos
        .batch_patch_identities(&[BatchPatchItem::create(customer("stub@example.com"), None)])
        .await
        .expect_err("timeout");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let err = kratos
        .create_recovery_link(
            &CreateRecoveryLinkBody {
                identity_id: "x".into(),
                expires_in: None,
            },
            None,
        )
        .await
        .expect_err("timeout");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    // A negative check (no retry arrives late): a bounded observation window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stub.count(), 3, "one request per call");
    assert_eq!(kratos.metrics().retries("create_identity"), 0);
}

#[tokio::test]
async fn connect_failures_are_retried_even_for_creates() {
    // A port nobody listens on: the request never leaves, so retrying a create is safe.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let kratos =
        KratosClient::new(fast_retries(&format!("http://127.0.0.1:{port}"))).expect("client");
    let err = kratos
        .create_identity(&customer("stub@example.com"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, Error::Unavailable { message } if message.contains("connect")),
        "{err:?}"
    );
    assert_eq!(kratos.metrics().requests("create_identity"), 4);
    assert_eq!(
        kratos.metrics().outcomes("create_identity", "unavailable"),
        1
    );
}

#[tokio::test]
async fn malformed_json_is_unexpected_and_not_retried() {
    let stub = Stub::start(vec![Canned::json(200, r#"{"id": "x", "traits": {"#)]).await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    let err = kratos.get_identity("x", &[]).await.expect_err("malformed");
    assert!(
        matches!(&err, Error::Unexpected { status: 200, body_excerpt } if body_excerpt.contains("not the expected JSON")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(stub.count(), 1);

    // Bodies that may hold secrets are withheld from the error.
    let stub = Stub::start(vec![Canned::json(
        200,
        r#"{"recovery_link":"http://x/?token=LEAKED""#,
    )])
    .await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    let err = kratos
        .create_recovery_link(
            &CreateRecoveryLinkBody {
                identity_id: "x".into(),
                expires_in: None,
            },
            None,
        )
        .await
        .expect_err("malformed");
    assert!(matches!(err, Error::Unexpected { .. }), "{err:?}");
    assert!(!format!("{err:?}").contains("LEAKED"));

    // A status nobody expects.
    let stub = Stub::start(vec![Canned::json(418, "I'm a teapot")]).await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    let err = kratos.get_identity("x", &[]).await.expect_err("teapot");
    assert!(
        matches!(&err, Error::Unexpected { status: 418, body_excerpt } if body_excerpt == "I'm a teapot"),
        "{err:?}"
    );
    assert_eq!(err.reason_label(), "unexpected");
}

#[tokio::test]
async fn identity_session_lists_survive_kratos_repeating_pages() {
    // What Kratos v1.3.1 does past the last page of identity sessions: the same page again,
    // with another rel="next". The client keeps each session once and stops.
    let session = r#"[{"id":"5e0b1a52-0000-4000-8000-000000000001","active":true}]"#;
    let page = |offset: u32| {
        Canned::json(200, session).header(
            "link",
            &format!(
                "</admin/identities/x/sessions?page_size=1000&page_token=t{offset}>; rel=\"next\""
            ),
        )
    };
    let stub = Stub::start(vec![page(1), page(2), page(3)]).await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    let sessions = kratos
        .list_identity_sessions("x", Some(true))
        .await
        .expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(stub.count(), 2, "the second page brought nothing new");
    let paths: Vec<_> = stub.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec![
            "/admin/identities/x/sessions?page_size=1000&active=true",
            "/admin/identities/x/sessions?page_size=1000&active=true&page_token=t1",
        ]
    );

    // A keyset list whose next token repeats is an error, not an endless stream.
    let identities = format!("[{STUB_IDENTITY}]");
    let looping = Canned::json(200, &identities).header(
        "link",
        "</admin/identities?page_size=1&page_token=same>; rel=\"next\"",
    );
    let stub = Stub::start(vec![looping]).await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    let listed: Vec<_> = kratos
        .list_identities(ListIdentitiesParams::default())
        .collect::<Vec<_>>()
        .await;
    assert_eq!(
        listed.len(),
        2,
        "the first page, then the error: {listed:?}"
    );
    assert!(listed[0].is_ok(), "{listed:?}");
    assert!(
        matches!(listed[1], Err(Error::Unexpected { .. })),
        "{listed:?}"
    );
    assert_eq!(stub.count(), 2);
}

#[tokio::test]
async fn extend_session_accepts_204() {
    let stub = Stub::start(vec![Canned::json(204, "")]).await;
    let kratos = KratosClient::new(fast_retries(&stub.url)).expect("client");
    assert!(kratos.extend_session("x").await.expect("204").is_none());
    assert_eq!(stub.requests()[0].method, "PATCH");
    assert_eq!(stub.requests()[0].path, "/admin/sessions/x/extend");
}

#[tokio::test]
async fn in_flight_cap_and_rate_limit_are_shared_by_clones() {
    let stub = Stub::start(vec![
        Canned::json(200, STUB_IDENTITY).delay(Duration::from_millis(200)),
    ])
    .await;
    let kratos = KratosClient::new(ClientConfig {
        max_in_flight: 2,
        ..fast_retries(&stub.url)
    })
    .expect("client");
    let calls = (0..6).map(|_| {
        let clone = kratos.clone();
        async move { clone.get_identity("x", &[]).await }
    });
    let started = Instant::now();
    for result in futures::future::join_all(calls).await {
        result.expect("get");
    }
    assert_eq!(stub.peak(), 2, "at most two in flight");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );

    let stub = Stub::start(vec![Canned::json(200, STUB_IDENTITY)]).await;
    let kratos = KratosClient::new(ClientConfig {
        rate_limit_per_second: Some(10.0),
        rate_limit_burst: 1,
        ..fast_retries(&stub.url)
    })
    .expect("client");
    let started = Instant::now();
    let calls = (0..6).map(|_| {
        let clone = kratos.clone();
        async move { clone.get_identity("x", &[]).await }
    });
    for result in futures::future::join_all(calls).await {
        result.expect("get");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(480),
        "6 calls at 10/s: {:?}",
        started.elapsed()
    );
    assert_eq!(kratos.metrics().calls("get_identity"), 6);
}

// ---------------------------------------------------------------------------------------------
// the stub server

/// A canned raw HTTP response.
#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
}

impl Canned {
    fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} Stub\r\nconnection: close\r\n", self.status);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.status != 204 {
            out.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
        out.into_bytes()
    }
}

/// A request the stub received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Received {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// A one-connection-per-request HTTP server that answers the n-th request with the n-th canned
/// response (the last one repeats), counting requests and the peak of concurrent ones.
struct Stub {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    peak: Arc<AtomicUsize>,
}

impl Stub {
    async fn start(responses: Vec<Canned>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(AtomicUsize::new(0));
        let responses = Arc::new(responses);
        let (seen, top) = (received.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (seen, top, current, responses) = (
                    seen.clone(),
                    top.clone(),
                    current.clone(),
                    responses.clone(),
                );
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    let index = {
                        let mut seen = seen.lock().expect("requests");
                        seen.push(request);
                        seen.len() - 1
                    };
                    let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                    top.fetch_max(now, Ordering::SeqCst);
                    let canned = &responses[index.min(responses.len() - 1)];
                    tokio::time::sleep(canned.delay).await;
                    let _ = socket.write_all(&canned.to_bytes()).await;
                    let _ = socket.shutdown().await;
                    current.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            url,
            received,
            peak,
        }
    }

    fn port(&self) -> u16 {
        Url::parse(&self.url)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or(0)
    }

    fn count(&self) -> usize {
        self.received.lock().expect("requests").len()
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("requests").clone()
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        method,
        path,
        headers,
    })
}

// ---------------------------------------------------------------------------------------------
// redirects and the response size cap, against local stub servers

/// A token file of its own for a test (removed by the caller with its directory).
fn token_file(name: &str, token: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("kc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("token");
    std::fs::write(&file, token).expect("write token");
    (dir, file)
}

/// Whether `err` is the refusal of a redirect answered with `status`.
fn is_refused_redirect(err: &Error, status: u16) -> bool {
    matches!(err, Error::Unexpected { status: s, body_excerpt } if *s == status && body_excerpt.contains("redirect") && body_excerpt.contains("refused"))
}

#[tokio::test]
async fn requests_with_a_body_never_follow_redirects() {
    const PASSWORD: &str = "cleartext-Secret-1";
    for status in [307, 308, 302] {
        let target = Stub::start(vec![Canned::json(201, STUB_IDENTITY)]).await;
        let origin = Stub::start(vec![
            Canned::json(status, "")
                .header("location", &format!("{}/admin/identities", target.url)),
        ])
        .await;
        let kratos = KratosClient::new(fast_retries(&origin.url)).expect("client");
        let err = kratos
            .create_identity(&with_password("stub@example.com", PASSWORD))
            .await
            .expect_err("a redirected create fails");
        assert!(is_refused_redirect(&err, status), "{status}: {err:?}");
        assert!(!err.is_transient(), "not retried hot");
        assert!(!format!("{err:?}").contains(PASSWORD));
        assert_eq!(origin.count(), 1, "{status}: not retried");
        assert_eq!(target.count(), 0, "{status}: the body went nowhere else");
    }

    for status in [307, 308] {
        let target = Stub::start(vec![Canned::json(200, STUB_IDENTITY)]).await;
        let location = format!("{}/admin/identities/x", target.url);
        let origin =
            Stub::start(vec![Canned::json(status, "").header("location", &location)]).await;
        let kratos = KratosClient::new(fast_retries(&origin.url)).expect("client");
        let err = kratos
            .update_identity(
                "x",
                &UpdateIdentityBody {
                    schema_id: "customer".into(),
                    traits: json!({ "email": "stub@example.com" }),
                    credentials: Some(IdentityCredentialsImport::password(SecretString::from(
                        PASSWORD,
                    ))),
                    ..UpdateIdentityBody::default()
                },
            )
            .await
            .expect_err("a redirected update fails");
        assert!(is_refused_redirect(&err, status), "{status}: {err:?}");
        let err = kratos
            .patch_identity("x", &[JsonPatchOp::replace("/traits/age", json!(1))])
            .await
            .expect_err("a redirected patch fails");
        assert!(is_refused_redirect(&err, status), "{status}: {err:?}");
        let err = kratos
            .delete_identity("x")
            .await
            .expect_err("a redirected delete fails");
        assert!(is_refused_redirect(&err, status), "{status}: {err:?}");
        let err = kratos
            .create_recovery_code(&CreateRecoveryCodeBody {
                identity_id: "x".into(),
                expires_in: None,
                flow_type: None,
            })
            .await
            .expect_err("a redirected recovery request fails");
        assert!(is_refused_redirect(&err, status), "{status}: {err:?}");
        assert_eq!(origin.count(), 4, "{status}: one request per call");
        assert_eq!(target.count(), 0, "{status}: nothing was re-sent");
    }
}

#[tokio::test]
async fn gets_other_than_schemas_do_not_follow_redirects() {
    let target = Stub::start(vec![Canned::json(200, STUB_IDENTITY)]).await;
    let origin = Stub::start(vec![
        Canned::json(302, "").header("location", &format!("{}/admin/identities/x", target.url)),
    ])
    .await;
    let kratos = KratosClient::new(fast_retries(&origin.url)).expect("client");
    let err = kratos
        .get_identity("x", &[CredentialType::Password])
        .await
        .expect_err("a redirected get fails");
    assert!(is_refused_redirect(&err, 302), "{err:?}");
    assert!(!err.is_transient());
    let err = kratos
        .list_identities(ListIdentitiesParams::default())
        .try_collect::<Vec<_>>()
        .await
        .expect_err("a redirected list fails");
    assert!(is_refused_redirect(&err, 302), "{err:?}");
    assert_eq!(origin.count(), 2, "one request per call, no retries");
    assert_eq!(target.count(), 0, "no redirect was followed");
}

#[tokio::test]
async fn schema_redirects_to_another_origin_are_followed_without_the_token() {
    const TOKEN: &str = "schema-redirect-token";
    let (dir, token) = token_file("schema-redirect", TOKEN);
    for host in ["127.0.0.1", "localhost"] {
        let public = Stub::start(vec![Canned::json(200, r#"{"type":"object"}"#)]).await;
        let public_url = format!("http://{host}:{}", public.port());
        let admin = Stub::start(vec![
            Canned::json(302, "").header("location", &format!("{public_url}/schemas/customer")),
        ])
        .await;
        let kratos = KratosClient::new(ClientConfig {
            token_file: Some(token.clone()),
            ..fast_retries(&admin.url)
        })
        .expect("client");
        let schema = kratos
            .get_identity_schema("customer")
            .await
            .expect("schema through the redirect");
        assert_eq!(schema.json, json!({ "type": "object" }));
        let to_admin = admin.requests();
        assert_eq!(to_admin.len(), 1);
        assert_eq!(
            to_admin[0].header("authorization").as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "the admin origin gets the token"
        );
        let to_public = public.requests();
        assert_eq!(to_public.len(), 1, "{host}: the redirect was followed");
        assert_eq!(to_public[0].path, "/schemas/customer");
        assert_eq!(
            to_public[0].header("authorization"),
            None,
            "{host}: no token for another origin"
        );
    }

    // The list follows the redirect the same way.
    let public = Stub::start(vec![Canned::json(200, "[]")]).await;
    let admin = Stub::start(vec![
        Canned::json(302, "").header("location", &format!("{}/schemas", public.url)),
    ])
    .await;
    let kratos = KratosClient::new(ClientConfig {
        token_file: Some(token.clone()),
        ..fast_retries(&admin.url)
    })
    .expect("client");
    let listed: Vec<_> = kratos
        .list_identity_schemas()
        .try_collect()
        .await
        .expect("list through the redirect");
    assert!(listed.is_empty());
    assert_eq!(public.count(), 1);
    assert_eq!(public.requests()[0].header("authorization"), None);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn schema_redirects_are_bounded_and_keep_the_scheme() {
    // A redirect loop: five hops are followed, the sixth is refused, and nothing is retried.
    let looping = Stub::start(vec![
        Canned::json(302, "").header("location", "/schemas/customer"),
    ])
    .await;
    let kratos = KratosClient::new(fast_retries(&looping.url)).expect("client");
    let err = kratos
        .get_identity_schema("customer")
        .await
        .expect_err("endless redirects");
    assert!(is_refused_redirect(&err, 302), "{err:?}");
    assert!(err.to_string().contains("more than 5"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(looping.count(), 6, "the request and five redirects");

    // Same host and port, another scheme: reqwest would keep the Authorization header there, so
    // the redirect is refused before anything is sent to it.
    let (dir, token) = token_file("schema-scheme", "scheme-token");
    let stub = RawStub::start(
        |port| {
            format!(
                "HTTP/1.1 308 Stub\r\nconnection: close\r\nlocation: https://127.0.0.1:{port}/schemas/customer\r\ncontent-length: 0\r\n\r\n"
            )
            .into_bytes()
        },
        Duration::ZERO,
    )
    .await;
    let kratos = KratosClient::new(ClientConfig {
        token_file: Some(token),
        request_timeout: Duration::from_secs(2),
        ..fast_retries(&stub.url)
    })
    .expect("client");
    let err = kratos
        .get_identity_schema("customer")
        .await
        .expect_err("scheme change refused");
    assert!(is_refused_redirect(&err, 308), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(stub.count(), 1, "nothing followed, nothing retried");
    std::fs::remove_dir_all(&dir).ok();
}

/// A loopback port nobody listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The message of an [`Error::Unavailable`] (the test fails on any other error).
fn unavailable_message(err: &Error) -> &str {
    match err {
        Error::Unavailable { message } => message,
        other => panic!("not unavailable: {other:?}"),
    }
}

/// Seen live: with `kratos.publicUrl` empty, the admin port redirected the schema read to Kratos'
/// public base URL, which the operator could not reach, and the condition named neither. A
/// failure in transit names where the request went (the redirect target without its query, or
/// the base URL's host and port) and the setting that changes it.
#[tokio::test]
async fn transport_errors_name_where_the_request_went_and_the_setting() {
    let closed = closed_port();
    let no_retries = |url: &str| ClientConfig {
        retry: RetryPolicy::none(),
        connect_timeout: Duration::from_secs(2),
        ..config(url)
    };
    for status in [303, 307] {
        let admin = Stub::start(vec![Canned::json(status, "").header(
            "location",
            &format!("http://127.0.0.1:{closed}/schemas/customer?page_token=hidden-token"),
        )])
        .await;
        let kratos = KratosClient::new(no_retries(&admin.url)).expect("client");
        let err = kratos
            .get_identity_schema("customer")
            .await
            .expect_err("the redirect target is closed");
        let message = unavailable_message(&err);
        assert!(
            message.starts_with(&format!(
                "GET /schemas/customer could not connect to \
                 http://127.0.0.1:{closed}/schemas/customer (where the admin URL redirected it; \
                 set kratos.publicUrl in the chart or --kratos-public-url to a URL the operator \
                 can reach): "
            )),
            "{status}: {message}"
        );
        assert!(!message.contains("hidden-token"), "{message}");
        assert!(!message.contains('?'), "{message}");
        assert_eq!(admin.count(), 1, "{status}");
    }

    // A list's query (its page size and token) never shows, on the request or the redirect.
    let admin = Stub::start(vec![Canned::json(302, "").header(
        "location",
        &format!("http://localhost:{closed}/public/schemas?page_size=1&page_token=hidden"),
    )])
    .await;
    let kratos = KratosClient::new(no_retries(&admin.url)).expect("client");
    let err = kratos
        .list_identity_schemas()
        .try_collect::<Vec<_>>()
        .await
        .expect_err("the redirect target is closed");
    let message = unavailable_message(&err);
    assert!(
        message.starts_with(&format!(
            "GET /schemas could not connect to http://localhost:{closed}/public/schemas (where \
             the admin URL redirected it; set kratos.publicUrl"
        )),
        "{message}"
    );
    assert!(
        !message.contains("page_") && !message.contains("hidden"),
        "{message}"
    );

    // A redirect target that accepts the connection but never answers: the timeout names it too.
    let silent = Stub::start(vec![
        Canned::json(200, r#"{"type":"object"}"#).delay(Duration::from_secs(3)),
    ])
    .await;
    let admin = Stub::start(vec![
        Canned::json(307, "").header("location", &format!("{}/schemas/customer", silent.url)),
    ])
    .await;
    let kratos = KratosClient::new(ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..no_retries(&admin.url)
    })
    .expect("client");
    let err = kratos
        .get_identity_schema("customer")
        .await
        .expect_err("the redirect target is silent");
    let message = unavailable_message(&err);
    assert!(
        message.starts_with(&format!(
            "GET /schemas/customer timed out at {}/schemas/customer (where the admin URL \
             redirected it; set kratos.publicUrl",
            silent.url
        )),
        "{message}"
    );

    // No redirect: the admin URL's host and port, and its setting.
    let kratos =
        KratosClient::new(no_retries(&format!("http://127.0.0.1:{closed}"))).expect("client");
    let err = kratos.get_identity("x", &[]).await.expect_err("closed");
    let message = unavailable_message(&err);
    assert!(
        message.starts_with(&format!(
            "GET /admin/identities/x could not connect to 127.0.0.1:{closed} (the admin URL, set \
             by kratos.adminUrl in the chart or --kratos-admin-url): "
        )),
        "{message}"
    );
    assert!(message.contains("Connection refused"), "{message}");

    // A configured public URL: its host and port, and its setting.
    let admin = Stub::start(vec![Canned::json(200, "{}")]).await;
    let kratos = KratosClient::new(ClientConfig {
        public_url: Some(Url::parse(&format!("http://127.0.0.1:{closed}")).expect("url")),
        ..no_retries(&admin.url)
    })
    .expect("client");
    let err = kratos
        .get_identity_schema("customer")
        .await
        .expect_err("closed");
    let message = unavailable_message(&err);
    assert!(
        message.starts_with(&format!(
            "GET /schemas/customer could not connect to 127.0.0.1:{closed} (the public URL, set \
             by kratos.publicUrl in the chart or --kratos-public-url): "
        )),
        "{message}"
    );
    assert_eq!(admin.count(), 0, "the admin URL is not asked for schemas");
}

/// Whether `err` is the refusal of a body larger than a cap of `cap` bytes, without the body.
fn assert_cap_error(err: &Error, cap: usize) {
    assert!(
        matches!(err, Error::Unexpected { body_excerpt, .. } if body_excerpt.contains(&format!("{cap} bytes")) && body_excerpt.contains("max_response_bytes")),
        "{err:?}"
    );
    assert!(!err.is_transient(), "not retried hot");
    assert!(!format!("{err:?}").contains("PAD"), "no body in the error");
}

#[tokio::test]
async fn responses_larger_than_the_cap_are_refused() {
    const CAP: usize = 1024;
    let padding = "PAD".repeat(1200);
    let big_identity = STUB_IDENTITY.replacen(
        r#""email":"stub@example.com""#,
        &format!(r#""email":"stub@example.com","pad":"{padding}""#),
        1,
    );
    assert!(big_identity.len() > CAP);
    let capped = |url: &str| ClientConfig {
        max_response_bytes: CAP,
        request_timeout: Duration::from_secs(3),
        ..fast_retries(url)
    };

    // Announced by Content-Length: single objects, pages and schemas alike.
    let stub = Stub::start(vec![Canned::json(200, &big_identity)]).await;
    let kratos = KratosClient::new(capped(&stub.url)).expect("client");
    let err = kratos.get_identity("x", &[]).await.expect_err("too large");
    assert_cap_error(&err, CAP);
    let err = kratos
        .list_identities_page(&ListIdentitiesParams::default())
        .await
        .expect_err("page too large");
    assert_cap_error(&err, CAP);
    let err = kratos
        .get_identity_schema("customer")
        .await
        .expect_err("schema too large");
    assert_cap_error(&err, CAP);
    assert_eq!(stub.count(), 3, "nothing retried");
    assert_eq!(kratos.metrics().outcomes("get_identity", "unexpected"), 1);

    // A Content-Length beyond the cap is refused before the body arrives: this stub announces a
    // gigabyte, sends a few bytes and holds the connection open.
    let stub = RawStub::start(
        |_| {
            b"HTTP/1.1 200 Stub\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n{\"id\":"
                .to_vec()
        },
        Duration::from_secs(5),
    )
    .await;
    let kratos = KratosClient::new(capped(&stub.url)).expect("client");
    let started = Instant::now();
    let err = kratos.get_identity("x", &[]).await.expect_err("too large");
    assert_cap_error(&err, CAP);
    assert!(err.to_string().contains("1000000000"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused without waiting for the body: {:?}",
        started.elapsed()
    );
    assert_eq!(stub.count(), 1);

    // Chunked, without Content-Length: reading stops at the cap.
    let body = chunked(&big_identity, 200);
    let stub = RawStub::start(
        move |_| {
            format!("HTTP/1.1 200 Stub\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{body}")
                .into_bytes()
        },
        Duration::ZERO,
    )
    .await;
    let kratos = KratosClient::new(capped(&stub.url)).expect("client");
    let err = kratos.get_identity("x", &[]).await.expect_err("too large");
    assert_cap_error(&err, CAP);
    let err = kratos
        .update_identity("x", &UpdateIdentityBody::default())
        .await
        .expect_err("too large");
    assert_cap_error(&err, CAP);
    assert_eq!(stub.count(), 2, "nothing retried");

    // Bodies within the cap, chunked or not, are read as before.
    let body = chunked(STUB_IDENTITY, 64);
    let stub = RawStub::start(
        move |_| {
            format!("HTTP/1.1 200 Stub\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{body}")
                .into_bytes()
        },
        Duration::ZERO,
    )
    .await;
    let kratos = KratosClient::new(capped(&stub.url)).expect("client");
    kratos.get_identity("x", &[]).await.expect("chunked, small");
    let stub = Stub::start(vec![Canned::json(200, STUB_IDENTITY)]).await;
    let kratos = KratosClient::new(capped(&stub.url)).expect("client");
    kratos.get_identity("x", &[]).await.expect("small");
}

/// `body` in the chunked transfer coding, in chunks of `size` bytes.
fn chunked(body: &str, size: usize) -> String {
    let mut out = String::new();
    for chunk in body.as_bytes().chunks(size) {
        out.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    out.push_str("0\r\n\r\n");
    out
}

/// A stub that answers every request with the same raw bytes, built from its own port (for what
/// [`Canned`] cannot write: chunked bodies, a Content-Length that lies, a redirect to itself),
/// and holds each connection open for `hold` before closing it.
struct RawStub {
    url: String,
    count: Arc<AtomicUsize>,
}

impl RawStub {
    async fn start(response: impl FnOnce(u16) -> Vec<u8>, hold: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr");
        let response = Arc::new(response(address.port()));
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (seen, response) = (seen.clone(), response.clone());
                tokio::spawn(async move {
                    if read_request(&mut socket).await.is_none() {
                        return;
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.write_all(&response).await;
                    tokio::time::sleep(hold).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            url: format!("http://{address}"),
            count,
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}
