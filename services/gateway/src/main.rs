//! The edge gateway: routes requests by path prefix to upstream services.
//!
//! Per route: a deadline (`timeout=`), retries for idempotent methods only (and only when the
//! request never reached the upstream or it answered 502/503/504), a circuit breaker per
//! upstream, a request body size limit, and `x-request-id` forwarded. Its own errors are
//! problem+json: 400 `bad_request`, 404 `no_route`, 413 `body_too_large`, 431
//! `head_too_large`, 502 `bad_gateway`, 503 `circuit_open`, 504 `upstream_timeout`. All I/O is
//! async (tokio); nothing blocks. The proxy path speaks HTTP/1.1 itself (`proxy.rs`) over the
//! shared wire layer (`http1-wire`); see ARCHITECTURE.md for why.

mod breaker;
mod proxy;
mod routes;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use service_runtime::metrics::Labels;
use service_runtime::server::{Server, Shutdown};
use service_runtime::{Env, Metrics, Readiness, ServerConfig, ServiceInfo, StartError};

use breaker::Breaker;
use routes::Route;

const INFO: ServiceInfo =
    ServiceInfo { name: "gateway", version: env!("CARGO_PKG_VERSION"), port: 8080, health_path: "/healthz" };

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

/// One upstream: its breaker, its connections and its counters, resolved once.
struct Upstream {
    /// `http://host:port`, as configured (the metrics' label).
    name: String,
    breaker: Breaker,
    state_gauge: Gauge,
    /// `gateway_upstream_requests` counters, indexed by [`Outcome`].
    outcomes: Vec<Counter>,
    pool: proxy::Pool,
}

impl Upstream {
    fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].inc();
    }

    fn show_breaker(&self) {
        self.state_gauge.set(self.breaker.gauge_value());
    }
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
    /// Longest prefix first; `route_upstream[i]` indexes `upstreams` for `routes[i]`.
    routes: Vec<Route>,
    route_upstream: Vec<usize>,
    upstreams: Vec<Upstream>,
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

    let mut upstreams: Vec<Upstream> = Vec::new();
    let mut route_upstream = Vec::new();
    for route in &config.routes {
        tracing::info!(prefix = %route.prefix, upstream = %route.upstream, timeout_ms = route.timeout.as_millis() as u64, "route");
        let index = match upstreams.iter().position(|u| u.name == route.upstream) {
            Some(i) => i,
            None => {
                let name = route.upstream.clone();
                upstreams.push(Upstream {
                    breaker: Breaker::new(config.breaker_failures, config.breaker_cooldown),
                    state_gauge: breaker_states.get_or_create(&vec![("upstream".into(), name.clone())]).clone(),
                    outcomes: OUTCOME_LABELS
                        .iter()
                        .map(|o| {
                            let labels =
                                vec![("upstream".into(), name.clone()), ("outcome".to_string(), o.to_string())];
                            upstream_requests.get_or_create(&labels).clone()
                        })
                        .collect(),
                    pool: proxy::Pool::new(&name),
                    name,
                });
                upstreams.len() - 1
            }
        };
        route_upstream.push(index);
    }
    let gateway = Arc::new(Gateway {
        routes: config.routes,
        route_upstream,
        upstreams,
        max_body: config.max_body,
        retries: config.retries,
        retried,
    });
    let readiness = Readiness::new();
    let shutdown = Shutdown::on_signals(readiness.clone())?;
    let server = Server { info: INFO, config: config.server, metrics, readiness, shutdown };
    server.serve_connections(move |stream, connection| proxy::serve(gateway.clone(), stream, connection)).await
}
