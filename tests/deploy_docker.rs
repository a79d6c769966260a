//! `cargo xtask deploy --target docker` end to end, against the real Docker engine, real
//! Postgres and Redis containers and the real service images, with real load on loopback:
//!
//! 1. v1 of the API and gateway is deployed from nothing: dependencies, apps, the edge that
//!    holds the published port; the jobs API answers through it, and Prometheus scrapes both.
//! 2. A v2 of the API whose health check can never pass (it listens where the check does not
//!    look) is deployed while loadgen sends reads and writes through the edge: the deploy fails
//!    naming the API, v2 is removed, v1 keeps serving, and not one request fails.
//! 3. A good v2 is deployed under the same load: the API is switched to it, v1 is gone, and
//!    not one request fails (the switch happens while the load still runs; the test checks).
//! 4. `deploy rollback` puts v1 back the same way; `deploy status` shows what runs.
//! 5. `deploy verify` holds v1 to the SLO file under its verification load, reading the real
//!    Prometheus: verified, and the history says so.
//! 6. A v2 of the API that answers 500 to a fifth of its requests turns healthy and is
//!    switched, then fails its verification under load: the breach is named (objective,
//!    observed, limit), v1 is put back by itself, and the steady load outside saw no failure
//!    but the injected 500s.
//! 7. That release, put back on purpose (`rollback --to`) and verified without rollback, is
//!    refused by `deploy promote`; `rollback --to` the good release ends it.
//!
//! The environment is `staging` with the project, ports and compose files overridden by
//! DEPLOY_* and port variables, so it never meets a developer's deploy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use test_support::{eventually, free_port, http};

mod common;
use common::{docker, docker_ok, target_dir, text, xtask, xtask_command};

/// `docker build` of a Dockerfile given on stdin (no context); the image's ID.
fn derive_image(tag: &str, dockerfile: &str) -> String {
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), dockerfile.as_bytes()).expect("dockerfile");
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("docker build runs");
    assert!(out.status.success(), "docker build {tag}: {}", text(&out.stderr));
    docker_ok(&["image", "inspect", "--format", "{{.Id}}", tag])
}

/// A build manifest like `v1` with the API's image swapped for another.
fn manifest_with_api(v1: &serde_json::Value, dir: &Path, name: &str, tag: &str, id: &str) -> PathBuf {
    let mut m = v1.clone();
    m["images"]["api"]["image"] = tag.into();
    m["images"]["api"]["id"] = id.into();
    m["images"]["api"]["dirty"] = false.into();
    m["images"]["api"].as_object_mut().expect("record").remove("pushed");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&m).expect("JSON")).expect("manifest written");
    path
}

/// The deploy environment of this test; everything of its project is removed when dropped.
struct Env {
    project: String,
    vars: Vec<(&'static str, String)>,
    gateway_port: u16,
    prometheus_port: u16,
}

impl Env {
    fn new() -> Env {
        let project = format!("xtask-test-deploy-{}", std::process::id());
        let (gateway_port, prometheus_port) = (free_port(), free_port());
        let vars = vec![
            ("DEPLOY_PROJECT", project.clone()),
            ("DEPLOY_SERVICES", "postgres,redis,api,gateway,prometheus".into()),
            ("DEPLOY_PUBLISH", "gateway".into()),
            ("DEPLOY_COMPOSE_FILES", "docker-compose.yml,docker-compose.offline.yml".into()),
            ("GATEWAY_PORT", gateway_port.to_string()),
            ("POSTGRES_PORT", free_port().to_string()),
            ("REDIS_PORT", free_port().to_string()),
            ("PROMETHEUS_PORT", prometheus_port.to_string()),
            ("POSTGRES_PASSWORD", "test-only-password".into()),
            // Backups of this test's environments, in one place under the target dir: one before
            // every deploy that finds Postgres running, the newest 3 kept.
            ("DEPLOY_BACKUP_DIR", format!("target/xtask/test-backups-{}", std::process::id())),
            ("DEPLOY_BACKUP", "before-deploy".into()),
            ("DEPLOY_BACKUP_KEEP", "3".into()),
        ];
        Env { project, vars, gateway_port, prometheus_port }
    }

    /// One value from the environment's Postgres, as psql prints it.
    fn psql(&self, sql: &str) -> String {
        let container = format!("{}-postgres", self.project);
        let out = docker(&["exec", &container, "psql", "-U", "jobs", "-d", "jobs", "-Atc", sql]);
        assert!(out.status.success(), "psql: {}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }

    /// The jobs table's rows, as one checksum (count and an md5 of every row in order).
    fn jobs_checksum(&self) -> String {
        self.psql("SELECT count(*) || ':' || coalesce(md5(string_agg(id::text || status || attempts || payload::text, ',' ORDER BY seq)), '') FROM jobs")
    }

    fn backup_dir(&self) -> PathBuf {
        let dir = &self.vars.iter().find(|(k, _)| *k == "DEPLOY_BACKUP_DIR").expect("backup dir").1;
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
    }

    fn xtask(&self, args: &[&str]) -> Output {
        let mut cmd = xtask_command();
        cmd.args(args).envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.output().expect("xtask runs")
    }

    /// A deploy without verification (steps 1-4 test the replace itself).
    fn deploy(&self, manifest: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["--no-verify"];
        args.extend(extra);
        self.deploy_verified(manifest, &args)
    }

    fn deploy_verified(&self, manifest: &Path, extra: &[&str]) -> Output {
        let manifest = manifest.display().to_string();
        let mut args = vec!["deploy", "--target", "docker", "--env", "staging", "--images", &manifest];
        args.extend(extra);
        self.xtask(&args)
    }

    /// The environment's release history, newest first: (id, state, rollback_of).
    fn history(&self) -> Vec<(u64, String, Option<u64>)> {
        let out = self.xtask(&["--format", "json", "deploy", "history", "--target", "docker", "--env", "staging"]);
        assert_ok(&out, "deploy history");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history is JSON");
        json["releases"]
            .as_array()
            .expect("releases")
            .iter()
            .map(|r| {
                (
                    r["id"].as_u64().expect("id"),
                    r["state"].as_str().expect("state").to_string(),
                    r["rollback_of"].as_u64(),
                )
            })
            .collect()
    }

    /// Running containers of a service: (name, image ID).
    fn running(&self, service: &str) -> Vec<(String, String)> {
        let filters = [format!("label=xtask.project={}", self.project), format!("label=xtask.service={service}")];
        let out = docker_ok(&["ps", "--filter", &filters[0], "--filter", &filters[1], "--format", "{{.Names}}"]);
        out.lines().map(|name| (name.to_string(), docker_ok(&["inspect", "--format", "{{.Image}}", name]))).collect()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway_port)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for filter in
            [format!("label=xtask.project={}", self.project), format!("label=xtask.release-of={}", self.project)]
        {
            let ids = docker(&["ps", "-aq", "--filter", &filter]);
            for id in text(&ids.stdout).split_whitespace() {
                let _ = docker(&["rm", "-f", "-v", id]);
            }
        }
        for net in [self.project.clone(), format!("{}-serving", self.project)] {
            let _ = docker(&["network", "rm", &net]);
        }
        for vol in ["pgdata", "redisdata", "promdata"] {
            let _ = docker(&["volume", "rm", &format!("{}_{vol}", self.project)]);
        }
    }
}

/// Bounded load through the edge on loopback: reads and writes at a fixed rate for a fixed time.
struct Load {
    child: Child,
    out: PathBuf,
}

impl Load {
    fn start(env: &Env, dir: &Path, name: &str, seconds: u32) -> Load {
        let out = dir.join(name);
        let child = Command::new(target_dir().join("release/loadgen"))
            .args(["run", "--cores", "1", "--quiet", "--out"])
            .arg(&out)
            .arg(common::root().join("infra/loadtest/rollout.toml"))
            .args(["--url", &env.url(""), "--rps", "40", "--duration", &format!("{seconds}s")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loadgen starts");
        Load { child, out }
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("loadgen status").is_none()
    }

    /// Waits for the run; every request must have succeeded.
    fn finish_without_errors(self, what: &str) -> u64 {
        let (report, code, err) = self.finish(what);
        let overall = &report["overall"];
        assert_eq!(overall["errors"], 0, "{what}: requests failed during the deploy: {overall:#}");
        assert_eq!(code, Some(0), "{what}: loadgen: {err}");
        overall["count"].as_u64().expect("count")
    }

    /// Waits for the run; what failed must be answers of `status` only (none lost, none refused,
    /// none timed out); returns how many there were.
    fn finish_failing_only_with(self, status: &str, what: &str) -> u64 {
        let (report, _, _) = self.finish(what);
        let overall = &report["overall"];
        let failures = overall["failures"].as_object().expect("failures");
        assert!(failures.values().all(|n| n == 0), "{what}: requests failed other than by answer: {overall:#}");
        let statuses = overall["status"].as_object().expect("status");
        for (code, n) in statuses {
            assert!(code.starts_with('2') || code == status, "{what}: {n} answers of {code}: {overall:#}");
        }
        let faulted = statuses.get(status).and_then(serde_json::Value::as_u64).unwrap_or(0);
        assert_eq!(overall["errors"].as_u64(), Some(faulted), "{what}: every error is a {status}: {overall:#}");
        faulted
    }

    fn finish(mut self, what: &str) -> (serde_json::Value, Option<i32>, String) {
        let status = self.child.wait().expect("loadgen finishes");
        let mut err = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().expect("stderr"), &mut err).expect("stderr");
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.out.join("report.json")).unwrap_or_else(|e| panic!("{what}: no report ({e}): {err}")),
        )
        .expect("report is JSON");
        assert!(
            report["run"]["valid"].as_bool().unwrap_or(false),
            "{what}: the load run was not valid: {:#}",
            report["run"]
        );
        (report, status.code(), err)
    }
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn docker_target_replaces_health_gated_under_load_and_rolls_back() {
    // v1: the real images, built as CI builds them; loadgen for the traffic.
    assert_ok(&xtask(&["image", "build", "--service", "api", "--service", "gateway"]), "image build");
    assert_ok(&xtask(&["build", "--release", "-p", "loadgen"]), "building loadgen");
    assert_ok(&xtask(&["dev", "base"]), "dev base (the Debian base the dependency images build on)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let v1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(target_dir().join("xtask/images.json")).expect("images.json"))
            .expect("JSON");
    let v1_path = tmp.path().join("v1.json");
    std::fs::write(&v1_path, serde_json::to_vec(&v1).expect("JSON")).expect("v1 manifest");
    let v1_api = v1["images"]["api"]["id"].as_str().expect("api image id").to_string();
    let api_tag = v1["images"]["api"]["image"].as_str().expect("api tag").to_string();

    // v2s derived from v1: one that can never pass its health check, one that is fine.
    let pid = std::process::id();
    let (bad_tag, good_tag) = (format!("api:test-bad-{pid}"), format!("api:test-good-{pid}"));
    let bad_id =
        derive_image(&bad_tag, &format!("FROM {api_tag}\nENV LISTEN_HOST=127.0.0.2\nLABEL test.release=bad-v2\n"));
    let good_id = derive_image(&good_tag, &format!("FROM {api_tag}\nLABEL test.release=good-v2\n"));
    let bad = manifest_with_api(&v1, tmp.path(), "v2-bad", &bad_tag, &bad_id);
    let good = manifest_with_api(&v1, tmp.path(), "v2-good", &good_tag, &good_id);
    // Healthy, but a fifth of its answers are 500s: what only verification catches.
    let faulty_tag = format!("api:test-faulty-{pid}");
    let faulty_id =
        derive_image(&faulty_tag, &format!("FROM {api_tag}\nENV FAULT_INJECT_5XX=0.2\nLABEL test.release=faulty-v2\n"));
    let faulty = manifest_with_api(&v1, tmp.path(), "v2-faulty", &faulty_tag, &faulty_id);
    let _images = RemoveImages(vec![bad_tag.clone(), good_tag.clone(), faulty_tag.clone()]);

    let env = Env::new();

    // 1. v1 from nothing.
    let first = env.deploy(&v1_path, &[]);
    assert_ok(&first, "first deploy");
    assert_eq!(env.running("api").iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), [v1_api.as_str()]);
    let listed = http("GET", &env.url("/v1/jobs?limit=1"), &[], b"").expect("the edge answers");
    assert_eq!(listed.status, 200, "{}", listed.text());
    // Prometheus, a dependency, reaches our services by name: both are scraped.
    let prometheus = format!("http://127.0.0.1:{}/api/v1/targets", env.prometheus_port);
    eventually("Prometheus to scrape the API and the gateway", Duration::from_secs(60), || {
        let targets: serde_json::Value = serde_json::from_slice(&http("GET", &prometheus, &[], b"").ok()?.body).ok()?;
        let up = |job: &str| {
            targets["data"]["activeTargets"]
                .as_array()
                .is_some_and(|all| all.iter().any(|t| t["labels"]["job"] == job && t["health"] == "up"))
        };
        (up("api") && up("gateway")).then_some(())
    });
    let again = env.deploy(&v1_path, &[]);
    assert_ok(&again, "deploying the same images again");
    assert!(text(&again.stderr).contains("(0 changed"), "nothing changes the second time:\n{}", text(&again.stderr));

    // 2. A v2 that never turns healthy, under load.
    let mut load = Load::start(&env, tmp.path(), "bad-v2", 45);
    std::thread::sleep(Duration::from_secs(2));
    let failed = env.deploy(&bad, &["--timeout", "20"]);
    assert!(load.still_running(), "the deploy must happen under load; make the load run longer");
    let said = text(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "a v2 that never turns healthy fails the deploy:\n{said}");
    assert!(said.contains("api was not switched; the running version keeps serving"), "{said}");
    assert!(said.contains("was not healthy after 20s"), "{said}");
    assert_eq!(
        env.running("api").iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(),
        [v1_api.as_str()],
        "v2 is removed, v1 still runs"
    );
    let served = load.finish_without_errors("bad v2");
    assert!(served > 1000, "the load ran ({served} requests)");

    // 3. A good v2, under load: switched, v1 gone.
    let mut load = Load::start(&env, tmp.path(), "good-v2", 30);
    std::thread::sleep(Duration::from_secs(2));
    let switched = env.deploy(&good, &[]);
    assert!(load.still_running(), "the switch must happen under load; make the load run longer");
    assert_ok(&switched, "deploying a good v2");
    assert!(text(&switched.stderr).contains("api: replaced"), "{}", text(&switched.stderr));
    assert_eq!(env.running("api").iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), [good_id.as_str()]);
    load.finish_without_errors("good v2");

    // 4. Rollback, under load: v1 back.
    let mut load = Load::start(&env, tmp.path(), "rollback", 30);
    std::thread::sleep(Duration::from_secs(2));
    let rolled = env.xtask(&["deploy", "rollback", "--target", "docker", "--env", "staging"]);
    assert!(load.still_running(), "the rollback must happen under load; make the load run longer");
    assert_ok(&rolled, "rollback");
    assert_eq!(env.running("api").iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), [v1_api.as_str()]);
    load.finish_without_errors("rollback");

    let status = env.xtask(&["deploy", "status", "--target", "docker", "--env", "staging"]);
    assert_ok(&status, "status");
    let table = text(&status.stdout);
    for needle in ["postgres", "redis", "edge-gateway-8080", &api_tag, &good_tag] {
        assert!(table.contains(needle), "status shows {needle}:\n{table}");
    }
    // v1, good v2, v1 again (a rollback is a release, as in Helm).
    assert_eq!(
        env.history(),
        [(3, "deployed".into(), Some(1)), (2, "deployed".into(), None), (1, "deployed".into(), None)]
    );

    // 5. Verification of what runs: the real Prometheus, under the verification load.
    let verified = env.xtask(&["deploy", "verify", "--target", "docker", "--env", "staging", "--window", "15s"]);
    assert_ok(&verified, "verifying v1");
    assert!(
        text(&verified.stderr).contains("ok     SLO availability (error_ratio): observed 0"),
        "{}",
        text(&verified.stderr)
    );
    assert_eq!(env.history()[0], (3, "verified".into(), Some(1)));

    // 6. A faulty v2 under steady load: healthy, switched, then caught and rolled back.
    let load = Load::start(&env, tmp.path(), "faulty-v2", 60);
    std::thread::sleep(Duration::from_secs(2));
    let caught = env.deploy_verified(&faulty, &["--window", "15s"]);
    let said = text(&caught.stderr);
    assert_eq!(caught.status.code(), Some(1), "a breach fails the deploy:\n{said}");
    assert!(
        said.contains("release 4 of staging breached its SLOs: SLO availability (error_ratio): observed 0.")
            && said.contains("against a limit of 0.0100; rolled back to release 3 (now release 5)"),
        "the breach is named, with the rollback:\n{said}"
    );
    assert_eq!(env.running("api").iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), [v1_api.as_str()]);
    let faulted = load.finish_failing_only_with("500", "faulty v2");
    assert!(faulted > 0, "the steady load met the faulty release before the rollback");
    let history = env.history();
    assert_eq!(history[0], (5, "deployed".into(), Some(3)));
    assert_eq!(history[1], (4, "failed".into(), None));

    // 7. A release that failed verification is never promoted.
    assert_ok(
        &env.xtask(&["deploy", "rollback", "--target", "docker", "--env", "staging", "--to", "4"]),
        "rollback --to 4",
    );
    let judged =
        env.xtask(&["deploy", "verify", "--target", "docker", "--env", "staging", "--window", "10s", "--no-rollback"]);
    assert_eq!(judged.status.code(), Some(1), "{}", text(&judged.stderr));
    assert!(text(&judged.stderr).contains("left running (--no-rollback)"), "{}", text(&judged.stderr));
    let promote = env.xtask(&[
        "deploy",
        "promote",
        "--target",
        "docker",
        "--from",
        "staging",
        "--to",
        "prod",
        "--yes",
        "--confirm",
        "prod",
    ]);
    assert_eq!(promote.status.code(), Some(2), "{}", text(&promote.stderr));
    assert!(
        text(&promote.stderr).contains("staging's release 6 failed its verification (SLO availability"),
        "{}",
        text(&promote.stderr)
    );
    let missing = env.xtask(&["deploy", "rollback", "--target", "docker", "--env", "staging", "--to", "99"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing.stderr));
    assert!(
        text(&missing.stderr).contains("staging has no release 99 (it keeps: 1, 2, 3, 4, 5, 6)"),
        "{}",
        text(&missing.stderr)
    );
    assert_ok(
        &env.xtask(&["deploy", "rollback", "--target", "docker", "--env", "staging", "--to", "3"]),
        "rollback --to 3",
    );
    assert_eq!(env.running("api").iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), [v1_api.as_str()]);
    let status = env.xtask(&["--format", "json", "deploy", "status", "--target", "docker", "--env", "staging"]);
    assert_ok(&status, "status --format json");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status is JSON");
    assert_eq!(status["release"]["id"], 7, "the release that runs: {status:#}");
    assert_eq!(status["release"]["rollback_of"], 3, "{status:#}");

    // 8. Backups: a job, a backup, another job, then the restore brings back exactly the rows
    // the backup saw; a tampered backup and an unconfirmed prod restore change nothing.
    let json = [("Content-Type", "application/json")];
    let post = |body: &str| {
        let r = http("POST", &env.url("/v1/jobs"), &json, body.as_bytes()).expect("POST");
        assert_eq!(r.status, 201, "{}", r.text());
    };
    post(r#"{"kind":"sleep","duration_ms":1}"#);
    let before = env.jobs_checksum();
    let taken = env.xtask(&["deploy", "backup", "--target", "docker", "--env", "staging"]);
    assert_ok(&taken, "backup");
    let id = text(&taken.stdout).trim().to_string();
    assert_eq!(id.len(), "20261204T231500Z".len(), "the backup's ID is its UTC time: {id}");
    post(r#"{"kind":"sleep","duration_ms":2}"#);
    assert_ne!(env.jobs_checksum(), before, "the second job changed the rows");
    let listed = env.xtask(&["--format", "json", "deploy", "backups", "--target", "docker", "--env", "staging"]);
    assert_ok(&listed, "backups");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(listed[0]["id"], id.as_str(), "{listed:#}");
    assert_eq!(listed[0]["why"], "by hand", "{listed:#}");
    // The deploys before took theirs; only the newest 3 are kept.
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed:#}");
    assert!(listed[1]["why"].as_str().is_some_and(|w| w.starts_with("before deploying ")), "{listed:#}");

    let restored =
        env.xtask(&["deploy", "restore", "--target", "docker", "--env", "staging", "--backup", &id, "--yes"]);
    assert_ok(&restored, "restore");
    assert_eq!(env.jobs_checksum(), before, "the rows are the backup's");

    // Without confirmation, prod refuses before it reads anything of its database.
    let unconfirmed = env.xtask(&["deploy", "restore", "--target", "docker", "--env", "prod", "--backup", &id]);
    assert_eq!(unconfirmed.status.code(), Some(2), "{}", text(&unconfirmed.stderr));
    assert!(
        text(&unconfirmed.stderr)
            .contains("restoring prod needs --yes (and --confirm prod without a terminal); nothing was restored"),
        "{}",
        text(&unconfirmed.stderr)
    );

    // A dump that changed since it was taken is refused, and the database is left as it is.
    post(r#"{"kind":"sleep","duration_ms":3}"#);
    let after = env.jobs_checksum();
    let dump = env.backup_dir().join(format!("{id}.dump"));
    let mut bytes = std::fs::read(&dump).expect("dump");
    bytes.push(0);
    std::fs::write(&dump, bytes).expect("tamper");
    let tampered =
        env.xtask(&["deploy", "restore", "--target", "docker", "--env", "staging", "--backup", &id, "--yes"]);
    assert_eq!(tampered.status.code(), Some(2), "{}", text(&tampered.stderr));
    assert!(text(&tampered.stderr).contains("the file changed, nothing was restored"), "{}", text(&tampered.stderr));
    assert_eq!(env.jobs_checksum(), after, "nothing was restored");
    let _ = std::fs::remove_dir_all(env.backup_dir());
}

/// Test images removed when the test ends, pass or fail.
struct RemoveImages(Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = docker(&["rmi", "-f", tag]);
        }
    }
}

#[test]
fn an_unknown_environment_is_named_with_the_known_ones() {
    let out = xtask(&["deploy", "--target", "docker", "--env", "nowhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("no docker environment `nowhere`: create infra/compose/env/nowhere.env"), "{said}");
    assert!(said.contains("prod, staging") || said.contains("staging, prod"), "{said}");
}

#[test]
fn a_broken_environment_is_refused_before_anything_changes() {
    let env = Env::new();
    // Images that exist nowhere: every mistake below must be found before deploy looks for them.
    let tmp = tempfile::tempdir().expect("tempdir");
    let records: serde_json::Map<String, serde_json::Value> = ["api", "gateway", "worker"]
        .iter()
        .map(|service| {
            let record = serde_json::json!({
                "service": service, "image": format!("{service}:nowhere"), "revision": "0", "dirty": false,
                "created": "2026-01-01T00:00:00Z", "id": format!("sha256:{}", "0".repeat(64)),
                "tar": "/nonexistent.tar", "tar_sha256": "0", "binary_size": null, "layer_size": null,
                "manifest_digest": null,
            });
            (service.to_string(), record)
        })
        .collect();
    let manifest = tmp.path().join("images.json");
    std::fs::write(&manifest, serde_json::json!({ "schema": 1, "images": records }).to_string()).expect("manifest");
    let manifest = manifest.display().to_string();
    let deploy = ["deploy", "--target", "docker", "--images", manifest.as_str()];
    // xtask with `args` plus `deploy`, the test's variables with `set` over them, `unset` removed.
    let run = |before: &[&str], env_name: &str, set: &[(&str, &str)], unset: &[&str]| -> (Option<i32>, String) {
        let mut cmd = xtask_command();
        cmd.args(before).args(deploy).args(["--env", env_name]);
        cmd.envs(env.vars.iter().map(|(k, v)| (*k, v.as_str()))).envs(set.iter().copied());
        for key in unset {
            cmd.env_remove(key);
        }
        let out = cmd.output().expect("xtask runs");
        (out.status.code(), text(&out.stderr))
    };

    // The API without the Postgres it depends on.
    let (code, said) = run(&[], "staging", &[("DEPLOY_SERVICES", "redis,api")], &[]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("api depends on postgres, which DEPLOY_SERVICES in"), "{said}");

    // A service the compose files do not have.
    let (code, said) = run(&[], "staging", &[("DEPLOY_SERVICES", "postgres,nginx")], &[]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("names `nginx`, which the compose files do not define"), "{said}");

    // A required secret left unset: compose's own message, one line.
    let (code, said) = run(&[], "staging", &[], &["POSTGRES_PASSWORD"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("compose cannot render environment staging") && said.contains("POSTGRES_PASSWORD"), "{said}");

    // prod needs confirmation before anything is looked at.
    let (code, said) = run(&[], "prod", &[], &[]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("deploying to prod needs --yes"), "{said}");

    // A valid environment whose images are not on the host: refused by name, nothing started.
    let (code, said) = run(&[], "staging", &[], &[]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(":nowhere") && said.contains("is not on the Docker host"), "{said}");

    // A dry run plans every service (all to be created here) and changes nothing.
    let (code, said) = run(&["--dry-run"], "staging", &[], &[]);
    assert_eq!(code, Some(0), "{said}");
    for service in ["postgres", "redis", "api", "gateway"] {
        assert!(
            said.lines().any(|l| l.trim_start().starts_with(service) && l.contains("create")),
            "{service} to be created:\n{said}"
        );
    }
    assert!(said.contains("dry run: nothing was changed on the Docker host"), "{said}");
    // The same plan as JSON on stdout: every service with its action, the images to fetch.
    let out = xtask_command()
        .args(["--dry-run", "--format", "json"])
        .args(deploy)
        .args(["--env", "staging"])
        .envs(env.vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("xtask runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the plan is JSON on stdout");
    assert_eq!(plan["target"], "docker");
    let services = plan["services"].as_array().expect("services");
    for service in ["postgres", "redis", "api", "gateway"] {
        assert!(
            services.iter().any(|s| s["service"] == service && s["action"] == "create"),
            "{service} to be created: {plan:#}"
        );
    }
    assert!(
        plan["prepare"].as_array().is_some_and(|p| p.iter().any(|i| i["service"] == "api" && i["action"] == "missing")),
        "the api image is missing here, and the plan says so: {plan:#}"
    );

    let filter = format!("label=xtask.project={}", env.project);
    assert_eq!(docker_ok(&["ps", "-aq", "--filter", &filter]), "", "nothing was started");
    assert!(!docker(&["network", "inspect", &env.project]).status.success(), "no network was created");
}
