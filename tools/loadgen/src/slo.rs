//! SLO expressions in k6's grammar, with units required and selectors checked before the run.
//!
//! ```text
//! latency{endpoint=create_job}: p(99) < 25ms
//! latency{endpoint=*,outcome=expected}: p(99.9) <= 80ms
//! service_time: p(50) < 2ms
//! schedule_lag: p(99) < 1ms
//! error_rate < 0.1%
//! error_rate{endpoint=get_job} < 1%
//! throughput >= 0.98 * target
//! throughput >= 500/s
//! latency{endpoint=*}: p(99) < baseline.p(99) * 1.10
//! ```
//! A misspelt metric, selector key, endpoint or unit is an error, never a check that silently
//! passes (the failure mode of k6 thresholds on unknown tags).

use crate::stats::Outcome;
use crate::units::{format_nanos, parse_duration};
use hdrhistogram::Histogram;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Latency,
    ServiceTime,
    ScheduleLag,
    ErrorRate,
    Throughput,
}

const METRICS: &str = "latency, service_time, schedule_lag, error_rate, throughput";

impl Metric {
    fn parse(name: &str) -> Result<Metric, String> {
        Ok(match name {
            "latency" => Metric::Latency,
            "service_time" => Metric::ServiceTime,
            "schedule_lag" => Metric::ScheduleLag,
            "error_rate" => Metric::ErrorRate,
            "throughput" => Metric::Throughput,
            other => return Err(format!("unknown metric `{other}`; known metrics: {METRICS}")),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Latency => "latency",
            Metric::ServiceTime => "service_time",
            Metric::ScheduleLag => "schedule_lag",
            Metric::ErrorRate => "error_rate",
            Metric::Throughput => "throughput",
        }
    }

    fn is_timing(self) -> bool {
        matches!(self, Metric::Latency | Metric::ServiceTime | Metric::ScheduleLag)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum EndpointSelector {
    All,
    One(String),
    /// `endpoint=*`: the check is made for every endpoint separately.
    Each,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregate {
    Percentile(f64),
    Min,
    Max,
    Mean,
}

impl Aggregate {
    fn parse(text: &str) -> Result<(Aggregate, &str), String> {
        let text = text.trim_start();
        if let Some(rest) = text.strip_prefix("p(") {
            let close = rest.find(')').ok_or("`p(` is not closed; write e.g. `p(99)`")?;
            let value: f64 = rest[..close]
                .trim()
                .parse()
                .map_err(|_| format!("`p({})` needs a number between 0 and 100", &rest[..close]))?;
            if !(0.0..=100.0).contains(&value) {
                return Err(format!("`p({value})` is out of range; percentiles are between 0 and 100"));
            }
            return Ok((Aggregate::Percentile(value), &rest[close + 1..]));
        }
        for (word, agg) in [
            ("min", Aggregate::Min),
            ("max", Aggregate::Max),
            ("mean", Aggregate::Mean),
            ("avg", Aggregate::Mean),
            ("med", Aggregate::Percentile(50.0)),
        ] {
            if let Some(rest) = text.strip_prefix(word)
                && !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')
            {
                return Ok((agg, rest));
            }
        }
        Err(format!("expected an aggregate (`p(99)`, `min`, `max`, `mean`) at `{text}`"))
    }

    pub fn of(self, h: &Histogram<u64>) -> f64 {
        match self {
            Aggregate::Percentile(p) => h.value_at_quantile(p / 100.0) as f64,
            Aggregate::Min => h.min() as f64,
            Aggregate::Max => h.max() as f64,
            Aggregate::Mean => h.mean(),
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aggregate::Percentile(p) => write!(f, "p({p})"),
            Aggregate::Min => f.write_str("min"),
            Aggregate::Max => f.write_str("max"),
            Aggregate::Mean => f.write_str("mean"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn parse(text: &str) -> Result<(Op, &str), String> {
        let text = text.trim_start();
        for (sym, op) in [("<=", Op::Le), (">=", Op::Ge), ("<", Op::Lt), (">", Op::Gt)] {
            if let Some(rest) = text.strip_prefix(sym) {
                return Ok((op, rest));
            }
        }
        Err(format!("expected a comparison (`<`, `<=`, `>`, `>=`) at `{text}`"))
    }

    fn holds(self, observed: f64, limit: f64) -> bool {
        match self {
            Op::Lt => observed < limit,
            Op::Le => observed <= limit,
            Op::Gt => observed > limit,
            Op::Ge => observed >= limit,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    Nanos(f64),
    /// A fraction (the text said a percentage).
    Fraction(f64),
    PerSecond(f64),
    /// A multiple of the plan's target rate.
    TargetTimes(f64),
    /// The same metric and selector in the baseline report, with an aggregate, times a factor.
    Baseline(Aggregate, f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub text: String,
    pub metric: Metric,
    pub endpoint: EndpointSelector,
    pub outcome: Option<Outcome>,
    pub aggregate: Option<Aggregate>,
    pub op: Op,
    pub limit: Limit,
}

impl Slo {
    pub fn parse(text: &str) -> Result<Slo, String> {
        let trimmed = text.trim();
        let name_end = trimmed.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(trimmed.len());
        if name_end == 0 {
            return Err(format!("expected a metric name at the start; known metrics: {METRICS}"));
        }
        let metric = Metric::parse(&trimmed[..name_end])?;
        let mut rest = &trimmed[name_end..];
        let (mut endpoint, mut outcome) = (EndpointSelector::All, None);
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}').ok_or("selector `{` is not closed")?;
            for pair in inner[..close].split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (key, value) =
                    pair.split_once('=').ok_or_else(|| format!("selector `{pair}` needs `key=value`"))?;
                let value = value.trim().trim_matches('"');
                match key.trim() {
                    "endpoint" if value == "*" => endpoint = EndpointSelector::Each,
                    "endpoint" => endpoint = EndpointSelector::One(value.to_string()),
                    "outcome" => {
                        outcome = Some(match value {
                            "expected" => Outcome::Expected,
                            "unexpected" => Outcome::Unexpected,
                            "failed" => Outcome::Failed,
                            other => {
                                return Err(format!("unknown outcome `{other}`; use expected, unexpected or failed"));
                            }
                        })
                    }
                    other => return Err(format!("unknown selector `{other}`; selectors are `endpoint` and `outcome`")),
                }
            }
            rest = &inner[close + 1..];
        }
        if metric == Metric::ScheduleLag && (endpoint != EndpointSelector::All || outcome.is_some()) {
            return Err("schedule_lag belongs to the generator, not an endpoint: it takes no selector".into());
        }
        if metric == Metric::Throughput && (endpoint != EndpointSelector::All || outcome.is_some()) {
            return Err("throughput is measured for the whole run: it takes no selector".into());
        }
        if metric == Metric::ErrorRate && outcome.is_some() {
            return Err("error_rate counts outcomes itself: it takes no `outcome` selector".into());
        }
        rest = rest.trim_start();
        rest = rest.strip_prefix(':').unwrap_or(rest);
        let aggregate = if metric.is_timing() {
            let (agg, after) = Aggregate::parse(rest).map_err(|e| {
                format!("{e} (a {} check needs one, e.g. `{}: p(99) < 25ms`)", metric.name(), metric.name())
            })?;
            rest = after;
            Some(agg)
        } else {
            None
        };
        let (op, rhs) = Op::parse(rest)?;
        let limit = parse_limit(metric, rhs.trim())?;
        Ok(Slo { text: trimmed.to_string(), metric, endpoint, outcome, aggregate, op, limit })
    }

    /// Checks the selector against the scenario's endpoints before anything is sent.
    pub fn check(&self, endpoints: &[String]) -> Result<(), String> {
        if let EndpointSelector::One(name) = &self.endpoint
            && !endpoints.iter().any(|e| e == name)
        {
            return Err(format!("unknown endpoint `{name}`; the scenario's endpoints are: {}", endpoints.join(", ")));
        }
        Ok(())
    }

    /// Checks that a baseline comparison has a baseline holding the endpoints it names.
    pub fn check_baseline(&self, endpoints: &[String], baseline: Option<&dyn Observations>) -> Result<(), String> {
        if let Limit::Baseline(..) = self.limit {
            let baseline =
                baseline.ok_or("this check compares with a baseline; pass one with `--baseline REPORT.json`")?;
            let names = baseline.endpoint_names();
            for name in self.endpoints(endpoints) {
                if let Some(name) = name
                    && !names.iter().any(|n| n == name)
                {
                    return Err(format!(
                        "endpoint `{name}` is not in the baseline report (it has: {})",
                        names.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    fn endpoints<'a>(&'a self, all: &'a [String]) -> Vec<Option<&'a str>> {
        match &self.endpoint {
            EndpointSelector::All => vec![None],
            EndpointSelector::One(name) => vec![Some(name.as_str())],
            EndpointSelector::Each => all.iter().map(|n| Some(n.as_str())).collect(),
        }
    }

    pub fn evaluate(&self, run: &dyn Observations, baseline: Option<&dyn Observations>) -> Vec<SloResult> {
        let names = run.endpoint_names();
        self.endpoints(&names).into_iter().map(|endpoint| self.evaluate_one(run, baseline, endpoint)).collect()
    }

    fn evaluate_one(
        &self,
        run: &dyn Observations,
        baseline: Option<&dyn Observations>,
        endpoint: Option<&str>,
    ) -> SloResult {
        let name = match (endpoint, &self.endpoint) {
            (Some(e), EndpointSelector::Each) => self.text.replacen("endpoint=*", &format!("endpoint={e}"), 1),
            _ => self.text.clone(),
        };
        let unit = match self.metric {
            Metric::ErrorRate => Unit::Percent,
            Metric::Throughput => Unit::PerSecond,
            _ => Unit::Nanos,
        };
        let mut result = SloResult {
            name,
            metric: self.metric,
            op: self.op,
            endpoint: endpoint.map(str::to_string),
            observed: None,
            limit: None,
            unit,
            pass: false,
            note: None,
        };
        let observed = match self.metric {
            Metric::ErrorRate => {
                run.error_rate(endpoint).and_then(|(bad, total)| (total > 0).then(|| bad as f64 / total as f64))
            }
            Metric::Throughput => Some(run.throughput()),
            timing => run
                .histogram(timing, endpoint, self.outcome)
                .filter(|h| !h.is_empty())
                .map(|h| self.aggregate.expect("timing checks have an aggregate").of(&h)),
        };
        let limit = match &self.limit {
            Limit::Nanos(v) | Limit::Fraction(v) | Limit::PerSecond(v) => Some(*v),
            Limit::TargetTimes(f) => match run.target_rps() {
                Some(target) => Some(f * target),
                None => {
                    result.note = Some("no target rate in a closed-model run; use an absolute `N/s`".into());
                    None
                }
            },
            Limit::Baseline(agg, factor) => baseline
                .and_then(|b| b.histogram(self.metric, endpoint, self.outcome))
                .filter(|h| !h.is_empty())
                .map(|h| agg.of(&h) * factor),
        };
        result.observed = observed;
        result.limit = limit;
        match (observed, limit) {
            (Some(o), Some(l)) => result.pass = self.op.holds(o, l),
            (None, _) => result.note = Some("no samples to judge".into()),
            (_, None) if result.note.is_none() => result.note = Some("the baseline has no samples for this".into()),
            _ => {}
        }
        result
    }
}

fn parse_limit(metric: Metric, rhs: &str) -> Result<Limit, String> {
    if let Some(base) = rhs.strip_prefix("baseline.") {
        if !metric.is_timing() {
            return Err(format!(
                "baseline comparisons are for latency, service_time and schedule_lag, not {}",
                metric.name()
            ));
        }
        let (agg, rest) = Aggregate::parse(base)?;
        let rest = rest.trim();
        let factor = match rest.strip_prefix('*') {
            Some(f) => f
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("`{}` is not a factor; write e.g. `baseline.p(99) * 1.10`", f.trim()))?,
            None if rest.is_empty() => 1.0,
            None => {
                return Err(format!(
                    "unexpected `{rest}` after the baseline aggregate; write e.g. `baseline.p(99) * 1.10`"
                ));
            }
        };
        return Ok(Limit::Baseline(agg, factor));
    }
    match metric {
        Metric::Latency | Metric::ServiceTime | Metric::ScheduleLag => {
            Ok(Limit::Nanos(parse_duration(rhs)?.as_nanos() as f64))
        }
        Metric::ErrorRate => {
            let number = rhs
                .strip_suffix('%')
                .ok_or_else(|| format!("error_rate limits are percentages; write e.g. `< {rhs}%`"))?;
            let value: f64 = number.trim().parse().map_err(|_| format!("`{number}` is not a number"))?;
            Ok(Limit::Fraction(value / 100.0))
        }
        Metric::Throughput => {
            if let Some(number) = rhs.strip_suffix("/s") {
                let value: f64 = number.trim().parse().map_err(|_| format!("`{number}` is not a number"))?;
                return Ok(Limit::PerSecond(value));
            }
            if rhs == "target" {
                return Ok(Limit::TargetTimes(1.0));
            }
            let (factor, word) = rhs
                .split_once('*')
                .ok_or_else(|| format!("throughput limits are `N/s` or `F * target`, not `{rhs}`"))?;
            if word.trim() != "target" {
                return Err(format!("throughput limits are `N/s` or `F * target`, not `{rhs}`"));
            }
            let value: f64 = factor.trim().parse().map_err(|_| format!("`{}` is not a number", factor.trim()))?;
            Ok(Limit::TargetTimes(value))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Nanos,
    Percent,
    PerSecond,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Nanos => format_nanos(value),
            Unit::Percent => format!("{:.3}%", value * 100.0),
            Unit::PerSecond => format!("{value:.1}/s"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Nanos => "ns",
            Unit::Percent => "fraction",
            Unit::PerSecond => "per_second",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SloResult {
    pub name: String,
    pub metric: Metric,
    pub op: Op,
    pub endpoint: Option<String>,
    pub observed: Option<f64>,
    pub limit: Option<f64>,
    pub unit: Unit,
    pub pass: bool,
    pub note: Option<String>,
}

impl SloResult {
    pub fn describe(&self) -> String {
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| self.unit.format(v));
        let mut text = format!("observed {}, limit {} {}", show(self.observed), self.op.symbol(), show(self.limit));
        if let Some(note) = &self.note {
            text.push_str(&format!(" ({note})"));
        }
        text
    }
}

/// What an SLO can look at: a finished run, or a baseline report read back.
pub trait Observations {
    fn endpoint_names(&self) -> Vec<String>;
    /// The merged histogram of a timing metric; `None` when there is nothing for the selector.
    fn histogram(&self, metric: Metric, endpoint: Option<&str>, outcome: Option<Outcome>) -> Option<Histogram<u64>>;
    /// (requests that failed or got an unexpected status, all requests).
    fn error_rate(&self, endpoint: Option<&str>) -> Option<(u64, u64)>;
    fn throughput(&self) -> f64;
    fn target_rps(&self) -> Option<f64>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::histogram;

    #[test]
    fn the_issue_examples_parse() {
        let slo = Slo::parse("latency{endpoint=create_job}: p(99) < 25ms").expect("parses");
        assert_eq!(slo.metric, Metric::Latency);
        assert_eq!(slo.endpoint, EndpointSelector::One("create_job".into()));
        assert_eq!(slo.aggregate, Some(Aggregate::Percentile(99.0)));
        assert_eq!(slo.op, Op::Lt);
        assert_eq!(slo.limit, Limit::Nanos(25e6));
        assert_eq!(Slo::parse("error_rate < 0.1%").expect("parses").limit, Limit::Fraction(0.001));
        assert_eq!(Slo::parse("throughput >= 0.98 * target").expect("parses").limit, Limit::TargetTimes(0.98));
        assert_eq!(Slo::parse("throughput >= 500/s").expect("parses").limit, Limit::PerSecond(500.0));
        assert_eq!(Slo::parse("schedule_lag: p(99) < 1ms").expect("parses").limit, Limit::Nanos(1e6));
        let base = Slo::parse("latency{endpoint=*}: p(99) < baseline.p(99) * 1.10").expect("parses");
        assert_eq!(base.endpoint, EndpointSelector::Each);
        assert_eq!(base.limit, Limit::Baseline(Aggregate::Percentile(99.0), 1.10));
        let outcome = Slo::parse("service_time{outcome=expected}: mean <= 2ms").expect("parses");
        assert_eq!(outcome.outcome, Some(Outcome::Expected));
        assert_eq!(outcome.aggregate, Some(Aggregate::Mean));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("latncy: p(99) < 25ms", "unknown metric `latncy`"),
            ("latency: p(99) < 25", "has no unit"),
            ("latency: p(99) < 25 parsecs", "unknown time unit"),
            ("latency < 25ms", "expected an aggregate"),
            ("latency{endpont=x}: p(99) < 25ms", "unknown selector `endpont`"),
            ("latency: p(101) < 25ms", "out of range"),
            ("error_rate < 0.1", "percentages"),
            ("throughput >= 0.98 * targt", "`N/s` or `F * target`"),
            ("schedule_lag{endpoint=a}: p(99) < 1ms", "takes no selector"),
            ("error_rate < baseline.p(99)", "baseline comparisons are for"),
            ("latency: p(99) = 25ms", "expected a comparison"),
        ];
        for (text, expected) in cases {
            let err = Slo::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn names_are_checked_against_the_scenario_and_baseline() {
        let endpoints = vec!["create_job".to_string(), "get_job".to_string()];
        let slo = Slo::parse("latency{endpoint=creat_job}: p(99) < 25ms").expect("parses");
        assert!(slo.check(&endpoints).expect_err("unknown").contains("unknown endpoint `creat_job`"));
        let base = Slo::parse("latency: p(99) < baseline.p(99)").expect("parses");
        assert!(base.check_baseline(&endpoints, None).expect_err("no baseline").contains("--baseline"));
    }

    struct Fixed {
        latency: Histogram<u64>,
        bad: u64,
        total: u64,
    }

    impl Observations for Fixed {
        fn endpoint_names(&self) -> Vec<String> {
            vec!["a".into(), "b".into()]
        }
        fn histogram(&self, _: Metric, _: Option<&str>, _: Option<Outcome>) -> Option<Histogram<u64>> {
            Some(self.latency.clone())
        }
        fn error_rate(&self, _: Option<&str>) -> Option<(u64, u64)> {
            Some((self.bad, self.total))
        }
        fn throughput(&self) -> f64 {
            97.0
        }
        fn target_rps(&self) -> Option<f64> {
            Some(100.0)
        }
    }

    #[test]
    fn evaluation_compares_observed_with_limits() {
        let mut h = histogram();
        for ms in 1..=100u64 {
            h.record(ms * 1_000_000).expect("in range");
        }
        let run = Fixed { latency: h, bad: 2, total: 1000 };
        let judge = |text: &str| Slo::parse(text).expect("parses").evaluate(&run, Some(&run as &dyn Observations));
        assert!(judge("latency: p(50) < 51ms")[0].pass);
        assert!(!judge("latency: p(99) < 99ms")[0].pass);
        assert!(judge("error_rate < 0.3%")[0].pass);
        assert!(!judge("error_rate < 0.1%")[0].pass);
        assert!(!judge("throughput >= 0.98 * target")[0].pass);
        assert!(judge("throughput >= 0.95 * target")[0].pass);
        let each = judge("latency{endpoint=*}: p(99) <= baseline.p(99) * 1.0");
        assert_eq!(each.len(), 2);
        assert_eq!(each[1].name, "latency{endpoint=b}: p(99) <= baseline.p(99) * 1.0");
        assert!(each.iter().all(|r| r.pass));
    }

    #[test]
    fn no_samples_fails_rather_than_passes() {
        let run = Fixed { latency: histogram(), bad: 0, total: 0 };
        let results = Slo::parse("latency: p(99) < 25ms").expect("parses").evaluate(&run, None);
        assert!(!results[0].pass);
        assert_eq!(results[0].note.as_deref(), Some("no samples to judge"));
        assert!(!Slo::parse("error_rate < 1%").expect("parses").evaluate(&run, None)[0].pass);
    }
}
