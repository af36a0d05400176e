//! Release metadata, with no test environment:
//!
//! - The repository's address is written once, in Cargo.toml's `[workspace.package] repository`.
//!   Everything else derives it (the test image's labels, the chart's runbook URLs and NOTES from
//!   Chart.yaml's `home`) or is checked here against it: Chart.yaml's `home`, `sources` and
//!   maintainers, the Dockerfile's `org.opencontainers.image.source`, the chart's default
//!   `image.repository` (`ghcr.io/<owner>/kratos-operator`), deploy/base, artifacthub-repo.yml,
//!   and every `github.com/<owner>/<repo>` or `ghcr.io/<owner>/…` of ours in any file of the
//!   repository (README, docs, templates, workflows). A disagreement names the file and line.
//! - The chart's Artifact Hub annotations are what `cargo xtask generate` makes of the CRDs,
//!   deploy/examples, CHANGELOG.md, values.yaml and Cargo.toml (xtask/src/artifacthub.rs).

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The generator of the annotations, shared with `cargo xtask generate`.
#[path = "../xtask/src/artifacthub.rs"]
mod artifacthub;
mod chart_support;

use std::{
    fmt::Display,
    path::{Path, PathBuf},
};

use yaml_serde::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// The repository, from Cargo.toml.
struct Address {
    /// `https://github.com/<owner>/<repo>`.
    url: String,
    owner: String,
    repo: String,
    /// The crate, chart and image name, `kratos-operator`.
    name: String,
}

impl Address {
    fn from_cargo_toml() -> Self {
        let url = artifacthub::workspace_package_field(&read("Cargo.toml"), "repository").unwrap();
        assert_eq!(
            url,
            env!("CARGO_PKG_REPOSITORY"),
            "the package inherits the workspace's repository"
        );
        let path = url
            .strip_prefix("https://github.com/")
            .unwrap_or_else(|| panic!("Cargo.toml: repository {url:?} is not on github.com"));
        let (owner, repo) = path
            .split_once('/')
            .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
            .unwrap_or_else(|| {
                panic!("Cargo.toml: repository {url:?} is not github.com/<owner>/<repo>")
            });
        Address {
            url: url.clone(),
            owner: owner.to_string(),
            repo: repo.to_string(),
            name: env!("CARGO_PKG_NAME").to_string(),
        }
    }

    /// GHCR's namespace: the owner, lower-cased (image names must be lower case).
    fn ghcr(&self) -> String {
        format!("ghcr.io/{}", self.owner.to_lowercase())
    }

    /// `github.com/<owner>/<repo>`, as kustomize remote bases write it.
    fn bare(&self) -> String {
        format!("github.com/{}/{}", self.owner, self.repo)
    }
}

/// Places that disagree, as `file:line: what`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn at(&mut self, file: &str, line: usize, what: impl Display) {
        self.0.push(format!("{file}:{line}: {what}"));
    }

    fn assert_none(&self) {
        assert!(
            self.0.is_empty(),
            "these places disagree with Cargo.toml's package.repository:\n{}",
            self.0.join("\n")
        );
    }
}

/// The 1-based number of the first line of `text` containing `needle` (0 when none does).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(0, |i| i + 1)
}

/// One path segment at the start of `s`: letters, digits, `.`, `_`, `-`; a trailing `.` (the end
/// of a sentence) and `.git` are not part of it.
fn segment(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        .unwrap_or(s.len());
    let seg = s[..end].trim_end_matches('.');
    seg.strip_suffix(".git").unwrap_or(seg)
}

/// Every `github.com/<owner>/<repo>` and `ghcr.io/<owner>/…` of `text` that is ours (its owner or
/// repository names us, or an image path below the owner does) must name our owner (and, on
/// GitHub, our repository).
fn scan(file: &str, text: &str, a: &Address, problems: &mut Problems) {
    for (n, line) in text.lines().enumerate() {
        for host in ["github.com/", "ghcr.io/"] {
            for (i, _) in line.match_indices(host) {
                let rest = &line[i + host.len()..];
                let owner = segment(rest);
                if owner.is_empty() {
                    continue; // a placeholder such as `<owner>`
                }
                let second = rest[owner.len()..]
                    .strip_prefix('/')
                    .map(segment)
                    .unwrap_or_default();
                // An image's path below the owner (`charts/kratos-operator`, say).
                let image_path: String = rest[owner.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "._-/".contains(*c))
                    .collect();
                let ours = owner.eq_ignore_ascii_case(&a.owner)
                    || owner.contains(&a.name)
                    || second == a.repo
                    || second.contains(&a.name)
                    || (host == "ghcr.io/" && image_path.contains(&a.name));
                if !ours {
                    continue;
                }
                if host == "github.com/" && (owner != a.owner || second != a.repo) {
                    problems.at(
                        file,
                        n + 1,
                        format!("names github.com/{owner}/{second}, not {}", a.bare()),
                    );
                } else if host == "ghcr.io/" && format!("ghcr.io/{owner}") != a.ghcr() {
                    problems.at(
                        file,
                        n + 1,
                        format!("names ghcr.io/{owner}/…, not {}/…", a.ghcr()),
                    );
                }
            }
        }
    }
}

/// Every text file of the repository (relative paths), without `target/` and `.git`.
fn repository_files() -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name == "target" || name == ".git" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &repo(), &mut out);
    out.sort();
    out
}

/// GitHub's anchor of a Markdown heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

fn check_chart_yaml(a: &Address, p: &mut Problems) {
    let file = "charts/kratos-operator/Chart.yaml";
    let text = read(file);
    let chart: Value = yaml_serde::from_str(&text).unwrap();
    let home = chart["home"].as_str().unwrap_or_default();
    if home != a.url {
        p.at(
            file,
            line_of(&text, "home:"),
            format!("home is {home:?}, not {:?}", a.url),
        );
    }
    let sources = chart["sources"].as_sequence().cloned().unwrap_or_default();
    if sources.is_empty() {
        p.at(file, 0, format!("no sources (the repository, {:?})", a.url));
    }
    for source in sources {
        let source = source.as_str().unwrap_or_default();
        if source != a.url {
            p.at(
                file,
                line_of(&text, source),
                format!("a source is {source:?}, not {:?}", a.url),
            );
        }
    }
    let maintainers = chart["maintainers"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    if maintainers.is_empty() {
        p.at(file, 0, "no maintainers");
    }
    for m in maintainers {
        let url = m["url"].as_str().unwrap_or_default();
        if url != a.url {
            let line = line_of(&text, &format!("url: {url}"));
            p.at(
                file,
                line,
                format!("a maintainer's url is {url:?}, not {:?}", a.url),
            );
        }
    }
}

fn check_dockerfile(a: &Address, p: &mut Problems) {
    let file = "Dockerfile";
    let text = read(file);
    let key = "org.opencontainers.image.source=";
    let line = line_of(&text, key);
    let value = text
        .lines()
        .nth(line.saturating_sub(1))
        .filter(|_| line > 0)
        .and_then(|l| l.split(key).nth(1))
        .map(|v| v.trim().trim_end_matches('\\').trim().trim_matches('"'));
    if value != Some(a.url.as_str()) {
        p.at(
            file,
            line,
            format!("the image label {key}{value:?}, not {:?}", a.url),
        );
    }
}

/// The image the test node runs (`cargo xtask image`) carries the same label, derived from
/// Cargo.toml through `env!("CARGO_PKG_REPOSITORY")`.
fn check_test_image(a: &Address, p: &mut Problems) {
    let spec = kratos_operator_testenv::image::operator_spec(Path::new("/kratos-operator"));
    let label = spec.labels.get("org.opencontainers.image.source");
    if label != Some(&a.url) {
        let file = "testenv/src/image.rs";
        let line = line_of(&read(file), "org.opencontainers.image.source");
        p.at(
            file,
            line,
            format!("operator_spec labels the source {label:?}, not {:?}", a.url),
        );
    }
}

/// The runbook URLs derive from Chart.yaml's home, and each points at a heading of
/// docs/metrics.md.
fn check_runbooks(p: &mut Problems) {
    let file = "charts/kratos-operator/templates/prometheusrule.yaml";
    let text = read(file);
    let line = line_of(&text, "$runbook :=");
    let definition = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    if line == 0 || !definition.contains(".Chart.Home") || !definition.contains("docs/metrics.md") {
        p.at(
            file,
            line,
            "$runbook is not docs/metrics.md under .Chart.Home",
        );
    }
    let headings = anchors(&read("docs/metrics.md"));
    for (n, l) in text.lines().enumerate() {
        if let Some((_, anchor)) = l.split_once("{{ $runbook }}#") {
            let anchor = anchor.trim();
            if !headings.iter().any(|h| h == anchor) {
                p.at(
                    file,
                    n + 1,
                    format!("docs/metrics.md has no heading #{anchor}"),
                );
            }
        }
    }
}

fn check_notes(p: &mut Problems) {
    let file = "charts/kratos-operator/templates/NOTES.txt";
    let text = read(file);
    let line = line_of(&text, "/deploy/examples");
    let l = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    if line == 0 || !l.contains(".Chart.Home") {
        p.at(
            file,
            line,
            "the examples' kustomize URL does not derive from .Chart.Home",
        );
    }
}

fn check_images(a: &Address, p: &mut Problems) {
    let want = format!("{}/{}", a.ghcr(), a.name);
    let file = "charts/kratos-operator/values.yaml";
    let text = read(file);
    let values: Value = yaml_serde::from_str(&text).unwrap();
    let repository = values["image"]["repository"].as_str().unwrap_or_default();
    if repository != want {
        let line = line_of(&text, "repository:");
        p.at(
            file,
            line,
            format!("image.repository is {repository:?}, not {want:?}"),
        );
    }
    let file = "deploy/base/deployment.yaml";
    let text = read(file);
    let images: Vec<_> = text
        .lines()
        .enumerate()
        .filter_map(|(n, l)| l.trim().strip_prefix("image:").map(|v| (n + 1, v.trim())))
        .collect();
    if images.is_empty() {
        p.at(file, 0, "no image");
    }
    for (line, image) in images {
        if !(image.starts_with(&format!("{want}:")) || image.starts_with(&format!("{want}@"))) {
            p.at(
                file,
                line,
                format!("the image is {image:?}, not {want}:<tag>"),
            );
        }
    }
}

/// Places that must mention the address (a wrong mention is found by [`scan`]).
fn check_mentions(a: &Address, p: &mut Problems) {
    for (file, want) in [
        (
            "deploy/base/kustomization.yaml",
            format!("{}/deploy/base?ref=", a.bare()),
        ),
        (
            "artifacthub-repo.yml",
            format!("{}/charts/{}:artifacthub.io", a.ghcr(), a.name),
        ),
    ] {
        if !read(file).contains(&want) {
            p.at(file, 0, format!("does not mention {want}"));
        }
    }
    // artifacthub.io/signKey points at the README's section on verifying a release.
    let file = "README.md";
    if !anchors(&read(file))
        .iter()
        .any(|h| h == artifacthub::VERIFY_ANCHOR)
    {
        p.at(
            file,
            0,
            format!("has no heading #{}", artifacthub::VERIFY_ANCHOR),
        );
    }
}

#[test]
fn every_place_agrees_with_the_repository_in_cargo_toml() {
    let a = Address::from_cargo_toml();
    let mut p = Problems::default();
    check_chart_yaml(&a, &mut p);
    check_dockerfile(&a, &mut p);
    check_test_image(&a, &mut p);
    check_runbooks(&mut p);
    check_notes(&mut p);
    check_images(&a, &mut p);
    check_mentions(&a, &mut p);
    let files = repository_files();
    for must in [
        "README.md",
        "Dockerfile",
        "charts/kratos-operator/Chart.yaml",
        "docs/metrics.md",
    ] {
        assert!(
            files.iter().any(|f| f == must),
            "{must} is not among {files:?}"
        );
    }
    let mut scanned = 0;
    for file in &files {
        // Binary files (images) hold no addresses.
        if let Ok(text) = std::fs::read_to_string(repo().join(file)) {
            scan(file, &text, &a, &mut p);
            scanned += 1;
        }
    }
    assert!(scanned > 100, "scanned only {scanned} files");
    p.assert_none();
}

/// The scan finds a wrong owner or repository with its file and line, and lets other projects'
/// addresses and placeholders be.
#[test]
fn the_scan_names_the_file_and_line_of_a_wrong_address() {
    let a = Address::from_cargo_toml();
    let text = [
        format!(
            "line one\nsee https://{}/issues and {}/{}:1.0",
            a.bare(),
            a.ghcr(),
            a.name
        ),
        format!(
            "helm install x oci://ghcr.io/someone-else/charts/{}",
            a.name
        ),
        format!("a fork: https://github.com/someone-else/{}.", a.repo),
        format!(
            "a rename: github.com/{}/other-name/deploy/base?ref=main",
            a.owner
        ),
        "others: https://github.com/ory/kratos, github.com/kubernetes-sigs/cli-utils".to_string(),
        "a placeholder: ghcr.io/<owner>/charts/x, github.com/<owner>/<repo>".to_string(),
    ]
    .join("\n");
    let mut p = Problems::default();
    scan("FILE", &text, &a, &mut p);
    assert_eq!(
        p.0,
        [
            format!("FILE:3: names ghcr.io/someone-else/…, not {}/…", a.ghcr()),
            format!(
                "FILE:4: names github.com/someone-else/{}, not {}",
                a.repo,
                a.bare()
            ),
            format!(
                "FILE:5: names github.com/{}/other-name, not {}",
                a.owner,
                a.bare()
            ),
        ]
    );
}

/// Chart.yaml's `artifacthub.io/*` annotations are generated: `cargo xtask generate` rewrites
/// them when a CRD, an example, CHANGELOG.md, values.yaml or Cargo.toml changes.
#[test]
fn chart_annotations_are_generated() {
    let file = "charts/kratos-operator/Chart.yaml";
    let want = artifacthub::chart_yaml(&repo())
        .unwrap_or_else(|e| panic!("the annotations cannot be generated: {e}"));
    let have = read(file);
    chart_support::assert_generated(file, &have, &want);
    // One CRD card and one example per kind, and this version's changes.
    let chart: Value = yaml_serde::from_str(&have).unwrap();
    let annotation = |key: &str| -> Value {
        yaml_serde::from_str(chart["annotations"][key].as_str().unwrap()).unwrap()
    };
    let kinds = |v: &Value| -> Vec<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let crd_kinds: Vec<String> = kratos_operator::api::crds()
        .iter()
        .map(|c| c.spec.names.kind.clone())
        .collect();
    let mut sorted = kinds(&annotation("artifacthub.io/crds"));
    sorted.sort();
    let mut want_kinds = crd_kinds.clone();
    want_kinds.sort();
    assert_eq!(sorted, want_kinds);
    let mut examples = kinds(&annotation("artifacthub.io/crdsExamples"));
    examples.sort();
    assert_eq!(examples, want_kinds);
    assert!(
        !annotation("artifacthub.io/changes")
            .as_sequence()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        chart["annotations"]["artifacthub.io/license"],
        Value::String(env!("CARGO_PKG_LICENSE").into())
    );
}

/// artifacthub-repo.yml is the repository metadata Artifact Hub reads from the chart's OCI
/// repository (tag `artifacthub.io`).
#[test]
fn artifacthub_repo_yml_is_repository_metadata() {
    let text = read("artifacthub-repo.yml");
    let meta: Value = yaml_serde::from_str(&text).unwrap();
    let owners = meta["owners"].as_sequence().expect("owners");
    assert!(
        !owners.is_empty() && owners.iter().all(|o| o["name"].is_string()),
        "{owners:?}"
    );
    for key in meta.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            ["repositoryID", "owners", "ignore"].contains(&key),
            "unknown key {key}"
        );
    }
    for media_type in [
        "application/vnd.cncf.artifacthub.config.v1+yaml",
        "application/vnd.cncf.artifacthub.repository-metadata.layer.v1.yaml",
    ] {
        assert!(
            text.contains(media_type),
            "the push command names {media_type}"
        );
    }
}
