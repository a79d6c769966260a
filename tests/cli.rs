//! End-to-end tests of the real `cargo xtask` binary: exit codes, one-line errors, JSON output,
//! and the secret and dependency scans against real git, trivy and cargo-deny.

use std::process::Command;

mod common;
use common::{require_tool, root, text, xtask};

#[test]
fn ci_dry_run_json_lists_every_step_and_runs_nothing() {
    let out = xtask(&["ci", "--dry-run", "--format", "json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is only JSON");
    assert_eq!(plan["command"], "ci");
    let names: Vec<&str> = plan["steps"].as_array().expect("steps").iter().filter_map(|s| s["name"].as_str()).collect();
    for stage in ["secrets", "fmt", "lint", "test", "deny", "build"] {
        assert!(names.contains(&stage), "ci plan lacks {stage}: {names:?}");
    }
    let lint = plan["steps"].as_array().expect("steps").iter().find(|s| s["name"] == "lint").expect("lint step");
    assert_eq!(lint["action"]["kind"], "exec");
    assert!(lint["action"]["args"].as_array().expect("args").iter().any(|a| a == "warnings"));
    assert!(lint["action"]["cwd"].as_str().is_some());
}

/// `--dry-run --format json` is honoured by every command that plans, or refused with exit 2
/// and one line; either way nothing runs. (`deploy`'s dry run is the deployer's: it renders and
/// diffs against a cluster, so tests/deploy.rs covers it with the kubectl stand-in.)
#[test]
fn every_command_prints_its_dry_run_as_json_or_refuses_it() {
    let commands: &[&[&str]] = &[
        &["fmt"],
        &["lint"],
        &["test"],
        &["test", "--e2e"],
        &["build", "--release"],
        &["image", "build"],
        &["image", "builder"],
        &[
            "image",
            "verify",
            "127.0.0.1:5000/api@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
        &["deny"],
        &["scan"],
        &["secrets"],
        &["dev", "up"],
        &["dev", "down"],
        &["dev", "status"],
        &["dev", "urls"],
        &["dev", "logs"],
        &["loadtest", "smoke"],
        &["k8s", "validate"],
        &["deploy", "rollback", "--env", "dev"],
        &["deploy", "backup", "--target", "docker", "--env", "prod"],
        &["deploy", "restore", "--target", "docker", "--env", "prod", "--backup", "20261204T231500Z"],
        &["alerts"],
        &["migrations", "check"],
        &["doctor"],
        &["setup"],
        &["workflows"],
        &["ci"],
    ];
    for args in commands {
        let mut line = vec!["--dry-run", "--format", "json"];
        line.extend_from_slice(args);
        let out = xtask(&line);
        let err = text(&out.stderr);
        match out.status.code() {
            Some(0) => {
                let json: Result<serde_json::Value, _> = serde_json::from_slice(&out.stdout);
                assert!(json.is_ok(), "{args:?}: stdout is not JSON: {}\n{err}", text(&out.stdout));
            }
            Some(2) => {
                assert!(err.contains("--format json"), "{args:?}: refused, but not for JSON: {err}");
                assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
            }
            other => panic!("{args:?}: exit {other:?}: {err}"),
        }
    }
}

#[test]
fn a_bad_flag_exits_2_with_one_line() {
    let out = xtask(&["ci", "--dry-rn"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line, got: {err}");
    assert!(err.contains("--dry-rn") && err.contains("--dry-run"), "names the flag and the fix: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_binary_cargo_ran_for_another_checkout_refuses_to_act() {
    let other = tempfile::tempdir().expect("tempdir");
    let mut cmd = common::xtask_command();
    let out = cmd.args(["ci", "--dry-run"]).env("CARGO_MANIFEST_DIR", other.path()).output().expect("xtask runs");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line, got: {err}");
    assert!(err.contains("two checkouts share a CARGO_TARGET_DIR"), "{err}");
    assert!(out.stdout.is_empty(), "nothing planned or run");
}

#[test]
fn an_unknown_service_exits_2_with_one_line() {
    let out = xtask(&["test", "--service", "no-such-service", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line, got: {err}");
    assert!(err.contains("unknown service 'no-such-service'"), "{err}");
}

#[test]
fn an_unknown_ci_stage_exits_2() {
    let out = xtask(&["ci", "--skip", "lnt", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no such stage"));
}

/// A throwaway git repository with one tracked file holding a planted AWS key.
struct PlantedRepo {
    dir: tempfile::TempDir,
    key: String,
}

fn planted_repo() -> PlantedRepo {
    let dir = tempfile::tempdir().expect("tempdir");
    // Assembled at run time so this file never contains a key any scanner would flag.
    let key = ["AKIA", "Z7QH2KXW4RMB5TNP"].concat();
    let git = |args: &[&str]| {
        let ok = Command::new("git").args(args).current_dir(dir.path()).status().expect("git runs").success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "--quiet"]);
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    std::fs::write(dir.path().join("config/prod.env"), format!("REGION=eu-west-1\nAWS_ACCESS_KEY_ID={key}\n"))
        .expect("write");
    std::fs::write(dir.path().join("README.md"), "nothing to see\n").expect("write");
    git(&["add", "--all"]);
    // Untracked files are not the scan's business: they cannot be pushed.
    std::fs::write(dir.path().join("local.env"), format!("AWS_ACCESS_KEY_ID={key}\n")).expect("write");
    PlantedRepo { dir, key }
}

#[test]
fn secrets_fails_on_a_planted_key_and_never_prints_it() {
    let repo = planted_repo();
    let path = repo.dir.path().to_str().expect("utf-8 path");
    let out = xtask(&["secrets", "--repo", path, "--no-trivy"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}\nstderr: {}", text(&out.stderr));
    assert!(stdout.contains("config/prod.env:2:19"), "{stdout}");
    assert!(stdout.contains("aws-access-key-id") && stdout.contains("AKIA********"), "{stdout}");
    assert!(!stdout.contains("local.env"), "untracked files are not scanned: {stdout}");
    let all = stdout + &text(&out.stderr);
    assert!(!all.contains(&repo.key), "the key itself must never be printed");
}

#[test]
fn secrets_merges_trivy_findings_with_its_own() {
    require_tool("trivy");
    let repo = planted_repo();
    let out = xtask(&["secrets", "--repo", repo.dir.path().to_str().expect("utf-8"), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["trivy"], true);
    let findings = report["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), 1, "one key, reported once: {findings:?}");
    assert_eq!(findings[0]["found_by"], serde_json::json!(["xtask", "trivy"]));
    assert!(!text(&out.stdout).contains(&repo.key));
}

#[test]
fn secrets_accepts_a_finding_only_with_a_reason_until_it_expires() {
    let repo = planted_repo();
    let path = repo.dir.path().to_str().expect("utf-8");
    // The one ignore file every scanner reads, `scan` and `secrets` alike.
    let ignore = repo.dir.path().join(".scan-ignore.toml");
    let entry = "[[ignore]]\nid = \"aws-access-key-id\"\ntarget = \"config/*.env\"\n";

    std::fs::write(&ignore, format!("{entry}expires = \"2999-01-01\"\n")).expect("write");
    let out = xtask(&["secrets", "--repo", path, "--no-trivy"]);
    assert_eq!(out.status.code(), Some(2), "an entry without a reason is a config error");
    assert!(text(&out.stderr).contains("no `reason`"), "{}", text(&out.stderr));

    let reasoned = format!("{entry}reason = \"test fixture, never a live key\"\n");
    std::fs::write(&ignore, format!("{reasoned}expires = \"2999-01-01\"\n")).expect("write");
    let out = xtask(&["secrets", "--repo", path, "--no-trivy"]);
    assert_eq!(out.status.code(), Some(0), "stdout: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("1 ignored"));

    std::fs::write(&ignore, format!("{reasoned}expires = \"2001-01-01\"\n")).expect("write");
    let out = xtask(&["secrets", "--repo", path, "--no-trivy"]);
    assert_eq!(out.status.code(), Some(1), "an expired acceptance accepts nothing and fails");
    assert!(text(&out.stderr).contains("expired on 2001-01-01"), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(&repo.key), "still redacted");
}

#[test]
fn deny_offline_runs_against_the_shared_advisory_db() {
    require_tool("cargo-deny");
    let db = root().join("../shared/advisory-db");
    assert!(db.join("crates").is_dir(), "expected the advisory-db snapshot at {}", db.display());
    let out = xtask(&["deny", "--offline", "--advisory-db", db.to_str().expect("utf-8")]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "{all}");
    let snapshot = std::fs::read_to_string(db.join("SNAPSHOT")).expect("SNAPSHOT file");
    let date = snapshot.rsplit_once('(').and_then(|(_, d)| d.split(')').next()).expect("dated snapshot");
    assert!(
        all.contains(&format!("dated {date} is")) && all.contains("days old"),
        "the database's real age is reported: {all}"
    );
    assert!(all.contains("advisories ok"), "{all}");
}

#[test]
fn doctor_json_describes_every_tool() {
    let out = xtask(&["doctor", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let tools = report["tools"].as_array().expect("tools");
    for name in ["cargo", "cargo-nextest", "cargo-deny", "docker", "docker-compose", "kubectl", "trivy"] {
        let tool = tools.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("doctor omits {name}"));
        assert!(tool["needed_by"].as_array().is_some_and(|n| !n.is_empty()), "{name} says who needs it");
        assert!(tool["install_hint"].as_str().is_some_and(|h| !h.is_empty()));
    }
    assert_eq!(out.status.success(), report["ok"] == true, "exit code agrees with the report");
}

#[test]
fn the_checked_in_workflow_is_current() {
    let out = xtask(&["workflows", "--check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn run_results_are_json_on_stdout_with_format_json() {
    let out = xtask(&["fmt", "--check", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is only JSON");
    assert_eq!(report["command"], "fmt --check");
    assert_eq!(report["steps"][0]["name"], "fmt");
    assert_eq!(report["steps"][0]["reproduce"], "cargo fmt --all -- --check");
    assert_eq!(out.status.success(), report["ok"] == true);
}

#[test]
fn under_github_actions_steps_are_grouped_and_summarised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.md");
    let out = common::xtask_command()
        .args(["fmt", "--check"])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .expect("runs");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("::group::[1/1] fmt") && stderr.contains("::endgroup::"), "{stderr}");
    let md = std::fs::read_to_string(&summary).expect("summary written");
    assert!(md.contains("`cargo xtask fmt --check`") && md.contains("| fmt |"), "{md}");
}

#[test]
fn ci_changed_with_an_unknown_base_exits_2() {
    let out = xtask(&["ci", "--changed", "--base", "no-such-ref-anywhere", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--base no-such-ref-anywhere"), "{err}");
}

#[test]
fn k8s_validate_checks_every_rendered_overlay() {
    require_tool("kubectl");
    let out = xtask(&["k8s", "validate"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let said = text(&out.stdout);
    for env in ["dev", "staging", "prod"] {
        let line = said
            .lines()
            .find(|l| l.starts_with(&format!("{env}: ")) && l.contains("objects checked against Kubernetes"));
        assert!(line.is_some_and(|l| l.ends_with(": ok")), "{env}: {said}");
    }
    let unknown = xtask(&["k8s", "validate", "--env", "qa"]);
    assert_eq!(unknown.status.code(), Some(2));
    let err = text(&unknown.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no overlay infra/k8s/overlays/qa"), "{err}");
}
