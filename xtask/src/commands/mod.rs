//! One module per subcommand; each builds a plan (or does its one job) for `main` to execute.

pub mod alerts;
pub mod attest;
pub mod build;
pub mod ci;
pub mod deny;
pub mod deploy;
pub mod dev;
pub mod doctor;
pub mod fmt;
pub mod image;
pub mod k8s;
pub mod lint;
pub mod loadtest;
pub mod migrations;
pub mod scan;
pub mod secrets;
pub mod setup;
pub mod test;
pub mod test_deps;
pub mod workflows;

use std::process::ExitCode;

use anyhow::Result;

use crate::workspace::Workspace;
use crate::{Command, Ctx, UsageError};

/// Commands (or modes of them) that cannot print JSON yet, and why: they are rejected with exit
/// 2 under `--format json` instead of printing text a script would choke on. The one place this
/// is decided.
fn json_unsupported(command: &Command, dry_run: bool) -> Option<&'static str> {
    match command {
        Command::Deploy(args) if matches!(args.action, Some(deploy::Action::Rollback(_))) => {
            Some("deploy rollback reports its progress as text")
        }
        Command::Loadtest(_) if !dry_run => {
            Some("the load generator owns the terminal; its JSON report is target/xtask/loadtest/report.json")
        }
        Command::Dev(dev::Args { command: dev::DevCommand::Logs(_), .. }) => {
            Some("dev logs streams the containers' logs")
        }
        _ => None,
    }
}

pub fn dispatch(ctx: &Ctx, command: Command) -> Result<ExitCode> {
    if ctx.ui.format == crate::runner::Format::Json
        && let Some(why) = json_unsupported(&command, ctx.dry_run)
    {
        return Err(UsageError(format!("--format json is not supported here ({why}); use --format human")).into());
    }
    match command {
        Command::Fmt(args) => ctx.execute(&fmt::plan(ctx, &args)),
        Command::Lint(args) => ctx.execute(&lint::plan(ctx, &args.selection.resolve(&ctx.workspace()?)?)),
        Command::Test(args) => ctx.execute(&test::plan(ctx, &ctx.workspace()?, &args)?),
        Command::Build(args) => ctx.execute(&build::plan(ctx, &ctx.workspace()?, &args)?),
        Command::Image(args) => image::run(ctx, &args),
        Command::Scan(args) => scan::run(ctx, &args),
        Command::Dev(args) => dev::run(ctx, &args),
        Command::Loadtest(args) => loadtest::run(ctx, &args),
        Command::K8s(args) => k8s::run(ctx, &args),
        Command::Deploy(args) => deploy::run(ctx, &args),
        Command::Deny(args) => ctx.execute(&deny::plan(ctx, &args)?),
        Command::Secrets(args) => secrets::run(ctx, &args),
        Command::Doctor(args) => doctor::run(ctx, &args),
        Command::Setup(args) => ctx.execute(&setup::plan(ctx, &args)?),
        Command::Workflows(args) => workflows::run(ctx, &args),
        Command::Alerts(args) => alerts::run(ctx, &args),
        Command::Migrations(args) => migrations::run(ctx, &args),
        Command::Ci(args) => ctx.execute(&ci::plan(ctx, &args)?),
    }
}

/// `--package` / `--service` selection shared by the cargo commands. Empty means the whole workspace.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Selection {
    /// Only this workspace member (repeatable).
    #[arg(short, long = "package", value_name = "NAME")]
    pub packages: Vec<String>,
    /// Only this service's package (repeatable); see `[package.metadata.service]`.
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,
}

impl Selection {
    /// Validate the names against the workspace and return cargo `-p` values (empty = all).
    pub fn resolve(&self, ws: &Workspace) -> Result<Vec<String>> {
        let mut names = ws.require_services(&self.services)?;
        for p in &self.packages {
            if !ws.members.contains_key(p) {
                let known: Vec<_> = ws.members.keys().map(String::as_str).collect();
                return Err(
                    UsageError(format!("unknown package '{p}' (workspace members: {})", known.join(", "))).into()
                );
            }
            names.push(p.clone());
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// `-p a -p b`, or `--workspace` when nothing was selected.
pub fn package_args(packages: &[String]) -> Vec<String> {
    if packages.is_empty() {
        return vec!["--workspace".to_string()];
    }
    packages.iter().flat_map(|p| ["-p".to_string(), p.clone()]).collect()
}

#[cfg(test)]
mod plan_tests {
    //! Plan building for each subcommand: what `--dry-run` would print, checked as data.

    use super::*;
    use crate::plan::{Action, Lane, Plan};

    fn argv(plan: &Plan, step: &str) -> Vec<String> {
        let step = plan.steps.iter().find(|s| s.name == step).unwrap_or_else(|| panic!("no step {step} in {plan:?}"));
        match &step.action {
            Action::Exec { args, .. } => args.clone(),
            Action::Internal(task) => vec![task.summary()],
        }
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.name.as_str()).collect()
    }

    fn usage_error(result: Result<Plan>) -> String {
        let err = result.expect_err("should be rejected");
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err:#} should be a usage error (exit 2)");
        format!("{err:#}")
    }

    #[test]
    fn fmt_checks_or_rewrites() {
        let ctx = crate::test_ctx();
        let check = fmt::plan(&ctx, &fmt::Args { check: true });
        assert_eq!(argv(&check, "fmt"), ["fmt", "--all", "--", "--check"]);
        assert_eq!(check.steps[0].reproduce, "cargo fmt --all -- --check");
        assert_eq!(check.steps[0].requires.iter().map(|t| t.name).collect::<Vec<_>>(), ["cargo", "rustfmt"]);
        assert_eq!(argv(&fmt::plan(&ctx, &fmt::Args { check: false }), "fmt"), ["fmt", "--all"]);
    }

    #[test]
    fn lint_denies_warnings_on_all_targets_of_the_selection() {
        let ctx = crate::test_ctx();
        let all = lint::plan(&ctx, &[]);
        assert_eq!(argv(&all, "lint"), ["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]);
        let some = lint::plan(&ctx, &["api".into(), "kit".into()]);
        assert_eq!(argv(&some, "lint")[..5], ["clippy", "-p", "api", "-p", "kit"]);
    }

    const NEXTEST: test::TestFacts = test::TestFacts { nextest: true, compose_v2: true };
    const NO_NEXTEST: test::TestFacts = test::TestFacts { nextest: false, compose_v2: true };

    fn tests_of(packages: &[String]) -> test::TestRun<'_> {
        test::TestRun { packages, ..Default::default() }
    }

    #[test]
    fn test_uses_nextest_plus_doctests_or_falls_back_to_cargo_test() {
        let ctx = crate::test_ctx();
        let ws = crate::fixture_workspace();
        let nextest = test::plan_for(&ctx, &ws, &tests_of(&[]), &NEXTEST).expect("plan");
        assert_eq!(names(&nextest), ["test", "test:doc"]);
        assert_eq!(argv(&nextest, "test")[..3], ["nextest", "run", "--workspace"]);
        let selection = ["api".to_string(), "kit".to_string()];
        let some = test::plan_for(&ctx, &ws, &tests_of(&selection), &NEXTEST).expect("plan");
        assert!(
            argv(&some, "test").ends_with(&["-E".into(), "package(api) | package(kit)".into()]),
            "{:?}",
            argv(&some, "test")
        );
        assert_eq!(
            argv(&nextest, "test:doc"),
            ["test", "--doc", "--locked", "-p", "kit", "-p", "testkit", "-p", "util"]
        );

        let api = ["api".to_string()];
        let fallback = test::plan_for(&ctx, &ws, &tests_of(&api), &NO_NEXTEST).expect("plan");
        assert_eq!(names(&fallback), ["test:build", "test"]);
        assert_eq!(argv(&fallback, "test"), ["test", "-p", "api", "--locked"]);
        assert!(fallback.notes[0].contains("cargo-nextest not found"), "the fallback is announced");
    }

    #[test]
    fn test_partitions_shard_nextest_and_run_doctests_once() {
        let ctx = crate::test_ctx();
        let ws = crate::fixture_workspace();
        let shard = |p| test::TestRun { partition: Some(p), ..Default::default() };
        let first = test::plan_for(&ctx, &ws, &shard("hash:1/2"), &NEXTEST).expect("plan");
        assert!(argv(&first, "test").ends_with(&["--partition".into(), "hash:1/2".into()]));
        assert_eq!(names(&first), ["test", "test:doc"]);
        let second = test::plan_for(&ctx, &ws, &shard("hash:2/2"), &NEXTEST).expect("plan");
        assert_eq!(names(&second), ["test"]);
        let msg = usage_error(test::plan_for(&ctx, &ws, &shard("hash:1/2"), &NO_NEXTEST));
        assert!(msg.contains("needs cargo-nextest"), "{msg}");
        usage_error(test::plan_for(&ctx, &ws, &shard("3/2"), &NEXTEST));
    }

    /// The fast tier leaves the end-to-end package out (not even built); `--e2e` adds it, with
    /// the tools it needs, the test servers and the xtask binary it drives.
    #[test]
    fn test_tiers_are_the_fast_tier_and_the_end_to_end_package() {
        let ctx = crate::test_ctx();
        let ws = ctx.workspace().expect("workspace");
        let fast = test::plan_for(&ctx, &ws, &test::TestRun::default(), &NEXTEST).expect("plan");
        assert_eq!(names(&fast), ["test:deps-up", "test", "test:doc", "test:deps-down"]);
        assert_eq!(argv(&fast, "test")[..5], ["nextest", "run", "--workspace", "--exclude", test::E2E_PACKAGE]);
        let step = fast.steps.iter().find(|s| s.name == "test").expect("test step");
        assert_eq!(step.reproduce, "cargo xtask test");
        assert!(!step.requires.iter().any(|t| t.name == "docker"), "the fast tier needs no Docker");
        assert!(!step.command_line().contains("XTASK_BIN"));

        let all = test::TestRun { e2e: true, ..Default::default() };
        let e2e = test::plan_for(&ctx, &ws, &all, &test::TestFacts { nextest: true, compose_v2: false }).expect("plan");
        assert_eq!(argv(&e2e, "test")[..4], ["nextest", "run", "--workspace", "--locked"]);
        let step = e2e.steps.iter().find(|s| s.name == "test").expect("test step");
        assert_eq!(step.reproduce, "cargo xtask test --e2e");
        let tools: Vec<_> = step.requires.iter().map(|t| t.name).collect();
        for tool in ["docker", "docker-compose", "kubectl", "trivy", "docker-registry"] {
            assert!(tools.contains(&tool), "{tool} missing from {tools:?}");
        }
        let line = step.command_line();
        assert!(line.contains("XTASK_BIN=") && line.contains("TEST_DATABASE_URL="), "{line}");

        // A selection with --e2e tests the selection: the e2e package (and its tools) only when named.
        let api = ["api".to_string()];
        let some = test::TestRun { packages: &api, e2e: true, ..Default::default() };
        let picked = test::plan_for(&ctx, &ws, &some, &NEXTEST).expect("plan");
        let step = picked.steps.iter().find(|s| s.name == "test").expect("test step");
        assert!(!step.requires.iter().any(|t| t.name == "docker"), "api's tests need no Docker");
        assert!(argv(&picked, "test").contains(&"--exclude".to_string()), "{:?}", argv(&picked, "test"));

        let only_e2e = ["e2e".to_string()];
        let picked = test::plan_for(&ctx, &ws, &tests_of(&only_e2e), &NEXTEST).expect("plan");
        assert!(!argv(&picked, "test").contains(&"--exclude".to_string()), "naming the package selects the tier");
        assert!(picked.steps.iter().any(|s| s.command_line().contains("XTASK_BIN=")));
    }

    /// Commands that cannot print JSON say so (exit 2) instead of printing text under
    /// `--format json`; the ones that can are let through.
    #[test]
    fn json_is_refused_only_where_it_cannot_be_honoured() {
        use clap::Parser;
        let command = |argv: &[&str]| {
            let cli = crate::Cli::try_parse_from(std::iter::once("xtask").chain(argv.iter().copied())).expect("valid");
            cli.command
        };
        assert!(json_unsupported(&command(&["deploy", "rollback", "--env", "dev"]), true).is_some());
        assert!(json_unsupported(&command(&["deploy", "--env", "dev"]), false).is_none(), "the plan is JSON");
        assert!(json_unsupported(&command(&["deploy", "status", "--env", "dev"]), false).is_none());
        assert!(json_unsupported(&command(&["dev", "logs"]), false).is_some());
        assert!(json_unsupported(&command(&["loadtest", "smoke"]), false).is_some());
        assert!(json_unsupported(&command(&["loadtest", "smoke"]), true).is_none(), "a dry run is a plan");
        for ok in [&["dev", "urls"][..], &["dev", "status"], &["workflows"], &["ci"], &["doctor"], &["scan"]] {
            assert!(json_unsupported(&command(ok), false).is_none(), "{ok:?}");
        }
    }

    #[test]
    fn build_release_is_locked() {
        let ctx = crate::test_ctx();
        let ws = crate::fixture_workspace();
        let plan = build::plan(&ctx, &ws, &build::Args { release: true, ..Default::default() }).expect("plan");
        assert_eq!(argv(&plan, "build"), ["build", "--workspace", "--locked", "--release"]);
    }

    #[test]
    fn selections_are_validated_against_the_workspace() {
        let ws = crate::fixture_workspace();
        let sel = Selection { packages: vec!["util".into()], services: vec!["api".into()] };
        assert_eq!(sel.resolve(&ws).expect("valid"), ["api", "util"]);
        let bad_service = Selection { services: vec!["kit".into()], ..Default::default() };
        let msg = format!("{:#}", bad_service.resolve(&ws).expect_err("kit is a library"));
        assert!(msg.contains("unknown service 'kit'") && msg.contains("api, gateway, worker"), "{msg}");
        let bad_package = Selection { packages: vec!["nope".into()], ..Default::default() };
        assert!(format!("{:#}", bad_package.resolve(&ws).expect_err("unknown")).contains("unknown package 'nope'"));
    }

    #[test]
    fn deny_online_is_one_cargo_deny_step() {
        let ctx = crate::test_ctx();
        let plan = deny::plan(&ctx, &deny::Args { online: true, ..Default::default() }).expect("plan");
        assert_eq!(names(&plan), ["deny"]);
        assert_eq!(
            argv(&plan, "deny"),
            [
                "deny",
                "--workspace",
                "--all-features",
                "check",
                "--show-stats",
                "advisories",
                "bans",
                "licenses",
                "sources"
            ]
        );
    }

    #[test]
    fn deny_offline_prepares_a_dated_checkout_then_runs_offline() {
        let ctx = crate::test_ctx();
        let db = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(db.path().join("crates")).expect("mkdir");
        let undated = deny::Args { advisory_db: Some(db.path().to_path_buf()), ..Default::default() };
        assert!(usage_error(deny::plan(&ctx, &undated)).contains("cannot tell how old"));
        std::fs::write(db.path().join("SNAPSHOT"), "source: github rustsec/advisory-db @ 0123456789ab (2026-01-02)\n")
            .expect("write");
        let args = deny::Args { advisory_db: Some(db.path().to_path_buf()), ..Default::default() };
        let plan = deny::plan(&ctx, &args).expect("plan");
        assert_eq!(names(&plan), ["deny:advisory-db", "deny:fetch", "deny"]);
        assert!(plan.notes.iter().any(|n| n.contains("0123456789ab dated 2026-01-02 is")), "{:?}", plan.notes);
        let deny_args = argv(&plan, "deny");
        assert_eq!(deny_args[..2], ["deny", "--offline"]);
        assert!(deny_args.iter().any(|a| a.ends_with("deny-offline.toml")));
        assert!(
            argv(&plan, "deny:advisory-db")[0].contains("advisory-db-3157b0e258782691"),
            "cargo-deny's directory name for the default URL"
        );

        let msg = usage_error(deny::plan(
            &ctx,
            &deny::Args { advisory_db: Some(db.path().join("nope")), ..Default::default() },
        ));
        assert!(msg.contains("not an advisory-db copy"), "{msg}");
    }

    #[test]
    fn ci_runs_every_stage_with_the_secret_scan_in_the_background() {
        let ctx = crate::test_ctx();
        let plan = ci::plan(&ctx, &ci::Args::default()).expect("plan");
        let stages: Vec<&str> = plan.steps.iter().map(|s| s.name.split(':').next().unwrap_or_default()).collect();
        for stage in ci::STAGES {
            assert!(stages.contains(&stage.name), "ci is missing stage {}", stage.name);
        }
        let secrets = plan.steps.iter().find(|s| s.name == "secrets").expect("secrets step");
        assert_eq!(secrets.lane, Lane::Background);
        assert_eq!(secrets.reproduce, "cargo xtask secrets");
        assert!(
            plan.steps.iter().filter(|s| s.name != "secrets").all(|s| s.lane == Lane::Serial),
            "cargo steps never overlap"
        );
        let text = plan.render_human();
        assert!(text.contains("$ cargo clippy --workspace --all-targets --locked -- -D warnings"), "{text}");
    }

    #[test]
    fn ci_skip_leaves_out_a_stage_and_rejects_unknown_ones() {
        let ctx = crate::test_ctx();
        let plan = ci::plan(&ctx, &ci::Args { skip: vec!["test".into()], ..Default::default() }).expect("plan");
        assert!(!plan.steps.iter().any(|s| s.name.starts_with("test")));
        assert!(plan.notes.iter().any(|n| n.contains("stage test skipped")));
        let msg = usage_error(ci::plan(&ctx, &ci::Args { skip: vec!["tests".into()], ..Default::default() }));
        assert!(msg.contains("no such stage") && msg.contains("test"), "{msg}");
    }

    #[test]
    fn image_build_links_statically_for_an_explicit_target_then_writes_loads_and_records() {
        let ctx = crate::test_ctx();
        let ws = ctx.workspace().expect("workspace");
        let args = image::BuildArgs { services: vec!["gateway".into()], ..Default::default() };
        let plan = image::plan(&ctx, &ws, &args).expect("plan");
        let compile = plan.steps.iter().find(|s| s.name == "image:compile").expect("compile step");
        let crate::plan::Action::Exec { args: cargo, env, .. } = &compile.action else { panic!("exec") };
        assert!(cargo.windows(2).any(|w| w == ["--target", image::TARGET]), "{cargo:?}");
        assert!(cargo.contains(&"--locked".to_string()));
        assert!(cargo.windows(2).any(|w| w == ["--profile", image::PROFILE]), "{cargo:?}");
        // Target-scoped, so build scripts and proc-macros stay dynamic (plain RUSTFLAGS would break them).
        let flags = env.get("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS").expect("target flags");
        assert!(flags.starts_with("-C target-feature=+crt-static -C linker-plugin-lto "), "{flags}");
        let cache = ws.target_dir.join(image::TARGET).join("thinlto-cache");
        assert!(flags.contains(&format!("--thinlto-cache-dir={}", cache.display())), "{flags}");
        assert!(!env.contains_key("RUSTFLAGS"));
        assert_eq!(names(&plan)[1..], ["image:assemble:gateway", "image:load:gateway", "image:record"]);

        let pushed = image::plan(
            &ctx,
            &ws,
            &image::BuildArgs { push: Some("127.0.0.1:5000".into()), no_load: false, ..args.clone() },
        )
        .expect("plan");
        assert!(names(&pushed).contains(&"image:push:gateway"));
        // The tar as written goes to the registry: no Docker daemon, the digest xtask computed.
        let push = argv(&pushed, "image:push:gateway");
        let tag = image::Revision::of(&ctx.root).expect("rev").tag;
        assert!(push.starts_with(&["copy".to_string(), "--quiet".into(), "--preserve-digests".into()]), "{push:?}");
        assert!(push.contains(&"--dest-tls-verify=false".to_string()), "a loopback registry speaks HTTP");
        assert!(push.iter().any(|a| a.starts_with("oci-archive:") && a.ends_with("images/gateway.tar")), "{push:?}");
        assert_eq!(push.last().expect("dest"), &format!("docker://127.0.0.1:5000/gateway:{tag}"));
        let offline = image::plan(&ctx, &ws, &image::BuildArgs { no_load: true, ..args.clone() }).expect("plan");
        assert!(!names(&offline).iter().any(|n| n.starts_with("image:load")), "--no-load needs no docker");
        let remote = image::BuildArgs { push: Some("registry.example.com/team".into()), no_load: true, ..args };
        let remote = image::plan(&ctx, &ws, &remote).expect("plan");
        let push = argv(&remote, "image:push:gateway");
        assert!(!push.iter().any(|a| a.contains("tls-verify")), "a remote registry is verified: {push:?}");
        assert!(remote.steps.iter().all(|s| s.requires.iter().all(|t| t.name != "docker")), "no daemon needed");
    }

    #[test]
    fn scan_plans_every_scanner_then_one_report_that_always_runs() {
        let ctx = crate::test_ctx();
        let plan = scan::plan(&ctx, &scan::Args::default()).expect("plan");
        let steps = names(&plan);
        for wanted in ["scan:deny", "scan:secrets", "scan:trivy-fs", "scan:trivy-config", "scan:images", "scan:report"]
        {
            assert!(steps.contains(&wanted), "{wanted} missing from {steps:?}");
        }
        assert_eq!(plan.steps.last().expect("steps").name, "scan:report", "one report, after every scanner");
        let only_secrets = scan::plan(
            &ctx,
            &scan::Args {
                skip: vec![scan::Scan::Deny, scan::Scan::Fs, scan::Scan::Config, scan::Scan::Images],
                ..Default::default()
            },
        )
        .expect("plan");
        assert_eq!(names(&only_secrets), ["scan:secrets", "scan:report"]);
        let msg = usage_error(scan::plan(&ctx, &scan::Args { severity: "HIGH,SEVERE".into(), ..Default::default() }));
        assert!(msg.contains("SEVERE"), "{msg}");
    }
}
