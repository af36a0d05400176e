//! A real Ory Kratos on loopback, on PostgreSQL (its own server, see [`crate::postgres`]) or
//! sqlite (see [`Database`]), with data on disk so that it survives a restart of Kratos; an
//! email/password schema (`customer`, the default), a username schema (`employee`) and a schema
//! with no identifier (`profile`); the password, link and code methods enabled so both admin
//! recovery endpoints work. bcrypt cost 4 in dev mode.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::Child,
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    Error, Result, build, io_err,
    postgres::Postgres,
    process::{self, ProcessRecord},
};

/// Where Kratos keeps its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// A PostgreSQL server of its own, as production installations run (the default).
    #[default]
    Postgres,
    /// A sqlite file: starts a second faster, for a quick run. Concurrent writers wait for its
    /// single write lock.
    Sqlite,
}

impl Database {
    /// The variable that selects the database: `postgres` (the default) or `sqlite`.
    pub const ENV: &str = "KRATOS_OPERATOR_TESTENV_DATABASE";

    /// The database `$KRATOS_OPERATOR_TESTENV_DATABASE` names, [`Database::Postgres`] when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var(Self::ENV) {
            Ok(value) if !value.is_empty() => value.parse(),
            _ => Ok(Self::default()),
        }
    }
}

impl FromStr for Database {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "sqlite" => Ok(Self::Sqlite),
            other => Err(Error::Config(format!(
                "unknown database {other:?} (in {} or --database): use postgres or sqlite",
                Self::ENV
            ))),
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        })
    }
}

/// Ids of the identity schemas every instance serves.
pub mod schemas {
    /// Email + password; the default schema.
    pub const CUSTOMER: &str = "customer";
    /// Username + password, with a required email.
    pub const EMPLOYEE: &str = "employee";
    /// No identifier trait at all (an email that is only data): nothing in Kratos makes these
    /// identities unique, as with OIDC-only schemas.
    pub const PROFILE: &str = "profile";
}

/// The return URL Kratos accepts for recovery links (`selfservice.allowed_return_urls`).
pub const ALLOWED_RETURN_URL: &str = "http://127.0.0.1:4455/welcome";

/// How to start an instance.
#[derive(Debug, Clone)]
pub struct KratosOptions {
    /// Public API port (0 = pick a free one).
    pub public_port: u16,
    /// Admin API port (0 = pick a free one).
    pub admin_port: u16,
    /// Enable the `link` method (admin recovery links).
    pub link_method: bool,
    /// Enable the `code` method (admin recovery codes).
    pub code_method: bool,
    /// Where Kratos keeps its data.
    pub database: Database,
}

impl Default for KratosOptions {
    fn default() -> Self {
        Self {
            public_port: 0,
            admin_port: 0,
            link_method: true,
            code_method: true,
            // An unknown value fails `Environment::up` first, which checks it.
            database: Database::from_env().unwrap_or_default(),
        }
    }
}

/// A running (or stopped) Kratos. Dropping it stops the process unless [`KratosInstance::detach`]
/// was called.
#[derive(Debug)]
pub struct KratosInstance {
    dir: PathBuf,
    public_port: u16,
    admin_port: u16,
    child: Option<Child>,
    record: Option<ProcessRecord>,
    detached: bool,
    /// Its PostgreSQL server (none on sqlite), stopped after Kratos unless detached.
    postgres: Option<Postgres>,
}

impl KratosInstance {
    /// Writes config and schemas into `dir`, starts its PostgreSQL server (in `dir/postgres`)
    /// when that is the database, migrates the database and starts Kratos.
    pub fn start(dir: &Path, options: &KratosOptions) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let public_port = if options.public_port == 0 {
            process::free_port()?
        } else {
            options.public_port
        };
        let admin_port = if options.admin_port == 0 {
            process::free_port()?
        } else {
            options.admin_port
        };
        let source = crate::repo_root().join("testenv").join("kratos");
        for id in [schemas::CUSTOMER, schemas::EMPLOYEE, schemas::PROFILE] {
            let from = source.join(format!("{id}.schema.json"));
            let to = dir.join(format!("{id}.schema.json"));
            if !to.exists() {
                fs::copy(&from, &to).map_err(io_err(format!("copying {}", from.display())))?;
            }
        }
        let config = config(dir, public_port, admin_port, options);
        fs::write(dir.join("kratos.yml"), config).map_err(io_err("writing kratos.yml"))?;
        let postgres = match options.database {
            Database::Postgres => Some(Postgres::start(&dir.join("postgres"))?),
            Database::Sqlite => None,
        };
        let mut instance = Self {
            dir: dir.to_path_buf(),
            public_port,
            admin_port,
            child: None,
            record: None,
            detached: false,
            postgres,
        };
        instance.migrate()?;
        instance.spawn()?;
        Ok(instance)
    }

    fn binary() -> Result<PathBuf> {
        build::KRATOS.binary("kratos")
    }

    fn migrate(&self) -> Result<()> {
        let log = self.dir.join("kratos-migrate.log");
        let args = vec![
            "migrate".to_string(),
            "sql".to_string(),
            "-e".to_string(),
            "--yes".to_string(),
            "-c".to_string(),
            self.dir.join("kratos.yml").display().to_string(),
        ];
        let (mut child, record) = process::spawn(
            "kratos-migrate",
            &Self::binary()?,
            &args,
            &[("DSN", self.dsn())],
            &log,
        )?;
        let status = child.wait().map_err(io_err("waiting for kratos migrate"))?;
        if status.success() {
            Ok(())
        } else {
            Err(crate::Error::NotReady {
                component: "kratos migrate".into(),
                message: format!("exited with {status}"),
                log,
                log_tail: record.log_tail(30),
            })
        }
    }

    fn dsn(&self) -> String {
        match &self.postgres {
            // Kratos' default pool is 2 connections per CPU (4 here); 16, as for sqlite below,
            // so that the pool is not what a benchmark on 2 cores measures. Production
            // installations size it the same way, with `max_conns` in the DSN.
            Some(postgres) => format!("{}&max_conns=16&max_idle_conns=16", postgres.dsn()),
            None => format!(
                // Concurrent writers wait for the lock (instead of failing with "database is
                // locked"), and every transaction takes the write lock up front, so that two
                // readers never deadlock upgrading to writers. 16 connections: Kratos' default
                // is 2 per CPU (4 here); with 4, requests waiting for the lock held every
                // connection and Kratos stalled in steps of the 10 s busy timeout (the sigkill
                // test's 240 deletes took 12 s to over 90 s; with 16 they take about 2.5 s).
                "sqlite://{}/kratos.sqlite?_fk=true&mode=rwc&_busy_timeout=10000&_txlock=immediate\
                 &max_conns=16&max_idle_conns=16",
                self.dir.display()
            ),
        }
    }

    /// Where it keeps its data.
    pub fn database(&self) -> Database {
        if self.postgres.is_some() {
            Database::Postgres
        } else {
            Database::Sqlite
        }
    }

    /// The process id of its PostgreSQL server, while it runs (none on sqlite).
    pub fn postgres_pid(&self) -> Option<u32> {
        self.postgres.as_ref().and_then(Postgres::pid)
    }

    /// The loopback port of its PostgreSQL server (none on sqlite).
    pub fn postgres_port(&self) -> Option<u16> {
        self.postgres.as_ref().map(Postgres::port)
    }

    fn spawn(&mut self) -> Result<()> {
        let args = vec![
            "serve".to_string(),
            "-c".to_string(),
            self.dir.join("kratos.yml").display().to_string(),
            "--dev".to_string(),
            "--sqa-opt-out".to_string(),
        ];
        let (mut child, record) = process::spawn(
            "kratos",
            &Self::binary()?,
            &args,
            &[("DSN", self.dsn()), ("LOG_LEVEL", "info".into())],
            &self.dir.join("kratos.log"),
        )?;
        let agent = process::http_agent(None);
        let url = format!("{}/health/ready", self.admin_url());
        process::wait_ready(&record, Some(&mut child), Duration::from_secs(60), || {
            process::http_ok(&agent, &url)
        })?;
        self.child = Some(child);
        self.record = Some(record);
        Ok(())
    }

    /// Stops the process (data stays on disk).
    pub fn stop(&mut self) {
        if let Some(record) = self.record.take() {
            record.stop(Duration::from_secs(10));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports with the same data (after [`KratosInstance::stop`], or to
    /// pick up an edited schema file).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// Keeps its processes running after this value is dropped (the shared environment):
    /// their records, in start order (PostgreSQL, if any, then Kratos).
    pub fn detach(mut self) -> Vec<ProcessRecord> {
        self.detached = true;
        self.child = None;
        let mut records: Vec<ProcessRecord> = self
            .postgres
            .take()
            .and_then(Postgres::detach)
            .into_iter()
            .collect();
        records.push(self.record.clone().unwrap_or_else(|| ProcessRecord {
            name: "kratos".into(),
            pid: 0,
            binary: PathBuf::new(),
            log: self.dir.join("kratos.log"),
        }));
        records
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The admin API, e.g. `http://127.0.0.1:4434`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The public API, e.g. `http://127.0.0.1:4433`.
    pub fn public_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.public_port)
    }

    /// The on-disk schema file of `id`, to edit before [`KratosInstance::restart`].
    pub fn schema_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.schema.json"))
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("kratos.log")
    }
}

impl Drop for KratosInstance {
    fn drop(&mut self) {
        if !self.detached {
            // Kratos first: PostgreSQL's fast shutdown would otherwise cut its connections.
            self.stop();
            if let Some(mut postgres) = self.postgres.take() {
                postgres.stop();
            }
        }
    }
}

/// Where one Kratos listens and what it calls itself.
#[derive(Debug, Clone)]
pub struct Serve {
    /// The address both APIs listen on.
    pub host: String,
    /// Public API port.
    pub public_port: u16,
    /// Admin API port.
    pub admin_port: u16,
    /// The public API's base URL (Kratos redirects there and builds links with it).
    pub public_base_url: String,
    /// The admin API's base URL.
    pub admin_base_url: String,
    /// The directory the identity schemas are read from (`<id>.schema.json`).
    pub schema_dir: String,
}

fn config(dir: &Path, public_port: u16, admin_port: u16, options: &KratosOptions) -> String {
    config_for(
        &Serve {
            host: "127.0.0.1".into(),
            public_port,
            admin_port,
            public_base_url: format!("http://127.0.0.1:{public_port}/"),
            admin_base_url: format!("http://127.0.0.1:{admin_port}/"),
            schema_dir: dir.display().to_string(),
        },
        options,
    )
}

/// The schema files every instance serves, as they are in the repository:
/// `(<id>.schema.json, path)`.
pub fn schema_files() -> Vec<(String, PathBuf)> {
    let source = crate::repo_root().join("testenv").join("kratos");
    [schemas::CUSTOMER, schemas::EMPLOYEE, schemas::PROFILE]
        .into_iter()
        .map(|id| {
            let name = format!("{id}.schema.json");
            let path = source.join(&name);
            (name, path)
        })
        .collect()
}

/// Kratos' configuration for `serve` (pure): the same methods, flows, schemas and secrets for
/// every instance, so that instances on one database behave as replicas of one Kratos.
pub fn config_for(serve: &Serve, options: &KratosOptions) -> String {
    let schema_url = |id: &str| format!("file://{}/{id}.schema.json", serve.schema_dir);
    let config = json!({
        "version": crate::versions::KRATOS,
        "serve": {
            "public": { "host": serve.host, "port": serve.public_port, "base_url": serve.public_base_url },
            "admin": { "host": serve.host, "port": serve.admin_port, "base_url": serve.admin_base_url }
        },
        "selfservice": {
            "default_browser_return_url": "http://127.0.0.1:4455/",
            "allowed_return_urls": ["http://127.0.0.1:4455"],
            "methods": {
                "password": { "enabled": true },
                "link": { "enabled": options.link_method, "config": { "lifespan": "1h" } },
                "code": { "enabled": options.code_method, "config": { "lifespan": "1h" } }
            },
            "flows": {
                "recovery": { "enabled": true, "use": "code", "ui_url": "http://127.0.0.1:4455/recovery" },
                "verification": { "enabled": false },
                "login": { "ui_url": "http://127.0.0.1:4455/login" },
                "registration": { "ui_url": "http://127.0.0.1:4455/registration" },
                "settings": { "ui_url": "http://127.0.0.1:4455/settings" },
                "error": { "ui_url": "http://127.0.0.1:4455/error" }
            }
        },
        "identity": {
            "default_schema_id": schemas::CUSTOMER,
            "schemas": [
                { "id": schemas::CUSTOMER, "url": schema_url(schemas::CUSTOMER) },
                { "id": schemas::EMPLOYEE, "url": schema_url(schemas::EMPLOYEE) },
                { "id": schemas::PROFILE, "url": schema_url(schemas::PROFILE) }
            ]
        },
        "secrets": {
            "cookie": ["kratos-operator-testenv-cookie-secret"],
            "cipher": ["32-byte-kratos-operator-testenv!"]
        },
        "hashers": { "algorithm": "bcrypt", "bcrypt": { "cost": 4 } },
        "courier": { "smtp": { "connection_uri": "smtp://127.0.0.1:1/?disable_starttls=true" } },
        "log": { "level": "info", "format": "text", "leak_sensitive_values": false }
    });
    // JSON is YAML; Kratos picks the parser by extension and reads it either way.
    serde_json::to_string_pretty(&config).unwrap_or_default()
}
