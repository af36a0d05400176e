//! The whole environment: etcd, kube-apiserver, kube-controller-manager, Kratos and the OCI
//! registry ([`crate::registry`]), started on
//! free loopback ports and described by a state file so that `down`, `status` and test
//! fixtures in other processes find it.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    Error, Result, build,
    certs::{self, files},
    io_err,
    kratos::{Database, KratosInstance, KratosOptions},
    node::{self, NodeState},
    process::{self, ProcessRecord},
    registry, versions,
};

const STATE_FILE: &str = "state.json";

/// The processes that make up the environment itself.
const CORE: [&str; 6] = [
    registry::PROCESS,
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "postgres",
    "kratos",
];

/// What a running environment looks like from outside; written to `<dir>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// kubeconfig with the admin user.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub apiserver_url: String,
    /// Kratos admin API.
    pub kratos_admin_url: String,
    /// Kratos public API.
    pub kratos_public_url: String,
    /// The OCI registry, `127.0.0.1:<port>` (plain HTTP): the node pulls every image from it.
    /// Empty in the state of an environment from before it had one (which is then restarted).
    #[serde(default)]
    pub registry: String,
    /// Kratos' working directory (config, schemas, log, and its database: `postgres/` or
    /// `kratos.sqlite`).
    pub kratos_dir: PathBuf,
    /// Where Kratos keeps its data.
    #[serde(default = "sqlite_before_postgres")]
    pub kratos_database: Database,
    /// Kubernetes version served.
    pub kubernetes_version: String,
    /// Kratos version served.
    pub kratos_version: String,
    /// The processes, in start order.
    pub processes: Vec<ProcessRecord>,
    /// The node, once [`Environment::ensure_node`] started it.
    #[serde(default)]
    pub node: Option<NodeState>,
    /// Flux and the Git server, once [`Environment::ensure_flux`] started them.
    #[serde(default)]
    pub flux: Option<crate::flux::FluxState>,
}

impl State {
    /// The build of the Kubernetes release this environment runs (its kubectl, kubelet and
    /// scheduler match its API server).
    pub fn kubernetes(&self) -> Result<build::Component> {
        build::kubernetes(&self.kubernetes_version)
    }
}

/// State files written before PostgreSQL came describe a Kratos on sqlite.
fn sqlite_before_postgres() -> Database {
    Database::Sqlite
}

/// A running environment.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Its directory.
    pub dir: PathBuf,
    /// Its state.
    pub state: State,
}

/// The default directory of the shared environment: `$KRATOS_OPERATOR_TESTENV`, else
/// `<repo>/target/testenv/default`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("KRATOS_OPERATOR_TESTENV").map_or_else(
        || {
            crate::repo_root()
                .join("target")
                .join("testenv")
                .join("default")
        },
        PathBuf::from,
    )
}

fn lock(dir: &Path) -> Result<File> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let file = File::create(dir.join(".lock")).map_err(io_err("creating lock file"))?;
    file.lock()
        .map_err(io_err("locking the environment directory"))?;
    Ok(file)
}

impl Environment {
    /// Reads the state of the environment in `dir` if one is running and healthy.
    pub fn attach(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(STATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
        let state: State = serde_json::from_str(&text).map_err(|e| Error::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let env = Self {
            dir: dir.to_path_buf(),
            state,
        };
        Ok(env.is_healthy().then_some(env))
    }

    /// Whether every process runs and the apiserver and Kratos answer.
    pub fn is_healthy(&self) -> bool {
        // Extra processes (an operator started by the demo) may come and go.
        if !self
            .state
            .processes
            .iter()
            .filter(|p| CORE.contains(&p.name.as_str()))
            .all(ProcessRecord::is_running)
            || self.state.registry.is_empty()
        {
            return false;
        }
        let ca = fs::read(self.dir.join("pki").join(files::CA_CERT)).unwrap_or_default();
        let kube = process::http_agent(Some(&ca));
        let plain = process::http_agent(None);
        process::http_ok(&kube, &format!("{}/readyz", self.state.apiserver_url))
            && process::http_ok(
                &plain,
                &format!("{}/health/ready", self.state.kratos_admin_url),
            )
    }

    /// Starts an environment in `dir`, or returns the one already running there, with Kratos
    /// on the database `$KRATOS_OPERATOR_TESTENV_DATABASE` names (PostgreSQL when unset) and the
    /// Kubernetes release `$KRATOS_OPERATOR_TESTENV_KUBERNETES` names (the newest when unset).
    pub fn up(dir: &Path) -> Result<Self> {
        Self::up_with(dir, Database::from_env()?, build::kubernetes_from_env()?)
    }

    /// [`Environment::up`] with Kratos on `database` and the control plane of `kubernetes`. An
    /// environment already running in `dir` is returned as it is, whatever its database and
    /// release ([`State::kratos_database`] and [`State::kubernetes_version`] say which).
    pub fn up_with(dir: &Path, database: Database, kubernetes: build::Component) -> Result<Self> {
        let _lock = lock(dir)?;
        if let Some(env) = Self::attach(dir)? {
            return Ok(env);
        }
        stop_recorded(dir);
        Self::start(dir, database, kubernetes)
    }

    fn start(dir: &Path, database: Database, kubernetes: build::Component) -> Result<Self> {
        // Fail before starting anything when a binary is missing.
        let apiserver_bin = kubernetes.binary("kube-apiserver")?;
        let kcm_bin = kubernetes.binary("kube-controller-manager")?;
        let etcd_bin = kubernetes.binary("etcd")?;
        build::KRATOS.binary("kratos")?;
        build::REGISTRY.binary("registry")?;

        for sub in ["pki", "logs", "kratos"] {
            let path = dir.join(sub);
            if path.exists() {
                fs::remove_dir_all(&path)
                    .map_err(io_err(format!("removing {}", path.display())))?;
            }
        }
        let pki = dir.join("pki");
        let logs = dir.join("logs");
        fs::create_dir_all(&logs).map_err(io_err("creating logs dir"))?;
        // The serving certificate also names the `kubernetes` Service address pods use, should a
        // node start; the Service range is the environment's own (see crate::node).
        let (_, net) = node::addresses(dir);
        certs::generate(&pki, &[net.apiserver_service_ip, net.host_ip])?;

        let mut processes = Vec::new();
        let result = Self::start_processes(
            dir,
            &pki,
            &logs,
            &apiserver_bin,
            &kcm_bin,
            &etcd_bin,
            database,
            kubernetes.version,
            &mut processes,
        );
        match result {
            Ok(state) => {
                let env = Self {
                    dir: dir.to_path_buf(),
                    state,
                };
                env.write_state()?;
                Ok(env)
            }
            Err(e) => {
                for p in processes.iter().rev() {
                    p.stop(Duration::from_secs(5));
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_processes(
        dir: &Path,
        pki: &Path,
        logs: &Path,
        apiserver_bin: &Path,
        kcm_bin: &Path,
        etcd_bin: &Path,
        database: Database,
        kubernetes_version: &str,
        processes: &mut Vec<ProcessRecord>,
    ) -> Result<State> {
        let (_, net) = node::addresses(dir);
        let registry = registry::start(dir, logs, processes)?;
        // etcd: data on tmpfs when there is one (fsync-free and fast), else in the env dir.
        let etcd_data = etcd_data_dir(dir);
        if etcd_data.exists() {
            fs::remove_dir_all(&etcd_data).map_err(io_err("removing old etcd data"))?;
        }
        let etcd_port = process::free_port()?;
        let peer_port = process::free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let (mut etcd, rec) = process::spawn(
            "etcd",
            etcd_bin,
            &[
                "--name=testenv".into(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testenv={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--listen-metrics-urls=".into(),
                "--log-level=warn".into(),
            ],
            &[],
            &logs.join("etcd.log"),
        )?;
        processes.push(rec.clone());
        let plain = process::http_agent(None);
        process::wait_ready(&rec, Some(&mut etcd), Duration::from_secs(30), || {
            process::http_ok(&plain, &format!("{etcd_url}/health"))
        })?;

        let api_port = process::free_port()?;
        let apiserver_url = format!("https://127.0.0.1:{api_port}");
        let p = |f: &str| pki.join(f).display().to_string();
        let (mut apiserver, rec) = process::spawn(
            "kube-apiserver",
            apiserver_bin,
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", p(files::SERVING_CERT)),
                format!("--tls-private-key-file={}", p(files::SERVING_KEY)),
                format!("--client-ca-file={}", p(files::CA_CERT)),
                format!("--service-account-issuer={apiserver_url}"),
                format!("--service-account-key-file={}", p(files::SA_PUB)),
                format!("--service-account-signing-key-file={}", p(files::SA_KEY)),
                format!(
                    "--service-cluster-ip-range={}",
                    node::cidr(net.service_range)
                ),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                "--endpoint-reconciler-type=none".into(),
                // Logs and exec reach the node's kubelet at its address on the bridge, with the
                // admin certificate; never through a DNS lookup of the node's name.
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--kubelet-client-certificate={}", p(files::ADMIN_CERT)),
                format!("--kubelet-client-key={}", p(files::ADMIN_KEY)),
                "--profiling=false".into(),
                format!("--cert-dir={}", pki.display()),
            ],
            &[],
            &logs.join("kube-apiserver.log"),
        )?;
        processes.push(rec.clone());
        let ca = fs::read(pki.join(files::CA_CERT)).map_err(io_err("reading CA"))?;
        let kube = process::http_agent(Some(&ca));
        process::wait_ready(&rec, Some(&mut apiserver), Duration::from_secs(120), || {
            process::http_ok(&kube, &format!("{apiserver_url}/readyz"))
        })?;

        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &apiserver_url, pki)?;

        let (mut kcm, rec) = process::spawn(
            "kube-controller-manager",
            kcm_bin,
            &[
                format!("--kubeconfig={}", kubeconfig.display()),
                // What the node's workloads need besides garbage collection and namespace
                // deletion: default ServiceAccounts and the CA ConfigMap (every pod mounts a
                // token and the CA), Deployments, ReplicaSets and PodDisruptionBudgets, and the
                // node lifecycle (it lifts the not-ready taint a new node registers with), and
                // the EndpointSlices of Services with selectors (kube-proxy and CoreDNS read them).
                "--controllers=garbage-collector-controller,namespace-controller,\
                 serviceaccount-controller,root-ca-certificate-publisher-controller,\
                 deployment-controller,replicaset-controller,disruption-controller,\
                 node-lifecycle-controller,endpointslice-controller"
                    .into(),
                format!("--root-ca-file={}", p(files::CA_CERT)),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=false".into(),
                "--secure-port=0".into(),
                "--concurrent-gc-syncs=5".into(),
            ],
            &[],
            &logs.join("kube-controller-manager.log"),
        )?;
        processes.push(rec.clone());
        // The controller manager serves nothing; give it a moment and make sure it stays up.
        process::wait_alive(&rec, &mut kcm)?;

        let options = KratosOptions {
            database,
            ..KratosOptions::default()
        };
        let kratos = KratosInstance::start(&dir.join("kratos"), &options)?;
        let kratos_admin_url = kratos.admin_url();
        let kratos_public_url = kratos.public_url();
        processes.extend(kratos.detach());

        Ok(State {
            kubeconfig,
            apiserver_url,
            kratos_admin_url,
            kratos_public_url,
            registry,
            kratos_dir: dir.join("kratos"),
            kratos_database: database,
            kubernetes_version: kubernetes_version.into(),
            kratos_version: versions::KRATOS.into(),
            processes: processes.clone(),
            node: None,
            flux: None,
        })
    }

    fn write_state(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(&self.state).map_err(|e| Error::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))
    }

    /// Starts another process that belongs to this environment (stopped by [`down`] with the
    /// rest), unless one with this name already runs. Its output goes to `logs/<name>.log`.
    pub fn start_process(
        &mut self,
        name: &str,
        binary: &Path,
        args: &[String],
        envs: &[(&str, String)],
    ) -> Result<bool> {
        if self
            .state
            .processes
            .iter()
            .any(|p| p.name == name && p.is_running())
        {
            return Ok(false);
        }
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let (_child, record) = process::spawn(name, binary, args, envs, &log)?;
        self.state.processes.retain(|p| p.name != name);
        self.state.processes.push(record);
        self.write_state()?;
        Ok(true)
    }

    /// Restarts the environment's kube-apiserver, as a crash and restart of the control plane
    /// would: SIGTERM (SIGKILL after `grace`), then the same binary with the same command line
    /// (read from `/proc/<pid>/cmdline`, so the same port, certificates and etcd), its output
    /// appended to the same log. Returns once `/readyz` answers again; the state file records
    /// the new pid. Clients reconnect to the same URL. Meant for fault-injection tests on a
    /// private environment ([`Environment::up`] in a directory of the test's own), never on the
    /// shared one.
    pub fn restart_apiserver(&mut self, grace: Duration) -> Result<()> {
        const NAME: &str = "kube-apiserver";
        let Some(record) = self
            .state
            .processes
            .iter()
            .find(|p| p.name == NAME && p.is_running())
            .cloned()
        else {
            return Err(Error::NotReady {
                component: NAME.into(),
                message: "it is not running, so it cannot be restarted".into(),
                log: self.dir.join("logs").join("kube-apiserver.log"),
                log_tail: String::new(),
            });
        };
        let cmdline = fs::read(format!("/proc/{}/cmdline", record.pid))
            .map_err(io_err("reading the kube-apiserver command line"))?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .skip(1)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        record.stop(grace);
        let (mut child, new) = process::spawn(NAME, &record.binary, &args, &[], &record.log)?;
        let ca =
            fs::read(self.dir.join("pki").join(files::CA_CERT)).map_err(io_err("reading CA"))?;
        let kube = process::http_agent(Some(&ca));
        let url = format!("{}/readyz", self.state.apiserver_url);
        process::wait_ready(&new, Some(&mut child), Duration::from_secs(120), || {
            process::http_ok(&kube, &url)
        })?;
        for p in &mut self.state.processes {
            if p.name == NAME {
                *p = new.clone();
            }
        }
        self.write_state()
    }

    /// The `export` lines a shell can `eval`; with a node, also where pods reach Kratos.
    pub fn env_lines(&self) -> String {
        let mut lines = format!(
            "export KUBECONFIG={}\nexport KRATOS_ADMIN_URL={}\nexport KRATOS_PUBLIC_URL={}\nexport REGISTRY={}\n",
            self.state.kubeconfig.display(),
            self.state.kratos_admin_url,
            self.state.kratos_public_url,
            self.state.registry
        );
        if let Some(flux) = &self.state.flux {
            lines.push_str(&format!(
                "export GIT_URL={}\nexport GIT_URL_FROM_FLUX={}\n",
                flux.git_url, flux.git_url_from_flux
            ));
        }
        if let Some(node) = &self.state.node {
            lines.push_str(&format!(
                "export KRATOS_ADMIN_URL_FROM_PODS={}\nexport KRATOS_PUBLIC_URL_FROM_PODS={}\nexport CONTAINERD_ADDRESS={}\n",
                node.kratos_admin_url_from_pods,
                node.kratos_public_url_from_pods,
                node.containerd_socket.display()
            ));
        }
        lines
    }

    /// The environment running in `dir`, or an error saying how to start it.
    fn attach_running(dir: &Path) -> Result<Self> {
        Self::attach(dir)?.ok_or_else(|| Error::NotReady {
            component: "environment".into(),
            message: "it is not running; start it with `cargo xtask testenv up`".into(),
            log: dir.join("logs"),
            log_tail: String::new(),
        })
    }

    /// Whether a process of each of `names` runs.
    fn all_running(&self, names: &[&str]) -> bool {
        names.iter().all(|name| {
            self.state
                .processes
                .iter()
                .any(|p| p.name == *name && p.is_running())
        })
    }

    /// Starts the node of the environment in `dir` unless it runs (see [`crate::node`]), and
    /// returns the environment with it. The environment itself must run.
    pub fn ensure_node(dir: &Path) -> Result<Self> {
        let _lock = lock(dir)?;
        let mut env = Self::attach_running(dir)?;
        if env.state.node.is_some() && env.all_running(&node::PROCESSES) {
            return Ok(env);
        }
        env.stop_node();
        let port = |url: &str| -> Result<u16> {
            let port = url
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse().ok());
            port.ok_or_else(|| Error::State {
                path: dir.join(STATE_FILE),
                message: format!("no port in {url}"),
            })
        };
        // The in-cluster Kratos shares the host-side Kratos' PostgreSQL database.
        let postgres_port = crate::postgres::port_of(&env.state.kratos_dir.join("postgres"))
            .ok_or_else(|| {
                Error::Config(format!(
                    "the node runs Kratos in-cluster on the environment's PostgreSQL, and none \
                     runs (the environment's database is {}); start it with \
                     `cargo xtask testenv up --database postgres`",
                    env.state.kratos_database
                ))
            })?;
        let inputs = node::Inputs {
            dir,
            kubernetes: env.state.kubernetes()?,
            kubeconfig: &env.state.kubeconfig,
            apiserver_port: port(&env.state.apiserver_url)?,
            postgres_port,
            registry: &env.state.registry,
        };
        let mut started = Vec::new();
        let started_node = node::start(&inputs, &mut started).and_then(|mut state| {
            let (_, net) = node::addresses(dir);
            let kubectl = inputs.kubernetes.binary("kubectl")?;
            state.probe_image = crate::cluster::install(&crate::cluster::AddOns {
                kubectl: &kubectl,
                kubeconfig: inputs.kubeconfig,
                registry: inputs.registry,
                net: &net,
                work_dir: &dir.join("node").join("images"),
            })?;
            state.kratos_admin_url_from_pods = crate::cluster::KRATOS_ADMIN_URL.into();
            state.kratos_public_url_from_pods = crate::cluster::KRATOS_PUBLIC_URL.into();
            Ok(state)
        });
        match started_node {
            Ok(state) => {
                env.state.processes.extend(started);
                env.state.node = Some(state);
                env.write_state()?;
                Ok(env)
            }
            Err(e) => {
                env.state.processes.extend(started);
                env.stop_node();
                let _ = env.write_state();
                Err(e)
            }
        }
    }

    /// Starts Flux (a Git server, source-controller and kustomize-controller, see
    /// [`crate::flux`]) in the environment in `dir` unless it runs, and returns the environment
    /// with it. The environment itself must run.
    pub fn ensure_flux(dir: &Path) -> Result<Self> {
        let _lock = lock(dir)?;
        let mut env = Self::attach_running(dir)?;
        if env.state.flux.is_some() && env.all_running(&crate::flux::PROCESSES) {
            return Ok(env);
        }
        env.stop_flux();
        let kubectl = env.state.kubernetes()?.binary("kubectl")?;
        let mut started = Vec::new();
        let result = crate::flux::start(
            &crate::flux::Inputs {
                dir,
                kubectl: &kubectl,
                kubeconfig: &env.state.kubeconfig,
            },
            &mut started,
        );
        env.state.processes.extend(started);
        match result {
            Ok(state) => {
                env.state.flux = Some(state);
                env.write_state()?;
                Ok(env)
            }
            Err(e) => {
                env.stop_flux();
                let _ = env.write_state();
                Err(e)
            }
        }
    }

    /// Stops Flux's processes (its objects stay in the API server).
    fn stop_flux(&mut self) {
        for p in self.state.processes.iter().rev() {
            if crate::flux::PROCESSES.contains(&p.name.as_str()) && p.is_running() {
                p.stop(Duration::from_secs(10));
            }
        }
        self.state
            .processes
            .retain(|p| !crate::flux::PROCESSES.contains(&p.name.as_str()));
        self.state.flux = None;
    }

    /// Stops the node of the environment in `dir`, if it runs, and leaves the rest running: one
    /// node runs per machine (see [`crate::node`]), so another environment can start its own.
    pub fn stop_node_in(dir: &Path) -> Result<()> {
        let _lock = lock(dir)?;
        if let Some(mut env) = Self::attach(dir)?
            && env.state.node.is_some()
        {
            env.stop_node();
            env.write_state()?;
        }
        Ok(())
    }

    /// Stops the node's processes and removes what it left on the host.
    fn stop_node(&mut self) {
        stop_node_processes(&self.dir, &self.state);
        self.state
            .processes
            .retain(|p| !node::PROCESSES.contains(&p.name.as_str()));
        self.state.node = None;
    }
}

/// Stops exactly the processes recorded in `dir` (and nothing else), then removes the state file
/// and etcd's data. Returns the names of the processes that were running.
pub fn down(dir: &Path) -> Result<Vec<String>> {
    let _lock = lock(dir)?;
    Ok(stop_recorded(dir))
}

fn stop_recorded(dir: &Path) -> Vec<String> {
    let path = dir.join(STATE_FILE);
    let mut stopped = Vec::new();
    if let Some(state) = fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<State>(&t).ok())
    {
        stopped.extend(stop_node_processes(dir, &state));
        for p in state.processes.iter().rev() {
            if p.is_running() {
                p.stop(Duration::from_secs(10));
                stopped.push(p.name.clone());
            }
        }
    }
    let _ = fs::remove_file(&path);
    let _ = fs::remove_dir_all(etcd_data_dir(dir));
    stopped
}

/// Stops the kubelet and the scheduler, removes the containers (containerd still runs for
/// that), then stops containerd and the relays and removes the bridge.
fn stop_node_processes(dir: &Path, state: &State) -> Vec<String> {
    let mut stopped = Vec::new();
    let mut stop = |name: &str| {
        for p in state.processes.iter().filter(|p| p.name == name) {
            if p.is_running() {
                p.stop(Duration::from_secs(10));
                stopped.push(p.name.clone());
            }
        }
    };
    stop("kube-scheduler");
    stop("kubelet");
    node::cleanup(dir);
    for name in node::PROCESSES.iter().rev() {
        stop(name);
    }
    // Mounts and the bridge once containerd is gone, too.
    node::cleanup(dir);
    stopped
}

fn etcd_data_dir(dir: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(dir.display().to_string().as_bytes());
        let short: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        shm.join(format!("kratos-operator-etcd-{short}"))
    } else {
        dir.join("etcd-data")
    }
}

fn write_kubeconfig(path: &Path, server: &str, pki: &Path) -> Result<()> {
    let p = |f: &str| pki.join(f).display().to_string();
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "testenv", "cluster": { "server": server, "certificate-authority": p(files::CA_CERT) } }],
        "users": [{ "name": "admin", "user": { "client-certificate": p(files::ADMIN_CERT), "client-key": p(files::ADMIN_KEY) } }],
        "contexts": [{ "name": "testenv", "context": { "cluster": "testenv", "user": "admin", "namespace": "default" } }],
        "current-context": "testenv"
    });
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))
}

/// The environment shared by all tests of one test binary: attaches to the one running in
/// [`default_dir`] (for example after `cargo xtask testenv up`) or starts it there and leaves it
/// running for the next test binary. Fails with the command that builds missing binaries; it never
/// skips.
pub fn shared() -> Result<&'static Environment, String> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = default_dir();
        Environment::up(&dir).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(Clone::clone)
}
