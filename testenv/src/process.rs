//! Spawning, probing and stopping the environment's processes.

use std::{
    fs::{self, File},
    io::{Read, Seek, SeekFrom, Write},
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_err};

/// A process the environment started, as recorded in its state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Component name (etcd, kube-apiserver, ...).
    pub name: String,
    /// Process id.
    pub pid: i32,
    /// The executable, to make sure a recycled pid is never signalled.
    pub binary: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl ProcessRecord {
    /// Whether the recorded process is still running (and still the same program).
    pub fn is_running(&self) -> bool {
        let proc_dir = PathBuf::from(format!("/proc/{}", self.pid));
        // A zombie has no exe link; it counts as stopped.
        match fs::read_link(proc_dir.join("exe")) {
            Ok(exe) => {
                let exe = exe
                    .to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string();
                Path::new(&exe) == self.binary
                    || fs::canonicalize(&self.binary).is_ok_and(|b| b == Path::new(&exe))
            }
            Err(_) => false,
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        let pid = Pid::from_raw(self.pid);
        let _ = signal::kill(pid, signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = signal::kill(pid, signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// The last `lines` lines of a log file (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Spawns `binary args...` in its own process group (so Ctrl-C on the terminal that ran
/// `testenv up` does not stop it), with stdout and stderr appended to `log`.
pub fn spawn(
    name: &str,
    binary: &Path,
    args: &[String],
    envs: &[(&str, String)],
    log: &Path,
) -> Result<(Child, ProcessRecord)> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("opening {}", log.display())))?;
    let err = out.try_clone().map_err(io_err("duplicating log handle"))?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(io_err(format!("starting {}", binary.display())))?;
    let record = ProcessRecord {
        name: name.to_string(),
        pid: i32::try_from(child.id()).unwrap_or(i32::MAX),
        binary: fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf()),
        log: log.to_path_buf(),
    };
    Ok((child, record))
}

/// A free TCP port on 127.0.0.1 (asked of the kernel, so it never collides with a running
/// environment or a system service).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("finding a free port"))?
        .port();
    Ok(port)
}

/// Polls `probe` until it returns `Ok(true)`, the child exits, or `timeout` passes.
pub fn wait_ready(
    record: &ProcessRecord,
    child: Option<&mut Child>,
    timeout: Duration,
    mut probe: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut child = child;
    loop {
        if probe() {
            return Ok(());
        }
        let exited = match child.as_deref_mut() {
            Some(c) => c.try_wait().ok().flatten().map(|s| s.to_string()),
            None => (!record.is_running()).then(|| "exited".to_string()),
        };
        if let Some(status) = exited {
            return Err(not_ready(record, format!("process exited ({status})")));
        }
        if Instant::now() > deadline {
            return Err(not_ready(record, format!("not ready after {timeout:?}")));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// For a process that serves nothing to probe: waits about two seconds and fails if it exited.
pub fn wait_alive(record: &ProcessRecord, child: &mut Child) -> Result<()> {
    let mut polls = 0;
    wait_ready(record, Some(child), Duration::from_secs(10), || {
        polls += 1;
        polls > 10
    })
}

fn not_ready(record: &ProcessRecord, message: String) -> Error {
    Error::NotReady {
        component: record.name.clone(),
        message,
        log: record.log.clone(),
        log_tail: record.log_tail(30),
    }
}

/// An HTTP agent for readiness probes; `ca_pem` adds a trust anchor for the apiserver.
pub fn http_agent(ca_pem: Option<&[u8]>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)));
    if let Some(pem) = ca_pem
        && let Ok(cert) = ureq::tls::Certificate::from_pem(pem)
    {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert.to_owned()]))
            .build();
        config = config.tls_config(tls);
    }
    config.build().into()
}

/// Whether `GET url` answers 200.
pub fn http_ok(agent: &ureq::Agent, url: &str) -> bool {
    agent.get(url).call().is_ok_and(|r| r.status() == 200)
}

/// Runs `kubectl <args>` against `kubeconfig`, with `stdin` piped in: `Ok(Ok(stdout))`, or
/// `Ok(Err(message))` naming the command and its stderr when kubectl fails; `Err` when it cannot
/// be run at all.
pub fn kubectl(
    kubectl: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::result::Result<String, String>> {
    let what = format!("kubectl {}", args.join(" "));
    let mut child = Command::new(kubectl)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("running {what}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(io_err(format!("writing to {what}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("waiting for {what}")))?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })
}
