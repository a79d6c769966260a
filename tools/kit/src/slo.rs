//! The service-level objectives of an environment (`infra/slo/ENV.toml`): what `deploy verify`
//! holds a release to and what the generated alert rules (`cargo xtask alerts`) page on. One
//! model and one PromQL per metric, so verification and alerting cannot disagree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::UsageError;
pub use crate::handoff::SLO_DIR;

/// What an objective may hold a release to: (metric, what it is, its PromQL over `{sel}` and
/// `{w}`, the value when Prometheus has no series (`None`: no data is a failure)).
pub const METRICS: &[(&str, &str, &str, Option<f64>)] = &[
    (
        "error_ratio",
        "share of requests answered 5xx",
        r#"(sum(increase(http_requests_total{sel,status=~"5.."}[{w}])) or vector(0)) / sum(increase(http_requests_total{sel}[{w}]))"#,
        None,
    ),
    (
        "latency_p99_seconds",
        "99th percentile of request latency",
        r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{sel}[{w}])))"#,
        None,
    ),
    ("restarts", "process restarts", r#"sum(changes(process_start_time_seconds{jobs}[{w}]))"#, Some(0.0)),
    ("readiness_flaps", "times a service's scrape went up or down", r#"sum(changes(up{jobs}[{w}]))"#, Some(0.0)),
    (
        "jobs_dead_lettered",
        "jobs given up on after their last attempt",
        r#"sum(increase(jobs_dead_lettered_total{jobs}[{w}]))"#,
        Some(0.0),
    ),
];

/// The same metrics per Prometheus job, for the alert rules (one series per service, labelled
/// `job`): (metric, PromQL over `{sel}`/`{jobs}` and `{w}`). No `or vector(0)`: a service with
/// no 5xx series has no error ratio to alert on.
pub const BY_JOB: &[(&str, &str)] = &[
    (
        "error_ratio",
        r#"sum by (job) (increase(http_requests_total{sel,status=~"5.."}[{w}])) / sum by (job) (increase(http_requests_total{sel}[{w}]))"#,
    ),
    (
        "latency_p99_seconds",
        r#"histogram_quantile(0.99, sum by (job, le) (rate(http_request_duration_seconds_bucket{sel}[{w}])))"#,
    ),
    ("restarts", r#"sum by (job) (changes(process_start_time_seconds{jobs}[{w}]))"#),
    ("readiness_flaps", r#"sum by (job) (changes(up{jobs}[{w}]))"#),
    ("jobs_dead_lettered", r#"sum by (job) (increase(jobs_dead_lettered_total{jobs}[{w}]))"#),
];

/// Request metrics of the built-in endpoints (health checks, scrapes) are not traffic.
pub const NOT_TRAFFIC: &str = r#"route!~"/healthz|/readyz|/metrics""#;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SloFile {
    pub verify: VerifySection,
    #[serde(default, rename = "objective")]
    pub objectives: Vec<Objective>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct VerifySection {
    #[serde(default = "default_window", deserialize_with = "duration")]
    pub window: Duration,
    /// A scenario name under infra/loadtest, or a path.
    pub scenario: String,
    pub target: String,
    pub prometheus: String,
    /// Requests per second the scenario sends (default: the scenario's own).
    #[serde(default)]
    pub rps: Option<u32>,
    /// Prometheus jobs whose metrics count (default: every service of ours).
    #[serde(default)]
    pub jobs: Option<Vec<String>>,
    /// After the window: time for Prometheus to scrape the last of it (default 12s, two scrapes).
    #[serde(default = "default_settle", deserialize_with = "duration")]
    pub settle: Duration,
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    pub name: String,
    pub metric: String,
    pub max: f64,
}

fn default_window() -> Duration {
    Duration::from_secs(120)
}

fn default_settle() -> Duration {
    Duration::from_secs(12)
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    crate::duration::flag(&text).map_err(serde::de::Error::custom)
}

/// The SLO file of `env`, checked; `None` when the environment has none.
pub fn load(root: &Path, env: &str) -> Result<Option<(PathBuf, SloFile)>> {
    let path = root.join(SLO_DIR).join(format!("{env}.toml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file = parse(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    Ok(Some((path, file)))
}

pub fn parse(text: &str) -> Result<SloFile, String> {
    let file: SloFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
    if file.objectives.is_empty() {
        return Err("no [[objective]]: a verification holds a release to at least one".into());
    }
    for o in &file.objectives {
        if !METRICS.iter().any(|(m, ..)| *m == o.metric) {
            let known: Vec<&str> = METRICS.iter().map(|(m, ..)| *m).collect();
            return Err(format!("objective `{}`: unknown metric `{}` (known: {})", o.name, o.metric, known.join(", ")));
        }
        if !o.max.is_finite() || o.max < 0.0 {
            return Err(format!("objective `{}`: max must be a number of 0 or more", o.name));
        }
    }
    if file.verify.window < Duration::from_secs(10) {
        return Err("verify.window must be at least 10s (Prometheus needs a few scrapes)".into());
    }
    Ok(file)
}

/// The PromQL of `metric` over `jobs` for a window of `window` (one value for them all).
pub fn query(metric: &str, jobs: &[String], window: Duration) -> Option<String> {
    let (_, _, template, _) = METRICS.iter().find(|(m, ..)| *m == metric)?;
    Some(fill(template, jobs, window))
}

/// The PromQL of `metric` per job (`BY_JOB`), over `jobs`, for a window of `window`.
pub fn query_by_job(metric: &str, jobs: &[String], window: Duration) -> Option<String> {
    let (_, template) = BY_JOB.iter().find(|(m, _)| *m == metric)?;
    Some(fill(template, jobs, window))
}

fn fill(template: &str, jobs: &[String], window: Duration) -> String {
    let jobs_sel = format!(r#"job=~"{}""#, jobs.join("|"));
    template
        .replace("{sel", &format!("{{{jobs_sel},{NOT_TRAFFIC}"))
        .replace("{jobs}", &format!("{{{jobs_sel}}}"))
        .replace("{w}", &format!("{}s", window.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_its_per_job_form_over_the_same_series() {
        assert_eq!(METRICS.len(), BY_JOB.len());
        for (metric, _, total, _) in METRICS {
            let (_, by_job) = BY_JOB.iter().find(|(m, _)| m == metric).expect("per-job form");
            // The same series and selectors: only the aggregation differs.
            let series = |q: &str| -> Vec<String> {
                q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| {
                        w.ends_with("_total") || w.ends_with("_bucket") || w.ends_with("_seconds") || *w == "up"
                    })
                    .map(str::to_string)
                    .collect()
            };
            let (mut a, mut b) = (series(total), series(by_job));
            a.sort();
            a.dedup();
            b.sort();
            b.dedup();
            assert_eq!(a, b, "{metric}");
        }
        let q = query_by_job("error_ratio", &["api".into()], Duration::from_secs(300)).expect("query");
        assert!(q.starts_with(r#"sum by (job) (increase(http_requests_total{job=~"api",route!~"/healthz|/readyz|/metrics",status=~"5.."}[300s]))"#), "{q}");
    }
}
