//! The edge gateway: routes requests by path prefix to upstream services.
//!
//! Per route: a deadline (`timeout=`), retries for idempotent methods only (and only when the
//! request never reached the upstream or it answered 502/503), a circuit breaker per upstream,
//! a request body size limit, and `x-request-id` forwarded. Its own errors are problem+json:
//! 404 `no_route`, 413 `body_too_large`, 502 `bad_gateway`, 503 `circuit_open`, 504
//! `upstream_timeout`. All I/O is async (hyper client over tokio); nothing blocks.

mod breaker;
mod routes;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use service_runtime::metrics::Labels;
use service_runtime::server::{Server, Shutdown};
use service_runtime::{Env, Metrics, Problem, Readiness, RouteLabel, ServerConfig, ServiceInfo, StartError};

use breaker::{Admission, Breaker};
use routes::Route;

const INFO: ServiceInfo =
    ServiceInfo { name: "gateway", version: env!("CARGO_PKG_VERSION"), port: 8080, health_path: "/healthz" };

/// Headers that describe one hop's connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

struct Config {
    server: ServerConfig,
    routes: Vec<Route>,
    max_body: usize,
    retries: u32,
    breaker_failures: u32,
    breaker_cooldown: Duration,
}

impl Config {
    fn from_env(env: &Env) -> Result<Config, service_runtime::ConfigError> {
        let default_timeout = env.duration_or("GATEWAY_TIMEOUT", Duration::from_secs(10))?;
        Ok(Config {
            server: ServerConfig::from_env(env, &INFO)?,
            routes: routes::parse(
                &env.required("GATEWAY_ROUTES", "routes like /v1/jobs=http://api:8081")?,
                default_timeout,
            )?,
            max_body: env.int_in("GATEWAY_MAX_BODY_BYTES", 1024 * 1024, 0, 64 * 1024 * 1024)?,
            retries: env.int_in("GATEWAY_RETRIES", 2, 0, 10)?,
            breaker_failures: env.int_in("BREAKER_FAILURES", 5, 1, 1000)?,
            breaker_cooldown: env.duration_or("BREAKER_COOLDOWN", Duration::from_secs(5))?,
        })
    }
}

struct Upstream {
    breaker: Breaker,
    state_gauge: Gauge,
    /// `gateway_upstream_requests` counters, resolved once, indexed by [`Outcome`].
    outcomes: Vec<Counter>,
}

#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Error,
    Timeout,
    UpstreamUnavailable,
    CircuitOpen,
}

const OUTCOME_LABELS: [&str; 5] = ["ok", "error", "timeout", "upstream_unavailable", "circuit_open"];

struct Gateway {
    routes: Vec<Route>,
    upstreams: HashMap<String, Upstream>,
    pools: HashMap<String, Pool>,
    max_body: usize,
    retries: u32,
    retried: Family<Labels, Counter>,
}

fn main() -> ExitCode {
    service_runtime::run(INFO, start)
}

async fn start(env: Env) -> Result<(), StartError> {
    let config = Config::from_env(&env)?;
    let metrics = Metrics::new(&INFO);
    let upstream_requests = Family::<Labels, Counter>::default();
    let retried = Family::<Labels, Counter>::default();
    let breaker_states = Family::<Labels, Gauge>::default();
    metrics.register(
        "gateway_upstream_requests",
        "Attempts sent upstream, by upstream and outcome",
        upstream_requests.clone(),
    );
    metrics.register("gateway_retries", "Retried attempts, by route", retried.clone());
    metrics.register(
        "gateway_breaker_state",
        "Circuit breaker per upstream: 0 closed, 1 open, 2 half-open",
        breaker_states.clone(),
    );

    let mut upstreams = HashMap::new();
    for route in &config.routes {
        upstreams.entry(route.upstream.clone()).or_insert_with(|| Upstream {
            breaker: Breaker::new(config.breaker_failures, config.breaker_cooldown),
            state_gauge: breaker_states.get_or_create(&vec![("upstream".into(), route.upstream.clone())]).clone(),
            outcomes: OUTCOME_LABELS
                .iter()
                .map(|o| {
                    let labels =
                        vec![("upstream".into(), route.upstream.clone()), ("outcome".to_string(), o.to_string())];
                    upstream_requests.get_or_create(&labels).clone()
                })
                .collect(),
        });
    }
    for route in &config.routes {
        tracing::info!(prefix = %route.prefix, upstream = %route.upstream, timeout_ms = route.timeout.as_millis() as u64, "route");
    }
    let gateway = Arc::new(Gateway {
        routes: config.routes,
        pools: upstreams.keys().map(|u| (u.clone(), Pool::new(u))).collect(),
        upstreams,
        max_body: config.max_body,
        retries: config.retries,
        retried,
    });
    let readiness = Readiness::new();
    let shutdown = Shutdown::on_signals(readiness.clone())?;
    // The proxy path skips the router and middleware layers: it is the hot path.
    let server = Server { info: INFO, config: config.server, metrics, readiness, shutdown };
    server.serve_http1(move |request| proxy(gateway.clone(), request)).await
}

/// Remove the fixed hop-by-hop headers and any header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

fn labelled(mut response: Response, route: &str) -> Response {
    response.extensions_mut().insert(RouteLabel(route.to_string()));
    response
}

async fn proxy(gw: Arc<Gateway>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let Some(route) = routes::find(&gw.routes, &path) else {
        let problem =
            Problem::new(StatusCode::NOT_FOUND, "no_route", "No route").detail(format!("no route serves {path}"));
        return labelled(problem.into_response(), "no_route");
    };
    labelled(forward(&gw, route, request).await, &route.prefix)
}

async fn forward(gw: &Gateway, route: &Route, request: Request) -> Response {
    let deadline = Instant::now() + route.timeout;
    let upstream = &gw.upstreams[&route.upstream];
    let (parts, body) = request.into_parts();
    // Buffered (within the limit) so an idempotent request can be sent again on retry.
    let body = if axum::body::HttpBody::is_end_stream(&body) {
        Bytes::new()
    } else {
        match Limited::new(body, gw.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "Request body too large")
                    .detail(format!("the limit is {} bytes", gw.max_body))
                    .into_response();
            }
            Err(e) => {
                return Problem::new(StatusCode::BAD_REQUEST, "bad_request_body", "Could not read the request body")
                    .detail(e.to_string())
                    .into_response();
            }
        }
    };
    // Upstreams get the origin form (`/path?query`) and our Host (set by the pool); hop-by-hop
    // headers stay on this hop; the caller's Host travels as x-forwarded-host.
    let origin_form =
        parts.uri.path_and_query().cloned().map(http::Uri::from).unwrap_or_else(|| http::Uri::from_static("/"));
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let attempts = if is_idempotent(&parts.method) { 1 + gw.retries } else { 1 };
    let count = |outcome: Outcome| upstream.outcomes[outcome as usize].inc();

    for attempt in 1..=attempts {
        if let Admission::Reject(wait) = upstream.breaker.allow(Instant::now()) {
            upstream.state_gauge.set(upstream.breaker.gauge_value());
            count(Outcome::CircuitOpen);
            let mut response = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "circuit_open", "Upstream unavailable")
                .detail(format!("{} failed repeatedly; not sending it more traffic for now", route.upstream))
                .into_response();
            let retry_after = wait.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&retry_after) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return response;
        }
        upstream.state_gauge.set(upstream.breaker.gauge_value());
        let last = attempt == attempts;
        let mut upstream_request = http::Request::new(Full::new(body.clone()));
        *upstream_request.method_mut() = parts.method.clone();
        *upstream_request.uri_mut() = origin_form.clone();
        *upstream_request.headers_mut() = if last { std::mem::take(&mut headers) } else { headers.clone() };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, gw.pools[&route.upstream].send(upstream_request)).await {
            Err(_) => {
                // Never retried: the upstream may still be working on it.
                upstream.breaker.failure(Instant::now());
                upstream.state_gauge.set(upstream.breaker.gauge_value());
                count(Outcome::Timeout);
                return Problem::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "Upstream timed out")
                    .detail(format!("{} did not answer within {}ms", route.upstream, route.timeout.as_millis()))
                    .into_response();
            }
            Ok(Err(e)) => {
                upstream.breaker.failure(Instant::now());
                upstream.state_gauge.set(upstream.breaker.gauge_value());
                count(Outcome::Error);
                // A connect error means the request never reached the upstream: safe to retry.
                if e.is_connect() && !last {
                    gw.retried.get_or_create(&vec![("route".into(), route.prefix.clone())]).inc();
                    backoff(attempt, deadline).await;
                    continue;
                }
                tracing::warn!(upstream = %route.upstream, error = %e, "upstream request failed");
                return Problem::new(StatusCode::BAD_GATEWAY, "bad_gateway", "Upstream unreachable")
                    .detail(format!(
                        "{}: {}",
                        route.upstream,
                        if e.is_connect() { "connection failed" } else { "request failed" }
                    ))
                    .into_response();
            }
            Ok(Ok(response)) => {
                let status = response.status();
                if matches!(
                    status,
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                ) {
                    upstream.breaker.failure(Instant::now());
                    upstream.state_gauge.set(upstream.breaker.gauge_value());
                    count(Outcome::UpstreamUnavailable);
                    if !last {
                        gw.retried.get_or_create(&vec![("route".into(), route.prefix.clone())]).inc();
                        backoff(attempt, deadline).await;
                        continue;
                    }
                } else {
                    upstream.breaker.success();
                    upstream.state_gauge.set(upstream.breaker.gauge_value());
                    count(Outcome::Ok);
                }
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                return Response::from_parts(head, Body::new(incoming));
            }
        }
    }
    unreachable!("the last attempt always returns")
}

/// 25 ms, 50 ms, 100 ms ... between attempts, never past the route's deadline.
async fn backoff(attempt: u32, deadline: Instant) {
    let wait = Duration::from_millis(25u64 << attempt.min(6).saturating_sub(1));
    let remaining = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(wait.min(remaining)).await;
}

/// Keep-alive HTTP/1 connections to one upstream. Lighter than a general-purpose client pool:
/// one lock around a short list, no per-request URI or host bookkeeping.
struct Pool {
    authority: String,
    host: HeaderValue,
    idle: std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// Most connections a pool keeps for reuse.
const POOL_MAX: usize = 1024;

#[derive(Debug)]
enum SendFailure {
    /// Never reached the upstream: safe to retry whatever the method.
    Connect(String),
    Request(hyper::Error),
}

impl SendFailure {
    fn is_connect(&self) -> bool {
        matches!(self, SendFailure::Connect(_))
    }
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendFailure::Connect(e) => write!(f, "connect: {e}"),
            SendFailure::Request(e) => write!(f, "request: {e}"),
        }
    }
}

impl Pool {
    fn new(upstream: &str) -> Pool {
        let authority = upstream.trim_start_matches("http://").to_string();
        let host = HeaderValue::from_str(&authority).unwrap_or_else(|_| HeaderValue::from_static("upstream"));
        Pool { authority, host, idle: std::sync::Mutex::default() }
    }

    fn take_ready(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|s| !s.is_closed());
        let ready = idle.iter().position(|s| s.is_ready())?;
        Some(idle.swap_remove(ready))
    }

    fn give_back(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_MAX {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendFailure> {
        let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&self.authority))
            .await
            .map_err(|_| SendFailure::Connect("timed out".into()))?
            .map_err(|e| SendFailure::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendFailure::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Send (the URI already in origin form) with the upstream's Host. A reused connection the upstream closed
    /// meanwhile gives the request back unsent; it then goes out once more on a fresh one.
    async fn send(
        &self,
        mut request: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, SendFailure> {
        request.headers_mut().insert(header::HOST, self.host.clone());
        let mut pooled = self.take_ready();
        loop {
            let reused = pooled.is_some();
            let mut sender = match pooled.take() {
                Some(s) => s,
                None => self.connect().await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.give_back(sender);
                    return Ok(response);
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendFailure::Request(failed.into_error())),
                },
            }
        }
    }
}
