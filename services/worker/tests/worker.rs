//! The worker as a real process against a real Postgres and Redis (started by `cargo xtask test`):
//! end to end through the API, at-least-once after a crash, exactly-once recording after a
//! stall, dead-lettering, and graceful shutdown mid-job.

use std::time::Duration;

use job_queue::{Job, JobQueue, JobSpec, NewJob, Status};
use sqlx::postgres::PgPoolOptions;
use test_support::{ServiceProcess, block_on, eventually, fresh_database, http, redis_url};

const WORKER: &str = env!("CARGO_BIN_EXE_worker");

/// Run one queue operation on its own short-lived pool (each test call has its own runtime).
fn with_queue<T>(database_url: &str, f: impl AsyncFnOnce(JobQueue) -> T) -> T {
    block_on(async {
        let pool = PgPoolOptions::new().max_connections(1).connect(database_url).await.expect("connect");
        let queue = JobQueue::new(pool);
        queue.migrate().await.expect("migrate");
        f(queue).await
    })
}

fn enqueue(database_url: &str, spec: JobSpec, max_attempts: i32) -> uuid::Uuid {
    with_queue(database_url, async |q| {
        q.create(NewJob { spec, max_attempts, idempotency_key: None, request_hash: None }).await.expect("create").0.id
    })
}

fn job(database_url: &str, id: uuid::Uuid) -> Job {
    with_queue(database_url, async |q| q.get(id).await.expect("get").expect("job exists"))
}

fn start_worker(database_url: &str, redis: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    let mut env = vec![("DATABASE_URL", database_url.to_string()), ("REDIS_URL", redis.to_string())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let mut worker = ServiceProcess::start(WORKER, &env);
    worker.wait_until_ok("/readyz", Duration::from_secs(30));
    worker
}

fn wait_for_status(database_url: &str, id: uuid::Uuid, status: Status, timeout: Duration) -> Job {
    eventually(&format!("job {id} to be {status:?}"), timeout, || {
        let j = job(database_url, id);
        (j.status == status).then_some(j)
    })
}

#[test]
fn a_job_posted_to_the_api_is_run_by_the_worker() {
    let db = fresh_database("worker_e2e");
    let redis = redis_url();
    let _worker = start_worker(&db, &redis, &[("POLL_INTERVAL", "5s")]);
    let mut api = ServiceProcess::start(
        &test_support::workspace_binary("api"),
        &[("DATABASE_URL", db.clone()), ("REDIS_URL", redis.clone())],
    );
    api.wait_until_ok("/readyz", Duration::from_secs(30));

    let r = http(
        "POST",
        &api.url("/v1/jobs"),
        &[("Content-Type", "application/json")],
        br#"{"kind":"hash","input":"hello","iterations":50000}"#,
    )
    .expect("POST");
    assert_eq!(r.status, 201, "{}", r.text());
    let created: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let id = created["id"].as_str().expect("id").to_string();

    // The poll interval is 5 s: finishing well before it shows the Redis wake-up did its job.
    let done = eventually("the job to succeed", Duration::from_secs(4), || {
        let r = http("GET", &api.url(&format!("/v1/jobs/{id}")), &[], b"").ok()?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        (v["status"] == "succeeded").then_some(v)
    });
    assert_eq!(done["result"]["hash"], job_queue::work::hash("hello", 50000));
    assert_eq!(done["attempts"], 1);
}

#[test]
fn a_worker_killed_mid_job_leaves_it_to_another_which_records_it_once() {
    let db = fresh_database("worker_kill");
    let redis = redis_url();
    let fast_lease = [("VISIBILITY_TIMEOUT", "1s"), ("POLL_INTERVAL", "200ms")];
    let first = start_worker(&db, &redis, &fast_lease);
    let id = enqueue(&db, JobSpec::Sleep { duration_ms: 1500 }, 5);
    wait_for_status(&db, id, Status::Running, Duration::from_secs(10));
    first.signal("KILL");
    drop(first);

    let _second = start_worker(&db, &redis, &fast_lease);
    let done = wait_for_status(&db, id, Status::Succeeded, Duration::from_secs(15));
    assert_eq!(done.attempts, 2, "one lost attempt, one that finished");
    assert_eq!(done.completions, 1, "recorded exactly once");
    assert_eq!(done.result, Some(serde_json::json!({"slept_ms": 1500})));
}

#[test]
fn a_stalled_worker_that_wakes_up_late_cannot_record_a_second_result() {
    let db = fresh_database("worker_stall");
    let redis = redis_url();
    let fast_lease = [("VISIBILITY_TIMEOUT", "1s"), ("POLL_INTERVAL", "200ms")];
    let stalled = start_worker(&db, &redis, &fast_lease);
    let id = enqueue(&db, JobSpec::Sleep { duration_ms: 1200 }, 5);
    wait_for_status(&db, id, Status::Running, Duration::from_secs(10));
    stalled.signal("STOP");

    let _rescuer = start_worker(&db, &redis, &fast_lease);
    let done = wait_for_status(&db, id, Status::Succeeded, Duration::from_secs(15));
    assert_eq!(done.attempts, 2);

    stalled.signal("CONT");
    eventually("the stalled worker to notice it lost the lease", Duration::from_secs(10), || {
        let m = http("GET", &stalled.url("/metrics"), &[], b"").ok()?.text();
        m.contains("job_leases_lost_total 1").then_some(())
    });
    let after = job(&db, id);
    assert_eq!(after.completions, 1, "the late finisher's result was not recorded");
    assert_eq!(after.updated_at, done.updated_at, "nothing changed after the takeover");
}

#[test]
fn a_poison_job_is_dead_lettered_after_its_attempts() {
    let db = fresh_database("worker_poison");
    let redis = redis_url();
    let worker = start_worker(&db, &redis, &[("RETRY_BASE", "20ms"), ("POLL_INTERVAL", "100ms")]);
    let id = enqueue(&db, JobSpec::Fail { message: "bad input".into() }, 3);
    let dead = wait_for_status(&db, id, Status::Dead, Duration::from_secs(15));
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.last_error.as_deref(), Some("bad input"));
    assert_eq!(dead.completions, 0);
    let metrics = http("GET", &worker.url("/metrics"), &[], b"").expect("metrics").text();
    assert!(metrics.contains(r#"jobs_dead_lettered_total{kind="fail"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"job_failures_total{kind="fail"} 3"#), "{metrics}");
    assert!(metrics.contains(r#"job_attempts_total{kind="fail"} 3"#), "{metrics}");
    assert!(metrics.contains("job_queue_depth"), "{metrics}");
}

/// The queue's age is the oldest job that could run now: one that waits counts, one scheduled
/// for later does not; the worker exports it (with the depth) for the alert rules.
#[test]
fn the_oldest_waiting_job_is_measured_and_exported() {
    let db = fresh_database("worker_age");
    let redis = redis_url();
    let empty = with_queue(&db, async |q| q.oldest_waiting_seconds().await.expect("age"));
    assert_eq!(empty, 0.0, "nothing waits");
    let waiting = enqueue(&db, JobSpec::Sleep { duration_ms: 1 }, 1);
    let later = enqueue(&db, JobSpec::Sleep { duration_ms: 1 }, 1);
    block_on(async {
        let pool = PgPoolOptions::new().max_connections(1).connect(&db).await.expect("connect");
        sqlx::query("UPDATE jobs SET run_at = now() - interval '90 seconds' WHERE id = $1")
            .bind(waiting)
            .execute(&pool)
            .await
            .expect("age one");
        sqlx::query("UPDATE jobs SET run_at = now() + interval '1 hour' WHERE id = $1")
            .bind(later)
            .execute(&pool)
            .await
            .expect("schedule one");
    });
    let age = with_queue(&db, async |q| q.oldest_waiting_seconds().await.expect("age"));
    assert!((90.0..120.0).contains(&age), "{age}");
    let worker = start_worker(&db, &redis, &[("POLL_INTERVAL", "100ms")]);
    wait_for_status(&db, waiting, Status::Succeeded, Duration::from_secs(10));
    // Only the job scheduled for later is left: queued, but not waiting yet (one scrape says both;
    // 0 alone is also what the gauge says before the worker's first measurement).
    let metrics = eventually("the worker to export the drained queue", Duration::from_secs(10), || {
        let m = http("GET", &worker.url("/metrics"), &[], b"").ok()?.text();
        (m.contains("job_queue_depth 1\n") && m.contains("job_queue_oldest_seconds 0.0\n")).then_some(m)
    });
    assert!(metrics.contains(r#"dependency_up{dependency="postgres"} 1"#), "{metrics}");
}

#[test]
fn sigterm_lets_the_running_job_finish_then_exits_zero() {
    let db = fresh_database("worker_term");
    let redis = redis_url();
    let mut worker = start_worker(&db, &redis, &[("POLL_INTERVAL", "100ms"), ("DRAIN_TIMEOUT", "10s")]);
    let id = enqueue(&db, JobSpec::Sleep { duration_ms: 1000 }, 5);
    wait_for_status(&db, id, Status::Running, Duration::from_secs(10));
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(15)), Some(0), "{}", worker.logs());
    let done = job(&db, id);
    assert_eq!(done.status, Status::Succeeded, "the job in hand finished before exit");
    assert_eq!(done.attempts, 1);
}

#[test]
fn a_job_whose_worker_dies_on_its_last_attempt_is_dead_lettered() {
    let db = fresh_database("worker_last");
    let redis = redis_url();
    let fast_lease = [("VISIBILITY_TIMEOUT", "1s"), ("POLL_INTERVAL", "200ms")];
    let first = start_worker(&db, &redis, &fast_lease);
    let id = enqueue(&db, JobSpec::Sleep { duration_ms: 5000 }, 1);
    wait_for_status(&db, id, Status::Running, Duration::from_secs(10));
    first.signal("KILL");
    drop(first);
    let second = start_worker(&db, &redis, &fast_lease);
    let dead = wait_for_status(&db, id, Status::Dead, Duration::from_secs(15));
    assert_eq!(dead.attempts, 1, "not run again: it had no attempt left");
    assert!(dead.last_error.as_deref().is_some_and(|e| e.contains("lease expired")), "{:?}", dead.last_error);
    let metrics = http("GET", &second.url("/metrics"), &[], b"").expect("metrics").text();
    assert!(metrics.contains(r#"jobs_dead_lettered_total{kind="sleep"} 1"#), "{metrics}");
}

#[test]
fn without_redis_jobs_still_flow_by_polling_and_services_stay_ready() {
    let db = fresh_database("worker_noredis");
    let no_redis = format!("redis://127.0.0.1:{}", test_support::free_port());
    let worker = start_worker(&db, &no_redis, &[("POLL_INTERVAL", "200ms")]);
    let mut api = ServiceProcess::start(
        &test_support::workspace_binary("api"),
        &[("DATABASE_URL", db.clone()), ("REDIS_URL", no_redis.clone())],
    );
    api.wait_until_ok("/readyz", Duration::from_secs(30));
    let ready = http("GET", &api.url("/readyz"), &[], b"").expect("readyz");
    let details: serde_json::Value = serde_json::from_slice(&ready.body).expect("json");
    assert!(details["checks"]["redis"].as_str().is_some_and(|s| s.starts_with("degraded")), "{details}");

    let r = http(
        "POST",
        &api.url("/v1/jobs"),
        &[("Content-Type", "application/json")],
        br#"{"kind":"sleep","duration_ms":1}"#,
    )
    .expect("POST");
    assert_eq!(r.status, 201, "committed without Redis: {}", r.text());
    let id: uuid::Uuid = serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    wait_for_status(&db, id, Status::Succeeded, Duration::from_secs(10));
    let metrics = http("GET", &api.url("/metrics"), &[], b"").expect("metrics").text();
    assert!(metrics.contains("job_wakeup_failures_total 1"), "{metrics}");
    // A scrape checks the dependencies: the alert rules read Redis down from here.
    assert!(metrics.contains(r#"dependency_up{dependency="redis"} 0"#), "{metrics}");
    assert!(metrics.contains(r#"dependency_up{dependency="postgres"} 1"#), "{metrics}");
    drop(worker);
}
