//! `cargo xtask`: build, check, scan and ship this monorepo with one tool, locally and in CI.
//!
//! Every command plans its steps first (see `plan.rs`), then one runner executes them
//! (`runner.rs`). `--dry-run` prints the plan; `--format json` makes the output machine-readable.

mod affected;
mod commands;
mod generated;
mod git;
mod install;
mod oci;
mod plan;
mod runner;
mod scan;
mod secrets;
mod summary;
#[cfg(test)]
mod tidy;
mod tools;
mod workspace;

// The process layer and the shared models live in tools/kit, which the deployer links too.
use xtask_kit::{date, duration, env_file, images, process};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use runner::{Format, Ui};

/// Exit code for a step that ran and failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for bad flags, unknown names or invalid configuration: nothing was run.
pub const EXIT_USAGE: u8 = 2;

/// A problem with how xtask was called or configured (exit code 2), as opposed to a step failing.
pub use xtask_kit::UsageError;

#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, check, scan and ship this monorepo. CI runs exactly these commands.",
    after_help = "Start with `cargo xtask doctor` to see which tools you have, then `cargo xtask ci`.\n\
                  Exit codes: 0 success, 1 a step failed, 2 bad usage or configuration."
)]
pub struct Cli {
    /// Print the plan (every command, its environment and directory) and run nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// `human` for people; `json` prints the plan or the result as JSON on stdout; `sarif` (scan only).
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub format: Format,
    /// Run every step even after one fails, then report all failures.
    #[arg(long, global = true)]
    pub keep_going: bool,
    /// Stream every step's output live instead of showing a spinner on a terminal.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Never install a missing pinned tool or package; fail with how to install it instead.
    #[arg(long, global = true, env = "XTASK_NO_INSTALL", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_install: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Fmt(commands::fmt::Args),
    Lint(commands::lint::Args),
    Test(commands::test::Args),
    Build(commands::build::Args),
    Image(commands::image::Args),
    Deny(commands::deny::Args),
    Scan(commands::scan::Args),
    Dev(commands::dev::Args),
    Loadtest(commands::loadtest::Args),
    K8s(commands::k8s::Args),
    Deploy(Box<commands::deploy::Args>),
    Secrets(commands::secrets::Args),
    Doctor(commands::doctor::Args),
    Setup(commands::setup::Args),
    Workflows(commands::workflows::Args),
    Alerts(commands::alerts::Args),
    Migrations(commands::migrations::Args),
    Ci(commands::ci::Args),
}

/// Everything a command needs to know about how it was invoked.
pub struct Ctx {
    pub root: PathBuf,
    pub ui: Ui,
    pub dry_run: bool,
    pub keep_going: bool,
    /// Install the pinned tools a plan needs and this machine lacks before running it.
    pub may_install: bool,
}

impl Ctx {
    pub fn workspace(&self) -> anyhow::Result<workspace::Workspace> {
        workspace::Workspace::load(&self.root)
    }

    /// The tool is here, or will be by the time a step that requires it runs: missing but
    /// installable, and installs are allowed (`execute` installs what steps require).
    pub fn will_have(&self, tool: &tools::Tool) -> bool {
        tool.locate().is_some() || (self.may_install && install::installable(tool))
    }

    /// For a command that runs a tool itself rather than through a plan: install it now when it
    /// is missing and installs are allowed (nothing is installed on a dry run).
    pub fn install_now(&self, tool: &'static tools::Tool) -> anyhow::Result<()> {
        if self.dry_run || !self.will_have(tool) || tool.locate().is_some() {
            return Ok(());
        }
        let Some(install) = install::plan_installs(&self.root, "install", &[tool]) else { return Ok(()) };
        let report = runner::run(&install, &self.ui, &runner::Options { keep_going: false, quiet: false });
        anyhow::ensure!(
            report.ok,
            "installing {} failed (above); install it by hand: {}",
            tool.name,
            tool.install_hint
        );
        Ok(())
    }

    /// Print the plan (dry run) or run it; either way, turn the result into an exit code.
    /// The plan preceded by the installs of what it needs and this machine lacks (when installs
    /// are allowed): what `execute` shows or runs, and what commands that run a plan themselves run.
    pub fn with_installs<'p>(&self, plan: &'p plan::Plan) -> std::borrow::Cow<'p, plan::Plan> {
        match self.may_install.then(|| install::prepend_missing(&self.root, plan)).flatten() {
            Some(with) => std::borrow::Cow::Owned(with),
            None => std::borrow::Cow::Borrowed(plan),
        }
    }

    pub fn execute(&self, plan: &plan::Plan) -> anyhow::Result<ExitCode> {
        let plan = &*self.with_installs(plan);
        if self.dry_run {
            match self.ui.format {
                Format::Json | Format::Sarif => println!("{}", serde_json::to_string_pretty(plan)?),
                Format::Human => print!("{}", plan.render_human()),
            }
            return Ok(ExitCode::SUCCESS);
        }
        let report = runner::run(plan, &self.ui, &runner::Options { keep_going: self.keep_going, quiet: false });
        runner::print_report(&self.ui, &report);
        Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) })
    }
}

/// What `--dry-run` means for a plan that hands off to a tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DryRun {
    /// Print the plan, run nothing (the tool has no dry run of its own).
    ShowPlan,
    /// The tool was given `--dry-run` and plans without changing anything (the deployer
    /// renders, validates and diffs), so the plan runs.
    PassedOn,
}

impl Ctx {
    /// Run a plan whose last step hands the terminal to a tool (loadgen, the deployer): the
    /// steps before it run as every plan's do (their report only when one fails), then the tool
    /// runs with xtask's own streams, so its progress, its prompts, its stdout (the JSON of
    /// `--format json`) and its exit code are the user's.
    pub fn hand_off(&self, plan: &plan::Plan, dry_run: DryRun) -> anyhow::Result<ExitCode> {
        if self.dry_run && dry_run == DryRun::ShowPlan {
            return self.execute(plan);
        }
        let planned = plan.steps.len();
        let plan = &*self.with_installs(plan);
        // Installing something is said out loud; otherwise the tool speaks for the command.
        let quiet = plan.steps.len() == planned;
        let Some((last, before)) = plan.steps.split_last() else { return Ok(ExitCode::SUCCESS) };
        let plan::Action::Exec { program, args, env, cwd } = &last.action else {
            anyhow::bail!("`{}`: a hand-off is a command, not a built-in step", last.name)
        };
        // A tool it needs that is missing (and will not be installed first) fails now, with its
        // install hint, before any build.
        for tool in last.requires.iter().filter(|t| !self.will_have(t)) {
            tool.require()?;
        }
        let prepare = plan::Plan { command: plan.command.clone(), notes: plan.notes.clone(), steps: before.to_vec() };
        let report = runner::run(&prepare, &self.ui, &runner::Options { keep_going: false, quiet });
        if !report.ok {
            runner::print_report(&self.ui, &report);
            return Ok(ExitCode::from(EXIT_FAILED));
        }
        if self.ui.verbose {
            eprintln!("$ {}", last.command_line());
        }
        let status = process::Cmd::new(program).args(args).envs(env).current_dir(cwd).status()?;
        let code = match status.code() {
            Some(code) => code,
            // Killed by a signal: report it the shell's way (128 + signal).
            None => std::os::unix::process::ExitStatusExt::signal(&status).map_or(1, |s| 128 + s),
        };
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(EXIT_FAILED)))
    }
}

/// An environment variable read as a yes/no switch: `1`, `true`, `yes`, `on` are yes; unset,
/// empty, `0`, `false`, `no`, `off` are no (any case). Anything else is yes: a variable someone
/// set is more likely meant to switch something on.
pub fn env_flag(name: &str) -> bool {
    switch_value(std::env::var(name).ok().as_deref())
}

fn switch_value(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no" | "off"))
}

/// Running under CI (`CI` is set, as GitHub Actions and .ci/run set it): missing tools fail
/// instead of being skipped, and checks that would be optional on a laptop are required.
/// The one place this is decided.
pub fn in_ci() -> bool {
    env_flag("CI")
}

/// The workspace root: xtask always lives in `<root>/xtask`.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits inside the workspace").to_path_buf()
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR` (CI keeps it outside the clone) or `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// `cargo run` tells the binary which manifest it ran it for. Two checkouts that share one
/// `CARGO_TARGET_DIR` can get a binary built from the other one: cargo judges freshness by
/// mtimes, so sources older than the other checkout's build look built. Such an xtask would act
/// on the checkout it was built from, silently; this names the mix-up instead.
fn built_elsewhere(built_for: &Path, run_for: Option<&Path>) -> Option<String> {
    let run_for = run_for?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    (!same(built_for, run_for)).then(|| {
        format!(
            "this xtask was built from {} but cargo ran it for {}: two checkouts share a CARGO_TARGET_DIR and cargo kept the other one's build; give each checkout its own target dir, or `git ls-files -z | xargs -0 touch` here so cargo rebuilds",
            built_for.display(),
            run_for.display()
        )
    })
}

/// The cargo that started us (`$CARGO`), so children use the same toolchain.
pub fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// clap's errors span several lines; we promise one line plus a pointer to help.
fn usage_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let mut parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("error:") || l.starts_with("tip:"))
        .map(|l| l.trim_start_matches("error:").trim())
        .collect();
    if parts.is_empty() {
        parts.push(text.lines().next().unwrap_or("invalid arguments"));
    }
    format!("error: {} (see `cargo xtask --help`)", parts.join("; "))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            return match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = err.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = err.print();
                    ExitCode::from(EXIT_USAGE)
                }
                _ => {
                    eprintln!("{}", usage_line(&err));
                    ExitCode::from(EXIT_USAGE)
                }
            };
        }
    };
    let run_for = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    if let Some(problem) = built_elsewhere(Path::new(env!("CARGO_MANIFEST_DIR")), run_for.as_deref()) {
        eprintln!("error: {problem}");
        return ExitCode::from(EXIT_USAGE);
    }
    if cli.format == Format::Sarif && !matches!(cli.command, Command::Scan(_)) {
        eprintln!("error: --format sarif is only for `cargo xtask scan`; use human or json (see `cargo xtask --help`)");
        return ExitCode::from(EXIT_USAGE);
    }
    let ctx = Ctx {
        root: project_root(),
        ui: Ui::from_env(cli.format, cli.verbose),
        dry_run: cli.dry_run,
        keep_going: cli.keep_going,
        may_install: !cli.no_install,
    };
    match commands::dispatch(&ctx, cli.command) {
        Ok(code) => code,
        Err(err) => {
            let usage = err.downcast_ref::<UsageError>().is_some();
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("{} {message}", ctx.ui.paint("1;31", "error:"));
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILED })
        }
    }
}

/// A dry-run context on the real workspace, for plan-building tests.
#[cfg(test)]
pub fn test_ctx() -> Ctx {
    Ctx {
        root: project_root(),
        ui: Ui { format: Format::Human, color: false, tty: false, verbose: false, github: false },
        dry_run: true,
        keep_going: false,
        // As `cargo xtask` runs by default, so a plan does not depend on which pinned tools this
        // machine happens to have installed already.
        may_install: true,
    }
}

/// The affected-packages fixture workspace (xtask/tests/fixtures/affected).
#[cfg(test)]
pub fn fixture_workspace() -> workspace::Workspace {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/affected");
    workspace::Workspace::load(&root).expect("fixture workspace loads")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn a_binary_built_from_another_checkout_is_named() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(built_elsewhere(here, None), None, "run directly, not through cargo: nothing to compare");
        assert_eq!(built_elsewhere(here, Some(here)), None);
        assert_eq!(built_elsewhere(here, Some(&here.join("src/.."))), None, "the same directory spelled differently");
        let said = built_elsewhere(here, Some(Path::new("/elsewhere/xtask"))).expect("a mix-up");
        assert!(said.contains(&format!("built from {}", here.display())), "{said}");
        assert!(said.contains("cargo ran it for /elsewhere/xtask"), "{said}");
    }

    #[test]
    fn switches_read_from_the_environment_accept_the_usual_spellings() {
        for yes in ["1", "true", "TRUE", "yes", "on"] {
            assert!(switch_value(Some(yes)), "{yes}");
        }
        for no in [None, Some(""), Some("0"), Some("false"), Some("No"), Some("off")] {
            assert!(!switch_value(no), "{no:?}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_explains_itself() {
        for sub in Cli::command().get_subcommands() {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(about.len() > 20, "`cargo xtask {}` needs a real --help description", sub.get_name());
        }
    }

    #[test]
    fn clap_errors_become_one_line() {
        let err = Cli::try_parse_from(["xtask", "ci", "--dry-rn"]).expect_err("bad flag");
        let line = usage_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--dry-rn") && line.contains("--dry-run"), "{line}");
    }
}
