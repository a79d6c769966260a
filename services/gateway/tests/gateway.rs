//! The gateway as a real process in front of real upstream HTTP servers (and the real API).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use test_support::{ServiceProcess, eventually, free_port, http};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// An upstream test server: `/echo` reports what it received, `/slow?ms=` waits, `/flaky`
/// answers 503 to its first `flaky_failures` requests.
#[derive(Clone, Default)]
struct Upstream {
    name: &'static str,
    hits: Arc<AtomicUsize>,
    flaky_failures: usize,
}

async fn echo(
    State(u): State<Upstream>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::Json<serde_json::Value> {
    u.hits.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!({
        "upstream": u.name,
        "method": method.as_str(),
        "request_id": headers.get("x-request-id").and_then(|v| v.to_str().ok()),
        "hop_header": headers.contains_key("x-hop-only"),
        "body_len": body.len(),
    }))
}

async fn slow(State(u): State<Upstream>, Query(q): Query<std::collections::HashMap<String, u64>>) -> &'static str {
    u.hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(0))).await;
    "done"
}

async fn flaky(State(u): State<Upstream>) -> (StatusCode, &'static str) {
    let n = u.hits.fetch_add(1, Ordering::SeqCst);
    if n < u.flaky_failures { (StatusCode::SERVICE_UNAVAILABLE, "busy") } else { (StatusCode::OK, "fine") }
}

/// Serve `upstream` on `port` (0: any) from a background thread; returns the bound address.
fn serve(upstream: Upstream, port: u16) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind upstream");
            tx.send(listener.local_addr().expect("addr")).expect("send addr");
            let app = Router::new()
                .route("/{*rest}", any(echo))
                .route("/api/slow", any(slow))
                .route("/api/flaky", any(flaky))
                .with_state(upstream);
            axum::serve(listener, app).await.expect("serve");
        });
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("upstream started")
}

fn start_gateway(routes: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    let mut env = vec![("GATEWAY_ROUTES", routes.to_string())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let mut gw = ServiceProcess::start(GATEWAY, &env);
    gw.wait_until_ok("/readyz", Duration::from_secs(20));
    gw
}

fn json(r: &test_support::Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

fn assert_problem(r: &test_support::Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(json(r)["code"], code);
}

#[test]
fn routes_by_longest_prefix_and_forwards_request_ids() {
    let a = serve(Upstream { name: "a", ..Default::default() }, 0);
    let b = serve(Upstream { name: "b", ..Default::default() }, 0);
    let gw = start_gateway(&format!("/api=http://{a}, /api/special=http://{b}"), &[]);

    let r = http("GET", &gw.url("/api/things?x=1"), &[("x-request-id", "trace-me-1")], b"").expect("GET");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = json(&r);
    assert_eq!(seen["upstream"], "a");
    assert_eq!(seen["request_id"], "trace-me-1", "the upstream got the caller's id");
    assert_eq!(r.header("x-request-id"), Some("trace-me-1"), "and the caller gets it back");

    let hop = http("GET", &gw.url("/api/x"), &[("Connection", "keep-alive, x-hop-only"), ("x-hop-only", "1")], b"")
        .expect("GET");
    assert_eq!(json(&hop)["hop_header"], false, "headers named by Connection stay on this hop");

    let r = http("POST", &gw.url("/api/special/x"), &[], b"hello").expect("POST");
    let seen = json(&r);
    assert_eq!((seen["upstream"].as_str(), seen["body_len"].as_u64()), (Some("b"), Some(5)));
    let generated = r.header("x-request-id").expect("an id is made when none is sent");
    assert_eq!(seen["request_id"], generated, "the generated id is the one forwarded");

    assert_problem(&http("GET", &gw.url("/elsewhere"), &[], b"").expect("GET"), 404, "no_route");

    let metrics = http("GET", &gw.url("/metrics"), &[], b"").expect("metrics").text();
    assert!(metrics.contains(r#"http_requests_total{route="/api",method="GET",status="200"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"http_requests_total{route="/readyz",method="GET",status="200"}"#), "{metrics}");
    assert!(!metrics.contains(r#"route="unmatched""#), "every request is labelled: {metrics}");
    assert!(metrics.contains(r#"http_requests_total{route="/api/special",method="POST",status="200"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"http_requests_total{route="no_route",method="GET",status="404"} 1"#), "{metrics}");
}

#[test]
fn a_slow_upstream_becomes_a_504_at_the_route_deadline() {
    let up = serve(Upstream::default(), 0);
    let gw = start_gateway(&format!("/api=http://{up} timeout=300ms"), &[]);
    let started = Instant::now();
    let r = http("GET", &gw.url("/api/slow?ms=3000"), &[], b"").expect("GET");
    assert_problem(&r, 504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(2500), "answered at the deadline, not after the upstream");
}

#[test]
fn a_down_upstream_gives_502_then_a_fast_503_then_recovers() {
    let port = free_port();
    let gw = start_gateway(
        &format!("/api=http://127.0.0.1:{port}"),
        &[("BREAKER_FAILURES", "3"), ("BREAKER_COOLDOWN", "1s"), ("GATEWAY_RETRIES", "0")],
    );
    for _ in 0..3 {
        assert_problem(&http("GET", &gw.url("/api/x"), &[], b"").expect("GET"), 502, "bad_gateway");
    }
    let open = http("GET", &gw.url("/api/x"), &[], b"").expect("GET");
    assert_problem(&open, 503, "circuit_open");
    assert!(open.header("retry-after").is_some());
    let metrics = http("GET", &gw.url("/metrics"), &[], b"").expect("metrics").text();
    assert!(metrics.contains(&format!("gateway_breaker_state{{upstream=\"http://127.0.0.1:{port}\"}} 1")), "{metrics}");

    serve(Upstream { name: "back", ..Default::default() }, port);
    let r = eventually("the breaker to let a probe through and close", Duration::from_secs(5), || {
        let r = http("GET", &gw.url("/api/x"), &[], b"").ok()?;
        (r.status == 200).then_some(r)
    });
    assert_eq!(json(&r)["upstream"], "back");
    assert_eq!(http("GET", &gw.url("/api/x"), &[], b"").expect("GET").status, 200, "closed again");
}

#[test]
fn only_idempotent_methods_are_retried() {
    let get_upstream = Upstream { flaky_failures: 2, ..Default::default() };
    let get_hits = get_upstream.hits.clone();
    let up = serve(get_upstream, 0);
    let gw = start_gateway(&format!("/api=http://{up}"), &[("GATEWAY_RETRIES", "2"), ("BREAKER_FAILURES", "100")]);
    let r = http("GET", &gw.url("/api/flaky"), &[], b"").expect("GET");
    assert_eq!((r.status, r.text().as_str()), (200, "fine"), "two 503s retried away");
    assert_eq!(get_hits.load(Ordering::SeqCst), 3);

    let post_upstream = Upstream { flaky_failures: 2, ..Default::default() };
    let post_hits = post_upstream.hits.clone();
    let up = serve(post_upstream, 0);
    let gw = start_gateway(&format!("/api=http://{up}"), &[("GATEWAY_RETRIES", "2"), ("BREAKER_FAILURES", "100")]);
    let r = http("POST", &gw.url("/api/flaky"), &[], b"{}").expect("POST");
    assert_eq!(r.status, 503, "the upstream's answer, passed through");
    assert_eq!(post_hits.load(Ordering::SeqCst), 1, "a POST is never sent twice");
}

#[test]
fn bodies_over_the_limit_are_refused() {
    let up = serve(Upstream::default(), 0);
    let gw = start_gateway(&format!("/api=http://{up}"), &[("GATEWAY_MAX_BODY_BYTES", "1024")]);
    assert_problem(&http("POST", &gw.url("/api/x"), &[], &[b'x'; 2000]).expect("POST"), 413, "body_too_large");
    assert_eq!(http("POST", &gw.url("/api/x"), &[], &[b'x'; 1000]).expect("POST").status, 200);
}

#[test]
fn sigterm_during_a_slow_request_lets_it_finish_then_exits_zero() {
    let up = serve(Upstream::default(), 0);
    let mut gw = start_gateway(&format!("/api=http://{up}"), &[("DRAIN_TIMEOUT", "10s")]);
    let url = gw.url("/api/slow?ms=1500");
    let in_flight = std::thread::spawn(move || http("GET", &url, &[], b"").expect("slow GET"));
    std::thread::sleep(Duration::from_millis(400));
    gw.signal("TERM");
    let r = in_flight.join().expect("thread");
    assert_eq!((r.status, r.text().as_str()), (200, "done"));
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0), "{}", gw.logs());
}

#[test]
fn bad_routes_stop_startup_with_one_line() {
    let out =
        std::process::Command::new(GATEWAY).env_clear().env("GATEWAY_ROUTES", "api=nowhere").output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("GATEWAY_ROUTES") && err.contains("must start with /"), "{err}");
}

#[test]
fn a_request_id_travels_from_the_edge_through_the_api_into_its_logs() {
    let db = test_support::fresh_database("gateway_e2e");
    let mut api = ServiceProcess::start(
        &test_support::workspace_binary("api"),
        &[("DATABASE_URL", db), ("REDIS_URL", test_support::redis_url())],
    );
    api.wait_until_ok("/readyz", Duration::from_secs(30));
    let gw = start_gateway(&format!("/v1=http://127.0.0.1:{}", api.port), &[]);
    let r = http(
        "POST",
        &gw.url("/v1/jobs"),
        &[("Content-Type", "application/json"), ("x-request-id", "edge-to-api-77")],
        br#"{"kind":"sleep","duration_ms":5}"#,
    )
    .expect("POST through the gateway");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("edge-to-api-77"));
    eventually("the API logged the request under the caller's id", Duration::from_secs(5), || {
        api.logs().lines().any(|l| l.contains("edge-to-api-77") && l.contains("request finished")).then_some(())
    });
    eventually("the gateway logged it under the same id", Duration::from_secs(5), || {
        gw.logs().lines().any(|l| l.contains("edge-to-api-77")).then_some(())
    });
}

#[test]
fn readiness_turns_false_at_sigterm_while_connections_are_still_accepted() {
    let up = serve(Upstream::default(), 0);
    let mut gw = start_gateway(&format!("/api=http://{up}"), &[("SHUTDOWN_DELAY", "2s")]);
    gw.signal("TERM");
    let r = eventually("readyz to report draining", Duration::from_secs(2), || {
        let r = http("GET", &gw.url("/readyz"), &[], b"").ok()?;
        (r.status == 503).then_some(r)
    });
    assert_eq!(json(&r)["status"], "draining");
    let served = test_support::get_head_keep_alive(&gw.url("/api/x")).expect("still served");
    assert_eq!(served.status, 200, "traffic still flows in the delay");
    // Kept-alive callers are told to reconnect, so they move to another instance before the
    // listener closes instead of racing it.
    assert_eq!(served.header("connection"), Some("close"), "{:?}", served.headers);
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0), "{}", gw.logs());
}
