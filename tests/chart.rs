//! The Helm chart `charts/kratos-operator`: `helm lint` (strict) passes, the values schema rejects
//! bad values, the chart renders in every mode and the rendered manifests pass a server-side
//! dry-run against the real apiserver, the pods meet the `restricted` Pod Security Standard (the
//! apiserver's own PodSecurity admission checks them), every environment variable the Deployment
//! sets is one the operator reads (and its extra arguments parse), the chart's `crds/` is `crds/`,
//! its README is generated from values.yaml, and every metric its alerts, its dashboard and
//! docs/metrics.md name is one a running operator exports.
//! Sync the chart's CRDs with `UPDATE_CRDS=1 cargo test --test chart`, the README with
//! `cargo xtask generate`.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart_support;
mod support;
// The generator of the chart's README, shared with `cargo xtask generate`.
#[path = "../xtask/src/chart_readme.rs"]
mod chart_readme;

use chart_support::{
    PLACEHOLDER_ADMIN_URL, chart_dir, describe, helm_lint, helm_template, json_documents,
    kinds_and_names, kubectl_run, read_tree, render, repo, tree_diff, write_tree,
};
use k8s_openapi::api::core::v1::Namespace;
use kratos_operator::api::FINALIZER;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestEnv, eventually, setup, unique_name};

fn admin_url_arg() -> String {
    format!("kratos.adminUrl={PLACEHOLDER_ADMIN_URL}")
}

/// A digest for `image.digest`.
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// `helm` arguments that set every optional knob at once: extra args, volumes and mounts, the
/// image digest, a strategy, probe timings, ServiceMonitor relabelings and namespace, and the
/// NetworkPolicy with peers of every kind.
fn knob_args() -> Vec<String> {
    [
        "--set-json",
        r#"extraArgs=["--batch-creates=false","--drift-sweeps=false"]"#,
        "--set-json",
        r#"extraVolumes=[{"name":"scratch","emptyDir":{"sizeLimit":"1Mi"}}]"#,
        "--set-json",
        r#"extraVolumeMounts=[{"name":"scratch","mountPath":"/scratch","readOnly":true}]"#,
        "--set-json",
        r#"strategy={"type":"RollingUpdate","rollingUpdate":{"maxSurge":0,"maxUnavailable":1}}"#,
        "--set-json",
        r#"livenessProbe={"initialDelaySeconds":null,"timeoutSeconds":3,"terminationGracePeriodSeconds":7}"#,
        "--set-json",
        r#"readinessProbe={"periodSeconds":2,"successThreshold":1}"#,
        "--set-json",
        r#"serviceMonitor={"enabled":true,"namespace":"monitoring","relabelings":[{"action":"replace","targetLabel":"team","replacement":"idp"}],"metricRelabelings":[{"action":"drop","sourceLabels":["__name__"],"regex":"go_.*"}]}"#,
        "--set-json",
        r#"networkPolicy={"enabled":true,"metricsFrom":[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}],"kratos":{"peers":[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"kratos"}},"podSelector":{"matchLabels":{"app.kubernetes.io/name":"kratos"}}}]},"apiServer":{"cidrs":["10.0.0.1/32","fd00::1/128"],"ports":[6443]},"dns":{"peers":[{"ipBlock":{"cidr":"10.96.0.10/32"}}]},"extraEgress":[{"to":[{"ipBlock":{"cidr":"10.1.0.0/16"}}],"ports":[{"port":3128,"protocol":"TCP"}]}]}"#,
        "--set",
        "kratos.publicUrl=https://kratos.example.com",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .chain(["--set".to_string(), format!("image.digest={DIGEST}")])
    .collect()
}

// ---------------------------------------------------------------------------------------------
// helm lint and the values schema

#[test]
fn helm_lint_strict_passes_with_the_required_value() {
    let admin = admin_url_arg();
    let knobs = knob_args();
    for extra in [
        knobs.iter().map(String::as_str).collect(),
        vec![
            "--set",
            "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        ],
        vec![],
        vec!["--set", "watchNamespaces={team-a,team-b}"],
        vec![
            "--set",
            "tenancy.enforce=false,admissionPolicies.operatorSecrets=false",
        ],
        vec![
            "--set",
            "serviceMonitor.enabled=true,podDisruptionBudget.enabled=true,replicas=2",
            "--set",
            "kratos.tokenSecret.name=kratos-token,kratos.ca.secret.name=kratos-ca",
        ],
    ] {
        let mut args = vec!["--strict", "--kube-version", "v1.33.13", "--set", &admin];
        args.extend(extra.iter().copied());
        let out = helm_lint(&args);
        assert!(
            out.status.success(),
            "helm lint {args:?}: {}",
            describe(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("[WARNING]"),
            "{}",
            describe(&out)
        );
    }
}

#[test]
fn helm_lint_fails_without_the_kratos_admin_url() {
    let out = helm_lint(&["--strict"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let text = describe(&out);
    assert!(text.contains("/kratos/adminUrl"), "{text}");
}

#[test]
fn the_values_schema_rejects_wrong_types_unknown_keys_and_bad_urls() {
    let admin = admin_url_arg();
    for (bad, needle) in [
        ("replicas=two", "/replicas"),
        ("leaderElection.enabled=yes", "/leaderElection/enabled"),
        ("kratos.adminUrl=kratos:4434", "/kratos/adminUrl"),
        ("kratos.rateLimit=-1", "/kratos/rateLimit"),
        ("logFormat=xml", "/logFormat"),
        ("resyncInterval=soon", "/resyncInterval"),
        ("watchNamespaces[0]=Team_A", "/watchNamespaces/0"),
        ("kratos.adminurl=http://typo", "adminurl"),
        ("replica=2", "replica"),
        ("tenancy.enforce=yes", "/tenancy/enforce"),
        ("tenancy.enfroce=false", "enfroce"),
        (
            "admissionPolicies.operatorSecrets=off",
            "/admissionPolicies/operatorSecrets",
        ),
        // The knobs: wrong types, bad formats, keys the chart owns.
        ("extraArgs=--batch-creates=false", "/extraArgs"),
        ("extraArgs[0]=1", "/extraArgs/0"),
        ("extraVolumes[0].emptyDir.medium=Memory", "/extraVolumes/0"),
        ("extraVolumeMounts[0].name=scratch", "mountPath"),
        ("image.digest=sha256:0123abc", "/image/digest"),
        ("image.digest=latest", "/image/digest"),
        ("strategy.type=BlueGreen", "/strategy/type"),
        ("strategy.maxSurge=1", "maxSurge"),
        (
            "livenessProbe.periodSeconds=often",
            "/livenessProbe/periodSeconds",
        ),
        ("livenessProbe.httpGet.path=/x", "httpGet"),
        (
            "readinessProbe.terminationGracePeriodSeconds=5",
            "terminationGracePeriodSeconds",
        ),
        (
            "serviceMonitor.relabelings=drop",
            "/serviceMonitor/relabelings",
        ),
        (
            "serviceMonitor.namespace=Monitoring",
            "/serviceMonitor/namespace",
        ),
        ("networkPolicy.enabled=yes", "/networkPolicy/enabled"),
        (
            "prometheusRule.leaderMissingAfter=15 minutes",
            "/prometheusRule/leaderMissingAfter",
        ),
        (
            "prometheusRule.leaderMissingAfter=1us",
            "/prometheusRule/leaderMissingAfter",
        ),
        (
            "prometheusRule.selector=job=\"x\"}",
            "/prometheusRule/selector",
        ),
        ("grafanaDashboard.enabled=yes", "/grafanaDashboard/enabled"),
        (
            "grafanaDashboard.labels.grafana_dashboard=1",
            "/grafanaDashboard/labels",
        ),
        (
            "networkPolicy.apiServer.cidrs[0]=10.0.0.1",
            "/networkPolicy/apiServer/cidrs/0",
        ),
        (
            "networkPolicy.kratos.ports[0]=70000",
            "/networkPolicy/kratos/ports/0",
        ),
        (
            "networkPolicy.kratos.peers[0].podSelektor.a=b",
            "podSelektor",
        ),
        (
            "networkPolicy.dns.to[0].ipBlock.cidr=1.1.1.1/32",
            "/networkPolicy/dns",
        ),
    ] {
        // --set-string for the ones whose type error is the point; --set parses numbers/bools.
        let flag = if [
            "leaderElection",
            "tenancy.enforce",
            "admissionPolicies",
            "networkPolicy.enabled",
            "grafanaDashboard.enabled",
        ]
        .iter()
        .any(|p| bad.starts_with(p))
        {
            "--set-string"
        } else {
            "--set"
        };
        let err = helm_template("lint", "default", &["--set", &admin, flag, bad])
            .expect_err(&format!("{bad} must be rejected"));
        assert!(err.contains(needle), "{bad}: {err}");
    }
    // Rules the schema cannot express are checked by the templates.
    let err = helm_template(
        "lint",
        "default",
        &[
            "--set",
            &admin,
            "--set",
            "replicas=2,leaderElection.enabled=false",
        ],
    )
    .unwrap_err();
    assert!(err.contains("leaderElection.enabled"), "{err}");
    let err = helm_template(
        "lint",
        "default",
        &[
            "--set",
            &admin,
            "--set",
            "kratos.ca.secret.name=a,kratos.ca.configMap.name=b",
        ],
    )
    .unwrap_err();
    assert!(err.contains("at most one"), "{err}");
    // Without leader election a rolling update would run two writers at once.
    for strategy in [
        "strategy.type=RollingUpdate",
        "strategy.rollingUpdate.maxSurge=1",
    ] {
        let err = helm_template(
            "lint",
            "default",
            &[
                "--set",
                &admin,
                "--set",
                "leaderElection.enabled=false",
                "--set",
                strategy,
            ],
        )
        .expect_err(strategy);
        assert!(err.contains("only type Recreate"), "{strategy}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering: what each mode contains

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kinds_and_names(docs)))
}

fn env_of(deployment: &Value) -> Vec<(String, Value)> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

fn env_value(deployment: &Value, name: &str) -> Option<String> {
    env_of(deployment)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, e)| e["value"].as_str().map(str::to_string))
}

#[test]
fn default_values_render_cluster_mode_with_leader_election() {
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &["--set", &admin_url_arg()],
    ));
    let mut names = kinds_and_names(&docs);
    names.sort();
    // Where the release under test serves it, the finalizer policy too.
    let mut want = vec![
        "ClusterRole/ops-kratos-operator",
        "ClusterRoleBinding/ops-kratos-operator",
        "Deployment/ops-kratos-operator",
        "PodDisruptionBudget/ops-kratos-operator",
        "Role/ops-kratos-operator-leader-election",
        "RoleBinding/ops-kratos-operator-leader-election",
        "Service/ops-kratos-operator-metrics",
        "ServiceAccount/ops-kratos-operator",
        "ValidatingAdmissionPolicy/ops-kratos-operator-identity-adoption",
        "ValidatingAdmissionPolicy/ops-kratos-operator-operator-secrets",
        "ValidatingAdmissionPolicy/ops-kratos-operator-recovery-by-id",
        "ValidatingAdmissionPolicyBinding/ops-kratos-operator-identity-adoption",
        "ValidatingAdmissionPolicyBinding/ops-kratos-operator-operator-secrets",
        "ValidatingAdmissionPolicyBinding/ops-kratos-operator-recovery-by-id",
    ];
    if chart_support::serves_mutating_admission_policies() {
        want.extend([
            "MutatingAdmissionPolicy/ops-kratos-operator-identity-finalizer",
            "MutatingAdmissionPolicyBinding/ops-kratos-operator-identity-finalizer",
        ]);
        want.sort_unstable();
    }
    assert_eq!(names, want);
    // Defaults that work with one replica and with several: the new pod of a rollout is Ready
    // as a follower before an old one stops; a drain may always evict one pod; the grace period
    // covers the shutdown bound.
    let pdb = find(&docs, "PodDisruptionBudget", "ops-kratos-operator");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");
    assert_eq!(pdb["spec"].get("minAvailable"), None, "{pdb}");
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    let rollout = &find(&docs, "Deployment", "ops-kratos-operator")["spec"]["strategy"];
    assert_eq!(
        rollout,
        &json!({ "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } })
    );
    for d in &docs {
        if !CLUSTER_SCOPED.contains(&d["kind"].as_str().unwrap()) {
            assert_eq!(d["metadata"]["namespace"], "kratos-system", "{d}");
        }
    }
    let deployment = find(&docs, "Deployment", "ops-kratos-operator");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(spec["serviceAccountName"], "ops-kratos-operator");
    let container = &spec["containers"][0];
    assert_eq!(
        container["image"],
        "ghcr.io/kratos-operator/kratos-operator:0.1.0"
    );
    assert_eq!(container["args"], json!(["run"]));
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        env_value(deployment, "KRATOS_ADMIN_URL").as_deref(),
        Some(PLACEHOLDER_ADMIN_URL)
    );
    assert_eq!(
        env_value(deployment, "LEADER_ELECT").as_deref(),
        Some("true")
    );
    assert_eq!(
        env_value(deployment, "METRICS_ADDR").as_deref(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(
        env_value(deployment, "SHUTDOWN_TIMEOUT").as_deref(),
        Some("20s")
    );
    assert_eq!(env_value(deployment, "WATCH_NAMESPACE"), None);
    assert_eq!(
        env_value(deployment, "TENANCY_ENFORCE").as_deref(),
        Some("true")
    );
    // Tenancy: the operator reads any Namespace, with get only.
    let cluster_role = find(&docs, "ClusterRole", "ops-kratos-operator");
    assert!(
        cluster_role["rules"]
            .as_array()
            .unwrap()
            .contains(&json!({ "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"] })),
        "{cluster_role}"
    );
    let env = env_of(deployment);
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let (_, e) = env.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    // Cluster mode: the binding names the ServiceAccount in the release namespace.
    let binding = find(&docs, "ClusterRoleBinding", "ops-kratos-operator");
    assert_eq!(
        binding["subjects"],
        json!([{ "kind": "ServiceAccount", "name": "ops-kratos-operator", "namespace": "kratos-system" }])
    );
    // The Service selects the pods.
    let service = find(&docs, "Service", "ops-kratos-operator-metrics");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "selector {k}");
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
}

#[test]
fn watch_namespaces_render_a_role_per_namespace_and_only_a_crd_clusterrole() {
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            &admin_url_arg(),
            "--set",
            "watchNamespaces={team-a,team-b}",
        ],
    ));
    let deployment = find(&docs, "Deployment", "ops-kratos-operator");
    assert_eq!(
        env_value(deployment, "WATCH_NAMESPACE").as_deref(),
        Some("team-a,team-b")
    );
    let cluster_role = find(&docs, "ClusterRole", "ops-kratos-operator-crds");
    assert_eq!(
        cluster_role["rules"],
        json!([
            { "apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list"] },
            { "apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["team-a", "team-b"], "verbs": ["get"] },
        ]),
        "namespace mode grants nothing namespaced cluster-wide, and reads only the watched Namespaces"
    );
    // The tenancy policies judge the watched namespaces only; the policy on the operator's own
    // Secret writes judges its ServiceAccount everywhere.
    for policy in ["identity-adoption", "recovery-by-id"] {
        let binding = find(
            &docs,
            "ValidatingAdmissionPolicyBinding",
            &format!("ops-kratos-operator-{policy}"),
        );
        assert_eq!(
            binding["spec"]["matchResources"]["namespaceSelector"],
            json!({ "matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]
            }] })
        );
    }
    let binding = find(
        &docs,
        "ValidatingAdmissionPolicyBinding",
        "ops-kratos-operator-operator-secrets",
    );
    assert!(binding["spec"].get("matchResources").is_none(), "{binding}");
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "ops-kratos-operator")
    );
    for ns in ["team-a", "team-b"] {
        let role = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no Role in {ns}"));
        assert!(
            role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["resources"] == json!(["secrets"])),
            "{role}"
        );
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no RoleBinding in {ns}"));
        assert_eq!(binding["subjects"][0]["namespace"], "kratos-system");
        assert_eq!(binding["roleRef"]["kind"], "Role");
    }
}

#[test]
fn optional_parts_render_when_enabled() {
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            &admin_url_arg(),
            "--set",
            "serviceMonitor.enabled=true,serviceMonitor.labels.release=prom",
            "--set",
            "podDisruptionBudget.enabled=true,replicas=3,podDisruptionBudget.minAvailable=2",
            "--set",
            "kratos.tokenSecret.name=ory-token,kratos.tokenSecret.key=api-key",
            "--set",
            "kratos.ca.configMap.name=corp-ca,kratos.publicUrl=https://kratos.example.com",
            "--set",
            "priorityClassName=system-cluster-critical,kratos.rateLimit=50",
        ],
    ));
    let monitor = find(&docs, "ServiceMonitor", "ops-kratos-operator");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let service = find(&docs, "Service", "ops-kratos-operator-metrics");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "ServiceMonitor selects the Service"
        );
    }
    let pdb = find(&docs, "PodDisruptionBudget", "ops-kratos-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    let deployment = find(&docs, "Deployment", "ops-kratos-operator");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(
        env_value(deployment, "KRATOS_TOKEN_FILE").as_deref(),
        Some("/etc/kratos-operator/token/token")
    );
    assert_eq!(
        env_value(deployment, "KRATOS_CA_FILE").as_deref(),
        Some("/etc/kratos-operator/ca/ca.crt")
    );
    assert_eq!(
        env_value(deployment, "KRATOS_PUBLIC_URL").as_deref(),
        Some("https://kratos.example.com")
    );
    assert_eq!(
        env_value(deployment, "KRATOS_RATE_LIMIT").as_deref(),
        Some("50")
    );
    let volumes = spec["volumes"].as_array().unwrap();
    let token = volumes
        .iter()
        .find(|v| v["name"] == "kratos-token")
        .unwrap();
    assert_eq!(
        token["secret"],
        json!({ "secretName": "ory-token", "items": [{ "key": "api-key", "path": "token" }] })
    );
    let ca = volumes.iter().find(|v| v["name"] == "kratos-ca").unwrap();
    assert_eq!(ca["configMap"]["name"], "corp-ca");
    // Directory mounts (no subPath), so that a rotated token or CA reaches the running pod.
    for mount in spec["containers"][0]["volumeMounts"].as_array().unwrap() {
        assert!(mount.get("subPath").is_none(), "{mount}");
    }
}

#[test]
fn the_knobs_render_where_asked_and_leave_the_defaults_alone() {
    let admin = admin_url_arg();
    let knobs = knob_args();
    let mut args = vec!["--set", admin.as_str()];
    args.extend(knobs.iter().map(String::as_str));
    let docs = json_documents(&render("ops", "kratos-system", &args));
    let deployment = find(&docs, "Deployment", "ops-kratos-operator");
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    // The digest wins over the tag.
    assert_eq!(
        container["image"],
        format!("ghcr.io/kratos-operator/kratos-operator@{DIGEST}")
    );
    assert_eq!(
        container["args"],
        json!(["run", "--batch-creates=false", "--drift-sweeps=false"])
    );
    // Extra volumes and mounts come after the chart's own, which stay.
    let volumes = spec["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["name"], "tmp");
    assert_eq!(
        volumes.last().unwrap(),
        &json!({ "name": "scratch", "emptyDir": { "sizeLimit": "1Mi" } })
    );
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert_eq!(mounts[0]["mountPath"], "/tmp");
    assert_eq!(
        mounts.last().unwrap(),
        &json!({ "name": "scratch", "mountPath": "/scratch", "readOnly": true })
    );
    assert_eq!(
        deployment["spec"]["strategy"],
        json!({ "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 0, "maxUnavailable": 1 } })
    );
    // Probe timings merge over the defaults (null drops one); the handlers stay the chart's.
    assert_eq!(
        container["livenessProbe"],
        json!({
            "httpGet": { "path": "/healthz", "port": "metrics" },
            "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3,
            "terminationGracePeriodSeconds": 7,
        })
    );
    assert_eq!(
        container["readinessProbe"],
        json!({
            "httpGet": { "path": "/readyz", "port": "metrics" },
            "periodSeconds": 2, "successThreshold": 1, "failureThreshold": 3,
        })
    );
    let monitor = find(&docs, "ServiceMonitor", "ops-kratos-operator");
    assert_eq!(monitor["metadata"]["namespace"], "monitoring");
    // It still scrapes the Service in the release namespace.
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!(["kratos-system"])
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        endpoint["relabelings"],
        json!([{ "action": "replace", "targetLabel": "team", "replacement": "idp" }])
    );
    assert_eq!(
        endpoint["metricRelabelings"],
        json!([{ "action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*" }])
    );

    let policy = find(&docs, "NetworkPolicy", "ops-kratos-operator");
    assert_eq!(policy["metadata"]["namespace"], "kratos-system");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            &pod_labels[k], v,
            "the policy selects the operator's pods: {k}"
        );
    }
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{
            "ports": [{ "port": 8080, "protocol": "TCP" }],
            "from": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "monitoring" } } }],
        }])
    );
    let tcp = |ports: &[u16]| -> Value {
        ports
            .iter()
            .map(|p| json!({ "port": p, "protocol": "TCP" }))
            .collect()
    };
    assert_eq!(
        policy["spec"]["egress"],
        json!([
            // Kratos: the admin URL's port and the public URL's (https, no port: 443).
            {
                "ports": tcp(&[4434, 443]),
                "to": [{
                    "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kratos" } },
                    "podSelector": { "matchLabels": { "app.kubernetes.io/name": "kratos" } },
                }],
            },
            {
                "ports": tcp(&[6443]),
                "to": [{ "ipBlock": { "cidr": "10.0.0.1/32" } }, { "ipBlock": { "cidr": "fd00::1/128" } }],
            },
            {
                "ports": [{ "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" }],
                "to": [{ "ipBlock": { "cidr": "10.96.0.10/32" } }],
            },
            { "to": [{ "ipBlock": { "cidr": "10.1.0.0/16" } }], "ports": tcp(&[3128]) },
        ])
    );

    // The NetworkPolicy's defaults: any peer on the ports of the Kratos URLs (Kratos' public
    // port 4433 without a public URL), 443 and 6443 for the API server, DNS anywhere.
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &["--set", &admin, "--set", "networkPolicy.enabled=true"],
    ));
    let policy = find(&docs, "NetworkPolicy", "ops-kratos-operator");
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{ "ports": tcp(&[8080]) }])
    );
    assert_eq!(
        policy["spec"]["egress"],
        json!([
            { "ports": tcp(&[4434, 4433]) },
            { "ports": tcp(&[443, 6443]) },
            { "ports": [{ "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" }] },
        ])
    );
    // Ports from the URLs: an http URL without a port is 80, one port appears once; explicit
    // ports replace them; DNS can be turned off.
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            "kratos.adminUrl=http://kratos-admin.kratos,kratos.publicUrl=http://kratos-public.kratos:80",
            "--set",
            "networkPolicy.enabled=true,networkPolicy.dns.enabled=false,metrics.port=9090",
        ],
    ));
    let policy = find(&docs, "NetworkPolicy", "ops-kratos-operator");
    assert_eq!(policy["spec"]["ingress"][0]["ports"], tcp(&[9090]));
    assert_eq!(policy["spec"]["egress"][0]["ports"], tcp(&[80]));
    assert_eq!(policy["spec"]["egress"].as_array().unwrap().len(), 2);
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            &admin,
            "--set",
            "networkPolicy.enabled=true,networkPolicy.kratos.ports={4434,14433}",
        ],
    ));
    let policy = find(&docs, "NetworkPolicy", "ops-kratos-operator");
    assert_eq!(policy["spec"]["egress"][0]["ports"], tcp(&[4434, 14433]));

    // Without leader election the default is Recreate, and Recreate may be asked for.
    for strategy in [vec![], vec!["--set", "strategy.type=Recreate"]] {
        let mut args = vec![
            "--set",
            admin.as_str(),
            "--set",
            "leaderElection.enabled=false",
        ];
        args.extend(strategy);
        let docs = json_documents(&render("ops", "kratos-system", &args));
        assert_eq!(
            find(&docs, "Deployment", "ops-kratos-operator")["spec"]["strategy"],
            json!({ "type": "Recreate" })
        );
    }
    // The defaults of every knob render nothing new: no NetworkPolicy, the chart's volumes only.
    let docs = json_documents(&render("ops", "kratos-system", &["--set", &admin]));
    assert!(!docs.iter().any(|d| d["kind"] == "NetworkPolicy"));
    let spec = &find(&docs, "Deployment", "ops-kratos-operator")["spec"]["template"]["spec"];
    assert_eq!(spec["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(
        spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// The alerts of the PrometheusRule.
const ALERTS: [&str; 7] = [
    "KratosOperatorKratosUnreachable",
    "KratosOperatorIdentitiesNotReady",
    "KratosOperatorReconcileErrors",
    "KratosOperatorEventsDropped",
    "KratosOperatorStatusWritesStuck",
    "KratosOperatorMemoryNearLimit",
    "KratosOperatorNoLeader",
];

/// The PromQL expressions of the rendered PrometheusRule and Grafana dashboard: each alert's
/// `expr`, each panel target's and each template variable's query.
fn monitoring_expressions(docs: &[Value]) -> Vec<String> {
    let mut exprs = Vec::new();
    for d in docs.iter().filter(|d| d["kind"] == "PrometheusRule") {
        for group in d["spec"]["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                exprs.push(rule["expr"].as_str().unwrap().to_string());
            }
        }
    }
    for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
        for text in d["data"].as_object().unwrap().values() {
            let dashboard: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
            for panel in dashboard["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    exprs.push(target["expr"].as_str().unwrap().to_string());
                }
            }
            for variable in dashboard["templating"]["list"].as_array().unwrap() {
                if let Some(q) = variable["query"]["query"].as_str() {
                    exprs.push(q.to_string());
                }
            }
        }
    }
    exprs
}

/// The chart rendered with its alerts and its dashboard (release `ops` in `kratos-system`).
fn monitoring_docs() -> Vec<Value> {
    let admin = admin_url_arg();
    json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            &admin,
            "--set",
            "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        ],
    ))
}

/// Every alert and dashboard expression is PromQL that Prometheus' grammar accepts: Grafana's
/// `$__rate_interval` is put in as the duration it stands for, and a template variable's
/// `label_values(<selector>, <label>)` (Grafana's, not PromQL) has its selector parsed.
#[test]
fn every_alert_and_dashboard_expression_parses_as_promql() {
    let docs = monitoring_docs();
    let exprs = monitoring_expressions(&docs);
    assert!(exprs.len() > ALERTS.len() + 10, "{exprs:?}");
    let mut failures = Vec::new();
    for expr in &exprs {
        let promql = match expr
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
        {
            Some((selector, _label)) => selector.to_string(),
            None => expr.replace("$__rate_interval", "5m"),
        };
        if let Err(e) = promql_parser::parser::parse(&promql) {
            failures.push(format!("{expr}\n  -> {e}"));
        }
    }
    assert!(failures.is_empty(), "not PromQL:\n{}", failures.join("\n"));
    // The parser refuses what Prometheus refuses.
    assert!(
        promql_parser::parser::parse("sum(rate(kratos_operator_reconciles_total[5m])").is_err()
    );
}

/// The metric names a PromQL expression selects: identifiers followed by `{` or `[`, and every
/// identifier starting with `kratos_` (quoted strings and label matchers skipped).
fn promql_metric_names(expr: &str) -> std::collections::BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = std::collections::BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            let preceded_by_dollar = i > 0 && chars[i - 1] == '$';
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if !preceded_by_dollar
                && (word.starts_with("kratos_") || matches!(next, Some('{' | '[')))
            {
                names.insert(word);
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (5m): not a name.
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_finds_selectors_only() {
    let names = promql_metric_names(
        r#"(sum by (kind, le) (rate(kratos_a_total{job="x",reason!="kratos_not_a_metric"}[5m])) or vector(0)) > 0 unless on () up{job=~"$job"} and histogram_quantile(0.9, kratos_b_bucket) + foo[1m]"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["foo", "kratos_a_total", "kratos_b_bucket", "up"]
    );
}

#[test]
fn the_alerts_and_the_dashboard_render_when_enabled() {
    let admin = admin_url_arg();
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            &admin,
            "--set",
            "prometheusRule.enabled=true,prometheusRule.labels.release=prom,prometheusRule.alertLabels.team=idp",
            "--set",
            "prometheusRule.namespace=monitoring,prometheusRule.leaderMissingAfter=30m",
            "--set",
            "grafanaDashboard.enabled=true,grafanaDashboard.namespace=grafana",
        ],
    ));
    let rule = find(&docs, "PrometheusRule", "ops-kratos-operator");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(names, ALERTS);
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        // Every selector picks this release's series, as its ServiceMonitor labels them.
        let selectors = expr.matches('{').count();
        assert!(selectors > 0, "{expr}");
        assert_eq!(
            expr.matches(r#"{namespace="kratos-system",job="ops-kratos-operator-metrics""#)
                .count(),
            selectors,
            "{expr}"
        );
        assert_eq!(r["labels"]["team"], "idp", "{r}");
        assert!(
            ["critical", "warning", "info"].contains(&r["labels"]["severity"].as_str().unwrap()),
            "{r}"
        );
        let anchor = r["alert"].as_str().unwrap().to_lowercase();
        assert!(
            r["annotations"]["runbook_url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("docs/metrics.md#{anchor}")),
            "{r}"
        );
    }
    assert_eq!(rules[5]["alert"], "KratosOperatorMemoryNearLimit");
    assert_eq!(rules[5]["for"], "15m", "{}", rules[5]);
    assert_eq!(rules[6]["alert"], "KratosOperatorNoLeader");
    assert_eq!(rules[6]["for"], "30m", "{}", rules[6]);
    // Alert templates reach Prometheus as templates, not rendered by Helm.
    assert!(
        rules[2]["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("{{ $labels.kind }}")
    );
    let dashboard = find(&docs, "ConfigMap", "ops-kratos-operator-dashboard");
    assert_eq!(dashboard["metadata"]["namespace"], "grafana");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(dashboard["data"]["kratos-operator.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "kratos-operator");
    assert!(json["panels"].as_array().unwrap().len() >= 10);
    let exprs = monitoring_expressions(&docs);
    assert!(exprs.len() > ALERTS.len() + 10, "{exprs:?}");
    // A selector of the user's, and the severity replaced.
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            &admin,
            "--set",
            r#"prometheusRule.enabled=true,prometheusRule.selector=cluster="eu"\,app="ko",prometheusRule.alertLabels.severity=page"#,
        ],
    ));
    let rule = find(&docs, "PrometheusRule", "ops-kratos-operator");
    assert_eq!(rule["metadata"]["namespace"], "kratos-system");
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        assert!(expr.contains(r#"{cluster="eu",app="ko""#), "{expr}");
        assert!(!expr.contains("job="), "{expr}");
        assert_eq!(r["labels"]["severity"], "page");
    }
    // Off by default.
    let docs = json_documents(&render("ops", "kratos-system", &["--set", &admin]));
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "PrometheusRule" || d["kind"] == "ConfigMap")
    );
}

/// Kinds without a namespace.
const CLUSTER_SCOPED: [&str; 6] = [
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
];

/// The admission policies: the tenancy ones refuse with the operator's own words and follow
/// `tenancy.enforce`; the one on the operator's Secret writes judges exactly the release's
/// ServiceAccount and has its own switch.
#[test]
fn admission_policies_follow_their_values_and_speak_the_operators_words() {
    use kratos_operator::tenancy::NamespacePolicy;
    let admin = admin_url_arg();
    let docs = json_documents(&render("ops", "kratos-system", &["--set", &admin]));
    let none = NamespacePolicy::from_metadata(&Default::default(), &Default::default());
    for (policy, refusal) in [
        ("identity-adoption", none.check_adoption().unwrap_err()),
        ("recovery-by-id", none.check_recovery_by_id().unwrap_err()),
    ] {
        let name = format!("ops-kratos-operator-{policy}");
        let vap = find(&docs, "ValidatingAdmissionPolicy", &name);
        assert_eq!(vap["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(vap["spec"]["failurePolicy"], "Fail");
        assert_eq!(
            vap["spec"]["matchConstraints"]["resourceRules"][0]["operations"],
            json!(["CREATE", "UPDATE"])
        );
        let validations = vap["spec"]["validations"].as_array().unwrap();
        assert_eq!(validations.len(), 1);
        assert_eq!(validations[0]["message"], refusal.as_str(), "{policy}");
        assert_eq!(validations[0]["reason"], "Forbidden");
        let binding = find(&docs, "ValidatingAdmissionPolicyBinding", &name);
        assert_eq!(binding["spec"]["policyName"], name.as_str());
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        // Cluster mode: every namespace.
        assert_eq!(
            binding["spec"]["matchResources"]["namespaceSelector"],
            json!({})
        );
    }
    let secrets = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "ops-kratos-operator-operator-secrets",
    );
    assert_eq!(
        secrets["spec"]["matchConditions"],
        json!([{
            "name": "by-the-operator",
            "expression": "request.userInfo.username == 'system:serviceaccount:kratos-system:ops-kratos-operator'"
        }])
    );
    assert_eq!(
        find(
            &docs,
            "ValidatingAdmissionPolicyBinding",
            "ops-kratos-operator-operator-secrets"
        )["spec"]["validationActions"],
        json!(["Deny"])
    );
    // An existing ServiceAccount: the policy names that one.
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            &admin,
            "--set",
            "serviceAccount.create=false,serviceAccount.name=shared-operator",
        ],
    ));
    let secrets = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "ops-kratos-operator-operator-secrets",
    );
    assert_eq!(
        secrets["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:kratos-system:shared-operator'"
    );

    // tenancy.enforce=false: no tenancy policy, no Namespace read, the operator told so; the
    // Secret policy stays.
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &["--set", &admin, "--set", "tenancy.enforce=false"],
    ));
    let mut policies: Vec<String> = kinds_and_names(&docs)
        .into_iter()
        .filter(|n| n.starts_with("ValidatingAdmissionPolicy"))
        .collect();
    policies.sort();
    assert_eq!(
        policies,
        [
            "ValidatingAdmissionPolicy/ops-kratos-operator-operator-secrets",
            "ValidatingAdmissionPolicyBinding/ops-kratos-operator-operator-secrets",
        ]
    );
    let deployment = find(&docs, "Deployment", "ops-kratos-operator");
    assert_eq!(
        env_value(deployment, "TENANCY_ENFORCE").as_deref(),
        Some("false")
    );
    let cluster_role = find(&docs, "ClusterRole", "ops-kratos-operator");
    assert!(
        !cluster_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["namespaces"])),
        "{cluster_role}"
    );
    // And the Secret policy off too: no policy at all.
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            &admin,
            "--set",
            "tenancy.enforce=false,admissionPolicies.operatorSecrets=false",
        ],
    ));
    assert!(
        !docs.iter().any(|d| d["kind"]
            .as_str()
            .unwrap()
            .starts_with("ValidatingAdmissionPolicy")),
        "{:?}",
        kinds_and_names(&docs)
    );
    // The Secret policy off alone: the tenancy policies stay.
    let docs = json_documents(&render(
        "ops",
        "kratos-system",
        &[
            "--set",
            &admin,
            "--set",
            "admissionPolicies.operatorSecrets=false",
        ],
    ));
    let policies: Vec<String> = kinds_and_names(&docs)
        .into_iter()
        .filter(|n| n.starts_with("ValidatingAdmissionPolicy/"))
        .collect();
    assert_eq!(policies.len(), 2, "{policies:?}");
    assert!(!policies.iter().any(|p| p.ends_with("operator-secrets")));
}

/// The finalizer policy (Kubernetes 1.36 and newer): rendered only where the release under test
/// serves MutatingAdmissionPolicy, never with a labelSelector (a shard) or when switched off;
/// installed, it puts the operator's finalizer on every new Identity of the namespaces the
/// release serves, once, on CREATE only, and leaves other namespaces alone.
#[tokio::test]
async fn the_finalizer_policy_puts_the_finalizer_on_new_identities_where_it_is_served() {
    const POLICY: &str = "MutatingAdmissionPolicy";
    let t = setup("chart-finalizer").await;
    let served = chart_support::serves_mutating_admission_policies();
    let discovered = t
        .client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
        .unwrap()
        .resources
        .iter()
        .any(|r| r.name == "mutatingadmissionpolicies");
    assert_eq!(
        discovered, served,
        "the API server disagrees with its release"
    );
    let release = unique_name("fin");
    let admin = admin_url_arg();
    let watch = format!("watchNamespaces={{{}}}", t.namespace);
    let policies = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["--set", admin.as_str(), "--set", watch.as_str()];
        args.extend_from_slice(extra);
        json_documents(&render(&release, &t.namespace, &args))
            .into_iter()
            .filter(|d| d["kind"].as_str().unwrap().starts_with(POLICY))
            .collect()
    };
    assert!(policies(&["--set", "labelSelector=shard=a"]).is_empty());
    assert!(policies(&["--set", "admissionPolicies.identityFinalizer=false"]).is_empty());
    assert!(policies(&["--kube-version", "v1.35.4"]).is_empty());
    let docs = policies(&[]);
    if !served {
        assert!(docs.is_empty(), "{docs:?}");
        t.cleanup().await;
        return;
    }
    assert_eq!(docs.len(), 2, "{docs:?}");
    let name = format!("{release}-kratos-operator-identity-finalizer");
    let binding = find(&docs, "MutatingAdmissionPolicyBinding", &name);
    assert_eq!(binding["spec"]["policyName"], name.as_str());
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!([t.namespace])
    );
    let policy = find(&docs, POLICY, &name);
    assert_eq!(policy["spec"]["failurePolicy"], "Ignore");
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"],
        json!(["CREATE"])
    );
    let manifests = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let kubeconfig = &t.env.state.kubeconfig;
    let out = kubectl_run(
        kubeconfig,
        &["apply", "--server-side", "-f", "-"],
        Some(&manifests),
    );
    assert!(out.status.success(), "{}", describe(&out));

    let other = setup("chart-finalizer-other").await;
    let identity = |name: &str, finalizers: Value| {
        json!({
            "apiVersion": "kratos-operator.dev/v1alpha1",
            "kind": "Identity",
            "metadata": { "name": name, "finalizers": finalizers },
            "spec": { "schemaId": "customer", "traits": { "email": format!("{name}@finalizer.test") } }
        })
    };
    let finalizers_of = |namespace: &str, object: &Value| -> Value {
        let out = kubectl_run(
            kubeconfig,
            &["create", "-n", namespace, "-o", "json", "-f", "-"],
            Some(&object.to_string()),
        );
        assert!(out.status.success(), "{}", describe(&out));
        let created: Value = serde_json::from_slice(&out.stdout).unwrap();
        created["metadata"]["finalizers"].clone()
    };
    // The policy takes effect once the API server has loaded it: a dry-run create shows when.
    let probe = identity("probe", json!(null));
    eventually("the policy in effect", Duration::from_secs(30), || {
        let out = kubectl_run(
            kubeconfig,
            &[
                "create",
                "-n",
                &t.namespace,
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&probe.to_string()),
        );
        let created: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let in_effect = created["metadata"]["finalizers"] == json!([FINALIZER]);
        async move { in_effect.then_some(()) }
    })
    .await;
    assert_eq!(
        finalizers_of(&t.namespace, &identity("new", json!(null))),
        json!([FINALIZER])
    );
    assert_eq!(
        finalizers_of(
            &t.namespace,
            &identity("others", json!(["example.com/keep"]))
        ),
        json!(["example.com/keep", FINALIZER])
    );
    assert_eq!(
        finalizers_of(&t.namespace, &identity("already", json!([FINALIZER]))),
        json!([FINALIZER])
    );
    // A namespace the release does not serve: nothing added.
    assert_eq!(
        finalizers_of(&other.namespace, &identity("elsewhere", json!(null))),
        Value::Null
    );
    // CREATE only: an update that removes the finalizer (as the operator does once it has cleaned
    // up) keeps it removed.
    let out = kubectl_run(
        kubeconfig,
        &[
            "patch",
            "identity",
            "new",
            "-n",
            &t.namespace,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
            "-o",
            "json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let patched: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(patched["metadata"]["finalizers"], Value::Null);

    // No operator runs here: take the finalizers off so that the namespace can go.
    for name in ["others", "already"] {
        let out = kubectl_run(
            kubeconfig,
            &[
                "patch",
                "identity",
                name,
                "-n",
                &t.namespace,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
            None,
        );
        assert!(out.status.success(), "{}", describe(&out));
    }
    let out = kubectl_run(kubeconfig, &["delete", "-f", "-"], Some(&manifests));
    assert!(out.status.success(), "{}", describe(&out));
    other.cleanup().await;
    t.cleanup().await;
}

/// Every environment variable with a literal value is one the operator reads, and its value
/// parses as the corresponding flag's value; the container's arguments (`run` and extraArgs)
/// parse together with them.
#[test]
fn every_rendered_environment_variable_is_an_operator_flag_with_a_valid_value() {
    use clap::CommandFactory;
    let command = kratos_operator::config::Cli::command();
    let flags: Vec<(String, String, bool)> = command
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            let long = a.get_long()?.to_string();
            let is_bool = !a.get_action().takes_values();
            Some((env, long, is_bool))
        })
        .collect();
    for args in [
        vec!["--set".to_string(), admin_url_arg()],
        vec![
            "--set".to_string(),
            admin_url_arg(),
            "--set".to_string(),
            "watchNamespaces={a,b},leaderElection.enabled=false,logFormat=text".to_string(),
            "--set".to_string(),
            "kratos.tokenSecret.name=t,kratos.ca.secret.name=c,kratos.rateLimit=2.5".to_string(),
            "--set".to_string(),
            "kratos.publicUrl=https://k.example.com,resyncInterval=1h30m".to_string(),
            "--set".to_string(),
            "tenancy.enforce=false".to_string(),
        ],
        [vec!["--set".to_string(), admin_url_arg()], knob_args()].concat(),
        // An extra argument for a flag the chart sets through the environment: the argument wins.
        vec![
            "--set".to_string(),
            admin_url_arg(),
            "--set-json".to_string(),
            r#"extraArgs=["--resync-interval=2m","--batch-creates","false"]"#.to_string(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let docs = json_documents(&render("env", "default", &args));
        let deployment = find(&docs, "Deployment", "env-kratos-operator");
        let container_args: Vec<String> =
            deployment["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().expect("string argument").to_string())
                .collect();
        assert_eq!(container_args[0], "run", "{container_args:?}");
        let mut argv = vec!["kratos-operator".to_string()];
        argv.extend(container_args.iter().cloned());
        for (name, e) in env_of(deployment) {
            // Read by the operator outside clap: the pod identity and the log filter.
            if ["POD_NAME", "POD_NAMESPACE", "RUST_LOG"].contains(&name.as_str()) {
                continue;
            }
            let (_, long, is_bool) = flags
                .iter()
                .find(|(env, _, _)| *env == name)
                .unwrap_or_else(|| panic!("{name} is not read by any operator flag"));
            let value = e["value"].as_str().expect("literal value").to_string();
            // A flag given as an argument overrides its environment variable (clap's order).
            let flag = format!("--{long}");
            if container_args
                .iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
            {
                continue;
            }
            if *is_bool {
                assert!(
                    ["true", "false"].contains(&value.as_str()),
                    "{name}={value}"
                );
                if value == "true" {
                    argv.push(format!("--{long}"));
                }
            } else {
                argv.push(format!("--{long}={value}"));
            }
        }
        if let Err(e) = <kratos_operator::config::Cli as clap::Parser>::try_parse_from(&argv) {
            panic!("the operator rejects the chart's environment {argv:?}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server-side dry-run against the real apiserver

/// `kubectl apply --dry-run=server` of every rendered document except those whose API the test
/// apiserver does not serve (the Prometheus Operator's ServiceMonitor and PrometheusRule, checked
/// above).
fn server_dry_run(t: &TestEnv, manifests: &str) {
    let docs: Vec<&str> = manifests
        .split("\n---\n")
        .filter(|d| !d.contains("kind: ServiceMonitor\n") && !d.contains("kind: PrometheusRule\n"))
        .collect();
    let input = docs.join("\n---\n");
    let out = kubectl_run(
        &t.env.state.kubeconfig,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&input),
    );
    assert!(out.status.success(), "server dry-run: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = json_documents(&input).len();
    assert_eq!(
        stdout.matches("(server dry run)").count(),
        expected,
        "{stdout}"
    );
}

#[tokio::test]
async fn rendered_manifests_pass_a_server_side_dry_run_in_every_mode() {
    let t = setup("chart-dry-run").await;
    let release = unique_name("dry");
    let admin = admin_url_arg();
    let watch = format!("watchNamespaces={{{},default}}", t.namespace);
    let knobs = knob_args();
    for extra in [
        vec!["--include-crds"],
        vec!["--set", watch.as_str()],
        vec!["--set", "tenancy.enforce=false"],
        vec![
            "--set",
            "serviceMonitor.enabled=true,podDisruptionBudget.enabled=true,replicas=2",
            "--set",
            "kratos.tokenSecret.name=kratos-token,kratos.ca.secret.name=kratos-ca",
        ],
        knobs.iter().map(String::as_str).collect(),
        vec!["--set", "networkPolicy.enabled=true"],
        vec![
            "--set",
            "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
            "--set",
            "grafanaDashboard.annotations.grafana_folder=Identity",
        ],
    ] {
        let mut args = vec!["--set", admin.as_str()];
        args.extend(extra);
        let manifests = render(&release, &t.namespace, &args);
        server_dry_run(&t, &manifests);
    }
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Metrics: what the alerts, the dashboard and docs/metrics.md name is what the operator exports

/// The operator binary, stopped when dropped.
struct OperatorProcess(std::process::Child);

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the operator binary on the test's namespace with `public_url` as Kratos' public URL,
/// applies an Identity `name` and returns its /metrics text once it shows every one of `series`.
async fn operator_metrics_after_work(
    t: &TestEnv,
    public_url: &str,
    name: &str,
    series: &[&str],
) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("{}-{name}.log", t.namespace)))
            .unwrap();
    let _operator = OperatorProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_kratos-operator"))
            .env("KUBECONFIG", &t.env.state.kubeconfig)
            .env("KRATOS_ADMIN_URL", &t.kratos_admin_url)
            .env("KRATOS_PUBLIC_URL", public_url)
            .env("WATCH_NAMESPACE", &t.namespace)
            .env("LEADER_ELECT", "false")
            .env("POD_NAMESPACE", &t.namespace)
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the operator binary"),
    );
    support::apply::<kratos_operator::api::Identity>(
        t,
        json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity", "metadata": { "name": name },
            "spec": { "schemaId": "customer", "traits": { "email": format!("{name}.{}@example.com", t.namespace) } } }),
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    eventually(
        &format!("the operator's /metrics to show {series:?}"),
        std::time::Duration::from_secs(60),
        || async {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            series
                .iter()
                .all(|s| text.contains(&format!("\n{s}")))
                .then_some(text)
        },
    )
    .await
}

/// The sample names declared (`# TYPE` lines) by a running operator's /metrics after it synced
/// an Identity, and after it failed one (Kratos' public API, where schemas are read, down): a
/// family appears once it has a series. Counters as `_total`, histograms as `_bucket`, `_sum`
/// and `_count`.
async fn exported_metric_names(t: &TestEnv) -> std::collections::BTreeSet<String> {
    support::install_crds(&t.client).await;
    let synced = operator_metrics_after_work(
        t,
        &t.kratos_public_url,
        "metrics-synced",
        &[
            "kratos_operator_identity_changes_total{action=\"created\"}",
            "kratos_operator_reconcile_outcomes_total{kind=\"Identity\",reason=\"Synced\"}",
        ],
    )
    .await;
    let failed = operator_metrics_after_work(
        t,
        "http://127.0.0.1:9",
        "metrics-failed",
        &[
            "kratos_operator_reconcile_failures_total",
            "kratos_client_retries_total",
        ],
    )
    .await;
    let mut names = std::collections::BTreeSet::new();
    for line in synced.lines().chain(failed.lines()) {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "gauge" => &[""],
            other => panic!("{name}: unexpected metric type {other}"),
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// The metric names docs/metrics.md mentions (`kratos_operator_...`, `kratos_client_...`).
fn documented_metric_names() -> std::collections::BTreeSet<String> {
    let doc = std::fs::read_to_string(repo().join("docs").join("metrics.md")).unwrap();
    doc.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("kratos_operator_") || w.starts_with("kratos_client_"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn every_metric_the_alerts_the_dashboard_and_the_docs_name_is_exported() {
    let t = setup("chart-metrics").await;
    let exported = exported_metric_names(&t).await;
    // Both registries' families, labelled ones included.
    for name in [
        "kratos_operator_reconciles_total",
        "kratos_operator_reconcile_duration_seconds_bucket",
        "kratos_operator_status_writes_queued",
        "kratos_client_calls_total",
    ] {
        assert!(exported.contains(name), "{name} in {exported:?}");
    }
    let docs = monitoring_docs();
    let mut used = std::collections::BTreeSet::new();
    for expr in monitoring_expressions(&docs) {
        let names = promql_metric_names(&expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        used.extend(names);
    }
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the alerts or the dashboard use metrics the operator does not export: {unknown:?}; it exports {exported:?}"
    );
    // docs/metrics.md describes every family, and nothing else.
    let documented = documented_metric_names();
    let families: std::collections::BTreeSet<String> = exported
        .iter()
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect();
    let undocumented: Vec<&String> = families.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "docs/metrics.md does not describe {undocumented:?}"
    );
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|d| !exported.contains(*d) && !families.contains(*d))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/metrics.md names metrics the operator does not export: {unknown:?}"
    );
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Pod security

fn pod_specs(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| d["spec"]["template"].clone())
        .collect()
}

/// The `restricted` profile, checked field by field (plus resources, which it does not require
/// but this chart promises).
fn assert_restricted(template: &Value) {
    let spec = &template["spec"];
    let pod = &spec["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true, "{pod}");
    assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault", "{pod}");
    assert!(pod["runAsUser"].as_i64().is_some_and(|u| u != 0), "{pod}");
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(spec.get(key).is_none_or(|v| v == false), "{key}");
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        assert!(volume.get("hostPath").is_none(), "{volume}");
    }
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect();
    assert!(!containers.is_empty());
    for c in containers {
        let sc = &c["securityContext"];
        let name = &c["name"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert!(sc.get("privileged").is_none_or(|v| v == false), "{name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(sc["capabilities"].get("add").is_none(), "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][resource].is_string(),
                    "{name}: resources.{kind}.{resource}"
                );
            }
        }
        for port in c["ports"].as_array().into_iter().flatten() {
            assert!(port.get("hostPort").is_none(), "{name}");
        }
    }
}

#[test]
fn every_container_runs_with_the_restricted_settings_in_every_mode() {
    let admin = admin_url_arg();
    let knobs = knob_args();
    for extra in [
        knobs.iter().map(String::as_str).collect(),
        vec![],
        vec!["--set", "watchNamespaces={a}"],
        vec![
            "--set",
            "replicas=2,kratos.tokenSecret.name=t,kratos.ca.configMap.name=c",
        ],
    ] {
        let mut args = vec!["--set", admin.as_str()];
        args.extend(extra);
        let docs = json_documents(&render("psa", "default", &args));
        let templates = pod_specs(&docs);
        assert_eq!(templates.len(), 1);
        for template in &templates {
            assert_restricted(template);
        }
    }
}

/// A Pod made from the rendered pod template, dry-run created in a namespace that enforces the
/// `restricted` Pod Security Standard: the apiserver's PodSecurity admission is the judge.
async fn pod_admitted(t: &TestEnv, template: &Value) -> Result<(), String> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": unique_name("psa"), "namespace": t.namespace, "labels": template["metadata"]["labels"] },
        "spec": template["spec"],
    });
    let out = kubectl_run(
        &t.env.state.kubeconfig,
        &["create", "--dry-run=server", "-f", "-"],
        Some(&pod.to_string()),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(describe(&out))
    }
}

#[tokio::test]
async fn the_apiserver_admits_the_pod_under_the_restricted_pod_security_standard() {
    let t = setup("chart-psa").await;
    let namespaces: Api<Namespace> = Api::all(t.client.clone());
    namespaces
        .patch(
            &t.namespace,
            &PatchParams::apply("kratos-operator-tests").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": t.namespace, "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "v1.33",
                } }
            })),
        )
        .await
        .unwrap();
    let admin = admin_url_arg();
    let docs = json_documents(&render(
        "psa",
        &t.namespace,
        &["--set", &admin, "--set", "kratos.tokenSecret.name=t"],
    ));
    let template = pod_specs(&docs).remove(0);
    // The ServiceAccount admission plugin refuses a pod whose ServiceAccount does not exist;
    // `helm install` creates it with the Deployment.
    kubectl_run(
        &t.env.state.kubeconfig,
        &[
            "-n",
            &t.namespace,
            "create",
            "serviceaccount",
            "psa-kratos-operator",
        ],
        None,
    );

    // The check bites: the same pod with privilege escalation allowed is refused. PodSecurity
    // admission reads the Namespace from the apiserver's informer cache, which may still hold it
    // without the labels: wait until the policy is in force, then judge the chart's pod.
    let weakened = json_documents(&render(
        "psa",
        &t.namespace,
        &[
            "--set",
            &admin,
            "--set",
            "securityContext.allowPrivilegeEscalation=true",
        ],
    ));
    let weakened = pod_specs(&weakened).remove(0);
    let err = eventually(
        "the restricted policy to refuse a pod allowing privilege escalation",
        std::time::Duration::from_secs(30),
        || async { pod_admitted(&t, &weakened).await.err() },
    )
    .await;
    assert!(err.contains("allowPrivilegeEscalation"), "{err}");
    pod_admitted(&t, &template)
        .await
        .unwrap_or_else(|e| panic!("the restricted namespace refuses the chart's pod: {e}"));
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// CRDs

/// The chart carries exactly the generated CRDs. `UPDATE_CRDS=1` copies `crds/` into the chart.
#[test]
fn chart_crds_are_the_generated_crds() {
    let source = read_tree(&repo().join("crds"));
    assert!(
        source.len() >= 3,
        "crds/ holds the generated CRDs: {source:?}"
    );
    let chart_crds = chart_dir().join("crds");
    if std::env::var_os("UPDATE_CRDS").is_some() {
        write_tree(&chart_crds, &source);
    }
    let diff = tree_diff(&source, &read_tree(&chart_crds));
    assert!(
        diff.is_empty(),
        "charts/kratos-operator/crds differs from crds/: {diff:?}; run `UPDATE_CRDS=1 cargo test --test chart`"
    );
}

// ---------------------------------------------------------------------------------------------
// README

/// The chart's README is what `cargo xtask generate` makes of values.yaml: every key documented,
/// typed by the schema, with its current default.
#[test]
fn chart_readme_is_generated_from_the_values() {
    let dir = chart_dir();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let values = read("values.yaml");
    let want = chart_readme::readme(&values, &read("values.schema.json"), &read("Chart.yaml"))
        .unwrap_or_else(|e| panic!("values.yaml does not document itself: {e}"));
    let have = std::fs::read_to_string(dir.join("README.md")).unwrap_or_default();
    chart_support::assert_generated("charts/kratos-operator/README.md", &have, &want);
    // The table covers the knobs, with their defaults.
    for row in [
        "| `extraArgs` | list of string | `[]` |",
        "| `image.digest` | string | `\"\"` |",
        "| `networkPolicy.enabled` | boolean | `false` |",
        "| `networkPolicy.apiServer.ports` | list of integer | `[443,6443]` |",
    ] {
        assert!(want.contains(row), "{row}");
    }
}
