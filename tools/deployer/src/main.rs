//! The deployer: what `cargo xtask deploy` hands off to. It deploys an environment to a
//! Kubernetes cluster (`kube.rs`: render, pin by digest through kustomize, validate, diff,
//! apply, verify, roll back on failure) or to a Docker host (`docker.rs`: a health-gated replace
//! of the compose project), shows what runs (`status`), rolls back on demand (`rollback`), and
//! checks compose files for settings that hand a container the host (`compose-check`, run by
//! `cargo xtask scan`).
//!
//! Every deploy shows its plan (human, or JSON with `--format json`), then asks at one point
//! (`confirm`), then changes things; `--dry-run` stops after the plan. xtask gives it the facts
//! it owns (services, revision, compose program, the policy checker) in a file (`--facts`).
//! Exit codes: 0 done, 1 failed (after any rollback), 2 bad usage or configuration.

mod access;
mod backup;
mod compose;
mod compose_check;
mod docker;
mod engine;
mod env;
mod history;
mod kube;
mod lease;
mod source;
mod spec;
mod verify;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use xtask_kit::UsageError;
use xtask_kit::handoff::{
    ApplyArgs, DeployArgs, DeployFacts, EnvArgs, PromoteArgs, RestoreArgs, RollbackArgs, Target, UnlockArgs, VerifyArgs,
};

#[derive(Parser, Debug)]
#[command(name = "deployer", about = "Deploys what `cargo xtask image build` built; run through `cargo xtask deploy`.")]
struct Cli {
    /// Plan (render, validate, diff, or compare with what runs), show the plan, change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    #[arg(long, global = true, value_enum, default_value = "human")]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Deploy an environment: plan shown, one confirmation, apply, verify, roll back on failure.
    Deploy {
        #[command(flatten)]
        args: DeployArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// Deploy to `--to` exactly the digests `--from` runs (read from the environment itself).
    Promote {
        #[command(flatten)]
        args: PromoteArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// Put an earlier release back (`--to`, else the last good one) and wait for it.
    Rollback {
        #[command(flatten)]
        args: RollbackArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// Hold what runs to the environment's SLOs (infra/slo/ENV.toml) under its verification
    /// load; on a breach, roll back to the last good release and exit 1 naming the breach.
    Verify {
        #[command(flatten)]
        args: VerifyArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// Set up what a CI runner needs to reach the environment (ssh key and known hosts for a
    /// `DOCKER_HOST=ssh://` host, a kubeconfig for a cluster) from secrets in its environment.
    Access {
        #[command(flatten)]
        args: EnvArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// Delete a Kubernetes environment's deploy lock (a Lease in its namespace) left by a deploy
    /// that is gone; `--force` required.
    Unlock {
        #[command(flatten)]
        args: UnlockArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// The environment's last releases, newest first, with what verification said of each.
    History {
        #[command(flatten)]
        args: EnvArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// What runs where: images and digests, readiness, the known-good release.
    Status {
        #[command(flatten)]
        args: EnvArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// Back the environment's Postgres up now (Docker target).
    Backup {
        #[command(flatten)]
        args: EnvArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// The environment's backups, newest first (Docker target).
    Backups {
        #[command(flatten)]
        args: EnvArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// Restore the environment's Postgres from a backup, its checksum checked first.
    Restore {
        #[command(flatten)]
        args: RestoreArgs,
        #[arg(long, value_name = "FILE")]
        facts: PathBuf,
    },
    /// Misconfiguration checks over compose files; findings as JSON to `--out`.
    ComposeCheck {
        /// The repository whose git-tracked infra/compose files are checked.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// How this run was asked for, and the facts xtask handed over.
pub struct Ctx {
    pub root: PathBuf,
    pub dry_run: bool,
    pub json: bool,
    pub facts: DeployFacts,
}

impl Ctx {
    fn new(cli: &Cli, facts: &Path) -> Result<Ctx> {
        let facts = DeployFacts::read(facts)?;
        Ok(Ctx { root: facts.root.clone(), dry_run: cli.dry_run, json: cli.format == Format::Json, facts })
    }
}

/// Text (a tool's stderr, an error chain) on one line: what an error message quotes.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Environments that need the explicit confirmation.
const GUARDED: &[&str] = &["prod"];

/// The one confirmation point of a deploy: after its plan is shown, before anything changes.
pub fn confirm(env: &str, args: &ApplyArgs) -> Result<()> {
    confirm_to(env, args.yes, args.confirm.as_deref(), "Deploying to", "nothing was applied")
}

/// A guarded environment's confirmation for `doing` (`Deploying to`, `Restoring`): `--yes`, and
/// the environment's name, typed or as `--confirm` without a terminal.
pub fn confirm_to(env: &str, yes: bool, confirmed: Option<&str>, doing: &str, nothing: &str) -> Result<()> {
    if !GUARDED.contains(&env) {
        return Ok(());
    }
    let doing_lower = doing.to_lowercase();
    if !yes {
        return Err(UsageError(format!(
            "{doing_lower} {env} needs --yes (and --confirm {env} without a terminal); {nothing}"
        ))
        .into());
    }
    if confirmed == Some(env) {
        return Ok(());
    }
    if let Some(other) = confirmed {
        return Err(UsageError(format!("--confirm {other} does not match --env {env}; {nothing}")).into());
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            UsageError(format!("{doing_lower} {env} without a terminal needs --confirm {env}; {nothing}")).into()
        );
    }
    eprint!("{doing} {env}. Type the environment's name to go on: ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != env {
        return Err(UsageError(format!("`{}` is not `{env}`; {nothing}", answer.trim())).into());
    }
    Ok(())
}

/// `promote --commit SHA`: the source must run that commit (a prefix of the full SHA is enough).
pub fn check_commit(env: &str, runs: &str, wanted: Option<&str>) -> Result<()> {
    match wanted {
        Some(commit) if !runs.starts_with(commit) => Err(UsageError(format!(
            "{env} runs commit {runs}, not {commit}: promote what {env} verified, or deploy {commit} to {env} first"
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Where one deploy of an environment works. A real deploy holds the environment's directory
/// exclusively: two deploys of one environment from this checkout take turns instead of
/// overwriting each other's render (the lock ends with the process). A dry run changes nothing,
/// so it takes no lock and plans in a scratch directory of its own, removed when it ends.
pub struct WorkDir {
    pub dir: PathBuf,
    _lock: Option<std::fs::File>,
    scratch: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.scratch {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn work_dir(ctx: &Ctx, env: &str) -> Result<WorkDir> {
    let home = ctx.facts.work_home(env);
    if ctx.dry_run {
        let dir = home.join(format!("dry-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        return Ok(WorkDir { dir, _lock: None, scratch: true });
    }
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let lock =
        std::fs::File::create(home.join(".lock")).with_context(|| format!("creating {}/.lock", home.display()))?;
    if lock.try_lock().is_err() {
        eprintln!("another deploy of {env} is running from this checkout; waiting for it to finish");
        lock.lock().with_context(|| format!("locking {}/.lock", home.display()))?;
    }
    Ok(WorkDir { dir: home, _lock: Some(lock), scratch: false })
}

/// `--context` names a kube context: meaningless for a Docker host.
fn k8s_only(target: Target, context: &Option<String>) -> Result<()> {
    if target == Target::Docker && context.is_some() {
        return Err(UsageError("--context names a kube context; it applies to --target k8s only".into()).into());
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Deploy { args, .. } => k8s_only(args.apply.target, &args.apply.context)?,
        Command::Promote { args, .. } => k8s_only(args.apply.target, &args.apply.context)?,
        Command::Rollback { args, .. } => k8s_only(args.env.target, &args.env.context)?,
        Command::Verify { args, .. } => k8s_only(args.env.target, &args.env.context)?,
        Command::Unlock { args, .. } => k8s_only(args.env.target, &args.env.context)?,
        Command::Access { args, .. } => k8s_only(args.target, &args.context)?,
        Command::History { args, .. }
        | Command::Status { args, .. }
        | Command::Backup { args, .. }
        | Command::Backups { args, .. } => k8s_only(args.target, &args.context)?,
        Command::Restore { args, .. } => k8s_only(args.env.target, &args.env.context)?,
        Command::ComposeCheck { .. } => {}
    }
    match &cli.command {
        Command::Deploy { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            let env = args.env.clone().expect("clap requires --env");
            match args.apply.target {
                Target::K8s => kube::deploy(&ctx, &env, args),
                Target::Docker => {
                    let work = work_dir(&ctx, &env)?;
                    docker::deploy(&ctx, &env, args, &work.dir)
                }
            }
        }
        Command::Promote { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            let deploy = args.deploy();
            match args.apply.target {
                Target::K8s => kube::promote(&ctx, &args.from, args.commit.as_deref(), &deploy),
                Target::Docker => {
                    let work = work_dir(&ctx, &args.to)?;
                    docker::promote(&ctx, &args.from, args.commit.as_deref(), &deploy, &work.dir)
                }
            }
        }
        Command::Rollback { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            match args.env.target {
                Target::K8s => kube::rollback(&ctx, args),
                Target::Docker => {
                    let work = work_dir(&ctx, &args.env.env)?;
                    docker::rollback(&ctx, args, &work.dir)
                }
            }
        }
        Command::Verify { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            match args.env.target {
                Target::K8s => kube::verify(&ctx, args),
                Target::Docker => {
                    let work = work_dir(&ctx, &args.env.env)?;
                    docker::verify_command(&ctx, args, &work.dir)
                }
            }
        }
        Command::Access { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            if ctx.dry_run {
                eprintln!("dry run: would write the {} access of {} from its secrets", args.target.name(), args.env);
                return Ok(ExitCode::SUCCESS);
            }
            access::run(args.target, &args.env)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Unlock { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            match args.env.target {
                Target::K8s => kube::unlock(&ctx, args),
                Target::Docker => Err(UsageError(
                    "a Docker host's deploy lock is a file in the checkout that deploys (target/xtask/deploy/ENV/.lock), released when that deploy ends; there is nothing to unlock"
                        .into(),
                )
                .into()),
            }
        }
        Command::History { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            match args.target {
                Target::K8s => kube::history(&ctx, args),
                Target::Docker => docker::history(&ctx, &args.env),
            }
        }
        Command::Status { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            match args.target {
                Target::K8s => kube::status(&ctx, args),
                Target::Docker => docker::status(&ctx, &args.env),
            }
        }
        Command::Backup { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            let (env, store) = docker::backups(&ctx, args)?;
            if ctx.dry_run {
                return backup::dry_run(&env, &store, "backup", None, ctx.json);
            }
            backup::backup(&env, &store, ctx.json)
        }
        Command::Backups { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            let (env, store) = docker::backups(&ctx, args)?;
            backup::list(&env, &store, ctx.json)
        }
        Command::Restore { args, facts } => {
            let ctx = Ctx::new(cli, facts)?;
            let (env, store) = docker::backups(&ctx, &args.env)?;
            if ctx.dry_run {
                return backup::dry_run(&env, &store, "restore", Some(&args.backup), ctx.json);
            }
            let confirmed =
                || confirm_to(&env.name, args.yes, args.confirm.as_deref(), "Restoring", "nothing was restored");
            backup::restore(&env, &store, &args.backup, &confirmed)
        }
        Command::ComposeCheck { repo, out } => compose_check::run(repo, out),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            let usage = err.downcast_ref::<UsageError>().is_some();
            eprintln!("error: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
