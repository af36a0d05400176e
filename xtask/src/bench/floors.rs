//! The floors each scenario is measured against: Kratos creating N identities in batches
//! (no operator), and the API server taking N objects and their status writes.

use super::*;

/// Concurrency of the apiserver floor: the operator's default reconcile concurrency.
pub(super) const CONCURRENCY: usize = 128;

pub(super) fn kratos_client(admin: &str, public: &str) -> Result<KratosClient, String> {
    let mut c = ClientConfig::new(admin.parse().map_err(err)?);
    c.public_url = Some(public.parse().map_err(err)?);
    c.request_timeout = Duration::from_secs(120);
    KratosClient::new(c).map_err(err)
}

pub(super) fn body(i: usize, run: &str, password: bool) -> CreateIdentityBody {
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

pub(super) fn fresh_kratos(
    root: &Path,
    name: &str,
    database: Database,
) -> Result<KratosInstance, String> {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let options = KratosOptions {
        database,
        ..KratosOptions::default()
    };
    KratosInstance::start(&dir, &options).map_err(err)
}

/// (b): the same N identities imported directly through the batch endpoint, batch after batch.
pub(super) async fn kratos_floor(
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

pub(super) async fn namespace(client: &Client, name: &str) -> Result<(), String> {
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name } })).map_err(err)?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(err)?;
    Ok(())
}

pub(super) async fn create_objects(
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
pub(super) async fn apiserver_floor(client: &Client, n: usize, tag: &str) -> Result<f64, String> {
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
