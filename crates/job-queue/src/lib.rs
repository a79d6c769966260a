//! The jobs table and its queue operations, shared by the API (create, read) and the worker
//! (claim, extend, complete, fail).
//!
//! Why Postgres `FOR UPDATE SKIP LOCKED` rather than a Redis list as the queue: the job and its
//! queue state live in one row, changed in one transaction, so there is no dual write that can
//! half-fail (a job committed but never enqueued, or enqueued but rolled back). Redis only
//! carries a wake-up hint so idle workers react at once instead of on their next poll; a lost
//! hint delays a job by at most one poll interval and never loses it.

pub mod work;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{FromRow, Row};
use uuid::Uuid;

/// The Redis list the API pushes new job ids to and idle workers block on.
pub const WAKEUP_LIST: &str = "jobs:wakeup";

/// Migrations are compiled in and applied at start (sqlx takes an advisory lock, so the API
/// and workers may start together).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What a job does. The cost of each kind is set by its payload, so load tests can shape work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    /// Deterministic CPU work: `iterations` rounds of mixing over `input`.
    Hash { input: String, iterations: u32 },
    /// Waits `duration_ms` (I/O-like work; also how tests catch a worker mid-job).
    Sleep { duration_ms: u32 },
    /// Always fails: exercises retries and the dead-letter state.
    Fail { message: String },
}

impl JobSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Hash { .. } => "hash",
            JobSpec::Sleep { .. } => "sleep",
            JobSpec::Fail { .. } => "fail",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::Queued, Status::Running, Status::Succeeded, Status::Dead].into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: Uuid,
    #[serde(skip)]
    pub seq: i64,
    /// Flattened: a job reads `{"id": …, "kind": "hash", "input": …, "status": …}`.
    #[serde(flatten)]
    pub spec: JobSpec,
    pub status: Status,
    pub attempts: i32,
    pub max_attempts: i32,
    pub result: Option<serde_json::Value>,
    pub last_error: Option<String>,
    pub completions: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub request_hash: Option<String>,
    #[serde(skip)]
    pub lease_token: Option<Uuid>,
}

impl<'r> FromRow<'r, PgRow> for Job {
    fn from_row(row: &'r PgRow) -> Result<Job, sqlx::Error> {
        let payload: serde_json::Value = row.try_get("payload")?;
        let spec = serde_json::from_value(payload).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let status: String = row.try_get("status")?;
        Ok(Job {
            id: row.try_get("id")?,
            seq: row.try_get("seq")?,
            spec,
            status: Status::parse(&status)
                .ok_or_else(|| sqlx::Error::Decode(format!("unknown job status {status:?}").into()))?,
            attempts: row.try_get("attempts")?,
            max_attempts: row.try_get("max_attempts")?,
            result: row.try_get("result")?,
            last_error: row.try_get("last_error")?,
            completions: row.try_get("completions")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            completed_at: row.try_get("completed_at")?,
            request_hash: row.try_get("request_hash")?,
            lease_token: row.try_get("lease_token")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the idempotency key was already used for a different request")]
    IdempotencyConflict,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A request to enqueue a job.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub spec: JobSpec,
    pub max_attempts: i32,
    pub idempotency_key: Option<String>,
    /// Fingerprint of the request body, to tell a retry from a reuse of the key.
    pub request_hash: Option<String>,
}

/// What [`JobQueue::requeue_expired`] did.
#[derive(Debug, Default)]
pub struct Requeued {
    pub requeued: usize,
    /// Kind of each job dead-lettered because its last attempt's worker died.
    pub dead_kinds: Vec<String>,
}

/// One page of a listing, newest first.
#[derive(Debug)]
pub struct Page {
    pub jobs: Vec<Job>,
    /// Pass back as `before` to get the next page; `None` on the last page.
    pub next_before: Option<i64>,
}

#[derive(Clone)]
pub struct JobQueue {
    pool: PgPool,
}

impl JobQueue {
    pub fn new(pool: PgPool) -> JobQueue {
        JobQueue { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    /// Commit a job. Returns it and whether it is new (`false`: an idempotent replay).
    pub async fn create(&self, new: NewJob) -> Result<(Job, bool), QueueError> {
        let payload = serde_json::to_value(&new.spec).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let inserted = sqlx::query_as::<_, Job>(
            "INSERT INTO jobs (id, kind, payload, status, max_attempts, idempotency_key, request_hash)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING *",
        )
        .bind(Uuid::new_v4())
        .bind(new.spec.kind())
        .bind(payload)
        .bind(new.max_attempts)
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(job) = inserted {
            return Ok((job, true));
        }
        let existing = sqlx::query_as::<_, Job>("SELECT * FROM jobs WHERE idempotency_key = $1")
            .bind(&new.idempotency_key)
            .fetch_one(&self.pool)
            .await?;
        if existing.request_hash != new.request_hash {
            return Err(QueueError::IdempotencyConflict);
        }
        Ok((existing, false))
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// Newest first; `before` is the cursor from the previous page.
    pub async fn list(&self, status: Option<Status>, limit: i64, before: Option<i64>) -> Result<Page, sqlx::Error> {
        let mut jobs: Vec<Job> = sqlx::query_as(
            "SELECT * FROM jobs
             WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR seq < $2)
             ORDER BY seq DESC LIMIT $3",
        )
        .bind(status.map(Status::as_str))
        .bind(before)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = jobs.len() as i64 > limit;
        jobs.truncate(limit as usize);
        let next_before = if more { jobs.last().map(|j| j.seq) } else { None };
        Ok(Page { jobs, next_before })
    }

    /// Take the oldest due job. Attempts go up by one; the returned job carries the new lease
    /// token. Only queued jobs are considered, so the partial index `jobs_ready` serves the
    /// query however long the backlog; jobs whose worker died come back through
    /// [`JobQueue::requeue_expired`].
    pub async fn claim(&self, visibility: Duration) -> Result<Option<Job>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_token = $1,
                    lease_until = now() + $2 * interval '1 millisecond', updated_at = now()
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE status = 'queued' AND run_at <= now()
                 ORDER BY run_at
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             RETURNING *",
        )
        .bind(Uuid::new_v4())
        .bind(visibility.as_millis() as f64)
        .fetch_optional(&self.pool)
        .await
    }

    /// Jobs whose lease expired (their worker stopped mid-job) go back to the queue, or to the
    /// dead letters when that was their last attempt. Returns the kinds of the dead-lettered.
    pub async fn requeue_expired(&self) -> Result<Requeued, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "UPDATE jobs SET
                    status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
                    last_error = 'lease expired: the worker stopped mid-job',
                    lease_token = NULL, lease_until = NULL, run_at = now(), updated_at = now()
             WHERE status = 'running' AND lease_until < now()
             RETURNING status, kind",
        )
        .fetch_all(&self.pool)
        .await?;
        let dead: Vec<String> = rows.iter().filter(|(s, _)| s == "dead").map(|(_, k)| k.clone()).collect();
        Ok(Requeued { requeued: rows.len() - dead.len(), dead_kinds: dead })
    }

    /// Keep a long job invisible to other workers. `false`: the lease was lost.
    pub async fn extend_lease(&self, id: Uuid, token: Uuid, visibility: Duration) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = now() + $3 * interval '1 millisecond', updated_at = now()
             WHERE id = $1 AND lease_token = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(token)
        .bind(visibility.as_millis() as f64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Record the result, only if this claim still holds the lease. `false`: another worker
    /// took the job over (this one was too slow), and its result is not recorded twice.
    pub async fn complete(&self, id: Uuid, token: Uuid, result: serde_json::Value) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'succeeded', result = $3, completions = completions + 1,
                    lease_token = NULL, lease_until = NULL, completed_at = now(), updated_at = now()
             WHERE id = $1 AND lease_token = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(token)
        .bind(result)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Record a failed attempt: back to the queue after `retry_in`, or dead-lettered when `None`.
    pub async fn fail(
        &self,
        id: Uuid,
        token: Uuid,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE jobs SET last_error = $3, lease_token = NULL, lease_until = NULL, updated_at = now(),
                    status = CASE WHEN $4::double precision IS NULL THEN 'dead' ELSE 'queued' END,
                    run_at = now() + coalesce($4, 0) * interval '1 millisecond'
             WHERE id = $1 AND lease_token = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(token)
        .bind(error)
        .bind(retry_in.map(|d| d.as_millis() as f64))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Jobs waiting to run (due now or later).
    pub async fn queue_depth(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'").fetch_one(&self.pool).await
    }

    /// How long the oldest job that could run now has been waiting, in seconds (0 when none
    /// waits): a queue that stops draining shows here before its depth grows.
    pub async fn oldest_waiting_seconds(&self) -> Result<f64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(run_at)), 0)::float8 \
             FROM jobs WHERE status = 'queued' AND run_at <= now()",
        )
        .fetch_one(&self.pool)
        .await
    }
}

/// Exponential backoff for attempt `n` (1-based): base, 2x base, 4x base, ... capped.
pub fn backoff(attempt: i32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 20) as u32;
    base.saturating_mul(1u32 << exp).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_serialise_with_a_kind_tag() {
        let spec = JobSpec::Hash { input: "a".into(), iterations: 3 };
        let v = serde_json::to_value(&spec).expect("json");
        assert_eq!(v, serde_json::json!({"kind": "hash", "input": "a", "iterations": 3}));
        assert_eq!(serde_json::from_value::<JobSpec>(v).expect("round trip"), spec);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        let got: Vec<u128> = (1..=6).map(|n| backoff(n, base, cap).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn statuses_round_trip() {
        for s in [Status::Queued, Status::Running, Status::Succeeded, Status::Dead] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("done"), None);
    }
}
