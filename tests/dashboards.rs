//! What the dashboards and the alert rules read is what the services export: api, worker and
//! gateway run as real processes (against the test Postgres and Redis), one job succeeds and one
//! is dead-lettered through the gateway (a labelled family has no `# TYPE` line until its first
//! sample), then each `/metrics` names its families, and every metric a Grafana panel's or an
//! alert's PromQL reads must be one of them (or Prometheus' own `up`). A renamed metric, or a
//! panel for one nobody exports, fails here instead of drawing an empty graph or never paging.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use test_support::{ServiceProcess, eventually, fresh_database, http, redis_url, workspace_binary};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The sample names a `/metrics` text can carry, from its `# TYPE` lines (OpenMetrics: a
/// counter's samples end in `_total`, a histogram's in `_bucket`, `_sum` and `_count`).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let families = text.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '));
    for (name, kind) in families {
        let suffixes: &[&str] = match kind.trim() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// `text` with every bracketed part (opened by `open`) removed.
fn without(text: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in text.chars() {
        match c {
            c if c == open => depth += 1,
            c if c == close && depth > 0 => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

const KEYWORDS: &[&str] =
    &["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf"];

/// The metric names a PromQL expression reads.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    // Label matchers, ranges and quoted strings hold no metric names.
    let mut text = without(&without(expr, '{', '}'), '[', ']');
    text = text.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    // Grouping labels: `by (le, kind)` and the like.
    for keyword in ["by", "without", "on", "ignoring", "group_left", "group_right"] {
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = find_word(rest, keyword) {
            let after = rest[at + keyword.len()..].trim_start();
            out.push_str(&rest[..at]);
            rest = match after.strip_prefix('(').and_then(|a| a.find(')').map(|end| &a[end + 1..])) {
                Some(tail) => tail,
                None => &rest[at + keyword.len()..],
            };
        }
        out.push_str(rest);
        text = out;
    }
    let mut found = BTreeSet::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_alphabetic() || chars[i] == '_' || chars[i] == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let is_number_suffix = start > 0 && chars[start - 1].is_ascii_digit();
            if next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) && !is_number_suffix {
                found.insert(word);
            }
        } else {
            i += 1;
        }
    }
    found
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(at) = text[from..].find(word).map(|a| a + from) {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        if !before.is_some_and(ident) && !after.is_some_and(ident) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

#[test]
fn promql_names_are_read_from_expressions() {
    let found = metrics_in(
        r#"histogram_quantile(0.99, sum by (le, kind) (rate(job_duration_seconds_bucket{job="worker",route!~"/a|b"}[5m]))) > 0.5 and on(job) up == 1e3"#,
    );
    assert_eq!(found, BTreeSet::from(["job_duration_seconds_bucket".to_string(), "up".to_string()]));
    let names = exported("# TYPE job_attempts counter\n# TYPE job_duration_seconds histogram\n# TYPE up gauge\n");
    assert!(
        names.contains("job_attempts_total") && names.contains("job_duration_seconds_bucket") && names.contains("up")
    );
}

/// Every PromQL expression of the dashboards and of the alert rules: (where, expression).
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dashboards = root().join("infra/monitoring/grafana/dashboards");
    for entry in std::fs::read_dir(&dashboards).expect("dashboards").flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let board: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("dashboard JSON");
        for panel in board["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("every target has an expr");
                let at = format!("{} panel `{}`", path.file_name().expect("name").to_string_lossy(), panel["title"]);
                out.push((at, expr.to_string()));
            }
        }
    }
    for dir in ["infra/monitoring/rules", "infra/monitoring/rules/slo"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("rules").flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("yml") {
                continue;
            }
            let rules: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("rules YAML");
            for group in rules["groups"].as_sequence().into_iter().flatten() {
                for rule in group["rules"].as_sequence().into_iter().flatten() {
                    let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("?");
                    let expr = rule["expr"].as_str().expect("every rule has an expr");
                    out.push((
                        format!("{dir}/{} {name}", path.file_name().expect("name").to_string_lossy()),
                        expr.into(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn dashboards_and_alerts_read_only_metrics_the_services_export() {
    let db = fresh_database("dashboards");
    let redis = redis_url();
    let backing = [("DATABASE_URL", db.clone()), ("REDIS_URL", redis.clone())];
    let mut api = ServiceProcess::start(&workspace_binary("api"), &backing);
    api.wait_until_ok("/readyz", Duration::from_secs(30));
    let mut worker = ServiceProcess::start(
        &workspace_binary("worker"),
        &[&backing[..], &[("POLL_INTERVAL", "100ms".to_string()), ("RETRY_BASE", "20ms".to_string())]].concat(),
    );
    worker.wait_until_ok("/readyz", Duration::from_secs(30));
    let routes = format!("/v1={}", api.url(""));
    let mut gateway = ServiceProcess::start(&workspace_binary("gateway"), &[("GATEWAY_ROUTES", routes)]);
    gateway.wait_until_ok("/readyz", Duration::from_secs(30));

    // One job that succeeds and one that is dead-lettered, through the edge.
    let json = [("Content-Type", "application/json")];
    for body in [r#"{"kind":"sleep","duration_ms":1}"#, r#"{"kind":"fail","max_attempts":1}"#] {
        let r = http("POST", &gateway.url("/v1/jobs"), &json, body.as_bytes()).expect("POST");
        assert_eq!(r.status, 201, "{body}: {}", r.text());
    }
    eventually("the worker to run both jobs", Duration::from_secs(20), || {
        let m = http("GET", &worker.url("/metrics"), &[], b"").ok()?.text();
        (m.contains("jobs_dead_lettered_total") && m.contains(r#"job_duration_seconds_count{kind="sleep""#))
            .then_some(())
    });

    let mut names = BTreeSet::from(["up".to_string()]);
    for (service, process) in [("api", &api), ("worker", &worker), ("gateway", &gateway)] {
        let text = http("GET", &process.url("/metrics"), &[], b"").expect("metrics").text();
        let theirs = exported(&text);
        assert!(theirs.contains("http_requests_total"), "{service} exports its request metrics: {text}");
        names.extend(theirs);
    }
    let expressions = expressions();
    assert!(expressions.len() > 20, "dashboards and rules were read: {}", expressions.len());
    let mut unknown: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (at, expr) in &expressions {
        for metric in metrics_in(expr).difference(&names) {
            unknown.entry(metric.clone()).or_default().push(at.clone());
        }
    }
    assert!(unknown.is_empty(), "metrics no service exports, read by: {unknown:#?}\nexported: {names:?}");
}
