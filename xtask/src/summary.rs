//! The end-of-run report: one row per step with status, duration and how to reproduce a failure.
//!
//! Rendered three ways from the same data: a terminal table, a Markdown table for
//! `$GITHUB_STEP_SUMMARY`, and JSON for machines. All pure, so they are tested as text.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    Passed,
    Failed {
        exit_code: Option<i32>,
        reason: String,
    },
    /// Not started because an earlier step failed and `--keep-going` was not given.
    NotRun {
        because: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub name: String,
    #[serde(flatten)]
    pub status: Status,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    pub command: String,
    pub reproduce: String,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub command: String,
    pub ok: bool,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    pub steps: Vec<StepResult>,
}

impl RunReport {
    pub fn new(command: &str, steps: Vec<StepResult>, duration: Duration) -> RunReport {
        let ok = steps.iter().all(|s| s.status == Status::Passed);
        RunReport { command: command.to_string(), ok, duration, steps }
    }

    pub fn failed(&self) -> impl Iterator<Item = &StepResult> {
        self.steps.iter().filter(|s| matches!(s.status, Status::Failed { .. }))
    }
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 { format!("{secs:.1}s") } else { format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60) }
}

fn status_word(status: &Status) -> &'static str {
    match status {
        Status::Passed => "ok",
        Status::Failed { .. } => "FAILED",
        Status::NotRun { .. } => "not run",
    }
}

fn detail(step: &StepResult) -> String {
    match &step.status {
        Status::Passed => String::new(),
        Status::Failed { reason, .. } => format!("{reason}; rerun: {}", step.reproduce),
        Status::NotRun { because } => because.clone(),
    }
}

/// The terminal table. `paint` colours a status word (identity when colour is off).
pub fn render_table(report: &RunReport, paint: &dyn Fn(&Status, &str) -> String) -> String {
    let name_w = report.steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    let mut out = String::new();
    let _ = writeln!(out, "{:<name_w$}  {:<7}  {:>7}  details", "step", "status", "time");
    for step in &report.steps {
        let word = status_word(&step.status);
        let time = match step.status {
            Status::NotRun { .. } => "-".to_string(),
            _ => format_duration(step.duration),
        };
        let padded = format!("{word:<7}");
        let _ =
            writeln!(out, "{:<name_w$}  {}  {:>7}  {}", step.name, paint(&step.status, &padded), time, detail(step))
                .map(|_| ());
    }
    let verdict = if report.ok { "passed" } else { "FAILED" };
    let _ = write!(
        out,
        "cargo xtask {}: {verdict} in {} ({} passed, {} failed, {} not run)",
        report.command,
        format_duration(report.duration),
        report.steps.iter().filter(|s| s.status == Status::Passed).count(),
        report.failed().count(),
        report.steps.iter().filter(|s| matches!(s.status, Status::NotRun { .. })).count(),
    );
    out.lines().map(|l| l.trim_end().to_string() + "\n").collect()
}

/// A Markdown table for GitHub's job summary page.
pub fn render_markdown(report: &RunReport) -> String {
    let mut out = String::new();
    let icon = if report.ok { "✅" } else { "❌" };
    let _ = writeln!(out, "### {icon} `cargo xtask {}` ({})\n", report.command, format_duration(report.duration));
    let _ = writeln!(out, "| step | status | time | reproduce |");
    let _ = writeln!(out, "| --- | --- | ---: | --- |");
    for step in &report.steps {
        let repro = match step.status {
            Status::Passed => String::new(),
            _ => format!("`{}`", step.reproduce.replace('|', "\\|")),
        };
        let time = match step.status {
            Status::NotRun { .. } => "-".to_string(),
            _ => format_duration(step.duration),
        };
        let _ = writeln!(out, "| {} | {} | {time} | {repro} |", step.name, status_word(&step.status));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunReport {
        let step = |name: &str, status: Status, ms: u64| StepResult {
            name: name.into(),
            status,
            duration: Duration::from_millis(ms),
            command: format!("cargo {name}"),
            reproduce: format!("cargo xtask {name}"),
        };
        RunReport::new(
            "ci",
            vec![
                step("fmt", Status::Passed, 420),
                step("lint", Status::Failed { exit_code: Some(101), reason: "exit code 101".into() }, 61_500),
                step("test", Status::NotRun { because: "lint failed (use --keep-going)".into() }, 0),
            ],
            Duration::from_millis(61_920),
        )
    }

    #[test]
    fn table_lists_every_step_and_how_to_rerun_failures() {
        let text = render_table(&sample(), &|_, s| s.to_string());
        let expected = "\
step  status      time  details
fmt   ok          0.4s
lint  FAILED     1m01s  exit code 101; rerun: cargo xtask lint
test  not run        -  lint failed (use --keep-going)
cargo xtask ci: FAILED in 1m01s (1 passed, 1 failed, 1 not run)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn markdown_escapes_pipes_and_only_shows_reproduce_for_problems() {
        let mut report = sample();
        report.steps[1].reproduce = "a | b".into();
        let md = render_markdown(&report);
        assert!(md.starts_with("### ❌ `cargo xtask ci` (1m01s)"));
        assert!(md.contains("| fmt | ok | 0.4s |  |"));
        assert!(md.contains("| lint | FAILED | 1m01s | `a \\| b` |"));
        assert!(md.contains("| test | not run | - | `cargo xtask test` |"));
    }

    #[test]
    fn json_has_status_and_seconds() {
        let v = serde_json::to_value(sample()).expect("serializable");
        assert_eq!(v["ok"], false);
        assert_eq!(v["steps"][1]["status"], "failed");
        assert_eq!(v["steps"][1]["exit_code"], 101);
        assert_eq!(v["steps"][0]["duration"], 0.42);
    }

    #[test]
    fn report_is_ok_only_when_every_step_passed() {
        let mut r = sample();
        assert!(!r.ok);
        r.steps.truncate(1);
        assert!(RunReport::new("ci", r.steps, Duration::ZERO).ok);
    }
}
