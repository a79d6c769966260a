//! `cargo xtask fmt [--check]`: format every crate, or check formatting without touching files.

use crate::Ctx;
use crate::plan::{Plan, Step};
use crate::tools::RUSTFMT;

/// Format all code with rustfmt (`--check` only reports, as CI does).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Report unformatted files and fail instead of rewriting them.
    #[arg(long)]
    pub check: bool,
}

pub fn plan(ctx: &Ctx, args: &Args) -> Plan {
    let mut plan = Plan::new(if args.check { "fmt --check" } else { "fmt" });
    let step = if args.check {
        Step::cargo(
            "fmt",
            "check formatting (fix with `cargo xtask fmt`)",
            ["fmt", "--all", "--", "--check"],
            &ctx.root,
        )
    } else {
        Step::cargo("fmt", "format every crate", ["fmt", "--all"], &ctx.root)
    };
    plan.push(step.requiring(&RUSTFMT));
    plan
}
