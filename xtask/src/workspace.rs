//! The workspace as xtask sees it: members, services and who depends on whom.
//!
//! Read once per command from `cargo metadata --no-deps` (fast, offline: no resolution).
//! A service is a member whose Cargo.toml has a `[package.metadata.service]` table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::UsageError;

#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub name: String,
    pub version: String,
    /// Directory of the member's Cargo.toml, relative to the workspace root.
    pub dir: PathBuf,
    /// Other workspace members this one depends on (any kind: normal, dev, build).
    pub deps: BTreeSet<String>,
    /// The subset of `deps` that ends up in its binaries (normal and build, not dev).
    pub build_deps: BTreeSet<String>,
    /// Workspace binaries this member runs (services it `needs`, or its tests `starts`): a
    /// change to them affects it even without a Cargo dependency.
    pub runs: BTreeSet<String>,
    pub has_binary: bool,
    pub has_lib: bool,
    /// `package.repository`: where the source lives (an image's `org.opencontainers.image.source`).
    pub repository: Option<String>,
    pub service: Option<ServiceMeta>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceMeta {
    pub port: u16,
    pub health: String,
    pub ready: String,
    pub needs: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    pub members: BTreeMap<String, Member>,
}

/// Backing services a service may declare in `needs` (besides other services of the workspace).
pub const KNOWN_DEPENDENCIES: &[&str] = &["postgres", "redis"];

const SERVICE_KEYS: &[&str] = &["port", "health", "ready", "needs"];

impl Workspace {
    pub fn load(root: &Path) -> Result<Workspace> {
        let manifest = root.join("Cargo.toml");
        let json = crate::process::Cmd::new(crate::cargo_program())
            .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
            .arg(&manifest)
            .read()
            .map_err(|e| UsageError(format!("cannot read the workspace at {}: {e:#}", root.display())))?;
        let metadata = cargo_metadata::MetadataCommand::parse(json)
            .map_err(|e| UsageError(format!("cannot read the workspace at {}: {e}", root.display())))?;
        Workspace::from_metadata(&metadata)
    }

    pub fn from_metadata(metadata: &cargo_metadata::Metadata) -> Result<Workspace> {
        let root = metadata.workspace_root.clone().into_std_path_buf();
        let member_ids: BTreeSet<_> = metadata.workspace_members.iter().collect();
        let packages: Vec<_> = metadata.packages.iter().filter(|p| member_ids.contains(&p.id)).collect();
        let names: BTreeSet<String> = packages.iter().map(|p| p.name.to_string()).collect();

        let mut members = BTreeMap::new();
        for pkg in &packages {
            let manifest = pkg.manifest_path.clone().into_std_path_buf();
            let dir = manifest.parent().context("manifest has a parent directory")?;
            let dir = dir.strip_prefix(&root).unwrap_or(dir).to_path_buf();
            let deps = pkg
                .dependencies
                .iter()
                .filter(|d| d.path.is_some() && names.contains(&d.name))
                .map(|d| d.name.clone())
                .collect();
            let build_deps = pkg
                .dependencies
                .iter()
                .filter(|d| d.path.is_some() && names.contains(&d.name))
                .filter(|d| d.kind != cargo_metadata::DependencyKind::Development)
                .map(|d| d.name.clone())
                .collect();
            let has_binary = pkg.targets.iter().any(|t| t.is_bin());
            let has_lib = pkg.targets.iter().any(|t| t.is_lib());
            let rel_manifest = dir.join("Cargo.toml");
            let service = match pkg.metadata.get("service") {
                None => None,
                Some(table) => Some(parse_service_meta(table, &rel_manifest, has_binary, &names).map_err(UsageError)?),
            };
            let mut runs: BTreeSet<String> = service
                .as_ref()
                .map(|s: &ServiceMeta| s.needs.iter().filter(|n| names.contains(*n)).cloned().collect())
                .unwrap_or_default();
            if let Some(tests) = pkg.metadata.get("tests") {
                runs.extend(parse_test_meta(tests, &rel_manifest, &names).map_err(UsageError)?);
            }
            members.insert(
                pkg.name.to_string(),
                Member {
                    name: pkg.name.to_string(),
                    version: pkg.version.to_string(),
                    dir,
                    deps,
                    build_deps,
                    runs,
                    repository: pkg.repository.clone(),
                    has_binary,
                    has_lib,
                    service,
                },
            );
        }
        Ok(Workspace { root, target_dir: metadata.target_directory.clone().into_std_path_buf(), members })
    }

    pub fn services(&self) -> impl Iterator<Item = (&String, &ServiceMeta)> {
        self.members.iter().filter_map(|(n, m)| m.service.as_ref().map(|s| (n, s)))
    }

    /// Resolve `--service NAME` values, or say which services exist.
    pub fn require_services(&self, names: &[String]) -> Result<Vec<String>> {
        for name in names {
            if self.members.get(name).is_none_or(|m| m.service.is_none()) {
                let known: Vec<_> = self.services().map(|(n, _)| n.as_str()).collect();
                let known = if known.is_empty() { "none yet".to_string() } else { known.join(", ") };
                return Err(UsageError(format!(
                    "unknown service '{name}' (services in this workspace: {known}); check the name or add [package.metadata.service] to its Cargo.toml"
                ))
                .into());
            }
        }
        Ok(names.to_vec())
    }

    /// Members that depend on `name`, directly or through other members.
    pub fn reverse_deps(&self, name: &str) -> BTreeSet<String> {
        self.dependents(name, |m, n| m.deps.contains(n) || m.runs.contains(n))
    }

    /// Members whose built binaries contain `name` (normal and build dependencies only): what an
    /// image rebuild must cover, narrower than what tests must cover.
    pub fn binary_dependents(&self, name: &str) -> BTreeSet<String> {
        self.dependents(name, |m, n| m.build_deps.contains(n))
    }

    fn dependents(&self, name: &str, edge: impl Fn(&Member, &str) -> bool) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut queue = vec![name.to_string()];
        while let Some(current) = queue.pop() {
            for m in self.members.values() {
                if edge(m, &current) && found.insert(m.name.clone()) {
                    queue.push(m.name.clone());
                }
            }
        }
        found
    }
}

/// `[package.metadata.tests] starts = ["api"]`: workspace binaries the member's tests start.
pub fn parse_test_meta(table: &Value, manifest: &Path, members: &BTreeSet<String>) -> Result<Vec<String>, String> {
    let at = format!("[package.metadata.tests] in {}", manifest.display());
    let Value::Object(map) = table else { return Err(format!("{at} must be a table")) };
    if let Some(unknown) = map.keys().find(|k| k.as_str() != "starts") {
        return Err(format!("{at}: unknown key `{unknown}` (known keys: starts)"));
    }
    let Some(Value::Array(items)) = map.get("starts") else {
        return Err(format!("{at}: `starts` must list workspace binaries, e.g. [\"api\"]"));
    };
    items
        .iter()
        .map(|i| match i {
            Value::String(n) if members.contains(n) => Ok(n.clone()),
            other => Err(format!("{at}: `starts` names {other}, which is not a workspace member")),
        })
        .collect()
}

/// Validate one `[package.metadata.service]` table. Errors are one line naming the file, key and fix.
pub fn parse_service_meta(
    table: &Value,
    manifest: &Path,
    has_binary: bool,
    members: &BTreeSet<String>,
) -> Result<ServiceMeta, String> {
    let at = format!("[package.metadata.service] in {}", manifest.display());
    let Value::Object(map) = table else {
        return Err(format!("{at} must be a table like `port = 8080`, found {}", kind(table)));
    };
    if let Some(unknown) = map.keys().find(|k| !SERVICE_KEYS.contains(&k.as_str())) {
        return Err(format!("{at}: unknown key `{unknown}` (known keys: {})", SERVICE_KEYS.join(", ")));
    }
    if !has_binary {
        return Err(format!("{at}: a service must have a binary target (src/main.rs)"));
    }
    let port = match map.get("port") {
        None => {
            return Err(format!("{at}: missing `port` (the HTTP port inside the container, e.g. `port = 8080`)"));
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(p @ 1..=65535) => p as u16,
            _ => {
                return Err(format!("{at}: `port` must be between 1 and 65535, found {n}"));
            }
        },
        Some(other) => {
            return Err(format!("{at}: `port` must be an integer, found {}", kind(other)));
        }
    };
    let path = |key: &str, default: &str| -> Result<String, String> {
        match map.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) if s.starts_with('/') && !s.contains(char::is_whitespace) => Ok(s.clone()),
            Some(Value::String(s)) => {
                Err(format!("{at}: `{key}` must be an absolute URL path like \"{default}\", found \"{s}\""))
            }
            Some(other) => Err(format!("{at}: `{key}` must be a string like \"{default}\", found {}", kind(other))),
        }
    };
    let health = path("health", "/healthz")?;
    let ready = path("ready", "/readyz")?;
    let needs = match map.get("needs") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut needs = Vec::new();
            for item in items {
                let Value::String(name) = item else {
                    return Err(format!("{at}: `needs` must list names as strings, found {}", kind(item)));
                };
                if !KNOWN_DEPENDENCIES.contains(&name.as_str()) && !members.contains(name) {
                    return Err(format!(
                        "{at}: `needs` names unknown dependency \"{name}\" (known: {}, or another workspace service)",
                        KNOWN_DEPENDENCIES.join(", ")
                    ));
                }
                if needs.contains(name) {
                    return Err(format!("{at}: `needs` lists \"{name}\" twice"));
                }
                needs.push(name.clone());
            }
            needs
        }
        Some(other) => {
            return Err(format!("{at}: `needs` must be an array like [\"postgres\"], found {}", kind(other)));
        }
    };
    Ok(ServiceMeta { port, health, ready, needs })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn test_metadata_names_workspace_binaries() {
        let members: BTreeSet<String> = ["api".to_string()].into();
        let at = Path::new("services/worker/Cargo.toml");
        assert_eq!(parse_test_meta(&json!({"starts": ["api"]}), at, &members), Ok(vec!["api".to_string()]));
        assert!(
            parse_test_meta(&json!({"starts": ["nope"]}), at, &members)
                .expect_err("unknown")
                .contains("not a workspace member")
        );
        assert!(
            parse_test_meta(&json!({"start": ["api"]}), at, &members)
                .expect_err("typo")
                .contains("unknown key `start`")
        );
    }

    fn parse(v: Value) -> Result<ServiceMeta, String> {
        let members: BTreeSet<String> = ["api".to_string(), "worker".to_string()].into();
        parse_service_meta(&v, Path::new("services/api/Cargo.toml"), true, &members)
    }

    #[test]
    fn a_full_table_parses() {
        let meta = parse(
            json!({"port": 8080, "health": "/healthz", "ready": "/readyz", "needs": ["postgres", "redis", "worker"]}),
        );
        assert_eq!(
            meta,
            Ok(ServiceMeta {
                port: 8080,
                health: "/healthz".into(),
                ready: "/readyz".into(),
                needs: vec!["postgres".into(), "redis".into(), "worker".into()],
            })
        );
    }

    #[test]
    fn health_and_ready_default_to_conventional_paths() {
        let meta = parse(json!({"port": 80})).expect("valid");
        assert_eq!((meta.health.as_str(), meta.ready.as_str()), ("/healthz", "/readyz"));
        assert!(meta.needs.is_empty());
    }

    #[test]
    fn each_invalid_case_gets_a_specific_one_line_error() {
        let cases = [
            (json!("8080"), "must be a table"),
            (json!({"health": "/h"}), "missing `port`"),
            (json!({"port": "8080"}), "`port` must be an integer, found a string"),
            (json!({"port": 0}), "between 1 and 65535, found 0"),
            (json!({"port": 70000}), "between 1 and 65535, found 70000"),
            (json!({"port": -1}), "between 1 and 65535"),
            (json!({"port": 80, "prot": 1}), "unknown key `prot`"),
            (json!({"port": 80, "health": "healthz"}), "`health` must be an absolute URL path"),
            (json!({"port": 80, "ready": 5}), "`ready` must be a string"),
            (json!({"port": 80, "needs": "postgres"}), "`needs` must be an array"),
            (json!({"port": 80, "needs": [1]}), "must list names as strings"),
            (json!({"port": 80, "needs": ["mysql"]}), "unknown dependency \"mysql\""),
            (json!({"port": 80, "needs": ["redis", "redis"]}), "lists \"redis\" twice"),
        ];
        for (input, expected) in cases {
            let err = parse(input.clone()).expect_err(&format!("{input} should be rejected"));
            assert!(err.contains(expected), "{input}: got {err:?}, wanted it to mention {expected:?}");
            assert!(err.contains("services/api/Cargo.toml"), "{err} should name the file");
            assert!(!err.contains('\n'), "{err} should be one line");
        }
    }

    #[test]
    fn a_library_cannot_be_a_service() {
        let err = parse_service_meta(&json!({"port": 80}), Path::new("crates/kit/Cargo.toml"), false, &BTreeSet::new());
        assert!(err.expect_err("libraries are rejected").contains("binary target"));
    }
}
