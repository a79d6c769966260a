//! Serve a service's router with the common endpoints and middleware, and shut down gracefully.
//!
//! On SIGTERM or SIGINT: readiness turns false (load balancers stop sending), the listener stops
//! accepting, in-flight requests finish, and the process exits 0, all within the drain timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{ConfigError, Env, Metrics, Readiness, ServiceInfo, StartError};

pub const REQUEST_ID: &str = "x-request-id";

/// Where to listen and how long to wait for in-flight work at shutdown.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub drain_timeout: Duration,
    /// Between readiness going false and the listener closing: time for load balancers and
    /// Kubernetes endpoints to stop sending new connections.
    pub shutdown_delay: Duration,
    /// The share of requests (0 to 1) answered 500 without reaching the handler, for drills
    /// and for testing what catches a bad release (`deploy verify`). Built-in endpoints are
    /// never faulted. 0 (the default) turns it off.
    pub fault_5xx: f64,
}

impl ServerConfig {
    /// `LISTEN_HOST` (default 0.0.0.0), `PORT` (default: the service's), `DRAIN_TIMEOUT` (10s).
    pub fn from_env(env: &Env, info: &ServiceInfo) -> Result<ServerConfig, ConfigError> {
        let host: std::net::IpAddr = env.parse_or("LISTEN_HOST", [0, 0, 0, 0].into(), "an IP address like 0.0.0.0")?;
        let port = env.port_or("PORT", info.port)?;
        let drain_timeout = env.duration_or("DRAIN_TIMEOUT", Duration::from_secs(10))?;
        let shutdown_delay = env.duration_or("SHUTDOWN_DELAY", Duration::ZERO)?;
        let fault_5xx: f64 = env.parse_or("FAULT_INJECT_5XX", 0.0, "a share from 0 to 1, like 0.2")?;
        if !(0.0..=1.0).contains(&fault_5xx) {
            return Err(Env::error("FAULT_INJECT_5XX", format!("expected a share from 0 to 1, got {fault_5xx}")));
        }
        Ok(ServerConfig { listen: SocketAddr::new(host, port), drain_timeout, shutdown_delay, fault_5xx })
    }
}

/// Fires once when the process is asked to stop. Clone it into every loop that must stop.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Listen for SIGTERM and SIGINT; on the first, mark `readiness` as draining.
    pub fn on_signals(readiness: Readiness) -> Result<Shutdown, StartError> {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = watch::channel(false);
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| StartError::fatal("installing SIGTERM handler", e))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| StartError::fatal("installing SIGINT handler", e))?;
        tokio::spawn(async move {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = which, "shutting down: readiness off, draining in-flight work");
            readiness.start_draining();
            let _ = tx.send(true);
        });
        Ok(Shutdown { rx })
    }

    /// A handle that never fires, for tests and tools.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Shutdown { rx }
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    pub async fn wait(mut self) {
        self.triggered().await;
    }

    /// Resolves once it has fired (at once if it already has), without using up the handle.
    pub async fn triggered(&mut self) {
        let _ = self.rx.wait_for(|stopping| *stopping).await;
    }
}

/// Everything `serve` needs besides the service's own routes.
pub struct Server {
    pub info: crate::ServiceInfo,
    pub config: ServerConfig,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
}

impl Server {
    /// Bind the configured address and say so.
    async fn listen(&self) -> Result<tokio::net::TcpListener, StartError> {
        let listener = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .map_err(|e| StartError::fatal(&format!("cannot listen on {}", self.config.listen), e))?;
        tracing::info!(
            service = self.info.name,
            version = self.info.version,
            git_sha = crate::GIT_SHA,
            addr = %self.config.listen,
            "listening"
        );
        Ok(listener)
    }

    /// Resolves when the listener should close: a signal, then the shutdown delay.
    fn stop_accepting(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (stop, delay) = (self.shutdown.clone(), self.config.shutdown_delay);
        async move {
            stop.wait().await;
            tokio::time::sleep(delay).await;
        }
    }

    /// Resolves when in-flight work has had its drain timeout after the listener closed.
    fn drain_deadline(&self) -> impl std::future::Future<Output = StartError> + Send + 'static {
        let (closed, drain) = (self.stop_accepting(), self.config.drain_timeout);
        async move {
            closed.await;
            tokio::time::sleep(drain).await;
            drain_expired(drain)
        }
    }

    /// Bind, serve until shutdown, then wait for in-flight requests (bounded by the drain timeout).
    pub async fn serve(self, app: Router) -> Result<(), StartError> {
        let listener = self.listen().await?;
        if self.config.fault_5xx > 0.0 {
            tracing::warn!(
                share = self.config.fault_5xx,
                "FAULT_INJECT_5XX is set: answering 500 to that share of requests"
            );
        }
        let faults = Faults::new(self.config.fault_5xx);
        let router = app
            .layer(middleware::from_fn_with_state(faults, inject_faults))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz).with_state(self.readiness.clone()))
            .route("/metrics", get(metrics_text).with_state((self.metrics.clone(), self.readiness.clone())))
            .layer(middleware::from_fn_with_state(self.metrics.clone(), observe))
            .layer(middleware::from_fn_with_state(self.readiness.clone(), close_when_draining));
        let serving = axum::serve(listener, router).with_graceful_shutdown(self.stop_accepting());
        tokio::select! {
            served = serving => served.map_err(|e| StartError::fatal("server error", e)),
            expired = self.drain_deadline() => Err(expired),
        }
    }
}

/// What a connection handler of [`Server::serve_connections`] gets beside its stream. Keep it
/// until the connection is done: shutdown waits for every one to be dropped.
pub struct Connection {
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// Fires when the listener closes: an idle connection closes then, a request in progress
    /// finishes first.
    pub closing: Shutdown,
    _open: tokio::sync::mpsc::Sender<()>,
}

impl Server {
    /// Serve raw connections, for a service that speaks HTTP itself on its hot path (the
    /// gateway). `handle` runs once per accepted connection, in a task of its own; it must
    /// answer the built-in endpoints ([`builtin_endpoint`]) and mark answers `Connection:
    /// close` while draining ([`Readiness::is_draining`]). Shutdown is as in [`Server::serve`]:
    /// the listener closes after the shutdown delay, then every connection has the drain
    /// timeout to finish.
    pub async fn serve_connections<H, Fut>(self, handle: H) -> Result<(), StartError>
    where
        H: Fn(tokio::net::TcpStream, Connection) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = self.listen().await?;
        let stop_accepting = self.stop_accepting();
        tokio::pin!(stop_accepting);
        let (closing_tx, closing_rx) = watch::channel(false);
        let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of file descriptors, say: back off instead of spinning on it.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let connection = Connection {
                        metrics: self.metrics.clone(),
                        readiness: self.readiness.clone(),
                        closing: Shutdown { rx: closing_rx.clone() },
                        _open: open_tx.clone(),
                    };
                    tokio::spawn(handle(stream, connection));
                }
                () = &mut stop_accepting => break,
            }
        }
        drop(listener);
        let _ = closing_tx.send(true);
        drop(open_tx);
        tokio::select! {
            // Every sender dropped: every connection is done.
            _ = open_rx.recv() => Ok(()),
            // The listener is already closed here: only the drain timeout is left.
            () = tokio::time::sleep(self.config.drain_timeout) => Err(drain_expired(self.config.drain_timeout)),
        }
    }
}

/// While draining (the shutdown delay before the listener closes), every answer says
/// `Connection: close`: callers with a kept-alive connection open a new one, which lands on
/// another instance (or is refused here and retried elsewhere) instead of racing the close.
fn mark_close_if_draining(readiness: &Readiness, response: &mut Response) {
    if readiness.is_draining() {
        response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
}

async fn close_when_draining(State(readiness): State<Readiness>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    mark_close_if_draining(&readiness, &mut response);
    response
}

/// Which requests get an injected 500: exactly `share` of them, spread evenly (the n-th request
/// is faulted when `n * share` crosses a whole number), so a drill's error ratio is what it says.
#[derive(Clone)]
struct Faults {
    share: f64,
    seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Faults {
    fn new(share: f64) -> Faults {
        Faults { share, seen: Default::default() }
    }

    fn next_is_faulted(&self) -> bool {
        if self.share <= 0.0 {
            return false;
        }
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
        ((n + 1.0) * self.share).floor() > (n * self.share).floor()
    }
}

/// Layered on the service's own routes only: the built-in endpoints are never faulted.
async fn inject_faults(State(faults): State<Faults>, request: Request, next: Next) -> Response {
    if faults.next_is_faulted() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected fault (FAULT_INJECT_5XX)\n").into_response();
    }
    next.run(request).await
}

fn drain_expired(drain: Duration) -> StartError {
    StartError::Fatal(format!("in-flight requests did not finish within the {}ms drain timeout", drain.as_millis()))
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let (ready, details) = readiness.report().await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(details)).into_response()
}

/// The metrics, with every dependency checked first (`dependency_up`): a scrape sees Postgres
/// or Redis down even where nothing polls `/readyz`.
async fn metrics_text(State((metrics, readiness)): State<(Metrics, Readiness)>) -> Response {
    for (name, _, problem) in readiness.check_all().await {
        metrics.set_dependency(&name, problem.is_none());
    }
    let mut response = metrics.render().into_response();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// The built-in endpoint `path` names, if any (also its metrics route label).
pub fn builtin_route(path: &str) -> Option<&'static str> {
    ["/healthz", "/readyz", "/metrics"].into_iter().find(|b| *b == path)
}

struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> InFlight<'a> {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Clients choose the method; only the standard ones become label values, so a scanner sending
/// random methods cannot grow the metric set without bound.
fn method_label(method: &http::Method) -> &'static str {
    use http::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A request id for a request that came without one: a per-process random prefix (drawn once)
/// and a counter, so ids are unique across replicas without a random-number syscall per request.
pub fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&next_request_id()).expect("hex is a valid header value")
}

/// [`new_request_id`] as bytes (32 lowercase hex digits), for servers that write headers themselves.
pub fn next_request_id() -> [u8; 32] {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    for (i, nibble) in
        (0..16).rev().map(|k| (prefix >> (k * 4)) & 0xf).chain((0..16).rev().map(|k| (n >> (k * 4)) & 0xf)).enumerate()
    {
        id[i] = b"0123456789abcdef"[nibble as usize];
    }
    id
}

/// Is a caller's `x-request-id` fit to log and forward (short, printable ASCII)?
pub fn acceptable_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// The observe middleware: a request id, a span, the in-flight gauge, the per-route latency
/// metric (labelled by the router's `MatchedPath`) and one log line per request.
async fn observe(State(metrics): State<Metrics>, mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(REQUEST_ID) {
        Some(v) if acceptable_id(v.as_bytes()) => v.clone(),
        _ => {
            let id = new_request_id();
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let observation =
        Observation::begin(&metrics, id.to_str().unwrap_or_default(), request.method(), request.uri().path());
    let mut response = next.run(request).instrument(observation.span().clone()).await;
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    observation.finish(route, response.status().as_u16());
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// One request, observed as every service observes its requests: a span carrying the request
/// id (log lines inside it name the request), the in-flight gauge while it lives (also when it
/// is dropped half-way because the client went away), and at [`Observation::finish`] the
/// per-route count and latency and a `request finished` log line. The axum middleware and the
/// gateway's proxy path both observe through it.
pub struct Observation<'m> {
    metrics: &'m Metrics,
    started: Instant,
    method: &'static str,
    probe: bool,
    span: tracing::Span,
    _in_flight: InFlight<'m>,
}

impl<'m> Observation<'m> {
    pub fn begin(metrics: &'m Metrics, request_id: &str, method: &http::Method, path: &str) -> Observation<'m> {
        Observation {
            metrics,
            started: Instant::now(),
            method: method_label(method),
            probe: builtin_route(path).is_some(),
            span: tracing::info_span!("request", request_id, method = %method, path),
            _in_flight: InFlight::enter(&metrics.in_flight),
        }
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub fn finish(self, route: &str, status: u16) {
        let elapsed = self.started.elapsed();
        self.metrics.observe_request(route, self.method, status, elapsed.as_secs_f64());
        if tracing::enabled!(tracing::Level::DEBUG) || (!self.probe && tracing::enabled!(tracing::Level::INFO)) {
            self.span.in_scope(|| {
                let ms = elapsed.as_secs_f64() * 1000.0;
                if self.probe {
                    tracing::debug!(status, route, latency_ms = ms, "request finished");
                } else {
                    tracing::info!(status, route, latency_ms = ms, "request finished");
                }
            });
        }
    }
}

/// `/healthz`, `/readyz` and `/metrics` for servers that are not an axum `Router`.
pub async fn builtin_endpoint(path: &str, readiness: &Readiness, metrics: &Metrics) -> Option<Response> {
    Some(match builtin_route(path)? {
        "/healthz" => "ok".into_response(),
        "/readyz" => readyz(State(readiness.clone())).await,
        _ => metrics_text(State((metrics.clone(), readiness.clone()))).await,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_faults_are_exactly_the_share_asked_for() {
        for (share, of, expected) in [(0.0, 100, 0), (0.2, 100, 20), (0.25, 1000, 250), (1.0, 7, 7)] {
            let faults = Faults::new(share);
            let faulted = (0..of).filter(|_| faults.next_is_faulted()).count();
            assert_eq!(faulted, expected, "share {share} of {of}");
        }
    }

    #[test]
    fn the_fault_share_is_read_and_bounded() {
        let info = ServiceInfo { name: "demo", version: "1", port: 8080, health_path: "/healthz" };
        let config = ServerConfig::from_env(&Env::from_pairs(&[("FAULT_INJECT_5XX", "0.3")]), &info).expect("valid");
        assert_eq!(config.fault_5xx, 0.3);
        assert_eq!(ServerConfig::from_env(&Env::from_pairs(&[]), &info).expect("valid").fault_5xx, 0.0);
        for bad in ["1.5", "-0.1", "often"] {
            let err = ServerConfig::from_env(&Env::from_pairs(&[("FAULT_INJECT_5XX", bad)]), &info).expect_err(bad);
            assert!(err.to_string().contains("FAULT_INJECT_5XX"), "{err}");
        }
    }
}
