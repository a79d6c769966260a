//! The secret scan: built-in rules over every git-tracked file, trivy's secret scanner merged in
//! when present. Accepted findings are `.scan-ignore.toml` entries like every scanner's
//! (`scan/ignore.rs`): the secret scan is the secrets part of `scan`.

pub mod rules;
pub mod trivy;

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use rules::Severity;

/// Files larger than this are data, not configuration or code.
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub rule: String,
    pub title: String,
    pub severity: Severity,
    /// Never the secret itself.
    pub redacted: String,
    pub fingerprint: String,
    /// Which scanners saw it: `xtask`, `trivy`, or both.
    pub found_by: Vec<String>,
}

impl Finding {
    /// As the scan gate sees it: for the one ignore file, the report and SARIF.
    pub fn to_finding(&self) -> xtask_kit::findings::Finding {
        xtask_kit::findings::Finding {
            source: "secrets".into(),
            kind: xtask_kit::findings::Kind::Secret,
            id: self.rule.clone(),
            severity: self.severity,
            title: self.title.clone(),
            target: self.path.clone(),
            line: Some(self.line as u64),
            detail: self.redacted.clone(),
            fingerprint: Some(self.fingerprint.clone()),
        }
    }
}

/// Run the built-in rules over the given files (paths relative to `repo`).
pub fn scan_files(repo: &Path, files: &[String]) -> Result<(Vec<Finding>, usize)> {
    let mut findings = Vec::new();
    let mut scanned = 0;
    for rel in files {
        let path = repo.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        if bytes[..bytes.len().min(8000)].contains(&0) {
            continue;
        }
        scanned += 1;
        let text = String::from_utf8_lossy(&bytes);
        for hit in rules::scan_text(&text) {
            findings.push(Finding {
                path: rel.clone(),
                line: hit.line,
                column: hit.column,
                rule: hit.rule.id.to_string(),
                title: hit.rule.title.to_string(),
                severity: hit.rule.severity,
                redacted: rules::redact(&hit.secret),
                fingerprint: rules::fingerprint(&hit.secret),
                found_by: vec!["xtask".into()],
            });
        }
    }
    Ok((findings, scanned))
}

/// Add trivy's findings, folding those on a line the built-in rules already reported.
pub fn merge(findings: &mut Vec<Finding>, from_trivy: Vec<Finding>) {
    for theirs in from_trivy {
        match findings.iter_mut().find(|f| f.path == theirs.path && f.line == theirs.line) {
            Some(ours) => {
                if !ours.found_by.contains(&"trivy".to_string()) {
                    ours.found_by.push("trivy".into());
                }
            }
            None => findings.push(theirs),
        }
    }
    findings.sort_by(|a, b| (&a.path, a.line, &a.rule).cmp(&(&b.path, b.line, &b.rule)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(path: &str, line: usize, by: &str) -> Finding {
        Finding {
            path: path.into(),
            line,
            column: 1,
            rule: "r".into(),
            title: "t".into(),
            severity: Severity::High,
            redacted: "x".into(),
            fingerprint: "f".into(),
            found_by: vec![by.into()],
        }
    }

    #[test]
    fn trivy_findings_on_the_same_line_are_folded_into_ours() {
        let mut ours = vec![finding("a.env", 3, "xtask")];
        merge(&mut ours, vec![finding("a.env", 3, "trivy"), finding("b.yml", 1, "trivy")]);
        assert_eq!(ours.len(), 2);
        assert_eq!(ours[0].found_by, ["xtask", "trivy"]);
        assert_eq!(ours[1].path, "b.yml");
    }
}
