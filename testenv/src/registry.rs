//! The environment's OCI registry: CNCF Distribution ([`build::REGISTRY`]) on a loopback port,
//! plain HTTP, its data in the environment's directory. The node's containerd pulls every image
//! from it through its registry configuration ([`hosts_toml`]), the sandbox image included, and
//! `cargo xtask release` publishes the operator's image and chart to it.
//!
//! Images go in with crane ([`build::SIGSTORE`]): [`push_archive`] pushes an archive of
//! [`crate::image::write_oci_archive`] and returns the digest the registry stored it under.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    Error, Result, build, io_err,
    process::{self, ProcessRecord},
};

/// The registry's process name in the environment's state.
pub const PROCESS: &str = "registry";

/// The registry's configuration (pure): filesystem storage under `data`, plain HTTP on
/// `127.0.0.1:port`, deletes off (a released version is never overwritten or removed), no
/// outside notification or proxying.
pub fn config_yaml(data: &Path, port: u16) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
        data = data.display()
    )
}

/// Starts the registry with its data in `dir/registry` (emptied first: every environment starts
/// with an empty registry) and returns its address, `127.0.0.1:<port>`.
pub(crate) fn start(dir: &Path, logs: &Path, processes: &mut Vec<ProcessRecord>) -> Result<String> {
    let binary = build::REGISTRY.binary("registry")?;
    let root = dir.join("registry");
    if root.exists() {
        fs::remove_dir_all(&root).map_err(io_err(format!("removing {}", root.display())))?;
    }
    let data = root.join("data");
    fs::create_dir_all(&data).map_err(io_err(format!("creating {}", data.display())))?;
    let port = process::free_port()?;
    let config = root.join("config.yml");
    fs::write(&config, config_yaml(&data, port)).map_err(io_err("writing the registry config"))?;
    let (mut child, rec) = process::spawn(
        PROCESS,
        &binary,
        &["serve".into(), config.display().to_string()],
        // No OpenTelemetry exporter: it would try to reach a collector.
        &[("OTEL_TRACES_EXPORTER", "none".to_string())],
        &logs.join("registry.log"),
    )?;
    processes.push(rec.clone());
    let address = format!("127.0.0.1:{port}");
    let agent = process::http_agent(None);
    let url = format!("http://{address}/v2/");
    process::wait_ready(&rec, Some(&mut child), Duration::from_secs(30), || {
        process::http_ok(&agent, &url)
    })?;
    Ok(address)
}

/// containerd's host configuration for `registry` (`host:port`, pure): pull and resolve over
/// plain HTTP. It is written as `<config_path>/<registry>/hosts.toml`.
pub fn hosts_toml(registry: &str) -> String {
    format!(
        "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// cosign ([`build::SIGSTORE`]) for key-based signing and verification on this machine: it never
/// refreshes Sigstore's TUF metadata. cosign's verification looks the public TUF repository up
/// (a DNS query for tuf-repo-cdn.sigstore.dev) even when a key and no transparency log are
/// given; an empty TUF cache and a mirror on a closed loopback port make it skip that at once
/// and verify with the key alone. Not for keyless signing, which needs the real TUF root.
pub fn local_cosign() -> Result<Command> {
    let cosign = build::SIGSTORE.binary("cosign")?;
    let tuf = crate::cache_dir().join("cosign-no-tuf");
    fs::create_dir_all(&tuf).map_err(io_err(format!("creating {}", tuf.display())))?;
    let mut cmd = Command::new(cosign);
    cmd.env("TUF_ROOT", &tuf)
        .env("TUF_MIRROR", "http://127.0.0.1:1/no-tuf");
    Ok(cmd)
}

/// The crane binary of [`build::SIGSTORE`].
pub fn crane() -> Result<PathBuf> {
    build::SIGSTORE.binary("crane")
}

/// Pushes an image archive of [`crate::image::write_oci_archive`] to `reference`
/// (`host[:port]/path:tag`) with crane and returns its digest (`sha256:…`). `plain_http` is for
/// a registry without TLS, such as the environment's.
pub fn push_archive(archive: &Path, reference: &str, plain_http: bool) -> Result<String> {
    let image_err = |message: String| Error::Image {
        image: reference.to_string(),
        message,
    };
    // crane reads an image layout from a directory: unpack the archive beside itself.
    let layout = archive.with_extension("layout");
    if layout.exists() {
        fs::remove_dir_all(&layout).map_err(io_err(format!("removing {}", layout.display())))?;
    }
    let file = fs::File::open(archive).map_err(io_err(format!("reading {}", archive.display())))?;
    tar::Archive::new(file)
        .unpack(&layout)
        .map_err(io_err(format!("unpacking {}", archive.display())))?;
    let refs = layout.join("pushed-ref");
    let mut cmd = Command::new(crane()?);
    cmd.arg("push");
    if plain_http {
        cmd.arg("--insecure");
    }
    cmd.arg(&layout)
        .arg(reference)
        .arg("--image-refs")
        .arg(&refs);
    let output = cmd
        .output()
        .map_err(|e| image_err(format!("could not run crane: {e}")))?;
    if !output.status.success() {
        return Err(image_err(format!(
            "`crane push` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let pushed = fs::read_to_string(&refs).map_err(io_err("reading crane's --image-refs"))?;
    let _ = fs::remove_dir_all(&layout);
    pushed
        .lines()
        .find_map(|line| line.rsplit_once('@').map(|(_, d)| d.trim().to_string()))
        .filter(|d| d.starts_with("sha256:"))
        .ok_or_else(|| image_err(format!("crane reported no digest: {pushed:?}")))
}

/// The digest `reference` names in its registry, `None` when the registry has no such
/// repository or tag, and an error for anything else (an unreachable registry is not "absent").
pub fn digest_of(reference: &str, plain_http: bool) -> Result<Option<String>> {
    let mut cmd = Command::new(crane()?);
    cmd.arg("digest");
    if plain_http {
        cmd.arg("--insecure");
    }
    let output = cmd.arg(reference).output().map_err(|e| Error::Image {
        image: reference.to_string(),
        message: format!("could not run crane: {e}"),
    })?;
    if output.status.success() {
        return Ok(Some(
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        ));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if ["MANIFEST_UNKNOWN", "NAME_UNKNOWN", "404 Not Found"]
        .iter()
        .any(|code| stderr.contains(code))
    {
        Ok(None)
    } else {
        Err(Error::Image {
            image: reference.to_string(),
            message: format!(
                "`crane digest` failed ({}): {}",
                output.status,
                stderr.trim()
            ),
        })
    }
}

/// A release `cargo xtask release` published, as it records it (`release.json`): what the node
/// tests and the demo install, and what the signature tests verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The release's version (chart `version` and `appVersion`, the image's tag).
    pub version: String,
    /// The image's repository, `host[:port]/path/kratos-operator`.
    pub image: String,
    /// The image's digest (`sha256:…`): the chart pins it.
    pub image_digest: String,
    /// The chart's OCI repository without the chart name, `oci://host[:port]/path/charts`.
    pub chart_repository: String,
    /// The chart's digest in its repository.
    pub chart_digest: String,
    /// Whether the registry is plain HTTP (`--plain-http` for Helm, `--allow-http-registry` for
    /// cosign).
    pub plain_http: bool,
    /// The cosign public key the image, the chart and the SBOM attestation verify with; `None`
    /// for a keyless release.
    pub public_key: Option<PathBuf>,
    /// The SBOM (CycloneDX JSON) attached to the image as a signed attestation.
    pub sbom: PathBuf,
}

impl Published {
    /// The chart's OCI reference, `oci://host[:port]/path/charts/kratos-operator`.
    pub fn chart(&self) -> String {
        format!("{}/{CHART_NAME}", self.chart_repository)
    }

    /// The image by digest, as the chart runs it.
    pub fn image_by_digest(&self) -> String {
        format!("{}@{}", self.image, self.image_digest)
    }

    /// Where the environment in `dir` keeps the record of the release the test command
    /// published to its registry (emptied with the registry when the environment starts).
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("registry").join("release.json")
    }

    /// The release recorded for the environment in `dir`, if any.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(dir);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::State {
                path,
                message: e.to_string(),
            })
    }

    /// Records this release for the environment in `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))
    }
}

/// The chart's name in its OCI repository.
pub const CHART_NAME: &str = "kratos-operator";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_listens_on_loopback_only_with_its_data_in_the_environment() {
        let yaml = config_yaml(Path::new("/env/registry/data"), 5123);
        assert!(yaml.contains("addr: 127.0.0.1:5123"), "{yaml}");
        assert!(yaml.contains("rootdirectory: /env/registry/data"), "{yaml}");
        assert!(!yaml.contains("delete"), "deletes stay off: {yaml}");
    }

    #[test]
    fn containerd_pulls_over_plain_http_from_that_address_only() {
        let toml = hosts_toml("127.0.0.1:5123");
        assert!(
            toml.starts_with("server = \"http://127.0.0.1:5123\""),
            "{toml}"
        );
        assert!(toml.contains("[host.\"http://127.0.0.1:5123\"]"), "{toml}");
        assert!(
            toml.contains("capabilities = [\"pull\", \"resolve\"]"),
            "{toml}"
        );
        assert!(!toml.contains("push"), "{toml}");
    }
}
