//! cargo-deny's `--format json` output (NDJSON on stderr) into findings.
//!
//! cargo-deny gives no score, so its own verdict sets the severity: an `error` (the policy in
//! deny.toml denies it: a vulnerability, a banned crate, a rejected licence) is HIGH, so the
//! default gate fails exactly when `cargo xtask deny` would; a `warning` is LOW.

use anyhow::{Result, bail};
use serde::Deserialize;

use super::{Finding, Kind, Severity};

#[derive(Debug, Deserialize)]
struct Line {
    r#type: String,
    #[serde(default)]
    fields: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Diagnostic {
    severity: Option<String>,
    code: Option<String>,
    message: Option<String>,
    advisory: Option<Advisory>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Advisory {
    id: Option<String>,
    package: Option<String>,
    title: Option<String>,
}

const ADVISORY_CODES: &[&str] = &["vulnerability", "unmaintained", "unsound", "yanked", "notice"];

/// Parse the NDJSON stream. A stream without cargo-deny's final summary means it did not finish.
pub fn findings(ndjson: &str) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let mut summary = false;
    for line in ndjson.lines().filter(|l| l.trim_start().starts_with('{')) {
        let Ok(line) = serde_json::from_str::<Line>(line) else { continue };
        match line.r#type.as_str() {
            "summary" => summary = true,
            "diagnostic" => {
                let d: Diagnostic = serde_json::from_value(line.fields).unwrap_or_default();
                let severity = match d.severity.as_deref() {
                    Some("error") => Severity::High,
                    Some("warning") => Severity::Low,
                    _ => continue,
                };
                let code = d.code.unwrap_or_else(|| "deny".into());
                let message = d.message.unwrap_or_default();
                let finding = match d.advisory {
                    Some(a) => Finding {
                        source: "deny".into(),
                        kind: if code == "vulnerability" { Kind::Vulnerability } else { Kind::Policy },
                        id: a.id.unwrap_or(code),
                        severity,
                        title: a.title.unwrap_or(message),
                        target: format!("Cargo.lock ({})", a.package.unwrap_or_default()),
                        line: None,
                        detail: String::new(),
                        fingerprint: None,
                    },
                    None => Finding {
                        source: "deny".into(),
                        kind: if ADVISORY_CODES.contains(&code.as_str()) { Kind::Vulnerability } else { Kind::Policy },
                        id: format!("deny:{code}"),
                        severity,
                        title: message,
                        target: "Cargo.lock".into(),
                        line: None,
                        detail: String::new(),
                        fingerprint: None,
                    },
                };
                out.push(finding);
            }
            _ => {}
        }
    }
    if !summary {
        bail!(
            "cargo-deny stopped before its summary (a config or lockfile problem); run `cargo xtask deny` to see why"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_high_warnings_low_and_advisories_keep_their_id() {
        let stream = r#"
{"type":"log","fields":{"level":"WARN","message":"advisory database is 93 days old"}}
{"type":"diagnostic","fields":{"severity":"warning","code":"duplicate","message":"found 2 duplicate entries for crate 'syn'","labels":[]}}
{"type":"diagnostic","fields":{"severity":"error","code":"vulnerability","message":"Timing attack","advisory":{"id":"RUSTSEC-2023-0071","package":"rsa","title":"Marvin Attack"}}}
{"type":"diagnostic","fields":{"severity":"error","code":"rejected","message":"failed to satisfy license requirements"}}
{"type":"diagnostic","fields":{"severity":"help","code":"license-ok","message":"fine"}}
{"type":"summary","fields":{"advisories":{"errors":1,"warnings":0,"notes":0,"helps":0}}}
"#;
        let found = findings(stream).expect("parses");
        assert_eq!(found.len(), 3, "help lines are not findings: {found:?}");
        assert_eq!((found[0].id.as_str(), found[0].severity), ("deny:duplicate", Severity::Low));
        assert_eq!(found[1].id, "RUSTSEC-2023-0071");
        assert_eq!(found[1].kind, Kind::Vulnerability);
        assert_eq!(found[1].target, "Cargo.lock (rsa)");
        assert_eq!((found[2].kind, found[2].severity), (Kind::Policy, Severity::High));
    }

    #[test]
    fn a_stream_cut_short_is_an_error_not_a_clean_bill() {
        let err = findings("error: failed to load deny.toml\n").expect_err("no summary");
        assert!(err.to_string().contains("cargo xtask deny"), "{err}");
    }
}
