//! Trivy's JSON report (SchemaVersion 2) into findings. Every field is optional in trivy's own
//! types (`omitempty`), so every field here is too, and unknown fields are ignored.

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{Finding, Kind, Severity, normalize_id};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Report {
    pub schema_version: Option<u32>,
    pub artifact_name: Option<String>,
    pub results: Option<Vec<ResultSet>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ResultSet {
    pub target: Option<String>,
    pub class: Option<String>,
    pub r#type: Option<String>,
    pub vulnerabilities: Option<Vec<Vulnerability>>,
    pub misconfigurations: Option<Vec<Misconfiguration>>,
    pub secrets: Option<Vec<Secret>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Vulnerability {
    #[serde(rename = "VulnerabilityID")]
    pub vulnerability_id: Option<String>,
    pub pkg_name: Option<String>,
    pub installed_version: Option<String>,
    pub fixed_version: Option<String>,
    pub severity: Option<String>,
    pub title: Option<String>,
    pub primary_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Misconfiguration {
    #[serde(rename = "ID")]
    pub id: Option<String>,
    #[serde(rename = "AVDID")]
    pub avd_id: Option<String>,
    pub title: Option<String>,
    pub message: Option<String>,
    pub severity: Option<String>,
    pub status: Option<String>,
    pub cause_metadata: Option<CauseMetadata>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CauseMetadata {
    pub start_line: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Secret {
    #[serde(rename = "RuleID")]
    pub rule_id: Option<String>,
    pub title: Option<String>,
    pub severity: Option<String>,
    pub start_line: Option<u64>,
    /// Already masked by trivy.
    pub r#match: Option<String>,
}

pub fn parse(json: &str) -> Result<Report> {
    serde_json::from_str(json).context("trivy's JSON report does not parse")
}

fn severity(text: &Option<String>) -> Severity {
    text.as_deref().and_then(Severity::parse).unwrap_or(Severity::Unknown)
}

/// Findings of one report. `source` names the scan; `rename` maps trivy's target (a path inside
/// a staging directory, say) to what people should see.
pub fn findings(report: &Report, source: &str, rename: &dyn Fn(&str) -> String) -> Vec<Finding> {
    let mut out = Vec::new();
    for result in report.results.iter().flatten() {
        let target = rename(result.target.as_deref().unwrap_or("?"));
        for v in result.vulnerabilities.iter().flatten() {
            let package = v.pkg_name.clone().unwrap_or_default();
            let installed = v.installed_version.clone().unwrap_or_default();
            let fixed = v.fixed_version.clone().filter(|f| !f.is_empty()).unwrap_or_else(|| "no fix yet".into());
            out.push(Finding {
                source: source.to_string(),
                kind: Kind::Vulnerability,
                id: v.vulnerability_id.clone().unwrap_or_else(|| "?".into()),
                severity: severity(&v.severity),
                title: v.title.clone().unwrap_or_else(|| format!("vulnerable {package}")),
                target: format!("{target} ({package} {installed})"),
                line: None,
                detail: format!("fixed in: {fixed}"),
                fingerprint: None,
            });
        }
        for m in result.misconfigurations.iter().flatten() {
            // PASS and EXCEPTION entries only appear with --include-non-failures; skip them.
            if m.status.as_deref().is_some_and(|s| s != "FAIL") {
                continue;
            }
            let id = m.id.clone().or_else(|| m.avd_id.clone()).unwrap_or_else(|| "?".into());
            out.push(Finding {
                source: source.to_string(),
                kind: Kind::Misconfiguration,
                id: normalize_id(&id),
                severity: severity(&m.severity),
                title: m.title.clone().unwrap_or_default(),
                target: target.clone(),
                line: m.cause_metadata.as_ref().and_then(|c| c.start_line).filter(|l| *l > 0),
                detail: m.message.clone().unwrap_or_default(),
                fingerprint: None,
            });
        }
        for s in result.secrets.iter().flatten() {
            out.push(Finding {
                source: source.to_string(),
                kind: Kind::Secret,
                id: s.rule_id.clone().unwrap_or_else(|| "?".into()),
                severity: severity(&s.severity),
                title: s.title.clone().unwrap_or_default(),
                target: target.clone(),
                line: s.start_line,
                detail: s.r#match.clone().unwrap_or_default(),
                fingerprint: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like trivy 0.59's output: old-style IDs with an AVDID, a PASS entry, a secret.
    const OLD: &str = r#"{"SchemaVersion":2,"ArtifactName":"infra","Results":[
      {"Target":"docker/Dockerfile","Class":"config","Type":"dockerfile",
       "MisconfSummary":{"Successes":26,"Failures":1},
       "Misconfigurations":[
         {"Type":"Dockerfile Security Check","ID":"DS002","AVDID":"AVD-DS-0002","Title":"Image user should not be 'root'",
          "Message":"Last USER command in Dockerfile should not be 'root'","Severity":"HIGH","Status":"FAIL",
          "CauseMetadata":{"Provider":"Dockerfile","StartLine":2,"EndLine":2}},
         {"ID":"DS001","Severity":"MEDIUM","Status":"PASS"}]},
      {"Target":"app/.env","Class":"secret","Secrets":[
         {"RuleID":"aws-access-key-id","Category":"AWS","Severity":"CRITICAL","Title":"AWS Access Key ID",
          "StartLine":3,"Match":"AWS_ACCESS_KEY_ID=****************"}]}]}"#;

    /// Newer trivy: `DS-0002` and no AVDID; a vulnerability with every field we read.
    const NEW: &str = r#"{"SchemaVersion":2,"Results":[
      {"Target":"Cargo.lock","Class":"lang-pkgs","Type":"cargo","Vulnerabilities":[
         {"VulnerabilityID":"CVE-2024-0001","PkgName":"foo","InstalledVersion":"1.0.0","FixedVersion":"1.0.1",
          "Severity":"CRITICAL","Title":"foo overflows","SomeNewField":{"x":1}}]},
      {"Target":"Dockerfile","Class":"config","Misconfigurations":[{"ID":"DS-0002","Severity":"HIGH","Status":"FAIL"}]},
      {"Target":"empty"}]}"#;

    #[test]
    fn old_and_new_reports_give_the_same_ids() {
        let old = findings(&parse(OLD).expect("old parses"), "trivy-config", &|t| format!("infra/{t}"));
        assert_eq!(old.len(), 2, "the PASS entry is not a finding: {old:?}");
        assert_eq!(old[0].id, "DS-0002");
        assert_eq!(old[0].location(), "infra/docker/Dockerfile:2");
        assert_eq!(old[1].kind, Kind::Secret);
        assert_eq!(old[1].severity, Severity::Critical);
        assert!(old[1].detail.contains("****"));

        let new = findings(&parse(NEW).expect("new parses"), "trivy-fs", &|t| t.to_string());
        assert_eq!(new[0].id, "CVE-2024-0001");
        assert_eq!(new[0].target, "Cargo.lock (foo 1.0.0)");
        assert_eq!(new[0].detail, "fixed in: 1.0.1");
        assert_eq!(new[1].id, "DS-0002");
    }

    #[test]
    fn a_report_with_nothing_but_a_schema_is_no_findings() {
        let empty = parse(r#"{"SchemaVersion":2,"ArtifactName":"x","ArtifactType":"container_image"}"#).expect("parse");
        assert!(findings(&empty, "image:api", &|t| t.to_string()).is_empty());
        assert!(parse("not json").is_err());
    }
}
