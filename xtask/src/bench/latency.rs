//! What users feel with N objects Ready and idle: latencies (f), (g), restart (i), and drift
//! reverted by the default resync.

use super::*;

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
pub(super) fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How many samples (f) and (g) take.
pub(super) const LATENCY_SAMPLES: usize = 100;

/// Whether an Identity's `Ready` condition is `True` for its current generation.
pub(super) fn ready_now(obj: &Identity) -> bool {
    let generation = obj.metadata.generation;
    obj.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready" && c.status == "True" && c.observed_generation == generation
        })
    })
}

/// (f), (g) and (i), with the N objects of `ns` Ready and the operator `child` idle.
pub(super) async fn latencies(
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
pub(super) const DEFAULT_RESYNC: &str = "5m";

/// (h): changes made directly in Kratos, spread evenly over one default resync interval.
pub(super) const DRIFT_SAMPLES: usize = 60;

/// (h): once the operator (just started with the default resync interval) has settled, changes
/// one identity directly in Kratos every interval / [`DRIFT_SAMPLES`], then waits until the
/// operator has put every one back. Returns each change's time to its revert, and the drift
/// sweeps, Kratos requests and writes the operator made from the first change to the last revert.
pub(super) async fn drift(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
