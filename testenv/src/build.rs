//! Builds the environment's binaries from the wrapper Go modules in `testenv/go/` and caches
//! them by version (plus a hash of the wrapper's go.mod, go.sum and Go sources) under
//! [`crate::cache_dir`].

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use crate::{Error, Result, io_err, versions};

/// One binary a component provides.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// The Go package that is its `main`.
    pub package: &'static str,
    /// File name in the cache.
    pub name: &'static str,
}

/// A component built from one wrapper module.
#[derive(Debug, Clone, Copy)]
pub struct Component {
    /// Short name (the cache directory's prefix).
    pub name: &'static str,
    /// The wrapper module's directory under `testenv/go/`.
    pub module: &'static str,
    /// Pinned version (the cache key's first half).
    pub version: &'static str,
    /// The binaries it provides.
    pub binaries: &'static [Binary],
    /// Whether cgo is needed (Kratos' sqlite driver).
    pub cgo: bool,
    /// Go build tags.
    pub tags: &'static str,
    /// A module whose `config/crd/bases/*.yaml` (the CRDs of the controllers it builds, from
    /// the same module version) are kept beside the binaries, in `crds/`.
    pub crds_from: Option<&'static str>,
}

/// The binaries of one Kubernetes release: kube-apiserver, kube-controller-manager, etcd and
/// kubectl; kube-scheduler, the kubelet and kube-proxy for the node.
const KUBERNETES_BINARIES: &[Binary] = &[
    Binary {
        package: "k8s.io/kubernetes/cmd/kube-apiserver",
        name: "kube-apiserver",
    },
    Binary {
        package: "k8s.io/kubernetes/cmd/kube-controller-manager",
        name: "kube-controller-manager",
    },
    Binary {
        package: "go.etcd.io/etcd/server/v3",
        name: "etcd",
    },
    Binary {
        package: "k8s.io/kubernetes/cmd/kubectl",
        name: "kubectl",
    },
    Binary {
        package: "k8s.io/kubernetes/cmd/kube-scheduler",
        name: "kube-scheduler",
    },
    Binary {
        package: "k8s.io/kubernetes/cmd/kubelet",
        name: "kubelet",
    },
    Binary {
        package: "k8s.io/kubernetes/cmd/kube-proxy",
        name: "kube-proxy",
    },
];

/// The newest Kubernetes release: the environment's default.
pub const KUBERNETES: Component = Component {
    name: "kubernetes",
    module: "kubernetes",
    version: versions::KUBERNETES,
    binaries: KUBERNETES_BINARIES,
    cgo: false,
    tags: "selinux,notest",
    crds_from: None,
};

/// The oldest Kubernetes release the chart's `kubeVersion` admits: the compatibility run.
pub const KUBERNETES_OLDEST: Component = Component {
    name: "kubernetes",
    module: "kubernetes-oldest",
    version: versions::KUBERNETES_OLDEST,
    binaries: KUBERNETES_BINARIES,
    cgo: false,
    tags: "selinux,notest",
    crds_from: None,
};

/// Ory Kratos with sqlite.
pub const KRATOS: Component = Component {
    name: "kratos",
    module: "kratos",
    version: versions::KRATOS,
    binaries: &[Binary {
        package: "github.com/ory/kratos",
        name: "kratos",
    }],
    cgo: true,
    tags: "sqlite,json1",
    crds_from: None,
};

/// Helm v4, the current major release: the default.
pub const HELM: Component = Component {
    name: "helm",
    module: "helm",
    version: versions::HELM,
    binaries: &[Binary {
        package: "helm.sh/helm/v4/cmd/helm",
        name: "helm",
    }],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// Helm v3, still what many installations run: the compatibility run.
pub const HELM_3: Component = Component {
    name: "helm",
    module: "helm3",
    version: versions::HELM_3,
    binaries: &[Binary {
        package: "helm.sh/helm/v3/cmd/helm",
        name: "helm",
    }],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// The node's sandbox ("pause") program: our own source in `testenv/go/pause`, packaged as the
/// image [`crate::image::PAUSE_IMAGE`].
pub const PAUSE: Component = Component {
    name: "pause",
    module: "pause",
    version: versions::PAUSE,
    binaries: &[Binary {
        package: "kratos-operator.dev/testenv/pause",
        name: "pause",
    }],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// CNCF Distribution, the environment's registry: the node pulls every image from it.
pub const REGISTRY: Component = Component {
    name: "registry",
    module: "registry",
    version: versions::REGISTRY,
    binaries: &[Binary {
        package: "github.com/distribution/distribution/v3/cmd/registry",
        name: "registry",
    }],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// cosign, which signs a release and attaches its SBOM, and crane, which pushes its image: one
/// wrapper module, as cosign already depends on go-containerregistry.
pub const SIGSTORE: Component = Component {
    name: "cosign",
    module: "sigstore",
    version: versions::COSIGN,
    binaries: &[
        Binary {
            package: "github.com/sigstore/cosign/v2/cmd/cosign",
            name: "cosign",
        },
        Binary {
            package: "github.com/google/go-containerregistry/cmd/crane",
            name: "crane",
        },
    ],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// actionlint, which the test command runs on every GitHub workflow.
pub const ACTIONLINT: Component = Component {
    name: "actionlint",
    module: "actionlint",
    version: versions::ACTIONLINT,
    binaries: &[Binary {
        package: "github.com/rhysd/actionlint/cmd/actionlint",
        name: "actionlint",
    }],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// CoreDNS, the cluster DNS of the environment's node (the `kube-dns` Service), with only the
/// plugins its Corefile uses (`testenv/go/coredns/main.go`).
pub const COREDNS: Component = Component {
    name: "coredns",
    module: "coredns",
    version: versions::COREDNS,
    binaries: &[Binary {
        package: "kratos-operator.dev/testenv/coredns",
        name: "coredns",
    }],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// kube-router, the node's NetworkPolicy engine (firewall mode only).
pub const KUBE_ROUTER: Component = Component {
    name: "kube-router",
    module: "kube-router",
    version: versions::KUBE_ROUTER,
    binaries: &[Binary {
        package: "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
        name: "kube-router",
    }],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// Our own network probe (`testenv/go/probe`): what the node tests run in a pod to see what a
/// pod sees (name resolution, HTTP, TCP, and a server that is not Kratos).
pub const PROBE: Component = Component {
    name: "probe",
    module: "probe",
    version: versions::PROBE,
    binaries: &[Binary {
        package: "kratos-operator.dev/testenv/probe",
        name: "probe",
    }],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// Flux's source-controller (GitRepository and the other sources), with its CRDs.
pub const FLUX_SOURCE: Component = Component {
    name: "flux-source-controller",
    module: "flux-source",
    version: versions::FLUX,
    binaries: &[Binary {
        package: "github.com/fluxcd/source-controller",
        name: "source-controller",
    }],
    cgo: false,
    tags: "",
    crds_from: Some("github.com/fluxcd/source-controller"),
};

/// Flux's kustomize-controller (Kustomization), with its CRD.
pub const FLUX_KUSTOMIZE: Component = Component {
    name: "flux-kustomize-controller",
    module: "flux-kustomize",
    version: versions::FLUX,
    binaries: &[Binary {
        package: "github.com/fluxcd/kustomize-controller",
        name: "kustomize-controller",
    }],
    cgo: false,
    tags: "",
    crds_from: Some("github.com/fluxcd/kustomize-controller"),
};

/// The environment's Git server (`testenv/go/gitserver`: fluxcd/gitkit over smart HTTP; a push
/// to a new name creates the repository).
pub const GITSERVER: Component = Component {
    name: "gitserver",
    module: "gitserver",
    version: versions::GITKIT,
    binaries: &[Binary {
        package: "kratos-operator.dev/testenv/gitserver",
        name: "gitserver",
    }],
    cgo: false,
    tags: "",
    crds_from: None,
};

/// Every component, in build order (the slowest first, so a failure shows early).
pub const ALL: [Component; 15] = [
    KUBERNETES,
    KUBERNETES_OLDEST,
    FLUX_SOURCE,
    KRATOS,
    FLUX_KUSTOMIZE,
    SIGSTORE,
    KUBE_ROUTER,
    COREDNS,
    REGISTRY,
    HELM,
    HELM_3,
    ACTIONLINT,
    PAUSE,
    PROBE,
    GITSERVER,
];

impl Component {
    /// The wrapper module's directory in the repository.
    pub fn module_dir(&self) -> PathBuf {
        crate::repo_root()
            .join("testenv")
            .join("go")
            .join(self.module)
    }

    /// The cache directory of this exact version, wrapper module and build recipe.
    pub fn cache_dir(&self) -> PathBuf {
        let mut hasher = Sha256::new();
        for file in ["go.mod", "go.sum"] {
            // A missing go.sum only changes the key; the build reports the real problem.
            hasher.update(fs::read(self.module_dir().join(file)).unwrap_or_default());
        }
        // The module's own Go files: tools.go of the wrappers, the whole program of pause.
        for (name, content) in go_sources(&self.module_dir()) {
            hasher.update(name.as_bytes());
            hasher.update((content.len() as u64).to_le_bytes());
            hasher.update(content);
        }
        for binary in self.binaries {
            hasher.update(binary.package.as_bytes());
            hasher.update(binary.name.as_bytes());
        }
        hasher.update(self.ldflags().as_bytes());
        hasher.update(self.tags.as_bytes());
        let digest = hasher.finalize();
        let short: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        crate::cache_dir()
            .join("bin")
            .join(format!("{}-{}-{short}", self.name, self.version))
    }

    fn marker(&self) -> PathBuf {
        self.cache_dir().join(".complete")
    }

    /// Whether every binary of this component is in the cache.
    pub fn is_built(&self) -> bool {
        self.marker().exists()
    }

    /// The cached path of one of this component's binaries, or [`Error::MissingBinary`].
    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        let path = self.cache_dir().join(name);
        if self.is_built() && path.exists() {
            Ok(path)
        } else {
            Err(Error::MissingBinary {
                binary: name.to_string(),
                version: self.version.to_string(),
                path,
            })
        }
    }

    fn ldflags(&self) -> String {
        match self.name {
            "kubernetes" => {
                let minor = self.version.split('.').nth(1).unwrap_or("0");
                let mut flags = String::from("-s -w");
                for pkg in [
                    "k8s.io/component-base/version",
                    "k8s.io/client-go/pkg/version",
                ] {
                    flags.push_str(&format!(
                        " -X {pkg}.gitVersion={v} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor} \
                         -X {pkg}.gitTreeState=clean -X {pkg}.buildDate=2026-01-01T00:00:00Z",
                        v = self.version
                    ));
                }
                flags
            }
            "kratos" => format!(
                "-s -w -X github.com/ory/kratos/driver/config.Version={}",
                self.version
            ),
            "helm" => {
                let major = self.version.split('.').next().unwrap_or("v3");
                format!(
                    "-s -w -X helm.sh/helm/{major}/internal/version.version={}",
                    self.version
                )
            }
            // Each program reports the pinned version (`cosign version`, `registry --version`,
            // `actionlint -version`) instead of "devel".
            "cosign" => format!(
                "-s -w -X sigs.k8s.io/release-utils/version.gitVersion={}",
                self.version
            ),
            "registry" => format!(
                "-s -w -X github.com/distribution/distribution/v3/version.version={}",
                self.version
            ),
            "actionlint" => format!(
                "-s -w -X github.com/rhysd/actionlint.version={}",
                self.version
            ),
            _ => "-s -w".to_string(),
        }
    }

    /// Builds the component unless it is cached. Returns how long the build took (zero when cached).
    pub fn build(&self, force: bool) -> Result<Duration> {
        if self.is_built() && !force {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let out = self.cache_dir();
        // Beside the final directory, named after all of it: `with_extension` would cut the name
        // at the version's last dot (`cosign-v2.6.5-…` to `cosign-v2.6.partial`).
        let mut staging_name = out.file_name().unwrap_or_default().to_os_string();
        staging_name.push(".partial");
        let staging = out.with_file_name(staging_name);
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .map_err(io_err(format!("removing {}", staging.display())))?;
        }
        fs::create_dir_all(&staging).map_err(io_err(format!("creating {}", staging.display())))?;
        for binary in self.binaries {
            let target = staging.join(binary.name);
            let mut cmd = Command::new("go");
            cmd.current_dir(self.module_dir())
                .env("CGO_ENABLED", if self.cgo { "1" } else { "0" })
                .env("GOFLAGS", "-mod=readonly -buildvcs=false")
                .env("GOTOOLCHAIN", "local")
                .arg("build")
                .arg("-trimpath")
                .arg(format!("-ldflags={}", self.ldflags()))
                .arg("-o")
                .arg(&target);
            if !self.tags.is_empty() {
                cmd.arg(format!("-tags={}", self.tags));
            }
            cmd.arg(binary.package);
            eprintln!(
                "testenv: go build {} ({} {})",
                binary.package, self.name, self.version
            );
            let status = cmd.status().map_err(|e| Error::Build {
                component: self.name.to_string(),
                message: format!("could not run `go` (is Go installed and on PATH?): {e}"),
            })?;
            if !status.success() {
                return Err(Error::Build {
                    component: self.name.to_string(),
                    message: format!("`go build {}` exited with {status}", binary.package),
                });
            }
        }
        if let Some(module) = self.crds_from {
            self.copy_crds(module, &staging.join("crds"))?;
        }
        fs::write(staging.join(".complete"), self.version)
            .map_err(io_err("writing build marker"))?;
        if out.exists() {
            fs::remove_dir_all(&out).map_err(io_err(format!("removing {}", out.display())))?;
        }
        fs::rename(&staging, &out)
            .map_err(io_err(format!("moving build into {}", out.display())))?;
        Ok(started.elapsed())
    }
}

impl Component {
    /// The directory of this component's CRDs (see [`Component::crds_from`]).
    pub fn crds_dir(&self) -> Result<PathBuf> {
        let dir = self.cache_dir().join("crds");
        if self.is_built() && dir.is_dir() {
            Ok(dir)
        } else {
            Err(Error::MissingBinary {
                binary: format!("{} CRDs", self.name),
                version: self.version.to_string(),
                path: dir,
            })
        }
    }

    /// Copies `config/crd/bases/*.yaml` of `module`, at the version the wrapper module requires
    /// (the one its build just downloaded), into `into`.
    fn copy_crds(&self, module: &str, into: &Path) -> Result<()> {
        let build_err = |message: String| Error::Build {
            component: self.name.to_string(),
            message,
        };
        let out = Command::new("go")
            .current_dir(self.module_dir())
            .env("GOFLAGS", "-mod=readonly")
            .env("GOTOOLCHAIN", "local")
            .args(["list", "-m", "-f", "{{.Dir}}", module])
            .output()
            .map_err(|e| build_err(format!("could not run `go list -m {module}`: {e}")))?;
        if !out.status.success() {
            return Err(build_err(format!(
                "`go list -m {module}` exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let bases = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            .join("config")
            .join("crd")
            .join("bases");
        fs::create_dir_all(into).map_err(io_err(format!("creating {}", into.display())))?;
        let mut copied = 0;
        for entry in fs::read_dir(&bases).map_err(io_err(format!("reading {}", bases.display())))? {
            let path = entry.map_err(io_err("listing CRDs"))?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let target = into.join(path.file_name().unwrap_or_default());
                fs::copy(&path, &target).map_err(io_err(format!("copying {}", path.display())))?;
                copied += 1;
            }
        }
        if copied == 0 {
            return Err(build_err(format!("no CRD in {}", bases.display())));
        }
        Ok(())
    }
}

/// The `*.go` files directly in a module directory, sorted by name, with their contents. An
/// unreadable directory gives none: the build then reports the real problem.
fn go_sources(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?.to_string();
            if !name.ends_with(".go") || !path.is_file() {
                return None;
            }
            Some((name, fs::read(&path).unwrap_or_default()))
        })
        .collect();
    files.sort();
    files
}

/// Path of a binary of the environment, failing with the command that builds it.
pub fn binary(component: &Component, name: &str) -> Result<PathBuf> {
    component.binary(name)
}

/// Checks that a path is an executable file (used by `status`).
pub fn exists(path: &Path) -> bool {
    path.is_file()
}

/// The variable that selects the environment's Kubernetes release: `newest` (the default),
/// `oldest`, or either's exact version.
pub const KUBERNETES_ENV: &str = "KRATOS_OPERATOR_TESTENV_KUBERNETES";

/// The variable that selects the Helm the chart tests run: `4` (the default) or `3`.
pub const HELM_ENV: &str = "KRATOS_OPERATOR_TESTENV_HELM";

/// The Kubernetes release `name` names: `newest`, `oldest`, or the exact version of either (as
/// a state file records it).
pub fn kubernetes(name: &str) -> Result<Component> {
    [KUBERNETES, KUBERNETES_OLDEST]
        .into_iter()
        .find(|c| c.version == name || c.version.trim_start_matches('v') == name)
        .or(match name {
            "newest" => Some(KUBERNETES),
            "oldest" => Some(KUBERNETES_OLDEST),
            _ => None,
        })
        .ok_or_else(|| {
            Error::Config(format!(
                "unknown Kubernetes release {name:?} (in {KUBERNETES_ENV} or --kubernetes): use \
                 newest ({}) or oldest ({})",
                KUBERNETES.version, KUBERNETES_OLDEST.version
            ))
        })
}

/// The Kubernetes release `$KRATOS_OPERATOR_TESTENV_KUBERNETES` names; the newest when unset.
pub fn kubernetes_from_env() -> Result<Component> {
    match std::env::var(KUBERNETES_ENV) {
        Ok(value) if !value.is_empty() => kubernetes(&value),
        _ => Ok(KUBERNETES),
    }
}

/// The Helm `$KRATOS_OPERATOR_TESTENV_HELM` names: `4` (the default) or `3`, or the exact version
/// of either.
pub fn helm_from_env() -> Result<Component> {
    let value = std::env::var(HELM_ENV).unwrap_or_default();
    let major =
        |c: &Component| c.version.trim_start_matches('v').split('.').next() == Some(value.as_str());
    match value.as_str() {
        "" => Ok(HELM),
        _ => [HELM, HELM_3]
            .into_iter()
            .find(|c| c.version == value || major(c))
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown Helm {value:?} (in {HELM_ENV}): use 4 ({}) or 3 ({})",
                    HELM.version, HELM_3.version
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version a wrapper module's go.mod requires of `module` (pure).
    fn required(go_mod: &str, module: &str) -> Option<String> {
        go_mod.lines().find_map(|line| {
            let line = line.trim().trim_start_matches("require").trim();
            let mut words = line.split_whitespace();
            (words.next() == Some(module)).then(|| words.next().map(str::to_string))?
        })
    }

    /// What builds a component is its wrapper module's go.mod; what it is called (the cache key,
    /// `testenv status`, the `-X` version flags) is `versions`. A dependency update that bumps
    /// one must bump the other: this fails when they disagree.
    #[test]
    fn every_pinned_version_is_the_one_its_wrapper_module_requires() {
        let cases: [(&Component, &str, &str); 12] = [
            (&KUBERNETES, "k8s.io/kubernetes", versions::KUBERNETES),
            (&KUBERNETES, "go.etcd.io/etcd/server/v3", versions::ETCD),
            (
                &KUBERNETES_OLDEST,
                "k8s.io/kubernetes",
                versions::KUBERNETES_OLDEST,
            ),
            (
                &KUBERNETES_OLDEST,
                "go.etcd.io/etcd/server/v3",
                versions::ETCD_OLDEST,
            ),
            (&KRATOS, "github.com/ory/kratos", versions::KRATOS),
            (&HELM, "helm.sh/helm/v4", versions::HELM),
            (&HELM_3, "helm.sh/helm/v3", versions::HELM_3),
            (
                &REGISTRY,
                "github.com/distribution/distribution/v3",
                versions::REGISTRY,
            ),
            (&SIGSTORE, "github.com/sigstore/cosign/v2", versions::COSIGN),
            (
                &ACTIONLINT,
                "github.com/rhysd/actionlint",
                versions::ACTIONLINT,
            ),
            (&COREDNS, "github.com/coredns/coredns", versions::COREDNS),
            (
                &KUBE_ROUTER,
                "github.com/cloudnativelabs/kube-router/v2",
                versions::KUBE_ROUTER,
            ),
        ];
        for (component, module, pinned) in cases {
            let path = component.module_dir().join("go.mod");
            let go_mod = fs::read_to_string(&path).unwrap();
            assert_eq!(
                required(&go_mod, module).as_deref(),
                Some(pinned),
                "{} requires {module} at another version than testenv/src/lib.rs pins",
                path.display()
            );
        }
        // Every wrapper module but pause (our own program) is one of those.
        let mut modules: Vec<&str> = ALL.iter().map(|c| c.module).collect();
        modules.sort();
        modules.dedup();
        assert_eq!(modules.len(), ALL.len(), "one wrapper module per component");
    }

    #[test]
    fn a_requirement_is_read_from_a_require_block_or_line() {
        let go_mod = "module x\n\nrequire a.b/c v1.2.3\n\nrequire (\n\td.e/f v0.1.0\n\tg.h/i v2.0.0 // indirect\n)\n";
        assert_eq!(required(go_mod, "a.b/c").as_deref(), Some("v1.2.3"));
        assert_eq!(required(go_mod, "d.e/f").as_deref(), Some("v0.1.0"));
        assert_eq!(required(go_mod, "g.h/i").as_deref(), Some("v2.0.0"));
        assert_eq!(required(go_mod, "d.e"), None);
    }
}
