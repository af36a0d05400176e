//! PostgreSQL for Kratos, from the machine's Debian packages (`postgresql`): one cluster per
//! Kratos instance, initialised in a directory of that instance, listening on a free loopback
//! port only (no Unix socket), trusting local connections. Production Kratos installations run
//! on PostgreSQL, so the environment does too by default; see [`crate::kratos::Database`].
//!
//! PostgreSQL refuses to run as root. As root, initdb and the server run in a new user
//! namespace (`unshare --user`): there they are an unprivileged user, and the files they create
//! still belong to the caller, so nothing else on the machine (no `postgres` account, no
//! permissions on the directories above) is needed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use nix::{sys::signal, unistd::Pid};

use crate::{
    Error, Result, io_err,
    process::{self, ProcessRecord},
};

/// The superuser initdb creates; Kratos connects as it.
pub const USER: &str = "kratos";
/// The database Kratos uses.
pub const DATABASE: &str = "kratos";
/// Where Debian installs the server binaries, one directory per major version.
const DEBIAN_LIB: &str = "/usr/lib/postgresql";
/// Overrides where the binaries are looked for (a directory with `initdb` and `postgres`).
pub const BIN_DIR_ENV: &str = "KRATOS_OPERATOR_TESTENV_PG_BIN";

/// The port of the server running in `dir` (as [`Postgres::start`] was given it), read from
/// its `postmaster.pid` (whose fourth line is the port); none when no server runs there.
pub fn port_of(dir: &Path) -> Option<u16> {
    let pid_file = fs::read_to_string(dir.join("data").join("postmaster.pid")).ok()?;
    pid_file.lines().nth(3)?.trim().parse().ok()
}

/// A running PostgreSQL server. Dropping it stops the server unless [`Postgres::detach`] was
/// called.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    child: Option<Child>,
    record: Option<ProcessRecord>,
    detached: bool,
}

impl Postgres {
    /// Initialises a cluster in `<dir>/data` unless one is there, starts the server on a free
    /// loopback port and, in a cluster it has just initialised, creates the [`DATABASE`]. Output goes to `<dir>/postgres.log`.
    pub fn start(dir: &Path) -> Result<Self> {
        let bin = bin_dir()?;
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let data = dir.join("data");
        let log = dir.join("postgres.log");
        let fresh = !data.join("PG_VERSION").exists();
        if fresh {
            init(&bin, &data, &dir.join("initdb.log"))?;
        }
        let port = process::free_port()?;
        let server = bin.join("postgres");
        let args = [
            "-D".to_string(),
            data.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            // No Unix socket: the default directory (/var/run/postgresql) belongs to the
            // system's own cluster, if there is one.
            "-c".into(),
            "unix_socket_directories=".into(),
        ];
        let (program, args) = unprivileged(&server, &args);
        let (mut child, mut record) = process::spawn("postgres", &program, &args, &[], &log)?;
        // As root, `unshare` execs the server: the recorded binary is the server's, so that
        // `is_running` (which compares /proc/<pid>/exe) recognises it.
        record.binary = fs::canonicalize(&server).unwrap_or(server);
        let ready = bin.join("pg_isready");
        let port_arg = port.to_string();
        process::wait_ready(&record, Some(&mut child), Duration::from_secs(60), || {
            quiet(
                &ready,
                &["-q", "-h", "127.0.0.1", "-p", &port_arg, "-U", USER],
            )
        })?;
        let postgres = Self {
            port,
            child: Some(child),
            record: Some(record),
            detached: false,
        };
        if fresh {
            let port = port.to_string();
            let args = ["-h", "127.0.0.1", "-p", &port, "-U", USER, DATABASE];
            run(
                &bin.join("createdb"),
                &args,
                &dir.join("createdb.log"),
                "createdb",
            )?;
        }
        Ok(postgres)
    }

    /// The DSN of [`DATABASE`] (query parameters may be appended with `&`).
    pub fn dsn(&self) -> String {
        format!(
            "postgres://{USER}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
            self.port
        )
    }

    /// The server's process id (the postmaster), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server with a fast shutdown (SIGINT: open connections are closed, then it
    /// exits cleanly), SIGKILL after 10 s. The data stays.
    pub fn stop(&mut self) {
        if let Some(record) = self.record.take() {
            if record.is_running() {
                let _ = signal::kill(Pid::from_raw(record.pid), signal::Signal::SIGINT);
            }
            record.stop(Duration::from_secs(10));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Keeps the server running after this value is dropped (the shared environment); its record
    /// lets `down` stop it.
    pub fn detach(mut self) -> Option<ProcessRecord> {
        self.detached = true;
        self.child = None;
        self.record.clone()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.detached {
            self.stop();
        }
    }
}

/// The directory of `initdb`, `postgres`, `pg_isready` and `createdb`: `$KRATOS_OPERATOR_TESTENV_PG_BIN`,
/// else the newest `/usr/lib/postgresql/<major>/bin` that has them.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir(DEBIAN_LIB)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| Error::MissingBinary {
            binary: "PostgreSQL server (initdb, postgres)".into(),
            version: "any".into(),
            path: PathBuf::from(DEBIAN_LIB),
        })
}

fn init(bin: &Path, data: &Path, log: &Path) -> Result<()> {
    let data_arg = data.display().to_string();
    let args = [
        "-D",
        &data_arg,
        "-U",
        USER,
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
    ];
    run(&bin.join("initdb"), &args, log, "initdb")
}

/// Runs a PostgreSQL tool to completion, its output in `log`.
fn run(binary: &Path, args: &[&str], log: &Path, component: &str) -> Result<()> {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    let (program, args) = unprivileged(binary, &args);
    let out = fs::File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(io_err("duplicating log handle"))?;
    let status = Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(io_err(format!("running {}", binary.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::NotReady {
            component: component.into(),
            message: format!("exited with {status}"),
            log: log.to_path_buf(),
            log_tail: process::log_tail(log, 30),
        })
    }
}

fn quiet(binary: &Path, args: &[&str]) -> bool {
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The command that runs `binary args` as an unprivileged user: itself, or as root
/// `unshare --user binary args` (see the module documentation).
fn unprivileged(binary: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    if nix::unistd::geteuid().is_root() {
        let mut wrapped = vec!["--user".to_string(), binary.display().to_string()];
        wrapped.extend(args.iter().cloned());
        (PathBuf::from("unshare"), wrapped)
    } else {
        (binary.to_path_buf(), args.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_runs_postgres_in_a_user_namespace_and_others_run_it_directly() {
        let (program, args) = unprivileged(Path::new("/pg/bin/postgres"), &["-D".into()]);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(program, PathBuf::from("unshare"));
            assert_eq!(args, ["--user", "/pg/bin/postgres", "-D"]);
        } else {
            assert_eq!(program, PathBuf::from("/pg/bin/postgres"));
            assert_eq!(args, ["-D"]);
        }
    }
}
