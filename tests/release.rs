//! The release as users verify it. `cargo xtask test` publishes the work tree to the
//! environment's registry with `cargo xtask release` (a development version, signed with the
//! local key pair) before the tests; these check what a user checks:
//! - the image (by digest and by tag), the chart and the SBOM attestation verify with cosign and
//!   the release's public key, and not with another key;
//! - the SBOM lists the binary's crates with their licences, and no test-only crate;
//! - an image pushed under the released tag with another digest fails verification;
//! - `cargo xtask release` refuses a version that disagrees with Cargo.toml and a version already
//!   in the registry, and pushes nothing.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart_support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use base64::Engine;
use kratos_operator_testenv::{
    Environment, env::default_dir, image, registry, registry::Published,
};

/// The environment and the release the test command published to its registry.
fn published() -> (Environment, Published) {
    let env = Environment::attach(&default_dir())
        .unwrap()
        .expect("the environment is not running; `cargo xtask test` starts it");
    let published = Published::read(&env.dir).unwrap().expect(
        "no release in the environment's registry; `cargo xtask test` (or `cargo xtask testenv \
         up --node`) publishes one",
    );
    (env, published)
}

/// cosign as the release is checked here: with its key, and nothing leaving the machine.
fn cosign() -> Command {
    registry::local_cosign().unwrap()
}

fn crane() -> PathBuf {
    registry::crane().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// `cosign <verb> --key <key> …` against the plain-HTTP registry, without a transparency log.
fn verify(verb: &str, key: &Path, extra: &[&str], reference: &str) -> Output {
    cosign()
        .arg(verb)
        .arg("--key")
        .arg(key)
        .args([
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
        ])
        .args(extra)
        .arg(reference)
        .output()
        .unwrap()
}

/// A scratch directory under the test target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("release")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tags of a repository in the registry (empty when it does not exist).
fn tags(repository: &str) -> Vec<String> {
    let out = Command::new(crane())
        .args(["ls", "--insecure", repository])
        .output()
        .unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("NAME_UNKNOWN"),
            "crane ls {repository}: {}",
            text(&out)
        );
        return Vec::new();
    }
    let mut tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    tags.sort();
    tags
}

#[test]
fn the_image_the_chart_and_the_sbom_attestation_verify_with_the_release_key_only() {
    let (_env, p) = published();
    let key = p
        .public_key
        .clone()
        .expect("the test release is signed with a key");
    let chart = format!("{}:{}", p.chart().trim_start_matches("oci://"), p.version);
    for reference in [
        p.image_by_digest(),
        format!("{}:{}", p.image, p.version),
        chart.clone(),
    ] {
        let out = verify("verify", &key, &[], &reference);
        assert!(
            out.status.success(),
            "cosign verify {reference}: {}",
            text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "cosign verify {reference}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The signed payload names exactly the digest that was released.
        let digest = if reference == chart {
            &p.chart_digest
        } else {
            &p.image_digest
        };
        assert!(
            stdout.contains(&format!("\"docker-manifest-digest\":\"{digest}\"")),
            "{stdout}"
        );
    }

    // The published chart pins the image by digest, in its values and in its Artifact Hub
    // annotation, at the release's version.
    let show = |what: &str| {
        let out = chart_support::run(
            {
                let mut c = chart_support::helm_command();
                c.args([
                    "show",
                    what,
                    &p.chart(),
                    "--version",
                    &p.version,
                    "--plain-http",
                ]);
                c
            },
            None,
        );
        assert!(out.status.success(), "helm show {what}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let chart_yaml: yaml_serde::Value = yaml_serde::from_str(&show("chart")).unwrap();
    assert_eq!(chart_yaml["version"].as_str(), Some(p.version.as_str()));
    assert_eq!(chart_yaml["appVersion"].as_str(), Some(p.version.as_str()));
    let images = chart_yaml["annotations"]["artifacthub.io/images"]
        .as_str()
        .unwrap();
    assert!(
        images.contains(&format!(
            "image: {}:{}@{}",
            p.image, p.version, p.image_digest
        )),
        "{images}"
    );
    let values: yaml_serde::Value = yaml_serde::from_str(&show("values")).unwrap();
    assert_eq!(
        values["image"]["repository"].as_str(),
        Some(p.image.as_str())
    );
    assert_eq!(
        values["image"]["digest"].as_str(),
        Some(p.image_digest.as_str())
    );

    // The SBOM attestation: a signed in-toto statement about the image's digest whose predicate
    // is the CycloneDX document of the binary's crates.
    let out = verify(
        "verify-attestation",
        &key,
        &["--type", "cyclonedx"],
        &p.image_by_digest(),
    );
    assert!(
        out.status.success(),
        "cosign verify-attestation: {}",
        text(&out)
    );
    let envelope: serde_json::Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let statement: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(statement["predicateType"], "https://cyclonedx.org/bom");
    assert_eq!(
        format!(
            "sha256:{}",
            statement["subject"][0]["digest"]["sha256"]
                .as_str()
                .unwrap()
        ),
        p.image_digest
    );
    let bom = &statement["predicate"];
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["metadata"]["component"]["name"], "kratos-operator");
    let components = bom["components"].as_array().unwrap();
    let find = |name: &str| components.iter().find(|c| c["name"] == name);
    for name in ["kube", "tokio", "reqwest", "serde"] {
        let c = find(name).unwrap_or_else(|| panic!("{name} is not in the SBOM"));
        assert!(
            c["purl"]
                .as_str()
                .unwrap()
                .starts_with(&format!("pkg:cargo/{name}@")),
            "{c}"
        );
        let licence = c["licenses"][0]["expression"].as_str().unwrap_or_default();
        assert!(
            !licence.is_empty(),
            "{name} has no licence in the SBOM: {c}"
        );
    }
    // Only what the binary links: no test or tooling crate.
    for name in ["proptest", "mlua", "plotters", "rcgen"] {
        assert!(find(name).is_none(), "{name} is in the SBOM");
    }
    // The attached SBOM is the one the release wrote.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p.sbom).unwrap()).unwrap();
    assert_eq!(written["components"], bom["components"]);

    // Another key verifies none of them.
    let other = scratch("other-key");
    let out = cosign()
        .current_dir(&other)
        .env("COSIGN_PASSWORD", "")
        .args(["generate-key-pair", "--output-key-prefix", "other"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for reference in [p.image_by_digest(), chart] {
        let out = verify("verify", &other.join("other.pub"), &[], &reference);
        assert!(
            !out.status.success(),
            "verified with another key: {}",
            text(&out)
        );
    }
}

#[test]
fn an_image_pushed_under_the_released_tag_with_another_digest_fails_verification() {
    let (env, p) = published();
    let key = p.public_key.clone().unwrap();
    // A copy of the release (image, signature, attestation) in a repository of this test's own,
    // so the release the other tests install stays as it is.
    let copy = format!(
        "{}/tamper-{}/kratos-operator",
        env.state.registry,
        std::process::id()
    );
    let tagged = format!("{copy}:{}", p.version);
    let out = cosign()
        .args([
            "copy",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--force",
        ])
        .arg(p.image_by_digest())
        .arg(&tagged)
        .output()
        .unwrap();
    assert!(out.status.success(), "cosign copy: {}", text(&out));
    let out = verify("verify", &key, &[], &tagged);
    assert!(out.status.success(), "the copy verifies: {}", text(&out));

    // Someone with push rights replaces the tag with another image.
    let dir = scratch("tamper");
    let archive = dir.join("other.oci.tar");
    image::write_oci_archive(&image::pause_spec().unwrap(), &archive).unwrap();
    let other = registry::push_archive(&archive, &tagged, true).unwrap();
    assert_ne!(other, p.image_digest);
    assert_eq!(
        registry::digest_of(&tagged, true).unwrap(),
        Some(other.clone())
    );

    let out = verify("verify", &key, &[], &tagged);
    assert!(
        !out.status.success(),
        "an image pushed under the released tag verified: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("cosign verify {tagged} (replaced by {other}):\n{stderr}");
    assert!(
        stderr.contains("no signatures found") || stderr.contains("no matching signatures"),
        "{stderr}"
    );
    // The released digest still verifies: what the chart pins is not affected.
    let out = verify("verify", &key, &[], &format!("{copy}@{}", p.image_digest));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_release_that_must_not_happen_is_refused_and_pushes_nothing() {
    let (env, p) = published();
    let refuse = |registry: &str, version: &str, why: &str| {
        let out = chart_support::xtask_release(registry, version, None);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        eprintln!("cargo xtask release --version {version}: {stderr}");
        assert!(!out.status.success(), "released {version}: {}", text(&out));
        assert!(stderr.contains(why), "{stderr}");
    };

    // A version that disagrees with Cargo.toml and Chart.yaml, into an empty path.
    let empty = format!("{}/refused-{}", env.state.registry, std::process::id());
    refuse(&empty, "99.0.0", "disagrees with Cargo.toml");
    refuse(&empty, "0.1.0-rc.1+build", "not a release version");
    for repository in [
        format!("{empty}/kratos-operator"),
        format!("{empty}/charts/kratos-operator"),
    ] {
        assert_eq!(tags(&repository), Vec::<String>::new(), "{repository}");
    }

    // The version already released: never overwritten.
    let registry_path = p
        .chart_repository
        .trim_start_matches("oci://")
        .strip_suffix("/charts")
        .unwrap();
    let image_tags = tags(&p.image);
    let chart_repo = p.chart().trim_start_matches("oci://").to_string();
    let chart_tags = tags(&chart_repo);
    refuse(registry_path, &p.version, "already in the registry");
    assert_eq!(tags(&p.image), image_tags);
    assert_eq!(tags(&chart_repo), chart_tags);
    assert_eq!(
        registry::digest_of(&format!("{}:{}", p.image, p.version), true).unwrap(),
        Some(p.image_digest.clone())
    );
}
