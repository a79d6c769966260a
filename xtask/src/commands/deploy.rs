//! `cargo xtask deploy --env ENV [--target k8s|docker]`, `deploy rollback`, `deploy status`:
//! xtask gathers the facts it owns (the services of `[package.metadata.service]`, the git
//! revision, the compose program, the default build manifest), builds the deployer
//! (`tools/deployer`) and the manifest policy checker, and hands the terminal to the deployer,
//! which shows the plan, asks at one point, applies, verifies and rolls back (see its docs).
//!
//! The global `--dry-run` and `--format json` are passed on: a deploy's dry run is the
//! deployer's (it renders, validates and diffs against the cluster or the Docker host), so it
//! runs rather than printing xtask's two-step plan.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;
pub use xtask_kit::handoff::{
    DeployArgs, EnvArgs, PromoteArgs, RestoreArgs, RollbackArgs, Target, UnlockArgs, VerifyArgs,
};
use xtask_kit::handoff::{DeployFacts, SLO_DIR, Service};

use crate::commands::image;
use crate::plan::{Plan, Step, Task};
use crate::runner::Format;
use crate::tools::{DOCKER, KUBECTL, SKOPEO};
use crate::{Ctx, DryRun};

/// Deploy an environment (render, pin by digest, validate, diff, apply, verify; roll back on failure).
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub deploy: DeployArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Action {
    /// Deploy to `--to` exactly the digests `--from` runs (read from that environment: the
    /// release the cluster keeps, the containers' labels), refused when `--from` runs nothing,
    /// failed its verification, is unhealthy, or runs another commit than `--commit`.
    Promote(PromoteArgs),
    /// Put an earlier release back (`--to RELEASE`, else the last good one) and wait for it.
    Rollback(RollbackArgs),
    /// Hold what runs to the environment's SLOs (infra/slo/ENV.toml) under its verification
    /// load, read from Prometheus; on a breach roll back and exit 1 naming it.
    Verify(VerifyArgs),
    /// Delete a Kubernetes environment's deploy lock left by a deploy that is gone (`--force`).
    Unlock(UnlockArgs),
    /// What a CI runner needs to reach the environment, from secrets in its environment: the ssh
    /// key and known hosts of a `DOCKER_HOST=ssh://` host, or a cluster's kubeconfig.
    Access(EnvArgs),
    /// The environment's last releases, newest first, with what verification said of each.
    History(EnvArgs),
    /// What runs where: deployments, images and digests, ready replicas, the current release.
    Status(EnvArgs),
    /// Back the environment's Postgres up now: `pg_dump` in its container, kept with its
    /// checksum (Docker target; `DEPLOY_BACKUP=before-deploy` does it before every deploy).
    Backup(EnvArgs),
    /// The environment's backups, newest first.
    Backups(EnvArgs),
    /// Restore the environment's Postgres from `--backup ID`, its checksum checked first (prod:
    /// `--yes --confirm prod`).
    Restore(RestoreArgs),
}

/// Writes the facts file the deployer reads (`--facts`).
#[derive(Clone, Debug, Serialize)]
pub struct WriteFacts {
    pub path: PathBuf,
    pub facts: DeployFacts,
}

impl Task for WriteFacts {
    fn summary(&self) -> String {
        format!("write the services, revision and tools the deployer needs to {}", self.path.display())
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("deploy-facts", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        self.facts.write(&self.path)?;
        writeln!(log, "wrote {}", self.path.display())?;
        Ok(())
    }
}

/// The deployer binary cargo builds (debug: it shares the build `cargo xtask test` makes).
fn binary(ctx: &Ctx, name: &str) -> PathBuf {
    crate::target_dir(&ctx.root).join("debug").join(name)
}

/// Build the deployer (and, for Kubernetes, the policy checker), write the facts, hand off.
/// The workspace's services as the deployer and the manifest checker are told of them.
pub fn handoff_services(ws: &crate::workspace::Workspace) -> Vec<Service> {
    ws.services()
        .map(|(name, meta)| Service {
            name: name.clone(),
            port: meta.port,
            ready: meta.ready.clone(),
            needs: meta.needs.clone(),
        })
        .collect()
}

pub fn plan(ctx: &Ctx, args: &Args) -> Result<Plan> {
    let (verb, env, target, flags) = match &args.action {
        None => {
            let env = args.deploy.env.clone().expect("clap requires --env");
            ("deploy", env, args.deploy.apply.target, args.deploy.to_args())
        }
        Some(Action::Promote(a)) => ("promote", a.to.clone(), a.apply.target, a.to_args()),
        Some(Action::Rollback(a)) => ("rollback", a.env.env.clone(), a.env.target, a.to_args()),
        Some(Action::Verify(a)) => ("verify", a.env.env.clone(), a.env.target, a.to_args()),
        Some(Action::Unlock(a)) => ("unlock", a.env.env.clone(), a.env.target, a.to_args()),
        Some(Action::Access(a)) => ("access", a.env.clone(), a.target, a.to_args()),
        Some(Action::History(a)) => ("history", a.env.clone(), a.target, a.to_args()),
        Some(Action::Status(a)) => ("status", a.env.clone(), a.target, a.to_args()),
        Some(Action::Backup(a)) => ("backup", a.env.clone(), a.target, a.to_args()),
        Some(Action::Backups(a)) => ("backups", a.env.clone(), a.target, a.to_args()),
        Some(Action::Restore(a)) => ("restore", a.env.env.clone(), a.env.target, a.to_args()),
    };
    // The load generator drives verification (either target): needed when it will run.
    let verifies = match &args.action {
        None => !args.deploy.apply.verify.no_verify,
        Some(Action::Promote(a)) => !a.apply.verify.no_verify,
        Some(Action::Verify(_)) => true,
        _ => false,
    } && ctx.root.join(SLO_DIR).join(format!("{env}.toml")).is_file();
    let ws = ctx.workspace()?;
    if target == Target::K8s {
        let mut envs = vec![env.clone()];
        if let Some(Action::Promote(a)) = &args.action {
            envs.push(a.from.clone());
        }
        crate::commands::k8s::resolve_envs(&ctx.root, &envs)?;
    }
    let facts = DeployFacts {
        root: ctx.root.clone(),
        target_dir: ws.target_dir.clone(),
        services: handoff_services(&ws),
        revision: image::Revision::of(&ctx.root).map_or_else(|_| "unknown".to_string(), |r| r.sha),
        images: image::manifest_path(&ws),
        compose: match target {
            Target::Docker => Some(crate::commands::dev::compose_program()?),
            Target::K8s => None,
        },
        policy: (target == Target::K8s).then(|| binary(ctx, "k8s-policy")),
        loadgen: verifies.then(|| crate::commands::loadtest::loadgen_binary(ctx)),
    };
    let mut build = vec!["build", "--locked", "--quiet", "-p", "deployer"];
    if target == Target::K8s {
        build.extend(["-p", "k8s-policy"]);
    }
    let facts_path = facts.work_home(&env).join(format!("facts-{verb}.json"));
    let mut deployer = vec![verb.to_string()];
    deployer.extend(flags);
    deployer.extend(["--facts".to_string(), facts_path.display().to_string()]);
    if ctx.dry_run {
        deployer.insert(0, "--dry-run".into());
    }
    if ctx.ui.format == Format::Json {
        deployer.splice(0..0, ["--format".to_string(), "json".to_string()]);
    }
    let mut plan = Plan::new(&format!("deploy {verb}"));
    plan.push(Step::cargo("deploy:build", "build the deployer", build, &ctx.root));
    if verifies {
        plan.push(crate::commands::loadtest::build_loadgen(
            ctx,
            "deploy:loadgen",
            "build the load generator that drives verification",
        ));
    }
    plan.push(Step::internal(
        "deploy:facts",
        "what the deployer needs to know from the workspace",
        WriteFacts { path: facts_path, facts },
        "cargo xtask deploy --help",
    ));
    let run = Step::exec(
        &format!("deploy:{verb}"),
        &format!("{verb} {env} ({})", target.name()),
        &binary(ctx, "deployer").display().to_string(),
        &deployer,
        &ctx.root,
    );
    let run = match target {
        Target::K8s => run.requiring(&KUBECTL),
        Target::Docker => run.requiring(&DOCKER),
    };
    // `--registry`: the deployer resolves each image's digest there with skopeo.
    let from_registry = args.action.is_none() && args.deploy.registry.is_some();
    plan.push(if from_registry { run.requiring(&SKOPEO) } else { run });
    Ok(plan)
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<ExitCode> {
    ctx.hand_off(&plan(ctx, args)?, DryRun::PassedOn)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(line: &[&str]) -> Args {
        match crate::Cli::try_parse_from(["xtask", "deploy"].iter().chain(line)).expect("parses").command {
            crate::Command::Deploy(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deploy_builds_the_deployer_writes_the_facts_and_hands_off_with_every_flag() {
        let ctx = Ctx { dry_run: false, ..crate::test_ctx() };
        let plan =
            plan(&ctx, &args(&["--env", "prod", "--yes", "--confirm", "prod", "--timeout", "2m", "--no-verify"]))
                .expect("plan");
        let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["deploy:build", "deploy:facts", "deploy:deploy"]);
        assert!(
            plan.steps[0].command_line().ends_with("-p deployer -p k8s-policy"),
            "{}",
            plan.steps[0].command_line()
        );
        let run = plan.steps[2].command_line();
        assert!(
            run.contains(
                "/debug/deployer deploy --env prod --target k8s --yes --confirm prod --timeout 120s --no-verify"
            ) && run.contains(" --history-limit 10 "),
            "{run}"
        );
        let crate::plan::Action::Internal(facts) = &plan.steps[1].action else { panic!("a task") };
        let facts = facts.describe();
        assert_eq!(facts["facts"]["services"].as_array().map(Vec::len), Some(3), "{facts}");
        assert!(facts["facts"]["policy"].as_str().is_some_and(|p| p.ends_with("k8s-policy")), "{facts}");
        assert!(facts["facts"]["compose"].is_null(), "Kubernetes needs no compose");
    }

    #[test]
    fn a_deploy_with_slos_builds_the_load_generator_that_verifies_it() {
        let ctx = crate::test_ctx();
        let names = |line: &[&str]| -> Vec<String> {
            plan(&ctx, &args(line)).expect("plan").steps.iter().map(|s| s.name.clone()).collect()
        };
        let facts = |line: &[&str]| -> serde_json::Value {
            let plan = plan(&ctx, &args(line)).expect("plan");
            let step = plan.steps.iter().find(|s| s.name == "deploy:facts").expect("facts step");
            let crate::plan::Action::Internal(task) = &step.action else { panic!("a task") };
            task.describe()
        };
        let verified = ["--env", "staging", "--target", "docker"];
        assert_eq!(names(&verified), ["deploy:build", "deploy:loadgen", "deploy:facts", "deploy:deploy"]);
        assert!(facts(&verified)["facts"]["loadgen"].as_str().is_some_and(|p| p.ends_with("release/loadgen")));
        let unverified = ["--env", "staging", "--target", "docker", "--no-verify"];
        assert_eq!(names(&unverified), ["deploy:build", "deploy:facts", "deploy:deploy"]);
        assert!(facts(&unverified)["facts"]["loadgen"].is_null());
        assert_eq!(
            names(&["verify", "--env", "staging", "--target", "docker"]),
            ["deploy:build", "deploy:loadgen", "deploy:facts", "deploy:verify"]
        );
        assert_eq!(names(&["history", "--env", "staging", "--target", "docker"]).len(), 3);
        // A cluster's release is verified the same way.
        assert_eq!(names(&["--env", "staging", "--target", "k8s"]), names(&verified));
        assert_eq!(names(&["--env", "staging", "--target", "k8s", "--no-verify"]), names(&unverified));
    }

    #[test]
    fn dry_run_and_json_are_the_deployers_to_honour() {
        let ctx = Ctx { ui: crate::runner::Ui { format: Format::Json, ..crate::test_ctx().ui }, ..crate::test_ctx() };
        let plan = plan(&ctx, &args(&["status", "--env", "dev"])).expect("plan");
        let run = plan.steps.last().expect("steps").command_line();
        assert!(run.contains("/debug/deployer --format json --dry-run status --env dev --target k8s"), "{run}");
    }

    #[test]
    fn an_unknown_overlay_is_refused_before_anything_is_built() {
        let err = plan(&crate::test_ctx(), &args(&["--env", "nope"])).expect_err("unknown");
        assert!(err.downcast_ref::<crate::UsageError>().is_some(), "{err}");
    }
}
