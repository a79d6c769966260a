//! `cargo xtask workflows [--check]`: write the GitHub Actions workflows from Rust.
//!
//! - `.github/workflows/ci.yml`: one job per `cargo xtask ci` stage, each running the very
//!   command the stage runs locally; the test job uploads its JUnit report, the scan job its
//!   SARIF to code scanning.
//! - `.github/workflows/release.yml`: commit → staging → approved prod. On a push to main one
//!   job builds every image once and pushes it by digest with its SBOM and provenance; the
//!   release manifest (`images.json`) is the artifact every later job deploys from. Staging
//!   is deployed from it and verified against its SLOs; prod (GitHub environment
//!   `production`, whose required reviewers are the approval) gets exactly the digests staging
//!   runs, by `deploy promote --commit` of the commit being released, then is verified too.
//!   `workflow_dispatch` puts a chosen release of an environment back (`deploy rollback --to`).
//!
//! The workflows are generated, not hand-written, so what CI does is what `cargo xtask` does
//! locally. `--check` fails when a file has drifted (also a tidy test) and runs zizmor over
//! every workflow, failing on a finding of medium severity or above.
//!
//! What zizmor asks of a workflow is built into the renderer: every action pinned by commit SHA
//! (the version in a comment), `persist-credentials: false` on checkout, no permissions at the
//! top and the least per job, and no `${{ }}` expression inside a `run:` (values reach commands
//! through `env:`).

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;

use crate::Ctx;
use crate::commands::ci::STAGES;
use crate::plan::{Plan, Step};
use crate::tools::ZIZMOR;

pub const CI_WORKFLOW: &str = ".github/workflows/ci.yml";
pub const RELEASE_WORKFLOW: &str = ".github/workflows/release.yml";

/// What writes a workflow's text.
pub type Render = fn() -> String;

/// Every generated workflow: its path and what renders it.
pub const WORKFLOWS: &[(&str, Render)] =
    &[(CI_WORKFLOW, render_ci_workflow), (RELEASE_WORKFLOW, render_release_workflow)];

/// An action the workflows use, pinned by the commit its release tag points at.
pub struct Pinned {
    pub name: &'static str,
    pub sha: &'static str,
    pub version: &'static str,
}

impl Pinned {
    fn uses(&self) -> String {
        format!("{}@{} # {}", self.name, self.sha, self.version)
    }
}

/// Bump here (tag and the commit it points at, both from the action's releases page).
pub const CHECKOUT: Pinned =
    Pinned { name: "actions/checkout", sha: "8e8c483db84b4bee98b60c0593521ed34d9990e8", version: "v6.0.1" };
pub const CACHE: Pinned =
    Pinned { name: "actions/cache", sha: "9255dc7a253b0ccc959486e2bca901246202afeb", version: "v5.0.1" };
pub const UPLOAD_ARTIFACT: Pinned =
    Pinned { name: "actions/upload-artifact", sha: "b7c566a772e6b6bfb58ed0dc250532a479d7789f", version: "v6.0.0" };
pub const DOWNLOAD_ARTIFACT: Pinned =
    Pinned { name: "actions/download-artifact", sha: "37930b1c2abaa49bbe596cd826c3c89aef350131", version: "v7.0.0" };
pub const UPLOAD_SARIF: Pinned = Pinned {
    name: "github/codeql-action/upload-sarif",
    sha: "5d4e8d1aca955e8d8589aabd499c5cae939e33c7",
    version: "v4.31.9",
};

/// What a ci job hands to GitHub besides its exit code.
enum Report {
    /// A file kept as a workflow artifact (JUnit, for the test summary and later reading).
    Artifact { name: &'static str, path: &'static str },
    /// SARIF for code scanning (the job needs `security-events: write`).
    Sarif { path: &'static str, category: &'static str },
}

fn stage_reports(stage: &str) -> &'static [Report] {
    match stage {
        "test" => &[Report::Artifact { name: "junit", path: "target/nextest/ci/junit.xml" }],
        "scan" => &[Report::Sarif { path: "target/xtask/scan/report.sarif", category: "xtask-scan" }],
        _ => &[],
    }
}

/// A checkout that leaves no credentials behind for later steps.
fn checkout(y: &mut String) {
    let _ = write!(y, "      - uses: {}\n        with:\n          persist-credentials: false\n", CHECKOUT.uses());
}

/// The cargo cache of a job, keyed by what decides its contents.
fn cargo_cache(y: &mut String, name: &str) {
    let _ = write!(
        y,
        "      - uses: {cache}\n        with:\n          path: |\n            ~/.cargo/bin\n            ~/.cargo/registry/index\n            ~/.cargo/registry/cache\n            ~/.cargo/git/db\n            target\n          key: {name}-${{{{ runner.os }}}}-${{{{ hashFiles('Cargo.lock', 'xtask/tools.toml', 'rust-toolchain.toml') }}}}\n          restore-keys: {name}-${{{{ runner.os }}}}-\n",
        cache = CACHE.uses(),
    );
}

/// Regenerate the GitHub Actions workflow from the `ci` stages (or check it is up to date).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Fail if the checked-in workflow differs from what would be generated.
    #[arg(long)]
    pub check: bool,
}

pub fn render_ci_workflow() -> String {
    let mut y = String::new();
    y.push_str(
        "# Generated by `cargo xtask workflows`; do not edit by hand.\n\
         # One job per `cargo xtask ci` stage, each running the very command you run locally.\n\
         name: ci\n\
         on:\n  push:\n    branches: [main]\n  pull_request:\n\
         # Each job asks for what it needs; nothing is granted by default.\n\
         permissions: {}\n\
         concurrency:\n  group: ci-${{ github.ref }}\n  cancel-in-progress: true\n\
         env:\n  CARGO_TERM_COLOR: always\n  CARGO_INCREMENTAL: \"0\"\n  NEXTEST_PROFILE: ci\n\
         \x20 # Runners can download trivy's vulnerability DB: a scan without it fails here.\n\
         \x20 XTASK_REQUIRE_VULN_DB: \"true\"\n\
         jobs:\n",
    );
    for stage in STAGES {
        let reports = stage_reports(stage.name);
        let sarif = reports.iter().any(|r| matches!(r, Report::Sarif { .. }));
        let _ = write!(
            y,
            "  {name}:\n    name: {about}\n    runs-on: ubuntu-24.04\n    timeout-minutes: 30\n    permissions:\n      contents: read\n{extra}    steps:\n",
            name = stage.name,
            about = stage.about,
            extra = if sarif { "      security-events: write\n" } else { "" },
        );
        checkout(&mut y);
        cargo_cache(&mut y, stage.name);
        if stage.needs_setup {
            y.push_str("      - run: cargo xtask setup\n");
        }
        for command in stage.prepare {
            let _ = writeln!(y, "      - run: cargo xtask {command}");
        }
        let _ = writeln!(y, "      - run: cargo xtask {}", stage.command);
        for report in reports {
            match report {
                Report::Artifact { name, path } => {
                    let _ = write!(
                        y,
                        "      - if: ${{{{ !cancelled() }}}}\n        uses: {}\n        with:\n          name: {name}\n          path: {path}\n          if-no-files-found: error\n",
                        UPLOAD_ARTIFACT.uses()
                    );
                }
                Report::Sarif { path, category } => {
                    let _ = write!(
                        y,
                        "      - if: ${{{{ !cancelled() }}}}\n        uses: {}\n        with:\n          sarif_file: {path}\n          category: {category}\n",
                        UPLOAD_SARIF.uses()
                    );
                }
            }
        }
    }
    y
}

/// The release pipeline. Repository variables: `REGISTRY` (where images are pushed and
/// deploys pull from), `DEPLOY_TARGET` (`docker` or `k8s`). Repository secrets
/// `REGISTRY_USERNAME` and `REGISTRY_PASSWORD` (`image login` in every job, into an auth file
/// outside the checkout that skopeo and the docker CLI both read); per GitHub environment:
/// `DOCKER_HOST` (e.g. `ssh://deploy@host`), `POSTGRES_PASSWORD` and `ALERT_WEBHOOK_URL` (where
/// the environment's Alertmanager sends alerts).
pub fn render_release_workflow() -> String {
    let mut y = String::new();
    y.push_str(
        "# Generated by `cargo xtask workflows`; do not edit by hand.\n\
         # Commit -> staging -> approved prod: build and push once, deploy staging from the release\n\
         # manifest and verify it, then promote exactly the digests staging runs to prod once the\n\
         # `production` environment's reviewers approve, and verify again.\n\
         # Repository settings: the README, Release from GitHub Actions.\n\
         name: release\n\
         on:\n  push:\n    branches: [main]\n  workflow_dispatch:\n    inputs:\n\
         \x20     environment:\n        description: The environment to put a release back on\n        type: choice\n        options: [staging, prod]\n\
         \x20     release:\n        description: The release to put back (`cargo xtask deploy history --env ENV`)\n        type: number\n        required: true\n\
         permissions: {}\n\
         env:\n  CARGO_TERM_COLOR: always\n  CARGO_INCREMENTAL: \"0\"\n\
         \x20 REGISTRY: ${{ vars.REGISTRY }}\n  DEPLOY_TARGET: ${{ vars.DEPLOY_TARGET }}\n\
         \x20 # Registry credentials (`image login`) live outside the checkout, for skopeo and docker.\n\
         \x20 REGISTRY_AUTH_FILE: ${{ github.workspace }}/../registry-auth/config.json\n\
         \x20 DOCKER_CONFIG: ${{ github.workspace }}/../registry-auth\n\
         jobs:\n",
    );
    // Build once: the only job that compiles the services.
    y.push_str(
        "  build:\n    name: Build once, push by digest, attach SBOM and provenance\n    if: github.event_name == 'push'\n    runs-on: ubuntu-24.04\n    timeout-minutes: 45\n    permissions:\n      contents: read\n    steps:\n",
    );
    checkout(&mut y);
    cargo_cache(&mut y, "release-build");
    y.push_str("      - run: cargo xtask setup\n");
    registry_login(&mut y);
    y.push_str("      - run: cargo xtask image build --no-load --push \"$REGISTRY\"\n");
    let _ = write!(
        y,
        "      - uses: {}\n        with:\n          name: release-manifest\n          path: target/xtask/images.json\n          if-no-files-found: error\n",
        UPLOAD_ARTIFACT.uses()
    );
    for (job, env, github_env, needs) in
        [("staging", "staging", "staging", "build"), ("prod", "prod", "production", "staging")]
    {
        let _ = write!(
            y,
            "  {job}:\n    name: Deploy {env}, verify\n    needs: {needs}\n    runs-on: ubuntu-24.04\n    timeout-minutes: 30\n    environment: {github_env}\n    concurrency:\n      group: deploy-{env}\n      cancel-in-progress: false\n    permissions:\n      contents: read\n    env:\n      DOCKER_HOST: ${{{{ secrets.DOCKER_HOST }}}}\n      POSTGRES_PASSWORD: ${{{{ secrets.POSTGRES_PASSWORD }}}}\n      ALERT_WEBHOOK_URL: ${{{{ secrets.ALERT_WEBHOOK_URL }}}}\n    steps:\n"
        );
        checkout(&mut y);
        cargo_cache(&mut y, "release-deploy");
        registry_login(&mut y);
        deploy_access(&mut y, env);
        let _ = write!(
            y,
            "      - uses: {}\n        with:\n          name: release-manifest\n          path: target/release-manifest\n",
            DOWNLOAD_ARTIFACT.uses()
        );
        if env == "staging" {
            y.push_str(
                "      - run: cargo xtask deploy --target \"$DEPLOY_TARGET\" --env staging --images target/release-manifest/images.json --yes --no-verify\n",
            );
        } else {
            y.push_str(
                "      - run: cargo xtask deploy promote --target \"$DEPLOY_TARGET\" --from staging --to prod --commit \"$GITHUB_SHA\" --yes --confirm prod --no-verify\n",
            );
        }
        let _ = writeln!(y, "      - run: cargo xtask deploy verify --target \"$DEPLOY_TARGET\" --env {env}");
    }
    y.push_str(
        "  put-back:\n    name: Put a release back\n    if: github.event_name == 'workflow_dispatch'\n    runs-on: ubuntu-24.04\n    timeout-minutes: 30\n    environment: ${{ inputs.environment == 'prod' && 'production' || 'staging' }}\n    concurrency:\n      group: deploy-${{ inputs.environment }}\n      cancel-in-progress: false\n    permissions:\n      contents: read\n    env:\n      DOCKER_HOST: ${{ secrets.DOCKER_HOST }}\n      POSTGRES_PASSWORD: ${{ secrets.POSTGRES_PASSWORD }}\n      ALERT_WEBHOOK_URL: ${{ secrets.ALERT_WEBHOOK_URL }}\n      ENVIRONMENT: ${{ inputs.environment }}\n      RELEASE: ${{ inputs.release }}\n    steps:\n",
    );
    checkout(&mut y);
    cargo_cache(&mut y, "release-deploy");
    registry_login(&mut y);
    deploy_access(&mut y, "\"$ENVIRONMENT\"");
    y.push_str("      - run: cargo xtask deploy rollback --target \"$DEPLOY_TARGET\" --env \"$ENVIRONMENT\" --to \"$RELEASE\"\n");
    y
}

/// `image login` to the release registry, its secrets given to that one step only.
fn registry_login(y: &mut String) {
    y.push_str(
        "      - run: cargo xtask image login --registry \"$REGISTRY\"\n        env:\n          REGISTRY_USERNAME: ${{ secrets.REGISTRY_USERNAME }}\n          REGISTRY_PASSWORD: ${{ secrets.REGISTRY_PASSWORD }}\n",
    );
}

/// `deploy access`: the environment's ssh key and known hosts (a Docker host over ssh) or its
/// kubeconfig (a cluster), from that environment's secrets, for this step alone.
fn deploy_access(y: &mut String, env: &str) {
    let _ = write!(
        y,
        "      - run: cargo xtask deploy access --target \"$DEPLOY_TARGET\" --env {env}\n        env:\n          DEPLOY_SSH_KEY: ${{{{ secrets.DEPLOY_SSH_KEY }}}}\n          DEPLOY_SSH_KNOWN_HOSTS: ${{{{ secrets.DEPLOY_SSH_KNOWN_HOSTS }}}}\n          KUBECONFIG_DATA: ${{{{ secrets.KUBECONFIG_DATA }}}}\n"
    );
}

/// Every workflow as `cargo xtask workflows` renders it: (path, content).
fn rendered() -> Vec<crate::generated::Rendered> {
    WORKFLOWS.iter().map(|(path, render)| (path.to_string(), render())).collect()
}

/// `workflows --check` (a `ci` stage): the workflow is current, and zizmor finds nothing of
/// medium severity or above in any workflow (offline: no GitHub API calls).
pub fn check_plan(ctx: &Ctx) -> Plan {
    let mut plan = Plan::new("workflows --check");
    plan.push(Step::internal(
        "workflows:current",
        "the workflows are what xtask renders",
        crate::generated::Current {
            task: "workflow-current",
            regenerate: "cargo xtask workflows",
            root: ctx.root.clone(),
            files: rendered(),
        },
        "cargo xtask workflows --check",
    ));
    plan.push(
        Step::exec(
            "workflows:zizmor",
            "zizmor: no finding of medium severity or above",
            "zizmor",
            ["--offline", "--no-progress", "--min-severity", "medium", ".github/workflows"],
            &ctx.root,
        )
        .requiring(&ZIZMOR)
        .reproduced_by("zizmor --offline --min-severity medium .github/workflows"),
    );
    plan
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<ExitCode> {
    if args.check {
        return ctx.execute(&check_plan(ctx));
    }
    crate::generated::write(ctx, &rendered(), "workflows")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What zizmor checks, held by the renderer itself (zizmor runs on the result in `--check`).
    #[test]
    fn the_rendered_workflow_pins_actions_and_grants_nothing_by_default() {
        let y = render_ci_workflow();
        assert!(y.contains("\npermissions: {}\n"), "no default permissions");
        let uses: Vec<&str> = y.lines().filter_map(|l| l.trim().strip_prefix("- uses: ")).collect();
        assert!(!uses.is_empty());
        for u in &uses {
            let (action, rest) = u.split_once('@').expect("action@ref");
            let (sha, comment) = rest.split_once(" # ").unwrap_or_else(|| panic!("{u}: no version comment"));
            assert!(sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{action}: not pinned by SHA");
            assert!(comment.starts_with('v'), "{u}");
        }
        let jobs = y.matches("\n    runs-on: ").count();
        assert_eq!(y.matches("\n    permissions:\n      contents: read\n").count(), jobs, "each job reads only");
        assert_eq!(y.matches("persist-credentials: false").count(), y.matches(CHECKOUT.name).count());
        assert!(!y.lines().any(|l| l.contains("run:") && l.contains("${{")), "no expression in a run:");
    }

    /// Every generated workflow pins its actions and lets no expression into a `run:`.
    #[test]
    fn every_workflow_pins_actions_and_keeps_expressions_out_of_run() {
        for (path, render) in WORKFLOWS {
            let y = render();
            assert!(y.contains("\npermissions: {}\n"), "{path}: no default permissions");
            for u in y.lines().filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix("uses: ")) {
                let (_, rest) = u.split_once('@').expect("action@ref");
                let (sha, _) = rest.split_once(" # v").unwrap_or_else(|| panic!("{path}: {u}: no version comment"));
                assert!(sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{path}: {u}");
            }
            assert!(!y.lines().any(|l| l.contains("run:") && l.contains("${{")), "{path}: expression in a run:");
            let jobs = y.matches("\n    runs-on: ").count();
            assert_eq!(y.matches("\n    permissions:\n      contents: read\n").count(), jobs, "{path}");
        }
    }

    /// One job of a rendered workflow: its lines under `  name:`, up to the next job.
    fn job(y: &str, name: &str) -> String {
        let header = format!("  {name}:");
        let mut lines = y.lines().skip_while(|l| *l != header);
        assert!(lines.next().is_some(), "no job {name}");
        lines.take_while(|l| l.starts_with("    ")).map(|l| format!("{l}\n")).collect()
    }

    fn runs(job: &str) -> Vec<&str> {
        job.lines().filter_map(|l| l.trim().strip_prefix("- run: ")).collect()
    }

    /// Build once, then staging, then prod behind its environment's approval, by promotion.
    #[test]
    fn the_release_workflow_builds_once_then_promotes_what_staging_verified() {
        let y = render_release_workflow();
        let (build, staging, prod, put_back) =
            (job(&y, "build"), job(&y, "staging"), job(&y, "prod"), job(&y, "put-back"));
        let (build, staging, prod, put_back) = (build.as_str(), staging.as_str(), prod.as_str(), put_back.as_str());
        assert!(staging.contains("    needs: build\n") && staging.contains("    environment: staging\n"));
        assert!(prod.contains("    needs: staging\n"));
        assert!(prod.contains("    environment: production\n"), "its required reviewers are the approval");
        assert!(
            prod.contains("      group: deploy-prod\n      cancel-in-progress: false\n"),
            "never cancelled halfway"
        );
        let compiles = |job: &str| runs(job).iter().any(|r| r.contains("image build"));
        assert!(compiles(build) && !compiles(staging) && !compiles(prod), "images are built once");
        assert!(build.contains("name: release-manifest") && staging.contains("name: release-manifest"));
        // Every job logs in to the registry first, its secrets given to that step alone.
        for job in [build, staging, prod, put_back] {
            let steps = runs(job);
            let login = steps.iter().position(|r| *r == "cargo xtask image login --registry \"$REGISTRY\"");
            let first_use = steps
                .iter()
                .position(|r| r.contains("image build") || (r.contains("deploy") && !r.contains("deploy access")));
            assert!(login.is_some() && login < first_use, "{job}");
            assert!(job.contains("          REGISTRY_PASSWORD: ${{ secrets.REGISTRY_PASSWORD }}\n"), "{job}");
        }
        assert!(y.contains("\n  REGISTRY_AUTH_FILE: ") && y.contains("\n  DOCKER_CONFIG: "), "one auth file for both");
        // Deploy jobs set up their access from the environment's secrets, before deploying.
        for (job, env) in [(staging, "staging"), (prod, "prod"), (put_back, "\"$ENVIRONMENT\"")] {
            assert_eq!(
                runs(job)[1],
                format!("cargo xtask deploy access --target \"$DEPLOY_TARGET\" --env {env}"),
                "{job}"
            );
            assert!(job.contains("          DEPLOY_SSH_KEY: ${{ secrets.DEPLOY_SSH_KEY }}\n"), "{job}");
        }
        assert!(runs(staging)[2].contains("--images target/release-manifest/images.json"), "{staging}");
        assert!(runs(prod)[2].starts_with(
            "cargo xtask deploy promote --target \"$DEPLOY_TARGET\" --from staging --to prod --commit \"$GITHUB_SHA\""
        ));
        for job in [staging, prod] {
            assert!(runs(job).last().expect("steps").starts_with("cargo xtask deploy verify"), "{job}");
        }
        assert!(runs(put_back)[2].contains("deploy rollback") && runs(put_back)[2].contains("--to \"$RELEASE\""));
        assert!(put_back.contains("if: github.event_name == 'workflow_dispatch'"));
        assert!(build.contains("if: github.event_name == 'push'"));
    }

    #[test]
    fn check_compares_then_runs_zizmor_offline_at_medium() {
        let plan = check_plan(&crate::test_ctx());
        let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["workflows:current", "workflows:zizmor"]);
        let zizmor = plan.steps[1].command_line();
        assert!(zizmor.contains("--offline") && zizmor.contains("--min-severity medium"), "{zizmor}");
        assert!(plan.steps[1].requires.iter().any(|t| t.name == "zizmor"), "installed on first use");
    }
}
