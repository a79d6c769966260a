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

/// A response read off a raw connection: status, head text (lower-cased), body.
type RawResponse = (u16, String, Vec<u8>);

/// Responses read off a raw connection. Bodies are framed by content-length or chunked, as a
/// client reads them.
fn read_responses(stream: &mut std::net::TcpStream, count: usize) -> Vec<RawResponse> {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    while out.len() < count {
        if let Some((response, used)) = parse_one(&buf) {
            buf.drain(..used);
            out.push(response);
            continue;
        }
        let n = stream.read(&mut chunk).expect("read a response");
        assert!(n > 0, "connection closed after {} responses: {:?}", out.len(), String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(buf.is_empty(), "bytes after the last response: {:?}", String::from_utf8_lossy(&buf));
    out
}

fn parse_one(buf: &[u8]) -> Option<(RawResponse, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    if status == 100 {
        return parse_one(&buf[end..]).map(|(r, used)| (r, used + end));
    }
    let value = |name: &str| head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string));
    if value("transfer-encoding").as_deref() == Some("chunked") {
        let (mut at, mut body) = (end, Vec::new());
        loop {
            let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size = usize::from_str_radix(std::str::from_utf8(&buf[at..line_end]).ok()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                return (buf.len() >= at + 2).then(|| ((status, head, body), at + 2));
            }
            body.extend_from_slice(buf.get(at..at + size)?);
            at += size + 2;
        }
    }
    let length: usize = value("content-length").map_or(Some(0), |v| v.parse().ok())?;
    let body = buf.get(end..end + length)?.to_vec();
    Some(((status, head, body), end + length))
}

fn connect(gw: &ServiceProcess) -> std::net::TcpStream {
    std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect to the gateway")
}

fn send_raw(stream: &mut std::net::TcpStream, bytes: &[u8]) {
    use std::io::Write;
    stream.write_all(bytes).expect("write");
}

#[test]
fn one_kept_alive_connection_carries_pipelined_requests_and_chunked_bodies() {
    let up = serve(Upstream::default(), 0);
    let gw = start_gateway(&format!("/api=http://{up}"), &[]);
    let mut stream = connect(&gw);
    // Two requests in one write, the second with a chunked body the upstream must get whole.
    send_raw(
        &mut stream,
        b"GET /api/one HTTP/1.1\r\nHost: edge\r\n\r\nPOST /api/two HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    let responses = read_responses(&mut stream, 2);
    let seen: Vec<serde_json::Value> = responses
        .iter()
        .map(|(status, head, body)| {
            assert_eq!(*status, 200, "{head}");
            assert!(head.contains("x-request-id: "), "{head}");
            assert!(!head.contains("connection: close"), "the connection stays open: {head}");
            serde_json::from_slice(body).expect("json")
        })
        .collect();
    assert_eq!((seen[0]["method"].as_str(), seen[0]["body_len"].as_u64()), (Some("GET"), Some(0)));
    assert_eq!((seen[1]["method"].as_str(), seen[1]["body_len"].as_u64()), (Some("POST"), Some(11)));

    // Still open: a third request with Expect: 100-continue gets the interim answer, then its own.
    send_raw(
        &mut stream,
        b"PUT /api/three HTTP/1.1\r\nHost: edge\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    );
    let mut interim = [0u8; 25];
    std::io::Read::read_exact(&mut stream, &mut interim).expect("interim answer");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    send_raw(&mut stream, b"abc");
    let (status, _, body) = read_responses(&mut stream, 1).remove(0);
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).expect("json")["body_len"], 3);
}

#[test]
fn malformed_and_ambiguous_requests_get_a_400_and_the_connection_closes() {
    let up = serve(Upstream::default(), 0);
    let gw = start_gateway(&format!("/api=http://{up}"), &[]);
    for bad in [
        &b"POST /api/x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /api/x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET api/x HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ] {
        let mut stream = connect(&gw);
        send_raw(&mut stream, bad);
        let (status, head, body) = read_responses(&mut stream, 1).remove(0);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(
            head.contains("content-type: application/problem+json") && head.contains("connection: close"),
            "{head}"
        );
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).expect("json")["code"], "bad_request");
        let mut rest = Vec::new();
        assert_eq!(std::io::Read::read_to_end(&mut stream, &mut rest).expect("closed"), 0, "nothing after the 400");
    }
    let mut stream = connect(&gw);
    let huge = format!("GET /api/x HTTP/1.1\r\nHost: edge\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024));
    send_raw(&mut stream, huge.as_bytes());
    assert_eq!(read_responses(&mut stream, 1)[0].0, 431);
}

/// A raw upstream: answers every request on a connection with `answer`, then closes the
/// connection after `per_connection` answers without saying so (as a server whose keep-alive
/// timeout passed does). Returns its address and a count of requests it read.
fn raw_upstream(answer: &'static [u8], per_connection: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counted = counted.clone();
            // The gateway closing its end is how a connection ends; that is not a test failure.
            std::thread::spawn(move || answer_each(stream, answer, per_connection, &counted));
        }
    });
    (addr, requests)
}

/// Answer up to `count` request heads on `stream` with `answer`, counting each one read.
fn answer_each(
    mut stream: std::net::TcpStream,
    answer: &[u8],
    count: usize,
    counted: &AtomicUsize,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..count {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..end);
        counted.fetch_add(1, Ordering::SeqCst);
        stream.write_all(answer)?;
    }
    Ok(())
}

#[test]
fn chunked_and_until_close_answers_are_relayed_whole() {
    let (chunked, _) = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-up: 1\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n",
        10,
    );
    let (old, _) = raw_upstream(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", 1);
    let (garbled, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 1);
    let gw = start_gateway(&format!("/chunked=http://{chunked}, /old=http://{old}, /garbled=http://{garbled}"), &[]);
    // Nothing of a body that is malformed from its first byte has reached the client: a 502, not a silent close.
    let r = http("GET", &gw.url("/garbled"), &[], b"").expect("GET");
    assert_eq!(r.status, 502, "{}", r.text());
    let mut stream = connect(&gw);
    send_raw(&mut stream, b"GET /chunked HTTP/1.1\r\nHost: edge\r\n\r\nGET /chunked HTTP/1.1\r\nHost: edge\r\n\r\n");
    for (status, head, body) in read_responses(&mut stream, 2) {
        assert_eq!((status, body.as_slice()), (200, &b"wikipedia"[..]), "{head}");
        assert!(head.contains("transfer-encoding: chunked") && head.contains("x-up: 1"), "{head}");
    }
    // An answer framed by the upstream's close can only be relayed to a close.
    let r = http("GET", &gw.url("/old"), &[], b"").expect("GET");
    assert_eq!((r.status, r.text().as_str()), (200, "until the end"));
    // An HTTP/1.0 client cannot read chunks: it gets the data, then the close.
    let mut stream = connect(&gw);
    send_raw(&mut stream, b"GET /chunked HTTP/1.0\r\n\r\n");
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut all).expect("read to the close");
    let text = String::from_utf8_lossy(&all);
    assert!(text.ends_with("\r\n\r\nwikipedia") && !text.contains("transfer-encoding"), "{text}");
}

#[test]
fn a_kept_alive_upstream_connection_the_upstream_closed_is_not_used_again() {
    // The upstream answers one request per connection and closes silently.
    let (up, requests) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1);
    let gw = start_gateway(&format!("/api=http://{up}"), &[("GATEWAY_RETRIES", "0")]);
    for i in 0..5 {
        let r = http("POST", &gw.url("/api/x"), &[], b"{}").expect("POST");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(requests.load(Ordering::SeqCst), 5, "each POST reached the upstream exactly once");
}

#[test]
fn large_bodies_are_relayed_both_ways_intact() {
    let up = serve(Upstream::default(), 0);
    let gw = start_gateway(&format!("/api=http://{up}"), &[("GATEWAY_MAX_BODY_BYTES", "4194304")]);
    let body: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let r = http("POST", &gw.url("/api/big"), &[], &body).expect("POST");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["body_len"], 1_500_000, "the test upstream takes up to 2 MB");
    let (big, _) = raw_upstream(BIG_ANSWER.get_or_init(big_answer), 1);
    let gw = start_gateway(&format!("/big=http://{big}"), &[]);
    let r = http("GET", &gw.url("/big"), &[], b"").expect("GET");
    assert_eq!(r.body.len(), 2_000_000);
    assert!(r.body.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8), "the body arrived unchanged");
}

static BIG_ANSWER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

fn big_answer() -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n".to_vec();
    answer.extend((0..2_000_000u32).map(|i| (i % 253) as u8));
    answer
}
