//! loadgen against an in-process HTTP server whose latency, errors and stalls each test sets:
//! the real binary, real sockets on 127.0.0.1, and assertions on its exit code and JSON report.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the test server does to each request.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    latency: Duration,
    /// Every n-th request gets a 500.
    error_every: Option<u64>,
    /// Hold every response between these offsets from the first request.
    stall: Option<(Duration, Duration)>,
    /// Speak HTTP/2 (cleartext, prior knowledge) instead of HTTP/1.1.
    http2: bool,
}

struct TestServer {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl TestServer {
    fn start(behaviour: Behaviour) -> TestServer {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicU64::new(0));
        let first = Arc::new(std::sync::OnceLock::<Instant>::new());
        let counter = Arc::clone(&requests);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (counter, first) = (Arc::clone(&counter), Arc::clone(&first));
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let (counter, first) = (Arc::clone(&counter), Arc::clone(&first));
                        async move {
                            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                            let start = *first.get_or_init(Instant::now);
                            tokio::time::sleep(behaviour.latency).await;
                            if let Some((from, length)) = behaviour.stall {
                                let (stall_start, stall_end) = (start + from, start + from + length);
                                let now = Instant::now();
                                if now >= stall_start && now < stall_end {
                                    tokio::time::sleep_until(stall_end.into()).await;
                                }
                            }
                            let status = if behaviour.error_every.is_some_and(|e| n % e == 0) { 500 } else { 200 };
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .expect("response"),
                            )
                        }
                    });
                    if behaviour.http2 {
                        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                });
            }
        });
        TestServer { addr, requests, _runtime: runtime }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

struct Run {
    code: i32,
    stderr: String,
    report: Option<Value>,
}

fn loadgen(dir: &Path, args: &[&str]) -> Run {
    let out = dir.join("out");
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    eprintln!("--- loadgen {args:?}\n{stdout}{stderr}");
    let report = std::fs::read_to_string(out.join("report.json"))
        .ok()
        .map(|t| serde_json::from_str(&t).expect("report is JSON"));
    let _ = std::fs::remove_dir_all(&out);
    Run { code: status.code().unwrap_or(-1), stderr, report }
}

fn us(report: &Value, pointer: &str) -> f64 {
    report.pointer(pointer).and_then(Value::as_f64).unwrap_or_else(|| panic!("{pointer} missing in {report}"))
}

fn scenario(dir: &Path, text: &str) -> String {
    let path = dir.join("scenario.toml");
    std::fs::write(&path, text).expect("write scenario");
    path.display().to_string()
}

#[test]
fn percentiles_land_where_the_injected_latency_puts_them() {
    let server = TestServer::start(Behaviour { latency: Duration::from_millis(20), ..Behaviour::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = loadgen(
        dir.path(),
        &[
            "--url",
            &server.url(),
            "--rps",
            "100",
            "--duration",
            "2s",
            "--cores",
            "1",
            "--lag-tolerance",
            "100ms",
            "--slo",
            "latency: p(50) < 40ms",
            "--slo",
            "error_rate < 1%",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.report.expect("report");
    assert_eq!(r["load"]["sent"], 200);
    assert_eq!(server.requests(), 200);
    let p50 = us(&r, "/overall/latency_us/p50");
    let p99 = us(&r, "/overall/latency_us/p99");
    let min = us(&r, "/overall/latency_us/min");
    assert!(min >= 20_000.0, "no response can beat the injected 20 ms: min {min} µs");
    assert!((20_000.0..35_000.0).contains(&p50), "p50 {p50} µs should sit just above 20 ms");
    assert!((20_000.0..45_000.0).contains(&p99), "p99 {p99} µs");
    assert!(us(&r, "/overall/service_time_us/p50") >= 20_000.0);
    assert_eq!(r["verdict"], "pass");
    assert_eq!(r["slo"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_server_stall_shows_up_in_p99_in_open_mode() {
    let stall = (Duration::from_millis(1000), Duration::from_millis(1000));
    let server =
        TestServer::start(Behaviour { latency: Duration::from_millis(2), stall: Some(stall), ..Behaviour::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = loadgen(
        dir.path(),
        &[
            "--url",
            &server.url(),
            "--rps",
            "100",
            "--duration",
            "3s",
            "--cores",
            "1",
            "--lag-tolerance",
            "100ms",
            "--slo",
            "latency: p(99) < 100ms",
        ],
    );
    // The stall breaches the SLO: every request planned during it waited for its end.
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = run.report.expect("report");
    let p50 = us(&r, "/overall/latency_us/p50");
    let p99 = us(&r, "/overall/latency_us/p99");
    let max = us(&r, "/overall/latency_us/max");
    assert!(p50 < 100_000.0, "most requests were fast: p50 {p50} µs");
    assert!(p99 > 800_000.0, "the 1 s stall must reach p99 when latency counts from the intended time: p99 {p99} µs");
    assert!(max > 900_000.0, "max {max} µs");
    assert_eq!(r["run"]["valid"], true, "{}", r["run"]);
    assert_eq!(r["slo"][0]["pass"], false);
}

#[test]
fn closed_mode_reports_raw_and_corrected_latency_apart() {
    let stall = (Duration::from_millis(800), Duration::from_millis(1000));
    let server =
        TestServer::start(Behaviour { latency: Duration::from_millis(5), stall: Some(stall), ..Behaviour::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = loadgen(dir.path(), &["--url", &server.url(), "--connections", "10", "--duration", "3s", "--cores", "1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.report.expect("report");
    let raw = us(&r, "/overall/latency_us/p99");
    let corrected = us(&r, "/overall/latency_corrected_us/p99");
    assert!(raw < 100_000.0, "each connection saw the stall once, too rare for raw p99: {raw} µs");
    assert!(corrected > 500_000.0, "corrected p99 must show the stall: {corrected} µs");
    assert!(us(&r, "/overall/latency_us/max") > 900_000.0);
    assert_eq!(r["scenario"]["model"], "closed");
}

#[test]
fn injected_errors_fail_the_error_rate_slo() {
    let server = TestServer::start(Behaviour {
        latency: Duration::from_millis(1),
        error_every: Some(10),
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = loadgen(
        dir.path(),
        &[
            "--url",
            &server.url(),
            "--rps",
            "200",
            "--duration",
            "1s",
            "--lag-tolerance",
            "100ms",
            "--slo",
            "error_rate < 1%",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = run.report.expect("report");
    let observed = r["slo"][0]["observed"].as_f64().expect("observed");
    assert!((observed - 0.1).abs() < 0.01, "one in ten failed: {observed}");
    assert_eq!(r["endpoints"][0]["status"]["500"], 20);
    assert_eq!(r["verdict"], "fail");
}

#[test]
fn reports_come_as_json_junit_and_markdown() {
    let server = TestServer::start(Behaviour {
        latency: Duration::from_millis(1),
        error_every: Some(10),
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("reports");
    let summary = dir.path().join("step-summary.md");
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "run",
            "--url",
            &server.url(),
            "--rps",
            "100",
            "--duration",
            "1s",
            "--lag-tolerance",
            "100ms",
            "--quiet",
        ])
        .args(["--slo", "error_rate < 1%", "--slo", "latency: p(99) < 1s", "--out"])
        .arg(&out)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .status()
        .expect("loadgen runs");
    assert_eq!(status.code(), Some(1));
    let junit = std::fs::read_to_string(out.join("junit.xml")).expect("junit");
    assert!(junit.contains(r#"tests="3" failures="1""#), "{junit}");
    assert!(junit.contains(r#"name="error_rate &lt; 1%""#), "{junit}");
    assert!(junit.contains("<failure message=\"observed 10.000%"), "{junit}");
    let md = std::fs::read_to_string(&summary).expect("step summary appended");
    assert!(md.contains("| `latency: p(99) < 1s` | pass |"), "{md}");
    assert!(md.contains("| `error_rate < 1%` | **FAIL** |"), "{md}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report")).expect("json");
    assert_eq!(report["schema_version"], 1);
    assert!(report["endpoints"][0]["hdr"]["latency"].as_str().is_some_and(|h| h.len() > 20));
}

#[test]
fn a_saturated_run_is_invalid_not_passed() {
    let server = TestServer::start(Behaviour { latency: Duration::from_millis(50), ..Behaviour::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    // Two connections at 50 ms serve 40/s at most; 200/s cannot be kept.
    let run = loadgen(
        dir.path(),
        &[
            "--url",
            &server.url(),
            "--rps",
            "200",
            "--duration",
            "1s",
            "--max-connections",
            "2",
            "--cores",
            "1",
            "--timeout",
            "2s",
        ],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    let r = run.report.expect("report");
    assert_eq!(r["verdict"], "invalid");
    let reasons = r["run"]["invalid_reasons"].to_string();
    assert!(reasons.contains("connections busy"), "{reasons}");
    assert!(reasons.contains("schedule lag"), "{reasons}");
}

#[test]
fn bad_scenarios_exit_2_naming_the_line_before_any_request() {
    let server = TestServer::start(Behaviour::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let good = format!(
        "base_url = \"{}\"\nslo = [\n  \"latency{{endpoint=get}}: p(99) < 25ms\",\n]\n\n[[endpoint]]\nname = \"get\"\npath = \"/\"\n\n[[stage]]\nduration = \"1s\"\nrps = 10\n",
        server.url()
    );
    let cases = [
        (
            good.replace("p(99) < 25ms", "p(99) < 25"),
            "scenario.toml:3: slo `latency{endpoint=get}: p(99) < 25`: `25` has no unit",
        ),
        (
            good.replace("endpoint=get}", "endpoint=gte}"),
            "scenario.toml:3: slo `latency{endpoint=gte}: p(99) < 25ms`: unknown endpoint `gte`",
        ),
        (
            good.replace("latency{", "latncy{"),
            "scenario.toml:3: slo `latncy{endpoint=get}: p(99) < 25ms`: unknown metric `latncy`",
        ),
        (good.replace("rps = 10", "rsp = 10"), "scenario.toml:12: unknown field `rsp`"),
        (good.replace("path = \"/\"", "path = \"/\"\npath = \"/x\""), "scenario.toml:9: duplicate key"),
    ];
    for (text, expected) in cases {
        let path = scenario(dir.path(), &text);
        let run = loadgen(dir.path(), &[&path]);
        assert_eq!(run.code, 2, "{expected}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "expected `{expected}` in: {}", run.stderr);
        assert_eq!(run.stderr.trim().lines().count(), 1, "one line: {}", run.stderr);
        assert!(run.report.is_none());
    }
    let check = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("check")
        .arg(scenario(dir.path(), &good.replace("25ms", "25")))
        .output()
        .expect("check");
    assert_eq!(check.status.code(), Some(2));
    assert_eq!(server.requests(), 0, "nothing may be sent before the scenario validates");
}

#[test]
fn remote_targets_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 192.0.2.0/24 is TEST-NET-1: never routed, and never contacted here anyway.
    let run = loadgen(dir.path(), &["--url", "http://192.0.2.10:8080/", "--rps", "10", "--duration", "1s"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("192.0.2.10, which is not loopback"), "{}", run.stderr);
    assert!(run.stderr.contains("--allow-remote"), "{}", run.stderr);
}

#[test]
fn a_baseline_report_gates_regressions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fast = TestServer::start(Behaviour { latency: Duration::from_millis(5), ..Behaviour::default() });
    let baseline = dir.path().join("baseline");
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "run",
            "--url",
            &fast.url(),
            "--rps",
            "100",
            "--duration",
            "1s",
            "--lag-tolerance",
            "100ms",
            "--quiet",
            "--out",
        ])
        .arg(&baseline)
        .status()
        .expect("loadgen runs");
    assert_eq!(status.code(), Some(0));
    let baseline = baseline.join("report.json");
    // The limit must come from the baseline, whatever this machine made of the 5 ms server.
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&baseline).expect("baseline report")).expect("JSON");
    let baseline_p99_ns = recorded["endpoints"][0]["latency_us"]["p99"].as_f64().expect("baseline p99") * 1e3;
    let baseline = baseline.display().to_string();
    // Far slower than any baseline the fast server gives, even on a loaded machine.
    let slow = TestServer::start(Behaviour { latency: Duration::from_millis(100), ..Behaviour::default() });
    let slo = "latency{endpoint=*}: p(99) < baseline.p(99) * 1.10";
    let regressed = loadgen(
        dir.path(),
        &[
            "--url",
            &slow.url(),
            "--rps",
            "100",
            "--duration",
            "1s",
            "--lag-tolerance",
            "100ms",
            "--baseline",
            &baseline,
            "--slo",
            slo,
        ],
    );
    assert_eq!(regressed.code, 1, "{}", regressed.stderr);
    let r = regressed.report.expect("report");
    assert_eq!(r["slo"][0]["name"], "latency{endpoint=default}: p(99) < baseline.p(99) * 1.10");
    let limit = r["slo"][0]["limit"].as_f64().expect("limit from the baseline");
    let expected = baseline_p99_ns * 1.1;
    assert!((limit - expected).abs() <= expected * 0.01, "limit {limit} ns = baseline p99 {baseline_p99_ns} ns × 1.1");
    let same = loadgen(
        dir.path(),
        &[
            "--url",
            &fast.url(),
            "--rps",
            "100",
            "--duration",
            "1s",
            "--lag-tolerance",
            "100ms",
            "--baseline",
            &baseline,
            "--slo",
            // Generous: what is checked is that a baseline SLO can pass, not this machine's jitter.
            "latency: p(99) < baseline.p(99) * 10",
        ],
    );
    assert_eq!(same.code, 0, "{}", same.stderr);
    let missing = loadgen(dir.path(), &["--url", &fast.url(), "--rps", "10", "--duration", "1s", "--slo", slo]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("--baseline"), "{}", missing.stderr);
}

#[test]
fn the_endpoint_mix_is_reproducible_from_the_seed() {
    let server = TestServer::start(Behaviour::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "base_url = \"{}\"\nseed = 42\nlag_tolerance = \"100ms\"\n\n[[endpoint]]\nname = \"a\"\npath = \"/a\"\nweight = 1\n\n[[endpoint]]\nname = \"b\"\npath = \"/b\"\nweight = 3\n\n[[stage]]\nduration = \"1s\"\nrps = 200\n",
        server.url()
    );
    let path = scenario(dir.path(), &text);
    let counts = |run: Run| -> (u64, u64) {
        assert_eq!(run.code, 0, "{}", run.stderr);
        let r = run.report.expect("report");
        (r["endpoints"][0]["count"].as_u64().expect("count"), r["endpoints"][1]["count"].as_u64().expect("count"))
    };
    let first = counts(loadgen(dir.path(), &[&path, "--cores", "1"]));
    let second = counts(loadgen(dir.path(), &[&path, "--cores", "2"]));
    assert_eq!(first, second, "same seed, same mix, whatever the core count");
    assert_eq!(first.0 + first.1, 200);
    assert!((30..70).contains(&first.0), "weight 1 of 4: {first:?}");
}

#[test]
fn an_interrupted_run_exits_130_with_what_it_measured() {
    let server = TestServer::start(Behaviour::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    // Background jobs and CI runners may start us with SIGINT ignored; reset it for the child.
    let child = Command::new("env")
        .args([
            "--default-signal=INT",
            env!("CARGO_BIN_EXE_loadgen"),
            "run",
            "--url",
            &server.url(),
            "--rps",
            "50",
            "--duration",
            "30s",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .spawn()
        .expect("loadgen starts");
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let output = child.wait_with_output().expect("loadgen ends");
    assert_eq!(output.status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(10), "stops promptly");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report written")).expect("json");
    assert_eq!(r["verdict"], "interrupted");
    assert_eq!(r["run"]["interrupted"], true);
    assert!(r["load"]["sent"].as_u64().is_some_and(|n| n > 20), "{}", r["load"]);
}

#[test]
fn reports_of_side_by_side_runs_merge_exactly_and_are_judged_again() {
    let server = TestServer::start(Behaviour {
        latency: Duration::from_millis(2),
        error_every: Some(50),
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |name: &str, rps: &str| {
        let out = dir.path().join(name);
        let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args([
                "run",
                "--url",
                &server.url(),
                "--rps",
                rps,
                "--duration",
                "1s",
                "--lag-tolerance",
                "100ms",
                "--quiet",
            ])
            .args(["--slo", "error_rate < 5%", "--slo", "latency: p(99) < 1s", "--out"])
            .arg(&out)
            .status()
            .expect("loadgen runs");
        assert_eq!(status.code(), Some(0));
        out.join("report.json")
    };
    let (a, b) = (run("a", "100"), run("b", "150"));
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).expect("report")).expect("json") };
    let merged_dir = dir.path().join("merged");
    let merged = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("merge")
        .args([&a, &b])
        .arg("--out")
        .arg(&merged_dir)
        .output()
        .expect("merge");
    assert_eq!(merged.status.code(), Some(0), "{}", String::from_utf8_lossy(&merged.stderr));
    let (a, b, m) = (read(&a), read(&b), read(&merged_dir.join("report.json")));
    assert_eq!(m["overall"]["count"], 250);
    assert_eq!(m["endpoints"][0]["status"]["500"], 5, "one in fifty of 250");
    let max = |r: &Value| us(r, "/overall/latency_us/max");
    assert_eq!(max(&m), max(&a).max(max(&b)), "the merged histogram holds both parts' maxima");
    let min = |r: &Value| us(r, "/overall/latency_us/min");
    assert_eq!(min(&m), min(&a).min(min(&b)));
    assert_eq!(m["slo"].as_array().map(Vec::len), Some(2));
    let rate = m["slo"][0]["observed"].as_f64().expect("re-judged on merged counts");
    assert!((rate - 5.0 / 250.0).abs() < 1e-9, "{rate}");

    // Runs of different scenarios do not merge.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        format!(
            "base_url = \"{}\"\n[[endpoint]]\nname = \"x\"\npath = \"/x\"\n[[stage]]\nduration = \"1s\"\nrps = 10\n",
            server.url()
        ),
    )
    .expect("write");
    let out = dir.path().join("c");
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["run", "--quiet", "--lag-tolerance", "100ms", "--out"])
        .arg(&out)
        .arg(&other)
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(0));
    let refused = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("merge")
        .arg(dir.path().join("a/report.json"))
        .arg(out.join("report.json"))
        .output()
        .expect("merge");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only runs of one scenario merge"));
}

#[test]
fn http2_streams_share_one_connection_per_core() {
    let server =
        TestServer::start(Behaviour { latency: Duration::from_millis(5), http2: true, ..Behaviour::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = loadgen(
        dir.path(),
        &[
            "--url",
            &server.url(),
            "--rps",
            "200",
            "--duration",
            "1s",
            "--cores",
            "1",
            "--client",
            "h2",
            "--lag-tolerance",
            "100ms",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.report.expect("report");
    assert_eq!(r["endpoints"][0]["status"]["200"], 200);
    assert_eq!(r["load"]["connections_opened"], 1, "every stream on one connection: {}", r["load"]);
    assert_eq!(server.requests(), 200);
}

#[test]
fn the_hyper_client_measures_like_the_built_in_one() {
    let server = TestServer::start(Behaviour {
        latency: Duration::from_millis(10),
        error_every: Some(20),
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = loadgen(
        dir.path(),
        &[
            "--url",
            &server.url(),
            "--rps",
            "100",
            "--duration",
            "1s",
            "--cores",
            "1",
            "--client",
            "hyper",
            "--lag-tolerance",
            "100ms",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.report.expect("report");
    assert_eq!(r["endpoints"][0]["status"]["200"], 95);
    assert_eq!(r["endpoints"][0]["status"]["500"], 5);
    assert!(us(&r, "/overall/latency_us/min") >= 10_000.0);
}
