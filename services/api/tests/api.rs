//! The jobs API as a real process against a real Postgres and Redis (started by `cargo xtask test`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use test_support::{Link, ServiceProcess, eventually, fresh_database, get_head_keep_alive, http, redis_url};

const API: &str = env!("CARGO_BIN_EXE_api");
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn start_api(database_url: String) -> ServiceProcess {
    let mut api = ServiceProcess::start(API, &[("DATABASE_URL", database_url), ("REDIS_URL", redis_url())]);
    api.wait_until_ok("/readyz", Duration::from_secs(30));
    api
}

fn json(r: &test_support::Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

fn post_job(api: &ServiceProcess, body: &str, key: Option<&str>) -> test_support::Response {
    let mut headers = vec![JSON];
    if let Some(k) = key {
        headers.push(("Idempotency-Key", k));
    }
    http("POST", &api.url("/v1/jobs"), &headers, body.as_bytes()).expect("POST /v1/jobs")
}

fn assert_problem(r: &test_support::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let body = json(r);
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    body
}

#[test]
fn create_then_get_then_list_with_cursor_paging() {
    let api = start_api(fresh_database("api_crud"));
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = post_job(&api, &format!(r#"{{"kind":"hash","input":"n{i}","iterations":10}}"#), None);
        assert_eq!(r.status, 201, "{}", r.text());
        let job = json(&r);
        assert_eq!(job["status"], "queued");
        assert_eq!(job["kind"], "hash");
        let id = job["id"].as_str().expect("id").to_string();
        assert_eq!(r.header("location"), Some(format!("/v1/jobs/{id}").as_str()));
        ids.push(id);
    }

    let got = http("GET", &api.url(&format!("/v1/jobs/{}", ids[2])), &[], b"").expect("GET");
    assert_eq!(got.status, 200);
    assert_eq!(json(&got)["input"], "n2");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".to_string(),
        };
        let page = json(&http("GET", &api.url(&query), &[], b"").expect("list"));
        pages += 1;
        for job in page["jobs"].as_array().expect("jobs") {
            seen.push(job["id"].as_str().expect("id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3, "5 jobs in pages of 2");
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every job once, newest first");

    let queued = json(&http("GET", &api.url("/v1/jobs?status=queued&limit=100"), &[], b"").expect("list"));
    assert_eq!(queued["jobs"].as_array().map(Vec::len), Some(5));
    let dead = json(&http("GET", &api.url("/v1/jobs?status=dead"), &[], b"").expect("list"));
    assert_eq!(dead["jobs"].as_array().map(Vec::len), Some(0));
}

#[test]
fn the_same_idempotency_key_twice_makes_one_job() {
    let api = start_api(fresh_database("api_idem"));
    let body = r#"{"kind":"sleep","duration_ms":10}"#;
    let first = post_job(&api, body, Some("order-7"));
    assert_eq!(first.status, 201);
    // Same request, keys in another order: a retry, not a new job.
    let again = post_job(&api, r#"{"duration_ms":10,"kind":"sleep"}"#, Some("order-7"));
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(json(&first)["id"], json(&again)["id"]);
    let all = json(&http("GET", &api.url("/v1/jobs"), &[], b"").expect("list"));
    assert_eq!(all["jobs"].as_array().map(Vec::len), Some(1));

    let reused = post_job(&api, r#"{"kind":"sleep","duration_ms":99}"#, Some("order-7"));
    assert_problem(&reused, 422, "idempotency_key_reused");
}

#[test]
fn concurrent_retries_with_one_key_still_make_one_job() {
    let api = start_api(fresh_database("api_race"));
    let url = api.url("/v1/jobs");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r =
                    http("POST", &url, &[JSON, ("Idempotency-Key", "race-1")], br#"{"kind":"fail"}"#).expect("POST");
                (r.status, json(&r)["id"].as_str().unwrap_or_default().to_string())
            })
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 1, "{results:?}");
    assert!(results.iter().all(|(s, _)| *s == 201 || *s == 200), "{results:?}");
    let ids: HashSet<_> = results.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
}

#[test]
fn bad_requests_get_problem_json_with_stable_codes() {
    let api = start_api(fresh_database("api_bad"));
    assert_problem(&post_job(&api, "{not json", None), 400, "invalid_body");
    assert_problem(
        &post_job(&api, r#"{"kind":"hash","input":"x","iterations":5,"colour":"red"}"#, None),
        400,
        "invalid_body",
    );
    let body = assert_problem(&post_job(&api, r#"{"kind":"teleport"}"#, None), 400, "invalid_body");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("teleport")), "{body}");
    assert_problem(&post_job(&api, r#"{"kind":"hash","input":"x","iterations":0}"#, None), 400, "invalid_body");
    let text = http("POST", &api.url("/v1/jobs"), &[("Content-Type", "text/plain")], b"hi").expect("POST");
    assert_problem(&text, 415, "unsupported_media_type");
    let key = post_job(&api, r#"{"kind":"fail"}"#, Some(&"k".repeat(300)));
    assert_problem(&key, 400, "invalid_idempotency_key");

    assert_problem(&http("GET", &api.url("/v1/jobs/not-a-uuid"), &[], b"").expect("GET"), 400, "invalid_id");
    let missing = http("GET", &api.url("/v1/jobs/00000000-0000-4000-8000-000000000000"), &[], b"").expect("GET");
    assert_problem(&missing, 404, "job_not_found");
    for query in ["?limit=0", "?limit=101", "?status=done", "?cursor=zzz", "?colour=red"] {
        let r = http("GET", &api.url(&format!("/v1/jobs{query}")), &[], b"").expect("GET");
        assert_problem(&r, 400, "invalid_query");
    }
}

#[test]
fn database_down_means_not_ready_and_503_on_writes_then_recovery() {
    let admin = fresh_database("api_down");
    let (prefix, rest) = admin.split_once("@").expect("url with @");
    let (host_port, db) = rest.split_once('/').expect("url with /db");
    let pg: SocketAddr = host_port.parse().expect("host:port");
    let link = Link::to(pg);
    let api = start_api(format!("{prefix}@127.0.0.1:{}/{db}", link.port));
    assert_eq!(post_job(&api, r#"{"kind":"fail"}"#, None).status, 201);

    link.cut();
    eventually("readyz reports not ready", Duration::from_secs(15), || {
        let r = http("GET", &api.url("/readyz"), &[], b"").ok()?;
        (r.status == 503 && json(&r)["checks"]["postgres"].as_str()?.starts_with("error")).then_some(())
    });
    assert_problem(&post_job(&api, r#"{"kind":"fail"}"#, None), 503, "database_unavailable");
    assert_eq!(http("GET", &api.url("/healthz"), &[], b"").expect("healthz").status, 200, "still alive");

    link.restore();
    api_recovers(&api);
}

fn api_recovers(api: &ServiceProcess) {
    eventually("readyz reports ready again", Duration::from_secs(20), || {
        (http("GET", &api.url("/readyz"), &[], b"").ok()?.status == 200).then_some(())
    });
    eventually("writes succeed again", Duration::from_secs(10), || {
        (post_job(api, r#"{"kind":"fail"}"#, None).status == 201).then_some(())
    });
}

#[test]
fn request_ids_are_echoed_logged_and_metrics_counted() {
    let api = start_api(fresh_database("api_obs"));
    let r = http("POST", &api.url("/v1/jobs"), &[JSON, ("x-request-id", "req-obs-42")], br#"{"kind":"fail"}"#)
        .expect("POST");
    assert_eq!(r.header("x-request-id"), Some("req-obs-42"));
    let generated = http("GET", &api.url("/v1/jobs"), &[], b"").expect("GET");
    assert!(generated.header("x-request-id").is_some_and(|id| id.len() >= 16), "an id is made when none is sent");

    let metrics = http("GET", &api.url("/metrics"), &[], b"").expect("metrics").text();
    assert!(metrics.contains(r#"http_requests_total{route="/v1/jobs",method="POST",status="201"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"jobs_created_total{kind="fail"} 1"#), "{metrics}");
    assert!(metrics.contains("build_info{service=\"api\""), "{metrics}");

    eventually("the request's log line carries its id", Duration::from_secs(5), || {
        api.logs().lines().find(|l| l.contains("req-obs-42") && l.contains("request finished")).map(str::to_string)
    });
    let line = api.logs().lines().find(|l| l.contains("req-obs-42")).expect("logged").to_string();
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("logs are JSON lines off a terminal");
    assert_eq!(parsed["span"]["request_id"], "req-obs-42", "{line}");
}

#[test]
fn bad_config_stops_startup_with_one_line() {
    let out = Command::new(API)
        .env_clear()
        .env("DATABASE_URL", "mysql://user:secret@db/jobs")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL") && err.contains("postgres://"), "{err}");
    assert!(!err.contains("secret"), "passwords are never echoed: {err}");

    let out = Command::new(API).env_clear().env("REDIS_URL", "redis://x").output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL: not set"));
}

#[test]
fn healthcheck_subcommand_probes_the_running_service() {
    let api = start_api(fresh_database("api_hc"));
    let ok = Command::new(API).arg("healthcheck").env("PORT", api.port.to_string()).status().expect("runs");
    assert!(ok.success());
    let closed = test_support::free_port();
    let down = Command::new(API).arg("healthcheck").env("PORT", closed.to_string()).output().expect("runs");
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot connect"));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut api = ServiceProcess::start(
        API,
        &[
            ("DATABASE_URL", fresh_database("api_term")),
            ("REDIS_URL", redis_url()),
            ("SHUTDOWN_DELAY", "2s".to_string()),
        ],
    );
    api.wait_until_ok("/readyz", Duration::from_secs(30));
    let before = get_head_keep_alive(&api.url("/v1/jobs?limit=1")).expect("served");
    assert_eq!((before.status, before.header("connection")), (200, None), "keep-alive while not draining");
    api.signal("TERM");
    let during = eventually("readyz to report draining", Duration::from_secs(2), || {
        let r = get_head_keep_alive(&api.url("/readyz")).ok()?;
        (r.status == 503).then_some(r)
    });
    assert_eq!(during.header("connection"), Some("close"), "callers are told to reconnect while draining");
    let listed = get_head_keep_alive(&api.url("/v1/jobs?limit=1")).expect("still served in the delay");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("connection"), Some("close"));
    assert_eq!(api.wait_exit(Duration::from_secs(15)), Some(0), "{}", api.logs());
    assert!(api.logs().contains("shutting down"));
}
