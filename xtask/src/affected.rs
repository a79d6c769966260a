//! Which packages a change can affect: the ones whose files changed, plus everything that
//! depends on them. A change to a file every build reads (Cargo.lock, .cargo/, the toolchain
//! pin, xtask itself) affects everything.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::workspace::Workspace;

/// Paths (files, or directories ending in `/`) whose change means "rebuild and retest everything".
pub const ROOT_TRIGGERS: &[&str] = &[
    "Cargo.lock",
    "Cargo.toml",
    ".cargo/",
    "rust-toolchain.toml",
    "rust-toolchain",
    "clippy.toml",
    ".clippy.toml",
    "rustfmt.toml",
    ".rustfmt.toml",
    ".config/nextest.toml",
    "xtask/",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Why {
    /// Its own files changed (the first few are kept for the explanation).
    Changed { files: Vec<String> },
    /// It depends, directly or not, on a changed package.
    DependsOn { package: String },
    /// A root file changed.
    Everything { file: String },
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Affected {
    /// Set when a root file changed: every member is affected.
    pub everything_because: Option<String>,
    pub packages: BTreeMap<String, Why>,
    /// Changed files that belong to no package and trigger nothing (docs, infra, workflows).
    pub unowned: Vec<String>,
}

impl Affected {
    pub fn names(&self) -> Vec<String> {
        self.packages.keys().cloned().collect()
    }

    /// One line per package saying why it was chosen, for the plan's notes.
    pub fn explain(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(file) = &self.everything_because {
            lines.push(format!(
                "--changed: {file} changed, which every package depends on: checking all packages"
            ));
            return lines;
        }
        if self.packages.is_empty() {
            lines.push(
                "--changed: no package is affected; lint and test have nothing to do".to_string(),
            );
        }
        for (name, why) in &self.packages {
            let reason = match why {
                Why::Changed { files } => format!("changed ({})", files.join(", ")),
                Why::DependsOn { package } => format!("depends on {package}"),
                Why::Everything { file } => format!("{file} changed"),
            };
            lines.push(format!("--changed: {name}: {reason}"));
        }
        if !self.unowned.is_empty() {
            lines.push(format!(
                "--changed: outside any package, ignored for lint/test: {}",
                self.unowned.join(", ")
            ));
        }
        lines
    }
}

fn is_root_trigger(file: &str) -> bool {
    ROOT_TRIGGERS.iter().any(|t| {
        if t.ends_with('/') {
            file.starts_with(t)
        } else {
            file == *t
        }
    })
}

/// The member that owns a file: the one whose directory is the longest prefix of its path.
fn owner<'a>(ws: &'a Workspace, file: &str) -> Option<&'a str> {
    let path = Path::new(file);
    ws.members
        .values()
        .filter(|m| !m.dir.as_os_str().is_empty() && path.starts_with(&m.dir))
        .max_by_key(|m| m.dir.components().count())
        .map(|m| m.name.as_str())
}

pub fn compute(ws: &Workspace, changed: &[String]) -> Affected {
    let mut affected = Affected::default();
    if let Some(file) = changed.iter().find(|f| is_root_trigger(f)) {
        affected.everything_because = Some(file.clone());
        for name in ws.members.keys() {
            affected
                .packages
                .insert(name.clone(), Why::Everything { file: file.clone() });
        }
        return affected;
    }
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in changed {
        match owner(ws, file) {
            Some(name) => direct
                .entry(name.to_string())
                .or_default()
                .push(file.clone()),
            None => affected.unowned.push(file.clone()),
        }
    }
    for (name, mut files) in direct.clone() {
        files.truncate(3);
        affected.packages.insert(name, Why::Changed { files });
    }
    for name in direct.keys() {
        for dependent in ws.reverse_deps(name) {
            affected
                .packages
                .entry(dependent)
                .or_insert_with(|| Why::DependsOn {
                    package: name.clone(),
                });
        }
    }
    affected
}
