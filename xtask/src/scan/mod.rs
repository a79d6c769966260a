//! One security gate over every scanner: findings in one model, one ignore file, one table,
//! one SARIF file, one exit code (see `commands/scan.rs` for what runs).

pub mod deny;
pub mod ignore;
pub mod sarif;
pub mod trivy;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
pub use xtask_kit::findings::{Finding, Kind, Severity};

/// `--severity HIGH,CRITICAL`: the severities that fail the gate.
pub fn parse_severities(text: &str) -> Result<BTreeSet<Severity>, String> {
    let mut set = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let severity = Severity::parse(part).ok_or_else(|| {
            format!("--severity {part}: unknown severity (use a comma list of UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL)")
        })?;
        set.insert(severity);
    }
    if set.is_empty() {
        return Err("--severity needs at least one of UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL".into());
    }
    Ok(set)
}

/// Trivy's misconfiguration IDs changed shape between releases: `DS002` + `AVD-DS-0002` up to
/// v0.68, `DS-0002` from v0.70. Everything becomes `DS-0002` so ignore entries match any of them.
pub fn normalize_id(id: &str) -> String {
    let id = id.trim();
    let bare = id.strip_prefix("AVD-").unwrap_or(id);
    let (prefix, number) = match bare.split_once('-') {
        Some((p, n)) => (p, n),
        None => {
            let split = bare.find(|c: char| c.is_ascii_digit()).unwrap_or(bare.len());
            bare.split_at(split)
        }
    };
    let is_check = !prefix.is_empty()
        && prefix.chars().all(|c| c.is_ascii_uppercase())
        && !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
        && !matches!(prefix, "CVE" | "GHSA" | "RUSTSEC" | "OSV");
    match (is_check, number.parse::<u32>()) {
        (true, Ok(n)) => format!("{prefix}-{n:04}"),
        _ => id.to_string(),
    }
}

/// How one scanner fared, for the report's footer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScannerStatus {
    pub source: String,
    /// `ok`, `not run: <why>`, or `failed: <why>`.
    pub status: String,
    pub findings: usize,
}

impl ScannerStatus {
    pub fn failed(&self) -> bool {
        self.status.starts_with("failed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_of_a_misconfiguration_id_is_one_id() {
        for id in ["DS002", "AVD-DS-0002", "DS-0002", " DS-2 "] {
            assert_eq!(normalize_id(id), "DS-0002", "{id}");
        }
        assert_eq!(normalize_id("KSV017"), "KSV-0017");
        assert_eq!(normalize_id("AVD-KSV-0017"), "KSV-0017");
        for untouched in ["CVE-2024-1234", "RUSTSEC-2023-0071", "GHSA-abcd-efgh-ijkl", "aws-access-key-id"] {
            assert_eq!(normalize_id(untouched), untouched);
        }
    }

    #[test]
    fn severities_parse_case_insensitively_and_reject_typos() {
        let set = parse_severities("high,Critical").expect("valid");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), [Severity::High, Severity::Critical]);
        let err = parse_severities("HIGH,CRIT").expect_err("typo");
        assert!(err.contains("CRIT") && err.contains("CRITICAL"), "{err}");
        assert!(parse_severities("").is_err());
    }
}
