//! Kratos on each database the environment offers: it serves identities, keeps them across a
//! restart of Kratos, and (PostgreSQL) the server listens on loopback only.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{fs, path::PathBuf, time::Duration};

use kratos_operator_testenv::kratos::{Database, KratosInstance, KratosOptions};

fn scratch(name: &str) -> PathBuf {
    let dir = kratos_operator_testenv::repo_root()
        .join("target")
        .join("testenv-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn create(agent: &ureq::Agent, admin: &str, email: &str) -> String {
    let mut resp = agent
        .post(format!("{admin}/admin/identities"))
        .send_json(serde_json::json!({ "schema_id": "customer", "traits": { "email": email } }))
        .expect("create identity");
    assert_eq!(resp.status(), 201, "create answered {}", resp.status());
    let body: serde_json::Value = resp.body_mut().read_json().expect("identity json");
    body["id"].as_str().expect("id").to_string()
}

fn exists(agent: &ureq::Agent, admin: &str, id: &str) -> bool {
    agent
        .get(format!("{admin}/admin/identities/{id}"))
        .call()
        .is_ok_and(|r| r.status() == 200)
}

/// The local addresses the process `pid` listens on (TCP, from /proc/<pid>/net/tcp and tcp6,
/// which list the sockets of its network namespace; filtered to the listening ones of this
/// port).
fn listening_addresses(pid: u32, port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            // 0A = LISTEN.
            if *state != "0A" {
                continue;
            }
            if let Some((addr, p)) = local.split_once(':')
                && u16::from_str_radix(p, 16).ok() == Some(port)
            {
                found.push(addr.to_string());
            }
        }
    }
    found
}

fn serves_and_keeps_identities(database: Database) {
    let dir = scratch(&format!("kratos-{database}"));
    let options = KratosOptions {
        database,
        ..KratosOptions::default()
    };
    let mut kratos = KratosInstance::start(&dir, &options).expect("start Kratos");
    assert_eq!(kratos.database(), database);
    let agent = agent();
    let admin = kratos.admin_url();
    let id = create(&agent, &admin, &format!("kept-{database}@example.com"));
    kratos.restart().expect("restart Kratos");
    assert!(
        exists(&agent, &admin, &id),
        "the identity is gone after a restart of Kratos on {database}"
    );
    match database {
        Database::Postgres => {
            assert!(
                dir.join("postgres")
                    .join("data")
                    .join("PG_VERSION")
                    .exists(),
                "no PostgreSQL cluster in {}",
                dir.display()
            );
            assert!(
                !dir.join("kratos.sqlite").exists(),
                "sqlite file on postgres"
            );
            let pid = kratos.postgres_pid().expect("postgres runs");
            let port = kratos.postgres_port().expect("postgres port");
            let addresses = listening_addresses(pid, port);
            // 0100007F is 127.0.0.1 in /proc's byte order.
            assert_eq!(
                addresses,
                ["0100007F"],
                "PostgreSQL must listen on 127.0.0.1 only"
            );
        }
        Database::Sqlite => {
            assert!(dir.join("kratos.sqlite").exists(), "no sqlite file");
            assert!(kratos.postgres_pid().is_none(), "a PostgreSQL for sqlite");
        }
    }
    let postgres_pid = kratos.postgres_pid();
    drop(kratos);
    if let Some(pid) = postgres_pid {
        assert!(
            !PathBuf::from(format!("/proc/{pid}")).exists()
                || fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "PostgreSQL still runs after its Kratos was dropped"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn kratos_on_postgres_serves_keeps_identities_and_listens_on_loopback_only() {
    serves_and_keeps_identities(Database::Postgres);
}

#[test]
fn kratos_on_sqlite_stays_selectable() {
    serves_and_keeps_identities(Database::Sqlite);
}

#[test]
fn the_database_is_named_by_the_variable_and_a_wrong_name_is_an_error() {
    assert_eq!(
        "postgres".parse::<Database>().ok(),
        Some(Database::Postgres)
    );
    assert_eq!("sqlite".parse::<Database>().ok(), Some(Database::Sqlite));
    let err = "mysql"
        .parse::<Database>()
        .expect_err("mysql is not offered");
    let text = err.to_string();
    assert!(
        text.contains("mysql") && text.contains(Database::ENV),
        "the error names the value and the variable: {text}"
    );
    assert_eq!(Database::default(), Database::Postgres);
}
