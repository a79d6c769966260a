//! Docker's own description of a container (`docker inspect`), typed: the one container state
//! the dev stack (xtask) and the deployer read. Docker leaves fields out (`Health` without a
//! health check, `Labels` and port bindings as `null`), so every field defaults.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::process::Cmd;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Container {
    /// With Docker's leading `/`; see [`Container::name`].
    pub name: String,
    /// The ID of the image it runs.
    pub image: String,
    pub state: State,
    pub config: Config,
    pub network_settings: NetworkSettings,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct State {
    /// created, running, exited, ...
    pub status: String,
    pub started_at: String,
    pub health: Option<Health>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Health {
    /// starting, healthy, unhealthy.
    pub status: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Config {
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct NetworkSettings {
    /// `"8081/tcp"` -> the host addresses it is published on (`null` when it is not).
    pub ports: Option<BTreeMap<String, Option<Vec<Binding>>>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Binding {
    #[serde(rename = "HostIp")]
    pub host_ip: String,
    #[serde(rename = "HostPort")]
    pub host_port: String,
}

impl Container {
    pub fn name(&self) -> &str {
        self.name.trim_start_matches('/')
    }

    /// A label's value; empty when it has none.
    pub fn label(&self, key: &str) -> &str {
        self.config.labels.as_ref().and_then(|l| l.get(key)).map_or("", String::as_str)
    }

    /// The health check's verdict; `None` without a health check.
    pub fn health(&self) -> Option<&str> {
        self.state.health.as_ref().map(|h| h.status.as_str())
    }

    /// Published ports as `docker ps` shows them: `127.0.0.1:8081->8081/tcp, ...`.
    pub fn published(&self) -> String {
        let mut out = Vec::new();
        for (port, bindings) in self.network_settings.ports.iter().flatten() {
            for b in bindings.iter().flatten() {
                out.push(format!("{}:{}->{port}", b.host_ip, b.host_port));
            }
        }
        out.join(", ")
    }
}

/// Every container with the label `KEY=VALUE`, running or not, oldest first. A container
/// removed between the listing and the inspection is left out rather than failing the call.
pub fn with_label(label: &str) -> Result<Vec<Container>> {
    let filter = format!("label={label}");
    let ids = Cmd::new("docker").args(["ps", "--all", "--quiet", "--no-trunc", "--filter", &filter]).read()?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // `docker inspect` exits 1 when one of the IDs is gone, still describing the others.
    let out = Cmd::new("docker").arg("inspect").args(&ids).ok_codes(&[0, 1]).checked_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut list: Vec<Container> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&text).context("`docker inspect` printed JSON that cannot be read")?
    };
    list.sort_by(|a, b| a.state.started_at.cmp(&b.state.started_at));
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_read_from_docker_inspect_with_what_docker_leaves_out() {
        let list: Vec<Container> = serde_json::from_value(serde_json::json!([
            {"Name": "/xtask-dev_api_1", "Image": "sha256:1",
             "State": {"Status": "running", "StartedAt": "2026-12-03T10:00:00Z", "Health": {"Status": "healthy"}},
             "Config": {"Labels": {"com.docker.compose.service": "api"}},
             "NetworkSettings": {"Ports": {"8081/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}], "9000/tcp": null}}},
            {"Name": "/xtask-dev_redis_1", "State": {"Status": "exited"}, "Config": {"Labels": null},
             "NetworkSettings": {"Ports": null}},
        ]))
        .expect("docker's shape");
        assert_eq!((list[0].name(), list[0].label("com.docker.compose.service")), ("xtask-dev_api_1", "api"));
        assert_eq!(list[0].health(), Some("healthy"));
        assert_eq!(list[0].published(), "127.0.0.1:8081->8081/tcp");
        assert_eq!((list[1].state.status.as_str(), list[1].health(), list[1].label("x")), ("exited", None, ""));
        assert_eq!(list[1].published(), "");
    }
}
