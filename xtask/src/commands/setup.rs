//! `cargo xtask setup`: install the pinned tools this machine lacks (see xtask/tools.toml).
//!
//! Other commands install what their own plan needs on first use (`install.rs`); this installs
//! everything up front, and with `--force` reinstalls what does not meet its pin.

use anyhow::Result;

use crate::Ctx;
use crate::install;
use crate::plan::Plan;
use crate::tools::{self, Requirement, Tool};

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

pub fn plan(ctx: &Ctx, args: &Args) -> Result<Plan> {
    let mut plan = Plan::new("setup");
    let mut wanted: Vec<&'static Tool> = Vec::new();
    for tool in tools::ALL.iter().copied().filter(|t| install::installable(t)) {
        if needs_install(tool, args.force) {
            wanted.push(tool);
        } else {
            plan.notes.push(format!("{} {} already installed", tool.name, tool.wanted()));
        }
    }
    plan.steps = install::steps(&ctx.root, &wanted, &install::Machine::gather());
    if plan.steps.is_empty() {
        plan.notes.push("every pinned tool is installed; nothing to do".into());
    }
    Ok(plan)
}
