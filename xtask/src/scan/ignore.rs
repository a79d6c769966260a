//! `.scan-ignore.toml`: accepted findings, each with a reason and an expiry date.
//!
//! ```toml
//! [[ignore]]
//! id = "RUSTSEC-2023-0071"        # any ID shape: DS002, AVD-DS-0002 and DS-0002 are the same
//! target = "Cargo.lock*"          # optional glob on the finding's target (default: anywhere)
//! reason = "no fixed rsa release; we never decrypt with it"
//! expires = "2027-03-31"          # after this day the entry fails the gate: look again
//! ```
//! An entry without a reason or an expiry is a configuration error (exit 2). An expired entry
//! suppresses nothing and fails the gate, so accepted risks get looked at again.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Finding, normalize_id};
use crate::UsageError;

pub const FILE_NAME: &str = ".scan-ignore.toml";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub id: String,
    pub target: Option<String>,
    pub reason: String,
    /// `YYYY-MM-DD`, and as days since the epoch for comparisons.
    pub expires: String,
    #[serde(skip)]
    pub expires_day: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    ignore: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    id: Option<String>,
    target: Option<String>,
    reason: Option<String>,
    expires: Option<toml::Value>,
}

use crate::date::parse_day;

pub fn parse(text: &str, file: &str) -> Result<Vec<Entry>, UsageError> {
    let parsed: File = toml::from_str(text).map_err(|e| {
        // toml's message is a where-line, a source excerpt, then what is wrong: keep the first and last.
        let message = e.to_string();
        let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let what = match (lines.first(), lines.last()) {
            (Some(first), Some(last)) if first != last => format!("{first}: {last}"),
            (Some(first), _) => first.to_string(),
            _ => "invalid TOML".to_string(),
        };
        UsageError(format!("{file}: {what}"))
    })?;
    let mut entries = Vec::new();
    for (i, raw) in parsed.ignore.into_iter().enumerate() {
        let at = format!("{file}: entry {}", i + 1);
        let id = raw.id.filter(|s| !s.trim().is_empty()).ok_or_else(|| UsageError(format!("{at} has no `id`")))?;
        let reason = raw
            .reason
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| UsageError(format!("{at} ({id}) has no `reason`: say why this finding is acceptable")))?;
        let expires = match raw.expires {
            Some(toml::Value::String(s)) => s,
            Some(toml::Value::Datetime(d)) => d.to_string(),
            Some(other) => other.to_string(),
            None => {
                return Err(UsageError(format!(
                    "{at} ({id}) has no `expires`: give a date (YYYY-MM-DD) when it must be looked at again"
                )));
            }
        };
        let expires_day = parse_day(&expires)
            .ok_or_else(|| UsageError(format!("{at} ({id}): expires = {expires:?} is not a date like 2027-03-31")))?;
        entries.push(Entry { id: normalize_id(&id), target: raw.target, reason, expires, expires_day });
    }
    Ok(entries)
}

pub fn load(repo: &Path) -> Result<Vec<Entry>, UsageError> {
    let path = repo.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, FILE_NAME),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(UsageError(format!("cannot read {}: {e}", path.display()))),
    }
}

impl Entry {
    pub fn expired(&self, today: i64) -> bool {
        self.expires_day < today
    }

    pub fn matches(&self, finding: &Finding) -> bool {
        normalize_id(&finding.id) == self.id
            && self.target.as_deref().is_none_or(|glob| crate::secrets::ignore::glob_match(glob, &finding.target))
    }
}

/// What the ignore file did to a list of findings.
#[derive(Debug, Default)]
pub struct Applied {
    pub kept: Vec<Finding>,
    /// Each suppressed finding with the reason it was accepted.
    pub ignored: Vec<(Finding, String)>,
    pub expired: Vec<Entry>,
    pub unused: Vec<Entry>,
}

pub fn apply(findings: Vec<Finding>, entries: &[Entry], today: i64) -> Applied {
    let mut applied = Applied::default();
    let mut used = vec![false; entries.len()];
    for finding in findings {
        let hit = entries.iter().enumerate().find(|(_, e)| !e.expired(today) && e.matches(&finding));
        match hit {
            Some((i, entry)) => {
                used[i] = true;
                applied.ignored.push((finding, entry.reason.clone()));
            }
            None => applied.kept.push(finding),
        }
    }
    for (entry, used) in entries.iter().zip(used) {
        if entry.expired(today) {
            applied.expired.push(entry.clone());
        } else if !used {
            applied.unused.push(entry.clone());
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Kind, Severity};

    fn finding(id: &str, target: &str) -> Finding {
        Finding {
            source: "trivy-config".into(),
            kind: Kind::Misconfiguration,
            id: id.into(),
            severity: Severity::High,
            title: "t".into(),
            target: target.into(),
            line: None,
            detail: String::new(),
        }
    }

    #[test]
    fn a_reasoned_live_entry_suppresses_and_an_expired_one_does_not() {
        let text = r#"
[[ignore]]
id = "AVD-DS-0002"
target = "infra/docker/*"
reason = "builder stage only"
expires = "2999-12-31"

[[ignore]]
id = "KSV017"
reason = "was needed once"
expires = 2001-01-01
"#;
        let entries = parse(text, FILE_NAME).expect("valid");
        assert_eq!(entries[0].id, "DS-0002");
        let today = parse_day("2026-11-22").expect("day");
        let applied = apply(
            vec![
                finding("DS002", "infra/docker/Dockerfile"),
                finding("DS002", "somewhere/else/Dockerfile"),
                finding("KSV-0017", "rendered/prod.yaml"),
            ],
            &entries,
            today,
        );
        assert_eq!(applied.ignored.len(), 1);
        assert_eq!(applied.ignored[0].1, "builder stage only");
        assert_eq!(applied.kept.len(), 2, "other paths and expired entries keep their findings");
        assert_eq!(applied.expired.len(), 1);
        assert!(applied.unused.is_empty());
    }

    #[test]
    fn entries_must_say_why_and_until_when() {
        let no_reason = parse("[[ignore]]\nid = \"DS002\"\nexpires = \"2030-01-01\"\n", FILE_NAME).expect_err("reason");
        assert!(no_reason.0.contains("no `reason`"), "{}", no_reason.0);
        let no_expiry = parse("[[ignore]]\nid = \"DS002\"\nreason = \"r\"\n", FILE_NAME).expect_err("expiry");
        assert!(no_expiry.0.contains("no `expires`"), "{}", no_expiry.0);
        let bad_date =
            parse("[[ignore]]\nid = \"DS002\"\nreason = \"r\"\nexpires = \"soon\"\n", FILE_NAME).expect_err("date");
        assert!(bad_date.0.contains("not a date"), "{}", bad_date.0);
        let unknown = parse("[[ignore]]\nid = \"x\"\nwhy = \"r\"\n", FILE_NAME).expect_err("unknown key");
        assert!(unknown.0.contains("why"), "{}", unknown.0);
    }
}
