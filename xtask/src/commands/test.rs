//! `cargo xtask test`: the fast tier (unit, tidy, plan and service tests against real Postgres and
//! Redis) by default; `--e2e` adds the end-to-end tier (Docker, registry, trivy, kubectl).

use std::path::Path;

use anyhow::Result;

use crate::commands::{Selection, package_args};
use crate::plan::{Plan, Step};
use crate::tools::{self, NEXTEST};
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
    /// Add the end-to-end tier (the `e2e` package under tests/: the real xtask against Docker,
    /// a local registry, trivy and kubectl); what `ci` and CI run.
    #[arg(long)]
    pub e2e: bool,
}

/// The package that holds the end-to-end tier (the repository's top-level tests/).
pub const E2E_PACKAGE: &str = "e2e";

/// What one `cargo xtask test` run covers.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestRun<'a> {
    /// Packages to test (empty = the whole workspace).
    pub packages: &'a [String],
    pub partition: Option<&'a str>,
    /// Include the end-to-end tier.
    pub e2e: bool,
}

impl TestRun<'_> {
    fn includes(&self, package: &str) -> bool {
        (self.packages.is_empty() && (self.e2e || package != E2E_PACKAGE)) || self.packages.iter().any(|p| p == package)
    }

    /// Whether the end-to-end package runs: `--e2e` over the whole workspace, or a selection
    /// that names it (`-p api --e2e` tests api only, and needs none of the e2e tools).
    fn end_to_end(&self) -> bool {
        self.includes(E2E_PACKAGE)
    }

    /// What people type to run exactly this again (with the test servers it needs).
    fn rerun(&self) -> String {
        let mut rerun = String::from("cargo xtask test");
        for p in self.packages {
            rerun.push_str(&format!(" -p {p}"));
        }
        if self.e2e {
            rerun.push_str(" --e2e");
        }
        if let Some(p) = self.partition {
            rerun.push_str(&format!(" --partition {p}"));
        }
        rerun
    }
}

/// What the test plan depends on about this machine, gathered before planning.
#[derive(Clone, Copy, Debug)]
pub struct TestFacts {
    /// cargo-nextest is installed (else `cargo test`).
    pub nextest: bool,
    /// `docker compose` (v2) works, so the end-to-end tier needs no docker-compose 1.29.
    pub compose_v2: bool,
}

impl TestFacts {
    pub fn gather(ctx: &Ctx, e2e: bool) -> TestFacts {
        TestFacts { nextest: ctx.will_have(&NEXTEST), compose_v2: e2e && tools::compose_v2().is_some() }
    }
}

pub fn plan(ctx: &Ctx, ws: &Workspace, args: &Args) -> Result<Plan> {
    let packages = args.selection.resolve(ws)?;
    let run = TestRun { packages: &packages, partition: args.partition.as_deref(), e2e: args.e2e };
    plan_for(ctx, ws, &run, &TestFacts::gather(ctx, run.end_to_end()))
}

/// The crate whose users' tests talk to real Postgres and Redis.
const NEEDS_TEST_DEPS: &str = "test-support";

/// The plan for one test run, with or without nextest.
pub fn plan_for(ctx: &Ctx, ws: &Workspace, run: &TestRun<'_>, facts: &TestFacts) -> Result<Plan> {
    if let Some(p) = run.partition {
        validate_partition(p)?;
        if !facts.nextest {
            return Err(UsageError(format!(
                "--partition needs cargo-nextest, which is not installed; install: {}",
                NEXTEST.install_hint
            ))
            .into());
        }
    }
    let deps = ws.members.values().any(|m| run.includes(&m.name) && m.deps.contains(NEEDS_TEST_DEPS));
    let servers = if deps { Some(crate::commands::test_deps::TestServers::on_free_ports(&ctx.root)?) } else { None };
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(servers) = &servers {
        env.extend(servers.env());
    }
    if run.end_to_end() {
        // The end-to-end tests drive this very binary (tests/common: `xtask_bin`).
        let me = std::env::current_exe().map_err(|e| anyhow::anyhow!("finding the xtask binary: {e}"))?;
        env.push(("XTASK_BIN".into(), me.display().to_string()));
    }
    let mut plan = plan_tests(&ctx.root, ws, run, facts, &env);
    if let Some(servers) = servers {
        plan.notes.push(servers.note());
        plan.steps.insert(0, servers.up_step());
        plan.push(servers.down_step());
    }
    Ok(plan)
}

/// Tools the end-to-end tier cannot run without (checked, and installed when allowed, before it);
/// docker-compose 1.29 too when the compose v2 plugin is not there.
const E2E_TOOLS: &[&tools::Tool] = &[
    &tools::DOCKER,
    &tools::DOCKER_REGISTRY,
    &tools::SKOPEO,
    &tools::DEBOOTSTRAP,
    &tools::PROMETHEUS,
    &tools::KUBECTL,
    &tools::TRIVY,
    &tools::CARGO_DENY,
    &tools::GIT,
    &tools::PYTHON,
];

fn plan_tests(root: &Path, ws: &Workspace, run: &TestRun<'_>, facts: &TestFacts, env: &[(String, String)]) -> Plan {
    let TestFacts { nextest, compose_v2 } = *facts;
    let mut plan = Plan::new("test");
    // The fast tier leaves the end-to-end package out entirely: not even built.
    let exclude: Vec<String> = if !run.end_to_end() && ws.members.contains_key(E2E_PACKAGE) {
        vec!["--exclude".into(), E2E_PACKAGE.into()]
    } else {
        Vec::new()
    };
    let mut test = if nextest {
        // Build the whole workspace but run only the selection: service tests start other
        // services' binaries (the gateway's start the API), which must be current too.
        let mut args: Vec<String> = ["nextest", "run", "--workspace"].map(String::from).to_vec();
        args.extend(exclude);
        args.extend(["--locked", "--no-tests", "fail"].map(String::from));
        if !run.packages.is_empty() {
            let filter: Vec<String> = run.packages.iter().map(|p| format!("package({p})")).collect();
            args.extend(["-E".to_string(), filter.join(" | ")]);
        }
        if let Some(p) = run.partition {
            args.extend(["--partition".to_string(), p.to_string()]);
        }
        Step::cargo("test", "unit and integration tests (nextest)", args, root).requiring(&NEXTEST)
    } else {
        plan.notes.push(format!(
            "cargo-nextest not found: using `cargo test`; for the faster runner: {}",
            NEXTEST.install_hint
        ));
        if !run.packages.is_empty() {
            // Tests of one service start others' binaries: build them all, as nextest's
            // `--workspace` does.
            plan.push(Step::cargo(
                "test:build",
                "every binary the tests may start",
                ["build", "--workspace", "--bins", "--locked"],
                root,
            ));
        }
        let mut args = vec!["test".to_string()];
        args.extend(package_args(run.packages));
        if run.packages.is_empty() {
            args.extend(exclude);
        }
        args.push("--locked".into());
        Step::cargo("test", "unit, integration and doc tests (cargo test)", args, root)
    };
    if run.end_to_end() {
        for tool in E2E_TOOLS {
            test = test.requiring(tool);
        }
        if !compose_v2 {
            test = test.requiring(&tools::DOCKER_COMPOSE);
        }
    }
    for (key, value) in env {
        test = test.with_env(key, value);
    }
    // The raw command needs the test servers, which are gone by the time anyone reads this:
    // point people at the command that starts them again.
    plan.push(test.reproduced_by(&run.rerun()));
    if !nextest {
        return plan;
    }
    // nextest does not run doctests; run them for the selected libraries, once (not per shard).
    let libs: Vec<String> =
        ws.members.values().filter(|m| m.has_lib && run.includes(&m.name)).map(|m| m.name.clone()).collect();
    let first_shard = run.partition.is_none_or(|p| p.split(':').nth(1).is_some_and(|s| s.starts_with("1/")));
    if !libs.is_empty() && first_shard {
        let mut doc = vec!["test".to_string(), "--doc".into(), "--locked".into()];
        doc.extend(libs.iter().flat_map(|l| ["-p".to_string(), l.clone()]));
        plan.push(Step::cargo("test:doc", "documentation tests", doc, root).reproduced_by(&run.rerun()));
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
