//! The worker: claims queued jobs, runs them, records results, at least once.
//!
//! Each claim is a lease (`VISIBILITY_TIMEOUT`) kept alive by a heartbeat while the job runs;
//! a worker that dies stops renewing it, and another worker takes the job over once it expires.
//! Only the current lease holder can record a result, so a job is recorded exactly once even
//! when a stalled worker wakes up and finishes late. Failures retry with exponential backoff;
//! after `max_attempts` the job is dead-lettered (`status = dead`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use axum::Router;
use job_queue::{Job, JobQueue, JobSpec};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use service_runtime::metrics::{Labels, latency_histogram};
use service_runtime::server::{Server, Shutdown};
use service_runtime::{Env, Metrics, Readiness, ServerConfig, ServiceInfo, StartError};
use sqlx::postgres::PgPoolOptions;
use tracing::Instrument;

const INFO: ServiceInfo =
    ServiceInfo { name: "worker", version: env!("CARGO_PKG_VERSION"), port: 8082, health_path: "/healthz" };

#[derive(Clone)]
struct Config {
    server: ServerConfig,
    database_url: String,
    redis_url: String,
    concurrency: usize,
    visibility: Duration,
    poll_interval: Duration,
    retry_base: Duration,
    retry_max: Duration,
    startup_timeout: Duration,
}

impl Config {
    fn from_env(env: &Env) -> Result<Config, service_runtime::ConfigError> {
        let config = Config {
            server: ServerConfig::from_env(env, &INFO)?,
            database_url: env.url("DATABASE_URL", &["postgres", "postgresql"])?,
            redis_url: env.url("REDIS_URL", &["redis"])?,
            concurrency: env.int_in("WORKER_CONCURRENCY", 2, 1, 256)?,
            visibility: env.duration_or("VISIBILITY_TIMEOUT", Duration::from_secs(30))?,
            poll_interval: env.duration_or("POLL_INTERVAL", Duration::from_secs(1))?,
            retry_base: env.duration_or("RETRY_BASE", Duration::from_millis(500))?,
            retry_max: env.duration_or("RETRY_MAX", Duration::from_secs(60))?,
            startup_timeout: env.duration_or("STARTUP_TIMEOUT", Duration::from_secs(30))?,
        };
        if config.visibility < Duration::from_millis(300) {
            return Err(service_runtime::ConfigError {
                variable: "VISIBILITY_TIMEOUT".into(),
                problem: "expected at least 300ms (the heartbeat renews it every third of it)".into(),
            });
        }
        Ok(config)
    }
}

/// What the worker reports to Prometheus, beyond the HTTP metrics.
#[derive(Clone)]
struct JobMetrics {
    queue_depth: Gauge,
    queue_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    in_progress: Gauge,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    attempts: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    dead_lettered: Family<Labels, Counter>,
    lost_leases: Counter,
}

impl JobMetrics {
    fn register(metrics: &Metrics) -> JobMetrics {
        let m = JobMetrics {
            queue_depth: Gauge::default(),
            queue_oldest: Gauge::default(),
            in_progress: Gauge::default(),
            duration: Family::new_with_constructor(latency_histogram),
            attempts: Family::default(),
            failures: Family::default(),
            dead_lettered: Family::default(),
            lost_leases: Counter::default(),
        };
        metrics.register("job_queue_depth", "Jobs waiting to run", m.queue_depth.clone());
        metrics.register(
            "job_queue_oldest_seconds",
            "How long the oldest job that could run now has waited",
            m.queue_oldest.clone(),
        );
        metrics.register("jobs_in_progress", "Jobs this worker is running now", m.in_progress.clone());
        metrics.register("job_duration_seconds", "Time to run one attempt, by kind and outcome", m.duration.clone());
        metrics.register("job_attempts", "Attempts started, by kind", m.attempts.clone());
        metrics.register("job_failures", "Attempts that failed, by kind", m.failures.clone());
        metrics.register("jobs_dead_lettered", "Jobs given up on after their last attempt", m.dead_lettered.clone());
        metrics.register(
            "job_leases_lost",
            "Results not recorded because another worker took the job over",
            m.lost_leases.clone(),
        );
        m
    }
}

fn kind_label(kind: &str) -> Labels {
    vec![("kind".into(), kind.into())]
}

#[derive(Clone)]
struct Worker {
    queue: JobQueue,
    redis: redis::Client,
    config: Config,
    metrics: JobMetrics,
}

fn main() -> ExitCode {
    service_runtime::run(INFO, start)
}

async fn start(env: Env) -> Result<(), StartError> {
    let config = Config::from_env(&env)?;
    let pool = PgPoolOptions::new()
        .max_connections(config.concurrency as u32 + 3)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&config.database_url)
        .map_err(|e| StartError::fatal("DATABASE_URL", e))?;
    let queue = JobQueue::new(pool);
    service_runtime::wait_for("postgres", config.startup_timeout, || queue.migrate()).await?;
    let redis = redis::Client::open(config.redis_url.as_str()).map_err(|e| StartError::fatal("REDIS_URL", e))?;
    // Redis only speeds up pickup: without it the worker polls Postgres, so it is not awaited.

    let metrics = Metrics::new(&INFO);
    let worker = Worker {
        queue: queue.clone(),
        redis: redis.clone(),
        config: config.clone(),
        metrics: JobMetrics::register(&metrics),
    };
    let readiness = Readiness::new()
        .with_check("postgres", move || {
            let q = queue.clone();
            async move { q.ping().await.map_err(|e| e.to_string()) }
        })
        .with_soft_check("redis", move || {
            let r = redis.clone();
            async move {
                let mut conn = r.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
                redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(|e| e.to_string())
            }
        });
    let shutdown = Shutdown::on_signals(readiness.clone())?;

    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..config.concurrency {
        slots.spawn(worker.clone().run_slot(slot, shutdown.clone()));
    }
    tokio::spawn(worker.clone().track_queue_depth(shutdown.clone()));
    tokio::spawn(worker.clone().requeue_expired_leases(shutdown.clone()));

    let drain = config.server.drain_timeout;
    Server { info: INFO, config: config.server, metrics, readiness, shutdown }.serve(Router::new()).await?;
    // HTTP is drained; let jobs in hand finish. Any still running at the deadline keep their
    // lease until it expires, and another worker runs them again (at least once).
    if tokio::time::timeout(drain, async { while slots.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "jobs still running at the drain deadline; they will be retried"
        );
    }
    Ok(())
}

impl Worker {
    async fn run_slot(self, slot: usize, shutdown: Shutdown) {
        let mut wakeups: Option<redis::aio::MultiplexedConnection> = None;
        while !shutdown.is_triggered() {
            match self.queue.claim(self.config.visibility).await {
                Ok(Some(job)) => self.process(job).await,
                Ok(None) => self.wait_for_work(&mut wakeups, &shutdown).await,
                Err(e) => {
                    tracing::warn!(slot, error = %e, "cannot claim jobs; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                        () = shutdown.clone().wait() => {}
                    }
                }
            }
        }
        tracing::debug!(slot, "slot stopped");
    }

    /// Block on the Redis wake-up list for at most one poll interval (each slot on its own
    /// connection, since BRPOP holds it). Without Redis, just sleep: Postgres is the truth.
    async fn wait_for_work(&self, conn: &mut Option<redis::aio::MultiplexedConnection>, shutdown: &Shutdown) {
        let poll = self.config.poll_interval;
        if conn.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Duration::from_secs(1))
                .set_response_timeout(poll + Duration::from_secs(2));
            *conn = self.redis.get_multiplexed_async_connection_with_config(&config).await.ok();
        }
        let wait = async {
            match conn.as_mut() {
                Some(c) => {
                    let popped = redis::cmd("BRPOP")
                        .arg(job_queue::WAKEUP_LIST)
                        .arg(poll.as_secs_f64())
                        .query_async::<Option<(String, String)>>(c)
                        .await;
                    if popped.is_err() {
                        *conn = None;
                        tokio::time::sleep(poll).await;
                    }
                }
                None => tokio::time::sleep(poll).await,
            }
        };
        tokio::select! {
            () = wait => {}
            () = shutdown.clone().wait() => {}
        }
    }

    async fn process(&self, job: Job) {
        let span = tracing::info_span!("job", job_id = %job.id, kind = job.spec.kind(), attempt = job.attempts);
        self.process_in_span(job).instrument(span).await;
    }

    async fn process_in_span(&self, job: Job) {
        let Some(token) = job.lease_token else { return };
        let kind = job.spec.kind();
        self.metrics.attempts.get_or_create(&kind_label(kind)).inc();
        self.metrics.in_progress.inc();
        let started = Instant::now();
        let outcome = self.run_with_heartbeat(&job, token).await;
        self.metrics.in_progress.dec();
        let outcome_label = if outcome.is_ok() { "succeeded" } else { "failed" };
        self.metrics
            .duration
            .get_or_create(&vec![("kind".into(), kind.into()), ("outcome".into(), outcome_label.into())])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(result) => match self.queue.complete(job.id, token, result).await {
                Ok(true) => tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "job succeeded"),
                Ok(false) => {
                    self.metrics.lost_leases.inc();
                    tracing::warn!("finished after another worker took the job over; result not recorded twice");
                }
                Err(e) => tracing::warn!(error = %e, "could not record the result; the job will run again"),
            },
            Err(error) => {
                self.metrics.failures.get_or_create(&kind_label(kind)).inc();
                let retry = (job.attempts < job.max_attempts)
                    .then(|| job_queue::backoff(job.attempts, self.config.retry_base, self.config.retry_max));
                self.record_failure(&job, token, &error, retry).await;
            }
        }
    }

    async fn record_failure(&self, job: &Job, token: uuid::Uuid, error: &str, retry: Option<Duration>) {
        match self.queue.fail(job.id, token, error, retry).await {
            Ok(true) => match retry {
                Some(delay) => tracing::info!(error, retry_in_ms = delay.as_millis() as u64, "job failed; will retry"),
                None => {
                    self.metrics.dead_lettered.get_or_create(&kind_label(job.spec.kind())).inc();
                    tracing::warn!(error, attempts = job.attempts, "job dead-lettered");
                }
            },
            Ok(false) => {
                self.metrics.lost_leases.inc();
                tracing::warn!("failure not recorded: another worker took the job over");
            }
            Err(e) => tracing::warn!(error = %e, "could not record the failure; the lease will expire"),
        }
    }

    /// Run the job while renewing its lease every third of the visibility timeout.
    async fn run_with_heartbeat(&self, job: &Job, token: uuid::Uuid) -> Result<serde_json::Value, String> {
        let work = execute(job.spec.clone());
        tokio::pin!(work);
        let mut beat = tokio::time::interval(self.config.visibility / 3);
        beat.tick().await;
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = beat.tick() => {
                    if let Ok(false) = self.queue.extend_lease(job.id, token, self.config.visibility).await {
                        tracing::warn!("lease lost while running; finishing anyway, the result will not be recorded");
                    }
                }
            }
        }
    }

    /// Every worker sweeps for expired leases (half a visibility timeout apart); the sweep is
    /// one idempotent UPDATE, so several workers doing it at once is harmless.
    async fn requeue_expired_leases(self, shutdown: Shutdown) {
        let every = (self.config.visibility / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_triggered() {
            match self.queue.requeue_expired().await {
                Ok(swept) => {
                    for kind in &swept.dead_kinds {
                        self.metrics.dead_lettered.get_or_create(&kind_label(kind)).inc();
                    }
                    if swept.requeued + swept.dead_kinds.len() > 0 {
                        tracing::warn!(
                            requeued = swept.requeued,
                            dead_lettered = swept.dead_kinds.len(),
                            "took back jobs whose worker stopped mid-job"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot sweep expired leases"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.clone().wait() => {}
            }
        }
    }

    async fn track_queue_depth(self, shutdown: Shutdown) {
        while !shutdown.is_triggered() {
            if let Ok(depth) = self.queue.queue_depth().await {
                self.metrics.queue_depth.set(depth);
            }
            if let Ok(age) = self.queue.oldest_waiting_seconds().await {
                self.metrics.queue_oldest.set(age);
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                () = shutdown.clone().wait() => {}
            }
        }
    }
}

/// The job's work. CPU work runs on the blocking pool so it never stalls the async threads.
async fn execute(spec: JobSpec) -> Result<serde_json::Value, String> {
    match spec {
        JobSpec::Hash { input, iterations } => {
            let hash = tokio::task::spawn_blocking(move || job_queue::work::hash(&input, iterations))
                .await
                .map_err(|e| format!("hash task panicked: {e}"))?;
            Ok(serde_json::json!({ "hash": hash }))
        }
        JobSpec::Sleep { duration_ms } => {
            tokio::time::sleep(Duration::from_millis(u64::from(duration_ms))).await;
            Ok(serde_json::json!({ "slept_ms": duration_ms }))
        }
        JobSpec::Fail { message } => Err(message),
    }
}
