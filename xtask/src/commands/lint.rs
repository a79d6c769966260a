//! `cargo xtask lint`: clippy on every target of the selected packages, warnings are errors.

use crate::Ctx;
use crate::commands::{Selection, package_args};
use crate::plan::{Plan, Step};
use crate::tools::CLIPPY;

/// Run clippy on all targets (lib, bins, tests, benches, examples) with `-D warnings`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    #[command(flatten)]
    pub selection: Selection,
}

pub fn plan(ctx: &Ctx, packages: &[String]) -> Plan {
    let mut plan = Plan::new("lint");
    let mut args = vec!["clippy".to_string()];
    args.extend(package_args(packages));
    args.extend(["--all-targets", "--locked", "--", "-D", "warnings"].map(String::from));
    plan.push(Step::cargo("lint", "clippy on all targets, warnings are errors", args, &ctx.root).requiring(&CLIPPY));
    plan
}
