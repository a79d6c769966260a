//! trivy's secret scanner as a second opinion: run `trivy fs --scanners secret`, read its JSON.
//!
//! trivy's report format changes between releases, so every field is optional and a result
//! without the parts we need is skipped rather than failing the whole scan.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::Finding;
use super::rules::{Severity, fingerprint};
use crate::process::Cmd;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Report {
    results: Option<Vec<TargetResult>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TargetResult {
    target: Option<String>,
    secrets: Option<Vec<Secret>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Secret {
    #[serde(rename = "RuleID")]
    rule_id: Option<String>,
    severity: Option<String>,
    title: Option<String>,
    start_line: Option<usize>,
    #[serde(rename = "Match")]
    matched: Option<String>,
}

/// The arguments xtask passes to trivy (kept here so the plan and the run agree).
pub fn args(repo: &Path) -> Vec<String> {
    ["fs", "--scanners", "secret", "--format", "json", "--quiet", "--skip-dirs", "target", "--skip-dirs", ".git"]
        .iter()
        .map(|s| s.to_string())
        .chain([repo.display().to_string()])
        .collect()
}

pub fn run(trivy: &Path, repo: &Path, tracked: &BTreeSet<String>) -> Result<Vec<Finding>> {
    let findings = parse(&Cmd::new(trivy).args(args(repo)).read()?)?;
    // trivy walks the directory; only files git tracks can be committed or pushed.
    Ok(findings.into_iter().filter(|f| tracked.contains(&f.path)).collect())
}

pub fn parse(json: &str) -> Result<Vec<Finding>> {
    let report: Report = serde_json::from_str(json).context("trivy printed something that is not its JSON report")?;
    let mut findings = Vec::new();
    for result in report.results.unwrap_or_default() {
        let Some(target) = result.target else {
            continue;
        };
        for s in result.secrets.unwrap_or_default() {
            let (Some(rule), Some(line)) = (s.rule_id, s.start_line) else {
                continue;
            };
            let matched = s.matched.unwrap_or_default();
            findings.push(Finding {
                path: target.trim_start_matches("./").to_string(),
                line,
                column: 1,
                title: s.title.unwrap_or_else(|| rule.clone()),
                rule,
                severity: match s.severity.as_deref() {
                    Some("CRITICAL") => Severity::Critical,
                    Some("HIGH") => Severity::High,
                    _ => Severity::Medium,
                },
                // trivy already masks the value with asterisks; keep at most a short excerpt.
                redacted: matched.chars().take(60).collect(),
                fingerprint: fingerprint(&matched),
                found_by: vec!["trivy".into()],
            });
        }
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trivy_059_secret_results() {
        let json = r#"{"SchemaVersion":2,"ArtifactName":".","Results":[
            {"Target":"conf/a.txt","Class":"secret","Secrets":[
              {"RuleID":"aws-access-key-id","Category":"AWS","Severity":"CRITICAL","Title":"AWS Access Key ID",
               "StartLine":1,"EndLine":1,"Match":"key = \"****\"","Layer":{}}]},
            {"Target":"b.txt","Class":"secret"},
            {"Class":"secret","Secrets":[{"RuleID":"x","StartLine":2}]}]}"#;
        let f = parse(json).expect("parses");
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].path.as_str(), f[0].line, f[0].rule.as_str()), ("conf/a.txt", 1, "aws-access-key-id"));
        assert_eq!(f[0].severity, Severity::Critical);
    }

    #[test]
    fn a_clean_report_has_no_results_key() {
        assert!(parse(r#"{"SchemaVersion":2}"#).expect("parses").is_empty());
        assert!(parse("not json").is_err());
    }
}
