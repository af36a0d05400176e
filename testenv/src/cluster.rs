//! What turns the node into a cluster as users run one: the `kubernetes` Service's endpoint,
//! cluster DNS (CoreDNS behind the `kube-dns` Service) and Kratos in-cluster (namespace
//! [`KRATOS_NAMESPACE`]: a Deployment of two replicas behind the `kratos-admin` and
//! `kratos-public` Services, on the environment's PostgreSQL through the selector-less
//! `postgres` Service). kube-proxy ([`crate::node`]) routes every Service, so pods reach
//! all of it by Service name, the README's URLs included.
//!
//! The images are assembled locally ([`crate::image`]) from the cached builds and pushed to the
//! environment's registry, from which the node pulls them by digest. The in-cluster Kratos
//! shares the host-side Kratos' database and configuration (schemas, secrets, methods): the
//! three processes are replicas of one Kratos, so the tests read through the host-side admin
//! API what the operator wrote through the Services.
//!
//! Every manifest is built by a pure function (tested below) and applied with kubectl.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    Error, Result, build,
    image::{self, ImageFile, ImageSpec},
    io_err,
    kratos::{self, KratosOptions, Serve},
    node::{APISERVER_ENDPOINT_PORT, Addresses, CLUSTER_DOMAIN, POSTGRES_ENDPOINT_PORT, dns_ip},
    postgres, registry,
};

/// The namespace of the in-cluster Kratos.
pub const KRATOS_NAMESPACE: &str = "kratos";
/// Kratos' admin API as pods reach it: the URL the README's install command sets.
pub const KRATOS_ADMIN_URL: &str = "http://kratos-admin.kratos.svc.cluster.local:4434";
/// Kratos' public API as pods reach it: the URL the README's install command sets.
pub const KRATOS_PUBLIC_URL: &str = "http://kratos-public.kratos.svc.cluster.local:4433";
/// The port CoreDNS listens on in its pod: 53, as in any cluster, since NetworkPolicies see DNS
/// traffic after the Service's translation (a policy that allows port 53 must meet port 53).
/// CoreDNS runs as non-root; its pod lowers `ip_unprivileged_port_start` for itself.
const DNS_CONTAINER_PORT: u16 = 53;
/// Kratos' replicas in-cluster.
pub const KRATOS_REPLICAS: u32 = 2;
/// The label every object of ours carries, so that a reader knows who made it.
const MANAGED_BY: &str = "testenv.kratos-operator.dev";

/// A `v1/List` of `items` (pure): one `kubectl apply` for all of them.
fn list(items: Vec<Value>) -> Value {
    json!({ "apiVersion": "v1", "kind": "List", "items": items })
}

/// A selector-less Service's EndpointSlice (pure): `address:port` as its only, ready endpoint.
fn endpoint_slice(
    namespace: &str,
    service: &str,
    port_name: &str,
    address: Ipv4Addr,
    port: u16,
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": service,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": [address.to_string()], "conditions": { "ready": true } }],
        "ports": [{ "name": port_name, "port": port, "protocol": "TCP" }],
    })
}

/// The `kubernetes` Service's endpoint (pure): the API server's relay on the host's bridge
/// address. The API server writes none itself (`--endpoint-reconciler-type=none`: it listens
/// on loopback only, where pods cannot reach it).
pub fn apiserver_endpoints(net: &Addresses) -> Value {
    endpoint_slice(
        "default",
        "kubernetes",
        "https",
        net.host_ip,
        APISERVER_ENDPOINT_PORT,
    )
}

/// The Corefile (pure): the cluster's zone from the API, nothing forwarded (the environment has
/// no upstream resolver, and no query may leave the machine).
pub fn corefile() -> String {
    format!(
        ".:{DNS_CONTAINER_PORT} {{\n    errors\n    health :8080\n    ready :8181\n    \
         kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n        pods insecure\n        \
         fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n    }}\n    prometheus :9153\n    \
         cache 30\n    loadbalance\n}}\n"
    )
}

/// Cluster DNS (pure): CoreDNS (`image`, by digest) with its RBAC and Corefile in
/// `kube-system`, behind the `kube-dns` Service at `dns_ip`.
pub fn coredns_manifests(image: &str, dns_ip: Ipv4Addr) -> Value {
    let labels = json!({ "k8s-app": "kube-dns" });
    list(vec![
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": "coredns", "namespace": "kube-system" },
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": "system:coredns" },
            "rules": [
                { "apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"] },
                { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"] },
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": "system:coredns" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns" },
            "subjects": [{ "kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system" }],
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "coredns", "namespace": "kube-system" },
            "data": { "Corefile": corefile() },
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "coredns", "namespace": "kube-system", "labels": labels },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": labels },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "sysctls": [{ "name": "net.ipv4.ip_unprivileged_port_start", "value": "0" }],
                        },
                        "containers": [{
                            "name": "coredns",
                            "image": image,
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                { "name": "dns", "containerPort": DNS_CONTAINER_PORT, "protocol": "UDP" },
                                { "name": "dns-tcp", "containerPort": DNS_CONTAINER_PORT, "protocol": "TCP" },
                                { "name": "metrics", "containerPort": 9153, "protocol": "TCP" },
                            ],
                            "resources": { "requests": { "cpu": "10m", "memory": "32Mi" }, "limits": { "memory": "128Mi" } },
                            "readinessProbe": { "httpGet": { "path": "/ready", "port": 8181 }, "periodSeconds": 2 },
                            "livenessProbe": { "httpGet": { "path": "/health", "port": 8080 }, "periodSeconds": 10 },
                            "securityContext": { "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": { "drop": ["ALL"] } },
                            "volumeMounts": [{ "name": "config", "mountPath": "/etc/coredns", "readOnly": true }],
                        }],
                        "volumes": [{ "name": "config", "configMap": { "name": "coredns" } }],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "kube-dns", "namespace": "kube-system", "labels": labels },
            "spec": {
                "selector": labels,
                "clusterIP": dns_ip.to_string(),
                "ports": [
                    { "name": "dns", "port": 53, "targetPort": DNS_CONTAINER_PORT, "protocol": "UDP" },
                    { "name": "dns-tcp", "port": 53, "targetPort": DNS_CONTAINER_PORT, "protocol": "TCP" },
                ],
            },
        }),
    ])
}

/// The in-cluster Kratos' configuration (pure): the host-side Kratos' own, listening on every
/// address of the pod at the standard ports, named by its Services.
pub fn kratos_config(options: &KratosOptions) -> String {
    kratos::config_for(
        &Serve {
            host: "0.0.0.0".into(),
            public_port: 4433,
            admin_port: 4434,
            public_base_url: format!("{KRATOS_PUBLIC_URL}/"),
            admin_base_url: format!("{KRATOS_ADMIN_URL}/"),
            schema_dir: "/etc/kratos".into(),
        },
        options,
    )
}

/// The in-cluster PostgreSQL DSN (pure): the environment's server through the `postgres`
/// Service.
pub fn kratos_dsn() -> String {
    format!(
        "postgres://{}@postgres.{KRATOS_NAMESPACE}.svc.{CLUSTER_DOMAIN}:{POSTGRES_ENDPOINT_PORT}/{}\
         ?sslmode=disable&max_conns=8&max_idle_conns=8",
        postgres::USER,
        postgres::DATABASE
    )
}

/// Kratos in-cluster (pure): namespace [`KRATOS_NAMESPACE`] with its configuration and schemas
/// (`files`: name and content) in a ConfigMap, the DSN in a Secret, the `postgres` Service
/// with its endpoint on `host_ip`, a Deployment of [`KRATOS_REPLICAS`] replicas of `image` that
/// migrates in an init container, and the `kratos-admin` and `kratos-public` Services.
pub fn kratos_manifests(image: &str, files: &[(String, String)], host_ip: Ipv4Addr) -> Value {
    let ns = KRATOS_NAMESPACE;
    let labels = json!({ "app.kubernetes.io/name": "kratos" });
    let data: serde_json::Map<String, Value> = files
        .iter()
        .map(|(name, content)| (name.clone(), Value::String(content.clone())))
        .collect();
    let config_arg = ["-c", "/etc/kratos/kratos.yml"];
    let dsn_env = json!([{
        "name": "DSN",
        "valueFrom": { "secretKeyRef": { "name": "kratos", "key": "dsn" } },
    }]);
    let security = json!({
        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
    });
    let mounts = json!([{ "name": "config", "mountPath": "/etc/kratos", "readOnly": true }]);
    let service = |name: &str, port: u16| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": ns },
            "spec": {
                "selector": labels,
                "ports": [{ "name": "http", "port": port, "targetPort": port, "protocol": "TCP" }],
            },
        })
    };
    list(vec![
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "postgres", "namespace": ns },
            "spec": { "ports": [{ "name": "postgres", "port": POSTGRES_ENDPOINT_PORT, "protocol": "TCP" }] },
        }),
        endpoint_slice(ns, "postgres", "postgres", host_ip, POSTGRES_ENDPOINT_PORT),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "kratos", "namespace": ns },
            "stringData": { "dsn": kratos_dsn() },
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "kratos-config", "namespace": ns },
            "data": data,
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "kratos", "namespace": ns, "labels": labels },
            "spec": {
                "replicas": KRATOS_REPLICAS,
                "selector": { "matchLabels": labels },
                "template": {
                    "metadata": {
                        "labels": labels,
                        // A changed configuration rolls the replicas.
                        "annotations": { "testenv.kratos-operator.dev/config-digest": config_digest(files) },
                    },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532 },
                        "terminationGracePeriodSeconds": 10,
                        "initContainers": [{
                            "name": "migrate",
                            "image": image,
                            "args": ["migrate", "sql", "-e", "--yes", config_arg[0], config_arg[1]],
                            "env": dsn_env,
                            "securityContext": security,
                            "volumeMounts": mounts,
                        }],
                        "containers": [{
                            "name": "kratos",
                            "image": image,
                            "args": ["serve", config_arg[0], config_arg[1], "--dev", "--sqa-opt-out"],
                            "env": dsn_env,
                            "ports": [
                                { "name": "public", "containerPort": 4433, "protocol": "TCP" },
                                { "name": "admin", "containerPort": 4434, "protocol": "TCP" },
                            ],
                            "resources": { "requests": { "cpu": "20m", "memory": "64Mi" }, "limits": { "memory": "512Mi" } },
                            "readinessProbe": { "httpGet": { "path": "/health/ready", "port": 4433 }, "periodSeconds": 2 },
                            "securityContext": security,
                            "volumeMounts": mounts,
                        }],
                        "volumes": [{ "name": "config", "configMap": { "name": "kratos-config" } }],
                    },
                },
            },
        }),
        service("kratos-admin", 4434),
        service("kratos-public", 4433),
    ])
}

/// The README's install command (pure): the words of the `helm install kratos-operator oci://…`
/// command in `readme`, continuation lines joined, `helm` left out. None when the README has no
/// such command.
pub fn readme_install_args(readme: &str) -> Option<Vec<String>> {
    let mut lines = readme.lines().skip_while(|l| {
        !l.trim_start()
            .starts_with("helm install kratos-operator oci://")
    });
    let mut command = String::new();
    for line in lines.by_ref() {
        let line = line.trim();
        match line.strip_suffix('\\') {
            Some(part) => {
                command.push_str(part);
                command.push(' ');
            }
            None => {
                command.push_str(line);
                break;
            }
        }
    }
    let mut words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
    (words.first().map(String::as_str) == Some("helm")).then(|| words.split_off(1))
}

/// The README's install command for a release published to the environment's registry (pure):
/// the chart `oci://…` and `--version` replaced by `chart` and `version`, `--plain-http` added
/// (the registry is on loopback); every other word as the README writes it.
pub fn install_from(readme_args: &[String], chart: &str, version: &str) -> Vec<String> {
    let mut args = Vec::with_capacity(readme_args.len() + 1);
    let mut words = readme_args.iter();
    while let Some(word) = words.next() {
        if word.starts_with("oci://") {
            args.push(chart.to_string());
        } else if word == "--version" {
            args.push(word.clone());
            words.next();
            args.push(version.to_string());
        } else {
            args.push(word.clone());
        }
    }
    args.push("--plain-http".into());
    args
}

fn config_digest(files: &[(String, String)]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (name, content) in files {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(content.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The shared libraries `ldd` lists for a dynamically linked program (pure): the resolved
/// paths, the loader included, the vDSO left out.
pub fn shared_libraries(ldd_output: &str) -> Vec<String> {
    ldd_output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// Kratos' image: the cached build (cgo, for sqlite) with the C library it links.
fn kratos_image_spec() -> Result<ImageSpec> {
    let binary = build::KRATOS.binary("kratos")?;
    let out = Command::new("ldd")
        .arg(&binary)
        .output()
        .map_err(io_err("running ldd on kratos"))?;
    let mut files = vec![ImageFile::new(&binary, "/usr/bin/kratos", 0o755)];
    for lib in shared_libraries(&String::from_utf8_lossy(&out.stdout)) {
        files.push(ImageFile::new(PathBuf::from(&lib), lib, 0o755));
    }
    Ok(ImageSpec {
        name: "localhost/kratos:testenv".into(),
        files,
        entrypoint: vec!["/usr/bin/kratos".into()],
        user: image::NONROOT.into(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        exposed_ports: vec!["4433/tcp".into(), "4434/tcp".into()],
        ..ImageSpec::default()
    })
}

/// CoreDNS' image: the cached static build.
fn coredns_image_spec() -> Result<ImageSpec> {
    let binary = build::COREDNS.binary("coredns")?;
    Ok(ImageSpec {
        name: "localhost/coredns:testenv".into(),
        files: vec![ImageFile::new(binary, "/coredns", 0o755)],
        entrypoint: vec!["/coredns".into()],
        user: image::NONROOT.into(),
        exposed_ports: vec!["53/udp".into(), "53/tcp".into()],
        ..ImageSpec::default()
    })
}

/// The probe's image: the cached static build of [`build::PROBE`].
fn probe_image_spec() -> Result<ImageSpec> {
    let binary = build::PROBE.binary("probe")?;
    Ok(ImageSpec {
        name: "localhost/probe:testenv".into(),
        files: vec![ImageFile::new(binary, "/probe", 0o755)],
        entrypoint: vec!["/probe".into()],
        user: image::NONROOT.into(),
        ..ImageSpec::default()
    })
}

/// Writes the image of `spec` into `dir` and pushes it to `<registry>/testenv/<name>:<tag>`;
/// returns the reference by digest.
fn publish(spec: &ImageSpec, dir: &Path, registry: &str, name: &str, tag: &str) -> Result<String> {
    let archive = dir.join(format!("{name}.oci.tar"));
    image::write_oci_archive(spec, &archive)?;
    let reference = format!("{registry}/testenv/{name}:{tag}");
    let digest = registry::push_archive(&archive, &reference, true)?;
    Ok(format!("{registry}/testenv/{name}@{digest}"))
}

/// What [`install`] needs.
#[derive(Debug)]
pub struct AddOns<'a> {
    /// kubectl of the environment's Kubernetes.
    pub kubectl: &'a Path,
    /// The environment's admin kubeconfig.
    pub kubeconfig: &'a Path,
    /// The environment's registry (`127.0.0.1:<port>`).
    pub registry: &'a str,
    /// The node's addresses.
    pub net: &'a Addresses,
    /// Where to write the images' archives.
    pub work_dir: &'a Path,
}

fn apply(add_ons: &AddOns<'_>, manifest: &Value, what: &str) -> Result<()> {
    kubectl(
        add_ons,
        &["apply", "-f", "-"],
        Some(&manifest.to_string()),
        what,
    )
    .map(|_| ())
}

fn kubectl(add_ons: &AddOns<'_>, args: &[&str], stdin: Option<&str>, what: &str) -> Result<String> {
    crate::process::kubectl(add_ons.kubectl, add_ons.kubeconfig, args, stdin)?.map_err(|message| {
        Error::NotReady {
            component: what.into(),
            message,
            log: add_ons.work_dir.to_path_buf(),
            log_tail: String::new(),
        }
    })
}

/// Waits until the Deployment `namespace/name` has rolled out.
fn rollout(add_ons: &AddOns<'_>, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
    let timeout = format!("--timeout={}s", timeout.as_secs());
    kubectl(
        add_ons,
        &[
            "rollout",
            "status",
            "-n",
            namespace,
            &format!("deployment/{name}"),
            &timeout,
        ],
        None,
        name,
    )
    .map(|_| ())
}

/// Publishes the images, applies the `kubernetes` endpoint, CoreDNS and the in-cluster Kratos,
/// and waits until both have rolled out. Returns the probe's image (by digest) for the tests.
pub fn install(add_ons: &AddOns<'_>) -> Result<String> {
    std::fs::create_dir_all(add_ons.work_dir)
        .map_err(io_err(format!("creating {}", add_ons.work_dir.display())))?;
    apply(
        add_ons,
        &list(vec![apiserver_endpoints(add_ons.net)]),
        "the kubernetes Service",
    )?;

    let coredns = publish(
        &coredns_image_spec()?,
        add_ons.work_dir,
        add_ons.registry,
        "coredns",
        build::COREDNS.version,
    )?;
    apply(
        add_ons,
        &coredns_manifests(&coredns, dns_ip(add_ons.net)),
        "CoreDNS",
    )?;

    let kratos = publish(
        &kratos_image_spec()?,
        add_ons.work_dir,
        add_ons.registry,
        "kratos",
        build::KRATOS.version,
    )?;
    let mut files = vec![(
        "kratos.yml".to_string(),
        kratos_config(&KratosOptions::default()),
    )];
    for (name, path) in kratos::schema_files() {
        let content = std::fs::read_to_string(&path)
            .map_err(io_err(format!("reading {}", path.display())))?;
        files.push((name, content));
    }
    apply(
        add_ons,
        &kratos_manifests(&kratos, &files, add_ons.net.host_ip),
        "Kratos in-cluster",
    )?;
    rollout(add_ons, "kube-system", "coredns", Duration::from_secs(120))?;
    rollout(
        add_ons,
        KRATOS_NAMESPACE,
        "kratos",
        Duration::from_secs(180),
    )?;
    publish(
        &probe_image_spec()?,
        add_ons.work_dir,
        add_ons.registry,
        "probe",
        build::PROBE.version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node;

    #[test]
    fn the_dns_service_is_the_tenth_address_of_the_service_range() {
        let (_, net) = node::addresses(Path::new("/tmp/env-a"));
        let dns = dns_ip(&net);
        let [_, _, _, d] = dns.octets();
        assert_eq!(d, 138);
        assert_eq!(dns.octets()[..3], net.host_ip.octets()[..3]);
    }

    #[test]
    fn the_apiserver_endpoint_is_the_relay_on_the_bridge() {
        let (_, net) = node::addresses(Path::new("/tmp/env-a"));
        let slice = apiserver_endpoints(&net);
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "kubernetes"
        );
        assert_eq!(
            slice["endpoints"][0]["addresses"][0],
            net.host_ip.to_string()
        );
        assert_eq!(slice["ports"][0]["port"], APISERVER_ENDPOINT_PORT);
        assert_eq!(slice["ports"][0]["name"], "https");
    }

    #[test]
    fn the_corefile_serves_the_cluster_domain_and_forwards_nothing() {
        let corefile = corefile();
        assert!(corefile.contains("kubernetes cluster.local in-addr.arpa ip6.arpa"));
        assert!(corefile.starts_with(".:53 {"), "{corefile}");
        assert!(!corefile.contains("forward"), "no upstream: {corefile}");
    }

    #[test]
    fn kratos_in_cluster_is_named_by_its_services_and_reaches_postgres_by_name() {
        let config = kratos_config(&KratosOptions::default());
        let config: Value = serde_json::from_str(&config).unwrap();
        assert_eq!(
            config["serve"]["public"]["base_url"],
            format!("{KRATOS_PUBLIC_URL}/")
        );
        assert_eq!(
            config["serve"]["admin"]["base_url"],
            format!("{KRATOS_ADMIN_URL}/")
        );
        assert_eq!(config["serve"]["admin"]["port"], 4434);
        assert!(
            config["identity"]["schemas"][0]["url"]
                .as_str()
                .unwrap()
                .starts_with("file:///etc/kratos/")
        );
        assert!(kratos_dsn().contains("@postgres.kratos.svc.cluster.local:5432/"));
        let (_, net) = node::addresses(Path::new("/tmp/env-a"));
        let files = vec![("kratos.yml".to_string(), "{}".to_string())];
        let manifests = kratos_manifests("r/kratos@sha256:x", &files, net.host_ip);
        let items = manifests["items"].as_array().unwrap();
        let kind = |k: &str, n: &str| {
            items
                .iter()
                .find(|i| i["kind"] == k && i["metadata"]["name"] == n)
                .unwrap_or_else(|| panic!("no {k} {n}"))
        };
        assert_eq!(kind("Deployment", "kratos")["spec"]["replicas"], 2);
        assert_eq!(
            kind("Service", "kratos-admin")["spec"]["ports"][0]["port"],
            4434
        );
        assert_eq!(
            kind("Service", "kratos-public")["spec"]["ports"][0]["port"],
            4433
        );
        assert!(
            kind("Service", "postgres")["spec"]
                .get("selector")
                .is_none()
        );
        assert_eq!(
            kind("EndpointSlice", "postgres")["endpoints"][0]["addresses"][0],
            net.host_ip.to_string()
        );
        // The DSN is in a Secret, not in the pod spec.
        let deployment = kind("Deployment", "kratos").to_string();
        assert!(!deployment.contains("postgres://"));
    }

    #[test]
    fn the_readme_installs_with_the_urls_pods_reach_kratos_at() {
        let readme = std::fs::read_to_string(crate::repo_root().join("README.md")).unwrap();
        let args = readme_install_args(&readme).expect("the README's helm install command");
        assert_eq!(
            args[..2],
            ["install".to_string(), "kratos-operator".to_string()]
        );
        assert!(
            args.contains(&format!("kratos.adminUrl={KRATOS_ADMIN_URL}")),
            "{args:?}"
        );
        assert!(
            args.contains(&format!("kratos.publicUrl={KRATOS_PUBLIC_URL}")),
            "{args:?}"
        );
        let local = install_from(
            &args,
            "oci://127.0.0.1:5000/x/kratos-operator",
            "0.1.0-dev.h1",
        );
        assert_eq!(local.len(), args.len() + 1);
        assert!(local.contains(&"oci://127.0.0.1:5000/x/kratos-operator".to_string()));
        assert!(!local.iter().any(|w| w.contains("ghcr.io") || w == "0.1.0"));
        let version = local.iter().position(|w| w == "--version").unwrap();
        assert_eq!(local[version + 1], "0.1.0-dev.h1");
        assert_eq!(local.last().unwrap(), "--plain-http");
    }

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007fd88cbed000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fd88c9fa000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007fd88cbef000)\n";
        assert_eq!(
            shared_libraries(out),
            vec![
                "/lib/x86_64-linux-gnu/libc.so.6".to_string(),
                "/lib64/ld-linux-x86-64.so.2".to_string()
            ]
        );
    }
}
