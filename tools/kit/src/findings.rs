//! Findings: what every scanner reports, in one model (the scan gate's, and what the
//! deployer's compose checks write for it).

use serde::{Deserialize, Serialize};

/// Trivy's scale, which every other scanner is mapped onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] =
        [Severity::Unknown, Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "UNKNOWN",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// What kind of problem a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Vulnerability,
    Misconfiguration,
    Secret,
    /// Dependency policy: bans, licences, sources, unmaintained crates.
    Policy,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Which scan saw it: `deny`, `secrets`, `trivy-fs`, `trivy-config`, `image:<service>`.
    pub source: String,
    pub kind: Kind,
    /// Normalised ID: `RUSTSEC-...`, `CVE-...`, `DS-0002`, a secret rule id.
    pub id: String,
    pub severity: Severity,
    pub title: String,
    /// File or package the finding is about (repository-relative when it is a file).
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Installed and fixed versions, a redacted match, the scanner's message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Secrets: a hash of the value (never the value), so one value can be accepted wherever it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Finding {
    pub fn location(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{line}", self.target),
            None => self.target.clone(),
        }
    }
}
