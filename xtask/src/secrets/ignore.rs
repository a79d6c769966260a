//! `.secrets-ignore.toml`: known, accepted findings. Every entry names what it covers
//! (a path glob, a fingerprint, or both, optionally one rule) and must give a reason.
//!
//! ```toml
//! [[allow]]
//! path = "docs/**/*.md"
//! rule = "generic-secret"
//! reason = "documentation shows made-up credentials"
//! ```

use std::path::Path;

use serde::Deserialize;

use super::Finding;
use crate::UsageError;

pub const FILE_NAME: &str = ".secrets-ignore.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IgnoreFile {
    #[serde(default)]
    allow: Vec<Entry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: Option<String>,
    pub rule: Option<String>,
    pub fingerprint: Option<String>,
    pub reason: Option<String>,
}

impl Entry {
    fn covers(&self, f: &Finding) -> bool {
        self.path.as_deref().is_none_or(|g| glob_match(g, &f.path))
            && self.rule.as_deref().is_none_or(|r| r == f.rule)
            && self.fingerprint.as_deref().is_none_or(|fp| fp == f.fingerprint)
    }
}

/// Load and validate; a missing file means no entries.
pub fn load(repo: &Path) -> Result<Vec<Entry>, UsageError> {
    let path = repo.join(FILE_NAME);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    parse(&text)
}

pub fn parse(text: &str) -> Result<Vec<Entry>, UsageError> {
    let file: IgnoreFile = toml::from_str(text).map_err(|e| UsageError(format!("{FILE_NAME}: {}", e.message())))?;
    for (i, e) in file.allow.iter().enumerate() {
        let n = i + 1;
        if e.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(UsageError(format!(
                "{FILE_NAME}: entry {n} has no `reason`; say why this finding is acceptable"
            )));
        }
        if e.path.is_none() && e.fingerprint.is_none() {
            return Err(UsageError(format!(
                "{FILE_NAME}: entry {n} needs `path` or `fingerprint` (a rule alone would silence it everywhere)"
            )));
        }
        if let Some(rule) = &e.rule
            && !super::rules::RULES.iter().any(|r| r.id == rule)
            && !rule.contains('-')
        {
            return Err(UsageError(format!("{FILE_NAME}: entry {n} names unknown rule `{rule}`")));
        }
    }
    Ok(file.allow)
}

/// Split findings into (kept, ignored) and report entries that matched nothing.
pub fn apply(findings: Vec<Finding>, entries: &[Entry]) -> (Vec<Finding>, Vec<Finding>, Vec<usize>) {
    let mut used = vec![false; entries.len()];
    let (mut kept, mut ignored) = (Vec::new(), Vec::new());
    for f in findings {
        match entries.iter().position(|e| e.covers(&f)) {
            Some(i) => {
                used[i] = true;
                ignored.push(f);
            }
            None => kept.push(f),
        }
    }
    let unused = used.iter().enumerate().filter(|(_, u)| !**u).map(|(i, _)| i + 1).collect();
    (kept, ignored, unused)
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
    fn entries_need_a_reason_and_a_scope() {
        let no_reason = "[[allow]]\npath = \"a\"\n";
        assert!(parse(no_reason).expect_err("rejected").0.contains("no `reason`"));
        let blank_reason = "[[allow]]\npath = \"a\"\nreason = \" \"\n";
        assert!(parse(blank_reason).is_err());
        let no_scope = "[[allow]]\nrule = \"generic-secret\"\nreason = \"r\"\n";
        assert!(parse(no_scope).expect_err("rejected").0.contains("needs `path` or `fingerprint`"));
        let typo = "[[allow]]\npaht = \"a\"\nreason = \"r\"\n";
        assert!(parse(typo).expect_err("rejected").0.contains("paht"));
        let ok = "[[allow]]\npath = \"docs/**\"\nrule = \"generic-secret\"\nreason = \"examples\"\n";
        assert_eq!(parse(ok).expect("valid").len(), 1);
    }
}
