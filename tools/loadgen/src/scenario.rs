//! Scenario files (`infra/loadtest/*.toml`) and command-line overrides, validated into one plan
//! before the first request: every mistake is reported with the file and line it is on.

use crate::plan::Stage;
use crate::slo::Slo;
use crate::units::parse_duration;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A configuration mistake: exit code 2, one line naming where and what.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: Option<String>,
    pub base_url: Option<Spanned<String>>,
    pub seed: Option<u64>,
    pub warmup: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<usize>>,
    pub timeout: Option<Spanned<String>>,
    pub max_requests: Option<Spanned<u64>>,
    pub max_duration: Option<Spanned<String>>,
    pub lag_tolerance: Option<Spanned<String>>,
    /// `http1` (built-in, default) or `hyper`.
    pub client: Option<Client>,
    /// Open model: rate at the start of the first stage (default: the first stage's rate).
    pub start_rps: Option<Spanned<f64>>,
    /// Closed model: this many connections, each sending its next request when the last ends.
    pub connections: Option<Spanned<usize>>,
    pub think_time: Option<Spanned<String>>,
    /// Closed model: how long to run.
    pub duration: Option<Spanned<String>>,
    #[serde(default)]
    pub slo: Vec<Spanned<String>>,
    #[serde(default)]
    pub endpoint: Vec<Spanned<EndpointFile>>,
    #[serde(default)]
    pub stage: Vec<Spanned<StageFile>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    pub name: String,
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub body_file: Option<String>,
    pub weight: Option<u32>,
    pub expect_status: Option<ExpectStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ExpectStatus {
    One(u16),
    Many(Vec<u16>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    pub duration: String,
    pub rps: f64,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    /// The whole request as the built-in client sends it.
    pub wire: Bytes,
    /// `http://authority/path`, for HTTP/2.
    pub absolute_uri: Uri,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub weight: u32,
    pub expect_status: Vec<u16>,
}

#[derive(Debug, Clone)]
pub enum Load {
    Open { start_rps: f64, stages: Vec<Stage> },
    Closed { connections: usize, think_time: Duration, duration: Duration },
}

/// Which HTTP/1.1 client sends: the built-in one (default) or hyper's `client::conn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    Http1,
    Hyper,
    /// hyper's HTTP/2 client, cleartext with prior knowledge (h2c).
    H2,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub authority: String,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub source: Option<PathBuf>,
    pub target: Target,
    pub endpoints: Vec<Endpoint>,
    pub load: Load,
    pub warmup: Duration,
    pub max_connections: usize,
    pub timeout: Duration,
    pub max_requests: u64,
    pub seed: u64,
    pub lag_tolerance: Duration,
    pub client: Client,
    pub slos: Vec<Slo>,
    /// The scenario as given (file text plus overrides), hashed into the report.
    pub fingerprint: String,
}

/// Values given on the command line; they override the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Target base URL (overrides the scenario's base_url).
    #[arg(long)]
    pub url: Option<String>,
    /// Open model: constant rate in requests per second (replaces the scenario's stages).
    #[arg(long)]
    pub rps: Option<f64>,
    /// Run length with --rps or --connections, e.g. `30s`.
    #[arg(long)]
    pub duration: Option<String>,
    /// Closed model: this many connections, each sending back to back.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Closed model: pause between a connection's requests.
    #[arg(long)]
    pub think_time: Option<String>,
    /// One-URL case: HTTP method.
    #[arg(long)]
    pub method: Option<String>,
    /// Extra header `Name: value` on every request (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// One-URL case: request body.
    #[arg(long)]
    pub body: Option<String>,
    /// Statuses that count as success (repeatable; default 2xx).
    #[arg(long = "expect-status")]
    pub expect_status: Vec<u16>,
    /// SLO expression, e.g. `latency: p(99) < 25ms` (repeatable; added to the scenario's).
    #[arg(long = "slo")]
    pub slos: Vec<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub warmup: Option<String>,
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Per-request timeout.
    #[arg(long)]
    pub timeout: Option<String>,
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// p99 schedule lag above which the run is invalid.
    #[arg(long)]
    pub lag_tolerance: Option<String>,
    /// Client: `http1` (built-in HTTP/1.1: requests encoded once, responses parsed in place),
    /// `hyper` (hyper's HTTP/1.1 client::conn) or `h2` (hyper's HTTP/2, cleartext, prior knowledge).
    #[arg(long, value_enum)]
    pub client: Option<Client>,
}

/// Where a value came from, for error messages: `file:line` or `--flag`.
struct Origin<'a> {
    path: &'a str,
    text: &'a str,
}

impl Origin<'_> {
    fn at(&self, span: std::ops::Range<usize>) -> String {
        let line = self.text.get(..span.start).map_or(1, |before| before.matches('\n').count() + 1);
        format!("{}:{line}", self.path)
    }

    fn err<T>(&self, span: std::ops::Range<usize>, message: impl fmt::Display) -> Result<T, ConfigError> {
        Err(ConfigError(format!("{}: {message}", self.at(span))))
    }
}

fn flag_err<T>(flag: &str, message: impl fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{flag}: {message}")))
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_REQUESTS: u64 = 50_000_000;
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(3600);
pub const DEFAULT_LAG_TOLERANCE: Duration = Duration::from_millis(1);

impl Scenario {
    /// Reads and validates a scenario file, then applies the command line over it.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Scenario, ConfigError> {
        let (text, shown) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("{}: cannot read the scenario: {e}", p.display())))?;
                (text, p.display().to_string())
            }
            None => (String::new(), "(command line)".to_string()),
        };
        let origin = Origin { path: &shown, text: &text };
        let file: ScenarioFile = toml::from_str(&text).map_err(|e| {
            let line =
                e.span().map_or(String::new(), |s| format!(":{}", origin.at(s).rsplit(':').next().unwrap_or("1")));
            ConfigError(format!("{shown}{line}: {}", e.message().trim()))
        })?;
        let base_dir = path.and_then(Path::parent).unwrap_or(Path::new("."));
        build(file, &origin, base_dir, overrides, path)
    }
}

fn duration_at(origin: &Origin<'_>, value: &Spanned<String>) -> Result<Duration, ConfigError> {
    parse_duration(value.get_ref()).or_else(|e| origin.err(value.span(), e))
}

fn duration_flag(flag: &str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).or_else(|e| flag_err(flag, e))
}

fn pick_duration(
    origin: &Origin<'_>,
    file: &Option<Spanned<String>>,
    flag: &str,
    cli: &Option<String>,
) -> Result<Option<Duration>, ConfigError> {
    match (cli, file) {
        (Some(v), _) => duration_flag(flag, v).map(Some),
        (None, Some(v)) => duration_at(origin, v).map(Some),
        (None, None) => Ok(None),
    }
}

fn build(
    file: ScenarioFile,
    origin: &Origin<'_>,
    base_dir: &Path,
    o: &Overrides,
    source: Option<&Path>,
) -> Result<Scenario, ConfigError> {
    // Target.
    let (url, url_err): (String, Box<dyn Fn(String) -> ConfigError>) = match (&o.url, &file.base_url) {
        (Some(u), _) => (u.clone(), Box::new(|m| ConfigError(format!("--url: {m}")))),
        (None, Some(u)) => {
            let at = origin.at(u.span());
            (u.get_ref().clone(), Box::new(move |m| ConfigError(format!("{at}: base_url: {m}"))))
        }
        (None, None) => {
            return Err(ConfigError(format!(
                "{}: no target; set `base_url` in the scenario or pass `--url http://127.0.0.1:PORT`",
                origin.path
            )));
        }
    };
    let uri: Uri = url.parse().map_err(|e| url_err(format!("`{url}` is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(url_err(
                "https targets are not supported yet; load-test the service's plain HTTP port on loopback".into(),
            ));
        }
        _ => return Err(url_err(format!("`{url}` needs an http:// scheme"))),
    }
    let host = uri
        .host()
        .ok_or_else(|| url_err(format!("`{url}` has no host")))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map_or(host.clone(), |a| a.as_str().to_string());
    let base_path = uri.path().trim_end_matches('/').to_string();
    let target = Target { host, port, authority: authority.clone() };

    // Endpoints.
    let mut endpoints = Vec::new();
    if file.endpoint.is_empty() {
        // The one-URL case: the URL's own path is the endpoint.
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let spec = EndpointFile {
            name: "default".into(),
            method: o.method.clone(),
            path,
            headers: BTreeMap::new(),
            body: o.body.clone(),
            body_file: None,
            weight: None,
            expect_status: None,
        };
        endpoints.push(endpoint(&spec, "", &authority, base_dir, &|m| flag_err("--url", m))?);
    } else {
        if o.method.is_some() || o.body.is_some() {
            return flag_err(
                "--method/--body",
                "these describe the one-URL case; with a scenario file, set them on its [[endpoint]] tables",
            );
        }
        for spec in &file.endpoint {
            let at = origin.at(spec.span());
            if endpoints.iter().any(|e: &Endpoint| e.name == spec.get_ref().name) {
                return Err(ConfigError(format!(
                    "{at}: endpoint `{}` is defined twice; names must be unique",
                    spec.get_ref().name
                )));
            }
            endpoints.push(endpoint(spec.get_ref(), &base_path, &authority, base_dir, &|m| {
                Err(ConfigError(format!("{at}: endpoint `{}`: {m}", spec.get_ref().name)))
            })?);
        }
    }
    for header in &o.headers {
        let (name, value) =
            header.split_once(':').ok_or_else(|| ConfigError(format!("--header: `{header}` needs `Name: value`")))?;
        let name: HeaderName = name
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("--header: `{}` is not a header name", name.trim())))?;
        let value: HeaderValue = value
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("--header: the value of `{name}` is not a valid header value")))?;
        for e in &mut endpoints {
            e.headers.insert(name.clone(), value.clone());
        }
    }
    if !o.expect_status.is_empty() {
        for e in &mut endpoints {
            e.expect_status = o.expect_status.clone();
        }
    }

    // Load model.
    let max_duration =
        pick_duration(origin, &file.max_duration, "--max-duration", &None)?.unwrap_or(DEFAULT_MAX_DURATION);
    let connections = o.connections.or(file.connections.as_ref().map(|c| *c.get_ref()));
    let load = if let Some(connections) = connections {
        if connections == 0 {
            return match &file.connections {
                Some(c) if o.connections.is_none() => origin.err(c.span(), "connections must be at least 1"),
                _ => flag_err("--connections", "must be at least 1"),
            };
        }
        if let (Some(s), None) = (file.stage.first(), o.connections) {
            return origin.err(s.span(), "[[stage]] describes an open-model rate plan; a closed-model run (`connections`) runs for `duration` instead");
        }
        let think_time = pick_duration(origin, &file.think_time, "--think-time", &o.think_time)?.unwrap_or_default();
        let duration = pick_duration(origin, &file.duration, "--duration", &o.duration)?.ok_or_else(|| {
            ConfigError(format!(
                "{}: a closed-model run needs `duration` (or --duration) so it is bounded in time",
                origin.path
            ))
        })?;
        Load::Closed { connections, think_time, duration }
    } else {
        if let Some(d) = &file.duration
            && o.rps.is_none()
        {
            return origin.err(
                d.span(),
                "`duration` is for closed-model runs; an open-model run's length is the sum of its [[stage]] durations",
            );
        }
        let stages = match (o.rps, &o.duration) {
            (Some(rps), Some(d)) => {
                if !(rps > 0.0 && rps.is_finite()) {
                    return flag_err("--rps", "must be a positive number of requests per second");
                }
                vec![Stage { duration: duration_flag("--duration", d)?, rps }]
            }
            (Some(_), None) => return flag_err("--rps", "needs --duration too, so the run is bounded in time"),
            (None, Some(_)) => {
                return flag_err("--duration", "needs --rps (open model) or --connections (closed model)");
            }
            (None, None) => {
                let mut stages = Vec::new();
                for s in &file.stage {
                    let spec = s.get_ref();
                    let duration = parse_duration(&spec.duration)
                        .or_else(|e| origin.err(s.span(), format!("stage duration: {e}")))?;
                    if !(spec.rps >= 0.0 && spec.rps.is_finite()) {
                        return origin.err(s.span(), format!("stage rps must be zero or more, not {}", spec.rps));
                    }
                    stages.push(Stage { duration, rps: spec.rps });
                }
                stages
            }
        };
        if stages.is_empty() {
            return Err(ConfigError(format!(
                "{}: no load; add [[stage]] tables (duration, rps), or pass --rps and --duration, or --connections and --duration",
                origin.path
            )));
        }
        let start_rps = match (&file.start_rps, o.rps) {
            (Some(s), None) if !(*s.get_ref() >= 0.0 && s.get_ref().is_finite()) => {
                return origin.err(s.span(), "start_rps must be zero or more");
            }
            (Some(s), None) => *s.get_ref(),
            _ => stages[0].rps,
        };
        Load::Open { start_rps, stages }
    };
    let run_length = match &load {
        Load::Open { stages, .. } => stages.iter().map(|s| s.duration).sum(),
        Load::Closed { duration, .. } => *duration,
    };
    if run_length.is_zero() {
        return Err(ConfigError(format!("{}: the run lasts 0 s; give it a duration", origin.path)));
    }
    if run_length > max_duration {
        return Err(ConfigError(format!(
            "{}: the run lasts {:?}, longer than max_duration {:?}; shorten it or raise max_duration",
            origin.path, run_length, max_duration
        )));
    }

    let warmup = pick_duration(origin, &file.warmup, "--warmup", &o.warmup)?.unwrap_or_default();
    if warmup >= run_length {
        return Err(ConfigError(format!(
            "{}: warm-up ({warmup:?}) covers the whole run ({run_length:?}); nothing would be measured",
            origin.path
        )));
    }
    let max_connections = match (o.max_connections, &file.max_connections) {
        (Some(0), _) => return flag_err("--max-connections", "must be at least 1"),
        (Some(n), _) => n,
        (None, Some(n)) if *n.get_ref() == 0 => return origin.err(n.span(), "max_connections must be at least 1"),
        (None, Some(n)) => *n.get_ref(),
        (None, None) => DEFAULT_MAX_CONNECTIONS,
    };
    if let Load::Closed { connections, .. } = &load
        && *connections > max_connections
    {
        return Err(ConfigError(format!(
            "{}: {connections} connections is above max_connections {max_connections}; raise max_connections",
            origin.path
        )));
    }
    let timeout = pick_duration(origin, &file.timeout, "--timeout", &o.timeout)?.unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        return Err(ConfigError(format!("{}: timeout must be above 0", origin.path)));
    }
    let lag_tolerance = pick_duration(origin, &file.lag_tolerance, "--lag-tolerance", &o.lag_tolerance)?
        .unwrap_or(DEFAULT_LAG_TOLERANCE);
    let max_requests =
        o.max_requests.or(file.max_requests.as_ref().map(|m| *m.get_ref())).unwrap_or(DEFAULT_MAX_REQUESTS);
    if let Load::Open { start_rps, stages } = &load {
        let planned = crate::plan::RatePlan::new(*start_rps, stages).total_requests();
        if planned > max_requests {
            return Err(ConfigError(format!(
                "{}: the plan sends {planned} requests, above max_requests {max_requests}; lower the rate or raise max_requests",
                origin.path
            )));
        }
        if planned == 0 {
            return Err(ConfigError(format!(
                "{}: the plan sends no requests; give a stage a rate above 0",
                origin.path
            )));
        }
    }

    // SLOs: parsed and checked against the endpoints now, not after the run.
    let names: Vec<String> = endpoints.iter().map(|e| e.name.clone()).collect();
    let mut slos = Vec::new();
    for spanned in &file.slo {
        let slo = Slo::parse(spanned.get_ref())
            .or_else(|e| origin.err(spanned.span(), format!("slo `{}`: {e}", spanned.get_ref())))?;
        slo.check(&names).or_else(|e| origin.err(spanned.span(), format!("slo `{}`: {e}", spanned.get_ref())))?;
        slos.push(slo);
    }
    for text in &o.slos {
        let slo = Slo::parse(text).or_else(|e| flag_err("--slo", format!("`{text}`: {e}")))?;
        slo.check(&names).or_else(|e| flag_err("--slo", format!("`{text}`: {e}")))?;
        slos.push(slo);
    }

    let fingerprint = format!("{}\n{o:?}", origin.text);
    Ok(Scenario {
        name: file.name.clone().unwrap_or_else(|| {
            source.and_then(Path::file_stem).map_or("adhoc".into(), |s| s.to_string_lossy().into_owned())
        }),
        source: source.map(Path::to_path_buf),
        target,
        endpoints,
        load,
        warmup,
        max_connections,
        timeout,
        max_requests,
        seed: o.seed.or(file.seed).unwrap_or(1),
        lag_tolerance,
        client: o.client.or(file.client).unwrap_or(Client::Http1),
        slos,
        fingerprint,
    })
}

fn endpoint(
    spec: &EndpointFile,
    base_path: &str,
    authority: &str,
    base_dir: &Path,
    fail: &dyn Fn(String) -> Result<Endpoint, ConfigError>,
) -> Result<Endpoint, ConfigError> {
    if spec.name.is_empty() || !spec.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return fail(format!("name `{}` must be letters, digits, `_` or `-` (it is used in SLO selectors)", spec.name));
    }
    let method: Method = match spec.method.as_deref() {
        None => Method::GET,
        Some(m) => match m.to_ascii_uppercase().parse() {
            Ok(m) => m,
            Err(_) => return fail(format!("`{m}` is not an HTTP method")),
        },
    };
    if !spec.path.starts_with('/') {
        return fail(format!("path `{}` must start with `/`", spec.path));
    }
    let uri: Uri = match format!("{base_path}{}", spec.path).parse() {
        Ok(u) => u,
        Err(e) => return fail(format!("path `{}` is not a valid request path: {e}", spec.path)),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(authority).map_err(|_| ConfigError(format!("`{authority}` is not a valid Host")))?,
    );
    for (name, value) in &spec.headers {
        let Ok(name) = name.parse::<HeaderName>() else {
            return fail(format!("`{name}` is not a header name"));
        };
        let Ok(value) = value.parse::<HeaderValue>() else {
            return fail(format!("the value of header `{name}` is not a valid header value"));
        };
        headers.insert(name, value);
    }
    let body = match (&spec.body, &spec.body_file) {
        (Some(_), Some(_)) => return fail("give `body` or `body_file`, not both".into()),
        (Some(b), None) => Bytes::from(b.clone()),
        (None, Some(f)) => {
            let path = base_dir.join(f);
            match std::fs::read(&path) {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => return fail(format!("body_file `{}`: {e}", path.display())),
            }
        }
        (None, None) => Bytes::new(),
    };
    if !body.is_empty() {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let weight = spec.weight.unwrap_or(1);
    if weight == 0 {
        return fail("weight must be at least 1 (remove the endpoint to stop sending it)".into());
    }
    let expect_status = match &spec.expect_status {
        None => (200..300).collect(),
        Some(ExpectStatus::One(s)) => vec![*s],
        Some(ExpectStatus::Many(s)) if s.is_empty() => {
            return fail("expect_status is empty; list at least one status".into());
        }
        Some(ExpectStatus::Many(s)) => s.clone(),
    };
    if let Some(bad) = expect_status.iter().find(|s| !(100..=599).contains(*s)) {
        return fail(format!("expect_status {bad} is not an HTTP status"));
    }
    let wire = crate::http1::encode(&method, &uri, &headers, &body);
    let absolute_uri = match format!("http://{authority}{uri}").parse() {
        Ok(u) => u,
        Err(e) => return fail(format!("path `{}` does not make a URL with `{authority}`: {e}", spec.path)),
    };
    Ok(Endpoint { name: spec.name.clone(), wire, absolute_uri, method, uri, headers, body, weight, expect_status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(text: &str) -> Result<Scenario, String> {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        Scenario::load(Some(file.path()), &Overrides::default())
            .map_err(|e| e.0.replace(&file.path().display().to_string(), "FILE"))
    }

    const GOOD: &str = r#"
base_url = "http://127.0.0.1:8080"
warmup = "1s"
slo = [
  "latency{endpoint=create_job}: p(99) < 25ms",
  "error_rate < 0.1%",
]

[[endpoint]]
name = "create_job"
method = "POST"
path = "/v1/jobs"
headers = { "content-type" = "application/json" }
body = '{"kind":"hash"}'
weight = 1
expect_status = 201

[[endpoint]]
name = "list_jobs"
path = "/v1/jobs?limit=10"
weight = 3

[[stage]]
duration = "10s"
rps = 100

[[stage]]
duration = "5s"
rps = 200
"#;

    #[test]
    fn a_good_scenario_loads() {
        let s = load(GOOD).expect("valid");
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(s.endpoints[0].method, Method::POST);
        assert_eq!(s.endpoints[0].expect_status, vec![201]);
        assert_eq!(s.endpoints[1].expect_status.len(), 100);
        assert_eq!(s.endpoints[1].uri, "/v1/jobs?limit=10");
        assert_eq!(s.endpoints[0].headers["host"], "127.0.0.1:8080");
        assert_eq!(s.slos.len(), 2);
        match s.load {
            Load::Open { start_rps, ref stages } => {
                assert_eq!(start_rps, 100.0);
                assert_eq!(stages.len(), 2);
            }
            Load::Closed { .. } => panic!("open model expected"),
        }
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            (
                GOOD.replace("p(99) < 25ms", "p(99) < 25"),
                "FILE:5: slo `latency{endpoint=create_job}: p(99) < 25`: `25` has no unit",
            ),
            (
                GOOD.replace("endpoint=create_job}", "endpoint=creat_job}"),
                "FILE:5: slo `latency{endpoint=creat_job}: p(99) < 25ms`: unknown endpoint `creat_job`",
            ),
            (GOOD.replace("weight = 3", "wieght = 3"), "FILE:21: unknown field `wieght`"),
            (GOOD.replace("rps = 200", "rps = -1"), "FILE:27: stage rps must be zero or more"),
            (GOOD.replace("duration = \"5s\"", "duration = \"5\""), "FILE:27: stage duration: `5` has no unit"),
            (
                GOOD.replace("method = \"POST\"", "method = \"PO ST\""),
                "FILE:9: endpoint `create_job`: `PO ST` is not an HTTP method",
            ),
            (
                GOOD.replace("name = \"list_jobs\"", "name = \"create_job\""),
                "FILE:18: endpoint `create_job` is defined twice",
            ),
            (
                GOOD.replace("expect_status = 201", "expect_status = 700"),
                "FILE:9: endpoint `create_job`: expect_status 700 is not an HTTP status",
            ),
            (GOOD.replace("warmup = \"1s\"", "warmup = \"1 minute\""), "FILE:3: unknown time unit"),
            (
                GOOD.replace("http://127", "ftp://127"),
                "FILE:2: base_url: `ftp://127.0.0.1:8080` needs an http:// scheme",
            ),
            (GOOD.replace("[[stage]]", "[[stages]]"), "FILE:23: unknown field `stages`"),
            (
                GOOD.replace("\"error_rate < 0.1%\"", "\"error_rate < 0.1\""),
                "FILE:6: slo `error_rate < 0.1`: error_rate limits are percentages",
            ),
        ];
        let mut wrong = Vec::new();
        for (text, expected) in cases {
            let err = load(&text).expect_err(expected);
            if !err.starts_with(expected) || err.contains('\n') {
                wrong.push(format!("expected `{expected}`, got `{err}`"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn runs_are_bounded() {
        let too_many = GOOD.replace("rps = 200", "rps = 2000000") + "max_requests = 1000\n";
        // max_requests after [[stage]] belongs to the stage table; put it at the top instead.
        assert!(load(&too_many).expect_err("bounded").contains("unknown field `max_requests`"));
        let too_many = format!("max_requests = 1000\n{GOOD}");
        assert!(load(&too_many).expect_err("bounded").contains("above max_requests 1000"));
        let too_long = format!("max_duration = \"5s\"\n{GOOD}");
        assert!(load(&too_long).expect_err("bounded").contains("longer than max_duration"));
        let closed = "base_url = \"http://127.0.0.1:1\"\nconnections = 4\n";
        assert!(load(closed).expect_err("bounded").contains("needs `duration`"));
    }

    #[test]
    fn the_command_line_covers_the_one_url_case() {
        let o = Overrides {
            url: Some("http://localhost:9000/healthz".into()),
            rps: Some(50.0),
            duration: Some("2s".into()),
            ..Overrides::default()
        };
        let s = Scenario::load(None, &o).expect("valid");
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].name, "default");
        assert_eq!(s.endpoints[0].uri, "/healthz");
        assert_eq!(s.target.port, 9000);
        let o = Overrides { url: Some("http://localhost:9000/".into()), rps: Some(50.0), ..Overrides::default() };
        assert!(Scenario::load(None, &o).expect_err("unbounded").0.contains("--rps: needs --duration"));
        let o = Overrides {
            url: Some("http://localhost:9000/".into()),
            connections: Some(8),
            duration: Some("1s".into()),
            slos: vec!["latency: p(99) < 1".into()],
            ..Overrides::default()
        };
        assert!(Scenario::load(None, &o).expect_err("unit").0.starts_with("--slo: `latency: p(99) < 1`"));
    }
}
