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
    check_needing(env, file, digests, &[])
}

/// `check`, told what services need (`--needs web=cache`).
fn check_needing(env: &str, file: &Path, digests: bool, needs: &[&str]) -> (i32, BTreeSet<String>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_k8s-policy"));
    cmd.args(["check", "--format", "json", "--env"]).arg(format!("{env}={}", file.display()));
    if digests {
        cmd.arg("--require-digests");
    }
    for need in needs {
        cmd.args(["--needs", need]);
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
        // `needs-egress` is checked when the caller says what services need.
        let needs: &[&str] = if rule == "needs-egress" { &["web=cache"] } else { &[] };
        let (code, fired, out) = check_needing("prod", &fixture, rule == "image-digest", needs);
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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `--needs` for every service, read from `[package.metadata.service]` in services/*/Cargo.toml.
fn service_needs() -> Vec<String> {
    let mut out = Vec::new();
    let crates = std::fs::read_dir(root().join("services")).expect("services/").flatten().filter(|e| e.path().is_dir());
    for entry in crates {
        let file = entry.path().join("Cargo.toml");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let manifest: toml::Table = text.parse().expect("Cargo.toml parses");
        let name = manifest["package"]["name"].as_str().expect("name");
        let service = manifest["package"]
            .get("metadata")
            .and_then(|m| m.get("service"))
            .unwrap_or_else(|| panic!("{}: no [package.metadata.service]", file.display()));
        let needs: Vec<&str> =
            service.get("needs").and_then(|n| n.as_array()).into_iter().flatten().filter_map(|n| n.as_str()).collect();
        out.push(format!("{name}={}", needs.join(",")));
    }
    assert!(out.len() >= 3, "services found: {out:?}");
    out
}

/// An environment's render (overlay, then its deployer identity) written to `dir`.
fn render_env(dir: &Path, env: &str) -> PathBuf {
    let root = root();
    let rendered = kustomize(&root.join("infra/k8s/overlays").join(env));
    // The deployer identity of the environment is checked with its render, so
    // `deployer-role` holds its Role to exactly the kinds this render contains.
    let identity = kustomize(&root.join("infra/k8s/deployer").join(env));
    assert!(identity.contains("kind: Role\n") && identity.contains("name: xtask-deployer\n"), "{env}: {identity}");
    let file = dir.join(format!("{env}.yaml"));
    std::fs::write(&file, format!("{rendered}---\n{identity}")).expect("write");
    file
}

/// The overlays in infra/k8s, rendered by the real kubectl (kustomize built in), pass as they
/// are, told what each service needs: dev reaches Postgres and Redis in its namespace, staging
/// and prod reach their managed endpoints.
#[test]
fn every_overlay_renders_and_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = Vec::new();
    for env in ["dev", "staging", "prod"] {
        args.push(format!("{env}={}", render_env(dir.path(), env).display()));
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_k8s-policy"));
    cmd.arg("check");
    for a in &args {
        cmd.args(["--env", a]);
    }
    for need in service_needs() {
        cmd.args(["--needs", &need]);
    }
    let out = cmd.output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The egress the overlays render is what makes the dependencies reachable: take the worker out
/// of the backing policies' selectors (in-cluster in dev, external in staging and prod) and the
/// worker's needs are named unreachable; leave the external CIDR a placeholder and prod refuses it.
#[test]
fn the_overlays_egress_is_what_reaches_each_need() {
    let dir = tempfile::tempdir().expect("tempdir");
    let needs = service_needs();
    let needs: Vec<&str> = needs.iter().map(String::as_str).collect();
    for env in ["dev", "staging", "prod"] {
        let file = render_env(dir.path(), env);
        let text = std::fs::read_to_string(&file).expect("render");
        let cut = text.replace("      - api\n      - worker\n", "      - api\n");
        assert_ne!(cut, text, "{env}: the backing egress policies select api and worker");
        std::fs::write(&file, cut).expect("write");
        let (code, rules, out) = check_needing(env, &file, false, &needs);
        assert_eq!((code, rules), (1, BTreeSet::from(["needs-egress".to_string()])), "{env}: {out}");
        for dep in ["postgres", "redis"] {
            assert!(
                out.contains(&format!("Deployment/worker (namespace platform-{env})"))
                    && out.contains(&format!("needs {dep}")),
                "{env}: {out}"
            );
        }
    }
    let file = render_env(dir.path(), "prod");
    let text = std::fs::read_to_string(&file).expect("render");
    std::fs::write(&file, text.replace("10.50.16.0/28", "192.0.2.0/32")).expect("write");
    let (code, _, out) = check_needing("prod", &file, false, &needs);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("a documentation placeholder: set the endpoint's real CIDR in the overlay"), "{out}");
}

/// The optional ServiceMonitor component, added to the prod overlay (with the deployer granted
/// `servicemonitors`), renders and passes: k8s-policy types the Operator's kind.
#[test]
fn the_servicemonitor_component_renders_and_passes() {
    let root = root().canonicalize().expect("root");
    // kustomize takes only relative paths: from the overlay's directory (wherever the target
    // directory is) up to what it shares with the repository, then down to the repository.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let canonical = dir.path().canonicalize().expect("dir");
    let here: Vec<_> = canonical.components().collect();
    let there: Vec<_> = root.components().collect();
    let shared = here.iter().zip(&there).take_while(|(a, b)| a == b).count();
    let mut rel = "../".repeat(here.len() - shared);
    for part in &there[shared..] {
        rel.push_str(&format!("{}/", part.as_os_str().to_string_lossy()));
    }
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: platform-prod\nresources:\n  - {rel}infra/k8s/overlays/prod\n  - {rel}infra/k8s/deployer/prod\ncomponents:\n  - {rel}infra/k8s/components/servicemonitor\n\
             patches:\n  - target: {{kind: Role, name: xtask-deployer}}\n    patch: |-\n      - op: add\n        path: /rules/-\n        value: {{apiGroups: [monitoring.coreos.com], resources: [servicemonitors], verbs: [get, list, create, patch, delete]}}\n"
        ),
    )
    .expect("write");
    let rendered = kustomize(dir.path());
    assert_eq!(rendered.matches("kind: ServiceMonitor\n").count(), 3, "{rendered}");
    let file = dir.path().join("prod.yaml");
    std::fs::write(&file, &rendered).expect("write");
    let needs = service_needs();
    let needs: Vec<&str> = needs.iter().map(String::as_str).collect();
    let (code, rules, out) = check_needing("prod", &file, false, &needs);
    assert_eq!(code, 0, "{rules:?} {out}");
    // Without the grant the deployer could not apply them: rule `deployer-role` says so.
    let ungranted = rendered.replace("  - servicemonitors\n", "");
    std::fs::write(&file, ungranted).expect("write");
    let (code, rules, out) = check_needing("prod", &file, false, &needs);
    assert_eq!((code, rules), (1, BTreeSet::from(["deployer-role".to_string()])), "{out}");
}
