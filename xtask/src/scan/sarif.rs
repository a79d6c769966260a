//! SARIF 2.1.0 for GitHub code scanning: one run, one rule per finding ID, one result per
//! finding that is still open (ignored findings are left out; the gate already accepted them).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Finding, Severity};

fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Unknown => "note",
    }
}

/// GitHub's `security-severity` property: a CVSS-like number that orders alerts.
fn security_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "2.0",
        Severity::Unknown => "0.0",
    }
}

/// The repository file a finding belongs to: its own path, or what produced it for findings
/// about packages and images (code scanning can only show alerts on files).
fn artifact(finding: &Finding, image_sources: &BTreeMap<String, String>) -> String {
    if let Some(service) = finding.source.strip_prefix("image:") {
        return image_sources.get(service).cloned().unwrap_or_else(|| "Cargo.toml".into());
    }
    let path = finding.target.split(" (").next().unwrap_or(&finding.target);
    path.to_string()
}

pub fn render(findings: &[Finding], image_sources: &BTreeMap<String, String>) -> Value {
    let mut rules: BTreeMap<String, Value> = BTreeMap::new();
    let mut results = Vec::new();
    for f in findings {
        rules.entry(f.id.clone()).or_insert_with(|| {
            json!({
                "id": f.id,
                "shortDescription": { "text": if f.title.is_empty() { f.id.clone() } else { f.title.clone() } },
                "properties": {
                    "security-severity": security_severity(f.severity),
                    "tags": ["security", format!("{:?}", f.kind).to_lowercase()],
                },
            })
        });
        let mut location = json!({ "physicalLocation": { "artifactLocation": { "uri": artifact(f, image_sources) } } });
        if let Some(line) = f.line {
            location["physicalLocation"]["region"] = json!({ "startLine": line });
        }
        let mut text = format!("{} ({}, {}): {}", f.title, f.severity.as_str(), f.source, f.location());
        if !f.detail.is_empty() {
            text.push_str(&format!(" — {}", f.detail));
        }
        results.push(json!({
            "ruleId": f.id,
            "level": level(f.severity),
            "message": { "text": text },
            "locations": [location],
        }));
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "cargo xtask scan",
                "informationUri": "https://example.invalid/platform/monorepo",
                "rules": rules.into_values().collect::<Vec<_>>(),
            }},
            "results": results,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::Kind;

    #[test]
    fn findings_become_rules_and_results_on_repository_files() {
        let finding = |id: &str, source: &str, target: &str, line| Finding {
            source: source.into(),
            kind: Kind::Misconfiguration,
            id: id.into(),
            severity: Severity::High,
            title: "Image user should not be 'root'".into(),
            target: target.into(),
            line,
            detail: String::new(),
            fingerprint: None,
        };
        let findings = [
            finding("DS-0002", "trivy-config", "infra/docker/Dockerfile", Some(2)),
            finding("DS-0002", "trivy-config", "infra/docker/Other.Dockerfile", Some(4)),
            finding("CVE-1", "image:api", "usr/local/bin/api (tokio 1.0.0)", None),
        ];
        let sources = BTreeMap::from([("api".to_string(), "services/api/Cargo.toml".to_string())]);
        let sarif = render(&findings, &sources);
        assert_eq!(sarif["version"], "2.1.0");
        let run = &sarif["runs"][0];
        assert_eq!(run["tool"]["driver"]["rules"].as_array().expect("rules").len(), 2);
        assert_eq!(run["results"][0]["level"], "error");
        assert_eq!(run["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"], 2);
        assert_eq!(
            run["results"][2]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "services/api/Cargo.toml"
        );
    }
}
