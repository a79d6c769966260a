//! The proxy path: one task per client connection reads each request head in place, forwards
//! the request on a kept-alive upstream connection driven by the same task, and relays the
//! response back by its framing. No request, header-map or body-frame values are built per
//! request; the gateway's own answers (errors, `/healthz`, `/readyz`, `/metrics`) are the
//! service kit's responses, encoded here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use http1_wire::{Framing, MessageHeaders, Sink, Wire, WireError};
use service_runtime::Problem;
use service_runtime::server::{
    Connection, Observation, REQUEST_ID, acceptable_id, builtin_endpoint, builtin_route, next_request_id,
};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tracing::Instrument;

use crate::breaker::Admission;
use crate::{Gateway, Outcome, Upstream, routes};

/// Headers that describe one hop's connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// Most headers a request or response may carry.
const MAX_HEADERS: usize = 96;
/// A kept-alive client connection with no request in progress is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// A request head must arrive whole within this long of its first byte (slow-loris).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to an upstream, within the route's deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most idle connections kept per upstream.
const POOL_MAX: usize = 1024;
/// Longest wait for the next bytes of a body, or for a write, on either side.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Buffers a connection keeps between requests; a larger one (a big body) is given back.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Buffers reused by every request of one client connection.
#[derive(Default)]
struct Scratch {
    /// The upstream request: head, then body.
    upstream_request: Vec<u8>,
    /// The request body, collected (within the limit) so an idempotent request can be resent.
    body: Vec<u8>,
    /// The response head (and the first bytes of its body) on its way to the client.
    response: Vec<u8>,
    request_id: Vec<u8>,
    /// The request's path (without the query), for routing labels, logs and built-in endpoints.
    path: String,
}

impl Scratch {
    /// An idle connection holds small buffers, whatever its largest request was.
    fn shrink(&mut self) {
        for buf in [&mut self.upstream_request, &mut self.body, &mut self.response] {
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
        }
    }
}

/// A connection's two timers: the idle wait between requests and the deadline of the request
/// in flight. Each is moved only when it would fire too late, so deadlines that only grow (the
/// next request's) cost no timer operation until the earliest of them passes; a fresh timer
/// per request would cost a timer-wheel insert and removal, and often a wake-up of the driver.
struct Timers {
    idle: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
}

impl Timers {
    fn new() -> Timers {
        let far = tokio::time::Instant::now() + IDLE_TIMEOUT;
        Timers { idle: Box::pin(tokio::time::sleep_until(far)), deadline: Box::pin(tokio::time::sleep_until(far)) }
    }
}

/// Resolves once `deadline` has passed, using `timer` lazily (see [`Timers`]).
async fn until(timer: &mut Pin<Box<Sleep>>, deadline: tokio::time::Instant) {
    loop {
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().await;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        // It fired for an earlier request's deadline: wait for this one's.
        timer.as_mut().reset(deadline);
    }
}

/// What the request head said, kept after the head's bytes are consumed.
struct RequestHead {
    method: Method,
    /// HTTP/1.x minor version.
    version: u8,
    framing: Framing,
    persistent: bool,
    expect_continue: bool,
    /// The route's index, or why there is none.
    target: Target,
}

enum Target {
    Route(usize),
    /// `/healthz`, `/readyz` or `/metrics`, also the metrics' route label.
    Builtin(&'static str),
    NoRoute,
}

/// Serve one client connection until it closes, idles out or the listener closes.
pub async fn serve(gw: Arc<Gateway>, stream: TcpStream, mut conn: Connection) {
    let mut client = Wire::new(stream).with_io_timeout(IO_TIMEOUT);
    let mut scratch = Scratch::default();
    let mut timers = Timers::new();
    loop {
        if client.buffered().is_empty() {
            let idle_until = tokio::time::Instant::now() + IDLE_TIMEOUT;
            tokio::select! {
                biased;
                filled = client.fill() => match filled {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = conn.closing.triggered() => return,
                () = until(&mut timers.idle, idle_until) => return,
            }
        }
        let keep = exchange(&gw, &mut client, &conn, &mut scratch, &mut timers.deadline).await;
        scratch.shrink();
        if !matches!(keep, Ok(true)) {
            return;
        }
    }
}

/// One request and its response; `Ok(true)` when the connection stays open for the next.
async fn exchange(
    gw: &Gateway,
    client: &mut Wire<TcpStream>,
    conn: &Connection,
    scratch: &mut Scratch,
    deadline_timer: &mut Pin<Box<Sleep>>,
) -> Result<bool, WireError> {
    // A head that is all here already needs no timer.
    let head = match client.try_head(|buf| parse_request(gw, buf, scratch)) {
        Ok(Some(head)) => Ok(Ok(head)),
        Ok(None) => tokio::time::timeout(HEAD_TIMEOUT, client.read_head(|buf| parse_request(gw, buf, scratch))).await,
        Err(e) => Ok(Err(e)),
    };
    let head = match head {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            // A request that cannot be served is answered when the client can still read, then closed.
            let refusal = match e {
                WireError::HeadTooLarge => Some(
                    Problem::new(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "head_too_large",
                        "Request head too large",
                    )
                    .detail(format!("the request line and headers may be {} bytes at most", http1_wire::MAX_HEAD))
                    .into_response(),
                ),
                WireError::Malformed(what) => Some(
                    Problem::new(StatusCode::BAD_REQUEST, "bad_request", "Malformed request")
                        .detail(what)
                        .into_response(),
                ),
                _ => None,
            };
            if let Some(response) = refusal {
                let bytes = encode(response, &[], 1, false, false).await;
                let _ = client.write_all(&bytes).await;
            }
            return Ok(false);
        }
        Err(_) => return Ok(false),
    };
    let observation = Observation::begin(
        &conn.metrics,
        std::str::from_utf8(&scratch.request_id).unwrap_or_default(),
        &head.method,
        &scratch.path,
    );
    let span = observation.span().clone();
    async move {
        let (route, status, keep) = respond(gw, client, conn, scratch, &head, deadline_timer).await?;
        observation.finish(route, status);
        Ok(keep)
    }
    .instrument(span)
    .await
}

/// Answer a parsed request: the route label, the status sent and whether the connection stays open.
async fn respond<'g>(
    gw: &'g Gateway,
    client: &mut Wire<TcpStream>,
    conn: &Connection,
    scratch: &mut Scratch,
    head: &RequestHead,
    deadline_timer: &mut Pin<Box<Sleep>>,
) -> Result<(&'g str, u16, bool), WireError> {
    let keep = head.persistent && !conn.readiness.is_draining();
    let index = match head.target {
        Target::Route(index) => index,
        Target::Builtin(_) | Target::NoRoute => {
            // A body nobody reads: skip it if it is small and already on its way, else close
            // after answering (a client waiting for 100 Continue never sends it).
            let keep = keep && !head.expect_continue && skip_small_body(client, head.framing).await;
            let builtin = match head.target {
                Target::Builtin(route) => {
                    builtin_endpoint(route, &conn.readiness, &conn.metrics).await.map(|r| (route, r))
                }
                _ => None,
            };
            let (route, response) = builtin.unwrap_or_else(|| ("no_route", no_route(&scratch.path)));
            let status = answer(client, response, scratch, head, keep).await?;
            return Ok((route, status, keep));
        }
    };
    let route = &gw.routes[index];
    let upstream = &gw.upstreams[gw.route_upstream[index]];

    // The body, collected within the limit so an idempotent request can be sent again. A
    // declared length over the limit is refused unread (and never invited with 100 Continue);
    // HTTP/1.0 clients know no interim answers (RFC 9110 section 10.1.1).
    scratch.body.clear();
    let declared_too_large = matches!(head.framing, Framing::Length(n) if n > gw.max_body as u64);
    if head.expect_continue
        && !declared_too_large
        && head.version >= 1
        && head.framing != Framing::None
        && client.buffered().is_empty()
    {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let collected =
        client.body::<Vec<u8>>(head.framing, Sink::Collect { body: &mut scratch.body, limit: gw.max_body }).await;
    match collected {
        Ok(_) => {}
        Err(WireError::BodyTooLarge) => {
            let status = answer(client, too_large(gw.max_body), scratch, head, false).await?;
            return Ok((&route.prefix, status, false));
        }
        Err(e) => return Err(e),
    }
    finish_upstream_request(scratch, head);

    let forwarded = forward(gw, route, upstream, scratch, head, keep, deadline_timer).await;
    match forwarded {
        Err(response) => Ok((&route.prefix, answer(client, response, scratch, head, keep).await?, keep)),
        Ok(Answer { mut wire, status, framing, upstream_keep, client_keep }) => {
            // The head (already in `scratch.response`) and the body go out together when small.
            let keep_chunked = head.version >= 1;
            let relayed = wire
                .body(framing, Sink::Forward { to: client.stream_mut(), staged: &mut scratch.response, keep_chunked })
                .await;
            match relayed {
                Ok(_) => {
                    if upstream_keep && wire.buffered().is_empty() {
                        upstream.pool.give_back(wire);
                    }
                    Ok((&route.prefix, status, client_keep))
                }
                Err(e) => {
                    tracing::warn!(upstream = %upstream.name, request_id = %String::from_utf8_lossy(&scratch.request_id), error = %e, "response body relay failed");
                    if scratch.response.is_empty() {
                        // The head is out already: all that is left is to close both sides.
                        return Ok((&route.prefix, status, false));
                    }
                    // Nothing reached the client yet (the body was bad from its first bytes).
                    let response = Problem::new(StatusCode::BAD_GATEWAY, "bad_gateway", "Upstream answer unreadable")
                        .detail(format!("{}: the response body was malformed", upstream.name))
                        .into_response();
                    let _ = answer(client, response, scratch, head, false).await;
                    Ok((&route.prefix, 502, false))
                }
            }
        }
    }
}

/// One of the gateway's own answers to the client; the status sent.
async fn answer(
    client: &mut Wire<TcpStream>,
    response: Response,
    scratch: &Scratch,
    head: &RequestHead,
    keep: bool,
) -> Result<u16, WireError> {
    let status = response.status().as_u16();
    let is_head = head.method == Method::HEAD;
    client.write_all(&encode(response, &scratch.request_id, head.version, keep, is_head).await).await?;
    Ok(status)
}

fn no_route(path: &str) -> Response {
    Problem::new(StatusCode::NOT_FOUND, "no_route", "No route")
        .detail(format!("no route serves {path}"))
        .into_response()
}

fn too_large(limit: usize) -> Response {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "Request body too large")
        .detail(format!("the limit is {limit} bytes"))
        .into_response()
}

/// Read and drop a request body of up to 64 KiB; false (close the connection) for anything larger.
async fn skip_small_body(client: &mut Wire<TcpStream>, framing: Framing) -> bool {
    match framing {
        Framing::None => true,
        Framing::Length(n) if n <= 64 * 1024 => client.body::<Vec<u8>>(framing, Sink::Discard).await.is_ok(),
        _ => false,
    }
}

/// Parse a request head from `buf`, writing the upstream request's head (without its framing
/// headers) into `scratch.upstream_request` and the request id into `scratch.request_id`.
fn parse_request(gw: &Gateway, buf: &[u8], scratch: &mut Scratch) -> Result<Option<(usize, RequestHead)>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::Malformed("too many headers")),
        Err(_) => return Err(WireError::Malformed("not an HTTP/1.x request")),
    };
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Err(WireError::Malformed("incomplete request line"));
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| WireError::Malformed("bad method"))?;
    // Origin form (`/path?query`); an absolute form's authority is dropped.
    let target = match target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None if target.starts_with('/') => target,
        None => return Err(WireError::Malformed("request target is not a path")),
    };
    let path = target.split('?').next().unwrap_or(target);
    scratch.path.clear();
    scratch.path.push_str(path);
    let seen = MessageHeaders::scan(request.headers)?;
    let framing = seen.request_framing(version)?;
    let hosts = request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).count();
    if hosts > 1 || (hosts == 0 && version >= 1) {
        return Err(WireError::Malformed("an HTTP/1.1 request needs exactly one Host header"));
    }

    scratch.request_id.clear();
    let incoming_id = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(REQUEST_ID)).map(|h| h.value);
    match incoming_id {
        Some(id) if acceptable_id(id) => scratch.request_id.extend_from_slice(id),
        _ => scratch.request_id.extend_from_slice(&next_request_id()),
    }

    let target_kind = match (builtin_route(path), routes::find(&gw.routes, path)) {
        (Some(builtin), _) => Target::Builtin(builtin),
        (None, Some(i)) => Target::Route(i),
        (None, None) => Target::NoRoute,
    };
    // The upstream head's header block; its content-length and blank line come once the body is read.
    if let Target::Route(index) = target_kind {
        let out = &mut scratch.upstream_request;
        out.clear();
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(gw.upstreams[gw.route_upstream[index]].pool.authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        let named = connection_named(request.headers);
        for h in request.headers.iter() {
            let name = h.name.as_bytes();
            let drop = is_hop_by_hop(name, &named)
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"x-forwarded-host")
                || name.eq_ignore_ascii_case(REQUEST_ID.as_bytes());
            if drop {
                continue;
            }
            // The caller's Host travels as x-forwarded-host; the upstream gets its own.
            if name.eq_ignore_ascii_case(b"host") {
                out.extend_from_slice(b"x-forwarded-host");
            } else {
                out.extend_from_slice(name);
            }
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        // The one id this request is known by, whatever the caller sent or named in Connection.
        out.extend_from_slice(REQUEST_ID.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&scratch.request_id);
        out.extend_from_slice(b"\r\n");
    }
    Ok(Some((
        len,
        RequestHead {
            version,
            framing,
            persistent: seen.persistent(version),
            expect_continue: seen.expect_continue,
            target: target_kind,
            method,
        },
    )))
}

/// The header names a `Connection` header lists (they describe this hop only). Framing and
/// Host are never dropped on a peer's say-so: without them the next hop could not frame or
/// route the message.
fn connection_named<'h>(headers: &[httparse::Header<'h>]) -> Named<'h> {
    const KEPT: [&[u8]; 5] = [b"content-length", b"transfer-encoding", b"host", b"close", b"keep-alive"];
    let mut named = Named { names: [&[]; NAMED_MAX], len: 0 };
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        let tokens = h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
        for token in tokens.filter(|t| !t.is_empty() && !KEPT.iter().any(|k| t.eq_ignore_ascii_case(k))) {
            if named.len < NAMED_MAX {
                named.names[named.len] = token;
                named.len += 1;
            }
        }
    }
    named
}

/// Most header names one message's `Connection` headers may mark as hop-by-hop (more are
/// forwarded: harmless, and no allocation per message).
const NAMED_MAX: usize = 16;

/// Header names a `Connection` header listed, without allocating.
struct Named<'h> {
    names: [&'h [u8]; NAMED_MAX],
    len: usize,
}

fn is_hop_by_hop(name: &[u8], named: &Named<'_>) -> bool {
    HOP_BY_HOP.iter().chain(&named.names[..named.len]).any(|hop| name.eq_ignore_ascii_case(hop))
}

/// A decimal number onto the wire, without a temporary string.
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    use std::io::Write as _;
    let _ = write!(out, "{n}");
}

/// Append the framing and the collected body to the upstream request.
fn finish_upstream_request(scratch: &mut Scratch, head: &RequestHead) {
    let out = &mut scratch.upstream_request;
    let has_body = !scratch.body.is_empty() || matches!(head.method, Method::POST | Method::PUT | Method::PATCH);
    if has_body {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, scratch.body.len());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&scratch.body);
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// An upstream's answer whose head is encoded for the client in `Scratch::response`; its
/// body is still to be relayed from `wire`.
struct Answer {
    wire: Wire<TcpStream>,
    status: u16,
    framing: Framing,
    upstream_keep: bool,
    client_keep: bool,
}

/// Why one attempt got no answer.
enum SendFailure {
    /// Never reached the upstream: safe to retry whatever the method.
    Connect(String),
    /// Sent, but no usable answer.
    Exchange(WireError),
}

/// Send the request within the route's deadline, retrying as the route allows, through the
/// upstream's breaker. `Err` is the gateway's own answer.
async fn forward(
    gw: &Gateway,
    route: &routes::Route,
    upstream: &Upstream,
    scratch: &mut Scratch,
    head: &RequestHead,
    client_keep: bool,
    deadline_timer: &mut Pin<Box<Sleep>>,
) -> Result<Answer, Response> {
    let started = tokio::time::Instant::now();
    let deadline = started + route.timeout;
    let attempts = if is_idempotent(&head.method) { 1 + gw.retries } else { 1 };
    for attempt in 1..=attempts {
        let now = if attempt == 1 { started.into_std() } else { Instant::now() };
        if let Admission::Reject(wait) = upstream.breaker.allow(now) {
            upstream.show_breaker();
            upstream.count(Outcome::CircuitOpen);
            let mut response = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "circuit_open", "Upstream unavailable")
                .detail(format!("{} failed repeatedly; not sending it more traffic for now", upstream.name))
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Err(response);
        }
        upstream.show_breaker();
        let last = attempt == attempts;
        let sent = tokio::select! {
            biased;
            sent = send(upstream, scratch, head, client_keep) => Ok(sent),
            () = until(deadline_timer, deadline) => Err(()),
        };
        match sent {
            Err(()) => {
                // Never retried: the upstream may still be working on it.
                upstream.breaker.failure(Instant::now());
                upstream.show_breaker();
                upstream.count(Outcome::Timeout);
                return Err(Problem::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "Upstream timed out")
                    .detail(format!("{} did not answer within {}ms", upstream.name, route.timeout.as_millis()))
                    .into_response());
            }
            Ok(Err(failure)) => {
                upstream.breaker.failure(Instant::now());
                upstream.show_breaker();
                upstream.count(Outcome::Error);
                let connect = matches!(failure, SendFailure::Connect(_));
                if connect && !last {
                    gw.retried.get_or_create(&vec![("route".into(), route.prefix.clone())]).inc();
                    backoff(attempt, deadline).await;
                    continue;
                }
                let why = match &failure {
                    SendFailure::Connect(e) => format!("connect: {e}"),
                    SendFailure::Exchange(e) => format!("exchange: {e}"),
                };
                tracing::warn!(upstream = %upstream.name, request_id = %String::from_utf8_lossy(&scratch.request_id), error = %why, "upstream request failed");
                return Err(Problem::new(StatusCode::BAD_GATEWAY, "bad_gateway", "Upstream unreachable")
                    .detail(format!(
                        "{}: {}",
                        upstream.name,
                        if connect { "connection failed" } else { "request failed" }
                    ))
                    .into_response());
            }
            Ok(Ok(answer)) => {
                if matches!(answer.status, 502..=504) {
                    upstream.breaker.failure(Instant::now());
                    upstream.show_breaker();
                    upstream.count(Outcome::UpstreamUnavailable);
                    if !last {
                        // The unread answer goes with its connection.
                        drop(answer);
                        gw.retried.get_or_create(&vec![("route".into(), route.prefix.clone())]).inc();
                        backoff(attempt, deadline).await;
                        continue;
                    }
                } else {
                    upstream.breaker.success();
                    upstream.show_breaker();
                    upstream.count(Outcome::Ok);
                }
                return Ok(answer);
            }
        }
    }
    unreachable!("the last attempt always returns")
}

/// 25 ms, 50 ms, 100 ms ... between attempts, never past the route's deadline.
async fn backoff(attempt: u32, deadline: tokio::time::Instant) {
    let wait = Duration::from_millis(25u64 << attempt.min(6).saturating_sub(1));
    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + wait)).await;
}

/// One attempt: write the request on a pooled connection (or a new one) and read the answer's
/// head. A pooled connection the upstream closed meanwhile is found before use, or fails before
/// any byte of an answer; the request then goes out once more on a fresh connection, which is
/// safe for a request that was never written and for an idempotent one.
async fn send(
    upstream: &Upstream,
    scratch: &mut Scratch,
    head: &RequestHead,
    client_keep: bool,
) -> Result<Answer, SendFailure> {
    let mut pooled = upstream.pool.take();
    loop {
        let reused = pooled.is_some();
        let mut wire = match pooled.take() {
            Some(wire) => wire,
            None => upstream.pool.connect().await?,
        };
        if let Err(e) = wire.write_all(&scratch.upstream_request).await {
            if reused {
                continue;
            }
            return Err(SendFailure::Exchange(e));
        }
        match read_answer(&mut wire, scratch, head, client_keep).await {
            Ok((status, framing, upstream_keep, client_keep)) => {
                return Ok(Answer { wire, status, framing, upstream_keep, client_keep });
            }
            Err(WireError::Eof | WireError::Io(_)) if reused && is_idempotent(&head.method) => continue,
            Err(e) => return Err(SendFailure::Exchange(e)),
        }
    }
}

/// Read the upstream's response head (skipping interim 1xx answers) and encode the client's
/// into `scratch.response`: (status, body framing, upstream connection reusable, client
/// connection kept).
async fn read_answer(
    wire: &mut Wire<TcpStream>,
    scratch: &mut Scratch,
    head: &RequestHead,
    client_keep: bool,
) -> Result<(u16, Framing, bool, bool), WireError> {
    let is_head = head.method == Method::HEAD;
    loop {
        let answer = wire
            .read_head(|buf| {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut headers);
                let len = match response.parse(buf) {
                    Ok(httparse::Status::Complete(len)) => len,
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(WireError::Malformed("not an HTTP/1.x response")),
                };
                let status = response.code.ok_or(WireError::Malformed("no status"))?;
                if (100..200).contains(&status) {
                    return Ok(Some((len, None)));
                }
                let seen = MessageHeaders::scan(response.headers)?;
                let framing = seen.response_framing(status, is_head);
                let upstream_keep = seen.persistent(response.version.unwrap_or(1)) && framing != Framing::UntilClose;
                // A body that runs to the close, or chunks an HTTP/1.0 client cannot read framed,
                // end the client's connection too.
                let client_keep = client_keep
                    && framing != Framing::UntilClose
                    && !(framing == Framing::Chunked && head.version == 0);
                let out = &mut scratch.response;
                out.clear();
                out.extend_from_slice(b"HTTP/1.1 ");
                push_decimal(out, usize::from(status));
                out.push(b' ');
                out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
                out.extend_from_slice(b"\r\n");
                let named = connection_named(response.headers);
                // Chunks pass through as they came, so the codings they name stay named.
                let relay_te = framing == Framing::Chunked && head.version >= 1;
                for h in response.headers.iter() {
                    let name = h.name.as_bytes();
                    let te = name.eq_ignore_ascii_case(b"transfer-encoding");
                    if (is_hop_by_hop(name, &named) && !(te && relay_te))
                        || name.eq_ignore_ascii_case(REQUEST_ID.as_bytes())
                        || (seen.transfer_encoding && name.eq_ignore_ascii_case(b"content-length"))
                    {
                        continue;
                    }
                    out.extend_from_slice(name);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b"\r\n");
                }
                finish_head(out, &scratch.request_id, head.version, client_keep);
                Ok(Some((len, Some((status, framing, upstream_keep, client_keep)))))
            })
            .await?;
        if let Some(answer) = answer {
            return Ok(answer);
        }
    }
}

/// The request id and the connection header, then the blank line.
fn finish_head(out: &mut Vec<u8>, request_id: &[u8], version: u8, keep: bool) {
    if !request_id.is_empty() {
        out.extend_from_slice(REQUEST_ID.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(request_id);
        out.extend_from_slice(b"\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// One of the gateway's own answers, as bytes on the wire.
async fn encode(response: Response, request_id: &[u8], version: u8, keep: bool, is_head: bool) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if matches!(name, &header::CONTENT_LENGTH | &header::TRANSFER_ENCODING | &header::CONNECTION) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    push_decimal(&mut out, body.len());
    out.extend_from_slice(b"\r\n");
    finish_head(&mut out, request_id, version, keep);
    if !is_head {
        out.extend_from_slice(&body);
    }
    out
}

/// Kept-alive connections to one upstream, each with its read buffer, used by one request at a
/// time and driven by that request's own task.
pub struct Pool {
    /// `host:port`.
    pub authority: String,
    idle: std::sync::Mutex<Vec<Wire<TcpStream>>>,
}

impl Pool {
    pub fn new(upstream: &str) -> Pool {
        Pool { authority: upstream.trim_start_matches("http://").to_string(), idle: std::sync::Mutex::default() }
    }

    /// An idle connection the upstream has not closed meanwhile.
    fn take(&self) -> Option<Wire<TcpStream>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(wire) = idle.pop() {
            // Idle means nothing to read: end of stream (closed) or stray bytes make it unusable.
            match wire.stream().try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(wire),
                _ => continue,
            }
        }
        None
    }

    fn give_back(&self, wire: Wire<TcpStream>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_MAX {
            idle.push(wire);
        }
    }

    async fn connect(&self) -> Result<Wire<TcpStream>, SendFailure> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| SendFailure::Connect("timed out".into()))?
            .map_err(|e| SendFailure::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Wire::new(stream).with_io_timeout(IO_TIMEOUT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(routes: &str) -> Gateway {
        let routes = routes::parse(routes, Duration::from_secs(1)).expect("routes");
        let upstreams: Vec<Upstream> = routes
            .iter()
            .map(|r| Upstream {
                name: r.upstream.clone(),
                breaker: crate::breaker::Breaker::new(1, Duration::from_secs(1)),
                state_gauge: Default::default(),
                outcomes: Vec::new(),
                pool: Pool::new(&r.upstream),
            })
            .collect();
        Gateway {
            route_upstream: (0..routes.len()).collect(),
            routes,
            upstreams,
            max_body: 1024,
            retries: 0,
            retried: Default::default(),
        }
    }

    fn parsed(gw: &Gateway, raw: &[u8]) -> (Result<Option<(usize, RequestHead)>, WireError>, Scratch) {
        let mut scratch = Scratch::default();
        let result = parse_request(gw, raw, &mut scratch);
        (result, scratch)
    }

    #[test]
    fn the_upstream_request_keeps_end_to_end_headers_only() {
        let gw = gateway("/api=http://127.0.0.1:9000");
        let raw = b"POST http://edge.example/api/jobs?x=1 HTTP/1.1\r\nHost: edge.example\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: 5\r\nContent-Length: 2\r\nExpect: 100-continue\r\nx-forwarded-host: spoofed\r\nAccept: */*\r\nx-request-id: abc-1\r\n\r\n{}";
        let (result, mut scratch) = parsed(&gw, raw);
        let (len, head) = result.expect("parses").expect("complete");
        assert_eq!(len, raw.len() - 2, "the body is not part of the head");
        assert!(matches!(head.target, Target::Route(0)) && head.expect_continue && head.persistent);
        scratch.body.extend_from_slice(b"{}");
        finish_upstream_request(&mut scratch, &head);
        assert_eq!(
            String::from_utf8_lossy(&scratch.upstream_request),
            "POST /api/jobs?x=1 HTTP/1.1\r\nhost: 127.0.0.1:9000\r\nx-forwarded-host: edge.example\r\nAccept: */*\r\nx-request-id: abc-1\r\ncontent-length: 2\r\n\r\n{}"
        );
        assert_eq!(scratch.request_id, b"abc-1");
    }

    #[test]
    fn a_request_without_a_usable_id_gets_a_new_one_upstream() {
        let gw = gateway("/=http://127.0.0.1:9000");
        let (result, scratch) = parsed(
            &gw,
            b"GET / HTTP/1.0\r\nx-request-id: has spaces\r\nx-request-id: second\r\nConnection: x-request-id\r\n\r\n",
        );
        let (_, head) = result.expect("parses").expect("complete");
        assert!(!head.persistent, "HTTP/1.0 closes unless asked to keep alive");
        assert_eq!(scratch.request_id.len(), 32);
        let sent = String::from_utf8_lossy(&scratch.upstream_request).into_owned();
        assert_eq!(sent.matches("x-request-id").count(), 1, "{sent}");
        assert!(sent.contains(std::str::from_utf8(&scratch.request_id).expect("hex")), "{sent}");
    }

    #[test]
    fn targets_are_routes_builtins_or_nothing() {
        let gw = gateway("/api=http://127.0.0.1:9000");
        let target = |raw: &[u8]| parsed(&gw, raw).0.expect("parses").expect("complete").1.target;
        assert!(matches!(target(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n"), Target::Route(0)));
        assert!(matches!(target(b"GET /healthz HTTP/1.0\r\n\r\n"), Target::Builtin("/healthz")));
        assert!(matches!(target(b"GET /apix HTTP/1.1\r\nHost: a\r\n\r\n"), Target::NoRoute));
        assert!(parsed(&gw, b"GET /api/x HTTP/1.1\r\nHost: a").0.expect("partial is fine").is_none());
        for bad in [
            &b"GET api HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"\x00\x01\x02 / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /api HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET /api HTTP/1.1\r\n\r\n",
            b"GET /api HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert!(parsed(&gw, bad).0.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
