//! Flux in the environment: a Git server and Flux's source-controller and kustomize-controller,
//! built from their published modules ([`crate::build::FLUX_SOURCE`],
//! [`crate::build::FLUX_KUSTOMIZE`], [`crate::build::GITSERVER`]) and run on loopback against
//! the environment's API server, like kube-controller-manager. Their CRDs come from the same
//! module versions.
//!
//! What a user pushes to `git_url` (`git push $GIT_URL/<name>.git` creates the repository) a
//! GitRepository reads from `git_url_from_flux`; the two are the same address here, because the
//! controllers run on the host, not in pods. Nothing they are given reaches off the machine:
//! kustomize-controller refuses remote bases.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    Error, Result, build, io_err,
    process::{self, ProcessRecord},
};

/// The processes of Flux in the environment, in start order.
pub const PROCESSES: [&str; 3] = [
    "gitserver",
    "flux-source-controller",
    "flux-kustomize-controller",
];

/// The namespace the controllers run "in" (their `RUNTIME_NAMESPACE`): where Flux's own objects
/// usually live.
pub const NAMESPACE: &str = "flux-system";

/// How the environment's Flux is reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FluxState {
    /// Where a user pushes: `http://127.0.0.1:<port>`; `git push $GIT_URL/<name>.git` creates
    /// repository `<name>`.
    pub git_url: String,
    /// The same server as a GitRepository's `spec.url` names it.
    pub git_url_from_flux: String,
    /// The bare repositories.
    pub git_root: PathBuf,
}

/// What starting Flux needs of the environment.
pub struct Inputs<'a> {
    /// The environment's directory (`flux/` and `logs/` go there).
    pub dir: &'a Path,
    /// The environment's kubectl.
    pub kubectl: &'a Path,
    /// The admin kubeconfig (the controllers impersonate a Kustomization's
    /// `serviceAccountName` with it).
    pub kubeconfig: &'a Path,
}

/// The Git server's command line.
fn gitserver_args(port: u16, root: &Path) -> Vec<String> {
    vec![
        format!("-addr=127.0.0.1:{port}"),
        format!("-root={}", root.display()),
    ]
}

/// The ports of one controller: metrics and health (and for source-controller, its artifacts).
struct Ports {
    metrics: u16,
    health: u16,
}

/// The flags both controllers take: loopback ports, no leader election, console logs.
fn common_args(ports: &Ports) -> Vec<String> {
    vec![
        format!("--metrics-addr=127.0.0.1:{}", ports.metrics),
        format!("--health-addr=127.0.0.1:{}", ports.health),
        "--enable-leader-election=false".into(),
        "--log-encoding=console".into(),
        "--watch-all-namespaces=true".into(),
    ]
}

/// source-controller's command line: its artifacts in `storage`, served on loopback at
/// `storage_port` (the address kustomize-controller downloads them from).
fn source_args(ports: &Ports, storage: &Path, storage_port: u16) -> Vec<String> {
    let mut args = common_args(ports);
    args.extend([
        format!("--storage-path={}", storage.display()),
        format!("--storage-addr=127.0.0.1:{storage_port}"),
        format!("--storage-adv-addr=127.0.0.1:{storage_port}"),
    ]);
    args
}

/// kustomize-controller's command line: no remote bases (nothing is fetched from outside the
/// machine), and a failed `dependsOn` looked at again after 5 s instead of 30.
fn kustomize_args(ports: &Ports) -> Vec<String> {
    let mut args = common_args(ports);
    args.extend([
        "--no-remote-bases=true".into(),
        "--requeue-dependency=5s".into(),
    ]);
    args
}

/// Starts the Git server and both controllers, and installs Flux's CRDs and namespace. Every
/// process started is pushed to `processes`, also when a later step fails.
pub fn start(input: &Inputs<'_>, processes: &mut Vec<ProcessRecord>) -> Result<FluxState> {
    let flux_dir = input.dir.join("flux");
    let git_root = flux_dir.join("git");
    let storage = flux_dir.join("storage");
    let logs = input.dir.join("logs");
    // A new start begins with no repositories and no artifacts.
    if flux_dir.exists() {
        fs::remove_dir_all(&flux_dir)
            .map_err(io_err(format!("removing {}", flux_dir.display())))?;
    }
    for d in [&git_root, &storage, &logs] {
        fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
    }
    let source_bin = build::FLUX_SOURCE.binary("source-controller")?;
    let kustomize_bin = build::FLUX_KUSTOMIZE.binary("kustomize-controller")?;
    let git_bin = build::GITSERVER.binary("gitserver")?;
    let crds = [
        build::FLUX_SOURCE.crds_dir()?,
        build::FLUX_KUSTOMIZE.crds_dir()?,
    ];
    // The Git server uses the host's git (git-upload-pack, git-receive-pack).
    crate::node::host_tool("git", "git")?;

    let git_port = process::free_port()?;
    let (mut git, rec) = process::spawn(
        PROCESSES[0],
        &git_bin,
        &gitserver_args(git_port, &git_root),
        &[],
        &logs.join("gitserver.log"),
    )?;
    processes.push(rec.clone());
    process::wait_ready(&rec, Some(&mut git), Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", git_port)).is_ok()
    })?;

    let namespace = kubectl(
        input,
        &[
            "create",
            "namespace",
            NAMESPACE,
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        None,
    )?;
    kubectl(input, &["apply", "-f", "-"], Some(&namespace))?;
    for dir in &crds {
        let dir = dir.display().to_string();
        kubectl(
            input,
            &["apply", "--server-side", "--force-conflicts", "-f", &dir],
            None,
        )?;
        kubectl(
            input,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                &dir,
            ],
            None,
        )?;
    }

    let envs = [
        ("KUBECONFIG", input.kubeconfig.display().to_string()),
        ("RUNTIME_NAMESPACE", NAMESPACE.to_string()),
    ];
    let source_ports = Ports {
        metrics: process::free_port()?,
        health: process::free_port()?,
    };
    let storage_port = process::free_port()?;
    start_controller(
        PROCESSES[1],
        &source_bin,
        &source_args(&source_ports, &storage, storage_port),
        &envs,
        source_ports.health,
        &logs,
        processes,
    )?;
    let kustomize_ports = Ports {
        metrics: process::free_port()?,
        health: process::free_port()?,
    };
    start_controller(
        PROCESSES[2],
        &kustomize_bin,
        &kustomize_args(&kustomize_ports),
        &envs,
        kustomize_ports.health,
        &logs,
        processes,
    )?;
    let git_url = format!("http://127.0.0.1:{git_port}");
    Ok(FluxState {
        git_url_from_flux: git_url.clone(),
        git_url,
        git_root,
    })
}

fn kubectl(input: &Inputs<'_>, args: &[&str], stdin: Option<&str>) -> Result<String> {
    process::kubectl(input.kubectl, input.kubeconfig, args, stdin)?.map_err(Error::Config)
}

/// Starts one of Flux's controllers and waits until its `/readyz` answers.
fn start_controller(
    name: &str,
    binary: &Path,
    args: &[String],
    envs: &[(&str, String)],
    health: u16,
    logs: &Path,
    processes: &mut Vec<ProcessRecord>,
) -> Result<()> {
    let (mut child, rec) =
        process::spawn(name, binary, args, envs, &logs.join(format!("{name}.log")))?;
    processes.push(rec.clone());
    let agent = process::http_agent(None);
    process::wait_ready(&rec, Some(&mut child), Duration::from_secs(60), || {
        process::http_ok(&agent, &format!("http://127.0.0.1:{health}/readyz"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> Ports {
        Ports {
            metrics: 1001,
            health: 1002,
        }
    }

    #[test]
    fn every_address_the_controllers_listen_on_is_loopback() {
        let storage = Path::new("/s");
        for args in [
            source_args(&ports(), storage, 1003),
            kustomize_args(&ports()),
        ] {
            for addr in args.iter().filter(|a| a.contains("-addr=")) {
                let value = addr.split_once('=').map(|(_, v)| v).unwrap_or_default();
                assert!(value.starts_with("127.0.0.1:"), "{addr}");
            }
        }
        assert!(
            source_args(&ports(), storage, 1003)
                .contains(&"--storage-adv-addr=127.0.0.1:1003".into()),
            "kustomize-controller downloads artifacts where source-controller serves them"
        );
        assert!(gitserver_args(1004, Path::new("/g"))[0].starts_with("-addr=127.0.0.1:"));
    }

    #[test]
    fn kustomize_controller_fetches_nothing_from_outside() {
        assert!(kustomize_args(&ports()).contains(&"--no-remote-bases=true".into()));
    }
}
