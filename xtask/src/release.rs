//! `cargo xtask release`: publishes the operator's image and chart to an OCI registry by digest,
//! signed with cosign, with an SBOM of the binary's crates attached as a signed attestation.
//!
//! The order is the safety argument: every check that can refuse (the version against
//! Cargo.toml and Chart.yaml, a dirty tree, a version already in the registry) and every build
//! (the static binary, the image archive, the SBOM, the chart package) runs before the first
//! push. A refused or failed release pushes nothing.
//!
//! The pure parts (the version rules, the chart's rewritten files, the commands a user runs)
//! are separate functions with unit tests; the rest drives crane, Helm, cosign and
//! cargo-cyclonedx.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use kratos_operator_testenv::{
    build, image,
    registry::{self, CHART_NAME, Published},
};

/// The image's name under the registry path.
pub const IMAGE_NAME: &str = "kratos-operator";

/// cargo-cyclonedx, which writes the SBOM from Cargo.lock (CycloneDX JSON with each crate's
/// licence), installed once per version into the component cache.
pub const CYCLONEDX_VERSION: &str = "0.5.9";

/// What to release.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host[:port]/path`: the image goes to `<registry>/kratos-operator`, the chart to
    /// `oci://<registry>/charts/kratos-operator`.
    pub registry: String,
    /// A registry without TLS (the test environment's, on loopback).
    pub plain_http: bool,
    /// The version; Cargo.toml's when `None`.
    pub version: Option<String>,
    /// How to sign.
    pub signer: Signer,
    /// The chart to release (the repository's `charts/kratos-operator` but in tests, which
    /// release a changed copy to try an upgrade).
    pub chart: PathBuf,
    /// Where the release's files go (the image archive, the SBOM, the chart package).
    pub out: PathBuf,
}

/// How a release is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// A cosign key pair: `key` is the private key (its password in `$COSIGN_PASSWORD`), the
    /// public key is beside it as `.pub`.
    Key(PathBuf),
    /// Keyless (Fulcio and Rekor), as the release workflow signs with its OIDC identity.
    Keyless,
}

/// A version checked against the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The version as released.
    pub version: String,
    /// Whether it is a development version (`<cargo version>-dev…`), which a dirty tree may
    /// release.
    pub dev: bool,
}

/// The version rules (pure): `requested` (or Cargo.toml's version) must be Cargo.toml's version
/// exactly, or it with a `-dev…` pre-release suffix; Chart.yaml's `version` and `appVersion` must
/// agree with Cargo.toml. Build metadata (`+…`) is refused: OCI tags cannot carry it.
pub fn check_version(
    requested: Option<&str>,
    cargo: &str,
    chart: &str,
    chart_app: &str,
) -> Result<Version, String> {
    if chart != cargo || chart_app != cargo {
        return Err(format!(
            "Chart.yaml says version {chart:?} and appVersion {chart_app:?}, Cargo.toml says \
             {cargo:?}: bump them together before releasing"
        ));
    }
    let version = requested.unwrap_or(cargo);
    let valid_chars = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    };
    if version.contains('+') || !valid_chars(version) {
        return Err(format!(
            "{version:?} is not a release version: use {cargo} or {cargo}-dev.<suffix> \
             (letters, digits, dots and hyphens; no build metadata)"
        ));
    }
    if version == cargo {
        return Ok(Version {
            version: version.to_string(),
            dev: false,
        });
    }
    match version
        .strip_prefix(cargo)
        .and_then(|s| s.strip_prefix('-'))
    {
        Some(suffix) if suffix.starts_with("dev") => Ok(Version {
            version: version.to_string(),
            dev: true,
        }),
        _ => Err(format!(
            "version {version:?} disagrees with Cargo.toml and Chart.yaml ({cargo}): release \
             {cargo}, or a development version {cargo}-dev.<suffix>"
        )),
    }
}

/// The `version` of Cargo.toml's `[package]` table (pure).
pub fn cargo_version(cargo_toml: &str) -> Option<String> {
    let mut in_package = false;
    for line in cargo_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if let (true, Some(rest)) = (in_package, line.strip_prefix("version")) {
            let value = rest.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_string());
        }
    }
    None
}

/// Chart.yaml's `version` and `appVersion` (pure).
pub fn chart_versions(chart_yaml: &str) -> Result<(String, String), String> {
    let doc: yaml_serde::Value =
        yaml_serde::from_str(chart_yaml).map_err(|e| format!("Chart.yaml: {e}"))?;
    let field = |name: &str| {
        doc.get(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .ok_or_else(|| format!("Chart.yaml has no {name}"))
    };
    Ok((field("version")?, field("appVersion")?))
}

/// Rewrites one top-level (`indent` = "") or nested key's scalar on the line that starts with
/// `<indent><key>:`, the first after a line equal to `after` (or from the top when `None`).
fn set_scalar(
    text: &str,
    after: Option<&str>,
    indent: &str,
    key: &str,
    value: &str,
) -> Result<String, String> {
    let prefix = format!("{indent}{key}:");
    let mut seen_after = after.is_none();
    let mut done = false;
    let mut out = String::with_capacity(text.len() + value.len());
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if !seen_after && Some(bare) == after {
            seen_after = true;
        } else if seen_after && !done && bare.starts_with(&prefix) {
            out.push_str(&format!("{prefix} {value}\n"));
            done = true;
            continue;
        }
        out.push_str(line);
    }
    if done {
        Ok(out)
    } else {
        Err(format!(
            "no `{prefix}` line{} to rewrite",
            after.map(|a| format!(" after `{a}`")).unwrap_or_default()
        ))
    }
}

/// The released chart's Chart.yaml and values.yaml (pure): `version` and `appVersion` set to the
/// release's, the image's repository and digest pinned, and the `artifacthub.io/images`
/// annotation naming the image by digest. Comments and everything else stay as they are.
pub fn staged_chart(
    chart_yaml: &str,
    values_yaml: &str,
    version: &str,
    image: &str,
    digest: &str,
) -> Result<(String, String), String> {
    let quoted = format!("{version:?}");
    let chart = set_scalar(chart_yaml, None, "", "version", version)?;
    let mut chart = set_scalar(&chart, None, "", "appVersion", &quoted)?;
    // The annotation lists the image as it is released (by digest); it may be absent.
    let default_image = chart
        .lines()
        .find_map(|l| {
            let l = l.trim().trim_start_matches("- ");
            l.strip_prefix("image: ").map(str::trim).map(str::to_string)
        })
        .filter(|i| i.contains(IMAGE_NAME));
    if let Some(old) = default_image {
        chart = chart.replace(
            &format!("image: {old}"),
            &format!("image: {image}:{version}@{digest}"),
        );
    }
    let values = set_scalar(values_yaml, Some("image:"), "  ", "repository", image)?;
    let values = set_scalar(
        &values,
        Some("image:"),
        "  ",
        "digest",
        &format!("{digest:?}"),
    )?;
    Ok((chart, values))
}

/// The chart's digest from `helm push`'s output (pure).
pub fn pushed_digest(helm_output: &str) -> Option<String> {
    helm_output.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Digest:")
            .map(|d| d.trim().to_string())
            .filter(|d| d.starts_with("sha256:"))
    })
}

/// cosign's flags for a registry without TLS.
fn cosign_registry_flags(plain_http: bool) -> &'static [&'static str] {
    if plain_http {
        &["--allow-http-registry", "--allow-insecure-registry"]
    } else {
        &[]
    }
}

/// The commands a user runs to install and verify the release (pure).
pub fn user_commands(p: &Published) -> String {
    let helm_http = if p.plain_http { " --plain-http" } else { "" };
    let cosign_http = cosign_registry_flags(p.plain_http).join(" ");
    let cosign_http = if cosign_http.is_empty() {
        String::new()
    } else {
        format!(" {cosign_http}")
    };
    let (identity, key) = match &p.public_key {
        Some(key) => (
            String::new(),
            format!(" --key {} --insecure-ignore-tlog=true", key.display()),
        ),
        // Keyless: the release workflow of this repository at the version's tag signed it.
        None => (
            format!(
                " --certificate-identity {}/.github/workflows/release.yml@refs/tags/v{} \
                 --certificate-oidc-issuer https://token.actions.githubusercontent.com",
                env!("CARGO_PKG_REPOSITORY"),
                p.version
            ),
            String::new(),
        ),
    };
    let chart_ref = p.chart().trim_start_matches("oci://").to_string();
    format!(
        "# Install (the CRDs come with the chart on first install; see the README for upgrades):\n\
         helm install kratos-operator {chart} --version {v}{helm_http} \\\n  \
         --namespace kratos-operator --create-namespace \\\n  \
         --set kratos.adminUrl=http://kratos-admin.kratos.svc.cluster.local:4434 \\\n  \
         --set kratos.publicUrl=http://kratos-public.kratos.svc.cluster.local:4433\n\
         \n# Verify the image, its SBOM attestation and the chart:\n\
         cosign verify{key}{identity}{cosign_http} {image}\n\
         cosign verify-attestation --type cyclonedx{key}{identity}{cosign_http} {image}\n\
         cosign verify{key}{identity}{cosign_http} {chart_ref}:{v}\n",
        chart = p.chart(),
        v = p.version,
        image = p.image_by_digest(),
    )
}

fn run(what: &str, cmd: &mut Command) -> Result<String, String> {
    let output = cmd
        .output()
        .map_err(|e| format!("{what}: could not run {:?}: {e}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(format!("{stdout}{stderr}"))
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            stderr.trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\n{}", stdout.trim())
            }
        ))
    }
}

/// The local key pair `cargo xtask release` signs with when it is given none: generated once
/// (with an empty password) into `dir`. Returns the private key's path.
pub fn local_key(dir: &Path) -> Result<PathBuf, String> {
    let key = dir.join("cosign.key");
    if key.exists() && dir.join("cosign.pub").exists() {
        return Ok(key);
    }
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let cosign = build::SIGSTORE
        .binary("cosign")
        .map_err(|e| e.to_string())?;
    run(
        "cosign generate-key-pair",
        Command::new(cosign)
            .current_dir(dir)
            .env("COSIGN_PASSWORD", "")
            .args(["generate-key-pair", "--output-key-prefix", "cosign"]),
    )?;
    Ok(key)
}

/// Writes the SBOM of the operator's binary: CycloneDX JSON from Cargo.lock with cargo-cyclonedx
/// (installed into the component cache on first use), the crates the binary links for
/// `target`, with their licences.
pub fn sbom(out: &Path) -> Result<(), String> {
    let root = kratos_operator_testenv::repo_root();
    let tool_root = kratos_operator_testenv::cache_dir()
        .join("tools")
        .join(format!("cargo-cyclonedx-{CYCLONEDX_VERSION}"));
    let tool = tool_root.join("bin").join("cargo-cyclonedx");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !tool.exists() {
        eprintln!("xtask: installing cargo-cyclonedx {CYCLONEDX_VERSION}");
        run(
            "cargo install cargo-cyclonedx",
            Command::new(&cargo)
                .args([
                    "install",
                    "--locked",
                    "--quiet",
                    "--version",
                    CYCLONEDX_VERSION,
                ])
                .arg("--root")
                .arg(&tool_root)
                .arg("cargo-cyclonedx"),
        )?;
    }
    // cargo-cyclonedx writes beside each manifest; it runs on a copy of the manifests and the
    // lock file so the work tree stays clean.
    let scratch = out.with_extension("scratch");
    let _ = fs::remove_dir_all(&scratch);
    for member in ["", "testenv", "xtask"] {
        let from = root.join(member);
        let to = scratch.join(member);
        fs::create_dir_all(to.join("src")).map_err(|e| format!("{}: {e}", to.display()))?;
        fs::copy(from.join("Cargo.toml"), to.join("Cargo.toml"))
            .map_err(|e| format!("copying {}/Cargo.toml: {e}", from.display()))?;
        // Cargo needs a target to accept the manifest; the SBOM reads only the graph.
        fs::write(to.join("src").join("lib.rs"), "")
            .map_err(|e| format!("{}: {e}", to.display()))?;
    }
    fs::write(scratch.join("src").join("main.rs"), "fn main() {}\n")
        .map_err(|e| format!("{}: {e}", scratch.display()))?;
    fs::copy(root.join("Cargo.lock"), scratch.join("Cargo.lock"))
        .map_err(|e| format!("copying Cargo.lock: {e}"))?;
    run(
        "cargo cyclonedx",
        Command::new(&tool)
            .current_dir(&scratch)
            .env("PATH", path_with(&tool_root.join("bin")))
            .args([
                "cyclonedx",
                "--format",
                "json",
                "--spec-version",
                "1.5",
                "--no-build-deps",
                "--target",
                image::STATIC_TARGET,
                "--override-filename",
                "sbom",
            ])
            .arg("--manifest-path")
            .arg(scratch.join("Cargo.toml")),
    )?;
    let written = scratch.join("sbom.json");
    fs::copy(&written, out).map_err(|e| format!("copying {}: {e}", written.display()))?;
    let _ = fs::remove_dir_all(&scratch);
    Ok(())
}

fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// Whether the work tree has changes git would commit (untracked files included).
fn dirty(root: &Path) -> Result<bool, String> {
    let out = run(
        "git status",
        Command::new("git").current_dir(root).args([
            "status",
            "--porcelain",
            "--untracked-files=normal",
        ]),
    )?;
    Ok(!out.trim().is_empty())
}

/// A Helm command with its state under target/helm-home (never the user's home).
pub fn helm_command(root: &Path) -> Result<Command, String> {
    let helm = build::helm_from_env()
        .and_then(|h| h.binary("helm"))
        .map_err(|e| e.to_string())?;
    let home = root.join("target").join("helm-home");
    let mut cmd = Command::new(helm);
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    Ok(cmd)
}

/// What [`preflight`] checked: the release's version, where it goes and how it is signed.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The version.
    pub version: Version,
    /// `host[:port]/path` without a trailing slash.
    pub registry_path: String,
    /// The image's repository.
    pub image_repo: String,
    /// The chart's OCI repository (without the chart's name).
    pub chart_repository: String,
    /// The private and public key, or `None` for keyless.
    pub key: Option<(PathBuf, PathBuf)>,
}

/// The refusals, before anything is built or pushed: the registry path, the version against
/// Cargo.toml and Chart.yaml, a dirty tree for a non-dev version, the key pair, and a version
/// already in the registry (image or chart).
pub fn preflight(options: &Options) -> Result<Checked, String> {
    let root = kratos_operator_testenv::repo_root();
    let registry_path = options.registry.trim_end_matches('/');
    if registry_path.is_empty() || registry_path.contains("://") {
        return Err(format!(
            "--registry {:?}: give host[:port]/path, without a scheme",
            options.registry
        ));
    }
    let chart_src = root.join("charts").join(CHART_NAME);
    let cargo_toml = fs::read_to_string(root.join("Cargo.toml")).map_err(|e| e.to_string())?;
    let chart_yaml = fs::read_to_string(chart_src.join("Chart.yaml")).map_err(|e| e.to_string())?;
    let cargo = cargo_version(&cargo_toml).ok_or("Cargo.toml has no [package] version")?;
    let (chart_version, app_version) = chart_versions(&chart_yaml)?;
    let version = check_version(
        options.version.as_deref(),
        &cargo,
        &chart_version,
        &app_version,
    )?;
    if !version.dev && dirty(&root)? {
        return Err(format!(
            "the work tree has uncommitted changes: commit them before releasing {} (a \
             development version {cargo}-dev.<suffix> may be released from a dirty tree)",
            version.version
        ));
    }
    let key = match &options.signer {
        Signer::Key(key) => {
            let public = key.with_extension("pub");
            if !key.is_file() || !public.is_file() {
                return Err(format!(
                    "no cosign key pair at {} and {}",
                    key.display(),
                    public.display()
                ));
            }
            Some((key.clone(), public))
        }
        Signer::Keyless => None,
    };
    let v = &version.version;
    let image_repo = format!("{registry_path}/{IMAGE_NAME}");
    let chart_tag = format!("{registry_path}/charts/{CHART_NAME}:{v}");
    for reference in [format!("{image_repo}:{v}"), chart_tag] {
        if let Some(digest) =
            registry::digest_of(&reference, options.plain_http).map_err(|e| e.to_string())?
        {
            return Err(format!(
                "{reference} is already in the registry ({digest}): a released version is \
                 never overwritten; release a new version"
            ));
        }
    }
    Ok(Checked {
        version,
        registry_path: registry_path.to_string(),
        image_repo,
        chart_repository: format!("oci://{registry_path}/charts"),
        key,
    })
}

/// Publishes a release (see the module's documentation) that [`preflight`] passed as `checked`.
/// `binary` is the static build of the operator to ship (`image::build_static_operator`).
pub fn release(options: &Options, checked: Checked, binary: &Path) -> Result<Published, String> {
    let root = kratos_operator_testenv::repo_root();
    let Checked {
        version,
        registry_path,
        image_repo,
        chart_repository,
        key,
    } = checked;
    let chart_src = &options.chart;
    let chart_yaml = fs::read_to_string(chart_src.join("Chart.yaml")).map_err(|e| e.to_string())?;
    let values_yaml =
        fs::read_to_string(chart_src.join("values.yaml")).map_err(|e| e.to_string())?;
    let v = &version.version;

    // Everything that can fail locally, before the first push.
    let out = options.out.join(v);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let cosign = build::SIGSTORE
        .binary("cosign")
        .map_err(|e| e.to_string())?;
    let mut spec = image::operator_spec(binary);
    spec.name = format!("{image_repo}:{v}");
    spec.labels
        .insert("org.opencontainers.image.version".into(), v.clone());
    if let Ok(rev) = run(
        "git rev-parse",
        Command::new("git")
            .current_dir(&root)
            .args(["rev-parse", "HEAD"]),
    ) {
        spec.labels.insert(
            "org.opencontainers.image.revision".into(),
            rev.trim().into(),
        );
    }
    let archive = out.join("image.oci.tar");
    let written = image::write_oci_archive(&spec, &archive).map_err(|e| e.to_string())?;
    let sbom_path = out.join("sbom.cdx.json");
    sbom(&sbom_path)?;
    let staged = out.join("chart").join(CHART_NAME);
    copy_dir(chart_src, &staged)?;
    let (chart_text, values_text) =
        staged_chart(&chart_yaml, &values_yaml, v, &image_repo, &written.digest)?;
    fs::write(staged.join("Chart.yaml"), chart_text).map_err(|e| e.to_string())?;
    fs::write(staged.join("values.yaml"), values_text).map_err(|e| e.to_string())?;
    run(
        "helm package",
        helm_command(&root)?
            .arg("package")
            .arg(&staged)
            .arg("--destination")
            .arg(&out),
    )?;
    let package = out.join(format!("{CHART_NAME}-{v}.tgz"));

    // Push: the image first (the chart pins its digest), then the chart.
    let digest = registry::push_archive(&archive, &format!("{image_repo}:{v}"), options.plain_http)
        .map_err(|e| e.to_string())?;
    if digest != written.digest {
        return Err(format!(
            "the registry stored the image as {digest}, not as the archive's {}: the chart \
             would pin the wrong image",
            written.digest
        ));
    }
    let mut push = helm_command(&root)?;
    push.arg("push").arg(&package).arg(&chart_repository);
    if options.plain_http {
        push.arg("--plain-http");
    }
    let pushed = run("helm push", &mut push)?;
    let chart_digest = pushed_digest(&pushed)
        .ok_or_else(|| format!("helm push printed no digest: {}", pushed.trim()))?;

    // Sign the image and the chart; attach the SBOM to the image.
    let image_ref = format!("{image_repo}@{digest}");
    let chart_ref = format!("{registry_path}/charts/{CHART_NAME}@{chart_digest}");
    let cosign_cmd = |args: &[&str]| -> Result<Command, String> {
        // With a key, nothing needs Sigstore's public infrastructure: no TUF refresh either.
        let mut cmd = if key.is_some() {
            registry::local_cosign().map_err(|e| e.to_string())?
        } else {
            Command::new(&cosign)
        };
        cmd.args(args)
            .arg("--yes")
            .args(cosign_registry_flags(options.plain_http));
        if let Some((private, _)) = &key {
            cmd.arg("--key").arg(private).arg("--tlog-upload=false");
            if std::env::var_os("COSIGN_PASSWORD").is_none() {
                cmd.env("COSIGN_PASSWORD", "");
            }
        }
        Ok(cmd)
    };
    run(
        "cosign sign (image)",
        cosign_cmd(&["sign"])?.arg(&image_ref),
    )?;
    run(
        "cosign sign (chart)",
        cosign_cmd(&["sign"])?.arg(&chart_ref),
    )?;
    run(
        "cosign attest (SBOM)",
        cosign_cmd(&["attest", "--type", "cyclonedx"])?
            .arg("--predicate")
            .arg(&sbom_path)
            .arg(&image_ref),
    )?;
    Ok(Published {
        version: v.clone(),
        image: image_repo,
        image_digest: digest,
        chart_repository,
        chart_digest,
        plain_http: options.plain_http,
        public_key: key.map(|(_, public)| public),
        sbom: sbom_path,
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    for entry in fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            fs::copy(&path, &target).map_err(|e| format!("copying {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_version_is_cargos_or_a_dev_version_of_it() {
        let ok = |r: Option<&str>| check_version(r, "0.1.0", "0.1.0", "0.1.0");
        assert_eq!(
            ok(None).unwrap(),
            Version {
                version: "0.1.0".into(),
                dev: false
            }
        );
        assert!(!ok(Some("0.1.0")).unwrap().dev);
        assert!(ok(Some("0.1.0-dev.h1a2b3c")).unwrap().dev);
        assert!(ok(Some("0.1.0-dev")).unwrap().dev);
        for bad in [
            "0.2.0",
            "0.1.0-rc.1",
            "0.1.0-dev+abc",
            "0.1.0-dev..x",
            "",
            "v0.1.0",
            "0.1.0 ",
        ] {
            let err = ok(Some(bad)).unwrap_err();
            assert!(err.contains("0.1.0"), "{bad:?}: {err}");
        }
        let err = check_version(None, "0.1.0", "0.1.1", "0.1.0").unwrap_err();
        assert!(err.contains("Chart.yaml") && err.contains("0.1.1"), "{err}");
        let err = check_version(None, "0.1.0", "0.1.0", "0.0.9").unwrap_err();
        assert!(err.contains("appVersion"), "{err}");
    }

    #[test]
    fn versions_are_read_from_the_package_table_and_chart_yaml() {
        let toml = "[workspace]\nversion = \"9\"\n[package]\nname = \"x\"\nversion = \"0.1.0\"\n[dependencies]\nversion = \"1\"\n";
        assert_eq!(cargo_version(toml).as_deref(), Some("0.1.0"));
        assert_eq!(cargo_version("[workspace]\n"), None);
        let chart = "apiVersion: v2\nname: x\nversion: 0.1.0\nappVersion: \"0.1.0\"\n";
        assert_eq!(
            chart_versions(chart).unwrap(),
            ("0.1.0".to_string(), "0.1.0".to_string())
        );
        assert!(chart_versions("name: x\n").unwrap_err().contains("version"));
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_staged_chart_pins_the_version_and_the_image_digest_and_keeps_the_rest() {
        let chart = "apiVersion: v2\n# a comment\nversion: 0.1.0\nappVersion: \"0.1.0\"\nkubeVersion: \">=1.33.0-0\"\nannotations:\n  artifacthub.io/images: |\n    - name: kratos-operator\n      image: registry.example/o/kratos-operator:0.1.0\n";
        let values = "replicas: 1\nimage:\n  # -- repo\n  repository: registry.example/o/kratos-operator\n  tag: \"\"\n  digest: \"\"\n  pullPolicy: IfNotPresent\nother:\n  digest: keep\n";
        let (c, v) = staged_chart(
            chart,
            values,
            "0.1.0-dev.h1",
            "127.0.0.1:5000/x/kratos-operator",
            DIGEST,
        )
        .unwrap();
        assert!(c.contains("\nversion: 0.1.0-dev.h1\n"), "{c}");
        assert!(c.contains("\nappVersion: \"0.1.0-dev.h1\"\n"), "{c}");
        assert!(
            c.contains("# a comment\n") && c.contains("kubeVersion: \">=1.33.0-0\"\n"),
            "{c}"
        );
        assert!(
            c.contains(&format!(
                "image: 127.0.0.1:5000/x/kratos-operator:0.1.0-dev.h1@{DIGEST}\n"
            )),
            "{c}"
        );
        assert!(
            v.contains("  repository: 127.0.0.1:5000/x/kratos-operator\n"),
            "{v}"
        );
        assert!(v.contains(&format!("  digest: \"{DIGEST}\"\n")), "{v}");
        assert!(
            v.contains("  # -- repo\n") && v.contains("other:\n  digest: keep\n"),
            "{v}"
        );
        let parsed: yaml_serde::Value = yaml_serde::from_str(&v).unwrap();
        assert_eq!(parsed["image"]["digest"].as_str(), Some(DIGEST));
        assert!(staged_chart("name: x\n", values, "1", "r", DIGEST).is_err());
    }

    #[test]
    fn a_change_or_an_untracked_file_makes_the_tree_dirty() {
        let dir = std::env::temp_dir().join(format!("xtask-dirty-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .current_dir(&dir)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
        };
        git(&["init", "-q"]);
        fs::write(dir.join("a"), "1").unwrap();
        git(&["add", "a"]);
        git(&["commit", "-q", "-m", "a"]);
        assert!(!dirty(&dir).unwrap());
        fs::write(dir.join("a"), "2").unwrap();
        assert!(dirty(&dir).unwrap());
        git(&["checkout", "-q", "a"]);
        fs::write(dir.join("b"), "new").unwrap();
        assert!(dirty(&dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_chart_digest_is_read_from_helm_push() {
        let out = "Pushed: 127.0.0.1:5000/charts/kratos-operator:0.1.0\nDigest: sha256:abc\n";
        assert_eq!(pushed_digest(out).as_deref(), Some("sha256:abc"));
        assert_eq!(pushed_digest("Pushed: x\n"), None);
    }

    #[test]
    fn the_printed_commands_install_and_verify_exactly_the_release() {
        let p = Published {
            version: "0.1.0".into(),
            image: "registry.example/o/kratos-operator".into(),
            image_digest: DIGEST.into(),
            chart_repository: "oci://registry.example/o/charts".into(),
            chart_digest: "sha256:c".into(),
            plain_http: false,
            public_key: None,
            sbom: "sbom.json".into(),
        };
        let text = user_commands(&p);
        assert!(
            text.contains("helm install kratos-operator oci://registry.example/o/charts/kratos-operator --version 0.1.0 "),
            "{text}"
        );
        assert!(
            text.contains(&format!("registry.example/o/kratos-operator@{DIGEST}\n")),
            "{text}"
        );
        assert!(text.contains("--certificate-oidc-issuer"), "{text}");
        assert!(
            text.contains(&format!(
                "--certificate-identity {}/.github/workflows/release.yml@refs/tags/v0.1.0 ",
                env!("CARGO_PKG_REPOSITORY")
            )),
            "{text}"
        );
        assert!(
            !text.contains("--plain-http") && !text.contains("allow-http"),
            "{text}"
        );
        let local = Published {
            plain_http: true,
            public_key: Some("/k/cosign.pub".into()),
            ..p
        };
        let text = user_commands(&local);
        assert!(
            text.contains("--plain-http") && text.contains("--allow-http-registry"),
            "{text}"
        );
        assert!(
            text.contains("--key /k/cosign.pub") && !text.contains("oidc"),
            "{text}"
        );
    }
}
