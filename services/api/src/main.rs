//! The jobs API: `POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs?status=&limit=&cursor=`.
//!
//! A job is committed to Postgres before it is acknowledged (the jobs table is the queue, see
//! the job-queue crate), then a wake-up hint goes to Redis for idle workers. Errors are
//! problem+json with stable codes.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use job_queue::{Job, JobQueue, JobSpec, NewJob, QueueError, Status};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use service_runtime::server::{Server, Shutdown};
use service_runtime::{Env, Metrics, Problem, Readiness, ServerConfig, ServiceInfo, StartError};
use sqlx::postgres::PgPoolOptions;

const INFO: ServiceInfo =
    ServiceInfo { name: "api", version: env!("CARGO_PKG_VERSION"), port: 8081, health_path: "/healthz" };

/// Largest accepted request body; a job description is small.
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_PAGE: i64 = 100;
/// Wake-up hints kept in Redis. Hints are interchangeable (any hint makes a worker claim the
/// oldest due job), so under a backlog the list is capped instead of growing with it.
const WAKEUP_BACKLOG: i64 = 1000;

struct Config {
    server: ServerConfig,
    database_url: String,
    redis_url: String,
    db_max_connections: u32,
    default_max_attempts: i32,
    startup_timeout: Duration,
}

impl Config {
    fn from_env(env: &Env) -> Result<Config, service_runtime::ConfigError> {
        Ok(Config {
            server: ServerConfig::from_env(env, &INFO)?,
            database_url: env.url("DATABASE_URL", &["postgres", "postgresql"])?,
            redis_url: env.url("REDIS_URL", &["redis"])?,
            db_max_connections: env.int_in("DB_MAX_CONNECTIONS", 10, 1, 1000)?,
            default_max_attempts: env.int_in("JOB_MAX_ATTEMPTS", 5, 1, 20)?,
            startup_timeout: env.duration_or("STARTUP_TIMEOUT", Duration::from_secs(30))?,
        })
    }
}

#[derive(Clone)]
struct App {
    queue: JobQueue,
    doorbell: Doorbell,
    default_max_attempts: i32,
    created: Family<Vec<(String, String)>, Counter>,
    wakeup_failures: Counter,
}

fn main() -> ExitCode {
    service_runtime::run(INFO, start)
}

async fn start(env: Env) -> Result<(), StartError> {
    let config = Config::from_env(&env)?;
    let pool = PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&config.database_url)
        .map_err(|e| StartError::fatal("DATABASE_URL", e))?;
    let queue = JobQueue::new(pool);
    service_runtime::wait_for("postgres", config.startup_timeout, || queue.migrate()).await?;

    let client = redis::Client::open(config.redis_url.as_str()).map_err(|e| StartError::fatal("REDIS_URL", e))?;
    let doorbell = Doorbell::new(client);

    let metrics = Metrics::new(&INFO);
    let created = Family::<Vec<(String, String)>, Counter>::default();
    let wakeup_failures = Counter::default();
    metrics.register("jobs_created", "Jobs committed, by kind", created.clone());
    metrics.register("job_wakeup_failures", "Wake-up hints that could not reach Redis", wakeup_failures.clone());

    let readiness = {
        let (q, bell) = (queue.clone(), doorbell.clone());
        Readiness::new()
            .with_check("postgres", move || {
                let q = q.clone();
                async move { q.ping().await.map_err(|e| e.to_string()) }
            })
            // Without Redis, jobs are still committed and workers still find them by polling.
            .with_soft_check("redis", move || {
                let bell = bell.clone();
                async move { bell.ping().await }
            })
    };
    let app = App { queue, doorbell, default_max_attempts: config.default_max_attempts, created, wakeup_failures };
    let shutdown = Shutdown::on_signals(readiness.clone())?;
    Server { info: INFO, config: config.server, metrics, readiness, shutdown }.serve(router(app)).await
}

fn router(app: App) -> Router {
    Router::new()
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{id}", get(get_job))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// The body of `POST /v1/jobs`. Which fields apply depends on `kind`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CreateJob {
    kind: String,
    input: Option<String>,
    iterations: Option<u32>,
    duration_ms: Option<u32>,
    message: Option<String>,
    max_attempts: Option<i32>,
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_body", "The job description is invalid").detail(detail)
}

/// Turn a parsed body into a job spec, or say exactly what is wrong with it.
fn validate(body: &CreateJob, default_max_attempts: i32) -> Result<(JobSpec, i32), Problem> {
    let unexpected = |field: &str, present: bool| -> Result<(), Problem> {
        if present { Err(invalid(format!("`{field}` does not apply to kind \"{}\"", body.kind))) } else { Ok(()) }
    };
    let spec = match body.kind.as_str() {
        "hash" => {
            unexpected("duration_ms", body.duration_ms.is_some())?;
            unexpected("message", body.message.is_some())?;
            let input = body.input.clone().ok_or_else(|| invalid("kind \"hash\" needs `input` (a string)"))?;
            if input.len() > 4096 {
                return Err(invalid("`input` must be at most 4096 bytes"));
            }
            let iterations = body.iterations.ok_or_else(|| invalid("kind \"hash\" needs `iterations`"))?;
            if !(1..=100_000_000).contains(&iterations) {
                return Err(invalid("`iterations` must be from 1 to 100000000"));
            }
            JobSpec::Hash { input, iterations }
        }
        "sleep" => {
            unexpected("input", body.input.is_some())?;
            unexpected("iterations", body.iterations.is_some())?;
            unexpected("message", body.message.is_some())?;
            let duration_ms = body.duration_ms.ok_or_else(|| invalid("kind \"sleep\" needs `duration_ms`"))?;
            if !(1..=600_000).contains(&duration_ms) {
                return Err(invalid("`duration_ms` must be from 1 to 600000"));
            }
            JobSpec::Sleep { duration_ms }
        }
        "fail" => {
            unexpected("input", body.input.is_some())?;
            unexpected("iterations", body.iterations.is_some())?;
            unexpected("duration_ms", body.duration_ms.is_some())?;
            JobSpec::Fail { message: body.message.clone().unwrap_or_else(|| "failed on purpose".into()) }
        }
        other => return Err(invalid(format!("unknown kind \"{other}\" (expected hash, sleep or fail)"))),
    };
    let max_attempts = body.max_attempts.unwrap_or(default_max_attempts);
    if !(1..=20).contains(&max_attempts) {
        return Err(invalid("`max_attempts` must be from 1 to 20"));
    }
    Ok((spec, max_attempts))
}

fn store_error(e: &sqlx::Error) -> Problem {
    tracing::warn!(error = %e, "job store error");
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "The job store is unavailable")
                .detail("retry later; nothing was changed")
        }
        _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Unexpected job store error"),
    }
}

/// Stable fingerprint of a request body (keys sorted), to tell a retry from a key reused for
/// a different job.
fn fingerprint(body: &CreateJob) -> String {
    let canonical = serde_json::to_value(body).map(|v| v.to_string()).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[derive(Serialize)]
struct JobView<'a> {
    #[serde(flatten)]
    job: &'a Job,
}

async fn create_job(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct.to_str().unwrap_or("").starts_with("application/json")
    {
        return Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Send JSON")
            .detail("Content-Type must be application/json")
            .into_response();
    }
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Some(k.to_string())
        }
        Some(_) => {
            return Problem::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", "Invalid Idempotency-Key")
                .detail("use 1 to 200 visible ASCII characters, e.g. a UUID")
                .into_response();
        }
    };
    let parsed: CreateJob = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return invalid(e.to_string()).into_response(),
    };
    let (spec, max_attempts) = match validate(&parsed, app.default_max_attempts) {
        Ok(v) => v,
        Err(p) => return p.into_response(),
    };
    let kind = spec.kind();
    let new =
        NewJob { spec, max_attempts, request_hash: key.as_ref().map(|_| fingerprint(&parsed)), idempotency_key: key };
    let (job, created) = match app.queue.create(new).await {
        Ok(v) => v,
        Err(QueueError::IdempotencyConflict) => {
            return Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", "Idempotency-Key reused")
                .detail("this key was already used for a different job; use a new key")
                .into_response();
        }
        Err(QueueError::Database(e)) => return store_error(&e).into_response(),
    };
    if created {
        app.created.get_or_create(&vec![("kind".into(), kind.into())]).inc();
        wake_a_worker(&app, job.id).await;
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = (status, axum::Json(JobView { job: &job })).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if !created {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Best effort: the job is already committed; a lost hint only delays it by one worker poll.
async fn wake_a_worker(app: &App, id: uuid::Uuid) {
    if let Err(e) = app.doorbell.ring(id).await {
        app.wakeup_failures.inc();
        tracing::warn!(job = %id, error = %e, "no wake-up hint sent; workers will find the job on their next poll");
    }
}

/// The Redis connection for wake-up hints. Redis is optional: when it is down, `ring` fails
/// fast (no reconnect attempt for a second after a failure) instead of slowing every request.
#[derive(Clone)]
struct Doorbell {
    client: redis::Client,
    state: Arc<Mutex<BellState>>,
}

#[derive(Default)]
struct BellState {
    conn: Option<redis::aio::MultiplexedConnection>,
    failed_at: Option<std::time::Instant>,
}

impl Doorbell {
    fn new(client: redis::Client) -> Doorbell {
        Doorbell { client, state: Arc::default() }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        {
            let state = self.state.lock().map_err(|_| "poisoned".to_string())?;
            if let Some(conn) = &state.conn {
                return Ok(conn.clone());
            }
            if state.failed_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err("redis was unreachable less than a second ago".into());
            }
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(Duration::from_millis(500));
        let result = self.client.get_multiplexed_async_connection_with_config(&config).await;
        let mut state = self.state.lock().map_err(|_| "poisoned".to_string())?;
        match result {
            Ok(conn) => {
                state.conn = Some(conn.clone());
                state.failed_at = None;
                Ok(conn)
            }
            Err(e) => {
                state.failed_at = Some(std::time::Instant::now());
                Err(e.to_string())
            }
        }
    }

    fn forget(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.conn = None;
            state.failed_at = Some(std::time::Instant::now());
        }
    }

    async fn ring(&self, id: uuid::Uuid) -> Result<(), String> {
        let mut conn = self.connection().await?;
        let pushed = redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(job_queue::WAKEUP_LIST)
            .arg(id.to_string())
            .ignore()
            .cmd("LTRIM")
            .arg(job_queue::WAKEUP_LIST)
            .arg(0)
            .arg(WAKEUP_BACKLOG - 1)
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        pushed.map_err(|e| {
            self.forget();
            e.to_string()
        })
    }

    async fn ping(&self) -> Result<(), String> {
        let mut conn = self.connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(|e| {
            self.forget();
            e.to_string()
        })
    }
}

async fn get_job(State(app): State<App>, Path(id): Path<String>) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return Problem::new(StatusCode::BAD_REQUEST, "invalid_id", "Invalid job id")
            .detail("job ids are UUIDs")
            .into_response();
    };
    match app.queue.get(id).await {
        Ok(Some(job)) => axum::Json(JobView { job: &job }).into_response(),
        Ok(None) => Problem::new(StatusCode::NOT_FOUND, "job_not_found", "Job not found")
            .detail(format!("no job {id}"))
            .into_response(),
        Err(e) => store_error(&e).into_response(),
    }
}

#[derive(Serialize)]
struct ListView<'a> {
    jobs: Vec<JobView<'a>>,
    next_cursor: Option<String>,
}

fn bad_query(detail: impl Into<String>) -> Response {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "Invalid query parameters").detail(detail).into_response()
}

/// Cursors are opaque to clients: `c` + the last seen position in hex.
fn encode_cursor(seq: i64) -> String {
    format!("c{seq:x}")
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    i64::from_str_radix(cursor.strip_prefix('c')?, 16).ok().filter(|s| *s > 0)
}

async fn list_jobs(State(app): State<App>, Query(params): Query<HashMap<String, String>>) -> Response {
    if let Some(unknown) = params.keys().find(|k| !["status", "limit", "cursor"].contains(&k.as_str())) {
        return bad_query(format!("unknown parameter `{unknown}` (known: status, limit, cursor)"));
    }
    let status = match params.get("status").map(|s| Status::parse(s)) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => return bad_query("`status` must be queued, running, succeeded or dead"),
    };
    let limit = match params.get("limit").map(|l| l.parse::<i64>()) {
        None => 20,
        Some(Ok(l)) if (1..=MAX_PAGE).contains(&l) => l,
        Some(_) => return bad_query(format!("`limit` must be from 1 to {MAX_PAGE}")),
    };
    let before = match params.get("cursor").map(|c| decode_cursor(c)) {
        None => None,
        Some(Some(seq)) => Some(seq),
        Some(None) => return bad_query("`cursor` is not one this API returned"),
    };
    match app.queue.list(status, limit, before).await {
        Ok(page) => axum::Json(ListView {
            jobs: page.jobs.iter().map(|job| JobView { job }).collect(),
            next_cursor: page.next_before.map(encode_cursor),
        })
        .into_response(),
        Err(e) => store_error(&e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CreateJob {
        serde_json::from_str(json).expect("parses")
    }

    #[test]
    fn valid_bodies_become_specs() {
        let (spec, attempts) = validate(&body(r#"{"kind":"hash","input":"x","iterations":5}"#), 5).expect("valid");
        assert_eq!(spec, JobSpec::Hash { input: "x".into(), iterations: 5 });
        assert_eq!(attempts, 5);
        let (spec, attempts) = validate(&body(r#"{"kind":"fail","max_attempts":2}"#), 5).expect("valid");
        assert_eq!(spec, JobSpec::Fail { message: "failed on purpose".into() });
        assert_eq!(attempts, 2);
    }

    #[test]
    fn invalid_bodies_say_what_is_wrong() {
        let cases = [
            (r#"{"kind":"hash","iterations":5}"#, "needs `input`"),
            (r#"{"kind":"hash","input":"x","iterations":0}"#, "`iterations` must be from 1"),
            (r#"{"kind":"sleep","duration_ms":5,"input":"x"}"#, "`input` does not apply to kind \"sleep\""),
            (r#"{"kind":"teleport"}"#, "unknown kind \"teleport\""),
            (r#"{"kind":"fail","max_attempts":0}"#, "`max_attempts` must be from 1 to 20"),
        ];
        for (json, expected) in cases {
            let problem = validate(&body(json), 5).expect_err(json);
            assert!(problem.detail.as_deref().unwrap_or("").contains(expected), "{json}: {:?}", problem.detail);
            assert_eq!(problem.code, "invalid_body");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(1234)), Some(1234));
        assert_eq!(decode_cursor("1234"), None);
        assert_eq!(decode_cursor("czz"), None);
        assert_eq!(decode_cursor("c0"), None);
    }

    #[test]
    fn fingerprints_ignore_key_order_but_not_values() {
        let a = body(r#"{"kind":"hash","input":"x","iterations":5}"#);
        let b = body(r#"{"iterations":5,"input":"x","kind":"hash"}"#);
        let c = body(r#"{"kind":"hash","input":"y","iterations":5}"#);
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
