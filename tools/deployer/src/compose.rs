//! The compose model: one service as `docker-compose config` prints it (1.29 short syntax or v2
//! long syntax), its ports and volumes, and the environment's selection of the compose files
//! rendered by compose itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use xtask_kit::UsageError;
use xtask_kit::handoff::COMPOSE_DIR;
use xtask_kit::process::Cmd;

use crate::env::DockerEnv;

/// A string or a list, as compose allows for `command`, `tmpfs`, healthcheck `test`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ComposeHealth {
    pub test: Option<OneOrMany>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub start_period: Option<String>,
    #[serde(default)]
    pub disable: bool,
}

/// One service as `docker-compose config` prints it (1.29 short syntax or v2 long syntax). Keys
/// this deploy cannot honour are refused by name rather than silently dropped.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ComposeService {
    pub image: Option<String>,
    pub build: Option<serde_yaml::Value>,
    pub command: Option<OneOrMany>,
    #[serde(default)]
    pub environment: BTreeMap<String, serde_yaml::Value>,
    pub healthcheck: Option<ComposeHealth>,
    pub user: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub security_opt: Vec<String>,
    pub tmpfs: Option<OneOrMany>,
    pub mem_limit: Option<serde_yaml::Value>,
    pub cpus: Option<serde_yaml::Value>,
    #[serde(default)]
    pub ports: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub volumes: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub depends_on: BTreeMap<String, serde_yaml::Value>,
    pub restart: Option<String>,
    pub stop_grace_period: Option<String>,
    // Profiles chose the services already; every service joins the project's networks.
    #[serde(default, rename = "profiles")]
    pub _profiles: serde::de::IgnoredAny,
    #[serde(default, rename = "networks")]
    pub _networks: serde::de::IgnoredAny,
    #[serde(default)]
    pub entrypoint: Option<serde_yaml::Value>,
}

#[derive(Deserialize, Debug)]
pub struct ComposeConfig {
    pub services: BTreeMap<String, serde_yaml::Value>,
}

/// A published port: host address, host port, container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
}

pub fn parse_port(value: &serde_yaml::Value, service: &str) -> Result<Port> {
    let bad = || UsageError(format!("service {service}: cannot deploy port {value:?}; use 127.0.0.1:HOST:CONTAINER"));
    match value {
        serde_yaml::Value::String(s) => {
            let s = s.strip_suffix("/tcp").unwrap_or(s);
            let parts: Vec<&str> = s.rsplitn(3, ':').collect();
            match parts.as_slice() {
                [container, host, ip] => Ok(Port {
                    host_ip: ip.trim_matches(['[', ']']).to_string(),
                    host_port: host.parse().map_err(|_| bad())?,
                    container_port: container.parse().map_err(|_| bad())?,
                }),
                [container, host] => Ok(Port {
                    host_ip: String::new(),
                    host_port: host.parse().map_err(|_| bad())?,
                    container_port: container.parse().map_err(|_| bad())?,
                }),
                _ => Err(bad().into()),
            }
        }
        serde_yaml::Value::Mapping(m) => {
            let get = |k: &str| m.get(serde_yaml::Value::from(k));
            let num = |v: Option<&serde_yaml::Value>| -> Option<u16> {
                match v? {
                    serde_yaml::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                    serde_yaml::Value::String(s) => s.parse().ok(),
                    _ => None,
                }
            };
            Ok(Port {
                host_ip: get("host_ip").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
                host_port: num(get("published")).ok_or_else(bad)?,
                container_port: num(get("target")).ok_or_else(bad)?,
            })
        }
        _ => Err(bad().into()),
    }
}

/// `pgdata:/var/lib/x:rw` (named volume, made project-local as compose does) or a bind mount.
pub fn volume_arg(value: &serde_yaml::Value, project: &str, service: &str) -> Result<String> {
    let (source, target, read_only) = match value {
        serde_yaml::Value::String(s) => {
            let mut parts = s.splitn(3, ':');
            let source = parts.next().unwrap_or_default().to_string();
            let target = parts.next().map(str::to_string);
            let mode = parts.next().unwrap_or("rw");
            match target {
                Some(t) => (source, t, mode.split(',').any(|m| m == "ro")),
                None => {
                    return Err(UsageError(format!(
                        "service {service}: anonymous volume {s:?} is not supported by deploy; name it"
                    ))
                    .into());
                }
            }
        }
        serde_yaml::Value::Mapping(m) => {
            let get = |k: &str| m.get(serde_yaml::Value::from(k)).and_then(|v| v.as_str()).map(str::to_string);
            let ro = m.get(serde_yaml::Value::from("read_only")).and_then(|v| v.as_bool()).unwrap_or(false);
            match (get("source"), get("target")) {
                (Some(s), Some(t)) => (s, t, ro),
                _ => {
                    return Err(
                        UsageError(format!("service {service}: volume {value:?} needs a source and a target")).into()
                    );
                }
            }
        }
        _ => return Err(UsageError(format!("service {service}: cannot read volume {value:?}")).into()),
    };
    let source =
        if source.starts_with('/') || source.starts_with('.') { source } else { format!("{project}_{source}") };
    Ok(format!("{source}:{target}{}", if read_only { ":ro" } else { "" }))
}

/// Compose writes `$` as `$$` in what it prints; Docker wants the single one.
pub fn unescape(s: &str) -> String {
    s.replace("$$", "$")
}

pub fn scalar(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) => unescape(s),
        serde_yaml::Value::Null => String::new(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// The selected services of the compose files, rendered by compose itself with the
/// environment's variables. Services left out are removed from copies of the files first, so a
/// variable only they require (Grafana's password) is not demanded.
pub fn compose_config(
    program: &[String],
    root: &Path,
    env: &DockerEnv,
    dir: &Path,
) -> Result<(ComposeConfig, Vec<PathBuf>)> {
    let mut copies = Vec::new();
    let mut defined = BTreeSet::new();
    // (service, what it depends on) of the services kept, over every file.
    let mut needs: Vec<(String, String)> = Vec::new();
    for (i, file) in env.compose_files.iter().enumerate() {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut doc: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", file.display()))?;
        // Written back as JSON (which is YAML): no YAML 1.1 reader mistakes a `yes` for a bool.
        doc.apply_merge().with_context(|| format!("{}: a `<<` merge that cannot be applied", file.display()))?;
        if let Some(services) = doc.get_mut("services").and_then(|s| s.as_mapping_mut()) {
            services.retain(|name, svc| {
                let name = name.as_str().unwrap_or_default().to_string();
                let keep = match &env.services {
                    Some(list) => list.contains(&name),
                    None => svc.get("profiles").is_none(),
                };
                if keep {
                    needs.extend(depends_on_names(svc).into_iter().map(|d| (name.clone(), d)));
                }
                defined.insert(name);
                keep
            });
        }
        let copy = dir.join(format!("compose-{i}.json"));
        std::fs::write(&copy, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", copy.display()))?;
        copies.push(copy);
    }
    for name in env.services.iter().flatten() {
        if !defined.contains(name) {
            return Err(UsageError(format!(
                "DEPLOY_SERVICES in {} names `{name}`, which the compose files do not define",
                env.file.display()
            ))
            .into());
        }
    }
    // Compose would refuse this too, but without naming the setting that left the service out.
    if let Some(list) = &env.services
        && let Some((name, d)) = needs.iter().find(|(_, d)| !list.contains(d))
    {
        return Err(UsageError(format!(
            "{name} depends on {d}, which DEPLOY_SERVICES in {} leaves out",
            env.file.display()
        ))
        .into());
    }
    let out = compose_command(program, root, env, &copies, &["config"])?.output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(UsageError(format!(
            "compose cannot render environment {} ({}): {}",
            env.name,
            env.file.display(),
            err.trim().lines().last().unwrap_or("no message")
        ))
        .into());
    }
    let config = serde_yaml::from_slice(&out.stdout).context("compose printed a config that is not YAML")?;
    Ok((config, copies))
}

/// The services a compose service's `depends_on` names, in its list or its map form.
pub fn depends_on_names(service: &serde_yaml::Value) -> Vec<String> {
    match service.get("depends_on") {
        Some(serde_yaml::Value::Sequence(list)) => list.iter().filter_map(|d| d.as_str().map(str::to_string)).collect(),
        Some(serde_yaml::Value::Mapping(map)) => map.keys().filter_map(|d| d.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// Compose on the environment's copies of the files, with its variables.
pub fn compose_command(
    program: &[String],
    root: &Path,
    env: &DockerEnv,
    copies: &[PathBuf],
    sub: &[&str],
) -> Result<Cmd> {
    let (first, rest) = program.split_first().context("no compose program")?;
    let mut cmd = Cmd::new(first).args(rest).args(["--project-name", &env.project]);
    cmd = cmd.arg("--project-directory").arg(root.join(COMPOSE_DIR));
    for f in copies {
        cmd = cmd.arg("--file").arg(f);
    }
    // The environment's file, not the developer's infra/compose/.env; the process wins over it.
    cmd = cmd.arg("--env-file").arg(&env.file);
    // Our images come from the build manifest; the tag only has to satisfy the file's `:?`.
    Ok(cmd.args(sub).envs(&env.vars).env("IMAGE_TAG", "from-build-manifest").current_dir(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_in_both_compose_syntaxes() {
        let short: serde_yaml::Value = serde_yaml::from_str("\"127.0.0.1:18080:8080/tcp\"").expect("test input");
        let long: serde_yaml::Value =
            serde_yaml::from_str("{target: 8080, published: \"18080\", host_ip: 127.0.0.1, protocol: tcp}")
                .expect("test input");
        let want = Port { host_ip: "127.0.0.1".into(), host_port: 18080, container_port: 8080 };
        assert_eq!(parse_port(&short, "gateway").expect("test input"), want);
        assert_eq!(parse_port(&long, "gateway").expect("test input"), want);
        let bad: serde_yaml::Value = serde_yaml::from_str("\"8080-8090:80\"").expect("test input");
        assert!(parse_port(&bad, "gateway").expect_err("refused").to_string().contains("127.0.0.1:HOST:CONTAINER"));
    }

    #[test]
    fn volumes_are_project_local_and_binds_kept() {
        let named: serde_yaml::Value = serde_yaml::from_str("pgdata:/var/lib/postgresql/data:rw").expect("test input");
        assert_eq!(
            volume_arg(&named, "xtask-staging", "postgres").expect("test input"),
            "xtask-staging_pgdata:/var/lib/postgresql/data"
        );
        let bind: serde_yaml::Value = serde_yaml::from_str("/etc/p.yml:/etc/prometheus/p.yml:ro").expect("test input");
        assert_eq!(volume_arg(&bind, "p", "prometheus").expect("test input"), "/etc/p.yml:/etc/prometheus/p.yml:ro");
    }

    #[test]
    fn compose_dollars_are_unescaped() {
        assert_eq!(unescape("pg_isready -U \"$$POSTGRES_USER\""), "pg_isready -U \"$POSTGRES_USER\"");
    }
}
