//! `cargo xtask loadtest` end to end: the real xtask builds loadgen in release and hands off to
//! it against a small HTTP server on 127.0.0.1 started here; exit codes pass through unchanged.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

mod common;
use common::{root, target_dir, text, xtask};

/// A keep-alive HTTP/1.1 server that answers every request `200 ok`, one thread per connection.
fn serve_ok() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                loop {
                    // Read the head (our requests carry no body), then answer.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn loadtest_runs_a_scenario_and_passes_loadgen_exit_codes_through() {
    let port = serve_ok();
    let url = format!("http://127.0.0.1:{port}");
    // What is tested is the hand-off and the exit codes, not this machine's latency: CI runs this
    // beside image builds on two cores, where the smoke scenario's 10 ms p99 is not a given. So
    // the passing run uses a scenario of its own whose SLOs any working server meets.
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("passthrough.toml");
    std::fs::write(
        &scenario,
        "name = \"passthrough\"\nslo = [\"latency: p(99) < 5s\", \"error_rate < 1%\"]\n\
         [[endpoint]]\nname = \"root\"\npath = \"/\"\n[[stage]]\nduration = \"1s\"\nrps = 50\n",
    )
    .expect("write scenario");
    let scenario = scenario.to_str().expect("utf-8 path");
    let short = ["--rps", "50", "--duration", "1s", "--lag-tolerance", "1s", "--quiet"];
    let report = target_dir().join("xtask/loadtest/passthrough/report.json");

    let mut args = vec!["loadtest", scenario, "--url", &url, "--"];
    args.extend(short);
    let pass = xtask(&args);
    assert_eq!(pass.status.code(), Some(0), "{}{}", text(&pass.stdout), text(&pass.stderr));
    assert!(text(&pass.stdout).contains("verdict: PASS"), "{}", text(&pass.stdout));
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(first["load"]["sent"], 50);
    assert_eq!(first["scenario"]["target"], url);

    // An SLO no server can meet: exit 1, and the last report is kept as previous.json.
    args.extend(["--slo", "latency: p(50) < 1ns"]);
    let breach = xtask(&args);
    assert_eq!(breach.status.code(), Some(1), "{}", text(&breach.stderr));
    assert!(target_dir().join("xtask/loadtest/passthrough/previous.json").is_file());

    // A configuration error inside loadgen keeps its exit code 2 and its one-line message.
    let bad = xtask(&["loadtest", "smoke", "--url", &url, "--", "--slo", "latency: p(99) < 5"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("`5` has no unit"), "{}", text(&bad.stderr));

    // And xtask's own usage errors are one line, exit 2.
    let unknown = xtask(&["loadtest", "no-such-scenario"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no scenario `no-such-scenario`"), "{}", text(&unknown.stderr));
}

#[test]
fn every_scenario_under_infra_loadtest_validates() {
    let built = xtask(&["build", "--release", "-p", "loadgen"]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let mut scenarios: Vec<_> = std::fs::read_dir(root().join("infra/loadtest"))
        .expect("infra/loadtest")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    scenarios.sort();
    assert!(scenarios.len() >= 2, "{scenarios:?}");
    let check = Command::new(target_dir().join("release/loadgen"))
        .arg("check")
        .args(&scenarios)
        .output()
        .expect("loadgen check");
    assert!(check.status.success(), "{}{}", text(&check.stdout), text(&check.stderr));
}
