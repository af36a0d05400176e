//! What `cargo xtask demo` needs of the machine, checked before it builds anything: root (for the
//! node), Go and cargo (for the builds), and the Debian packages of [`PACKAGES_FILE`] not marked
//! `ci-only` (`.ci/run` installs the same file's packages, all of them). As root where apt-get
//! is, the demo installs the missing packages itself; otherwise it stops at once and says what to
//! run.
//!
//! A package counts as installed when what the environment's code looks for is there ([`probe`]),
//! not when dpkg knows it: the same program from elsewhere (containerd from another repository,
//! PostgreSQL in `$KRATOS_OPERATOR_TESTENV_PG_BIN`) then serves, and apt-get is never asked to
//! replace it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use kratos_operator_testenv::{build, node, postgres};

/// The list of Debian packages, relative to the repository.
pub const PACKAGES_FILE: &str = "testenv/debian-packages";
/// Its contents, as this build of xtask saw them.
const PACKAGES: &str = include_str!("../../testenv/debian-packages");
/// The marker of a package that only the test command needs.
const CI_ONLY: &str = "ci-only";

/// One line of [`PACKAGES_FILE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The Debian package.
    pub name: String,
    /// Only the test command (`.ci/run`) needs it, not the demo.
    pub ci_only: bool,
    /// What it is for (the line's comment).
    pub purpose: String,
}

/// Reads the package list: per line a package name, optionally `ci-only`, and a `#` comment
/// saying what the package is for; blank lines and lines of comment only are skipped.
pub fn parse(text: &str) -> Result<Vec<Package>, String> {
    let mut packages: Vec<Package> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let at = format!("{PACKAGES_FILE} line {}", index + 1);
        let (fields, comment) = line.split_once('#').unwrap_or((line, ""));
        let mut words = fields.split_whitespace();
        let Some(name) = words.next() else {
            continue;
        };
        let ci_only = match words.next() {
            None => false,
            Some(CI_ONLY) => true,
            Some(other) => {
                return Err(format!(
                    "{at}: {other:?} after {name} is not the marker `{CI_ONLY}`"
                ));
            }
        };
        if let Some(extra) = words.next() {
            return Err(format!("{at}: {extra:?}: one package a line"));
        }
        if !is_package_name(name) {
            return Err(format!("{at}: {name:?} is not a Debian package name"));
        }
        let purpose = comment.trim();
        if purpose.is_empty() {
            return Err(format!("{at}: say what {name} is for, in a `#` comment"));
        }
        if packages.iter().any(|p| p.name == name) {
            return Err(format!("{at}: {name} is listed twice"));
        }
        packages.push(Package {
            name: name.to_string(),
            ci_only,
            purpose: purpose.to_string(),
        });
    }
    Ok(packages)
}

/// Debian policy's package names: two or more of lower-case letters, digits, `+`, `-` and `.`,
/// starting with a letter or digit.
fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// The packages the demo needs: the list's lines not marked `ci-only`.
pub fn demo_packages() -> Result<Vec<Package>, String> {
    Ok(parse(PACKAGES)?
        .into_iter()
        .filter(|p| !p.ci_only)
        .collect())
}

/// How the demo sees that a package is installed: what the code that uses it looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Programs the node runs, where it looks for them ([`node::host_tool`]).
    HostTools(&'static [&'static str]),
    /// A program run by name, from `PATH`.
    OnPath(&'static str),
    /// A file.
    File(&'static str),
    /// PostgreSQL's server binaries, where the environment looks for them
    /// ([`postgres::bin_dir`]).
    PostgresServer,
}

/// The probe of each package the demo needs (a test holds the list to it); `None` for the
/// others, which count as installed when dpkg says so.
fn probe(package: &str) -> Option<Probe> {
    Some(match package {
        // cgo runs `gcc` (its default CC) with the C library's headers.
        "gcc" => Probe::OnPath("gcc"),
        "libc6-dev" => Probe::File("/usr/include/stdio.h"),
        "ca-certificates" => Probe::File("/etc/ssl/certs/ca-certificates.crt"),
        "containerd" => Probe::HostTools(&["containerd", "containerd-shim-runc-v2"]),
        "runc" => Probe::HostTools(&["runc"]),
        // The directory testenv/src/node.rs gives containerd's CNI configuration.
        "containernetworking-plugins" => Probe::File("/usr/lib/cni/bridge"),
        "socat" => Probe::HostTools(&["socat"]),
        "iproute2" => Probe::OnPath("ip"),
        "iptables" => Probe::HostTools(&["iptables"]),
        "ipset" => Probe::HostTools(&["ipset"]),
        "conntrack" => Probe::HostTools(&["conntrack"]),
        "postgresql" => Probe::PostgresServer,
        "util-linux" => Probe::OnPath("unshare"),
        _ => return None,
    })
}

/// Whether `package` is installed, by its [`probe`] (or dpkg's word for one without).
fn installed(package: &str) -> bool {
    match probe(package) {
        Some(Probe::HostTools(names)) => names
            .iter()
            .all(|name| node::host_tool(name, package).is_ok()),
        Some(Probe::OnPath(name)) => on_path(name).is_some(),
        Some(Probe::File(path)) => Path::new(path).exists(),
        Some(Probe::PostgresServer) => postgres::bin_dir().is_ok(),
        None => Command::new("dpkg")
            .args(["-s", package])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// Where `name` is on `PATH`, if it is.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The Go toolchain on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Go {
    /// New enough.
    Found,
    /// No `go` to run.
    Missing,
    /// Older than the wrapper modules require; `found` is its version (`go1.19.8`).
    TooOld {
        /// `go env GOVERSION`.
        found: String,
    },
}

/// What the demo found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Running as root.
    pub root: bool,
    /// apt-get is on `PATH`.
    pub apt_get: bool,
    /// The demo's packages that are not installed, in the list's order.
    pub missing: Vec<String>,
    /// The Go toolchain.
    pub go: Go,
    /// The Go release the components' wrapper modules require (their highest `go` line).
    pub go_needed: String,
    /// cargo (which builds the operator's image) is there.
    pub cargo: bool,
}

/// What the demo does about a [`Machine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing is missing: go on.
    Ready,
    /// Only Debian packages are missing, and this process can install them: install these.
    Install(Vec<String>),
    /// Stop before building anything, with this message.
    Stop(String),
}

/// The pure decision: go on, install the missing packages (as root with apt-get, when nothing
/// else is missing), or stop and say what to run.
pub fn plan(machine: &Machine) -> Plan {
    let mut lacks = Vec::new();
    if !machine.root {
        lacks.push(
            "root: the node (containerd, the kubelet, the pods' bridge and firewall) needs it; \
             run `cargo xtask demo` as root"
                .to_string(),
        );
    }
    let needed = &machine.go_needed;
    match &machine.go {
        Go::Found => {}
        Go::Missing => lacks.push(format!(
            "Go {needed} or newer as `go` on PATH (it builds the environment's components): \
             install a Go release from https://go.dev/dl/ (Debian 12's golang-go is 1.19), e.g. \
             into /usr/local/go, and add /usr/local/go/bin to PATH"
        )),
        Go::TooOld { found } => lacks.push(format!(
            "Go {needed} or newer (testenv/go/*/go.mod require it); the `go` on PATH is \
             {found}: install a newer release from https://go.dev/dl/ and put it first on PATH"
        )),
    }
    if !machine.cargo {
        lacks.push(
            "cargo (it builds the operator's image): install Rust with rustup \
             (https://rustup.rs)"
                .to_string(),
        );
    }
    if machine.missing.is_empty() {
        if lacks.is_empty() {
            return Plan::Ready;
        }
    } else if lacks.is_empty() && machine.apt_get {
        // Root, or `lacks` would not be empty.
        return Plan::Install(machine.missing.clone());
    } else {
        let packages = machine.missing.join(" ");
        lacks.push(if machine.apt_get {
            let sudo = if machine.root { "" } else { "sudo " };
            format!(
                "the Debian packages {packages} ({PACKAGES_FILE} says what each is for); \
                 install them with\n      {sudo}apt-get update && {sudo}apt-get install -y \
                 {packages}\n    (run as root, the demo installs them itself)"
            )
        } else {
            format!(
                "what the Debian packages {packages} provide ({PACKAGES_FILE} says what each \
                 is for; apt-get is not on PATH): install your system's equivalents"
            )
        });
    }
    Plan::Stop(format!(
        "this machine lacks what the demo needs; nothing was built:\n{}",
        lacks
            .iter()
            .map(|lack| format!("  - {lack}"))
            .collect::<Vec<_>>()
            .join("\n")
    ))
}

/// The Go release a go.mod requires (its `go` line).
fn go_directive(go_mod: &str) -> Option<&str> {
    go_mod.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("go")).then(|| words.next())?
    })
}

/// The numbers of a Go version, `go1.26.8`, `1.26.0`, `1.24` or `go1.27rc1` (the numbers before
/// a pre-release suffix).
fn go_version_numbers(version: &str) -> Vec<u64> {
    version
        .trim_start_matches("go")
        .split('.')
        .map_while(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Whether Go `found` is at least `needed`.
fn go_at_least(found: &str, needed: &str) -> bool {
    let (mut found, mut needed) = (go_version_numbers(found), go_version_numbers(needed));
    let len = found.len().max(needed.len()).max(3);
    found.resize(len, 0);
    needed.resize(len, 0);
    found >= needed
}

/// The highest Go release the wrapper modules of `components` require.
pub fn go_needed(components: &[build::Component]) -> Result<String, String> {
    let mut needed = String::from("1.0");
    for component in components {
        let path = component.module_dir().join("go.mod");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let version =
            go_directive(&text).ok_or_else(|| format!("{} has no `go` line", path.display()))?;
        if !go_at_least(&needed, version) {
            needed = version.to_string();
        }
    }
    Ok(needed)
}

/// Looks at this machine.
fn survey(packages: &[Package], go_needed: &str) -> Machine {
    let go = match Command::new("go")
        .args(["env", "GOVERSION"])
        // As the builds run it: no switching to another toolchain.
        .env("GOTOOLCHAIN", "local")
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if go_at_least(&found, go_needed) {
                Go::Found
            } else {
                Go::TooOld { found }
            }
        }
        _ => Go::Missing,
    };
    let cargo = std::env::var_os("CARGO").is_some_and(|c| Path::new(&c).is_file())
        || on_path("cargo").is_some();
    Machine {
        root: nix::unistd::geteuid().is_root(),
        apt_get: on_path("apt-get").is_some(),
        missing: missing(packages),
        go,
        go_needed: go_needed.to_string(),
        cargo,
    }
}

fn missing(packages: &[Package]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| !installed(&p.name))
        .map(|p| p.name.clone())
        .collect()
}

/// Checks the demo's prerequisites for building `components`: returns when the machine has them
/// (after installing the missing Debian packages, as root with apt-get), or the message that
/// says what to do.
pub fn ensure(components: &[build::Component]) -> Result<(), String> {
    let packages = demo_packages()?;
    let machine = survey(&packages, &go_needed(components)?);
    match plan(&machine) {
        Plan::Ready => Ok(()),
        Plan::Stop(message) => Err(message),
        Plan::Install(names) => {
            eprintln!(
                "xtask: installing the Debian packages the demo needs ({PACKAGES_FILE}): {}",
                names.join(" ")
            );
            apt_get(&["update"], &[])?;
            apt_get(&["install", "-y"], &names)?;
            let still = missing(&packages);
            if still.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "apt-get installed {} but the demo still misses {} (xtask/src/prereq.rs \
                     says where it looks)",
                    names.join(" "),
                    still.join(" ")
                ))
            }
        }
    }
}

fn apt_get(args: &[&str], packages: &[String]) -> Result<(), String> {
    let status = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(args)
        .args(packages)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`apt-get {} {}` failed ({status})",
            args.join(" "),
            packages.join(" ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_list_parses_and_every_demo_package_has_a_probe() {
        let packages = parse(PACKAGES).unwrap();
        let names = |ci_only: bool| -> Vec<&str> {
            packages
                .iter()
                .filter(|p| p.ci_only == ci_only)
                .map(|p| p.name.as_str())
                .collect()
        };
        assert_eq!(names(true), ["fonts-dejavu-core", "shellcheck", "git"]);
        let demo = names(false);
        for name in [
            "containerd",
            "runc",
            "iptables",
            "ipset",
            "postgresql",
            "gcc",
        ] {
            assert!(demo.contains(&name), "{name} is not in {demo:?}");
        }
        for name in &demo {
            assert!(
                probe(name).is_some(),
                "{name}: say in prereq::probe how the demo sees it is installed"
            );
        }
        assert_eq!(
            demo_packages()
                .unwrap()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            demo
        );
    }

    #[test]
    fn a_bad_line_of_the_package_list_is_refused_with_its_number() {
        let parsed = parse("# c\n\nsocat   # relays\nshellcheck ci-only # lint\n").unwrap();
        assert_eq!(
            parsed,
            [
                Package {
                    name: "socat".into(),
                    ci_only: false,
                    purpose: "relays".into()
                },
                Package {
                    name: "shellcheck".into(),
                    ci_only: true,
                    purpose: "lint".into()
                }
            ]
        );
        for (text, error) in [
            ("socat\n", "line 1: say what socat is for"),
            (
                "# c\nsocat ci # x\n",
                "line 2: \"ci\" after socat is not the marker",
            ),
            ("socat runc # x\n", "is not the marker"),
            ("socat ci-only runc # x\n", "one package a line"),
            ("Socat # x\n", "\"Socat\" is not a Debian package name"),
            ("socat # x\nsocat # y\n", "line 2: socat is listed twice"),
        ] {
            let got = parse(text).unwrap_err();
            assert!(got.contains(error), "{text:?}: {got}");
        }
    }

    /// `.ci/run` installs from the list, and lists no package of its own.
    #[test]
    fn ci_run_reads_the_package_list_and_names_no_package_itself() {
        let path = kratos_operator_testenv::repo_root().join(".ci").join("run");
        let script = std::fs::read_to_string(&path).unwrap();
        let code: Vec<&str> = script
            .lines()
            .map(|line| line.split_once('#').map_or(line, |(code, _)| code))
            .collect();
        assert!(
            code.iter()
                .any(|line| line.contains(&format!("done <{PACKAGES_FILE}"))),
            ".ci/run does not read {PACKAGES_FILE}"
        );
        for package in parse(PACKAGES).unwrap() {
            for line in &code {
                let words: Vec<&str> = line
                    .split(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
                    .collect();
                assert!(
                    !words.contains(&package.name.as_str()),
                    ".ci/run names {} itself: {line}",
                    package.name
                );
            }
        }
    }

    fn machine() -> Machine {
        Machine {
            root: true,
            apt_get: true,
            missing: Vec::new(),
            go: Go::Found,
            go_needed: "1.26.0".into(),
            cargo: true,
        }
    }

    #[test]
    fn root_with_apt_installs_what_is_missing_and_nothing_missing_goes_on() {
        assert_eq!(plan(&machine()), Plan::Ready);
        let m = Machine {
            missing: vec!["containerd".into(), "ipset".into()],
            ..machine()
        };
        assert_eq!(
            plan(&m),
            Plan::Install(vec!["containerd".into(), "ipset".into()])
        );
    }

    #[test]
    fn without_root_the_demo_stops_with_the_command_to_run() {
        let m = Machine {
            root: false,
            missing: vec!["containerd".into(), "ipset".into()],
            ..machine()
        };
        assert_eq!(
            plan(&m),
            Plan::Stop(
                "this machine lacks what the demo needs; nothing was built:
  - root: the node (containerd, the kubelet, the pods' bridge and firewall) needs it; run `cargo xtask demo` as root
  - the Debian packages containerd ipset (testenv/debian-packages says what each is for); install them with
      sudo apt-get update && sudo apt-get install -y containerd ipset
    (run as root, the demo installs them itself)"
                    .into()
            )
        );
    }

    #[test]
    fn what_apt_cannot_bring_stops_the_demo_before_it_installs_anything() {
        let m = Machine {
            missing: vec!["socat".into()],
            go: Go::TooOld {
                found: "go1.19.8".into(),
            },
            cargo: false,
            ..machine()
        };
        assert_eq!(
            plan(&m),
            Plan::Stop(
                "this machine lacks what the demo needs; nothing was built:
  - Go 1.26.0 or newer (testenv/go/*/go.mod require it); the `go` on PATH is go1.19.8: install a newer release from https://go.dev/dl/ and put it first on PATH
  - cargo (it builds the operator's image): install Rust with rustup (https://rustup.rs)
  - the Debian packages socat (testenv/debian-packages says what each is for); install them with
      apt-get update && apt-get install -y socat
    (run as root, the demo installs them itself)"
                    .into()
            )
        );
        let Plan::Stop(message) = plan(&Machine {
            go: Go::Missing,
            ..machine()
        }) else {
            panic!("no Go must stop the demo");
        };
        assert!(
            message.contains("Go 1.26.0 or newer as `go` on PATH"),
            "{message}"
        );
        assert!(message.contains("https://go.dev/dl/"), "{message}");
    }

    #[test]
    fn without_apt_get_the_demo_names_the_packages() {
        let m = Machine {
            apt_get: false,
            missing: vec!["postgresql".into()],
            ..machine()
        };
        assert_eq!(
            plan(&m),
            Plan::Stop(
                "this machine lacks what the demo needs; nothing was built:
  - what the Debian packages postgresql provide (testenv/debian-packages says what each is for; apt-get is not on PATH): install your system's equivalents"
                    .into()
            )
        );
    }

    #[test]
    fn go_versions_compare_by_their_numbers() {
        assert_eq!(go_directive("module x\n\ngo 1.26.0\n"), Some("1.26.0"));
        assert_eq!(go_directive("module x\n"), None);
        assert!(go_at_least("go1.26.8", "1.26.0"));
        assert!(go_at_least("go1.26.0", "1.26"));
        assert!(go_at_least("go1.27rc1", "1.26.0"));
        assert!(!go_at_least("go1.19.8", "1.26.0"));
        assert!(!go_at_least("go1.26", "1.26.1"));
        assert!(go_at_least("go1.100.0", "1.26.0"));
    }

    #[test]
    fn the_go_needed_is_the_highest_go_line_of_the_components() {
        let needed = go_needed(&[build::KRATOS, build::KUBERNETES]).unwrap();
        let kubernetes =
            std::fs::read_to_string(build::KUBERNETES.module_dir().join("go.mod")).unwrap();
        assert_eq!(Some(needed.as_str()), go_directive(&kubernetes));
    }
}
