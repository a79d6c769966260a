//! `.scan-ignore.toml`: accepted findings, each with a reason and an expiry date.
//!
//! ```toml
//! [[ignore]]
//! id = "RUSTSEC-2023-0071"        # any ID shape: DS002, AVD-DS-0002 and DS-0002 are the same
//! target = "Cargo.lock*"          # optional glob on the finding's target (default: anywhere)
//! reason = "no fixed rsa release; we never decrypt with it"
//! expires = "2027-03-31"          # after this day the entry fails the gate: look again
//!
//! [[ignore]]
//! id = "generic-secret"           # a secret rule: needs `target` or `fingerprint`
//! target = "docs/**/*.md"         # `*` within a path segment, `**` across them
//! fingerprint = "5f2c..."         # optional: only this value (as `secrets` prints it)
//! reason = "made-up example credentials in the docs"
//! expires = "2027-06-30"
//! ```
//! An entry without a reason or an expiry is a configuration error (exit 2). An expired entry
//! suppresses nothing and fails the gate, so accepted risks get looked at again. This is the one
//! ignore file: `cargo xtask secrets` reads it too.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Finding, normalize_id};
use crate::UsageError;

pub const FILE_NAME: &str = ".scan-ignore.toml";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub id: String,
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
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
    fingerprint: Option<String>,
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
        let secret_rule = crate::secrets::rules::is_rule(&id);
        if secret_rule && raw.target.is_none() && raw.fingerprint.is_none() {
            return Err(UsageError(format!(
                "{at} ({id}) needs `target` or `fingerprint`: a secret rule alone would accept every secret it finds"
            )));
        }
        entries.push(Entry {
            id: normalize_id(&id),
            target: raw.target,
            fingerprint: raw.fingerprint,
            reason,
            expires,
            expires_day,
        });
    }
    Ok(entries)
}

/// Where secret-scan entries used to go; read no more, so its entries are moved, not lost.
const RETIRED: &str = ".secrets-ignore.toml";

pub fn load(repo: &Path) -> Result<Vec<Entry>, UsageError> {
    if repo.join(RETIRED).exists() {
        return Err(UsageError(format!(
            "{RETIRED} is no longer read: move each [[allow]] entry to {FILE_NAME} as [[ignore]] with id = its rule, target = its path, reason and expires"
        )));
    }
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
            && self.target.as_deref().is_none_or(|glob| glob_match(glob, &finding.target))
            && self.fingerprint.as_ref().is_none_or(|fp| finding.fingerprint.as_ref() == Some(fp))
    }
}

/// What the ignore file did to a list of findings (or of anything seen as one, `T`).
#[derive(Debug)]
pub struct Applied<T = Finding> {
    pub kept: Vec<T>,
    /// Each suppressed finding with the reason it was accepted.
    pub ignored: Vec<(T, String)>,
    pub expired: Vec<Entry>,
    pub unused: Vec<Entry>,
}

pub fn apply(findings: Vec<Finding>, entries: &[Entry], today: i64) -> Applied {
    apply_by(findings, Clone::clone, entries, today)
}

/// `apply` for items that are seen as a finding through `as_finding` (the secret scan's own).
pub fn apply_by<T>(items: Vec<T>, as_finding: impl Fn(&T) -> Finding, entries: &[Entry], today: i64) -> Applied<T> {
    let mut applied = Applied { kept: Vec::new(), ignored: Vec::new(), expired: Vec::new(), unused: Vec::new() };
    let mut used = vec![false; entries.len()];
    for item in items {
        let finding = as_finding(&item);
        let hit = entries.iter().enumerate().find(|(_, e)| !e.expired(today) && e.matches(&finding));
        match hit {
            Some((i, entry)) => {
                used[i] = true;
                applied.ignored.push((item, entry.reason.clone()));
            }
            None => applied.kept.push(item),
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

/// `*` matches within one path segment, `**` across segments, `?` one character.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            // `**/` matches zero or more whole segments: retry after each `/`, never mid-name.
            [b'*', b'*', b'/', rest @ ..] => {
                go(rest, s) || s.iter().position(|&c| c == b'/').is_some_and(|i| go(p, &s[i + 1..]))
            }
            [b'*', b'*', rest @ ..] => go(rest, s) || (!s.is_empty() && go(p, &s[1..])),
            [b'*', rest @ ..] => go(rest, s) || (!s.is_empty() && s[0] != b'/' && go(p, &s[1..])),
            [b'?', rest @ ..] => !s.is_empty() && s[0] != b'/' && go(rest, &s[1..]),
            [c, rest @ ..] => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
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
            fingerprint: None,
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
    fn globs() {
        assert!(glob_match("docs/**/*.md", "docs/a/b/c.md"));
        assert!(glob_match("docs/**/*.md", "docs/c.md"));
        assert!(glob_match("**/foo.env", "foo.env"));
        assert!(glob_match("**/foo.env", "a/b/foo.env"));
        assert!(!glob_match("**/foo.env", "barfoo.env"), "whole segments only");
        assert!(!glob_match("**/foo.env", "x/notfoo.env"));
        assert!(glob_match("*.env", "dev.env"));
        assert!(!glob_match("*.env", "infra/dev.env"));
        assert!(glob_match("infra/?.env", "infra/a.env"));
        assert!(!glob_match("docs/*.md", "docs/a/b.md"));
    }

    #[test]
    fn a_secret_rule_is_accepted_only_somewhere_or_for_one_value() {
        let everywhere = "[[ignore]]\nid = \"generic-secret\"\nreason = \"r\"\nexpires = \"2030-01-01\"\n";
        let err = parse(everywhere, FILE_NAME).expect_err("too wide");
        assert!(err.0.contains("needs `target` or `fingerprint`"), "{}", err.0);
        let one_value = format!("{everywhere}fingerprint = \"abc\"\n");
        let entries = parse(&one_value, FILE_NAME).expect("valid");
        let mut secret = finding("generic-secret", "any/where.env");
        assert!(!entries[0].matches(&secret), "no fingerprint, no match");
        secret.fingerprint = Some("abc".into());
        assert!(entries[0].matches(&secret));
        secret.fingerprint = Some("abd".into());
        assert!(!entries[0].matches(&secret), "another value");
    }

    #[test]
    fn the_retired_secrets_ignore_file_is_refused_with_how_to_move_it() {
        let dir = std::env::temp_dir().join(format!("xtask-retired-ignore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(RETIRED), "[[allow]]\npath = \"a\"\nreason = \"r\"\n").expect("write");
        let err = load(&dir).expect_err("refused");
        assert!(err.0.contains("no longer read") && err.0.contains("[[ignore]]"), "{}", err.0);
        let _ = std::fs::remove_dir_all(dir);
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
