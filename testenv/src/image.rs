//! Single-layer OCI images assembled from local files, for the test environment's node: the
//! operator's static binary ([`operator_spec`]) and our own sandbox program ([`pause_spec`]).
//!
//! [`write_oci_archive`] writes an OCI image-layout tar archive (`oci-layout`, `index.json`,
//! `blobs/sha256/…` with an uncompressed layer, the config and the manifest), which
//! [`crate::registry::push_archive`] pushes to a registry (the environment's, from which the node
//! pulls, or a release's). No docker or buildah is involved.
//!
//! The archives are deterministic: every tar entry has mtime 0 and owner 0 (but the nonroot home
//! directory, owned by 65532 as in distroless), the entries are sorted, and the JSON documents
//! are serialized from structs and sorted maps. The same files give the same digests.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result, build, io_err};

/// The name the node's containerd knows the pause image by (its CRI `sandbox_image`).
pub const PAUSE_IMAGE: &str = "localhost/pause:testenv";
/// Where the node's sandbox image lives in the environment's registry (repository and tag).
pub const PAUSE_IN_REGISTRY: &str = "testenv/pause:testenv";
/// The name of the operator's image built from the work tree (`cargo xtask image`).
pub const OPERATOR_IMAGE: &str = "localhost/kratos-operator:dev";
/// Where the operator's binary is in its image (as in the Dockerfile).
pub const OPERATOR_PATH: &str = "/usr/local/bin/kratos-operator";
/// Where the pause binary is in its image.
pub const PAUSE_PATH: &str = "/pause";
/// The nonroot user and group of distroless, which the chart's securityContext expects.
pub const NONROOT: &str = "65532:65532";

const NONROOT_ID: u64 = 65532;
/// The search path of distroless images.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The host's CA bundle, packaged as distroless/static does (Debian's ca-certificates).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Timestamps in the config: the epoch, so that builds are reproducible.
const EPOCH: &str = "1970-01-01T00:00:00Z";

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// One file of an image: copied from the host into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// The file on the host.
    pub source: PathBuf,
    /// Its absolute path in the image.
    pub target: String,
    /// Its permission bits (e.g. `0o755`).
    pub mode: u32,
}

impl ImageFile {
    /// A file copied from `source` to `target` with `mode`.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<String>, mode: u32) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
            mode,
        }
    }
}

/// A single-layer image: its files and how it runs.
///
/// Besides the files, the layer always holds their parent directories, an empty `/tmp` (mode
/// 1777), `/etc/passwd`, `/etc/group` and `/etc/nsswitch.conf` with root and the nonroot user
/// 65532, and its home directory (each unless a file of the spec takes that path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// Full name with tag, e.g. `localhost/kratos-operator:dev` (`:latest` when none is given).
    pub name: String,
    /// The files of the layer.
    pub files: Vec<ImageFile>,
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// USER, e.g. `65532:65532` (empty: root).
    pub user: String,
    /// ENV, as `KEY=value`.
    pub env: Vec<String>,
    /// EXPOSE, e.g. `8080/tcp` (a bare port means tcp).
    pub exposed_ports: Vec<String>,
    /// LABEL.
    pub labels: BTreeMap<String, String>,
}

/// What [`write_oci_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImage {
    /// Full image name (with tag).
    pub name: String,
    /// The archive.
    pub archive: PathBuf,
    /// The image digest: the manifest's, as `ctr images ls` and the CRI report it.
    pub digest: String,
    /// Size of the manifest.
    pub manifest_size: u64,
    /// Digest of the config (the image ID of the CRI).
    pub config_digest: String,
    /// Digest of the uncompressed layer (also its diff ID).
    pub layer_digest: String,
    /// Size of the layer.
    pub layer_size: u64,
    /// Size of the archive.
    pub archive_size: u64,
}

/// The image of the operator: `binary` (a static build) at [`OPERATOR_PATH`], laid out like
/// the Dockerfile's image on distroless/static (ENTRYPOINT the binary, CMD `run`, USER
/// 65532:65532, EXPOSE 8080, the same labels, the host's CA bundle when there is one).
pub fn operator_spec(binary: &Path) -> ImageSpec {
    let mut files = vec![ImageFile::new(binary, OPERATOR_PATH, 0o755)];
    let mut env = vec![DEFAULT_PATH.to_string()];
    if Path::new(CA_BUNDLE).is_file() {
        files.push(ImageFile::new(CA_BUNDLE, CA_BUNDLE, 0o644));
        env.push(format!("SSL_CERT_FILE={CA_BUNDLE}"));
    }
    let labels = [
        ("org.opencontainers.image.title", "kratos-operator"),
        (
            "org.opencontainers.image.description",
            "Kubernetes operator that manages Ory Kratos identities declaratively",
        ),
        // The workspace's `package.repository` and `package.license` (Cargo.toml), the one
        // place each is written.
        (
            "org.opencontainers.image.source",
            env!("CARGO_PKG_REPOSITORY"),
        ),
        (
            "org.opencontainers.image.licenses",
            env!("CARGO_PKG_LICENSE"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ImageSpec {
        name: OPERATOR_IMAGE.to_string(),
        files,
        entrypoint: vec![OPERATOR_PATH.to_string()],
        cmd: vec!["run".to_string()],
        user: NONROOT.to_string(),
        env,
        exposed_ports: vec!["8080/tcp".to_string()],
        labels,
    }
}

/// The pause image [`PAUSE_IMAGE`]: the cached build of [`build::PAUSE`] (our own
/// `testenv/go/pause`) at [`PAUSE_PATH`], running as 65532:65532. Fails with
/// [`Error::MissingBinary`] until `cargo xtask testenv build` (or [`build::Component::build`])
/// built it.
pub fn pause_spec() -> Result<ImageSpec> {
    let binary = build::PAUSE.binary("pause")?;
    Ok(ImageSpec {
        name: PAUSE_IMAGE.to_string(),
        files: vec![ImageFile::new(binary, PAUSE_PATH, 0o755)],
        entrypoint: vec![PAUSE_PATH.to_string()],
        cmd: Vec::new(),
        user: NONROOT.to_string(),
        env: vec![DEFAULT_PATH.to_string()],
        exposed_ports: Vec::new(),
        labels: BTreeMap::new(),
    })
}

/// The target triple of the operator's static build (the host's; musl is not needed).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The file name of the operator image's archive in the directory of [`operator_archive`].
pub const OPERATOR_ARCHIVE: &str = "kratos-operator-dev.oci.tar";

/// A static release build of the operator (see [`build_static_operator`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticBuild {
    /// The binary.
    pub binary: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// What `<binary> version` printed.
    pub version: String,
}

/// Builds the operator's release binary statically linked against glibc
/// (`cargo build --release --locked --bin kratos-operator --target x86_64-unknown-linux-gnu`
/// with `-C target-feature=+crt-static`) in `target_dir`, a target directory of its own so that
/// the normal build cache keeps its flags. Checks that the result has no program interpreter
/// and that `<binary> version` runs.
pub fn build_static_operator(target_dir: &Path) -> Result<StaticBuild> {
    let root = crate::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build_err = |message: String| Error::Build {
        component: "kratos-operator (static)".into(),
        message,
    };
    let mut command = Command::new(cargo);
    // The variables cargo sets for the program that runs this (xtask under `cargo run`, a test
    // under `cargo test`) describe that program's package. Some build scripts (ring's) ask to
    // rerun when they change, so inheriting them would rebuild half the graph whenever the
    // caller differs: the build sees none of them.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || name.starts_with("CARGO_CRATE_")
            || name.starts_with("CARGO_BIN_")
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*name)
        {
            command.env_remove(&*name);
        }
    }
    let status = command
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "kratos-operator",
            "--target",
            STATIC_TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        // With --target the flags reach only the target's crates, not build scripts and proc
        // macros (which must stay dynamic); RUSTFLAGS loses to the encoded form, so drop that.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .map_err(|e| build_err(format!("could not run cargo: {e}")))?;
    if !status.success() {
        return Err(build_err(format!("cargo build exited with {status}")));
    }
    let binary = target_dir
        .join(STATIC_TARGET)
        .join("release")
        .join("kratos-operator");
    check_static(&binary)?;
    let size = fs::metadata(&binary)
        .map_err(io_err(format!("reading {}", binary.display())))?
        .len();
    let output = Command::new(&binary)
        .arg("version")
        .output()
        .map_err(io_err(format!("running {} version", binary.display())))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || !version.starts_with("kratos-operator ") {
        return Err(build_err(format!(
            "`{} version` failed ({}): {version} {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(StaticBuild {
        binary,
        size,
        version,
    })
}

/// Writes the operator's image ([`operator_spec`] of `binary`) as `dir/`[`OPERATOR_ARCHIVE`].
pub fn operator_archive(binary: &Path, dir: &Path) -> Result<WrittenImage> {
    write_oci_archive(&operator_spec(binary), &dir.join(OPERATOR_ARCHIVE))
}

/// The file name of the pause image's archive in the directory of [`pause_archive`].
pub const PAUSE_ARCHIVE: &str = "pause-testenv.oci.tar";

/// Writes the pause image ([`pause_spec`]) as `dir/`[`PAUSE_ARCHIVE`] and returns its path,
/// for [`import`].
pub fn pause_archive(dir: &Path) -> Result<PathBuf> {
    let out = dir.join(PAUSE_ARCHIVE);
    write_oci_archive(&pause_spec()?, &out)?;
    Ok(out)
}

/// Writes the image as an OCI image-layout tar archive at `out` (through a `.partial` file, so a
/// failed write leaves no half archive under the final name).
pub fn write_oci_archive(spec: &ImageSpec, out: &Path) -> Result<WrittenImage> {
    let name = full_name(&spec.name)?;
    let image_err = |message: String| Error::Image {
        image: name.clone(),
        message,
    };

    let layer = layer_tar(spec, &name)?;
    let layer_desc = Blob::new(layer);

    let config = ImageConfig {
        created: EPOCH,
        architecture: "amd64",
        os: "linux",
        config: RunConfig {
            user: spec.user.clone(),
            exposed_ports: spec
                .exposed_ports
                .iter()
                .map(|p| {
                    let port = if p.contains('/') {
                        p.clone()
                    } else {
                        format!("{p}/tcp")
                    };
                    (port, Empty {})
                })
                .collect(),
            env: spec.env.clone(),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            working_dir: "/",
            labels: spec.labels.clone(),
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![layer_desc.digest.clone()],
        },
        history: vec![History {
            created: EPOCH,
            created_by: format!("kratos-operator testenv: {} files", spec.files.len()),
        }],
    };
    let config = Blob::new(to_json(&config).map_err(&image_err)?);

    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE,
        config: config.descriptor(CONFIG_MEDIA_TYPE),
        layers: vec![layer_desc.descriptor(LAYER_MEDIA_TYPE)],
    };
    let manifest = Blob::new(to_json(&manifest).map_err(&image_err)?);

    let mut manifest_desc = manifest.descriptor(MANIFEST_MEDIA_TYPE);
    manifest_desc.platform = Some(Platform {
        architecture: "amd64",
        os: "linux",
    });
    manifest_desc.annotations = BTreeMap::from([
        ("io.containerd.image.name".to_string(), name.clone()),
        (
            "org.opencontainers.image.ref.name".to_string(),
            tag_of(&name).to_string(),
        ),
    ]);
    let index = Index {
        schema_version: 2,
        media_type: INDEX_MEDIA_TYPE,
        manifests: vec![manifest_desc],
    };
    let index = to_json(&index).map_err(&image_err)?;

    // Every entry of the archive, sorted by path.
    let mut entries: BTreeMap<String, (u32, Option<&[u8]>)> = BTreeMap::new();
    entries.insert("blobs/".into(), (0o755, None));
    entries.insert("blobs/sha256/".into(), (0o755, None));
    for blob in [&layer_desc, &config, &manifest] {
        entries.insert(blob.path(), (0o644, Some(blob.data.as_slice())));
    }
    entries.insert("index.json".into(), (0o644, Some(index.as_slice())));
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    entries.insert("oci-layout".into(), (0o644, Some(layout.as_slice())));

    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = write_tar(&partial, &entries).and_then(|()| {
        fs::rename(&partial, out).map_err(io_err(format!(
            "moving {} to {}",
            partial.display(),
            out.display()
        )))
    });
    if written.is_err() {
        // Best effort: the error below is what matters.
        let _ = fs::remove_file(&partial);
    }
    written?;
    let archive_size = fs::metadata(out)
        .map_err(io_err(format!("reading {}", out.display())))?
        .len();

    Ok(WrittenImage {
        name,
        archive: out.to_path_buf(),
        digest: manifest.digest,
        manifest_size: manifest.data.len() as u64,
        config_digest: config.digest,
        layer_digest: layer_desc.digest,
        layer_size: layer_desc.data.len() as u64,
        archive_size,
    })
}

/// Writes `entries` (path -> mode and contents, `None` for a directory) as a tar file at `path`.
fn write_tar(path: &Path, entries: &BTreeMap<String, (u32, Option<&[u8]>)>) -> Result<()> {
    let context = format!("writing {}", path.display());
    let file = fs::File::create(path).map_err(io_err(&context))?;
    let mut archive = tar::Builder::new(BufWriter::new(file));
    for (entry, (mode, data)) in entries {
        match data {
            None => append_dir(&mut archive, entry, *mode, 0),
            Some(data) => append_file(&mut archive, entry, *mode, data),
        }
        .map_err(io_err(&context))?;
    }
    let mut writer = archive.into_inner().map_err(io_err(&context))?;
    writer.flush().map_err(io_err(&context))?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|file| file.sync_all())
        .map_err(io_err(&context))
}

/// Checks that `path` is a statically linked x86-64 ELF executable: one without a program
/// interpreter (`PT_INTERP`), which a distroless-style image (no libc, no loader) can run.
pub fn check_static(path: &Path) -> Result<()> {
    let data = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    elf_interpreter(&data)
        .and_then(|interp| match interp {
            None => Ok(()),
            Some(interp) => Err(format!(
                "is dynamically linked (program interpreter {interp}); a static build is needed"
            )),
        })
        .map_err(|message| Error::Image {
            image: path.display().to_string(),
            message,
        })
}

/// The program interpreter of a 64-bit little-endian x86-64 ELF executable, `None` when it has
/// none (static), or why the bytes are not such an executable.
fn elf_interpreter(data: &[u8]) -> std::result::Result<Option<String>, String> {
    const PT_INTERP: u32 = 3;
    let u16_at = |off: usize| -> Option<u16> {
        Some(u16::from_le_bytes(data.get(off..off + 2)?.try_into().ok()?))
    };
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
    };
    let u64_at = |off: usize| -> Option<usize> {
        usize::try_from(u64::from_le_bytes(data.get(off..off + 8)?.try_into().ok()?)).ok()
    };
    if data.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("is not an ELF file".into());
    }
    if data.get(4..6) != Some([2u8, 1].as_slice()) || u16_at(0x12) != Some(0x3e) {
        return Err("is not a 64-bit little-endian x86-64 ELF file".into());
    }
    if !matches!(u16_at(0x10), Some(2 | 3)) {
        return Err("is not an ELF executable".into());
    }
    let truncated = || "has truncated ELF program headers".to_string();
    let phoff = u64_at(0x20).ok_or_else(truncated)?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(truncated)?);
    for i in 0..phnum {
        let header = phoff
            .checked_add(i.checked_mul(phentsize).ok_or_else(truncated)?)
            .ok_or_else(truncated)?;
        if u32_at(header).ok_or_else(truncated)? != PT_INTERP {
            continue;
        }
        let offset = u64_at(header + 8).ok_or_else(truncated)?;
        let size = u64_at(header + 32).ok_or_else(truncated)?;
        let interp = offset
            .checked_add(size)
            .and_then(|end| data.get(offset..end))
            .ok_or_else(truncated)?;
        let interp = String::from_utf8_lossy(interp);
        return Ok(Some(interp.trim_end_matches('\0').to_string()));
    }
    Ok(None)
}

/// The name with a tag (`:latest` when it has none).
fn full_name(name: &str) -> Result<String> {
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.is_empty()
        || last.is_empty()
        || name.contains('@')
        || name.contains(char::is_whitespace)
    {
        return Err(Error::Image {
            image: name.to_string(),
            message: "not an image name like localhost/name:tag".into(),
        });
    }
    Ok(if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    })
}

/// The tag of a full name.
fn tag_of(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once(':').map_or("latest", |(_, tag)| tag)
}

/// One entry of the layer.
enum LayerEntry {
    Dir { mode: u32, owner: u64 },
    File { mode: u32, data: Vec<u8> },
}

/// The layer of `spec`: its files, their parents and the base files, as an uncompressed tar.
fn layer_tar(spec: &ImageSpec, name: &str) -> Result<Vec<u8>> {
    let image_err = |message: String| Error::Image {
        image: name.to_string(),
        message,
    };
    let mut entries: BTreeMap<String, LayerEntry> = BTreeMap::new();
    for file in &spec.files {
        let path = layer_path(&file.target).map_err(&image_err)?;
        let data = fs::read(&file.source).map_err(io_err(format!(
            "reading {} for {name}",
            file.source.display()
        )))?;
        let mode = file.mode & 0o7777;
        if entries
            .insert(path, LayerEntry::File { mode, data })
            .is_some()
        {
            return Err(image_err(format!("{} is in the image twice", file.target)));
        }
    }
    let passwd = "root:x:0:0:root:/root:/sbin/nologin\n\
                  nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
    let group = "root:x:0:\nnonroot:x:65532:\n";
    let nsswitch = "passwd: files\ngroup: files\nhosts: files dns\n";
    for (path, data) in [
        ("etc/passwd", passwd),
        ("etc/group", group),
        ("etc/nsswitch.conf", nsswitch),
    ] {
        entries
            .entry(path.to_string())
            .or_insert_with(|| LayerEntry::File {
                mode: 0o644,
                data: data.as_bytes().to_vec(),
            });
    }
    for (path, mode, owner) in [("tmp", 0o1777, 0), ("home/nonroot", 0o700, NONROOT_ID)] {
        entries
            .entry(path.to_string())
            .or_insert(LayerEntry::Dir { mode, owner });
    }
    // Every parent directory, so that each entry's directory exists before it.
    let mut parents = Vec::new();
    for path in entries.keys() {
        let mut parent = path.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            parents.push(dir.to_string());
            parent = dir;
        }
    }
    for dir in parents {
        match entries.get(&dir) {
            Some(LayerEntry::File { .. }) => {
                return Err(image_err(format!(
                    "/{dir} is a file but also the directory of another file"
                )));
            }
            Some(LayerEntry::Dir { .. }) => {}
            None => {
                entries.insert(
                    dir,
                    LayerEntry::Dir {
                        mode: 0o755,
                        owner: 0,
                    },
                );
            }
        }
    }

    let context = format!("building the layer of {name}");
    let mut layer = tar::Builder::new(Vec::new());
    for (path, entry) in &entries {
        match entry {
            LayerEntry::Dir { mode, owner } => {
                append_dir(&mut layer, &format!("{path}/"), *mode, *owner)
            }
            LayerEntry::File { mode, data } => append_file(&mut layer, path, *mode, data),
        }
        .map_err(io_err(&context))?;
    }
    layer.into_inner().map_err(io_err(&context))
}

/// The path of an absolute image path in the layer (relative, no `.` or `..`).
fn layer_path(target: &str) -> std::result::Result<String, String> {
    let Some(relative) = target.strip_prefix('/') else {
        return Err(format!("{target} is not an absolute path"));
    };
    let parts: Vec<&str> = relative.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(format!(
            "{target} is not a normal path of a file (no empty, . or .. parts)"
        ));
    }
    Ok(parts.join("/"))
}

fn header(kind: tar::EntryType, mode: u32, owner: u64, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(owner);
    header.set_gid(owner);
    header.set_mtime(0);
    header.set_size(size);
    header
}

fn append_dir<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    owner: u64,
) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Directory, mode, owner, 0);
    archive.append_data(&mut header, path, std::io::empty())
}

fn append_file<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Regular, mode, 0, data.len() as u64);
    archive.append_data(&mut header, path, data)
}

/// A content-addressed blob.
struct Blob {
    digest: String,
    data: Vec<u8>,
}

impl Blob {
    fn new(data: Vec<u8>) -> Self {
        Self {
            digest: sha256(&data),
            data,
        }
    }

    fn path(&self) -> String {
        format!("blobs/sha256/{}", self.digest.trim_start_matches("sha256:"))
    }

    fn descriptor(&self, media_type: &'static str) -> Descriptor {
        Descriptor {
            media_type,
            digest: self.digest.clone(),
            size: self.data.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn to_json<T: Serialize>(value: &T) -> std::result::Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| format!("serializing the image's JSON: {e}"))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Platform {
    architecture: &'static str,
    os: &'static str,
}

#[derive(Serialize)]
struct ImageConfig {
    created: &'static str,
    architecture: &'static str,
    os: &'static str,
    config: RunConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(skip_serializing_if = "String::is_empty")]
    user: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    exposed_ports: BTreeMap<String, Empty>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entrypoint: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cmd: Vec<String>,
    working_dir: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

/// `{}`, the value of an exposed port.
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: &'static str,
    created_by: String,
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use serde_json::Value;

    use super::*;

    /// A scratch directory of one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "kratos-testenv-image-{}-{name}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn spec(dir: &Path) -> ImageSpec {
        let binary = dir.join("app");
        fs::write(&binary, b"\x7fELF not really a program").unwrap();
        let long = dir.join("long");
        fs::write(&long, b"a file with a path longer than 100 bytes").unwrap();
        ImageSpec {
            name: "localhost/app:dev".into(),
            files: vec![
                ImageFile::new(&binary, "/usr/local/bin/app", 0o755),
                ImageFile::new(&long, format!("/opt/{}/file", "x".repeat(120)), 0o600),
            ],
            entrypoint: vec!["/usr/local/bin/app".into()],
            cmd: vec!["run".into()],
            user: NONROOT.into(),
            env: vec!["A=b".into()],
            exposed_ports: vec!["8080".into()],
            labels: BTreeMap::from([("l".to_string(), "v".to_string())]),
        }
    }

    /// Every entry of a tar archive: path -> (header, data).
    fn entries(data: &[u8]) -> BTreeMap<String, (tar::Header, Vec<u8>)> {
        let mut archive = tar::Archive::new(data);
        let mut out = BTreeMap::new();
        let mut order = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            order.push(path.clone());
            out.insert(path, (entry.header().clone(), content));
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "entries are sorted");
        out
    }

    fn blob<'a>(
        archive: &'a BTreeMap<String, (tar::Header, Vec<u8>)>,
        descriptor: &Value,
    ) -> &'a [u8] {
        let digest = descriptor["digest"].as_str().unwrap();
        let path = format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap());
        let data = &archive.get(&path).unwrap_or_else(|| panic!("{path}")).1;
        assert_eq!(sha256(data), digest, "{path}");
        assert_eq!(
            descriptor["size"].as_u64(),
            Some(data.len() as u64),
            "{path}"
        );
        data
    }

    #[test]
    fn archive_is_a_consistent_oci_layout() {
        let scratch = Scratch::new("layout");
        let out = scratch.0.join("out").join("image.oci.tar");
        let written = write_oci_archive(&spec(&scratch.0), &out).unwrap();
        let data = fs::read(&out).unwrap();
        assert_eq!(written.archive_size, data.len() as u64);
        let archive = entries(&data);
        for (path, (header, _)) in &archive {
            assert_eq!(header.mtime().unwrap(), 0, "{path}");
            assert_eq!(header.uid().unwrap(), 0, "{path}");
        }

        let layout: Value = serde_json::from_slice(&archive["oci-layout"].1).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index: Value = serde_json::from_slice(&archive["index.json"].1).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1);
        let desc = &manifests[0];
        assert_eq!(desc["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(desc["digest"], written.digest.as_str());
        assert_eq!(
            desc["annotations"]["io.containerd.image.name"],
            "localhost/app:dev"
        );
        assert_eq!(
            desc["annotations"]["org.opencontainers.image.ref.name"],
            "dev"
        );
        assert_eq!(desc["platform"]["architecture"], "amd64");

        let manifest: Value = serde_json::from_slice(blob(&archive, desc)).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(manifest["config"]["digest"], written.config_digest.as_str());
        let config: Value = serde_json::from_slice(blob(&archive, &manifest["config"])).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);
        let layer = blob(&archive, &layers[0]);
        assert_eq!(layer.len() as u64, written.layer_size);

        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([written.layer_digest])
        );
        assert_eq!(config["config"]["User"], NONROOT);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/usr/local/bin/app"])
        );
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
        assert_eq!(config["config"]["Env"], serde_json::json!(["A=b"]));
        assert_eq!(
            config["config"]["ExposedPorts"],
            serde_json::json!({"8080/tcp": {}})
        );
        assert_eq!(config["config"]["Labels"]["l"], "v");

        let layer = entries(layer);
        let long = format!("opt/{}/file", "x".repeat(120));
        for dir in [
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "etc/",
            "opt/",
            "home/",
        ] {
            let (header, _) = &layer[dir];
            assert_eq!(header.entry_type(), tar::EntryType::Directory, "{dir}");
            assert_eq!(header.mode().unwrap(), 0o755, "{dir}");
        }
        let (tmp, _) = &layer["tmp/"];
        assert_eq!(tmp.entry_type(), tar::EntryType::Directory);
        assert_eq!(tmp.mode().unwrap(), 0o1777);
        let (home, _) = &layer["home/nonroot/"];
        assert_eq!(home.uid().unwrap(), NONROOT_ID);
        let (app, content) = &layer["usr/local/bin/app"];
        assert_eq!(app.mode().unwrap(), 0o755);
        assert_eq!(content, b"\x7fELF not really a program");
        assert_eq!(layer[&long].0.mode().unwrap(), 0o600);
        let passwd = String::from_utf8(layer["etc/passwd"].1.clone()).unwrap();
        assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
        for (path, (header, _)) in &layer {
            assert_eq!(header.mtime().unwrap(), 0, "{path}");
            if path != "home/nonroot/" {
                assert_eq!(header.uid().unwrap(), 0, "{path}");
                assert_eq!(header.gid().unwrap(), 0, "{path}");
            }
        }
    }

    #[test]
    fn same_files_give_the_same_archive() {
        let scratch = Scratch::new("deterministic");
        let spec = spec(&scratch.0);
        let first = write_oci_archive(&spec, &scratch.0.join("a.tar")).unwrap();
        // A later mtime of the source changes nothing.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&spec.files[0].source, b"\x7fELF not really a program").unwrap();
        let second = write_oci_archive(&spec, &scratch.0.join("b.tar")).unwrap();
        assert_eq!(first.digest, second.digest);
        assert_eq!(
            fs::read(scratch.0.join("a.tar")).unwrap(),
            fs::read(scratch.0.join("b.tar")).unwrap()
        );
        assert!(!scratch.0.join("a.tar.partial").exists());

        fs::write(&spec.files[0].source, b"another program").unwrap();
        let third = write_oci_archive(&spec, &scratch.0.join("c.tar")).unwrap();
        assert_ne!(first.digest, third.digest);
        assert_ne!(first.layer_digest, third.layer_digest);
    }

    #[test]
    fn bad_specs_are_refused() {
        let scratch = Scratch::new("bad");
        let good = spec(&scratch.0);
        let source = good.files[0].source.clone();
        for target in [
            "relative/app",
            "/usr/../app",
            "/usr//app",
            "/",
            "/usr/./app",
        ] {
            let mut bad = good.clone();
            bad.files = vec![ImageFile::new(&source, target, 0o755)];
            let err = write_oci_archive(&bad, &scratch.0.join("x.tar")).unwrap_err();
            assert!(matches!(err, Error::Image { .. }), "{target}: {err}");
        }
        let mut twice = good.clone();
        twice.files = vec![
            ImageFile::new(&source, "/app", 0o755),
            ImageFile::new(&source, "/app", 0o644),
        ];
        let err = write_oci_archive(&twice, &scratch.0.join("x.tar")).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let mut file_as_dir = good.clone();
        file_as_dir.files = vec![
            ImageFile::new(&source, "/app", 0o755),
            ImageFile::new(&source, "/app/inner", 0o644),
        ];
        let err = write_oci_archive(&file_as_dir, &scratch.0.join("x.tar")).unwrap_err();
        assert!(err.to_string().contains("is a file"), "{err}");
        let mut missing = good.clone();
        missing.files = vec![ImageFile::new(scratch.0.join("nope"), "/app", 0o755)];
        let err = write_oci_archive(&missing, &scratch.0.join("x.tar")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let mut no_name = good;
        no_name.name = String::new();
        assert!(write_oci_archive(&no_name, &scratch.0.join("x.tar")).is_err());
        assert!(!scratch.0.join("x.tar").exists());
    }

    #[test]
    fn names_get_a_tag() {
        assert_eq!(full_name("localhost/a").unwrap(), "localhost/a:latest");
        assert_eq!(
            full_name("localhost:5000/a").unwrap(),
            "localhost:5000/a:latest"
        );
        assert_eq!(full_name(PAUSE_IMAGE).unwrap(), PAUSE_IMAGE);
        assert_eq!(tag_of(PAUSE_IMAGE), "testenv");
        assert_eq!(tag_of("localhost:5000/a:latest"), "latest");
        assert!(full_name("localhost/").is_err());
        assert!(full_name("a@sha256:00").is_err());
    }

    /// A minimal ELF header with one program header of `p_type`.
    fn elf(p_type: u32) -> Vec<u8> {
        let mut data = vec![0u8; 0x40 + 0x38 + 16];
        data[..4].copy_from_slice(b"\x7fELF");
        data[4] = 2; // 64-bit
        data[5] = 1; // little-endian
        data[0x10..0x12].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN (static-pie)
        data[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
        data[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        data[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes()); // e_phentsize
        data[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        data[0x40..0x44].copy_from_slice(&p_type.to_le_bytes());
        let interp = 0x40u64 + 0x38;
        data[0x48..0x50].copy_from_slice(&interp.to_le_bytes()); // p_offset
        data[0x60..0x68].copy_from_slice(&11u64.to_le_bytes()); // p_filesz
        data[0x78..0x83].copy_from_slice(b"/lib/ld.so\0");
        data
    }

    #[test]
    fn static_executables_are_told_from_dynamic_ones() {
        assert_eq!(elf_interpreter(&elf(1)), Ok(None));
        assert_eq!(elf_interpreter(&elf(3)), Ok(Some("/lib/ld.so".to_string())));
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        let mut truncated = elf(3);
        truncated.truncate(0x50);
        assert!(elf_interpreter(&truncated).is_err());
        // This test binary itself is a normal (dynamic) build, unless crt-static is forced.
        let me = std::env::current_exe().unwrap();
        if cfg!(target_feature = "crt-static") {
            check_static(&me).unwrap();
        } else {
            let err = check_static(&me).unwrap_err();
            assert!(err.to_string().contains("dynamically linked"), "{err}");
        }
    }
}
