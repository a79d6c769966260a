//! The service runtime kit: what every service in this repository needs to run in production.
//!
//! - [`config`]: typed configuration from environment variables, with one-line errors.
//! - [`telemetry`]: `tracing` logs (JSON when not on a terminal), request ids on every line.
//! - [`metrics`]: Prometheus `/metrics` with per-route request counts, latency and in-flight.
//! - [`health`]: `/healthz` (alive) and `/readyz` (dependencies reachable, false while draining).
//! - [`server`]: serve a router with all of the above and shut down gracefully on SIGTERM/SIGINT.
//! - [`healthcheck`]: the `healthcheck` subcommand for container HEALTHCHECKs without curl.
//! - [`problem`]: RFC 7807 `application/problem+json` errors with stable codes.
//!
//! A service's `main` is one call to [`run`].

pub mod config;
pub mod health;
pub mod healthcheck;
pub mod metrics;
pub mod problem;
pub mod server;
pub mod telemetry;

use std::future::Future;
use std::process::ExitCode;

pub use config::{ConfigError, Env};
pub use health::Readiness;
pub use metrics::Metrics;
pub use problem::Problem;
pub use server::ServerConfig;

/// Exit code when configuration is missing or invalid (nothing was started).
pub const EXIT_CONFIG: u8 = 2;

/// Static facts about a service, mirrored from its `[package.metadata.service]`.
#[derive(Clone, Copy, Debug)]
pub struct ServiceInfo {
    pub name: &'static str,
    pub version: &'static str,
    /// Default HTTP port (overridden by `PORT`).
    pub port: u16,
    pub health_path: &'static str,
}

/// The git commit this binary was built from (`unknown` outside a checkout).
pub const GIT_SHA: &str = env!("SERVICE_GIT_SHA");

/// Run a service binary: `healthcheck` subcommand, or configure and serve until a signal.
///
/// `start` receives the process environment and returns the service's future; it runs on a
/// multi-threaded tokio runtime with logging already set up. A [`ConfigError`] it returns is
/// printed as one line and exits with code 2.
pub fn run<F, Fut>(info: ServiceInfo, start: F) -> ExitCode
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = Result<(), StartError>>,
{
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => {}
        Some("healthcheck") => return healthcheck::run(&info, &Env::process()),
        Some("--version") => {
            println!("{} {} ({})", info.name, info.version, GIT_SHA);
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("{}: unknown argument `{other}` (usage: {} [healthcheck | --version])", info.name, info.name);
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    telemetry::init();
    // One worker thread (TOKIO_WORKER_THREADS=1, e.g. a one-CPU container) runs on the
    // current-thread scheduler: same behaviour, no cross-thread wake-ups or work stealing.
    let one_thread = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", info.name);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(start(Env::process())) {
        Ok(()) => {
            tracing::info!(service = info.name, "stopped");
            ExitCode::SUCCESS
        }
        Err(StartError::Config(e)) => {
            eprintln!("{}: {e}", info.name);
            ExitCode::from(EXIT_CONFIG)
        }
        Err(StartError::Fatal(e)) => {
            tracing::error!(service = info.name, error = %e, "fatal");
            eprintln!("{}: {e}", info.name);
            ExitCode::FAILURE
        }
    }
}

/// Why a service could not run.
#[derive(Debug)]
pub enum StartError {
    /// Bad configuration: exit 2 with the message.
    Config(ConfigError),
    /// Anything else that stops the service (cannot bind, cannot migrate, drain timed out).
    Fatal(String),
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> StartError {
        StartError::Config(e)
    }
}

impl StartError {
    pub fn fatal(context: &str, e: impl std::fmt::Display) -> StartError {
        StartError::Fatal(format!("{context}: {e}"))
    }
}

/// Retry `attempt` until it succeeds or `deadline` passes: dependencies (Postgres, Redis) may
/// start after the service, as they do in a compose stack or a pod.
pub async fn wait_for<T, E, F, Fut>(what: &str, deadline: std::time::Duration, mut attempt: F) -> Result<T, StartError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let started = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if started.elapsed() + delay > deadline => {
                return Err(StartError::Fatal(format!("{what} not reachable within {}s: {e}", deadline.as_secs())));
            }
            Err(e) => {
                tracing::warn!(dependency = what, error = %e, retry_in_ms = delay.as_millis() as u64, "waiting for dependency");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}
