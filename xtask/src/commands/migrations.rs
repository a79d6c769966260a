//! `cargo xtask migrations check [--dir DIR]`: every SQL migration is expand-only, or says
//! beside each statement that breaks the running code which rule it breaks and why that is safe
//! (`xtask_kit::migrations`). A `ci` stage; `deploy` runs the same check before it changes
//! anything, which is what makes rolling code back safe.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use xtask_kit::migrations;

use crate::plan::{Plan, Step, Task};
use crate::{Ctx, UsageError};

/// Database migrations: check they keep the running release working (expand/contract).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Action {
    /// Refuse statements that break the code a migration replaces (DROP, RENAME, type changes,
    /// NOT NULL without a default) unless marked `-- allow: RULE (reason: ...)`.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// Check the .sql files of this directory instead of the workspace's `migrations/`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The migrations keep the running release working.
#[derive(Clone, Debug, Serialize)]
pub struct MigrationsSafe {
    pub root: PathBuf,
    /// Relative to `root` (or absolute).
    pub files: Vec<PathBuf>,
}

impl Task for MigrationsSafe {
    fn summary(&self) -> String {
        format!("check {} migration(s) for statements that break the running release", self.files.len())
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("migrations-safe", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        let mut found = Vec::new();
        for file in &self.files {
            let path = self.root.join(file);
            let sql = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            found.extend(migrations::check(file, &sql));
        }
        for v in &found {
            writeln!(log, "{}", v.line())?;
        }
        if !found.is_empty() {
            bail!("{} statement(s) would break the running release (listed above)", found.len());
        }
        writeln!(log, "{} migration(s): expand-only or marked", self.files.len())?;
        Ok(())
    }
}

pub fn check_plan(ctx: &Ctx, args: &CheckArgs) -> Result<Plan> {
    let files = match &args.dir {
        None => migrations::files(&ctx.root).context("listing migrations")?,
        Some(dir) => {
            let dir = if dir.is_absolute() { dir.clone() } else { ctx.root.join(dir) };
            migrations::sql_files(&dir)
                .map_err(|e| UsageError(format!("--dir {}: {e}; name a directory of .sql migrations", dir.display())))?
        }
    };
    let mut plan = Plan::new("migrations check");
    if files.is_empty() {
        plan.notes.push("no migrations found: nothing to check".into());
        return Ok(plan);
    }
    plan.push(Step::internal(
        "migrations",
        "every migration keeps the running release working (expand/contract)",
        MigrationsSafe { root: ctx.root.clone(), files },
        "cargo xtask migrations check",
    ));
    Ok(plan)
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<ExitCode> {
    match &args.action {
        Action::Check(check) => ctx.execute(&check_plan(ctx, check)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_migrations_are_checked_in_one_step() {
        let plan = check_plan(&crate::test_ctx(), &CheckArgs::default()).expect("plan");
        assert_eq!(plan.steps.len(), 1);
        let described = serde_json::to_string(&plan.steps[0]).expect("JSON");
        assert!(described.contains("crates/job-queue/migrations/0001_jobs.sql"), "{described}");
    }

    #[test]
    fn a_directory_that_does_not_exist_is_a_usage_error() {
        let err = check_plan(&crate::test_ctx(), &CheckArgs { dir: Some("no/such/dir".into()) }).expect_err("usage");
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
    }
}
