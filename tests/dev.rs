//! End-to-end tests of `cargo xtask dev` against the real Docker engine and the real compose
//! (docker-compose 1.29 here, or the v2 plugin): from no containers, `dev up --offline` brings
//! the whole stack to healthy, a job goes through the gateway to the worker and back out of the
//! API, Prometheus scrapes every service, and `dev down` leaves nothing running. Failures are
//! clear: a service that never turns healthy fails `up` with its logs; a taken port is named.
//!
//! Each test runs its own compose project on free loopback ports, so they never meet a
//! developer's stack; they share Docker's image store, so nextest runs them one at a time.

use std::process::{Command, Output};
use std::time::Duration;

use sha2::{Digest, Sha256};
use test_support::{eventually, free_port, http};

mod common;
use common::{root, text};

/// A compose project of the test's own, on free ports; `dev reset --yes` when dropped.
struct Stack {
    project: String,
    ports: Vec<(&'static str, u16)>,
}

impl Stack {
    fn new(name: &str) -> Stack {
        let project = format!("xtask-test-{name}-{}", std::process::id());
        let ports = [
            "GATEWAY_PORT",
            "API_PORT",
            "WORKER_PORT",
            "PROMETHEUS_PORT",
            "GRAFANA_PORT",
            "POSTGRES_PORT",
            "REDIS_PORT",
            "ALERTMANAGER_PORT",
            "ALERT_SINK_PORT",
        ]
        .into_iter()
        .map(|var| (var, free_port()))
        .collect();
        Stack { project, ports }
    }

    fn port(&self, var: &str) -> u16 {
        self.ports.iter().find(|(v, _)| *v == var).map(|(_, p)| *p).expect("known port variable")
    }

    fn xtask(&self, args: &[&str]) -> Output {
        let mut cmd = common::xtask_command();
        // `--project` belongs to `dev` and goes right after it: anything after a `--` in `args`
        // belongs to another program. Other commands find the stack through its port variables.
        match args.split_first() {
            Some((&"dev", rest)) => cmd.arg("dev").arg("--project").arg(&self.project).args(rest),
            _ => cmd.args(args),
        };
        for (var, port) in &self.ports {
            cmd.env(var, port.to_string());
        }
        // Where the stack's Alertmanager sends alerts (the sink runs only where a test adds it),
        // and quickly: a test waits for them.
        cmd.env("ALERT_WEBHOOK_URL", "http://alert-sink:8080/alerts")
            .env("ALERT_GROUP_WAIT", "1s")
            .env("ALERT_GROUP_INTERVAL", "5s");
        cmd.output().expect("xtask binary runs")
    }

    /// The names of the project's containers (all, or one compose service's).
    fn names(&self, service: Option<&str>) -> Vec<String> {
        let mut args = vec![
            "ps".to_string(),
            "--all".into(),
            "--filter".into(),
            format!("label=com.docker.compose.project={}", self.project),
        ];
        if let Some(service) = service {
            args.extend(["--filter".into(), format!("label=com.docker.compose.service={service}")]);
        }
        args.extend(["--format".into(), "{{.Names}}".into()]);
        let out = Command::new("docker").args(&args).output().expect("docker ps");
        text(&out.stdout).lines().map(str::to_string).collect()
    }

    /// The container of one compose service.
    fn container(&self, service: &str) -> String {
        self.names(Some(service)).into_iter().next().unwrap_or_else(|| panic!("no {service} container"))
    }

    fn containers(&self) -> Vec<String> {
        self.names(None)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.xtask(&["dev", "reset", "--yes"]);
    }
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(bytes)))
}

#[test]
fn dev_up_offline_runs_the_whole_stack_end_to_end_and_down_removes_it() {
    let stack = Stack::new("e2e");
    assert!(stack.containers().is_empty());
    // Alerts go to a test webhook in the stack, read back on loopback (ALERT_SINK_PORT).
    let sink_dir = tempfile::tempdir().expect("tempdir");
    let sink = sink_dir.path().join("alert-sink.yml");
    let context = root().join("tests/support/alert-sink");
    // Tagged by its sources: compose builds an image only when its tag is missing.
    let mut sources = Sha256::new();
    for file in ["Dockerfile", "sink.py"] {
        sources.update(std::fs::read(context.join(file)).expect("sink source"));
    }
    let tag = format!("{:x}", sources.finalize());
    std::fs::write(
        &sink,
        format!(
            "services:\n  alert-sink:\n    image: xtask-test-alert-sink:{}\n    build:\n      context: {}\n    ports: [\"127.0.0.1:${{ALERT_SINK_PORT}}:8080\"]\n  alertmanager:\n    depends_on: [alert-sink]\n",
            &tag[..12],
            context.display()
        ),
    )
    .expect("write the sink's compose file");
    let up = stack.xtask(&["dev", "up", "--offline", "--timeout", "300", "--file", sink.to_str().expect("utf-8")]);
    assert!(up.status.success(), "dev up failed:\n{}\n{}", text(&up.stdout), text(&up.stderr));
    let said = text(&up.stderr);
    assert!(said.contains("is healthy after"), "{said}");
    assert!(said.contains(&format!("http://127.0.0.1:{}", stack.port("GATEWAY_PORT"))), "prints the URLs: {said}");

    let status = stack.xtask(&["dev", "status", "--format", "json"]);
    let status = json(&status.stdout);
    let states = status.as_array().expect("containers");
    for service in ["postgres", "redis", "api", "worker", "gateway", "prometheus", "alertmanager"] {
        let c =
            states.iter().find(|c| c["service"] == service).unwrap_or_else(|| panic!("{service} missing: {status:#}"));
        assert_eq!(c["state"], "running", "{c}");
        assert_eq!(c["health"], "healthy", "{c}");
        assert!(c["ports"].as_str().unwrap_or("").contains("127.0.0.1:"), "{service} must publish on loopback: {c}");
        assert!(!c["ports"].as_str().unwrap_or("").contains("0.0.0.0"), "{service} publishes beyond loopback: {c}");
    }

    // A job submitted through the gateway is run by the worker and visible through the API.
    let gateway = format!("http://127.0.0.1:{}", stack.port("GATEWAY_PORT"));
    let created = http(
        "POST",
        &format!("{gateway}/v1/jobs"),
        &[("content-type", "application/json")],
        br#"{"kind":"hash","input":"dev stack","iterations":1000}"#,
    )
    .expect("POST through the gateway");
    assert!(created.status == 201 || created.status == 202, "{} {}", created.status, created.text());
    let id = json(&created.body)["id"].as_str().expect("job id").to_string();
    let api = format!("http://127.0.0.1:{}", stack.port("API_PORT"));
    let done = eventually("the worker to finish the job", Duration::from_secs(60), || {
        let job = http("GET", &format!("{api}/v1/jobs/{id}"), &[], b"").ok()?;
        let body = json(&job.body);
        (body["status"] == "succeeded").then_some(body)
    });
    assert!(done["result"].is_object() || done["result"].is_string(), "{done:#}");

    // Prometheus scrapes every service and finds it up.
    let prometheus = format!("http://127.0.0.1:{}", stack.port("PROMETHEUS_PORT"));
    eventually("every service target up in Prometheus", Duration::from_secs(60), || {
        let targets = http("GET", &format!("{prometheus}/api/v1/targets"), &[], b"").ok()?;
        let targets = json(&targets.body);
        let active = targets["data"]["activeTargets"].as_array()?.clone();
        let up = |job: &str| active.iter().any(|t| t["labels"]["job"] == job && t["health"] == "up");
        ["gateway", "api", "worker"].iter().all(|j| up(j)).then_some(())
    });

    // `loadtest --service` finds the stack's gateway and drives the jobs flow through it. The
    // SLOs may or may not hold on a busy CI machine; what must hold is a judged run without errors.
    let load = stack.xtask(&[
        "loadtest",
        "jobs",
        "--service",
        "gateway",
        "--",
        "--rps",
        "30",
        "--duration",
        "3s",
        "--warmup",
        "1s",
        "--lag-tolerance",
        "100ms",
        "--quiet",
    ]);
    assert!(matches!(load.status.code(), Some(0 | 1)), "{}{}", text(&load.stdout), text(&load.stderr));
    let report =
        json(&std::fs::read(common::target_dir().join("xtask/loadtest/jobs/report.json")).expect("loadtest report"));
    assert_eq!(report["scenario"]["target"], gateway);
    for endpoint in report["endpoints"].as_array().expect("endpoints") {
        assert_eq!(endpoint["errors"], 0, "{endpoint:#}");
        assert!(endpoint["count"].as_u64().is_some_and(|n| n > 0), "{endpoint:#}");
    }
    assert!(
        report["endpoints"][0]["status"]["201"].as_u64().is_some_and(|n| n > 0),
        "jobs created: {:#}",
        report["endpoints"][0]
    );

    // A service that stops pages: Prometheus' TargetDown fires after its `for: 1m`, Alertmanager
    // routes it to the webhook; started again, the webhook hears it resolved.
    let received = format!("http://127.0.0.1:{}/", stack.port("ALERT_SINK_PORT"));
    let notified = |status: &str| {
        let all = json(&http("GET", &received, &[], b"").ok()?.body);
        all.as_array()?.iter().flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default()).find(|a| {
            a["labels"]["alertname"] == "TargetDown" && a["labels"]["job"] == "worker" && a["status"] == status
        })
    };
    assert!(notified("firing").is_none(), "nothing fires while every service is up");
    let worker = stack.container("worker");
    assert!(Command::new("docker").args(["stop", &worker]).output().expect("docker stop").status.success());
    // The rule's `for` (1m), a scrape and an evaluation (5 s each), Alertmanager's group_wait.
    let fired = eventually("TargetDown for the worker at the webhook", Duration::from_secs(150), || notified("firing"));
    assert_eq!(fired["labels"]["severity"], "page", "{fired:#}");
    assert!(fired["annotations"]["summary"].as_str().is_some_and(|s| s.starts_with("worker (")), "{fired:#}");
    assert!(Command::new("docker").args(["start", &worker]).output().expect("docker start").status.success());
    eventually("the worker's TargetDown resolved at the webhook", Duration::from_secs(150), || notified("resolved"));

    // Logs of one service, and the URLs, without starting anything.
    let logs = stack.xtask(&["dev", "logs", "api", "--tail", "20"]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    assert!(text(&logs.stdout).contains("api"), "{}", text(&logs.stdout));
    let urls = stack.xtask(&["dev", "urls"]);
    assert!(text(&urls.stdout).contains(&format!("http://127.0.0.1:{}", stack.port("PROMETHEUS_PORT"))));

    // Re-running up on a running stack changes nothing and is quick to say so.
    let again = stack.xtask(&["dev", "up", "--offline", "--file", sink.to_str().expect("utf-8")]);
    assert!(again.status.success(), "{}", text(&again.stderr));

    let down = stack.xtask(&["dev", "down"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(stack.containers().is_empty(), "dev down left containers: {:?}", stack.containers());
}

#[test]
fn a_service_that_never_turns_healthy_fails_up_with_its_logs() {
    let stack = Stack::new("unhealthy");
    let override_dir = tempfile::tempdir().expect("tempdir");
    let file = override_dir.path().join("broken.yml");
    // The api runs, but its health check calls a subcommand that does not exist: never healthy.
    std::fs::write(
        &file,
        "services:\n  api:\n    healthcheck:\n      test: [\"CMD\", \"/usr/local/bin/api\", \"no-such-check\"]\n      retries: 3\n",
    )
    .expect("write override");
    let up = stack.xtask(&["dev", "up", "--offline", "--deps-only", "--timeout", "120"]);
    assert!(up.status.success(), "deps first: {}", text(&up.stderr));
    let up = stack.xtask(&["dev", "up", "--offline", "--timeout", "120", "--file", file.to_str().expect("utf-8")]);
    assert_eq!(up.status.code(), Some(1), "{}", text(&up.stderr));
    let said = text(&up.stderr);
    assert!(said.contains("api") && said.contains("last log lines"), "names the service and shows its logs: {said}");
    assert!(said.contains("no-such-check"), "shows the failing health check's output: {said}");
}

#[test]
fn reset_without_a_terminal_needs_yes_and_removes_nothing() {
    let stack = Stack::new("reset");
    let out = stack.xtask(&["dev", "reset"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--yes") && err.contains("data volumes"), "{err}");
}

#[test]
fn a_taken_port_is_refused_by_name_before_anything_starts() {
    let stack = Stack::new("port");
    let taken = std::net::TcpListener::bind(("127.0.0.1", stack.port("REDIS_PORT"))).expect("hold the port");
    let up = stack.xtask(&["dev", "up", "--offline", "--deps-only"]);
    assert_eq!(up.status.code(), Some(2), "{}", text(&up.stderr));
    let err = text(&up.stderr);
    let port = taken.local_addr().expect("addr").port();
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("REDIS_PORT"), "{err}");
    assert!(stack.containers().is_empty(), "nothing may start: {:?}", stack.containers());
}

/// Ctrl-C reaches xtask's process group (as a terminal sends it); compose runs in a group of its
/// own, so it finishes what it started and the stack ends up whole, not half-created.
#[test]
fn ctrl_c_while_waiting_stops_xtask_and_leaves_a_consistent_stack() {
    use std::os::unix::process::CommandExt;
    let stack = Stack::new("ctrlc");
    let log = tempfile::NamedTempFile::new().expect("log file");
    // A background job inherits SIGINT as ignored (shells do that, and CI runners are often one);
    // `env --default-signal` gives xtask the disposition a terminal's foreground job has.
    let mut cmd = Command::new("env");
    cmd.args([
        "--default-signal=INT",
        common::xtask_bin().to_str().expect("a UTF-8 path"),
        "dev",
        "up",
        "--offline",
        "--project",
        &stack.project,
    ])
    .current_dir(root())
    .env("CARGO_MANIFEST_DIR", root().join("xtask"))
    .env("NO_COLOR", "1")
    .stdout(std::process::Stdio::null())
    .stderr(log.reopen().expect("log"))
    .process_group(0);
    for (var, port) in &stack.ports {
        cmd.env(var, port.to_string());
    }
    let mut child = cmd.spawn().expect("xtask starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !std::fs::read_to_string(log.path()).is_ok_and(|t| t.contains("waiting:")) {
        if std::time::Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let said = std::fs::read_to_string(log.path()).unwrap_or_default();
            let _ = child.kill();
            panic!("dev up never reached waiting for health (exit: {:?}); its output:\n{said}", child.try_wait());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pgid = child.id().to_string();
    let killed = Command::new("kill").args(["-INT", "--", &format!("-{pgid}")]).status().expect("kill runs");
    assert!(killed.success());
    let status = eventually("xtask to stop after Ctrl-C", Duration::from_secs(10), || child.try_wait().ok().flatten());
    assert!(!status.success(), "interrupted, so not a success: {status:?}");

    // Whatever compose had started, it completes: every service ends up running and healthy.
    eventually("the stack to settle whole after the interrupt", Duration::from_secs(120), || {
        let out = stack.xtask(&["dev", "status", "--format", "json"]);
        let list = json(&out.stdout);
        let list = list.as_array()?.clone();
        let all = ["postgres", "redis", "api", "worker", "gateway", "prometheus"]
            .iter()
            .all(|s| list.iter().any(|c| c["service"] == *s && c["state"] == "running" && c["health"] == "healthy"));
        all.then_some(())
    });
}
