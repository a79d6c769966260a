//! What a run tells people and machines: the verdict (validity first, then SLOs), a human
//! summary, a versioned JSON report carrying the merged histograms, JUnit XML (one case per
//! SLO) and a Markdown block for `$GITHUB_STEP_SUMMARY`.

use crate::engine::RunOutput;
use crate::plan::RatePlan;
use crate::scenario::{Load, Scenario};
use crate::slo::{Metric, Observations, SloResult};
use crate::stats::{self, CoreStats, EndpointStats, FAILURE_NAMES, OUTCOMES, Outcome};
use crate::units::format_nanos;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

pub const SCHEMA_VERSION: u32 = 1;

/// A latency distribution in microseconds, flat so `jq '.endpoints[0].latency_us.p99'` works.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Summary {
            count: h.len(),
            min: us(h.min()),
            mean: h.mean() / 1e3,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Histograms {
    pub latency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_corrected: Option<String>,
    pub service_time: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointReport {
    pub name: String,
    pub count: u64,
    pub rps: f64,
    pub status: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    /// Unexpected statuses plus failures.
    pub errors: u64,
    pub error_rate: f64,
    pub bytes_in: u64,
    pub latency_us: Summary,
    /// Closed model only: latency corrected for coordinated omission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_corrected_us: Option<Summary>,
    pub service_time_us: Summary,
    pub hdr: Histograms,
}

/// An endpoint's counts, before the histograms are summarised beside them.
pub struct Tally {
    pub count: u64,
    pub rps: f64,
    pub status: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    pub errors: u64,
    pub bytes_in: u64,
}

impl EndpointReport {
    /// Counts plus the histograms, each summarised and encoded the one way reports carry them.
    pub fn new(
        name: &str,
        t: Tally,
        latency: &Histogram<u64>,
        corrected: Option<&Histogram<u64>>,
        service: &Histogram<u64>,
    ) -> EndpointReport {
        EndpointReport {
            name: name.to_string(),
            count: t.count,
            rps: t.rps,
            status: t.status,
            failures: t.failures,
            errors: t.errors,
            error_rate: if t.count > 0 { t.errors as f64 / t.count as f64 } else { 0.0 },
            bytes_in: t.bytes_in,
            latency_us: Summary::of(latency),
            latency_corrected_us: corrected.map(Summary::of),
            service_time_us: Summary::of(service),
            hdr: Histograms {
                latency: stats::encode(latency),
                latency_corrected: corrected.map(stats::encode),
                service_time: stats::encode(service),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    pub duration_s: f64,
    pub rps: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub source: Option<String>,
    /// FNV-1a of the scenario text and overrides: equal hashes, comparable runs.
    pub hash: String,
    pub target: String,
    pub model: String,
    pub start_rps: Option<f64>,
    pub stages: Vec<StageReport>,
    pub connections: Option<usize>,
    pub think_time_ms: Option<f64>,
    pub warmup_s: f64,
    pub seed: u64,
    pub max_connections: usize,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub duration_s: f64,
    pub measured_s: f64,
    pub cores: usize,
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
    pub interrupted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub target_rps: Option<f64>,
    pub achieved_rps: f64,
    pub planned: Option<u64>,
    pub sent: u64,
    pub completed: u64,
    pub dropped: u64,
    pub warmup_requests: u64,
    pub max_in_flight: u64,
    pub connections_opened: u64,
    pub connection_cap_waits: u64,
    pub schedule_lag_us: Option<Summary>,
    pub schedule_lag_hdr: Option<String>,
    pub generator_cpu_s: f64,
    pub generator_user_cpu_s: f64,
    pub generator_cpu_pct: f64,
    pub user_cpu_us_per_request: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondReport {
    pub t: u64,
    pub completed: u64,
    pub errors: u64,
    /// Absent in merged reports: per-second percentiles are not kept as histograms.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SloReport {
    pub name: String,
    pub metric: String,
    pub endpoint: Option<String>,
    pub observed: Option<f64>,
    pub limit: Option<f64>,
    pub unit: String,
    pub pass: bool,
    pub note: Option<String>,
    /// The one-line judgement people read: `observed 3.2ms, limit < 25ms`.
    pub detail: String,
}

impl From<&SloResult> for SloReport {
    fn from(r: &SloResult) -> SloReport {
        SloReport {
            name: r.name.clone(),
            metric: r.metric.name().into(),
            endpoint: r.endpoint.clone(),
            observed: r.observed,
            limit: r.limit,
            unit: r.unit.name().into(),
            pass: r.pass,
            note: r.note.clone(),
            detail: r.describe(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: String,
    pub scenario: ScenarioReport,
    pub run: RunReport,
    pub load: LoadReport,
    pub overall: EndpointReport,
    pub endpoints: Vec<EndpointReport>,
    pub timeseries: Vec<SecondReport>,
    pub slo: Vec<SloReport>,
    pub verdict: String,
    pub exit_code: i32,
}

/// Exit codes, distinct per outcome so CI can tell them apart.
pub mod exit {
    pub const PASS: i32 = 0;
    pub const SLO_BREACHED: i32 = 1;
    pub const CONFIG: i32 = 2;
    pub const INVALID: i32 = 3;
    pub const INTERRUPTED: i32 = 130;
}

/// A finished run, merged across cores, as SLOs see it.
pub struct RunResults<'a> {
    pub scenario: &'a Scenario,
    pub merged: CoreStats,
    pub measured: Duration,
    pub target_rps: Option<f64>,
    pub planned_after_warmup: Option<u64>,
    /// Closed model: the expected interval between a connection's requests, for correction.
    pub correction_interval_ns: Option<u64>,
}

impl<'a> RunResults<'a> {
    pub fn new(scenario: &'a Scenario, output: &RunOutput) -> RunResults<'a> {
        let mut merged = CoreStats::new(scenario.endpoints.len());
        for core in &output.cores {
            merged.merge(core);
        }
        let measure_from = output.started + scenario.warmup;
        let measured = output.load_ended.saturating_duration_since(measure_from).max(Duration::from_millis(1));
        let (target_rps, planned_after_warmup, correction_interval_ns) = match &scenario.load {
            Load::Open { start_rps, stages } => {
                let plan = RatePlan::new(*start_rps, stages);
                let planned = plan.total_requests().saturating_sub(plan.count_before(scenario.warmup).ceil() as u64);
                let window = plan.duration().saturating_sub(scenario.warmup).as_secs_f64();
                (Some(planned as f64 / window), Some(planned), None)
            }
            Load::Closed { connections, .. } => {
                let completed: u64 = merged.endpoints.iter().map(EndpointStats::count).sum();
                let interval = (completed > 0)
                    .then(|| (measured.as_nanos() as f64 * *connections as f64 / completed as f64) as u64);
                (None, None, interval.filter(|i| *i > 0))
            }
        };
        RunResults { scenario, merged, measured, target_rps, planned_after_warmup, correction_interval_ns }
    }

    fn index(&self, endpoint: &str) -> Option<usize> {
        self.scenario.endpoints.iter().position(|e| e.name == endpoint)
    }

    fn endpoints_for(&self, endpoint: Option<&str>) -> Vec<&EndpointStats> {
        match endpoint {
            Some(name) => self.index(name).map(|i| vec![&self.merged.endpoints[i]]).unwrap_or_default(),
            None => self.merged.endpoints.iter().collect(),
        }
    }

    fn raw_latency(&self, endpoint: Option<&str>, outcomes: &[Outcome]) -> Histogram<u64> {
        stats::merged(self.endpoints_for(endpoint).iter().map(|e| e.latency_of(outcomes)).collect::<Vec<_>>().iter())
    }

    fn corrected(&self, raw: &Histogram<u64>) -> Option<Histogram<u64>> {
        let interval = self.correction_interval_ns?;
        let mut out = stats::histogram();
        out.add_correct(raw, interval).ok()?;
        Some(out)
    }

    fn completed(&self) -> u64 {
        self.merged.endpoints.iter().map(EndpointStats::count).sum()
    }
}

fn outcomes_for(outcome: Option<Outcome>) -> Vec<Outcome> {
    outcome.map_or(OUTCOMES.to_vec(), |o| vec![o])
}

impl Observations for RunResults<'_> {
    fn endpoint_names(&self) -> Vec<String> {
        self.scenario.endpoints.iter().map(|e| e.name.clone()).collect()
    }

    fn histogram(&self, metric: Metric, endpoint: Option<&str>, outcome: Option<Outcome>) -> Option<Histogram<u64>> {
        let outcomes = outcomes_for(outcome);
        match metric {
            Metric::Latency => {
                let raw = self.raw_latency(endpoint, &outcomes);
                // Closed model: SLOs judge the corrected latency, the one users would have seen.
                Some(self.corrected(&raw).unwrap_or(raw))
            }
            Metric::ServiceTime => Some(stats::merged(
                self.endpoints_for(endpoint).iter().map(|e| e.service_of(&outcomes)).collect::<Vec<_>>().iter(),
            )),
            Metric::ScheduleLag => {
                matches!(self.scenario.load, Load::Open { .. }).then(|| self.merged.schedule_lag.clone())
            }
            Metric::ErrorRate | Metric::Throughput => None,
        }
    }

    fn error_rate(&self, endpoint: Option<&str>) -> Option<(u64, u64)> {
        let parts = self.endpoints_for(endpoint);
        let total: u64 = parts.iter().map(|e| e.count()).sum();
        let bad: u64 = parts.iter().map(|e| e.count_of(Outcome::Unexpected) + e.count_of(Outcome::Failed)).sum();
        Some((bad, total))
    }

    fn throughput(&self) -> f64 {
        self.completed() as f64 / self.measured.as_secs_f64()
    }

    fn target_rps(&self) -> Option<f64> {
        self.target_rps
    }
}

/// A report read back: the baseline of a comparison, or the parts of a merge.
pub struct ReportView {
    pub report: Report,
    endpoints: Vec<(String, Histogram<u64>, Histogram<u64>)>,
    overall: (Histogram<u64>, Histogram<u64>),
    lag: Option<Histogram<u64>>,
}

impl ReportView {
    pub fn read(path: &std::path::Path) -> Result<ReportView, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read the report: {e}", path.display()))?;
        let report: Report =
            serde_json::from_str(&text).map_err(|e| format!("{}: not a loadgen JSON report: {e}", path.display()))?;
        ReportView::new(report).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn new(report: Report) -> Result<ReportView, String> {
        if report.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "report schema {} but this loadgen reads schema {SCHEMA_VERSION}",
                report.schema_version
            ));
        }
        let pick = |e: &EndpointReport| -> Result<(Histogram<u64>, Histogram<u64>), String> {
            let latency = stats::decode(e.hdr.latency_corrected.as_deref().unwrap_or(&e.hdr.latency))?;
            Ok((latency, stats::decode(&e.hdr.service_time)?))
        };
        let mut endpoints = Vec::new();
        for e in &report.endpoints {
            let (l, s) = pick(e).map_err(|m| format!("endpoint `{}`: {m}", e.name))?;
            endpoints.push((e.name.clone(), l, s));
        }
        let overall = pick(&report.overall)?;
        let lag = report
            .load
            .schedule_lag_hdr
            .as_deref()
            .map(stats::decode)
            .transpose()
            .map_err(|m| format!("schedule lag: {m}"))?;
        Ok(ReportView { report, endpoints, overall, lag })
    }
}

impl Observations for ReportView {
    fn endpoint_names(&self) -> Vec<String> {
        self.endpoints.iter().map(|(n, ..)| n.clone()).collect()
    }

    fn histogram(&self, metric: Metric, endpoint: Option<&str>, outcome: Option<Outcome>) -> Option<Histogram<u64>> {
        if outcome.is_some() {
            // Reports keep whole-endpoint histograms only.
            return None;
        }
        let (latency, service) = match endpoint {
            Some(name) => self.endpoints.iter().find(|(n, ..)| n == name).map(|(_, l, s)| (l, s))?,
            None => (&self.overall.0, &self.overall.1),
        };
        match metric {
            Metric::Latency => Some(latency.clone()),
            Metric::ServiceTime => Some(service.clone()),
            Metric::ScheduleLag => self.lag.clone(),
            Metric::ErrorRate | Metric::Throughput => None,
        }
    }

    fn error_rate(&self, endpoint: Option<&str>) -> Option<(u64, u64)> {
        let e = match endpoint {
            Some(name) => self.report.endpoints.iter().find(|e| e.name == name)?,
            None => &self.report.overall,
        };
        Some((e.errors, e.count))
    }

    fn throughput(&self) -> f64 {
        self.report.load.achieved_rps
    }

    fn target_rps(&self) -> Option<f64> {
        self.report.load.target_rps
    }
}

fn fnv1a(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

pub struct Verdict {
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
    pub slos: Vec<SloResult>,
    pub exit_code: i32,
    pub name: &'static str,
}

/// Validity first (a run that could not keep its promise proves nothing), then the SLOs.
pub fn judge(results: &RunResults<'_>, baseline: Option<&dyn Observations>, interrupted: bool) -> Verdict {
    let s = results.scenario;
    let m = &results.merged;
    let mut reasons = Vec::new();
    if let (Some(target), Some(planned)) = (results.target_rps, results.planned_after_warmup) {
        let achieved = m.sent as f64 / results.measured.as_secs_f64();
        // An interrupted run stopped short by request; the rate it did send is still judged.
        let expected = if interrupted { (target * results.measured.as_secs_f64()).floor() } else { planned as f64 };
        if (m.sent as f64) < 0.98 * expected {
            reasons.push(format!(
                "sent {} of {planned} planned requests ({achieved:.1}/s against a target of {target:.1}/s, below 98%)",
                m.sent
            ));
        }
        if !m.schedule_lag.is_empty() {
            let p99 = m.schedule_lag.value_at_quantile(0.99);
            if Duration::from_nanos(p99) > s.lag_tolerance {
                reasons.push(format!(
                    "p99 schedule lag {} is above the {} tolerance: requests left late (generator short of CPU, or waiting for connections)",
                    format_nanos(p99 as f64),
                    format_nanos(s.lag_tolerance.as_nanos() as f64)
                ));
            }
        }
        if m.cap_waits > 0 {
            reasons.push(format!(
                "{} requests found all {} connections busy: the target's latency × rate needs more; raise max_connections",
                m.cap_waits, s.max_connections
            ));
        }
        if m.dropped > 0 {
            reasons.push(format!("{} planned requests were never sent", m.dropped));
        }
    }
    let slos: Vec<SloResult> = s.slos.iter().flat_map(|slo| slo.evaluate(results, baseline)).collect();
    let valid = reasons.is_empty();
    let (exit_code, name) = if interrupted {
        (exit::INTERRUPTED, "interrupted")
    } else if !valid {
        (exit::INVALID, "invalid")
    } else if slos.iter().any(|r| !r.pass) {
        (exit::SLO_BREACHED, "fail")
    } else {
        (exit::PASS, "pass")
    };
    Verdict { valid, invalid_reasons: reasons, slos, exit_code, name }
}

fn endpoint_report(name: &str, e: &EndpointStats, results: &RunResults<'_>) -> EndpointReport {
    let latency = e.latency_of(&OUTCOMES);
    let corrected = results.corrected(&latency);
    let service = e.service_of(&OUTCOMES);
    let count = e.count();
    let errors = e.count_of(Outcome::Unexpected) + e.count_of(Outcome::Failed);
    let mut status: Vec<_> = e.status.clone();
    status.sort_unstable();
    let tally = Tally {
        count,
        rps: count as f64 / results.measured.as_secs_f64(),
        status: status.into_iter().map(|(s, n)| (s.to_string(), n)).collect(),
        failures: FAILURE_NAMES
            .iter()
            .zip(e.failures)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect(),
        errors,
        bytes_in: e.bytes_in,
    };
    EndpointReport::new(name, tally, &latency, corrected.as_ref(), &service)
}

pub fn build(
    results: &RunResults<'_>,
    output: &RunOutput,
    verdict: &Verdict,
    timeseries: Vec<SecondReport>,
    cores: usize,
    interrupted: bool,
) -> Report {
    let s = results.scenario;
    let m = &results.merged;
    let mut all = EndpointStats::default();
    for e in &m.endpoints {
        all.merge(e);
    }
    let completed = results.completed();
    let open = matches!(s.load, Load::Open { .. });
    let (model, start_rps, stages, connections, think) = match &s.load {
        Load::Open { start_rps, stages } => (
            "open",
            Some(*start_rps),
            stages.iter().map(|st| StageReport { duration_s: st.duration.as_secs_f64(), rps: st.rps }).collect(),
            None,
            None,
        ),
        Load::Closed { connections, think_time, .. } => {
            ("closed", None, Vec::new(), Some(*connections), Some(think_time.as_secs_f64() * 1e3))
        }
    };
    let run_s = output.finished.saturating_duration_since(output.started).as_secs_f64();
    let requests = (completed + m.warmup_requests).max(1);
    Report {
        schema_version: SCHEMA_VERSION,
        tool: format!("loadgen {}", env!("CARGO_PKG_VERSION")),
        scenario: ScenarioReport {
            name: s.name.clone(),
            source: s.source.as_ref().map(|p| p.display().to_string()),
            hash: fnv1a(&s.fingerprint),
            target: format!("http://{}", s.target.authority),
            model: model.into(),
            start_rps,
            stages,
            connections,
            think_time_ms: think,
            warmup_s: s.warmup.as_secs_f64(),
            seed: s.seed,
            max_connections: s.max_connections,
            endpoints: s
                .endpoints
                .iter()
                .map(|e| format!("{} {} {} (weight {})", e.name, e.method, e.uri, e.weight))
                .collect(),
        },
        run: RunReport {
            duration_s: run_s,
            measured_s: results.measured.as_secs_f64(),
            cores,
            valid: verdict.valid,
            invalid_reasons: verdict.invalid_reasons.clone(),
            interrupted,
        },
        load: LoadReport {
            target_rps: results.target_rps,
            achieved_rps: results.throughput(),
            planned: results.planned_after_warmup,
            sent: m.sent,
            completed,
            dropped: m.dropped,
            warmup_requests: m.warmup_requests,
            max_in_flight: m.max_in_flight,
            connections_opened: m.connections_opened,
            connection_cap_waits: m.cap_waits,
            schedule_lag_us: open.then(|| Summary::of(&m.schedule_lag)),
            schedule_lag_hdr: open.then(|| stats::encode(&m.schedule_lag)),
            generator_cpu_s: output.cpu.total.as_secs_f64(),
            generator_user_cpu_s: output.cpu.user.as_secs_f64(),
            generator_cpu_pct: 100.0 * output.cpu.total.as_secs_f64() / (run_s * cores as f64).max(1e-9),
            user_cpu_us_per_request: output.cpu.user.as_secs_f64() * 1e6 / requests as f64,
        },
        overall: endpoint_report("*", &all, results),
        endpoints: s.endpoints.iter().zip(&m.endpoints).map(|(e, st)| endpoint_report(&e.name, st, results)).collect(),
        timeseries,
        slo: verdict.slos.iter().map(SloReport::from).collect(),
        verdict: verdict.name.into(),
        exit_code: verdict.exit_code,
    }
}

fn ms(us: f64) -> String {
    format_nanos(us * 1e3)
}

fn status_mix(e: &EndpointReport) -> String {
    let mut parts: Vec<String> = e.status.iter().map(|(s, n)| format!("{s}×{n}")).collect();
    parts.extend(e.failures.iter().map(|(k, n)| format!("{k}×{n}")));
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

/// The summary people read at the end of a run.
pub fn human(r: &Report) -> String {
    let mut out = String::new();
    let sc = &r.scenario;
    let _ = writeln!(
        out,
        "loadgen: {} → {} ({} model, {:.1} s, warm-up {:.1} s excluded, {} core{})",
        sc.name,
        sc.target,
        sc.model,
        r.run.duration_s,
        sc.warmup_s,
        r.run.cores,
        if r.run.cores == 1 { "" } else { "s" }
    );
    let l = &r.load;
    match l.target_rps {
        Some(target) => {
            let _ = writeln!(
                out,
                "load: target {target:.1}/s, achieved {:.1}/s; sent {} of {} planned, dropped {}, max in flight {}, {} connections",
                l.achieved_rps,
                l.sent,
                l.planned.unwrap_or(0),
                l.dropped,
                l.max_in_flight,
                l.connections_opened
            );
        }
        None => {
            let _ = writeln!(
                out,
                "load: {} connections, achieved {:.1}/s, {} requests",
                sc.connections.unwrap_or(0),
                l.achieved_rps,
                l.completed
            );
        }
    }
    if let Some(lag) = &l.schedule_lag_us {
        let _ = writeln!(out, "schedule lag: p50 {}, p99 {}, max {}", ms(lag.p50), ms(lag.p99), ms(lag.max));
    }
    let _ = writeln!(
        out,
        "generator: {:.2} s CPU ({:.0}% of its cores), {:.1} µs user CPU per request",
        l.generator_cpu_s, l.generator_cpu_pct, l.user_cpu_us_per_request
    );
    let _ = writeln!(out);
    let header = ["endpoint", "count", "rps", "status", "errors", "min", "p50", "p90", "p99", "p99.9", "max"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let closed = sc.model == "closed";
    for e in r.endpoints.iter().chain(std::iter::once(&r.overall)) {
        let name = if e.name == "*" { "all".to_string() } else { e.name.clone() };
        let row = |label: String, s: &Summary| {
            vec![
                label,
                e.count.to_string(),
                format!("{:.1}", e.rps),
                status_mix(e),
                e.errors.to_string(),
                ms(s.min),
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.p999),
                ms(s.max),
            ]
        };
        rows.push(row(if closed { format!("{name} (raw)") } else { name.clone() }, &e.latency_us));
        if let Some(c) = &e.latency_corrected_us {
            rows.push(row(format!("{name} (corrected)"), c));
        }
    }
    out.push_str(&table(&rows));
    if !r.slo.is_empty() {
        let _ = writeln!(out);
        let mut rows = vec![vec!["SLO".to_string(), "observed".into(), "limit".into(), "result".into()]];
        for s in &r.slo {
            let parts: Vec<&str> = s.detail.splitn(2, ", limit ").collect();
            rows.push(vec![
                s.name.clone(),
                parts[0].trim_start_matches("observed ").to_string(),
                parts.get(1).map_or(String::new(), |l| l.to_string()),
                if s.pass { "pass".into() } else { "FAIL".into() },
            ]);
        }
        out.push_str(&table(&rows));
    }
    let _ = writeln!(out);
    for reason in &r.run.invalid_reasons {
        let _ = writeln!(out, "invalid run: {reason}");
    }
    let _ = writeln!(out, "verdict: {} (exit {})", r.verdict.to_uppercase(), r.exit_code);
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().enumerate().map(|(i, cell)| format!("{cell:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One test case per SLO, plus one for the run's validity.
pub fn junit(r: &Report) -> String {
    let failures = r.slo.iter().filter(|s| !s.pass).count() + usize::from(!r.run.valid);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuite name=\"loadtest.{}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
        xml(&r.scenario.name),
        r.slo.len() + 1,
        r.run.duration_s
    );
    let _ = write!(out, "  <testcase classname=\"loadtest.{}\" name=\"run is valid\"", xml(&r.scenario.name));
    if r.run.valid {
        out.push_str("/>\n");
    } else {
        let _ =
            writeln!(out, ">\n    <failure message=\"{}\"/>\n  </testcase>", xml(&r.run.invalid_reasons.join("; ")));
    }
    for s in &r.slo {
        let _ = write!(out, "  <testcase classname=\"loadtest.{}\" name=\"{}\"", xml(&r.scenario.name), xml(&s.name));
        if s.pass {
            let _ = writeln!(out, "><system-out>{}</system-out></testcase>", xml(&s.detail));
        } else {
            let _ = writeln!(out, ">\n    <failure message=\"{}\"/>\n  </testcase>", xml(&s.detail));
        }
    }
    out.push_str("</testsuite>\n");
    out
}

/// For `$GITHUB_STEP_SUMMARY`.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let icon = match r.verdict.as_str() {
        "pass" => "✅",
        "fail" => "❌",
        _ => "⚠️",
    };
    let _ = writeln!(out, "### {icon} Load test `{}`: {}\n", r.scenario.name, r.verdict);
    let _ = writeln!(
        out,
        "{} model against {}; achieved {:.1} req/s{}.\n",
        r.scenario.model,
        r.scenario.target,
        r.load.achieved_rps,
        r.load.target_rps.map_or(String::new(), |t| format!(" (target {t:.1})"))
    );
    for reason in &r.run.invalid_reasons {
        let _ = writeln!(out, "- **invalid run:** {reason}");
    }
    let _ = writeln!(
        out,
        "| endpoint | count | rps | errors | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for e in r.endpoints.iter().chain(std::iter::once(&r.overall)) {
        let s = e.latency_corrected_us.as_ref().unwrap_or(&e.latency_us);
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} |",
            if e.name == "*" { "**all**" } else { &e.name },
            e.count,
            e.rps,
            e.errors,
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.p999),
            ms(s.max)
        );
    }
    if !r.slo.is_empty() {
        let _ = writeln!(out, "\n| SLO | result | detail |\n|---|---|---|");
        for s in &r.slo {
            let _ = writeln!(out, "| `{}` | {} | {} |", s.name, if s.pass { "pass" } else { "**FAIL**" }, s.detail);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_in_microseconds() {
        let mut h = stats::histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).expect("in range");
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() < 1.0, "{}", s.p50);
        assert!((s.p99 - 990.0).abs() < 1.0, "{}", s.p99);
        assert_eq!(Summary::of(&stats::histogram()), Summary::default());
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml("p(99) < 25ms & \"x\""), "p(99) &lt; 25ms &amp; &quot;x&quot;");
    }
}
