//! One module per subcommand; each builds a plan (or does its one job) for `main` to execute.

pub mod build;
pub mod ci;
pub mod deny;
pub mod doctor;
pub mod fmt;
pub mod lint;
pub mod secrets;
pub mod setup;
pub mod test;
pub mod workflows;

use std::process::ExitCode;

use anyhow::Result;

use crate::workspace::Workspace;
use crate::{Command, Ctx, UsageError};

pub fn dispatch(ctx: &Ctx, command: Command) -> Result<ExitCode> {
    match command {
        Command::Fmt(args) => ctx.execute(&fmt::plan(ctx, &args)),
        Command::Lint(args) => ctx.execute(&lint::plan(
            ctx,
            &args.selection.resolve(&ctx.workspace()?)?,
        )),
        Command::Test(args) => ctx.execute(&test::plan(ctx, &ctx.workspace()?, &args)?),
        Command::Build(args) => ctx.execute(&build::plan(ctx, &ctx.workspace()?, &args)?),
        Command::Deny(args) => ctx.execute(&deny::plan(ctx, &args)?),
        Command::Secrets(args) => secrets::run(ctx, &args),
        Command::Doctor(args) => doctor::run(ctx, &args),
        Command::Setup(args) => ctx.execute(&setup::plan(ctx, &args)?),
        Command::Workflows(args) => workflows::run(ctx, &args),
        Command::Ci(args) => ctx.execute(&ci::plan(ctx, &args)?),
    }
}

/// `--package` / `--service` selection shared by the cargo commands. Empty means the whole workspace.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Selection {
    /// Only this workspace member (repeatable).
    #[arg(short, long = "package", value_name = "NAME")]
    pub packages: Vec<String>,
    /// Only this service's package (repeatable); see `[package.metadata.service]`.
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,
}

impl Selection {
    /// Validate the names against the workspace and return cargo `-p` values (empty = all).
    pub fn resolve(&self, ws: &Workspace) -> Result<Vec<String>> {
        let mut names = ws.require_services(&self.services)?;
        for p in &self.packages {
            if !ws.members.contains_key(p) {
                let known: Vec<_> = ws.members.keys().map(String::as_str).collect();
                return Err(UsageError(format!(
                    "unknown package '{p}' (workspace members: {})",
                    known.join(", ")
                ))
                .into());
            }
            names.push(p.clone());
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// `-p a -p b`, or `--workspace` when nothing was selected.
pub fn package_args(packages: &[String]) -> Vec<String> {
    if packages.is_empty() {
        return vec!["--workspace".to_string()];
    }
    packages
        .iter()
        .flat_map(|p| ["-p".to_string(), p.clone()])
        .collect()
}
