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
            lines.push(format!("--changed: {file} changed, which every package depends on: checking all packages"));
            return lines;
        }
        if self.packages.is_empty() {
            lines.push("--changed: no package is affected; lint and test have nothing to do".to_string());
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
            lines.push(format!("--changed: outside any package, ignored for lint/test: {}", self.unowned.join(", ")));
        }
        lines
    }
}

fn is_root_trigger(file: &str) -> bool {
    ROOT_TRIGGERS.iter().any(|t| if t.ends_with('/') { file.starts_with(t) } else { file == *t })
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

/// Which dependency edges carry a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Everything that builds or tests against it (dev-dependencies, binaries tests start).
    Tests,
    /// Only what links it into a binary: what an image rebuild must cover.
    Binaries,
}

pub fn compute(ws: &Workspace, changed: &[String]) -> Affected {
    compute_reach(ws, changed, Reach::Tests)
}

pub fn compute_reach(ws: &Workspace, changed: &[String], reach: Reach) -> Affected {
    let mut affected = Affected::default();
    if let Some(file) = changed.iter().find(|f| is_root_trigger(f)) {
        affected.everything_because = Some(file.clone());
        for name in ws.members.keys() {
            affected.packages.insert(name.clone(), Why::Everything { file: file.clone() });
        }
        return affected;
    }
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in changed {
        match owner(ws, file) {
            Some(name) => direct.entry(name.to_string()).or_default().push(file.clone()),
            None => affected.unowned.push(file.clone()),
        }
    }
    for (name, mut files) in direct.clone() {
        files.truncate(3);
        affected.packages.insert(name, Why::Changed { files });
    }
    for name in direct.keys() {
        let dependents = match reach {
            Reach::Tests => ws.reverse_deps(name),
            Reach::Binaries => ws.binary_dependents(name),
        };
        for dependent in dependents {
            affected.packages.entry(dependent).or_insert_with(|| Why::DependsOn { package: name.clone() });
        }
    }
    affected
}

#[cfg(test)]
mod tests {
    use super::*;

    /// util <- kit <- {api, worker}; testkit <- api (dev); gateway runs api. See the fixture's Cargo.toml.
    fn fixture() -> Workspace {
        crate::fixture_workspace()
    }

    fn picked(changed: &[&str]) -> Affected {
        let changed: Vec<String> = changed.iter().map(|s| s.to_string()).collect();
        compute(&fixture(), &changed)
    }

    #[test]
    fn a_leaf_change_affects_only_that_leaf() {
        let a = picked(&["services/gateway/src/main.rs"]);
        assert_eq!(a.names(), ["gateway"]);
        assert_eq!(a.packages["gateway"], Why::Changed { files: vec!["services/gateway/src/main.rs".into()] });
        assert!(a.everything_because.is_none());
    }

    #[test]
    fn a_shared_library_change_reaches_every_dependent_transitively() {
        let a = picked(&["crates/util/src/lib.rs"]);
        assert_eq!(a.names(), ["api", "gateway", "kit", "util", "worker"]);
        assert_eq!(a.packages["api"], Why::DependsOn { package: "util".into() });
    }

    #[test]
    fn a_service_that_another_runs_affects_it_without_a_cargo_dependency() {
        let a = picked(&["services/api/src/main.rs"]);
        assert_eq!(a.names(), ["api", "gateway"]);
        assert_eq!(a.packages["gateway"], Why::DependsOn { package: "api".into() });
    }

    #[test]
    fn binaries_are_reached_only_through_what_they_link() {
        let changed = |f: &str| compute_reach(&fixture(), &[f.to_string()], Reach::Binaries).names();
        // The gateway runs the api but does not link it; testkit is only a dev-dependency.
        assert_eq!(changed("services/api/src/main.rs"), ["api"]);
        assert_eq!(changed("crates/testkit/src/lib.rs"), ["testkit"]);
        assert_eq!(changed("crates/util/src/lib.rs"), ["api", "kit", "util", "worker"]);
    }

    #[test]
    fn dev_dependencies_count_because_tests_use_them() {
        assert_eq!(picked(&["crates/testkit/src/lib.rs"]).names(), ["api", "gateway", "testkit"]);
    }

    #[test]
    fn a_root_file_change_means_everything() {
        for root_file in ["Cargo.lock", ".cargo/config.toml", "rust-toolchain.toml", "xtask/src/main.rs"] {
            let a = picked(&["services/gateway/src/main.rs", root_file]);
            assert_eq!(a.everything_because.as_deref(), Some(root_file));
            assert_eq!(a.names().len(), 6, "{root_file} should select all six members");
        }
    }

    #[test]
    fn files_outside_packages_are_reported_not_silently_dropped() {
        let a = picked(&["README.md", "infra/k8s/base/api.yaml"]);
        assert!(a.packages.is_empty());
        assert_eq!(a.unowned, ["README.md", "infra/k8s/base/api.yaml"]);
        let text = a.explain().join("\n");
        assert!(text.contains("no package is affected") && text.contains("README.md"), "{text}");
    }

    #[test]
    fn the_explanation_names_each_package_and_its_reason() {
        let text = picked(&["crates/kit/src/lib.rs"]).explain().join("\n");
        assert!(text.contains("kit: changed (crates/kit/src/lib.rs)"), "{text}");
        assert!(text.contains("api: depends on kit"), "{text}");
    }

    #[test]
    fn the_fixture_services_are_discovered_from_metadata() {
        let ws = fixture();
        let services: Vec<_> = ws.services().map(|(n, _)| n.as_str()).collect();
        assert_eq!(services, ["api", "gateway", "worker"]);
        assert!(ws.require_services(&["nope".into()]).is_err());
    }
}
