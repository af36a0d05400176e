//! A node for the environment: containerd and runc (Debian's packages), a kubelet,
//! kube-scheduler and kube-proxy (built with the rest of Kubernetes), kube-router's
//! NetworkPolicy firewall, pods on a bridge of their own, and the cluster add-ons of
//! [`crate::cluster`] (the `kubernetes` Service's endpoint, CoreDNS, Kratos in-cluster).
//!
//! Networking stays on this machine. The environment creates a bridge with a /24 of its own
//! (derived from the environment's directory, so two environments never share one); pods get
//! their own network namespaces on it through the CNI `bridge` plugin with no default route and
//! no masquerading, so a pod reaches the bridge's subnet and nothing else. The Service range is
//! the upper half of the same /24, routed to the host, where kube-proxy (iptables mode) sends
//! each Service to its endpoints; CoreDNS answers for `cluster.local` behind `kube-dns` and has
//! no upstream. The API server and PostgreSQL listen on loopback only: `socat` relays on the
//! host's bridge address are the endpoints of the `kubernetes` and `postgres` Services, as a
//! control plane's address is in any cluster. Nothing else is relayed: pods reach Kratos through
//! its Services. kube-proxy and kube-router keep their chains in the host's tables under fixed
//! names, so one node runs per machine ([`start`] refuses a second). containerd pulls every
//! image from the environment's registry ([`crate::registry`], on loopback, plain HTTP through a
//! `hosts.toml` under its own `config_path`), the sandbox image included: it is assembled
//! locally ([`crate::image`]) and pushed there before the kubelet starts. Nothing is imported.
//!
//! What the kubelet needed here: the cgroupfs driver (cgroup v1 hierarchies, with a v2 one
//! mounted beside them; from Kubernetes 1.35 the kubelet refuses cgroup v1 unless
//! `failCgroupV1: false`), `cgroupsPerQOS: false` with no node-allocatable enforcement (so it
//! creates no cgroup hierarchy of its own), `failSwapOn: false`, an empty resolv.conf for pods
//! (no name server to leak queries to), and image garbage collection off (a collected image
//! could not be pulled again). Its eviction manager cannot read the filesystem of the virtual
//! disk and stays idle, which suits a test node.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    Error, Result, build,
    certs::files,
    io_err,
    process::{self, ProcessRecord},
};

/// The node's name.
pub const NODE_NAME: &str = "testenv-node";
/// The port of the `kubernetes` Service.
pub const APISERVER_PORT: u16 = 443;
/// The cluster's DNS domain (the kubelet's `clusterDomain`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The port of the API server's relay on the host's bridge address: the `kubernetes`
/// Service's endpoint.
pub const APISERVER_ENDPOINT_PORT: u16 = 6443;
/// The port of PostgreSQL's relay on the host's bridge address: the `postgres` Service's
/// endpoint.
pub const POSTGRES_ENDPOINT_PORT: u16 = 5432;

/// The `kube-dns` Service's address (pure): the tenth of the Service range, as kubeadm picks it.
pub fn dns_ip(net: &Addresses) -> Ipv4Addr {
    let [a, b, c, d] = net.service_range.0.octets();
    Ipv4Addr::new(a, b, c, d + 10)
}

/// The node's processes, in start order.
pub const PROCESSES: [&str; 7] = [
    "relay-apiserver",
    "relay-postgres",
    "containerd",
    "kubelet",
    "kube-proxy",
    "kube-router",
    "kube-scheduler",
];

/// The addresses of one environment's node network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The host's address on the bridge: the pods' gateway, where Kratos is relayed.
    pub host_ip: Ipv4Addr,
    /// The pods' subnet (the lower half of the /24).
    pub pod_subnet: (Ipv4Addr, u8),
    /// The Service range (the upper half), given to the API server.
    pub service_range: (Ipv4Addr, u8),
    /// The `kubernetes` Service's address: the first of the range, held by the host.
    pub apiserver_service_ip: Ipv4Addr,
}

/// A running node, as recorded in the environment's state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// The Node's name.
    pub name: String,
    /// The bridge interface the environment created.
    pub bridge: String,
    /// The host's address on the bridge (the pods' way to the API server and Kratos).
    pub host_ip: Ipv4Addr,
    /// The pods' subnet.
    pub subnet: String,
    /// containerd's socket (for `ctr` and image imports).
    pub containerd_socket: PathBuf,
    /// The API server as pods reach it.
    pub apiserver_url_from_pods: String,
    /// Kratos' admin API as pods reach it.
    pub kratos_admin_url_from_pods: String,
    /// Kratos' public API as pods reach it.
    pub kratos_public_url_from_pods: String,
    /// The probe's image by digest in the environment's registry (see `testenv/go/probe`).
    pub probe_image: String,
}

/// The bridge name and addresses of the environment in `dir` (pure): `kop` and six hex digits
/// of a hash of the directory, and the /24 `10.<200..249>.<0..255>.0`.
pub fn addresses(dir: &Path) -> (String, Addresses) {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(dir.display().to_string().as_bytes());
    let bridge = format!("kop{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2]);
    let (a, b) = (200 + digest[3] % 50, digest[4]);
    let addresses = Addresses {
        host_ip: Ipv4Addr::new(10, a, b, 1),
        pod_subnet: (Ipv4Addr::new(10, a, b, 0), 25),
        service_range: (Ipv4Addr::new(10, a, b, 128), 25),
        apiserver_service_ip: Ipv4Addr::new(10, a, b, 129),
    };
    (bridge, addresses)
}

/// `address/prefix`.
pub fn cidr((ip, prefix): (Ipv4Addr, u8)) -> String {
    format!("{ip}/{prefix}")
}

fn node_dir(dir: &Path) -> PathBuf {
    dir.join("node")
}

fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(io_err(format!("running {what}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Build {
            component: "node".into(),
            message: format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Where a host tool is, or an error naming the Debian package that provides it.
pub fn host_tool(name: &str, package: &str) -> Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    Err(Error::Build {
        component: "node".into(),
        message: format!("{name} is not installed; `apt-get install {package}` provides it"),
    })
}

/// What [`start`] needs of the environment.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The environment's directory.
    pub dir: &'a Path,
    /// The Kubernetes release of the environment (the node's kubelet and scheduler match it).
    pub kubernetes: build::Component,
    /// The admin kubeconfig.
    pub kubeconfig: &'a Path,
    /// The API server's loopback port.
    pub apiserver_port: u16,
    /// The loopback port of the PostgreSQL server the environment's Kratos uses.
    pub postgres_port: u16,
    /// The environment's registry, `127.0.0.1:<port>`.
    pub registry: &'a str,
}

/// Starts the node. The processes it starts are pushed onto `processes` as they start, so that
/// a failure half-way can be cleaned up by [`stop`].
pub fn start(input: &Inputs<'_>, processes: &mut Vec<ProcessRecord>) -> Result<NodeState> {
    let containerd_bin = host_tool("containerd", "containerd")?;
    let socat = host_tool("socat", "socat")?;
    host_tool("runc", "runc")?;
    host_tool("containerd-shim-runc-v2", "containerd")?;
    let cni_bin = Path::new("/usr/lib/cni");
    if !cni_bin.join("bridge").exists() {
        return Err(Error::Build {
            component: "node".into(),
            message: "the CNI plugins are not installed; `apt-get install containernetworking-plugins` provides them".into(),
        });
    }
    host_tool("iptables", "iptables")?;
    host_tool("ipset", "ipset")?;
    host_tool("conntrack", "conntrack")?;
    let kubelet_bin = input.kubernetes.binary("kubelet")?;
    let scheduler_bin = input.kubernetes.binary("kube-scheduler")?;
    let proxy_bin = input.kubernetes.binary("kube-proxy")?;
    let router_bin = build::KUBE_ROUTER.binary("kube-router")?;

    let dir = input.dir;
    let node = node_dir(dir);
    // A node left over by a crashed run: take it down first.
    cleanup(dir);
    // kube-proxy's and kube-router's chains have fixed names in the host's tables: two nodes
    // on one machine would rewrite each other's rules.
    if let Some(other) = other_node(dir) {
        return Err(Error::Build {
            component: "node".into(),
            message: format!(
                "another environment's node runs on this machine ({other}); its kube-proxy and \
                 kube-router own the host's KUBE-* chains. Stop it first: cargo xtask testenv \
                 down (with that environment's directory)"
            ),
        });
    }
    if node.exists() {
        fs::remove_dir_all(&node).map_err(io_err(format!("removing {}", node.display())))?;
    }
    let logs = dir.join("logs");
    for sub in ["cni/net.d", "kubelet", "pod-logs", "images"] {
        fs::create_dir_all(node.join(sub)).map_err(io_err("creating the node's directories"))?;
    }
    // What `cleanup` runs to remove their rules, even after a crash.
    fs::write(
        node.join(NETWORK_PROGRAMS),
        format!("{}\n{}\n", proxy_bin.display(), router_bin.display()),
    )
    .map_err(io_err("recording the node's network programs"))?;

    // The bridge, with the host's address: relays listen on it before any pod exists.
    let (bridge, net) = addresses(dir);
    let host_ip = net.host_ip;
    let subnet = cidr(net.pod_subnet);
    run(
        "ip link add (bridge)",
        Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]),
    )?;
    run(
        "ip addr add",
        Command::new("ip").args(["addr", "add", &format!("{host_ip}/25"), "dev", &bridge]),
    )?;
    run(
        "ip link set up",
        Command::new("ip").args(["link", "set", &bridge, "up"]),
    )?;

    let relay = |name: &str,
                 (ip, port): (Ipv4Addr, u16),
                 target: (Ipv4Addr, u16),
                 processes: &mut Vec<ProcessRecord>|
     -> Result<()> {
        let (mut child, rec) = process::spawn(
            name,
            &socat,
            &[
                format!("TCP-LISTEN:{port},bind={ip},reuseaddr,fork"),
                format!("TCP:{}:{}", target.0, target.1),
            ],
            &[],
            &logs.join(format!("{name}.log")),
        )?;
        processes.push(rec.clone());
        process::wait_ready(&rec, Some(&mut child), Duration::from_secs(10), || {
            std::net::TcpStream::connect((ip, port)).is_ok()
        })
    };
    // The endpoints of the `kubernetes` and `postgres` Services: the API server and PostgreSQL
    // listen on loopback only.
    relay(
        "relay-apiserver",
        (host_ip, APISERVER_ENDPOINT_PORT),
        (Ipv4Addr::LOCALHOST, input.apiserver_port),
        processes,
    )?;
    relay(
        "relay-postgres",
        (host_ip, POSTGRES_ENDPOINT_PORT),
        (Ipv4Addr::LOCALHOST, input.postgres_port),
        processes,
    )?;

    // containerd with its own root, state and socket.
    let socket = node.join("containerd.sock");
    // The sandbox image, in the registry before containerd asks for it.
    let pause = node.join("images").join("pause.oci.tar");
    crate::image::write_oci_archive(&crate::image::pause_spec()?, &pause)?;
    let sandbox = format!("{}/{}", input.registry, crate::image::PAUSE_IN_REGISTRY);
    let pause_digest = crate::registry::push_archive(&pause, &sandbox, true)?;
    let sandbox = format!("{sandbox}@{pause_digest}");
    let hosts = node.join("certs.d").join(input.registry);
    fs::create_dir_all(&hosts).map_err(io_err("creating containerd's registry hosts"))?;
    fs::write(
        hosts.join("hosts.toml"),
        crate::registry::hosts_toml(input.registry),
    )
    .map_err(io_err("writing containerd's hosts.toml"))?;
    let config = containerd_config(&node, &socket, &sandbox);
    let config_path = node.join("containerd.toml");
    fs::write(&config_path, config).map_err(io_err("writing containerd's config"))?;
    fs::write(
        node.join("cni/net.d/10-testenv.conflist"),
        cni_config(&bridge, &net, &node.join("cni/ipam")),
    )
    .map_err(io_err("writing the CNI config"))?;
    let (mut containerd, rec) = process::spawn(
        "containerd",
        &containerd_bin,
        &["--config".into(), config_path.display().to_string()],
        &[],
        &logs.join("containerd.log"),
    )?;
    processes.push(rec.clone());
    process::wait_ready(&rec, Some(&mut containerd), Duration::from_secs(30), || {
        Command::new("ctr")
            .args(["--address", &socket.display().to_string(), "version"])
            .output()
            .is_ok_and(|o| o.status.success())
    })?;

    // The kubelet.
    let resolv = node.join("resolv.conf");
    fs::write(&resolv, "").map_err(io_err("writing resolv.conf"))?;
    let healthz_port = process::free_port()?;
    let kubelet_port = process::free_port()?;
    let kubelet_config = node.join("kubelet.yaml");
    fs::write(
        &kubelet_config,
        kubelet_config_yaml(
            &dir.join("pki").join(files::CA_CERT),
            &socket,
            &node,
            &resolv,
            host_ip,
            kubelet_port,
            healthz_port,
            dns_ip(&net),
        ),
    )
    .map_err(io_err("writing the kubelet's config"))?;
    let (mut kubelet, rec) = process::spawn(
        "kubelet",
        &kubelet_bin,
        &[
            format!("--config={}", kubelet_config.display()),
            format!("--kubeconfig={}", input.kubeconfig.display()),
            format!("--root-dir={}", node.join("kubelet").display()),
            format!("--cert-dir={}", node.join("kubelet/pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={host_ip}"),
            "--v=1".into(),
        ],
        &[],
        &logs.join("kubelet.log"),
    )?;
    processes.push(rec.clone());
    let kubectl = input.kubernetes.binary("kubectl")?;
    let kubeconfig = input.kubeconfig.display().to_string();
    process::wait_ready(&rec, Some(&mut kubelet), Duration::from_secs(90), || {
        Command::new(&kubectl)
            .args([
                "--kubeconfig",
                &kubeconfig,
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .output()
            .is_ok_and(|o| o.stdout == b"True")
    })?;

    // kube-proxy routes the Services (iptables mode, on the bridge's address only) and
    // kube-router enforces NetworkPolicies (its firewall alone: no routing, no proxy).
    let proxy_health = process::free_port()?;
    let (mut proxy, rec) = process::spawn(
        "kube-proxy",
        &proxy_bin,
        &kube_proxy_args(&kubeconfig, &net, proxy_health, process::free_port()?),
        &[],
        &logs.join("kube-proxy.log"),
    )?;
    processes.push(rec.clone());
    let agent = process::http_agent(None);
    process::wait_ready(&rec, Some(&mut proxy), Duration::from_secs(60), || {
        process::http_ok(&agent, &format!("http://127.0.0.1:{proxy_health}/healthz"))
    })?;
    let router_health = process::free_port()?;
    let (mut router, rec) = process::spawn(
        "kube-router",
        &router_bin,
        &kube_router_args(&kubeconfig, &net, router_health),
        &[],
        &logs.join("kube-router.log"),
    )?;
    processes.push(rec.clone());
    process::wait_ready(&rec, Some(&mut router), Duration::from_secs(60), || {
        process::http_ok(&agent, &format!("http://127.0.0.1:{router_health}/healthz"))
    })?;

    let (mut scheduler, rec) = process::spawn(
        "kube-scheduler",
        &scheduler_bin,
        &[
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", process::free_port()?),
        ],
        &[],
        &logs.join("kube-scheduler.log"),
    )?;
    processes.push(rec.clone());
    process::wait_alive(&rec, &mut scheduler)?;

    Ok(NodeState {
        name: NODE_NAME.into(),
        bridge,
        host_ip,
        subnet,
        containerd_socket: socket,
        apiserver_url_from_pods: format!("https://{}:{APISERVER_PORT}", net.apiserver_service_ip),
        // Filled in by the cluster add-ons ([`crate::cluster::install`]), which run next.
        kratos_admin_url_from_pods: String::new(),
        kratos_public_url_from_pods: String::new(),
        probe_image: String::new(),
    })
}

/// The file in the node's directory that names the kube-proxy and kube-router binaries, for
/// [`cleanup`].
const NETWORK_PROGRAMS: &str = "network-programs";

/// kube-proxy's arguments (pure): iptables mode, Services on the bridge's address only (no
/// NodePort on any other address of the host), the pods' subnet as the cluster's, and no
/// change to the host's conntrack sysctls.
fn kube_proxy_args(kubeconfig: &str, net: &Addresses, health: u16, metrics: u16) -> Vec<String> {
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--hostname-override={NODE_NAME}"),
        "--proxy-mode=iptables".into(),
        format!("--cluster-cidr={}", cidr(net.pod_subnet)),
        format!("--nodeport-addresses={}/32", net.host_ip),
        format!("--healthz-bind-address=127.0.0.1:{health}"),
        format!("--metrics-bind-address=127.0.0.1:{metrics}"),
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--v=1".into(),
    ]
}

/// kube-router's arguments (pure): the NetworkPolicy firewall only.
fn kube_router_args(kubeconfig: &str, net: &Addresses, health: u16) -> Vec<String> {
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--hostname-override={NODE_NAME}"),
        "--run-firewall=true".into(),
        "--run-router=false".into(),
        "--run-service-proxy=false".into(),
        "--enable-cni=false".into(),
        "--enable-ipv4=true".into(),
        "--enable-ipv6=false".into(),
        format!("--service-cluster-ip-range={}", cidr(net.service_range)),
        format!("--health-port={health}"),
        "--metrics-port=0".into(),
        "--v=1".into(),
    ]
}

/// The processes of this machine with their command lines (pid, arguments); unreadable ones
/// are left out.
fn processes() -> Vec<(i32, Vec<String>)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let args = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, args))
        })
        .collect()
}

/// The directory of another environment whose node's kube-proxy or kube-router runs on this
/// machine (the kubeconfig it was given names it), if any.
fn other_node(dir: &Path) -> Option<String> {
    let ours = format!("--kubeconfig={}", dir.join("kubeconfig").display());
    processes().into_iter().find_map(|(_, args)| {
        let is_proxy = args
            .first()
            .is_some_and(|a| a.ends_with("/kube-proxy") || a.ends_with("/kube-router"));
        let theirs = args.iter().find(|a| a.starts_with("--kubeconfig="))?;
        (is_proxy && *theirs != ours)
            .then(|| theirs.trim_start_matches("--kubeconfig=").to_string())
    })
}

/// containerd's configuration (pure): its own root, state and socket; the CRI plugin with the
/// sandbox image `sandbox` (a reference by digest into the environment's registry) and the
/// registry hosts under `<node>/certs.d`.
fn containerd_config(node: &Path, socket: &Path, sandbox: &str) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#,
        root = node.join("containerd-root").display(),
        state = node.join("containerd-state").display(),
        socket = socket.display(),
        hosts = node.join("certs.d").display(),
        cni = node.join("cni/net.d").display(),
    )
}

/// The pods' network (pure): the bridge plugin on the environment's bridge, the host as the
/// gateway of the subnet and of the Service range only (no default route), no masquerading.
fn cni_config(bridge: &str, net: &Addresses, ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "testenv",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "isDefaultGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": cidr(net.pod_subnet), "gateway": net.host_ip.to_string() }]],
                    "routes": [{ "dst": cidr(net.service_range), "gw": net.host_ip.to_string() }],
                    "dataDir": ipam_dir.display().to_string(),
                },
            },
            { "type": "loopback" },
        ],
    })
    .to_string()
}

#[allow(clippy::too_many_arguments)]
fn kubelet_config_yaml(
    ca: &Path,
    socket: &Path,
    node: &Path,
    resolv: &Path,
    address: Ipv4Addr,
    port: u16,
    healthz_port: u16,
    cluster_dns: Ipv4Addr,
) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {address}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous: {{ enabled: false }}
  webhook: {{ enabled: false }}
  x509: {{ clientCAFile: "{ca}" }}
authorization: {{ mode: AlwaysAllow }}
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
containerRuntimeEndpoint: "unix://{socket}"
podLogsDir: "{logs}"
resolvConf: "{resolv}"
clusterDNS: ["{cluster_dns}"]
clusterDomain: {domain}
evictionHard: {{ memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%" }}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 60
syncFrequency: 10s
registerNode: true
makeIPTablesUtilChains: false
localStorageCapacityIsolation: false
shutdownGracePeriod: 0s
"#,
        ca = ca.display(),
        socket = socket.display(),
        logs = node.join("pod-logs").display(),
        resolv = resolv.display(),
        domain = CLUSTER_DOMAIN,
    )
}

/// Removes what the node left on the host: its containers (with their network namespaces and
/// veth pairs), the mounts under its directory and the bridge. Call after its processes
/// stopped, except containerd, which [`cleanup`] needs and stops itself. Errors are ignored:
/// this runs on the way down and must get as far as it can.
pub fn cleanup(dir: &Path) {
    let node = node_dir(dir);
    let socket = node.join("containerd.sock");
    if socket.exists() {
        let address = socket.display().to_string();
        let ctr = |args: &[&str]| {
            Command::new("ctr")
                .args(["--address", &address, "-n", "k8s.io"])
                .args(args)
                .output()
        };
        if let Ok(out) = ctr(&["tasks", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            }
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = ctr(&["tasks", "delete", "-f", id]);
            }
        }
        if let Ok(out) = ctr(&["containers", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = ctr(&["containers", "delete", id]);
            }
        }
    }
    // Shims that outlived containerd (a crashed run) and the containers they hold.
    kill_shims(&socket);
    // Every mount under the node's directory (rootfs, shm, netns), deepest first.
    let prefix = node.display().to_string();
    if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).output();
        }
    }
    // kube-proxy's and kube-router's rules and ipsets (their processes have stopped).
    if let Ok(programs) = fs::read_to_string(node.join(NETWORK_PROGRAMS)) {
        let mut programs = programs.lines();
        if let Some(proxy) = programs.next() {
            let _ = Command::new(proxy).arg("--cleanup").output();
        }
        if let Some(router) = programs.next() {
            let _ = Command::new(router).arg("--cleanup-config").output();
        }
        // kube-proxy's KUBE-FIREWALL chain outlives its cleanup; removed when nothing else put
        // a rule in it.
        let rules = Command::new("iptables")
            .args(["-w", "-S", "KUBE-FIREWALL"])
            .output();
        if rules.is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"-N KUBE-FIREWALL") {
            for chain in ["INPUT", "OUTPUT"] {
                let _ = Command::new("iptables")
                    .args(["-w", "-D", chain, "-j", "KUBE-FIREWALL"])
                    .output();
            }
            let _ = Command::new("iptables")
                .args(["-w", "-X", "KUBE-FIREWALL"])
                .output();
        }
    }
    let (bridge, _) = addresses(dir);
    // veths of pods whose namespaces are gone disappear with them; any left go with the bridge.
    if let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "master", &bridge])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) {
                let _ = Command::new("ip").args(["link", "del", name]).output();
            }
        }
    }
    let _ = Command::new("ip").args(["link", "del", &bridge]).output();
}

/// Kills the runc shims of the containerd at `socket` and the processes of their containers.
fn kill_shims(socket: &Path) {
    let address = socket.display().to_string();
    for (pid, args) in processes() {
        let is_our_shim = args
            .first()
            .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
            && args.contains(&address);
        if is_our_shim {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_environment_gets_its_own_bridge_and_subnet() {
        let (a, net_a) = addresses(Path::new("/tmp/env-a"));
        let (b, net_b) = addresses(Path::new("/tmp/env-b"));
        assert_ne!(a, b);
        assert_ne!(net_a.host_ip, net_b.host_ip);
        assert!(a.len() <= 15, "interface names have at most 15 bytes");
        assert_eq!(addresses(Path::new("/tmp/env-a")), (a, net_a));
        let [ten, second, third, one] = net_a.host_ip.octets();
        assert_eq!((ten, one), (10, 1));
        assert!((200..250).contains(&second));
        assert_eq!(cidr(net_a.pod_subnet), format!("10.{second}.{third}.0/25"));
        assert_eq!(
            cidr(net_a.service_range),
            format!("10.{second}.{third}.128/25")
        );
        assert_eq!(
            net_a.apiserver_service_ip,
            Ipv4Addr::new(10, second, third, 129)
        );
    }

    #[test]
    fn pods_get_no_default_route_and_no_masquerading() {
        let (_, net) = addresses(Path::new("/tmp/env-a"));
        let c: serde_json::Value =
            serde_json::from_str(&cni_config("kop000000", &net, Path::new("/x"))).unwrap();
        let bridge = &c["plugins"][0];
        assert_eq!(bridge["isDefaultGateway"], false);
        assert_eq!(bridge["ipMasq"], false);
        // One route: to the Service range through the host. Nothing else is reachable.
        assert_eq!(
            bridge["ipam"]["routes"],
            serde_json::json!([{ "dst": cidr(net.service_range), "gw": net.host_ip.to_string() }])
        );
        assert_eq!(
            bridge["ipam"]["ranges"][0][0]["subnet"],
            cidr(net.pod_subnet)
        );
    }
}
