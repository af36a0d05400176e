//! One run of the release binary over N waiting objects: (a1)/(a2), the idle resync, peak RSS.

use super::*;

#[derive(Default)]
pub(super) struct OperatorRun {
    pub(super) a1: f64,
    pub(super) a2: f64,
    pub(super) ready: usize,
    pub(super) rss_mib: f64,
    pub(super) idle: Option<(u64, u64, u64)>,
    pub(super) cpu: Vec<(&'static str, f64)>,
    pub(super) requests: Vec<(String, f64)>,
    pub(super) latencies: Option<Latencies>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn operator_run(
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

/// (d): the Kratos traffic of one idle resync: the window from the end of one sweep to the end
/// of the next.
pub(super) async fn idle_resync(url: &str, proxy: &Proxy) -> (u64, u64, u64) {
    // From the end of the first sweep after convergence to the end of the next one: exactly one
    // sweep, whatever their timing (the operator counts finished sweeps).
    let next_sweep = || async { until_sweeps(url, sweeps(&metrics(url)) + 1.0).await };
    let t0 = next_sweep().await;
    let ((r0, w0), b0) = (kratos_requests(&t0), proxy.bytes.load(Ordering::Relaxed));
    let t1 = next_sweep().await;
    let (r1, w1) = kratos_requests(&t1);
    (r1 - r0, w1 - w0, proxy.bytes.load(Ordering::Relaxed) - b0)
}
