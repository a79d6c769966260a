//! `cargo xtask deploy` to Kubernetes, tested against a recorded contract: there is no cluster
//! here, so `KUBECTL` points at `tests/support/kubectl-standin`, which records every call, keeps
//! the objects applied to it, and answers as the API server would in the scripted scenario
//! (success, rollout timeout, crash loop). Rendering is real (the stand-in hands `kustomize` to
//! the real kubectl) and so is validation (k8s-policy on the pinned render).
//!
//! The cluster's edge is a server this test runs on loopback: it answers the smoke check and the
//! verification load as the version the stand-in runs would (a bad `api` digest answers every
//! fifth request with 500), and exports request metrics that a real Prometheus scrapes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod common;
use common::{Registry, require_tool, root, text};

/// What the edge has answered, by status.
#[derive(Default)]
struct Served {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Requests that reached the bad version.
    bad: AtomicU64,
}

/// The cluster's edge, on loopback: `GET /readyz` (the smoke check, through the API server's proxy),
/// the verification scenario's routes, and `/metrics` in Prometheus' text format. Whether it
/// is the bad version is read per request from what the stand-in cluster runs.
fn edge_server(cluster: PathBuf, bad: Option<String>) -> (u16, Arc<Served>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = Arc::new(Served::default());
    let counts = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (cluster, bad, counts) = (cluster.clone(), bad.clone(), counts.clone());
            std::thread::spawn(move || serve(stream, &cluster, bad.as_deref(), &counts));
        }
    });
    (port, served)
}

/// Is the `api` Deployment the stand-in runs in staging the bad one? Traffic only reaches the
/// edge after a deploy, so the stand-in's state is there to read.
fn runs_bad(cluster: &Path, bad: &str) -> bool {
    let state = std::fs::read_to_string(cluster.join("cluster.json")).expect("the stand-in's state, after a deploy");
    let state: serde_json::Value = serde_json::from_str(&state).expect("the stand-in writes its state whole");
    state["objects"]["Deployment/platform-staging/api"].to_string().contains(bad)
}

/// One keep-alive connection of the edge, until the client closes it.
fn serve(stream: std::net::TcpStream, cluster: &Path, bad: Option<&str>, served: &Served) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut request = String::new();
    while reader.read_line(&mut request)? > 0 {
        let mut length = 0usize;
        let mut line = String::new();
        while reader.read_line(&mut line)? > 2 {
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            line.clear();
        }
        reader.read_exact(&mut vec![0; length])?;
        let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (status, text) = if path == "/metrics" {
            (200, metrics(served))
        } else if path == "/readyz" {
            (200, "ok".to_string())
        } else {
            let n = served.ok.load(Ordering::SeqCst) + served.failed.load(Ordering::SeqCst);
            let is_bad = bad.is_some_and(|b| runs_bad(cluster, b));
            if is_bad {
                served.bad.fetch_add(1, Ordering::SeqCst);
            }
            if is_bad && n.is_multiple_of(5) {
                served.failed.fetch_add(1, Ordering::SeqCst);
                (500, "injected".to_string())
            } else {
                served.ok.fetch_add(1, Ordering::SeqCst);
                (if request.starts_with("POST") { 201 } else { 200 }, "{}".to_string())
            }
        };
        write!(writer, "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{text}", text.len())?;
        request.clear();
    }
    Ok(())
}

/// The edge's request metrics, named as the services export them.
fn metrics(served: &Served) -> String {
    let (ok, failed) = (served.ok.load(Ordering::SeqCst), served.failed.load(Ordering::SeqCst));
    let all = ok + failed;
    format!(
        "# TYPE http_requests_total counter\n\
         http_requests_total{{route=\"/v1/jobs\",status=\"200\"}} {ok}\n\
         http_requests_total{{route=\"/v1/jobs\",status=\"500\"}} {failed}\n\
         # TYPE http_request_duration_seconds histogram\n\
         http_request_duration_seconds_bucket{{route=\"/v1/jobs\",le=\"0.005\"}} {all}\n\
         http_request_duration_seconds_bucket{{route=\"/v1/jobs\",le=\"+Inf\"}} {all}\n\
         http_request_duration_seconds_sum{{route=\"/v1/jobs\"}} {}\n\
         http_request_duration_seconds_count{{route=\"/v1/jobs\"}} {all}\n",
        all as f64 * 0.001
    )
}

/// A real Prometheus scraping the edge every second as job `gateway`; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(edge: u16) -> Prometheus {
        require_tool("prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['127.0.0.1:{edge}']\n"
            ),
        )
        .expect("write config");
        let port = test_support::free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus { child, port, _dir: dir };
        let up = format!("http://127.0.0.1:{port}/api/v1/query?query=up");
        test_support::eventually("Prometheus scrapes the edge", std::time::Duration::from_secs(30), || {
            let answer = test_support::http("GET", &up, &[], b"").ok()?;
            String::from_utf8_lossy(&answer.body).contains(r#""job":"gateway""#).then_some(())
        });
        prometheus
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    served: Arc<Served>,
    vars: Vec<(String, String)>,
}

impl Cluster {
    /// A cluster where each environment's namespace and the Secrets its workloads read exist.
    fn new() -> Cluster {
        Cluster::serving(None)
    }

    /// A cluster whose edge answers as `bad` does while the stand-in runs it (namespaces and
    /// Secrets there, as `new`).
    fn serving(bad: Option<&str>) -> Cluster {
        let cluster = Cluster::fresh(bad);
        for env in ["dev", "staging", "prod"] {
            cluster.seed_secrets(&format!("platform-{env}"));
        }
        cluster
    }

    /// A cluster with nothing in it.
    fn fresh(bad: Option<&str>) -> Cluster {
        require_tool("kubectl");
        require_tool("python3");
        let state = tempfile::tempdir().expect("tempdir");
        let (forward_port, served) = edge_server(state.path().to_path_buf(), bad.map(str::to_string));
        Cluster { state, forward_port, served, vars: Vec::new() }
    }

    /// The namespace and the Secrets the services read (what External Secrets would supply).
    fn seed_secrets(&self, namespace: &str) {
        let urls: &[&str] = &["DATABASE_URL", "REDIS_URL"];
        self.seed(namespace, &[("api-database", urls), ("worker-database", urls)]);
    }

    /// The namespace and these Secrets (name, keys) in it, applied behind deploy's back.
    fn seed(&self, namespace: &str, secrets: &[(&str, &[&str])]) {
        let items = secrets.iter().map(|(name, keys)| {
            let data: serde_json::Map<String, serde_json::Value> =
                keys.iter().map(|k| (k.to_string(), "c2VjcmV0".into())).collect();
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace}, "data": data})
        });
        self.seed_objects(namespace, items.collect());
    }

    /// The namespace and these objects in it, applied behind deploy's back (as a cluster admin
    /// or External Secrets would).
    fn seed_objects(&self, namespace: &str, objects: Vec<serde_json::Value>) {
        let mut items =
            vec![serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})];
        items.extend(objects);
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let file = self.state.path().join(format!("seed-{namespace}.json"));
        std::fs::write(&file, list.to_string()).expect("seed");
        let out = standin(self.state.path(), &[], &["apply", "--server-side", "-f", file.to_str().expect("utf-8")]);
        assert!(out.status.success(), "seeding: {}", text(&out.stderr));
        // The seed is not a call deploy made, nor an apply of its.
        std::fs::remove_file(self.state.path().join("calls.jsonl")).expect("calls");
        for entry in std::fs::read_dir(self.state.path()).expect("state").flatten() {
            if entry.file_name().to_string_lossy().starts_with("apply-") {
                std::fs::remove_file(entry.path()).expect("seed apply");
            }
        }
    }

    fn xtask(&self, scenario: &str, bad: &str, args: &[&str]) -> Output {
        // kubectl's current context is the cluster of the environment changed (`--env`, or
        // `--to` of a promote), as a person would have switched to it.
        let env = args.windows(2).find(|w| w[0] == "--env" || w[0] == "--to").map_or("staging", |w| w[1]);
        self.xtask_in(&format!("platform-{env}"), scenario, bad, args)
    }

    /// `deploy --env staging` of `manifest`, unverified, in the `success` scenario.
    fn deploy_staging(&self, manifest: &Path) -> Output {
        self.xtask(
            "success",
            "",
            &["deploy", "--env", "staging", "--images", manifest.to_str().expect("utf-8"), "--no-verify"],
        )
    }

    /// With kubectl's current context set to `context`.
    fn xtask_in(&self, context: &str, scenario: &str, bad: &str, args: &[&str]) -> Output {
        common::xtask_command()
            .args(args)
            .env("STANDIN_CONTEXT", context)
            .env("STANDIN_CONTEXTS", "platform-dev,platform-staging,platform-prod")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
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

    /// One object the stand-in cluster holds.
    fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<serde_json::Value> {
        let state = std::fs::read_to_string(self.state.path().join("cluster.json")).ok()?;
        let state: serde_json::Value = serde_json::from_str(&state).expect("the stand-in's state is JSON");
        let object = &state["objects"][format!("{kind}/{namespace}/{name}")];
        (!object.is_null()).then(|| object.clone())
    }

    /// The releases a namespace keeps, oldest first: (id, state, rollback_of, api image).
    fn releases(&self, namespace: &str) -> Vec<(u64, String, Option<u64>, String)> {
        let state = std::fs::read_to_string(self.state.path().join("cluster.json")).unwrap_or_else(|_| "{}".into());
        let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
        let mut out: Vec<(u64, String, Option<u64>, String)> = state["objects"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| key.starts_with(&format!("ConfigMap/{namespace}/xtask-release-")))
            .map(|(_, cm)| {
                let r: serde_json::Value =
                    serde_json::from_str(cm["data"]["release.json"].as_str().expect("a record")).expect("JSON");
                (
                    r["id"].as_u64().expect("id"),
                    r["state"].as_str().expect("state").to_string(),
                    r["rollback_of"].as_u64(),
                    r["images"]["api"].as_str().expect("api").to_string(),
                )
            })
            .collect();
        out.sort();
        out
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
fn a_deploy_pins_validates_diffs_applies_waits_smokes_and_records_the_release() {
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let out = cluster.xtask(
        "success",
        "",
        &["deploy", "--env", "staging", "--images", v1.to_str().expect("utf-8"), "--timeout", "20", "--no-verify"],
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
    // The smoke check goes through the API server's service proxy: no port-forward child.
    let proxy = "/api/v1/namespaces/platform-staging/services/gateway:8080/proxy/readyz".to_string();
    assert!(calls.iter().any(|c| c[..2] == ["get", "--raw"] && c[2] == proxy), "{calls:?}");
    assert!(calls.iter().all(|c| c[0] != "port-forward"), "{calls:?}");
    let applied = cluster.applied();
    assert_eq!(applied.len(), 3, "the namespace, the workloads, then the release record");
    let applied = &applied[1..];
    assert!(
        applied[0].contains(&format!("\"image\": \"127.0.0.1:5000/api@{}\"", digest(1, "api"))),
        "pinned by digest"
    );
    assert!(!applied[0].contains("unpinned"), "no placeholder left");
    let api = cluster.object("Deployment", "platform-staging", "api").expect("applied into staging's namespace");
    assert!(api.to_string().contains(&digest(1, "api")), "{api}");
    assert_eq!(
        cluster.releases("platform-staging"),
        [(1, "deployed".into(), None, format!("127.0.0.1:5000/api@{}", digest(1, "api")))]
    );
    // No repository file was rewritten to pin the images.
    let overlay =
        std::fs::read_to_string(root().join("infra/k8s/overlays/staging/kustomization.yaml")).expect("overlay");
    assert!(overlay.contains("newTag: unpinned"));

    let status = cluster.xtask("success", "", &["deploy", "status", "--env", "staging"]);
    assert!(status.status.success(), "{}", said(&status));
    let table = text(&status.stdout);
    assert!(table.contains("api") && table.contains(&digest(1, "api")) && table.contains("2/2"), "{table}");
    assert!(table.contains("release 1 (deployed), commit"), "{table}");
}

#[test]
fn a_rollout_that_times_out_is_rolled_back_and_history_rolls_back_on_demand() {
    let cluster = Cluster::new();
    let v: Vec<PathBuf> = (1..=3).map(|i| manifest(cluster.state.path(), i, true)).collect();
    let deploy = |version: usize, extra: &[&str]| {
        let images = v[version - 1].to_str().expect("utf-8");
        let args = [&["deploy", "--env", "staging", "--images", images, "--timeout", "20", "--no-verify"][..], extra];
        cluster.xtask("rollout-timeout", &digest(2, "api"), &args.concat())
    };
    let api = |version: u8| format!("127.0.0.1:5000/api@{}", digest(version, "api"));
    let first = deploy(1, &[]);
    assert!(first.status.success(), "{}", said(&first));
    let second = deploy(2, &[]);
    assert_eq!(second.status.code(), Some(1), "{}", said(&second));
    let err = text(&second.stderr);
    assert!(err.contains("api: rollout did not finish: error: timed out waiting for the condition"), "{err}");
    assert!(err.contains("rolled back to release 1 (what ran before)"), "{err}");
    let applied = cluster.applied();
    assert!(applied.iter().any(|a| a.contains(&digest(2, "api"))), "v2 was tried");
    let running = cluster.object("Deployment", "platform-staging", "api").expect("api").to_string();
    assert!(running.contains(&digest(1, "api")) && !running.contains(&digest(2, "api")), "v1 runs again");
    // The failed version was not recorded as a release.
    assert_eq!(cluster.releases("platform-staging"), [(1, "deployed".into(), None, api(1))]);

    // v3 deploys; `rollback` goes back to v1, `--to` to any release kept, each a release of its own.
    assert!(deploy(3, &[]).status.success());
    let rollback = |extra: &[&str]| {
        let args = [&["deploy", "rollback", "--env", "staging", "--timeout", "20s"][..], extra].concat();
        cluster.xtask("success", "", &args)
    };
    let back = rollback(&[]);
    assert!(back.status.success(), "{}", said(&back));
    assert!(text(&back.stderr).contains("rolled back staging to release 1 (now release 3)"), "{}", said(&back));
    assert!(
        cluster.object("Deployment", "platform-staging", "api").expect("api").to_string().contains(&digest(1, "api"))
    );
    let to_two = rollback(&["--to", "2"]);
    assert!(to_two.status.success(), "{}", said(&to_two));
    assert_eq!(
        cluster.releases("platform-staging"),
        [
            (1, "deployed".into(), None, api(1)),
            (2, "deployed".into(), None, api(3)),
            (3, "deployed".into(), Some(1), api(1)),
            (4, "deployed".into(), Some(2), api(3)),
        ]
    );
    let missing = rollback(&["--to", "9"]);
    assert_eq!(missing.status.code(), Some(2), "{}", said(&missing));
    assert!(text(&missing.stderr).contains("staging has no release 9 (it keeps: 1, 2, 3, 4)"), "{}", said(&missing));

    // `history` lists them from the cluster, newest first; `--history-limit` drops the oldest.
    let history = cluster.xtask("success", "", &["--format", "json", "deploy", "history", "--env", "staging"]);
    assert!(history.status.success(), "{}", said(&history));
    let listed: serde_json::Value = serde_json::from_slice(&history.stdout).expect("JSON");
    let ids: Vec<u64> =
        listed["releases"].as_array().expect("releases").iter().map(|r| r["id"].as_u64().expect("id")).collect();
    assert_eq!(ids, [4, 3, 2, 1]);
    assert!(deploy(1, &["--history-limit", "2"]).status.success());
    let kept: Vec<u64> = cluster.releases("platform-staging").iter().map(|r| r.0).collect();
    assert_eq!(kept, [4, 5], "the two newest ConfigMaps are kept, the rest deleted");
    assert!(cluster.calls().iter().any(|c| c[..2] == ["delete", "configmap"]), "{:?}", cluster.calls());
}

#[test]
fn a_crash_loop_is_caught_before_the_timeout_and_rolled_back() {
    let cluster = Cluster::new();
    let (v1, v2) = (manifest(cluster.state.path(), 1, true), manifest(cluster.state.path(), 2, true));
    let bad = digest(2, "api");
    assert!(
        cluster
            .xtask(
                "crash-loop",
                &bad,
                &["deploy", "--env", "staging", "--images", v1.to_str().expect("utf-8"), "--no-verify"]
            )
            .status
            .success()
    );
    let started = std::time::Instant::now();
    let out = cluster.xtask(
        "crash-loop",
        &bad,
        &["deploy", "--env", "staging", "--images", v2.to_str().expect("utf-8"), "--timeout", "2m", "--no-verify"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "did not wait for the 120 s timeout");
    let err = text(&out.stderr);
    assert!(err.contains("api: CrashLoopBackOff (pod api-"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    let running = cluster.object("Deployment", "platform-staging", "api").expect("api").to_string();
    assert!(running.contains(&digest(1, "api")), "{running}");
}

/// Prod gets exactly the digests staging runs, read from staging's namespace in the cluster,
/// never from a build manifest; a promote from an environment that runs nothing, or another
/// commit than the one asked for, changes nothing.
#[test]
fn promote_deploys_to_prod_exactly_what_staging_runs() {
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let staged = cluster.deploy_staging(&v1);
    assert!(staged.status.success(), "{}", said(&staged));
    let record = |namespace: &str| -> serde_json::Value {
        let cm = cluster.object("ConfigMap", namespace, "xtask-release-1").expect("release 1");
        serde_json::from_str(cm["data"]["release.json"].as_str().expect("record")).expect("JSON")
    };
    let revision = record("platform-staging")["commit"].as_str().expect("commit").to_string();

    let promote =
        ["deploy", "promote", "--from", "staging", "--to", "prod", "--yes", "--confirm", "prod", "--no-verify"];
    let before = cluster.applied().len();
    let wrong = cluster.xtask("success", "", &[&promote[..], &["--commit", "0000000"]].concat());
    assert_eq!(wrong.status.code(), Some(2), "{}", said(&wrong));
    assert!(text(&wrong.stderr).contains(&format!("staging runs commit {revision}, not 0000000")), "{}", said(&wrong));
    let nothing =
        cluster.xtask("success", "", &["deploy", "promote", "--from", "dev", "--to", "prod", "--yes", "--no-verify"]);
    assert_eq!(nothing.status.code(), Some(2), "{}", said(&nothing));
    assert!(text(&nothing.stderr).contains("dev runs nothing to promote"), "{}", said(&nothing));
    assert_eq!(cluster.applied().len(), before, "a refused promote applies nothing");

    let out = cluster.xtask("success", "", &[&promote[..], &["--commit", &revision[..7]]].concat());
    assert!(out.status.success(), "{}", said(&out));
    let applied = cluster.applied();
    // The namespace first, then the workloads.
    let prod = &applied[before + 1];
    assert!(prod.contains("\"namespace\": \"platform-prod\""), "the prod render was applied");
    for service in ["api", "gateway", "worker"] {
        let running = cluster.object("Deployment", "platform-prod", service).expect("in prod").to_string();
        assert!(running.contains(&format!("127.0.0.1:5000/{service}@{}", digest(1, service))), "{service}: {running}");
    }
    assert_eq!(record("platform-prod")["commit"], revision.as_str(), "prod records staging's commit");
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
        vec!["deploy", "--env", "prod", "--images", images, "--no-verify"],
        vec!["deploy", "--env", "prod", "--images", images, "--yes", "--no-verify"],
        vec!["deploy", "--env", "prod", "--images", images, "--yes", "--confirm", "staging", "--no-verify"],
    ] {
        let out = cluster.xtask("success", "", &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", said(&out));
        let err = text(&out.stderr);
        assert!(err.contains("nothing was applied"), "{err}");
    }
    assert!(cluster.calls().iter().all(|c| c[0] != "apply"), "{:?}", cluster.calls());
    let confirmed = cluster.xtask(
        "success",
        "",
        &["deploy", "--env", "prod", "--images", images, "--yes", "--confirm", "prod", "--no-verify"],
    );
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

/// Verification on a cluster: the edge's real load, a real Prometheus; a version that answers
/// 500 to a fifth of its requests is caught, marked failed and rolled back by itself, and a
/// failed release is never promoted.
#[test]
fn a_cluster_release_is_verified_and_a_bad_one_rolled_back_by_itself() {
    let bad = digest(2, "api");
    let mut cluster = Cluster::serving(Some(&bad));
    let prometheus = Prometheus::start(cluster.forward_port);
    let (v1, v2) = (manifest(cluster.state.path(), 1, true), manifest(cluster.state.path(), 2, true));
    let deploy = |cluster: &Cluster, m: &Path| {
        let args = ["deploy", "--env", "staging", "--images", m.to_str().expect("utf-8"), "--window", "6s"];
        cluster.xtask("success", "", &args)
    };

    // Before anything: no release to verify; without the SLO file's variables, refused first.
    let early = cluster.xtask("success", "", &["deploy", "verify", "--env", "staging"]);
    assert_eq!(early.status.code(), Some(2), "{}", said(&early));
    assert!(text(&early.stderr).contains("the environment sets no GATEWAY_PORT"), "{}", said(&early));
    let unset = deploy(&cluster, &v1);
    assert_eq!(unset.status.code(), Some(2), "{}", said(&unset));
    assert!(cluster.applied().is_empty(), "a broken SLO setup applies nothing");
    cluster.vars = vec![
        ("GATEWAY_PORT".into(), cluster.forward_port.to_string()),
        ("PROMETHEUS_PORT".into(), prometheus.port.to_string()),
    ];
    let early = cluster.xtask("success", "", &["deploy", "verify", "--env", "staging"]);
    assert_eq!(early.status.code(), Some(2), "{}", said(&early));
    assert!(text(&early.stderr).contains("staging has no release to verify"), "{}", said(&early));

    let good = deploy(&cluster, &v1);
    assert!(good.status.success(), "{}", said(&good));
    assert!(text(&good.stderr).contains("release 1 of staging verified"), "{}", said(&good));

    let caught = deploy(&cluster, &v2);
    assert_eq!(caught.status.code(), Some(1), "{}", said(&caught));
    let err = text(&caught.stderr);
    // Every fifth request failed: Prometheus' increase() over the window says about 0.2.
    let observed: f64 = err
        .split("release 2 of staging breached its SLOs: SLO availability (error_ratio): observed ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the breach is named: {err}"));
    assert!((0.1..0.3).contains(&observed), "{observed}: {err}");
    assert!(err.contains("against a limit of 0.0100; rolled back to release 1 (now release 3)"), "{err}");
    assert!(cluster.served.bad.load(Ordering::SeqCst) > 0, "the bad version took traffic");
    let running = cluster.object("Deployment", "platform-staging", "api").expect("api").to_string();
    assert!(running.contains(&digest(1, "api")), "v1 runs again: {running}");
    let api = |version: u8| format!("127.0.0.1:5000/api@{}", digest(version, "api"));
    assert_eq!(
        cluster.releases("platform-staging"),
        [
            (1, "verified".into(), None, api(1)),
            (2, "failed".into(), None, api(2)),
            (3, "deployed".into(), Some(1), api(1)),
        ]
    );

    // Put the bad one back and verify it without a rollback: it stays, failed, and is not promoted.
    let back = cluster.xtask("success", "", &["deploy", "rollback", "--env", "staging", "--to", "2"]);
    assert!(back.status.success(), "{}", said(&back));
    let kept =
        cluster.xtask("success", "", &["deploy", "verify", "--env", "staging", "--window", "6s", "--no-rollback"]);
    assert_eq!(kept.status.code(), Some(1), "{}", said(&kept));
    assert!(text(&kept.stderr).contains("left running (--no-rollback)"), "{}", said(&kept));
    let before = cluster.applied().len();
    let promote = cluster.xtask(
        "success",
        "",
        &["deploy", "promote", "--from", "staging", "--to", "prod", "--yes", "--confirm", "prod", "--no-verify"],
    );
    assert_eq!(promote.status.code(), Some(2), "{}", said(&promote));
    assert!(text(&promote.stderr).contains("staging's release 4 failed its verification"), "{}", said(&promote));
    assert_eq!(cluster.applied().len(), before, "nothing was promoted");
}

#[test]
fn dry_run_stops_after_the_diff() {
    let cluster = Cluster::fresh(None);
    let (v1, v2) = (manifest(cluster.state.path(), 1, true), manifest(cluster.state.path(), 2, true));
    let dry = |m: &Path, json: bool| {
        let mut args = vec!["--dry-run"];
        if json {
            args.extend(["--format", "json"]);
        }
        args.extend(["deploy", "--env", "staging", "--images", m.to_str().expect("utf-8"), "--no-verify"]);
        cluster.xtask("success", "", &args)
    };
    // A fresh cluster: no namespace yet, so nothing to diff against; the whole render is new.
    let fresh = dry(&v1, false);
    assert!(fresh.status.success(), "{}", said(&fresh));
    assert!(text(&fresh.stdout).contains("namespace platform-staging does not exist yet"), "{}", said(&fresh));
    let verbs: Vec<String> = cluster.calls().iter().map(|c| c[0].clone()).collect();
    // The context checked, the overlay, the generated overlay that pins it, the namespace looked up.
    assert_eq!(verbs, ["config", "kustomize", "kustomize", "get"]);

    cluster.seed_secrets("platform-staging");
    let deployed = cluster.deploy_staging(&v1);
    assert!(deployed.status.success(), "{}", said(&deployed));
    let before = cluster.calls().len();
    let out = dry(&v2, false);
    assert!(out.status.success(), "{}", said(&out));
    let new_api = format!("\"image\": \"127.0.0.1:5000/api@{}\"", digest(2, "api"));
    let added = |diff: &str| diff.lines().any(|l| l.starts_with('+') && l.contains(&new_api));
    assert!(added(&text(&out.stdout)), "the diff is shown: {}", said(&out));
    let verbs: Vec<String> = cluster.calls()[before..].iter().map(|c| c[0].clone()).collect();
    // The namespace, the diff, then the Secrets it reads (names and keys).
    assert_eq!(verbs, ["config", "kustomize", "kustomize", "get", "diff", "get"]);

    // The same plan as JSON on stdout: the pinned images, the diff and the render.
    let json = dry(&v2, true);
    assert!(json.status.success(), "{}", said(&json));
    let plan: serde_json::Value =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", said(&json)));
    assert_eq!((plan["target"].as_str(), plan["env"].as_str()), (Some("k8s"), Some("staging")), "{plan:#}");
    assert_eq!((plan["changes"].as_bool(), plan["namespace_exists"].as_bool()), (Some(true), Some(true)));
    assert!(plan["diff"].as_str().is_some_and(added), "{plan:#}");
    assert!(plan["images"]["api"].as_str().is_some_and(|i| i.contains("@sha256:")), "{plan:#}");
    assert!(plan["render"].as_str().is_some_and(|r| r.contains("kind: Deployment")), "{plan:#}");
    let applies = cluster.calls()[before..].iter().filter(|c| c[0] == "apply").count();
    assert_eq!(applies, 0, "a dry run applies nothing");
}

/// The kubectl stand-in, run directly: what the API server does with a file, in `state`.
fn standin(state: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    std::process::Command::new(root().join("tests/support/kubectl-standin"))
        .args(args)
        .env("STANDIN_DIR", state)
        .envs(env.iter().copied())
        .output()
        .expect("the stand-in runs")
}

/// A first deploy into a fresh cluster: without its Namespace the API server refuses every
/// namespaced object; the render carries the Namespace (Pod Security `restricted`, a quota and
/// default limits), deploy applies it first, then has the server dry-run the rest.
#[test]
fn a_fresh_cluster_gets_the_namespace_first_then_a_server_dry_run_then_the_release() {
    let cluster = Cluster::fresh(None);
    let v1 = manifest(cluster.state.path(), 1, true);

    // Without the fix: a workload sent to a namespace nobody created.
    let bare = tempfile::tempdir().expect("tempdir");
    let file = bare.path().join("cm.json");
    std::fs::write(
        &file,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"platform-staging"}}"#,
    )
    .expect("write");
    let refused = standin(bare.path(), &[], &["apply", "--server-side", "-f", file.to_str().expect("utf-8")]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains(r#"namespaces "platform-staging" not found"#), "{}", text(&refused.stderr));

    let deploy = || cluster.deploy_staging(&v1);
    // The Secrets the workloads read are checked (names and keys) before they are applied: in a
    // fresh namespace there are none yet.
    let missing = deploy();
    assert_eq!(missing.status.code(), Some(2), "{}", said(&missing));
    let err = text(&missing.stderr);
    assert!(
        err.contains("Secret api-database (key DATABASE_URL) does not exist in platform-staging, needed by Deployment/api: create it (`kubectl -n platform-staging create secret generic api-database"),
        "{err}"
    );
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "one line: {err}");
    assert!(cluster.object("Deployment", "platform-staging", "api").is_none(), "no workload was applied");
    let reads: Vec<Vec<String>> = cluster.calls().into_iter().filter(|c| c[..2] == ["get", "secrets"]).collect();
    assert!(
        !reads.is_empty()
            && reads
                .iter()
                .all(|c| c.iter().any(|o| o.starts_with("go-template=")) && !c.contains(&"json".to_string())),
        "names and keys only: {reads:?}"
    );
    cluster.seed_secrets("platform-staging");

    let out = deploy();
    assert!(out.status.success(), "{}", said(&out));
    let applies: Vec<Vec<String>> = cluster.calls().into_iter().filter(|c| c[0] == "apply").collect();
    assert!(applies[0].iter().any(|f| f.ends_with("namespaces.json")), "{applies:?}");
    assert!(applies[1].contains(&"--dry-run=server".to_string()), "{applies:?}");
    assert!(applies[2].iter().any(|f| f.ends_with("workloads.json")), "{applies:?}");
    assert!(applies.iter().all(|a| !a.contains(&"--force-conflicts".to_string())), "never forced: {applies:?}");
    let ns = cluster.object("Namespace", "", "platform-staging").expect("created");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted", "{ns}");
    for kind in ["ResourceQuota", "LimitRange"] {
        assert!(cluster.object(kind, "platform-staging", "platform").is_some(), "{kind}");
    }
}

/// Where Postgres and Redis are is the overlay's to say: dev runs them in its namespace
/// (StatefulSets with volumes, pinned by digest in the overlay, their own Secret checked first,
/// reachable only from the services that need them); staging reaches managed endpoints at the
/// CIDR and port its overlay names, and runs no database.
#[test]
fn dev_runs_postgres_and_redis_in_its_namespace_and_staging_reaches_its_managed_endpoints() {
    let cluster = Cluster::fresh(None);
    let v1 = manifest(cluster.state.path(), 1, true);
    cluster.seed_secrets("platform-dev");
    let deploy_dev = || {
        cluster.xtask(
            "success",
            "",
            &["deploy", "--env", "dev", "--images", v1.to_str().expect("utf-8"), "--no-verify"],
        )
    };
    let missing = deploy_dev();
    assert_eq!(missing.status.code(), Some(2), "{}", said(&missing));
    assert!(
        text(&missing.stderr).contains(
            "Secret postgres (key POSTGRES_PASSWORD) does not exist in platform-dev, needed by StatefulSet/postgres"
        ),
        "{}",
        said(&missing)
    );
    assert!(cluster.object("StatefulSet", "platform-dev", "postgres").is_none(), "nothing applied");
    cluster.seed("platform-dev", &[("postgres", &["POSTGRES_PASSWORD"])]);

    let out = deploy_dev();
    assert!(out.status.success(), "{}", said(&out));
    for (name, image, port) in [
        (
            "postgres",
            "docker.io/library/postgres@sha256:efedf3595f1d6f415c08568ba171029bf54052e754cc9f030e3f2412b21f3d67",
            5432,
        ),
        (
            "redis",
            "docker.io/library/redis@sha256:c6eabf748fc7a61dbb5a705c78bcf3d6377b1127a97d0ce965c11c44ba46896f",
            6379,
        ),
    ] {
        let set = cluster.object("StatefulSet", "platform-dev", name).unwrap_or_else(|| panic!("{name} applied"));
        assert_eq!(set["spec"]["template"]["spec"]["containers"][0]["image"], image, "{set}");
        assert_eq!(set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data", "{set}");
        let egress = cluster.object("NetworkPolicy", "platform-dev", &format!("egress-{name}")).expect("egress");
        assert_eq!(
            egress["spec"]["podSelector"]["matchExpressions"][0]["values"],
            serde_json::json!(["api", "worker"])
        );
        assert_eq!(egress["spec"]["egress"][0]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], name);
        assert_eq!(egress["spec"]["egress"][0]["ports"][0]["port"], port, "{egress}");
        let admits = cluster.object("NetworkPolicy", "platform-dev", name).expect("its own policy");
        assert_eq!(
            admits["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"],
            serde_json::json!(["api", "worker"])
        );
    }

    cluster.seed_secrets("platform-staging");
    let staged = cluster.deploy_staging(&v1);
    assert!(staged.status.success(), "{}", said(&staged));
    assert!(cluster.object("StatefulSet", "platform-staging", "postgres").is_none(), "staging runs no database");
    for (name, cidr, port) in [("postgres", "10.40.16.0/28", 5432), ("redis", "10.40.17.0/28", 6379)] {
        let egress = cluster.object("NetworkPolicy", "platform-staging", &format!("egress-{name}")).expect("egress");
        assert_eq!(egress["metadata"]["annotations"]["xtask/egress-to"], name, "{egress}");
        assert_eq!(egress["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"], cidr, "{egress}");
        assert_eq!(egress["spec"]["egress"][0]["ports"][0]["port"], port, "{egress}");
    }
}

/// A quota the render does not know (a cluster admin's) is enforced when pods are created, not
/// when the Deployment is applied: the server dry run admits the release, and the controller
/// reports `ReplicaFailure`. Deploy names the refusal as soon as it is reported, instead of
/// waiting out the rollout timeout.
#[test]
fn pods_a_quota_refuses_fail_the_rollout_at_once_with_the_servers_message() {
    let cluster = Cluster::new();
    let quota = serde_json::json!({"apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "team-budget", "namespace": "platform-staging"}, "spec": {"hard": {"limits.cpu": "2"}}});
    cluster.seed_objects("platform-staging", vec![quota]);
    let v1 = manifest(cluster.state.path(), 1, true);
    let out = cluster.xtask(
        "success",
        "",
        &["deploy", "--env", "staging", "--images", v1.to_str().expect("utf-8"), "--timeout", "5m", "--no-verify"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let err = text(&out.stderr);
    // api and gateway (2 pods of 500m each) take the 2 cores; the worker's first pod is refused.
    assert!(
        err.contains(r#"worker: its pods are refused (FailedCreate): pods "worker-7d4b9c-x0" is forbidden: exceeded quota: team-budget, requested: limits.cpu=500m, used: limits.cpu=2, limited: limits.cpu=2"#),
        "{err}"
    );
    assert!(!err.contains("rollout did not finish"), "named at once, not at the timeout: {err}");
    let applies: Vec<Vec<String>> = cluster.calls().into_iter().filter(|c| c[0] == "apply").collect();
    assert!(
        applies.iter().any(|a| a.contains(&"--dry-run=server".to_string())),
        "the dry run admitted it: {applies:?}"
    );
}

/// Pod Security `restricted`: a pod template without the restricted settings is admitted with a
/// warning and its pods are refused (it never turns ready); our render's pods all pass, so the
/// server dry run a deploy runs says nothing.
#[test]
fn pod_security_restricted_refuses_what_our_render_never_sends() {
    let state = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, doc: serde_json::Value| {
        let file = state.path().join(name);
        std::fs::write(&file, doc.to_string()).expect("write");
        file.display().to_string()
    };
    let ns = write(
        "ns.json",
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop",
        "labels": {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}}}),
    );
    assert!(standin(state.path(), &[], &["apply", "--server-side", "-f", &ns]).status.success());
    let loose = write(
        "web.json",
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web@sha256:00"}]}}}}),
    );
    let dry = standin(state.path(), &[], &["apply", "--server-side", "--dry-run=server", "-f", &loose]);
    assert!(dry.status.success(), "a warning, not a refusal, for the Deployment itself");
    let warning = text(&dry.stderr);
    assert!(warning.contains(r#"would violate PodSecurity "restricted:latest""#), "{warning}");
    assert!(warning.contains("allowPrivilegeEscalation != false") && warning.contains("seccompProfile"), "{warning}");
    assert!(standin(state.path(), &[], &["apply", "--server-side", "-f", &loose]).status.success());
    let rollout = standin(state.path(), &[], &["rollout", "status", "deployment/web", "-n", "shop"]);
    assert_eq!(rollout.status.code(), Some(1), "its pods are refused, so it never rolls out");

    // Our render into the same kind of namespace: no warning at all.
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let out = cluster.xtask(
        "success",
        "",
        &[
            "deploy",
            "--env",
            "prod",
            "--images",
            v1.to_str().expect("utf-8"),
            "--no-verify",
            "--yes",
            "--confirm",
            "prod",
        ],
    );
    assert!(out.status.success(), "{}", said(&out));
    assert!(!said(&out).contains("PodSecurity"), "{}", said(&out));
}

/// The HPA owns a Deployment's replicas. A render that sets them either conflicts with the HPA's
/// manager or, forced, resets a scaled-up Deployment; ours sets none, so a deploy in the middle of
/// a peak leaves the HPA's count alone.
#[test]
fn a_deploy_leaves_the_replica_count_to_the_hpa() {
    let state = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, doc: serde_json::Value| {
        let file = state.path().join(name);
        std::fs::write(&file, doc.to_string()).expect("write");
        file.display().to_string()
    };
    let deployment = |replicas: Option<u32>| {
        let mut spec =
            serde_json::json!({"template": {"spec": {"containers": [{"name": "web", "image": "web@sha256:00"}]}}});
        if let Some(r) = replicas {
            spec["replicas"] = r.into();
        }
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    };
    let hpa = serde_json::json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 3, "maxReplicas": 10}});
    let peak = [("STANDIN_SCALED", "web=7")];
    let apply = |file: &str, force: bool| {
        let mut args = vec!["apply", "--server-side", "--field-manager=xtask", "-f", file];
        if force {
            args.push("--force-conflicts");
        }
        standin(state.path(), &peak, &args)
    };
    let first =
        write("first.json", serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [deployment(None), hpa]}));
    assert!(apply(&first, false).status.success());
    let replicas = || -> u64 {
        let out = standin(state.path(), &[], &["get", "deployment", "web", "-n", "default", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")["spec"]["replicas"]
            .as_u64()
            .expect("set")
    };
    assert_eq!(replicas(), 7, "the HPA scaled it for the peak");

    // Without the fix: replicas in the render.
    let pinned = write("pinned.json", deployment(Some(3)));
    let conflict = apply(&pinned, false);
    assert_eq!(conflict.status.code(), Some(1));
    assert!(
        text(&conflict.stderr).contains(r#"conflict with "kube-controller-manager" using apps/v1: .spec.replicas"#),
        "{}",
        text(&conflict.stderr)
    );
    assert!(apply(&pinned, true).status.success());
    assert_eq!(replicas(), 3, "--force-conflicts resets the peak's count");

    // With it: a render without replicas keeps whatever the HPA set.
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let v2 = manifest(cluster.state.path(), 2, true);
    let deploy = |m: &Path, scaled: &str| {
        common::xtask_command()
            .args(["deploy", "--env", "staging", "--images", m.to_str().expect("utf-8"), "--no-verify"])
            .env("KUBECTL", root().join("tests/support/kubectl-standin"))
            .env("STANDIN_DIR", cluster.state.path())
            .env("STANDIN_FORWARD_PORT", cluster.forward_port.to_string())
            .env("STANDIN_REAL_KUBECTL", "kubectl")
            .env("STANDIN_SCALED", scaled)
            .env("STANDIN_CONTEXT", "platform-staging")
            .env("STANDIN_CONTEXTS", "platform-staging")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("xtask runs")
    };
    let out = deploy(&v1, "api=4");
    assert!(out.status.success(), "{}", said(&out));
    let api = || cluster.object("Deployment", "platform-staging", "api").expect("api")["spec"]["replicas"].as_u64();
    assert_eq!(api(), Some(4), "the HPA's count");
    let again = deploy(&v2, "");
    assert!(again.status.success(), "{}", said(&again));
    assert_eq!(api(), Some(4), "a new release keeps the HPA's count");
    assert!(
        cluster.object("Deployment", "platform-staging", "api").expect("api").to_string().contains(&digest(2, "api"))
    );
}

/// Serves `body` at `/images.json` (404 elsewhere): a release manifest published at a URL.
fn file_server(body: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let (status, text) = if request.starts_with("GET /images.json ") {
                ("200 OK", body.as_str())
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    port
}

/// Pushes a minimal image (a config, no layers) as `registry/service:tag`; returns its digest.
fn push_tiny_image(registry: &str, service: &str, tag: &str) -> String {
    use sha2::Digest;
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let blob = |bytes: &[u8]| {
        let hex = format!("{:x}", sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).expect("blob");
        format!("sha256:{hex}")
    };
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Labels": {"service": service}},
        "rootfs": {"type": "layers", "diff_ids": []}})
    .to_string();
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config.as_bytes()), "size": config.len()},
        "layers": []})
    .to_string();
    let digest = blob(manifest.as_bytes());
    std::fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest, "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "v"}}]});
    std::fs::write(dir.path().join("index.json"), index.to_string()).expect("index");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v", dir.path().display()))
        .arg(format!("docker://{registry}/{service}:{tag}"))
        .output()
        .expect("skopeo runs");
    assert!(out.status.success(), "skopeo copy: {}", text(&out.stderr));
    digest
}

/// The release manifest reaches a deploy job as a file or a URL; with none at all, the registry
/// itself says which digests this commit's images have. A source that cannot give every service
/// a digest deploys nothing.
#[test]
fn images_come_from_a_manifest_url_or_from_the_registry_by_commit() {
    require_tool("skopeo");
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let deploy = |source: &[&str]| {
        let args = [&["deploy", "--env", "staging", "--no-verify", "--timeout", "20"][..], source].concat();
        cluster.xtask("success", "", &args)
    };
    let running = |service: &str| cluster.object("Deployment", "platform-staging", service).expect("runs").to_string();

    // A URL: fetched, then deployed like the file.
    let port = file_server(std::fs::read_to_string(&v1).expect("manifest"));
    let url = deploy(&["--images", &format!("http://127.0.0.1:{port}/images.json")]);
    assert!(url.status.success(), "{}", said(&url));
    assert!(running("api").contains(&digest(1, "api")), "{}", running("api"));
    let missing = deploy(&["--images", &format!("http://127.0.0.1:{port}/nothing.json")]);
    assert_eq!(missing.status.code(), Some(2), "{}", said(&missing));
    assert!(text(&missing.stderr).contains("the build manifest cannot be fetched"), "{}", said(&missing));

    // The registry: each service's image tagged with this checkout's commit, by digest.
    let registry = Registry::start();
    let host = format!("127.0.0.1:{}", registry.port);
    let head = std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(root()).output().expect("git");
    let head = text(&head.stdout);
    let tag = &head.trim()[..12];
    let before = cluster.applied().len();
    let api = push_tiny_image(&host, "api", tag);
    let partial = deploy(&["--registry", &host]);
    assert_eq!(partial.status.code(), Some(2), "{}", said(&partial));
    assert!(
        text(&partial.stderr).contains(&format!("{host}/gateway:{tag} is not in the registry")),
        "{}",
        said(&partial)
    );
    assert_eq!(cluster.applied().len(), before, "nothing was applied");
    let pushed: Vec<(String, String)> = ["gateway", "worker"]
        .iter()
        .map(|s| (s.to_string(), push_tiny_image(&host, s, tag)))
        .chain([("api".to_string(), api)])
        .collect();
    let out = deploy(&["--registry", &host]);
    assert!(out.status.success(), "{}", said(&out));
    for (service, digest) in &pushed {
        assert!(running(service).contains(&format!("{host}/{service}@{digest}")), "{service}: {}", running(service));
    }
    let releases = cluster.releases("platform-staging");
    assert_eq!(releases.last().map(|r| r.3.clone()), Some(format!("{host}/api@{}", pushed[2].1)));
}

/// Each environment names its cluster's kube context (`cluster.toml` beside its overlay): a
/// deploy while another context is current, or with `--context` naming another, changes nothing;
/// with the right one, every kubectl call names it.
#[test]
fn a_deploy_runs_only_against_the_context_its_environment_names() {
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let images = v1.to_str().expect("utf-8");
    let deploy = ["deploy", "--env", "prod", "--images", images, "--no-verify", "--yes", "--confirm", "prod"];
    let wrong = cluster.xtask_in("platform-staging", "success", "", &deploy);
    assert_eq!(wrong.status.code(), Some(2), "{}", said(&wrong));
    let err = text(&wrong.stderr);
    assert!(
        err.contains("the current kube context is `platform-staging`, but prod deploys to `platform-prod` (infra/k8s/overlays/prod/cluster.toml); run `kubectl config use-context platform-prod` or pass --context platform-prod"),
        "{err}"
    );
    let unset = cluster.xtask_in("", "success", "", &deploy);
    assert_eq!(unset.status.code(), Some(2), "{}", said(&unset));
    assert!(text(&unset.stderr).contains("the current kube context is not set"), "{}", said(&unset));
    let mistyped =
        cluster.xtask_in("platform-prod", "success", "", &[&deploy[..], &["--context", "platform-staging"]].concat());
    assert_eq!(mistyped.status.code(), Some(2), "{}", said(&mistyped));
    assert!(text(&mistyped.stderr).contains("--context platform-staging, but prod deploys to context `platform-prod`"));
    assert!(cluster.calls().iter().all(|c| c[0] != "apply"), "nothing was applied: {:?}", cluster.calls());

    // Chosen explicitly, whatever is current: every call to the cluster names the context.
    let chosen =
        cluster.xtask_in("platform-staging", "success", "", &[&deploy[..], &["--context", "platform-prod"]].concat());
    assert!(chosen.status.success(), "{}", said(&chosen));
    let calls = cluster.calls();
    let to_cluster: Vec<&Vec<String>> =
        calls.iter().filter(|c| c[0] != "kustomize" && c[..2] != ["config", "current-context"]).collect();
    assert!(!to_cluster.is_empty());
    for c in to_cluster {
        assert!(c.windows(2).any(|w| w == ["--context", "platform-prod"]), "{c:?}");
    }
}

/// `date -u` in the Kubernetes MicroTime form, `ago` before now.
fn micro_time(ago: &str) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("now - {ago}"), "+%Y-%m-%dT%H:%M:%S.000000Z"])
        .output()
        .expect("date");
    text(&out.stdout).trim().to_string()
}

/// The deploy lock is a Lease in the environment's namespace: a second deploy while another
/// holds it is refused naming the holder and when it runs out; `unlock --force` opens it; a
/// lease whose holder stopped renewing it is taken over; a deploy releases its own.
#[test]
fn a_held_deploy_lock_in_the_cluster_refuses_a_second_deploy() {
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let deploy = || cluster.deploy_staging(&v1);
    let lease = |holder: &str, renewed: &str| {
        let file = cluster.state.path().join("someone-elses-lease.json");
        let doc = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "xtask-deploy", "namespace": "platform-staging"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 30, "renewTime": renewed}});
        std::fs::write(&file, doc.to_string()).expect("lease");
        let out = standin(cluster.state.path(), &[], &["create", "-f", file.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    let held = || cluster.object("Lease", "platform-staging", "xtask-deploy");

    lease("github-actions team/repo run 41 attempt 1", &micro_time("1 second"));
    let refused = deploy();
    assert_eq!(refused.status.code(), Some(2), "{}", said(&refused));
    let err = text(&refused.stderr);
    assert!(
        err.contains("staging is being deployed by github-actions team/repo run 41 attempt 1 (Lease xtask-deploy in platform-staging, held until "),
        "{err}"
    );
    assert!(err.contains("cargo xtask deploy unlock --env staging --force"), "{err}");
    assert!(cluster.object("Deployment", "platform-staging", "api").is_none(), "nothing of the release was applied");

    let unlock = |force: bool| {
        let mut args = vec!["deploy", "unlock", "--env", "staging"];
        if force {
            args.push("--force");
        }
        cluster.xtask("success", "", &args)
    };
    let careful = unlock(false);
    assert_eq!(careful.status.code(), Some(2), "{}", said(&careful));
    assert!(text(&careful.stderr).contains("held by github-actions team/repo run 41"), "{}", said(&careful));
    assert!(held().is_some(), "still locked");
    let forced = unlock(true);
    assert!(forced.status.success(), "{}", said(&forced));
    assert!(held().is_none(), "unlocked");

    let out = deploy();
    assert!(out.status.success(), "{}", said(&out));
    assert!(text(&out.stderr).contains("took the deploy lock of staging"), "{}", said(&out));
    assert!(held().is_none(), "a deploy releases its own lock");
    assert!(cluster.calls().iter().any(|c| c[..2] == ["create", "-f"] && c.iter().any(|a| a.ends_with("lease.json"))));

    // A holder that stopped renewing (a killed runner): its lease runs out and is taken over.
    lease("alice@laptop pid 7", &micro_time("1 hour"));
    let again = deploy();
    assert!(again.status.success(), "{}", said(&again));
    assert!(text(&again.stderr).contains("held by alice@laptop pid 7 expired at"), "{}", said(&again));
    assert!(held().is_none());
}

/// A release applies the environment's ApplySet with `--prune`: what an earlier release applied
/// and this one no longer renders is deleted (left alone without pruning), and what nobody
/// applied through the set (someone else's object) stays.
#[test]
fn a_release_prunes_what_it_no_longer_renders() {
    let cluster = Cluster::new();
    let v1 = manifest(cluster.state.path(), 1, true);
    let deploy = || cluster.deploy_staging(&v1);
    assert!(deploy().status.success());
    // An earlier release's leftover (applied through the set) and someone else's object.
    let leftover = |name: &str| serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "platform-staging"}});
    let file = cluster.state.path().join("earlier.json");
    std::fs::write(
        &file,
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [leftover("retired-config")]}).to_string(),
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let set = ["apply", "--server-side", "--applyset=configmap/xtask-applyset", "-n", "platform-staging", "-f", path];
    let out = standin(cluster.state.path(), &[("KUBECTL_APPLYSET", "true")], &set);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(&file, leftover("someone-elses").to_string()).expect("write");
    assert!(standin(cluster.state.path(), &[], &["apply", "--server-side", "-f", path]).status.success());
    assert!(cluster.object("ConfigMap", "platform-staging", "retired-config").is_some(), "without pruning it lingers");

    let out = deploy();
    assert!(out.status.success(), "{}", said(&out));
    assert!(text(&out.stderr).contains("configmap/retired-config pruned"), "{}", said(&out));
    assert!(cluster.object("ConfigMap", "platform-staging", "retired-config").is_none());
    assert!(cluster.object("ConfigMap", "platform-staging", "someone-elses").is_some(), "not the set's: kept");
    assert!(cluster.object("ConfigMap", "platform-staging", "xtask-release-1").is_some(), "release records are kept");
    assert!(cluster.object("Deployment", "platform-staging", "api").is_some());
}

/// `deploy access` writes what a runner needs from the environment's secrets, where ssh and
/// kubectl look, private, never printed; a secret the target needs and lacks is exit 2.
#[test]
fn deploy_access_writes_the_runners_ssh_key_known_hosts_and_kubeconfig_from_secrets() {
    let home = tempfile::tempdir().expect("tempdir");
    let access = |target: &str, vars: &[(&str, &str)]| {
        common::xtask_command()
            .args(["deploy", "access", "--env", "prod", "--target", target])
            .env("HOME", home.path())
            .env_remove("KUBECONFIG")
            .env_remove("DEPLOY_SSH_KEY")
            .env_remove("DEPLOY_SSH_KNOWN_HOSTS")
            .env_remove("KUBECONFIG_DATA")
            .envs(vars.iter().copied())
            .output()
            .expect("xtask runs")
    };
    let host = [("DOCKER_HOST", "ssh://deploy@prod-host:2222")];
    let missing = access("docker", &host);
    assert_eq!(missing.status.code(), Some(2), "{}", said(&missing));
    assert!(text(&missing.stderr).contains("DEPLOY_SSH_KEY is not set"), "{}", said(&missing));
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\ntest-only-not-a-key\n-----END OPENSSH PRIVATE KEY-----";
    let known = "prod-host ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE-test-only";
    let vars = [host[0], ("DEPLOY_SSH_KEY", key), ("DEPLOY_SSH_KNOWN_HOSTS", known)];
    let out = access("docker", &vars);
    assert!(out.status.success(), "{}", said(&out));
    assert!(!said(&out).contains("test-only-not-a-key"), "the key is never printed");
    use std::os::unix::fs::PermissionsExt;
    let ssh = home.path().join(".ssh");
    let mode = |p: &Path| std::fs::metadata(p).expect("written").permissions().mode() & 0o777;
    assert_eq!(std::fs::read_to_string(ssh.join("xtask-deploy-key")).expect("key").trim(), key);
    assert_eq!(mode(&ssh.join("xtask-deploy-key")), 0o600);
    assert!(std::fs::read_to_string(ssh.join("known_hosts")).expect("hosts").contains(known));
    let config = std::fs::read_to_string(ssh.join("config")).expect("config");
    for line in
        ["Host prod-host", "  User deploy", "  Port 2222", "  StrictHostKeyChecking yes", "  IdentitiesOnly yes"]
    {
        assert!(config.contains(line), "{line}: {config}");
    }
    assert!(access("docker", &vars).status.success(), "again");
    assert_eq!(std::fs::read_to_string(ssh.join("config")).expect("config").matches("Host prod-host").count(), 1);

    let none = access("k8s", &[]);
    assert_eq!(none.status.code(), Some(2), "{}", said(&none));
    assert!(text(&none.stderr).contains("KUBECONFIG_DATA is not set"), "{}", said(&none));
    let kubeconfig = "apiVersion: v1\nkind: Config\ncurrent-context: platform-prod\n";
    let out = access("k8s", &[("KUBECONFIG_DATA", kubeconfig)]);
    assert!(out.status.success(), "{}", said(&out));
    let written = home.path().join(".kube/config");
    assert_eq!(std::fs::read_to_string(&written).expect("kubeconfig"), kubeconfig);
    assert_eq!(mode(&written), 0o600);
}
