//! `loadgen merge`: combine reports of runs made side by side (several generator machines, or
//! several processes) into one, exactly: the histograms add, the counts add, and the SLOs are
//! judged again on the merged figures, the way one generator would have judged them.

use crate::report::{self, EndpointReport, Report, ReportView, SecondReport, SloReport, Summary};
use crate::slo::{Limit, Slo};
use crate::stats;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

fn add_all(parts: &[&str]) -> Result<Histogram<u64>, String> {
    let mut all = stats::histogram();
    for text in parts {
        stats::add(&mut all, &stats::decode(text)?);
    }
    Ok(all)
}

fn merge_endpoint(parts: &[&EndpointReport]) -> Result<EndpointReport, String> {
    let first = parts[0];
    let latency = add_all(&parts.iter().map(|p| p.hdr.latency.as_str()).collect::<Vec<_>>())?;
    let service = add_all(&parts.iter().map(|p| p.hdr.service_time.as_str()).collect::<Vec<_>>())?;
    let corrected = match parts.iter().map(|p| p.hdr.latency_corrected.as_deref()).collect::<Option<Vec<_>>>() {
        Some(all) => Some(add_all(&all)?),
        None => None,
    };
    let mut status = BTreeMap::new();
    let mut failures = BTreeMap::new();
    for p in parts {
        for (k, n) in &p.status {
            *status.entry(k.clone()).or_insert(0) += n;
        }
        for (k, n) in &p.failures {
            *failures.entry(k.clone()).or_insert(0) += n;
        }
    }
    let count: u64 = parts.iter().map(|p| p.count).sum();
    let tally = report::Tally {
        count,
        // Side-by-side runs: their rates add.
        rps: parts.iter().map(|p| p.rps).sum(),
        status,
        failures,
        errors: parts.iter().map(|p| p.errors).sum(),
        bytes_in: parts.iter().map(|p| p.bytes_in).sum(),
    };
    Ok(EndpointReport::new(&first.name, tally, &latency, corrected.as_ref(), &service))
}

/// Merges reports of one scenario; `names` label the parts in messages.
pub fn merge(parts: &[(String, Report)]) -> Result<Report, String> {
    let (first_name, first) = parts.first().ok_or("nothing to merge")?;
    let endpoints_of = |r: &Report| r.endpoints.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    for (name, r) in parts {
        if r.schema_version != report::SCHEMA_VERSION {
            return Err(format!(
                "{name}: report schema {}, this loadgen merges schema {}",
                r.schema_version,
                report::SCHEMA_VERSION
            ));
        }
        if endpoints_of(r) != endpoints_of(first) || r.scenario.model != first.scenario.model {
            return Err(format!(
                "{name} ran {} model with endpoints [{}], but {first_name} ran {} with [{}]; only runs of one scenario merge",
                r.scenario.model,
                endpoints_of(r).join(", "),
                first.scenario.model,
                endpoints_of(first).join(", ")
            ));
        }
    }
    let reports: Vec<&Report> = parts.iter().map(|(_, r)| r).collect();
    let mut endpoints = Vec::new();
    for i in 0..first.endpoints.len() {
        endpoints.push(merge_endpoint(&reports.iter().map(|r| &r.endpoints[i]).collect::<Vec<_>>())?);
    }
    let overall = merge_endpoint(&reports.iter().map(|r| &r.overall).collect::<Vec<_>>())?;
    let lag = match reports.iter().map(|r| r.load.schedule_lag_hdr.as_deref()).collect::<Option<Vec<_>>>() {
        Some(all) => Some(add_all(&all)?),
        None => None,
    };
    let sum = |f: fn(&Report) -> u64| reports.iter().map(|r| f(r)).sum::<u64>();
    let sum_f = |f: fn(&Report) -> f64| reports.iter().map(|r| f(r)).sum::<f64>();
    let requests = (sum(|r| r.load.completed) + sum(|r| r.load.warmup_requests)).max(1);
    let mut seconds: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for r in &reports {
        for row in &r.timeseries {
            let entry = seconds.entry(row.t).or_default();
            entry.0 += row.completed;
            entry.1 += row.errors;
        }
    }
    let mut merged = Report {
        schema_version: report::SCHEMA_VERSION,
        tool: first.tool.clone(),
        scenario: first.scenario.clone(),
        run: report::RunReport {
            duration_s: reports.iter().map(|r| r.run.duration_s).fold(0.0, f64::max),
            measured_s: reports.iter().map(|r| r.run.measured_s).fold(0.0, f64::max),
            cores: reports.iter().map(|r| r.run.cores).sum(),
            valid: reports.iter().all(|r| r.run.valid),
            invalid_reasons: parts
                .iter()
                .flat_map(|(name, r)| r.run.invalid_reasons.iter().map(move |m| format!("{name}: {m}")))
                .collect(),
            interrupted: reports.iter().any(|r| r.run.interrupted),
        },
        load: report::LoadReport {
            target_rps: reports.iter().map(|r| r.load.target_rps).sum(),
            achieved_rps: sum_f(|r| r.load.achieved_rps),
            planned: reports.iter().map(|r| r.load.planned).sum(),
            sent: sum(|r| r.load.sent),
            completed: sum(|r| r.load.completed),
            dropped: sum(|r| r.load.dropped),
            warmup_requests: sum(|r| r.load.warmup_requests),
            max_in_flight: sum(|r| r.load.max_in_flight),
            connections_opened: sum(|r| r.load.connections_opened),
            connection_cap_waits: sum(|r| r.load.connection_cap_waits),
            schedule_lag_us: lag.as_ref().map(Summary::of),
            schedule_lag_hdr: lag.as_ref().map(stats::encode),
            generator_cpu_s: sum_f(|r| r.load.generator_cpu_s),
            generator_user_cpu_s: sum_f(|r| r.load.generator_user_cpu_s),
            generator_cpu_pct: sum_f(|r| r.load.generator_cpu_pct) / reports.len() as f64,
            user_cpu_us_per_request: sum_f(|r| r.load.generator_user_cpu_s) * 1e6 / requests as f64,
        },
        overall,
        endpoints,
        timeseries: seconds
            .into_iter()
            .map(|(t, (completed, errors))| SecondReport { t, completed, errors, p50_us: None, p99_us: None })
            .collect(),
        slo: Vec::new(),
        verdict: String::new(),
        exit_code: 0,
    };
    merged.slo = rejudge(&merged, &reports)?;
    let (code, name) = if merged.run.interrupted {
        (report::exit::INTERRUPTED, "interrupted")
    } else if !merged.run.valid {
        (report::exit::INVALID, "invalid")
    } else if merged.slo.iter().any(|s| !s.pass) {
        (report::exit::SLO_BREACHED, "fail")
    } else {
        (report::exit::PASS, "pass")
    };
    merged.exit_code = code;
    merged.verdict = name.into();
    Ok(merged)
}

/// The parts' SLOs judged on the merged figures. A baseline comparison cannot be redone without
/// its baseline, so it passes only if it passed in every part, and says so.
fn rejudge(merged: &Report, parts: &[&Report]) -> Result<Vec<SloReport>, String> {
    let view = ReportView::new(merged.clone())?;
    let mut out = Vec::new();
    for (i, original) in parts[0].slo.iter().enumerate() {
        let slo = Slo::parse(&original.name)
            .map_err(|e| format!("SLO `{}` in the report does not parse: {e}", original.name))?;
        if matches!(slo.limit, Limit::Baseline(..)) {
            let pass = parts.iter().all(|p| p.slo.get(i).is_some_and(|s| s.pass));
            out.push(SloReport {
                pass,
                note: Some("compared with a baseline: not judged again; passes only if every part passed".into()),
                ..original.clone()
            });
            continue;
        }
        out.extend(slo.evaluate(&view, None).iter().map(SloReport::from));
    }
    Ok(out)
}
