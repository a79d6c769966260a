//! Misconfiguration checks for compose files, which trivy has no scanner for: the container
//! settings that give a container the host (privileged, host namespaces, the Docker socket,
//! dangerous capabilities, unconfined profiles, root) and the ones that expose it (ports on
//! every interface, floating image tags). `check` is pure (file text in, findings out); `run`
//! is `deployer compose-check`, which `cargo xtask scan` runs over the git-tracked compose files.

use std::path::Path;

use anyhow::{Context, Result};
use serde_yaml::Value;
use xtask_kit::findings::{Finding, Kind, Severity};
use xtask_kit::process::Cmd;

/// Every git-tracked compose file under `repo`'s infra/compose (any `*.yml` / `*.yaml`),
/// checked; the findings go to `out` as JSON (scan's findings model).
pub fn run(repo: &Path, out: &Path) -> Result<std::process::ExitCode> {
    // A failed check must not leave the last run's findings for the report to read.
    match std::fs::remove_file(out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the previous {}", out.display()));
        }
        _ => {}
    }
    let listed = Cmd::new("git").args(["ls-files", "-z", "--", "infra/compose"]).current_dir(repo).read()?;
    let files: Vec<&str> = listed.split('\0').filter(|f| f.ends_with(".yml") || f.ends_with(".yaml")).collect();
    let mut findings = Vec::new();
    for rel in &files {
        let text = std::fs::read_to_string(repo.join(rel)).with_context(|| format!("reading {rel}"))?;
        findings.extend(check(rel, &text).map_err(anyhow::Error::msg)?);
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(&findings)?).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("{} compose file(s) checked, {} finding(s)", files.len(), findings.len());
    Ok(std::process::ExitCode::SUCCESS)
}

/// Rule ids, severities and titles, in one place for the table, SARIF and the ignore file.
pub const RULES: [(&str, Severity, &str); 9] = [
    ("XC-0001", Severity::High, "Privileged container"),
    ("XC-0002", Severity::High, "Container shares a host namespace"),
    ("XC-0003", Severity::Critical, "Docker socket mounted into a container"),
    ("XC-0004", Severity::High, "Dangerous capability added"),
    ("XC-0005", Severity::High, "Security profile disabled"),
    ("XC-0006", Severity::High, "Container runs as root"),
    ("XC-0007", Severity::High, "Sensitive host path mounted"),
    ("XC-0008", Severity::Medium, "Port published on every interface"),
    ("XC-0009", Severity::Medium, "Image without a pinned tag"),
];

const DANGEROUS_CAPS: [&str; 7] =
    ["ALL", "SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_MODULE", "DAC_READ_SEARCH", "BPF"];
const SENSITIVE_HOST_PATHS: [&str; 7] = ["/", "/etc", "/proc", "/sys", "/root", "/boot", "/var/run"];

/// Every finding in one compose file; `target` is its repository-relative path. A file that is
/// not YAML is an error (it would not start either); one without `services` has no findings.
pub fn check(target: &str, text: &str) -> Result<Vec<Finding>, String> {
    let mut doc: Value = serde_yaml::from_str(text).map_err(|e| format!("{target}: not YAML: {e}"))?;
    doc.apply_merge().map_err(|e| format!("{target}: bad merge key: {e}"))?;
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else { return Ok(Vec::new()) };
    let mut findings = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        let mut found = |id: &str, key: &str, detail: String| {
            let (_, severity, title) = RULES.iter().find(|r| r.0 == id).copied().expect("known rule");
            findings.push(Finding {
                source: "compose".into(),
                kind: Kind::Misconfiguration,
                id: id.into(),
                severity,
                title: title.into(),
                target: target.into(),
                line: line_of(text, name, key),
                detail: format!("service {name}: {detail}"),
                fingerprint: None,
            });
        };
        let text_of = |key: &str| service.get(key).and_then(scalar);
        if service.get("privileged").and_then(Value::as_bool) == Some(true) {
            found("XC-0001", "privileged", "privileged: true gives it every device and capability of the host".into());
        }
        for key in ["network_mode", "pid", "ipc", "uts", "userns_mode"] {
            if text_of(key).as_deref() == Some("host") {
                found("XC-0002", key, format!("{key}: host"));
            }
        }
        for volume in list(service.get("volumes")) {
            let Some(source) = volume_source(volume) else { continue };
            if source.ends_with("docker.sock") {
                found(
                    "XC-0003",
                    "volumes",
                    format!("mounts {source}: control of the Docker engine is root on the host"),
                );
            } else if SENSITIVE_HOST_PATHS.contains(&if source == "/" { "/" } else { source.trim_end_matches('/') }) {
                found("XC-0007", "volumes", format!("mounts the host's {source}"));
            }
        }
        for cap in list(service.get("cap_add")).filter_map(scalar) {
            let bare = cap.trim_start_matches("CAP_").to_ascii_uppercase();
            if DANGEROUS_CAPS.contains(&bare.as_str()) {
                found("XC-0004", "cap_add", format!("cap_add: {cap}"));
            }
        }
        for opt in list(service.get("security_opt")).filter_map(scalar) {
            let opt = opt.replace('=', ":");
            if ["seccomp:unconfined", "apparmor:unconfined", "label:disable", "no-new-privileges:false"]
                .contains(&opt.as_str())
            {
                found("XC-0005", "security_opt", format!("security_opt: {opt}"));
            }
        }
        if let Some(user) = text_of("user") {
            let who = user.split(':').next().unwrap_or_default();
            if who == "root" || who == "0" {
                found("XC-0006", "user", format!("user: {user}"));
            }
        }
        for port in list(service.get("ports")) {
            if let Some(published) = published_everywhere(port) {
                found(
                    "XC-0008",
                    "ports",
                    format!(
                        "{published} is reachable from every network the host is on; bind 127.0.0.1 or a chosen address"
                    ),
                );
            }
        }
        if let Some(image) = text_of("image").as_deref().and_then(with_defaults)
            && floating(&image)
        {
            found("XC-0009", "image", format!("image {image}: the tag can move under you; pin a version or a digest"));
        }
    }
    Ok(findings)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn list(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_sequence).into_iter().flatten()
}

/// A bind mount's host path (short `SRC:DST[:MODE]` or long `{type: bind, source}`); named
/// volumes have none.
fn volume_source(v: &Value) -> Option<String> {
    let source = match v {
        Value::String(s) => s.split(':').next()?.to_string(),
        Value::Mapping(_) => v.get("source").and_then(scalar)?,
        _ => return None,
    };
    let source = with_defaults(&source)?;
    source.starts_with('/').then_some(source)
}

/// A published port with no host address (or 0.0.0.0 / ::), as written.
fn published_everywhere(v: &Value) -> Option<String> {
    match v {
        Value::Mapping(_) => {
            let published = scalar(v.get("published")?)?;
            let host_ip = v.get("host_ip").and_then(scalar).unwrap_or_default();
            matches!(host_ip.as_str(), "" | "0.0.0.0" | "::").then(|| format!("port {published}"))
        }
        _ => {
            let spec = scalar(v)?;
            let spec = with_defaults(&spec)?;
            let without_proto = spec.split('/').next().unwrap_or_default();
            // HOST_IP:HOST:CONTAINER, [v6]:HOST:CONTAINER, HOST:CONTAINER or CONTAINER.
            let parts: Vec<&str> = match without_proto.rsplit_once("]:") {
                Some((ip, rest)) => std::iter::once(ip.trim_start_matches('[')).chain(rest.split(':')).collect(),
                None => without_proto.split(':').collect(),
            };
            match parts.as_slice() {
                [_container] => None, // not published to the host
                [_host, _container] => Some(format!("port {spec}")),
                [ip, _, _] if matches!(*ip, "0.0.0.0" | "::" | "") => Some(format!("port {spec}")),
                _ => None,
            }
        }
    }
}

/// The text with `${VAR:-default}` / `${VAR-default}` replaced by the default; `None` when a
/// variable has no default (its value is unknown here, so nothing is claimed about it).
fn with_defaults(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        let inner = &rest[start + 2..end];
        if inner.contains('?') {
            return None; // `${VAR:?message}`: required, no default
        }
        let default = inner.split_once(":-").or_else(|| inner.split_once('-')).map(|(_, d)| d)?;
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// `:latest`, or no tag and no digest.
fn floating(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// The line of `key` inside service `service` (1-based), for SARIF and the table: the first
/// line after `  service:` that starts with the key. Merged keys (from an anchor) point at the
/// service itself.
fn line_of(text: &str, service: &str, key: &str) -> Option<u64> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| {
        let t = l.trim_start();
        l.len() - t.len() == 2 && (t == format!("{service}:") || t.starts_with(&format!("{service}: ")))
    })?;
    let within = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.starts_with("    ") || l.trim_start().starts_with('#'))
        .position(|l| l.trim_start().starts_with(&format!("{key}:")));
    Some((start + 1 + within.map_or(0, |i| i + 1)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str) -> Vec<String> {
        let mut ids: Vec<String> = check("compose.yml", text).expect("yaml").into_iter().map(|f| f.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_hardened_service_has_no_findings() {
        let text = "x-app: &app\n  user: \"65532:65532\"\n  cap_drop: [ALL]\nservices:\n  api:\n    <<: *app\n    image: api:${IMAGE_TAG:?set it}\n    ports: [\"127.0.0.1:${API_PORT:-8081}:8081\", \"9000\"]\n    volumes: [\"data:/data\", \"./prometheus.yml:/etc/prometheus/prometheus.yml:ro\"]\n    security_opt: [\"no-new-privileges:true\"]\n";
        assert_eq!(ids(text), Vec::<String>::new());
    }

    #[test]
    fn each_way_to_hand_a_container_the_host_is_found() {
        let text = r#"
x-root: &root
  user: root
services:
  bad:
    <<: *root
    image: nginx
    privileged: true
    network_mode: host
    pid: host
    cap_add: [NET_ADMIN, CHOWN]
    security_opt: ["seccomp=unconfined"]
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
      - type: bind
        source: /etc
        target: /host-etc
    ports: ["8080:80", "0.0.0.0:9090:9090", {published: 7000, target: 7000}]
  pinned:
    image: "${IMG:-postgres:latest}"
    user: "0:0"
"#;
        assert_eq!(
            ids(text),
            [
                "XC-0001", "XC-0002", "XC-0002", "XC-0003", "XC-0004", "XC-0005", "XC-0006", "XC-0006", "XC-0007",
                "XC-0008", "XC-0008", "XC-0008", "XC-0009", "XC-0009"
            ]
        );
        let found = check("infra/compose/x.yml", text).expect("yaml");
        let privileged = found.iter().find(|f| f.id == "XC-0001").expect("privileged");
        assert_eq!((privileged.target.as_str(), privileged.line), ("infra/compose/x.yml", Some(8)));
        assert!(privileged.detail.starts_with("service bad:"), "{}", privileged.detail);
    }

    #[test]
    fn variables_without_defaults_claim_nothing_and_bad_yaml_is_an_error() {
        assert_eq!(ids("services:\n  a:\n    image: ${IMAGE}\n    ports: [\"${BIND}:80:80\"]\n"), Vec::<String>::new());
        assert_eq!(with_defaults("${A:-x}:${B-y}").as_deref(), Some("x:y"));
        assert!(check("c.yml", "services: [unclosed").is_err());
        assert_eq!(ids("version: '3'\n"), Vec::<String>::new(), "no services, nothing to check");
    }
}
