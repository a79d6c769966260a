//! What xtask hands the deployer besides its flags: the facts xtask owns (the services declared
//! in `[package.metadata.service]`, the git revision, which compose program this machine has,
//! the policy checker it built), so the deployer reads no Cargo metadata and runs no git.
//! xtask writes them as JSON next to the deploy's work directory; the deployer reads them back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Where the repository keeps what the deployer deploys.
pub const OVERLAYS_DIR: &str = "infra/k8s/overlays";
pub const COMPOSE_DIR: &str = "infra/compose";
pub const COMPOSE_ENV_DIR: &str = "infra/compose/env";
/// Each environment's SLOs (`ENV.toml`), what `deploy verify` holds a release to.
pub const SLO_DIR: &str = "infra/slo";
/// Load-test scenarios: `cargo xtask loadtest NAME`, and the one `deploy verify` drives.
pub const SCENARIO_DIR: &str = "infra/loadtest";

/// A scenario file from a path (as given, or under `root`) or a name under `SCENARIO_DIR`,
/// listing the scenarios there are when it is neither. The path returned does not depend on
/// the current directory (loadgen runs from the workspace root).
pub fn scenario_path(root: &Path, given: &str) -> Result<PathBuf, crate::UsageError> {
    for candidate in [PathBuf::from(given), root.join(given)] {
        if candidate.is_file() {
            return std::path::absolute(&candidate).map_err(|e| crate::UsageError(format!("{given}: {e}")));
        }
    }
    let named = root.join(SCENARIO_DIR).join(format!("{}.toml", given.trim_end_matches(".toml")));
    if named.is_file() {
        return Ok(named);
    }
    let mut known: Vec<String> = std::fs::read_dir(root.join(SCENARIO_DIR))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".toml")).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    known.sort();
    Err(crate::UsageError(format!(
        "no scenario `{given}`: not a file, and not one of {SCENARIO_DIR}/ ({})",
        known.join(", ")
    )))
}

/// The Kubernetes environments: the overlays under `root`'s infra/k8s/overlays, sorted.
pub fn overlays(root: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(root.join(OVERLAYS_DIR))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("kustomization.yaml").is_file())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Where a deploy goes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// A Kubernetes cluster through kubectl (the current context).
    #[default]
    K8s,
    /// A Docker host (`DOCKER_HOST`, else the local engine): health-gated replace of the
    /// compose project described by infra/compose/env/ENV.env.
    Docker,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::K8s => "k8s",
            Target::Docker => "docker",
        }
    }
}

/// What every change to an environment takes: where it goes, the confirmation, how long to wait.
/// Flattened into the deploy and promote flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ApplyArgs {
    #[arg(long, value_enum, default_value_t = Target::K8s)]
    pub target: Target,
    /// Go ahead without asking (prod also needs `--confirm prod`, or typing it on a terminal).
    #[arg(long)]
    pub yes: bool,
    /// The name of the environment deployed to, again, for prod without a terminal.
    #[arg(long, value_name = "ENV")]
    pub confirm: Option<String>,
    /// How long to wait for every rollout (docker: for each container to turn healthy), e.g.
    /// `5m`, `90s` (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = crate::duration::flag)]
    pub timeout: Duration,
    #[command(flatten)]
    pub verify: VerifyFlags,
    /// How many releases the environment keeps in its history (for `deploy rollback --to`).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub history_limit: u32,
    /// The kube context to use (k8s); it must be the one the environment names. Default: the
    /// current context, refused unless it is that one.
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
}

/// How a deploy verifies what it deployed (`infra/slo/ENV.toml`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VerifyFlags {
    /// Do not run the environment's SLO verification after the deploy (run `deploy verify` later).
    #[arg(long)]
    pub no_verify: bool,
    /// The verification window, instead of the SLO file's `verify.window`.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::flag)]
    pub window: Option<Duration>,
}

impl VerifyFlags {
    fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.no_verify {
            out.push("--no-verify".to_string());
        }
        if let Some(w) = self.window {
            out.extend(["--window".to_string(), duration_arg(w)]);
        }
        out
    }
}

impl ApplyArgs {
    /// The flags again, for the deployer's command line.
    fn to_args(&self) -> Vec<String> {
        let mut out = vec!["--target".to_string(), self.target.name().to_string()];
        if self.yes {
            out.push("--yes".into());
        }
        if let Some(confirm) = &self.confirm {
            out.extend(["--confirm".to_string(), confirm.clone()]);
        }
        out.extend(["--timeout".to_string(), duration_arg(self.timeout)]);
        out.extend(self.verify.to_args());
        out.extend(["--history-limit".to_string(), self.history_limit.to_string()]);
        if let Some(context) = &self.context {
            out.extend(["--context".to_string(), context.clone()]);
        }
        out
    }
}

/// The flags of a deploy, shared by `cargo xtask deploy` and the deployer it hands them to.
#[derive(clap::Args, Debug, Clone)]
pub struct DeployArgs {
    /// The environment (an overlay under infra/k8s/overlays, or infra/compose/env/ENV.env).
    #[arg(long, value_name = "ENV", required = true)]
    pub env: Option<String>,
    #[command(flatten)]
    pub apply: ApplyArgs,
    /// The build manifest to pin images from: a file, or an http(s) URL it is served at
    /// (default: target/xtask/images.json).
    #[arg(long, value_name = "FILE|URL", conflicts_with = "registry")]
    pub images: Option<PathBuf>,
    /// No build manifest: deploy what REGISTRY holds for this commit (each service's image
    /// tagged with the checkout's commit, resolved to its digest there).
    #[arg(long, value_name = "REGISTRY")]
    pub registry: Option<String>,
}

/// The flags of `deploy rollback` and `deploy status`.
#[derive(clap::Args, Debug, Clone)]
pub struct EnvArgs {
    /// The environment (an overlay under infra/k8s/overlays, or infra/compose/env/ENV.env).
    #[arg(long, value_name = "ENV")]
    pub env: String,
    #[arg(long, value_enum, default_value_t = Target::K8s)]
    pub target: Target,
    /// How long to wait for every rollout (docker: for each container to turn healthy), e.g.
    /// `5m`, `90s` (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = crate::duration::flag)]
    pub timeout: Duration,
    /// The kube context to use (k8s); it must be the one the environment names. Default: the
    /// current context, refused unless it is that one.
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
}

/// The flags of `deploy rollback`.
#[derive(clap::Args, Debug, Clone)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// The release to put back (see `deploy history`); default: the newest earlier one that did
    /// not fail verification.
    #[arg(long, value_name = "RELEASE")]
    pub to: Option<u64>,
}

impl RollbackArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut out = self.env.to_args();
        if let Some(to) = self.to {
            out.extend(["--to".to_string(), to.to_string()]);
        }
        out
    }
}

/// The flags of `deploy verify`.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// The verification window, instead of the SLO file's `verify.window`.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::flag)]
    pub window: Option<Duration>,
    /// On a breach, report it (exit 1) but leave the release running.
    #[arg(long)]
    pub no_rollback: bool,
}

impl VerifyArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut out = self.env.to_args();
        if let Some(w) = self.window {
            out.extend(["--window".to_string(), duration_arg(w)]);
        }
        if self.no_rollback {
            out.push("--no-rollback".into());
        }
        out
    }
}

/// The flags of `deploy unlock`.
#[derive(clap::Args, Debug, Clone)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// Delete the lock even though a deploy may hold it (without it: say who holds it, exit 2).
    #[arg(long)]
    pub force: bool,
}

impl UnlockArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut out = self.env.to_args();
        if self.force {
            out.push("--force".into());
        }
        out
    }
}

/// The flags of `deploy restore`.
#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// The backup to restore (see `deploy backups`).
    #[arg(long, value_name = "ID")]
    pub backup: String,
    /// Restore without asking (prod also needs `--confirm prod` when there is no terminal).
    #[arg(long)]
    pub yes: bool,
    /// The environment's name again: what restoring a guarded environment without a terminal needs.
    #[arg(long, value_name = "ENV")]
    pub confirm: Option<String>,
}

impl RestoreArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut out = self.env.to_args();
        out.extend(["--backup".to_string(), self.backup.clone()]);
        if self.yes {
            out.push("--yes".into());
        }
        if let Some(c) = &self.confirm {
            out.extend(["--confirm".to_string(), c.clone()]);
        }
        out
    }
}

/// The flags of `deploy promote`: what one environment runs, to another.
#[derive(clap::Args, Debug, Clone)]
pub struct PromoteArgs {
    /// The environment whose release is promoted (it must run one, healthy).
    #[arg(long, value_name = "ENV")]
    pub from: String,
    /// The environment it goes to.
    #[arg(long, value_name = "ENV")]
    pub to: String,
    /// The commit being promoted: refuse unless `--from` runs it (a prefix of the full SHA is enough).
    #[arg(long, value_name = "SHA")]
    pub commit: Option<String>,
    #[command(flatten)]
    pub apply: ApplyArgs,
}

impl PromoteArgs {
    /// The flags again, for the deployer's command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec!["--from".into(), self.from.clone(), "--to".into(), self.to.clone()];
        if let Some(commit) = &self.commit {
            out.extend(["--commit".to_string(), commit.clone()]);
        }
        out.extend(self.apply.to_args());
        out
    }

    /// The deploy of `--to` it amounts to (its images come from `--from`, not a manifest).
    pub fn deploy(&self) -> DeployArgs {
        DeployArgs { env: Some(self.to.clone()), apply: self.apply.clone(), images: None, registry: None }
    }
}

/// A duration as the flag grammar reads it back, to the millisecond.
fn duration_arg(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

impl DeployArgs {
    /// The flags again, for the deployer's command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(env) = &self.env {
            out.extend(["--env".to_string(), env.clone()]);
        }
        out.extend(self.apply.to_args());
        if let Some(images) = &self.images {
            out.extend(["--images".to_string(), images.display().to_string()]);
        }
        if let Some(registry) = &self.registry {
            out.extend(["--registry".to_string(), registry.clone()]);
        }
        out
    }
}

impl EnvArgs {
    /// The flags again, for the deployer's command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec![
            "--env".into(),
            self.env.clone(),
            "--target".into(),
            self.target.name().into(),
            "--timeout".into(),
            duration_arg(self.timeout),
        ];
        if let Some(context) = &self.context {
            out.extend(["--context".to_string(), context.clone()]);
        }
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// The port it serves HTTP on inside its container or pod.
    pub port: u16,
    /// Its readiness path (`/ready`).
    pub ready: String,
    /// What its metadata says it needs (`postgres`, `redis`, other services).
    #[serde(default)]
    pub needs: Vec<String>,
}

/// `k8s-policy check` arguments saying what each service needs (rule `needs-egress`).
pub fn needs_args(services: &[Service]) -> Vec<String> {
    services.iter().flat_map(|s| ["--needs".to_string(), format!("{}={}", s.name, s.needs.join(","))]).collect()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployFacts {
    /// The repository root: overlays, compose files and environments are read from here.
    pub root: PathBuf,
    /// The workspace's target directory: work directories and renders go under it.
    pub target_dir: PathBuf,
    pub services: Vec<Service>,
    /// The commit deployed (`unknown` outside a git checkout).
    pub revision: String,
    /// The build manifest to pin images from.
    pub images: PathBuf,
    /// `docker compose` or `docker-compose`, as found on this machine (Docker target only).
    pub compose: Option<Vec<String>>,
    /// The manifest policy checker (tools/k8s-policy), built (Kubernetes target only).
    pub policy: Option<PathBuf>,
    /// The load generator (tools/loadgen), built when the environment has SLOs to verify.
    #[serde(default)]
    pub loadgen: Option<PathBuf>,
}

impl DeployFacts {
    pub fn read(path: &Path) -> Result<DeployFacts> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a deploy facts file (written by `cargo xtask deploy`)", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Where deploys of `env` work (renders, the lock, rollback specs).
    pub fn work_home(&self, env: &str) -> PathBuf {
        self.target_dir.join("xtask/deploy").join(env)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Deploy {
        #[command(flatten)]
        args: DeployArgs,
    }

    #[derive(Parser)]
    struct Promote {
        #[command(flatten)]
        args: PromoteArgs,
    }

    #[derive(Parser)]
    struct Rollback {
        #[command(flatten)]
        args: RollbackArgs,
    }

    #[derive(Parser)]
    struct Verify {
        #[command(flatten)]
        args: VerifyArgs,
    }

    #[derive(Parser)]
    struct Env {
        #[command(flatten)]
        args: EnvArgs,
    }

    #[test]
    fn flags_handed_on_parse_back_to_the_same_flags() {
        for line in [
            &["--env", "prod", "--target", "docker", "--yes", "--confirm", "prod", "--timeout", "1m30s"][..],
            &["--env", "dev", "--timeout", "1500ms", "--images", "/tmp/images.json"],
            &["--env", "staging"],
            &["--env", "staging", "--no-verify", "--history-limit", "3"],
            &["--env", "staging", "--window", "30s"],
        ] {
            let first = Deploy::try_parse_from(std::iter::once("x").chain(line.iter().copied())).expect("parses").args;
            let again =
                Deploy::try_parse_from(std::iter::once("x".to_string()).chain(first.to_args())).expect("parses");
            assert_eq!(format!("{:?}", again.args), format!("{first:?}"), "{line:?}");
        }
        let first = Promote::try_parse_from(["x", "--from", "staging", "--to", "prod", "--commit", "abc", "--yes"])
            .expect("parses")
            .args;
        let again = Promote::try_parse_from(std::iter::once("x".to_string()).chain(first.to_args())).expect("parses");
        assert_eq!(format!("{:?}", again.args), format!("{first:?}"));
        assert_eq!(first.deploy().env.as_deref(), Some("prod"));
        let first =
            Rollback::try_parse_from(["x", "--env", "prod", "--target", "docker", "--to", "4"]).expect("parses").args;
        let again = Rollback::try_parse_from(std::iter::once("x".to_string()).chain(first.to_args())).expect("parses");
        assert_eq!(format!("{:?}", again.args), format!("{first:?}"));
        let first =
            Verify::try_parse_from(["x", "--env", "staging", "--window", "15s", "--no-rollback"]).expect("parses").args;
        let again = Verify::try_parse_from(std::iter::once("x".to_string()).chain(first.to_args())).expect("parses");
        assert_eq!(format!("{:?}", again.args), format!("{first:?}"));
        let first =
            Env::try_parse_from(["x", "--env", "prod", "--target", "docker", "--timeout", "90"]).expect("parses").args;
        let again = Env::try_parse_from(std::iter::once("x".to_string()).chain(first.to_args())).expect("parses");
        assert_eq!(format!("{:?}", again.args), format!("{first:?}"));
    }

    #[test]
    fn facts_survive_the_trip_through_their_file() {
        let dir = std::env::temp_dir().join(format!("xtask-kit-facts-{}", std::process::id()));
        let facts = DeployFacts {
            root: "/repo".into(),
            target_dir: "/repo/target".into(),
            services: vec![Service {
                name: "api".into(),
                port: 8080,
                ready: "/ready".into(),
                needs: vec!["postgres".into()],
            }],
            revision: "abc".into(),
            images: "/repo/target/xtask/images.json".into(),
            compose: Some(vec!["docker-compose".into()]),
            policy: None,
            loadgen: Some("/repo/target/release/loadgen".into()),
        };
        let file = dir.join("facts.json");
        facts.write(&file).expect("write");
        assert_eq!(DeployFacts::read(&file).expect("read"), facts);
        std::fs::write(&file, "{}").expect("write");
        assert!(format!("{:#}", DeployFacts::read(&file).expect_err("not facts")).contains("not a deploy facts file"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
