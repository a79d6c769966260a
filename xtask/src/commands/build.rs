//! `cargo xtask build [--release]`: compile every crate (or a selection) exactly as CI does.

use anyhow::Result;

use crate::Ctx;
use crate::commands::{Selection, package_args};
use crate::plan::{Plan, Step};
use crate::workspace::Workspace;

/// Compile the workspace with the locked dependency set (`--release` for the shipping profile).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Build with the release profile, as images and deploys do.
    #[arg(long)]
    pub release: bool,
    #[command(flatten)]
    pub selection: Selection,
}

pub fn plan(ctx: &Ctx, ws: &Workspace, args: &Args) -> Result<Plan> {
    let packages = args.selection.resolve(ws)?;
    let mut plan = Plan::new(if args.release { "build --release" } else { "build" });
    let mut cargo_args = vec!["build".to_string()];
    cargo_args.extend(package_args(&packages));
    cargo_args.push("--locked".into());
    if args.release {
        cargo_args.push("--release".into());
    }
    let what = if args.release { "release build" } else { "debug build" };
    plan.push(Step::cargo("build", what, cargo_args, &ctx.root));
    Ok(plan)
}
