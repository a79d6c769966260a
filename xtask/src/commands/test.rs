//! `cargo xtask test`: run every test (nextest when installed, else cargo test), shardable for CI.

use anyhow::Result;

use crate::commands::{Selection, package_args};
use crate::plan::{Plan, Step};
use crate::tools::NEXTEST;
use crate::workspace::Workspace;
use crate::{Ctx, UsageError};

/// Run the tests of the workspace (or a selection) with cargo-nextest, falling back to cargo test.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    #[command(flatten)]
    pub selection: Selection,
    /// Run one shard of the tests, e.g. `hash:1/3` or `count:2/2` (needs cargo-nextest).
    #[arg(long, value_name = "KIND:M/N")]
    pub partition: Option<String>,
}

pub fn plan(ctx: &Ctx, ws: &Workspace, args: &Args) -> Result<Plan> {
    let packages = args.selection.resolve(ws)?;
    plan_for(ctx, ws, &packages, args.partition.as_deref(), NEXTEST.locate().is_some())
}

/// The crate whose users' tests talk to real Postgres and Redis.
const NEEDS_TEST_DEPS: &str = "test-support";

/// The plan for a package list (empty = everything), with or without nextest.
pub fn plan_for(
    ctx: &Ctx,
    ws: &Workspace,
    packages: &[String],
    partition: Option<&str>,
    nextest: bool,
) -> Result<Plan> {
    if let Some(p) = partition {
        validate_partition(p)?;
        if !nextest {
            return Err(UsageError(format!(
                "--partition needs cargo-nextest, which is not installed; install: {}",
                NEXTEST.install_hint
            ))
            .into());
        }
    }
    let mut plan = plan_tests(ctx, ws, packages, partition, nextest);
    let selected = |name: &String| packages.is_empty() || packages.contains(name);
    if ws.members.values().any(|m| selected(&m.name) && m.deps.contains(NEEDS_TEST_DEPS)) {
        crate::commands::test_deps::wrap(&mut plan, &ctx.root)?;
    }
    // The raw command needs the test servers, which are gone by the time anyone reads this:
    // point people at the command that starts them again.
    let mut rerun = String::from("cargo xtask test");
    for p in packages {
        rerun.push_str(&format!(" -p {p}"));
    }
    if let Some(p) = partition {
        rerun.push_str(&format!(" --partition {p}"));
    }
    for step in plan.steps.iter_mut().filter(|s| s.name.starts_with("test")) {
        step.reproduce = rerun.clone();
    }
    Ok(plan)
}

fn plan_tests(ctx: &Ctx, ws: &Workspace, packages: &[String], partition: Option<&str>, nextest: bool) -> Plan {
    let mut plan = Plan::new("test");
    let mut args: Vec<String>;
    if nextest {
        // Build the whole workspace but run only the selection: service tests start other
        // services' binaries (the gateway's start the API), which must be current too.
        args = ["nextest", "run", "--workspace", "--locked", "--no-tests", "fail"].map(String::from).to_vec();
        if !packages.is_empty() {
            let filter: Vec<String> = packages.iter().map(|p| format!("package({p})")).collect();
            args.extend(["-E".to_string(), filter.join(" | ")]);
        }
        if let Some(p) = partition {
            args.extend(["--partition".to_string(), p.to_string()]);
        }
        plan.push(Step::cargo("test", "unit and integration tests (nextest)", args, &ctx.root).requiring(&NEXTEST));
    } else {
        plan.notes.push(format!(
            "cargo-nextest not found: using `cargo test`; for the faster runner: {}",
            NEXTEST.install_hint
        ));
        if !packages.is_empty() {
            // Tests of one service start others' binaries: build them all, as nextest's
            // `--workspace` does.
            plan.push(Step::cargo(
                "test:build",
                "every binary the tests may start",
                ["build", "--workspace", "--bins", "--locked"],
                &ctx.root,
            ));
        }
        args = vec!["test".into()];
        args.extend(package_args(packages));
        args.push("--locked".into());
        plan.push(Step::cargo("test", "unit, integration and doc tests (cargo test)", args, &ctx.root));
        return plan;
    }
    // nextest does not run doctests; run them for the selected libraries, once (not per shard).
    let libs: Vec<String> = ws
        .members
        .values()
        .filter(|m| m.has_lib && (packages.is_empty() || packages.contains(&m.name)))
        .map(|m| m.name.clone())
        .collect();
    let first_shard = partition.is_none_or(|p| p.split(':').nth(1).is_some_and(|s| s.starts_with("1/")));
    if !libs.is_empty() && first_shard {
        let mut doc = vec!["test".to_string(), "--doc".into(), "--locked".into()];
        doc.extend(libs.iter().flat_map(|l| ["-p".to_string(), l.clone()]));
        plan.push(Step::cargo("test:doc", "documentation tests", doc, &ctx.root));
    }
    plan
}

fn validate_partition(p: &str) -> Result<()> {
    let bad = || {
        UsageError(format!("--partition {p}: expected KIND:M/N with KIND count or hash and 1 <= M <= N, e.g. hash:1/3"))
    };
    let (kind, shard) = p.split_once(':').ok_or_else(bad)?;
    let (m, n) = shard.split_once('/').ok_or_else(bad)?;
    let (m, n): (u32, u32) = (m.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if !matches!(kind, "count" | "hash") || m == 0 || m > n {
        return Err(bad().into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_validated_before_anything_runs() {
        assert!(validate_partition("hash:1/3").is_ok());
        assert!(validate_partition("count:2/2").is_ok());
        for bad in ["1/3", "hash:0/3", "hash:4/3", "slice:1/2", "hash:a/b", "hash:1"] {
            assert!(validate_partition(bad).is_err(), "{bad} should be rejected");
        }
    }
}
