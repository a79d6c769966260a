//! `cargo xtask loadtest [SCENARIO] [--service NAME | --url URL] [--baseline FILE]`: build the
//! load generator (release), aim it at a dev-stack service or a URL, and gate on the scenario's SLOs.
//!
//! xtask stays thin: the generator is `tools/loadgen`, built in release and handed off to with
//! the terminal, so its live progress and its exit code (0 pass, 1 SLO breached, 2 configuration
//! error, 3 invalid run, 130 interrupted) reach the user unchanged.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::commands::dev;
use crate::plan::{Plan, Step, Task};
use crate::{Ctx, DryRun, UsageError};

/// Load-test a dev-stack service or a URL with a scenario from infra/loadtest, gated on its SLOs.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Scenario: a file, or a name under infra/loadtest (`jobs` = infra/loadtest/jobs.toml).
    /// Defaults to `smoke` when only a service or URL is given.
    pub scenario: Option<String>,
    /// Aim at this dev-stack service's published port on 127.0.0.1 (see `cargo xtask dev urls`).
    #[arg(long, value_name = "NAME", conflicts_with = "url")]
    pub service: Option<String>,
    /// Aim at this base URL instead of the scenario's (loopback only unless `-- --allow-remote`).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A previous report.json for `baseline.` SLOs.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// More loadgen flags, e.g. `-- --rps 500 --duration 30s --cores 1`.
    #[arg(last = true, value_name = "LOADGEN_ARGS")]
    pub extra: Vec<String>,
}

/// Finds the scenario file from a path or a name, listing what exists when it is neither.
pub fn scenario_path(root: &Path, given: &str) -> Result<PathBuf> {
    Ok(xtask_kit::handoff::scenario_path(root, given)?)
}

/// The dev stack's URL for a service, from infra/compose/.env like `dev urls`.
fn service_url(root: &Path, service: &str) -> Result<String> {
    let ports = dev::published(&crate::workspace::Workspace::load(root)?);
    let values = dev::env_values(root, &ports)?;
    let Some(dev::Published { var, default, .. }) = ports.iter().find(|p| p.service == service) else {
        let http: Vec<&str> = ports.iter().map(|p| p.service.as_str()).filter(|s| !dev::NOT_HTTP.contains(s)).collect();
        return Err(UsageError(format!(
            "unknown service `{service}`; the dev stack serves HTTP on: {}",
            http.join(", ")
        ))
        .into());
    };
    if dev::NOT_HTTP.contains(&service) {
        return Err(
            UsageError(format!("`{service}` does not speak HTTP; load-test a service that uses it instead")).into()
        );
    }
    let port = match values.get(var) {
        Some(v) => v
            .parse::<u16>()
            .map_err(|_| UsageError(format!("{var}={v} is not a port number; fix it in {}/.env", dev::COMPOSE_DIR)))?,
        None => *default,
    };
    Ok(format!("http://127.0.0.1:{port}"))
}

pub fn loadgen_binary(ctx: &Ctx) -> PathBuf {
    crate::target_dir(&ctx.root).join("release/loadgen")
}

/// The release build of the load generator that `loadgen_binary` names.
pub fn build_loadgen(ctx: &Ctx, name: &str, summary: &str) -> Step {
    Step::cargo(name, summary, ["build", "--release", "--locked", "-p", "loadgen"], &ctx.root)
}

pub fn plan(ctx: &Ctx, args: &Args) -> Result<Plan> {
    let name = args.scenario.clone().unwrap_or_else(|| "smoke".into());
    let scenario = scenario_path(&ctx.root, &name)?;
    let stem = scenario.file_stem().map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
    let out = crate::target_dir(&ctx.root).join("xtask/loadtest").join(&stem);
    let mut run_args: Vec<String> = vec!["run".into(), scenario.display().to_string()];
    let url = match (&args.service, &args.url) {
        (Some(service), _) => Some(service_url(&ctx.root, service)?),
        (None, Some(url)) => Some(url.clone()),
        (None, None) => None,
    };
    if let Some(url) = url {
        run_args.extend(["--url".into(), url]);
    }
    if let Some(baseline) = &args.baseline {
        if !baseline.is_file() {
            return Err(UsageError(format!(
                "--baseline {}: no such report; pass a report.json from an earlier run",
                baseline.display()
            ))
            .into());
        }
        run_args.extend(["--baseline".into(), std::path::absolute(baseline)?.display().to_string()]);
    }
    run_args.extend(["--out".into(), out.display().to_string()]);
    run_args.extend(args.extra.iter().cloned());

    let mut plan = Plan::new("loadtest");
    plan.push(build_loadgen(ctx, "loadtest:build", "build the load generator (release)"));
    plan.push(Step::internal(
        "loadtest:keep-previous",
        "keep the last report as the baseline to compare with",
        KeepPrevious { out: out.clone() },
        &format!("cargo xtask loadtest {stem}"),
    ));
    plan.push(Step::exec(
        "loadtest:run",
        &format!("run scenario `{stem}`"),
        &loadgen_binary(ctx).display().to_string(),
        &run_args,
        &ctx.root,
    ));
    Ok(plan)
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<ExitCode> {
    // Hand the terminal over: progress, Ctrl-C and the exit code are loadgen's.
    ctx.hand_off(&plan(ctx, args)?, DryRun::ShowPlan)
}

/// Keeps the last run's report as `previous.json`: a ready-made baseline for the next comparison.
#[derive(Clone, Debug, Serialize)]
pub struct KeepPrevious {
    pub out: PathBuf,
}

impl Task for KeepPrevious {
    fn summary(&self) -> String {
        format!("mv {0}/report.json {0}/previous.json (if there is one)", self.out.display())
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("keep-previous-report", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        let last = self.out.join("report.json");
        if last.is_file() {
            std::fs::rename(&last, self.out.join("previous.json"))
                .with_context(|| format!("keeping {} as previous.json", last.display()))?;
            writeln!(log, "kept the last report as {}/previous.json", self.out.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(scenario: Option<&str>) -> Args {
        Args { scenario: scenario.map(str::to_string), service: None, url: None, baseline: None, extra: Vec::new() }
    }

    #[test]
    fn the_plan_builds_loadgen_then_runs_the_scenario() {
        let ctx = crate::test_ctx();
        let plan = plan(
            &ctx,
            &Args { service: Some("api".into()), extra: vec!["--cores".into(), "1".into()], ..args(Some("jobs")) },
        )
        .expect("plan");
        assert_eq!(plan.steps.len(), 3);
        assert_eq!(plan.steps[1].name, "loadtest:keep-previous", "before the run that writes a new report");
        let run = plan.steps[2].command_line();
        assert!(run.contains("release/loadgen run"), "{run}");
        assert!(run.contains("infra/loadtest/jobs.toml"), "{run}");
        assert!(run.contains("--url http://127.0.0.1:"), "{run}");
        assert!(run.contains("xtask/loadtest/jobs"), "{run}");
        assert!(run.ends_with("--cores 1"), "{run}");
    }

    #[test]
    fn unknown_scenarios_and_services_are_usage_errors() {
        let ctx = crate::test_ctx();
        let err = plan(&ctx, &args(Some("nope"))).expect_err("unknown");
        assert!(err.downcast_ref::<UsageError>().is_some());
        assert!(err.to_string().contains("jobs, rollout, smoke"), "{err}");
        let err = plan(&ctx, &Args { service: Some("gatewy".into()), ..args(None) }).expect_err("unknown");
        assert!(err.to_string().contains("unknown service `gatewy`"), "{err}");
        let err = plan(&ctx, &Args { service: Some("redis".into()), ..args(None) }).expect_err("not http");
        assert!(err.to_string().contains("does not speak HTTP"), "{err}");
    }
}
