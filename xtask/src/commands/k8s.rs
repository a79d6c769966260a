//! `cargo xtask k8s validate [--env ENV]`: render every kustomize overlay with kubectl and check
//! the renders offline (Kubernetes API types with unknown fields reported, and our deploy
//! policy) before anything could reach a cluster. Part of `ci`; deploy runs the same checks.
//!
//! The checking lives in `tools/k8s-policy` (it needs the Kubernetes API types, too heavy for
//! xtask's own build); xtask renders and hands off.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::commands::scan::{Capture, capture_step};
use crate::plan::{Plan, Step};
use crate::tools::KUBECTL;
use crate::{Ctx, UsageError};

pub use xtask_kit::handoff::{OVERLAYS_DIR, overlays};

/// Kubernetes manifests: offline validation of the rendered overlays.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Action {
    /// Render each overlay and check it against the pinned API types and the deploy policy.
    Validate(ValidateArgs),
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ValidateArgs {
    /// Only this environment (repeatable; default: every overlay under infra/k8s/overlays).
    #[arg(long = "env", value_name = "ENV")]
    pub envs: Vec<String>,
}

/// The environments asked for, checked against the overlays that exist.
pub fn resolve_envs(repo: &Path, asked: &[String]) -> Result<Vec<String>> {
    let known = overlays(repo);
    if asked.is_empty() {
        return Ok(known);
    }
    for env in asked {
        if !known.contains(env) {
            return Err(UsageError(format!(
                "--env {env}: no overlay {OVERLAYS_DIR}/{env} (environments: {})",
                known.join(", ")
            ))
            .into());
        }
    }
    Ok(asked.to_vec())
}

/// A step rendering one overlay to `to` with `kubectl kustomize`.
pub fn render_step(repo: &Path, name: &str, env: &str, to: &Path) -> Step {
    let line = format!("kubectl kustomize {OVERLAYS_DIR}/{env}");
    capture_step(
        name,
        &line,
        Capture {
            program: "kubectl".into(),
            args: vec!["kustomize".into(), repo.join(OVERLAYS_DIR).join(env).display().to_string()],
            cwd: repo.to_path_buf(),
            stdout_to: Some(to.to_path_buf()),
            stderr_to: None,
            accept: vec![0],
        },
        &line,
        &[&KUBECTL],
    )
}

/// The k8s-policy invocation over renders (`env`, file), optionally requiring pinned digests,
/// told what each service needs.
pub fn policy_step(ctx: &Ctx, name: &str, renders: &[(String, PathBuf)], require_digests: bool) -> Result<Step> {
    let services = crate::commands::deploy::handoff_services(&ctx.workspace()?);
    let mut args: Vec<String> =
        ["run", "--locked", "--quiet", "-p", "k8s-policy", "--", "check"].map(String::from).to_vec();
    for (env, file) in renders {
        args.push("--env".into());
        args.push(format!("{env}={}", file.display()));
    }
    args.extend(xtask_kit::handoff::needs_args(&services));
    if require_digests {
        args.push("--require-digests".into());
    }
    Ok(Step::cargo(name, "schema (Kubernetes 1.33 types) and policy checks", args, &ctx.root))
}

pub fn validate_plan(ctx: &Ctx, args: &ValidateArgs) -> Result<Plan> {
    let envs = resolve_envs(&ctx.root, &args.envs)?;
    let mut plan = Plan::new("k8s validate");
    if envs.is_empty() {
        plan.notes.push(format!("no overlays under {OVERLAYS_DIR}: nothing to validate"));
        return Ok(plan);
    }
    let dir = crate::target_dir(&ctx.root).join("xtask/k8s/rendered");
    let mut renders = Vec::new();
    for env in &envs {
        let file = dir.join(format!("{env}.yaml"));
        plan.push(render_step(&ctx.root, &format!("k8s:render:{env}"), env, &file));
        renders.push((env.clone(), file));
    }
    plan.push(policy_step(ctx, "k8s:policy", &renders, false)?);
    Ok(plan)
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<std::process::ExitCode> {
    match &args.action {
        Action::Validate(v) => ctx.execute(&validate_plan(ctx, v)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_renders_every_overlay_then_checks_them_together() {
        let plan = validate_plan(&crate::test_ctx(), &ValidateArgs::default()).expect("plan");
        let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["k8s:render:dev", "k8s:render:prod", "k8s:render:staging", "k8s:policy"]);
        let check = plan.steps[3].command_line();
        assert!(check.contains("-p k8s-policy -- check --env dev="), "{check}");
        assert!(check.contains("--env prod=") && check.contains("rendered/prod.yaml"), "{check}");
        assert!(!check.contains("--require-digests"), "{check}");
        // What each service needs, from its metadata, for rule `needs-egress`.
        assert!(check.contains("--needs api=postgres,redis") && check.contains("--needs gateway=api"), "{check}");
    }

    #[test]
    fn an_unknown_environment_is_a_usage_error() {
        let err = validate_plan(&crate::test_ctx(), &ValidateArgs { envs: vec!["qa".into()] }).expect_err("unknown");
        assert!(err.downcast_ref::<UsageError>().is_some());
        assert!(err.to_string().contains("environments: dev, prod, staging"), "{err}");
    }
}
