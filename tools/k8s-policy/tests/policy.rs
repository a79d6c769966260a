//! k8s-policy against fixtures (one per rule, each breaking only that rule) and against the
//! repository's real overlays rendered by the real `kubectl kustomize`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `check` on one render; returns the exit code and the set of rules that fired.
fn check(env: &str, file: &Path, digests: bool) -> (i32, BTreeSet<String>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_k8s-policy"));
    cmd.args(["check", "--format", "json", "--env"]).arg(format!("{env}={}", file.display()));
    if digests {
        cmd.arg("--require-digests");
    }
    let out = cmd.output().expect("k8s-policy runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let findings: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON ({e}): {stdout}"));
    let rules =
        findings.as_array().expect("array").iter().map(|f| f["rule"].as_str().expect("rule").to_string()).collect();
    (out.status.code().unwrap_or(-1), rules, stdout)
}

#[test]
fn the_good_fixture_passes_everything() {
    let (code, rules, out) = check("prod", &fixtures().join("good.yaml"), true);
    assert_eq!(code, 0, "{out}");
    assert!(rules.is_empty());
}

#[test]
fn each_rule_has_a_fixture_that_breaks_it_and_nothing_else() {
    let listed = Command::new(env!("CARGO_BIN_EXE_k8s-policy")).arg("rules").output().expect("rules");
    let rules: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(rules.len() >= 10, "{rules:?}");
    for rule in &rules {
        let fixture = fixtures().join(format!("{rule}.yaml"));
        assert!(fixture.is_file(), "rule `{rule}` needs a failing fixture at {}", fixture.display());
        let (code, fired, out) = check("prod", &fixture, rule == "image-digest");
        assert_eq!(code, 1, "{rule}: {out}");
        assert_eq!(fired, BTreeSet::from([rule.clone()]), "{rule}: exactly its own rule fires: {out}");
    }
}

#[test]
fn dev_is_not_held_to_disruption_budgets_or_network_policies() {
    for rule in ["pdb", "network-policy"] {
        let (code, _, out) = check("dev", &fixtures().join(format!("{rule}.yaml")), false);
        assert_eq!(code, 0, "{rule} in dev: {out}");
    }
}

#[test]
fn messages_name_the_environment_object_rule_and_field() {
    let out = Command::new(env!("CARGO_BIN_EXE_k8s-policy"))
        .args(["check", "--env"])
        .arg(format!("prod={}", fixtures().join("schema.yaml").display()))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("prod: Deployment/web (namespace shop): [schema] unknown field `spec.replica`"), "{text}");
    let missing = Command::new(env!("CARGO_BIN_EXE_k8s-policy"))
        .args(["check", "--env", "prod=/no/such/file.yaml"])
        .output()
        .expect("runs");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the render"));
}

/// A kustomization rendered by the real kubectl.
fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl is installed (see README prerequisites)");
    assert!(out.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The overlays in infra/k8s, rendered by the real kubectl (kustomize built in), pass as they are.
#[test]
fn every_overlay_renders_and_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = Vec::new();
    for env in ["dev", "staging", "prod"] {
        let rendered = kustomize(&root.join("infra/k8s/overlays").join(env));
        // The deployer identity of the environment is checked with its render, so
        // `deployer-role` holds its Role to exactly the kinds this render contains.
        let identity = kustomize(&root.join("infra/k8s/deployer").join(env));
        assert!(identity.contains("kind: Role\n") && identity.contains("name: xtask-deployer\n"), "{env}: {identity}");
        let file = dir.path().join(format!("{env}.yaml"));
        let text = format!("{rendered}---\n{identity}");
        std::fs::write(&file, text).expect("write");
        args.push(format!("{env}={}", file.display()));
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_k8s-policy"));
    cmd.arg("check");
    for a in &args {
        cmd.args(["--env", a]);
    }
    let out = cmd.output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}
