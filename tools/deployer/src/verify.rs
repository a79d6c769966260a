//! `deploy verify --env ENV`: hold what was just deployed to the environment's SLOs. For a window
//! it drives the environment's verification scenario (`infra/loadtest/`, open model, bounded)
//! through the published edge, then asks Prometheus what the services saw in that window: the
//! error ratio and p99 from their request metrics, restarts, readiness flaps, dead-lettered jobs.
//! A breach is named (the objective, the observed value, the limit); the caller rolls back.
//!
//! The SLO file is `infra/slo/ENV.toml`, one per environment (the alert rules read the same
//! file):
//!
//! ```toml
//! [verify]
//! window = "2m"                                  # how long the scenario runs
//! scenario = "verify"                            # infra/loadtest/verify.toml
//! target = "http://127.0.0.1:${GATEWAY_PORT}"    # ${VAR}: the environment's variables
//! prometheus = "http://127.0.0.1:${PROMETHEUS_PORT}"
//!
//! [[objective]]
//! name = "availability"
//! metric = "error_ratio"                         # see METRICS
//! max = 0.01
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use xtask_kit::UsageError;
use xtask_kit::process::Cmd;

pub use xtask_kit::slo::{METRICS, Objective, SLO_DIR, SloFile, load, query};

/// Before a deploy changes anything: the environment's SLO file (`None`: it has none), read,
/// with its URLs expanded and its scenario found.
pub fn preflight(root: &Path, env: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<Option<SloFile>> {
    let Some((path, slo)) = load(root, env)? else { return Ok(None) };
    for url in [&slo.verify.target, &slo.verify.prometheus] {
        expand(url, vars).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    }
    scenario_path(root, &slo.verify.scenario)?;
    Ok(Some(slo))
}

/// `${NAME}` replaced by the environment's variable; an unknown one is a configuration error.
pub fn expand(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or_else(|| format!("`{text}`: unclosed ${{"))?;
        let name = &rest[start + 2..start + end];
        out.push_str(&vars(name).ok_or_else(|| format!("`{text}`: the environment sets no {name}"))?);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What verification found for one objective.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Finding {
    pub objective: String,
    pub metric: String,
    /// `None`: Prometheus had no data for it.
    pub observed: Option<f64>,
    pub max: f64,
    pub ok: bool,
}

impl Finding {
    pub fn line(&self) -> String {
        match self.observed {
            Some(v) => format!(
                "SLO {} ({}): observed {} against a limit of {}",
                self.objective,
                self.metric,
                fmt(v),
                fmt(self.max)
            ),
            None => format!("SLO {} ({}): Prometheus has no data for it", self.objective, self.metric),
        }
    }
}

fn fmt(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e9 { format!("{v:.0}") } else { format!("{v:.4}") }
}

/// Judge one objective on what Prometheus answered.
pub fn judge(o: &Objective, answer: Option<f64>) -> Finding {
    let empty = METRICS.iter().find(|(m, ..)| *m == o.metric).and_then(|(.., e)| *e);
    let observed = answer.filter(|v| v.is_finite()).or(empty);
    Finding {
        objective: o.name.clone(),
        metric: o.metric.clone(),
        observed,
        max: o.max,
        ok: observed.is_some_and(|v| v <= o.max),
    }
}

/// The verdict of one verification.
#[derive(Serialize, Debug)]
pub struct Verdict {
    pub env: String,
    pub window_s: u64,
    pub requests: u64,
    pub findings: Vec<Finding>,
}

impl Verdict {
    pub fn breaches(&self) -> Vec<&Finding> {
        self.findings.iter().filter(|f| !f.ok).collect()
    }
}

/// How to reach what verification needs.
pub struct Setup<'a> {
    pub root: &'a Path,
    pub env: &'a str,
    pub slo: &'a SloFile,
    /// The environment's variables for `${VAR}` in the file.
    pub vars: &'a dyn Fn(&str) -> Option<String>,
    pub loadgen: &'a Path,
    pub jobs: Vec<String>,
    /// `--window` on the command line wins over the file's.
    pub window: Option<Duration>,
    pub work: &'a Path,
}

/// Drive the scenario for the window, then ask Prometheus about it.
pub fn run(setup: &Setup<'_>) -> Result<Verdict> {
    let v = &setup.slo.verify;
    let usage = |e: String| anyhow::Error::from(UsageError(format!("{}/{}.toml: {e}", SLO_DIR, setup.env)));
    let target = expand(&v.target, setup.vars).map_err(usage)?;
    let prometheus = expand(&v.prometheus, setup.vars).map_err(usage)?;
    let window = setup.window.unwrap_or(v.window);
    let jobs = v.jobs.clone().unwrap_or_else(|| setup.jobs.clone());
    let scenario = scenario_path(setup.root, &v.scenario)?;
    // Prometheus must answer before traffic is spent on a verification it cannot judge.
    prometheus_query(&prometheus, "vector(1)")
        .with_context(|| format!("Prometheus at {prometheus} does not answer"))?;

    let out = setup.work.join("verify");
    let _ = std::fs::remove_dir_all(&out);
    let duration = format!("{}s", window.as_secs());
    let mut cmd = Cmd::new(setup.loadgen)
        .args(["run", "--cores", "1", "--quiet", "--format", "json", "--out"])
        .arg(&out)
        .arg(&scenario)
        .args(["--url", target.as_str(), "--duration", duration.as_str()]);
    if let Some(rps) = v.rps {
        cmd = cmd.args(["--rps", &rps.to_string()]);
    }
    eprintln!(
        "verifying {}: {} against {target} for {}s, then Prometheus ({prometheus})",
        setup.env,
        scenario.display(),
        window.as_secs()
    );
    let started = std::time::Instant::now();
    let status = cmd.to_command().stdout(std::process::Stdio::null()).status().context("running loadgen")?;
    // loadgen's own SLO verdict (exit 1) is not ours to take: the SLO file is. 2 and 3 mean the
    // run said nothing (bad scenario, invalid run).
    if !matches!(status.code(), Some(0 | 1)) {
        bail!("the verification load could not run (loadgen exited {status}); see above");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).context("loadgen wrote no report.json")?)
            .context("loadgen's report is not JSON")?;
    let requests = report["overall"]["count"].as_u64().unwrap_or(0);
    std::thread::sleep(v.settle);
    // The window Prometheus looks at: the load, not what came before it.
    let range = started.elapsed().max(window);
    let mut findings = Vec::new();
    for o in &setup.slo.objectives {
        let q = query(&o.metric, &jobs, range).expect("metrics were checked when the file was read");
        let answer = prometheus_query(&prometheus, &q).with_context(|| format!("asking Prometheus `{q}`"))?;
        findings.push(judge(o, answer));
    }
    Ok(Verdict { env: setup.env.to_string(), window_s: window.as_secs(), requests, findings })
}

/// The scenario the SLO file names (a name under infra/loadtest, or a path).
fn scenario_path(root: &Path, given: &str) -> Result<PathBuf> {
    xtask_kit::handoff::scenario_path(root, given).map_err(|e| UsageError(format!("verify.scenario: {e}")).into())
}

/// One instant query; the first series' value (`None` when there is none).
pub fn prometheus_query(base: &str, promql: &str) -> Result<Option<f64>> {
    let body = http_get(&format!("{}/api/v1/query?query={}", base.trim_end_matches('/'), encode(promql)))?;
    let answer: serde_json::Value = serde_json::from_str(&body).context("Prometheus answered something not JSON")?;
    if answer["status"] != "success" {
        bail!("Prometheus refused the query: {}", answer["error"]);
    }
    let value = &answer["data"]["result"][0]["value"][1];
    Ok(value.as_str().and_then(|v| v.parse::<f64>().ok()))
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A GET over plain HTTP/1.0 (Prometheus then answers without chunking); the body of a 200.
fn http_get(url: &str) -> Result<String> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("{url}: HTTP {status}: {}", body.trim());
    }
    Ok(body.to_string())
}

/// The findings as a table, for people.
pub fn print(verdict: &Verdict) {
    eprintln!("verification of {} ({}s, {} requests):", verdict.env, verdict.window_s, verdict.requests);
    for f in &verdict.findings {
        eprintln!("  {} {}", if f.ok { "ok    " } else { "BREACH" }, f.line());
    }
}

/// After a deploy of an environment without an SLO file: say its release is not verified
/// (unless verification was skipped on purpose).
pub fn note_unverified(env: &str, release: u64, no_verify: bool) {
    if !no_verify {
        eprintln!("note: {env} has no SLO file ({SLO_DIR}/{env}.toml); release {release} is not verified");
    }
}

/// The breaches, in one line.
pub fn breach_line(verdict: &Verdict) -> String {
    verdict.breaches().iter().map(|f| f.line()).collect::<Vec<_>>().join("; ")
}

/// `${VAR}` lookups over a map.
pub fn lookup(vars: &BTreeMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| vars.get(name).cloned().or_else(|| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xtask_kit::slo::parse;

    const FILE: &str = r#"
[verify]
window = "30s"
scenario = "verify"
target = "http://127.0.0.1:${GATEWAY_PORT}"
prometheus = "http://127.0.0.1:${PROMETHEUS_PORT}"

[[objective]]
name = "availability"
metric = "error_ratio"
max = 0.01

[[objective]]
name = "no-restarts"
metric = "restarts"
max = 0
"#;

    #[test]
    fn an_slo_file_reads_and_refuses_what_it_cannot_judge() {
        let file = parse(FILE).expect("valid");
        assert_eq!(file.verify.window, Duration::from_secs(30));
        assert_eq!(file.objectives.len(), 2);
        let unknown = FILE.replace("\"restarts\"", "\"uptime\"");
        let err = parse(&unknown).expect_err("unknown metric");
        assert!(err.contains("objective `no-restarts`: unknown metric `uptime` (known: error_ratio,"), "{err}");
        assert!(parse(&FILE.replace("max = 0.01", "max = 0.01\nmin = 1")).expect_err("unknown key").contains("min"));
        assert!(parse(&FILE.replace("\"30s\"", "\"2s\"")).expect_err("too short").contains("at least 10s"));
        assert!(parse("[verify]\nscenario = \"v\"\ntarget = \"t\"\nprometheus = \"p\"\n").is_err(), "no objective");
    }

    #[test]
    fn variables_expand_and_unknown_ones_are_named() {
        let vars = BTreeMap::from([("GATEWAY_PORT".to_string(), "18080".to_string())]);
        let get = |n: &str| vars.get(n).cloned();
        assert_eq!(expand("http://127.0.0.1:${GATEWAY_PORT}/x", &get).expect("known"), "http://127.0.0.1:18080/x");
        assert!(expand("${NOPE_NOT_SET}", &get).expect_err("unknown").contains("sets no NOPE_NOT_SET"));
        assert!(expand("${OPEN", &get).is_err());
    }

    #[test]
    fn queries_count_traffic_only_over_the_window() {
        let jobs = ["api".to_string(), "gateway".to_string()];
        let q = query("error_ratio", &jobs, Duration::from_secs(45)).expect("known");
        assert_eq!(
            q,
            r#"(sum(increase(http_requests_total{job=~"api|gateway",route!~"/healthz|/readyz|/metrics",status=~"5.."}[45s])) or vector(0)) / sum(increase(http_requests_total{job=~"api|gateway",route!~"/healthz|/readyz|/metrics"}[45s]))"#
        );
        assert_eq!(
            query("restarts", &jobs, Duration::from_secs(60)).expect("known"),
            r#"sum(changes(process_start_time_seconds{job=~"api|gateway"}[60s]))"#
        );
        assert!(query("uptime", &jobs, Duration::from_secs(1)).is_none());
    }

    #[test]
    fn a_breach_names_the_objective_the_value_and_the_limit() {
        let file = parse(FILE).expect("valid");
        let breach = judge(&file.objectives[0], Some(0.2));
        assert!(!breach.ok);
        assert_eq!(breach.line(), "SLO availability (error_ratio): observed 0.2000 against a limit of 0.0100");
        assert!(judge(&file.objectives[0], Some(0.0)).ok);
        let nodata = judge(&file.objectives[0], None);
        assert!(!nodata.ok && nodata.line().contains("no data"), "no traffic seen is not a pass");
        assert!(!judge(&file.objectives[0], Some(f64::NAN)).ok, "0/0 is no data");
        assert!(judge(&file.objectives[1], None).ok, "no restart series: nothing restarted");
        assert!(!judge(&file.objectives[1], Some(1.0)).ok);
    }

    #[test]
    fn a_deploy_is_refused_before_it_starts_by_a_broken_slo_file() {
        let root = std::env::temp_dir().join(format!("deployer-slo-{}", std::process::id()));
        std::fs::create_dir_all(root.join(SLO_DIR)).expect("dir");
        std::fs::create_dir_all(root.join("infra/loadtest")).expect("dir");
        std::fs::write(root.join("infra/loadtest/verify.toml"), "").expect("scenario");
        let vars = |n: &str| (n != "PROMETHEUS_PORT").then(|| "1".to_string());
        assert!(preflight(&root, "none", &vars).is_ok(), "no SLO file: nothing to verify");
        std::fs::write(root.join(SLO_DIR).join("bad.toml"), FILE.replace("\"restarts\"", "\"uptime\"")).expect("file");
        let err = preflight(&root, "bad", &vars).expect_err("unknown metric");
        assert!(err.downcast_ref::<UsageError>().is_some(), "exit 2: {err}");
        assert!(err.to_string().contains("bad.toml: objective `no-restarts`: unknown metric `uptime`"), "{err}");
        std::fs::write(root.join(SLO_DIR).join("unset.toml"), FILE).expect("file");
        let err = preflight(&root, "unset", &vars).expect_err("unset variable");
        assert!(err.to_string().contains("the environment sets no PROMETHEUS_PORT"), "{err}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn queries_are_url_encoded() {
        assert_eq!(encode(r#"up{job="a b"}"#), "up%7Bjob%3D%22a%20b%22%7D");
    }
}
