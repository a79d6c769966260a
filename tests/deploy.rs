//! `cargo xtask deploy` to Kubernetes, tested against a recorded contract: there is no cluster
//! here, so `KUBECTL` points at `tests/support/kubectl-standin`, which records every call and
//! answers as a cluster would in the scripted scenario (success, rollout timeout, crash loop).
//! Rendering is real (the stand-in hands `kustomize` to the real kubectl) and so is validation
//! (k8s-policy on the pinned render). The HTTP smoke check reaches a server this test runs.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{require_tool, root, text};

/// Serves `200 ok` to every request: the gateway's readiness endpoint behind the port-forward.
fn ready_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    port
}

fn digest(version: u8, service: &str) -> String {
    let seed = format!("{version}{service}");
    let hex: String =
        seed.bytes().cycle().take(64).map(|b| char::from(b"0123456789abcdef"[usize::from(b % 16)])).collect();
    format!("sha256:{hex}")
}

/// A build manifest as `image build --push 127.0.0.1:5000` writes it; `pushed: false` leaves
/// the digests out (built, never pushed).
fn manifest(dir: &Path, version: u8, pushed: bool) -> PathBuf {
    let mut images = serde_json::Map::new();
    for service in ["api", "gateway", "worker"] {
        let mut record = serde_json::json!({
            "service": service, "image": format!("{service}:00000000000{version}"), "revision": "0".repeat(40),
            "dirty": false, "created": "2026-11-22T00:00:00Z", "id": digest(version, "id"), "manifest_digest": digest(version, service),
            "tar": "/nonexistent.tar", "tar_sha256": "0".repeat(64), "binary_size": 1, "layer_size": 1, "builder": "host",
        });
        if pushed {
            record["pushed"] = format!("127.0.0.1:5000/{service}@{}", digest(version, service)).into();
        }
        images.insert(service.into(), record);
    }
    let path = dir.join(format!("images-v{version}-{pushed}.json"));
    std::fs::write(&path, serde_json::json!({"schema": 1, "images": images}).to_string()).expect("write manifest");
    path
}

struct Cluster {
    state: tempfile::TempDir,
    forward_port: u16,
}

impl Cluster {
    fn new() -> Cluster {
        require_tool("kubectl");
        require_tool("python3");
        Cluster { state: tempfile::tempdir().expect("tempdir"), forward_port: ready_server() }
    }

    fn xtask(&self, scenario: &str, bad: &str, args: &[&str]) -> Output {
        common::xtask_command()
            .args(args)
            .env("KUBECTL", root().join("tests/support/kubectl-standin"))
            .env("STANDIN_DIR", self.state.path())
            .env("STANDIN_SCENARIO", scenario)
            .env("STANDIN_BAD", bad)
            .env("STANDIN_FORWARD_PORT", self.forward_port.to_string())
            .env("STANDIN_REAL_KUBECTL", "kubectl")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("xtask runs")
    }

    /// Every kubectl call so far, as argv lists.
    fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.state.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    fn applied(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.state.path())
            .expect("state")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("apply-")))
            .collect();
        files.sort_by_key(|p| {
            p.file_name().and_then(|n| n.to_str()).and_then(|n| n[6..n.len() - 5].parse::<u32>().ok())
        });
        files.iter().map(|p| std::fs::read_to_string(p).expect("applied file")).collect()
    }
}

fn said(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_deploy_pins_validates_diffs_applies_waits_smokes_and_records_known_good() {
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let out = cluster.xtask(
        "success",
        "",
        &["deploy", "--env", "staging", "--images", v1.to_str().expect("utf-8"), "--timeout", "20"],
    );
    assert!(out.status.success(), "{}", said(&out));
    let calls = cluster.calls();
    let verbs: Vec<&str> = calls.iter().map(|c| c[0].as_str()).collect();
    let position =
        |verb: &str| verbs.iter().position(|v| *v == verb).unwrap_or_else(|| panic!("no `{verb}` call: {calls:?}"));
    assert!(position("kustomize") < position("diff") && position("diff") < position("apply"), "{calls:?}");
    // Pinned by kustomize's own images transformer, in an overlay generated over the environment's.
    let renders: Vec<&Vec<String>> = calls.iter().filter(|c| c[0] == "kustomize").collect();
    assert_eq!(renders.len(), 2, "{calls:?}");
    assert!(renders[0][1].ends_with("infra/k8s/overlays/staging"), "{calls:?}");
    let generated = std::fs::read_to_string(Path::new(&renders[1][1]).join("kustomization.yaml")).expect("kept");
    assert!(generated.contains("overlays/staging\"\nimages:\n"), "{generated}");
    assert!(generated.contains(&format!("    digest: \"{}\"\n", digest(1, "api"))), "{generated}");
    assert!(
        calls.iter().any(|c| c.starts_with(&["apply".into(), "--server-side".into(), "--field-manager=xtask".into()])),
        "{calls:?}"
    );
    for d in ["api", "gateway", "worker"] {
        assert!(
            calls.iter().any(|c| c.len() > 3 && c[..3] == ["rollout", "status", &format!("deployment/{d}")]),
            "{d}: {calls:?}"
        );
    }
    assert!(calls.iter().any(|c| c[0] == "port-forward" && c.contains(&"svc/gateway".to_string())), "{calls:?}");
    let applied = cluster.applied();
    assert_eq!(applied.len(), 2, "the render, then the known-good record");
    assert!(applied[0].contains(&format!("image: 127.0.0.1:5000/api@{}", digest(1, "api"))), "pinned by digest");
    assert!(!applied[0].contains("unpinned"), "no placeholder left");
    assert!(applied[1].contains("xtask-known-good") && applied[1].contains(&digest(1, "api")));
    // No repository file was rewritten to pin the images.
    let overlay =
        std::fs::read_to_string(root().join("infra/k8s/overlays/staging/kustomization.yaml")).expect("overlay");
    assert!(overlay.contains("newTag: unpinned"));

    let status = cluster.xtask("success", "", &["deploy", "status", "--env", "staging"]);
    assert!(status.status.success(), "{}", said(&status));
    let table = text(&status.stdout);
    assert!(table.contains("api") && table.contains(&digest(1, "api")) && table.contains("2/2"), "{table}");
    assert!(table.contains("known-good: revision"), "{table}");
}

#[test]
fn a_rollout_that_times_out_is_rolled_back_to_the_known_good_render() {
    let cluster = Cluster::new();
    let (v1, v2) = (manifest(cluster.state.path(), 1, true), manifest(cluster.state.path(), 2, true));
    let first = cluster.xtask(
        "rollout-timeout",
        &digest(2, "api"),
        &["deploy", "--env", "staging", "--images", v1.to_str().expect("utf-8"), "--timeout", "20"],
    );
    assert!(first.status.success(), "{}", said(&first));
    let second = cluster.xtask(
        "rollout-timeout",
        &digest(2, "api"),
        &["deploy", "--env", "staging", "--images", v2.to_str().expect("utf-8"), "--timeout", "20"],
    );
    assert_eq!(second.status.code(), Some(1), "{}", said(&second));
    let err = text(&second.stderr);
    assert!(err.contains("api: rollout did not finish: error: timed out waiting for the condition"), "{err}");
    assert!(err.contains("rolled back to the last known-good render"), "{err}");
    let applied = cluster.applied();
    let last = applied.last().expect("applies");
    assert!(
        last.contains(&digest(1, "api")) && !last.contains(&digest(2, "api")),
        "the known-good (v1) render was re-applied last"
    );
    assert!(applied.iter().any(|a| a.contains(&digest(2, "api"))), "v2 was tried");
    // The failed version was not recorded as known-good.
    let known =
        std::fs::read_to_string(cluster.state.path().join("known-good-platform-staging.json")).expect("known-good");
    assert!(known.contains(&digest(1, "api")) && !known.contains(&digest(2, "api")));

    // `deploy rollback` does the same on demand.
    let before = cluster.applied().len();
    let rollback = cluster.xtask("success", "", &["deploy", "rollback", "--env", "staging", "--timeout", "20s"]);
    assert!(rollback.status.success(), "{}", said(&rollback));
    let applied = cluster.applied();
    assert_eq!(applied.len(), before + 1);
    assert!(applied.last().expect("applied").contains(&digest(1, "api")));
}

#[test]
fn a_crash_loop_is_caught_before_the_timeout_and_rolled_back() {
    let cluster = Cluster::new();
    let (v1, v2) = (manifest(cluster.state.path(), 1, true), manifest(cluster.state.path(), 2, true));
    let bad = digest(2, "api");
    assert!(
        cluster
            .xtask("crash-loop", &bad, &["deploy", "--env", "staging", "--images", v1.to_str().expect("utf-8")])
            .status
            .success()
    );
    let started = std::time::Instant::now();
    let out = cluster.xtask(
        "crash-loop",
        &bad,
        &["deploy", "--env", "staging", "--images", v2.to_str().expect("utf-8"), "--timeout", "2m"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "did not wait for the 120 s timeout");
    let err = text(&out.stderr);
    assert!(err.contains("api: CrashLoopBackOff (pod api-"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert!(cluster.applied().last().expect("applied").contains(&digest(1, "api")));
}

/// Prod gets exactly the digests staging runs, read from staging's namespace in the cluster,
/// never from a build manifest; a promote from an environment that runs nothing, or another
/// commit than the one asked for, changes nothing.
#[test]
fn promote_deploys_to_prod_exactly_what_staging_runs() {
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let staged = cluster.xtask("success", "", &["deploy", "--env", "staging", "--images", v1.to_str().expect("utf-8")]);
    assert!(staged.status.success(), "{}", said(&staged));
    let known = std::fs::read_to_string(cluster.state.path().join("known-good-platform-staging.json")).expect("kept");
    let known: serde_json::Value = serde_json::from_str(&known).expect("json");
    let revision = known["metadata"]["annotations"]["xtask/revision"].as_str().expect("revision").to_string();

    let promote = ["deploy", "promote", "--from", "staging", "--to", "prod", "--yes", "--confirm", "prod"];
    let before = cluster.applied().len();
    let wrong = cluster.xtask("success", "", &[&promote[..], &["--commit", "0000000"]].concat());
    assert_eq!(wrong.status.code(), Some(2), "{}", said(&wrong));
    assert!(text(&wrong.stderr).contains(&format!("staging runs commit {revision}, not 0000000")), "{}", said(&wrong));
    let nothing = cluster.xtask("success", "", &["deploy", "promote", "--from", "dev", "--to", "prod", "--yes"]);
    assert_eq!(nothing.status.code(), Some(2), "{}", said(&nothing));
    assert!(text(&nothing.stderr).contains("dev runs nothing to promote"), "{}", said(&nothing));
    assert_eq!(cluster.applied().len(), before, "a refused promote applies nothing");

    let out = cluster.xtask("success", "", &[&promote[..], &["--commit", &revision[..7]]].concat());
    assert!(out.status.success(), "{}", said(&out));
    let applied = cluster.applied();
    let prod = &applied[before];
    assert!(prod.contains("namespace: platform-prod"), "the prod render was applied");
    for service in ["api", "gateway", "worker"] {
        assert!(prod.contains(&format!("image: 127.0.0.1:5000/{service}@{}", digest(1, service))), "{service}: {prod}");
    }
    let recorded = std::fs::read_to_string(cluster.state.path().join("known-good-platform-prod.json")).expect("kept");
    assert!(recorded.contains(&format!("\"xtask/revision\": \"{revision}\"")), "prod records staging's commit");
    let reads: Vec<Vec<String>> =
        cluster.calls().into_iter().filter(|c| c.contains(&"platform-staging".to_string())).collect();
    assert!(reads.iter().any(|c| c[..2] == ["get", "deployments"]), "staging's health was read: {reads:?}");
}

#[test]
fn prod_without_confirmation_is_refused_before_anything_is_applied() {
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let images = v1.to_str().expect("utf-8");
    for args in [
        vec!["deploy", "--env", "prod", "--images", images],
        vec!["deploy", "--env", "prod", "--images", images, "--yes"],
        vec!["deploy", "--env", "prod", "--images", images, "--yes", "--confirm", "staging"],
    ] {
        let out = cluster.xtask("success", "", &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", said(&out));
        let err = text(&out.stderr);
        assert!(err.contains("nothing was applied"), "{err}");
    }
    assert!(cluster.calls().iter().all(|c| c[0] != "apply"), "{:?}", cluster.calls());
    let confirmed =
        cluster.xtask("success", "", &["deploy", "--env", "prod", "--images", images, "--yes", "--confirm", "prod"]);
    assert!(confirmed.status.success(), "{}", said(&confirmed));
}

#[test]
fn undigested_images_are_refused_before_kubectl_runs() {
    let cluster = Cluster::new();
    let unpushed = manifest(cluster.state.path(), 1, false);
    let out =
        cluster.xtask("success", "", &["deploy", "--env", "staging", "--images", unpushed.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    let err = text(&out.stderr);
    assert!(err.contains("was built but never pushed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(cluster.calls().is_empty(), "{:?}", cluster.calls());
}

#[test]
fn what_the_kubernetes_target_cannot_do_yet_is_refused_before_kubectl_runs() {
    let cluster = Cluster::new();
    for (args, needle) in [
        (&["deploy", "rollback", "--env", "staging", "--to", "3"][..], "keeps only its known-good release"),
        (&["deploy", "verify", "--env", "staging"][..], "deploy verify runs on the Docker target so far"),
    ] {
        let out = cluster.xtask("success", "", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", said(&out));
        assert!(text(&out.stderr).contains(needle), "{args:?}: {}", said(&out));
    }
    assert!(cluster.calls().is_empty(), "{:?}", cluster.calls());
}

#[test]
fn dry_run_stops_after_the_diff() {
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let out = cluster.xtask(
        "success",
        "",
        &["--dry-run", "deploy", "--env", "staging", "--images", v1.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", said(&out));
    assert!(text(&out.stdout).contains("image: (new)"), "the diff is shown: {}", said(&out));
    let verbs: Vec<String> = cluster.calls().iter().map(|c| c[0].clone()).collect();
    // The overlay, then the generated overlay that pins it, then the server-side diff.
    assert_eq!(verbs, ["kustomize", "kustomize", "diff"]);

    // The same plan as JSON on stdout: the pinned images, the diff and the render.
    let json = cluster.xtask(
        "success",
        "",
        &["--dry-run", "--format", "json", "deploy", "--env", "staging", "--images", v1.to_str().expect("utf-8")],
    );
    assert!(json.status.success(), "{}", said(&json));
    let plan: serde_json::Value =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", said(&json)));
    assert_eq!((plan["target"].as_str(), plan["env"].as_str()), (Some("k8s"), Some("staging")), "{plan:#}");
    assert_eq!(plan["changes"], true);
    assert!(plan["diff"].as_str().is_some_and(|d| d.contains("image: (new)")), "{plan:#}");
    assert!(plan["images"]["api"].as_str().is_some_and(|i| i.contains("@sha256:")), "{plan:#}");
    assert!(plan["render"].as_str().is_some_and(|r| r.contains("kind: Deployment")), "{plan:#}");
    let applies = cluster.calls().iter().filter(|c| c[0] == "apply").count();
    assert_eq!(applies, 0, "a dry run applies nothing");
}
