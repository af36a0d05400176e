//! Helpers of the chart, RBAC and deploy tests: the Helm and kubectl binaries the test
//! environment built, rendering the chart, and splitting multi-document YAML.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use kratos_operator_testenv::build;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo().join("charts").join("kratos-operator")
}

/// The Kratos admin URL the rendered manifests use where no real one is needed.
pub const PLACEHOLDER_ADMIN_URL: &str = "http://kratos-admin.kratos.svc.cluster.local:4434";

/// The Helm this run tests with (`$KRATOS_OPERATOR_TESTENV_HELM`: Helm 4 unless it says 3).
pub fn helm_release() -> build::Component {
    build::helm_from_env().unwrap_or_else(|e| panic!("{e}"))
}

/// The Kubernetes release this run tests (`$KRATOS_OPERATOR_TESTENV_KUBERNETES`: the newest
/// unless it says oldest).
pub fn kubernetes_release() -> build::Component {
    build::kubernetes_from_env().unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the release under test serves `admissionregistration.k8s.io/v1`
/// MutatingAdmissionPolicy (generally available, and on by default, since Kubernetes 1.36): the
/// chart then renders its finalizer policy.
pub fn serves_mutating_admission_policies() -> bool {
    let version = kubernetes_release().version;
    version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|minor| minor.parse::<u32>().ok())
        .is_some_and(|minor| minor >= 36)
}

/// The Helm binary built by the test environment.
pub fn helm() -> PathBuf {
    helm_release().binary("helm").unwrap_or_else(|e| {
        panic!("Helm is not built: {e}; build it with `cargo xtask testenv build`")
    })
}

/// The kubectl binary built by the test environment, of the release under test.
pub fn kubectl() -> PathBuf {
    kubernetes_release().binary("kubectl").unwrap_or_else(|e| {
        panic!("kubectl is not built: {e}; build it with `cargo xtask testenv build`")
    })
}

/// A Helm command with its state kept out of the user's home (under the test target dir).
pub fn helm_command() -> Command {
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    let mut cmd = Command::new(helm());
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// Runs a command, optionally feeding `stdin`, and returns its output.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(input) = stdin {
        // Write from a thread so that a large output cannot dead-lock against the input.
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_string();
        let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        out
    } else {
        child.wait_with_output().unwrap()
    }
}

/// Text of an output, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `helm lint <chart> <args>`.
pub fn helm_lint(args: &[&str]) -> Output {
    let mut cmd = helm_command();
    cmd.arg("lint").arg(chart_dir()).args(args);
    run(cmd, None)
}

/// `helm template <release> <chart> --namespace <namespace> --kube-version <under test> <args>`.
pub fn helm_template(release: &str, namespace: &str, args: &[&str]) -> Result<String, String> {
    let mut cmd = helm_command();
    cmd.arg("template")
        .arg(release)
        .arg(chart_dir())
        .args(["--namespace", namespace])
        .args(["--kube-version", kubernetes_release().version]);
    // What an install on that release would see: `helm template` knows only the API versions
    // compiled into Helm, so Helm 3 would not see the policy's API on a cluster that serves it.
    if serves_mutating_admission_policies() {
        cmd.args([
            "--api-versions",
            "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
        ]);
    }
    cmd.args(args);
    let out = run(cmd, None);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(describe(&out))
    }
}

/// Like [`helm_template`], panicking on failure.
pub fn render(release: &str, namespace: &str, args: &[&str]) -> String {
    helm_template(release, namespace, args)
        .unwrap_or_else(|e| panic!("helm template {args:?} failed: {e}"))
}

/// The non-empty documents of a multi-document YAML stream.
pub fn documents(yaml: &str) -> Vec<yaml_serde::Value> {
    use serde::Deserialize;
    yaml_serde::Deserializer::from_str(yaml)
        .map(|d| yaml_serde::Value::deserialize(d).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The documents as JSON values (easier to index).
pub fn json_documents(yaml: &str) -> Vec<serde_json::Value> {
    documents(yaml)
        .into_iter()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect()
}

/// `kind/name` of each document.
pub fn kinds_and_names(docs: &[serde_json::Value]) -> Vec<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// `kubectl --kubeconfig <kubeconfig> <args>` with `stdin`.
pub fn kubectl_run(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(kubectl());
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    run(cmd, stdin)
}

/// The files under `dir` (relative paths, sorted) with their contents.
pub fn read_tree(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Replaces the files under `dir` with `files` (relative path, content).
pub fn write_tree(dir: &Path, files: &[(String, String)]) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    for (rel, content) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
    }
}

/// Names of the files that differ between two trees (missing on either side, or changed).
pub fn tree_diff(want: &[(String, String)], have: &[(String, String)]) -> Vec<String> {
    let mut diff = Vec::new();
    for (path, content) in want {
        match have.iter().find(|(p, _)| p == path) {
            None => diff.push(format!("{path}: missing")),
            Some((_, c)) if c != content => diff.push(format!("{path}: differs")),
            Some(_) => {}
        }
    }
    for (path, _) in have {
        if !want.iter().any(|(p, _)| p == path) {
            diff.push(format!("{path}: not expected"));
        }
    }
    diff
}

/// The xtask binary `cargo xtask test` runs (built beside the test binaries), for the tests that
/// publish with `cargo xtask release`.
pub fn xtask() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("xtask"))
        .unwrap();
    assert!(
        path.is_file(),
        "{} is not built; run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// `cargo xtask release --plain-http --registry <registry> --version <version> [--chart <dir>]`,
/// run from the repository (the binary of [`xtask`]).
pub fn xtask_release(registry: &str, version: &str, chart: Option<&Path>) -> Output {
    let mut cmd = Command::new(xtask());
    cmd.current_dir(repo()).args([
        "release",
        "--plain-http",
        "--registry",
        registry,
        "--version",
        version,
    ]);
    if let Some(chart) = chart {
        cmd.arg("--chart").arg(chart);
    }
    run(cmd, None)
}

/// Fails, naming the first line that differs, when the generated file `file` (`have`) is not
/// what its generator makes now (`want`).
pub fn assert_generated(file: &str, have: &str, want: &str) {
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(h, w)| h != w)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
        panic!(
            "{file} is stale from line {}: run `cargo xtask generate`\nhas:   {:?}\nwants: {:?}",
            line + 1,
            have.lines().nth(line),
            want.lines().nth(line)
        );
    }
}
