//! `cargo xtask ci`: every check CI runs, locally, in one go, with one table at the end.
//!
//! Each stage is exactly a granular command (`cargo xtask lint`, ...), and the GitHub workflow
//! has one job per stage running that same command, so local and CI results cannot drift
//! (a tidy test enforces it). The secret scan needs no target dir and runs beside the cargo stages.

use std::path::PathBuf;

use anyhow::Result;

use crate::commands::{alerts, build, deny, fmt, image, k8s, lint, migrations, scan, secrets, test, workflows};
use crate::plan::Plan;
use crate::tools::{DOCKER, KUBECTL, TRIVY, Tool};
use crate::{Ctx, UsageError, affected};

/// One stage of `ci` and the granular command that is its CI job.
pub struct Stage {
    pub name: &'static str,
    /// Arguments after `cargo xtask`.
    pub command: &'static str,
    pub about: &'static str,
    /// The job runs `cargo xtask setup` first (its step needs a pinned tool).
    pub needs_setup: bool,
    /// Commands (after `cargo xtask`) the job runs first because a fresh runner lacks their
    /// output; locally the earlier stage already made it (the scan needs the images).
    pub prepare: &'static [&'static str],
}

pub const STAGES: &[Stage] = &[
    Stage { name: "secrets", command: "secrets", about: "Secret scan", needs_setup: true, prepare: &[] },
    Stage { name: "fmt", command: "fmt --check", about: "Formatting", needs_setup: false, prepare: &[] },
    Stage { name: "lint", command: "lint", about: "Clippy", needs_setup: false, prepare: &[] },
    Stage {
        name: "workflows",
        command: "workflows --check",
        about: "Workflows (generated, zizmor)",
        needs_setup: true,
        prepare: &[],
    },
    Stage {
        name: "migrations",
        command: "migrations check",
        about: "Migrations (expand/contract)",
        needs_setup: false,
        prepare: &[],
    },
    Stage {
        name: "test",
        command: "test --e2e",
        about: "Tests (fast and end-to-end tiers)",
        needs_setup: true,
        prepare: &[],
    },
    Stage { name: "deny", command: "deny", about: "Dependency policy (cargo-deny)", needs_setup: true, prepare: &[] },
    Stage { name: "build", command: "build --release", about: "Release build", needs_setup: false, prepare: &[] },
    Stage {
        name: "k8s",
        command: "k8s validate",
        about: "Kubernetes manifests (schema, policy)",
        needs_setup: false,
        prepare: &[],
    },
    Stage {
        name: "alerts",
        command: "alerts --check",
        about: "Alert rules (generated from the SLOs, promtool)",
        needs_setup: true,
        prepare: &[],
    },
    Stage { name: "image", command: "image build", about: "Container images", needs_setup: true, prepare: &[] },
    // deny and secrets are stages of their own; the scan adds trivy's scans, SBOMs and the gate.
    Stage {
        name: "scan",
        command: "scan --skip deny --skip secrets",
        about: "Security scan (trivy, SBOMs)",
        needs_setup: true,
        prepare: &["image build --no-load"],
    },
];

/// Run what CI runs: secrets, fmt --check, lint, the workflows' check, migrations, test, deny, a release build, the Kubernetes
/// manifests' checks, the alert rules, images and the scan.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Lint and test only the packages affected by changes since --base (and what depends on them).
    #[arg(long)]
    pub changed: bool,
    /// Where the change starts: the merge-base of HEAD and this ref (default: origin/main, else main).
    #[arg(long, value_name = "REF", requires = "changed")]
    pub base: Option<String>,
    /// Leave out a stage (repeatable), e.g. `--skip test` when tests ran in another job.
    #[arg(long, value_name = "STAGE")]
    pub skip: Vec<String>,
    /// Check advisories against this local advisory-db copy instead of fetching it.
    #[arg(long, value_name = "PATH", env = "XTASK_ADVISORY_DB")]
    pub advisory_db: Option<PathBuf>,
}

/// Tools a stage's steps cannot run without.
fn stage_tools(stage: &str) -> &'static [&'static Tool] {
    match stage {
        "k8s" => &[&KUBECTL],
        "image" => &[&DOCKER],
        "scan" => &[&DOCKER, &TRIVY],
        _ => &[],
    }
}

/// Outside CI, a stage whose tool is missing is left out with this note. Under CI it never is:
/// the stage stays in the plan and its steps, which `require` the tool, fail with the install hint.
fn missing_tool_note(stage: &str, ci: bool, found: impl Fn(&Tool) -> bool) -> Option<String> {
    if ci {
        return None;
    }
    let tool = stage_tools(stage).iter().find(|t| !found(t))?;
    Some(format!("stage {stage} skipped: {} not found ({})", tool.name, tool.install_hint))
}

pub fn default_base(ctx: &Ctx) -> String {
    if let Ok(base) = std::env::var("GITHUB_BASE_REF")
        && !base.is_empty()
    {
        return format!("origin/{base}");
    }
    let exists = |r: &str| crate::git::git(&ctx.root, &["rev-parse", "--verify", "--quiet", r]).is_ok();
    if exists("origin/main") { "origin/main".into() } else { "main".into() }
}

pub fn plan(ctx: &Ctx, args: &Args) -> Result<Plan> {
    for skip in &args.skip {
        if !STAGES.iter().any(|s| s.name == skip) {
            let names: Vec<_> = STAGES.iter().map(|s| s.name).collect();
            return Err(UsageError(format!("--skip {skip}: no such stage (stages: {})", names.join(", "))).into());
        }
    }
    let ws = ctx.workspace()?;
    let mut plan = Plan::new("ci");
    let mut packages: Vec<String> = Vec::new();
    let mut nothing_affected = false;
    if args.changed {
        let base = args.base.clone().unwrap_or_else(|| default_base(ctx));
        let files = crate::git::changed_files(&ctx.root, &base)?;
        let affected = affected::compute(&ws, &files);
        plan.notes.push(format!("--changed: {} file(s) changed since merge-base with {base}", files.len()));
        plan.notes.extend(affected.explain());
        if affected.everything_because.is_none() {
            packages = affected.names();
            nothing_affected = packages.is_empty();
        }
    }
    let skipped = |name: &str| args.skip.iter().any(|s| s == name);

    for stage in STAGES {
        if skipped(stage.name) {
            plan.notes.push(format!("stage {} skipped (--skip)", stage.name));
            continue;
        }
        if let Some(note) = missing_tool_note(stage.name, crate::in_ci(), |t| ctx.will_have(t)) {
            plan.notes.push(note);
            continue;
        }
        let part = match stage.name {
            "secrets" => {
                let mut p = Plan::new("secrets");
                p.push(secrets::ci_step(ctx));
                p
            }
            "fmt" => fmt::plan(ctx, &fmt::Args { check: true }),
            "lint" if nothing_affected => continue,
            "lint" => lint::plan(ctx, &packages),
            "workflows" => workflows::check_plan(ctx),
            "test" if nothing_affected => continue,
            "test" => {
                let run = test::TestRun { packages: &packages, partition: None, e2e: true };
                test::plan_for(ctx, &ws, &run, &test::TestFacts::gather(ctx, true))?
            }
            "deny" => deny::plan(ctx, &deny::Args { advisory_db: args.advisory_db.clone(), ..deny::Args::default() })?,
            "build" => build::plan(ctx, &ws, &build::Args { release: true, ..build::Args::default() })?,
            "k8s" => k8s::validate_plan(ctx, &k8s::ValidateArgs::default())?,
            "alerts" => alerts::check_plan(ctx)?,
            "migrations" => migrations::check_plan(ctx, &migrations::CheckArgs::default())?,
            "image" => image::plan(
                ctx,
                &ws,
                &image::BuildArgs { changed: args.changed, base: args.base.clone(), ..Default::default() },
            )?,
            "scan" => scan::plan(
                ctx,
                &scan::Args {
                    skip: vec![scan::Scan::Deny, scan::Scan::Secrets],
                    advisory_db: args.advisory_db.clone(),
                    require_vuln_db: crate::env_flag("XTASK_REQUIRE_VULN_DB"),
                    ..Default::default()
                },
            )?,
            other => unreachable!("stage {other} has no plan"),
        };
        plan.extend(part);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_leaves_a_stage_out_only_outside_ci() {
        let nothing = |_: &Tool| false;
        for stage in ["k8s", "image", "scan"] {
            let note = missing_tool_note(stage, false, nothing);
            assert!(
                note.as_deref().is_some_and(|n| n.contains("not found") && n.contains("install")),
                "{stage}: {note:?}"
            );
            assert_eq!(missing_tool_note(stage, true, nothing), None, "under CI `{stage}` stays in and fails loudly");
        }
        assert_eq!(missing_tool_note("lint", false, nothing), None);
        let only_docker = |t: &Tool| t.name == DOCKER.name;
        assert!(missing_tool_note("scan", false, only_docker).is_some_and(|n| n.contains("trivy")));
        // What fails under CI: the stage's steps require the tool.
        let k8s = k8s::validate_plan(&crate::test_ctx(), &k8s::ValidateArgs::default()).expect("plan");
        let renders: Vec<_> = k8s.steps.iter().filter(|s| s.name.starts_with("k8s:render:")).collect();
        assert!(!renders.is_empty());
        assert!(renders.iter().all(|s| s.requires.iter().any(|t| t.name == KUBECTL.name)));
    }
}
