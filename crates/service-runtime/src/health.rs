//! Liveness and readiness. `/healthz` answers while the process runs; `/readyz` answers 200
//! only when every registered dependency check passes and the service is not draining.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// How long one dependency check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
    /// (name, check, gates readiness). Soft checks are reported but never make the service unready.
    checks: Vec<(String, Check, bool)>,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Add a dependency check, e.g. `SELECT 1` against Postgres.
    pub fn with_check<F, Fut>(self, name: &str, check: F) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.push(name, check, true)
    }

    /// A dependency the service degrades without (reported as `degraded: ...`, still ready).
    pub fn with_soft_check<F, Fut>(self, name: &str, check: F) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.push(name, check, false)
    }

    fn push<F, Fut>(mut self, name: &str, check: F, gates_readiness: bool) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name.to_string(), Arc::new(move || Box::pin(check()) as CheckFuture), gates_readiness));
        self
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Run every check: (name, gates readiness, the problem if it failed).
    pub async fn check_all(&self) -> Vec<(String, bool, Option<String>)> {
        let mut out = Vec::new();
        for (name, check, hard) in &self.checks {
            let problem = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
            };
            out.push((name.clone(), *hard, problem));
        }
        out
    }

    /// Run every check; `(ready, details)` where details name each check's result.
    pub async fn report(&self) -> (bool, Value) {
        let mut ready = !self.is_draining();
        let mut details = Map::new();
        for (name, hard, problem) in self.check_all().await {
            let outcome = match (&problem, hard) {
                (None, _) => "ok".to_string(),
                (Some(e), true) => format!("error: {e}"),
                (Some(e), false) => format!("degraded: {e}"),
            };
            ready &= !(hard && problem.is_some());
            details.insert(name, Value::String(outcome));
        }
        let status = if self.is_draining() {
            "draining"
        } else if ready {
            "ready"
        } else {
            "not ready"
        };
        (ready, json!({ "status": status, "checks": details }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_check_passes_and_not_draining() {
        let r = Readiness::new().with_check("db", || async { Ok(()) });
        assert!(r.report().await.0);
        let r = r.with_check("cache", || async { Err("connection refused".to_string()) });
        let (ready, details) = r.report().await;
        assert!(!ready);
        assert_eq!(details["checks"]["cache"], "error: connection refused");
        assert_eq!(details["checks"]["db"], "ok");

        let soft = Readiness::new().with_soft_check("doorbell", || async { Err("refused".to_string()) });
        let (ready, details) = soft.report().await;
        assert!(ready, "a soft dependency never makes the service unready");
        assert_eq!(details["checks"]["doorbell"], "degraded: refused");

        let ok = Readiness::new();
        ok.start_draining();
        let (ready, details) = ok.report().await;
        assert!(!ready);
        assert_eq!(details["status"], "draining");
    }
}
