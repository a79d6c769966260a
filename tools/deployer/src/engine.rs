//! The Docker engine as the Docker target uses it: the containers of a project (from `docker
//! inspect`, into serde types), networks, starting a spec, waiting for health, retiring.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use xtask_kit::docker::Container;
use xtask_kit::process::Cmd;

use crate::spec::{DEFAULT_STOP_GRACE, RunSpec};

/// Health checks are polled this often.
pub const POLL: Duration = Duration::from_millis(250);

/// Docker, with every changing command printed before it runs; `quiet` for polling.
pub struct Docker;

impl Docker {
    pub fn quiet(&self, args: &[&str]) -> Result<Output> {
        Cmd::new("docker").args(args).output()
    }

    pub fn checked(&self, args: &[&str]) -> Result<String> {
        eprintln!("$ docker {}", args.join(" "));
        self.checked_quiet(args)
    }

    pub fn checked_quiet(&self, args: &[&str]) -> Result<String> {
        Ok(Cmd::new("docker").args(args).read()?.trim().to_string())
    }

    pub fn image_exists(&self, image: &str) -> bool {
        self.quiet(&["image", "inspect", "--format", "{{.Id}}", image]).is_ok_and(|o| o.status.success())
    }

    /// The image's own health check test (`["CMD", ...]`), if it has one.
    pub fn image_health_test(&self, image: &str) -> Result<Option<Vec<String>>> {
        if !self.image_exists(image) {
            return Ok(None);
        }
        let out = self.checked_quiet(&["image", "inspect", "--format", "{{json .Config.Healthcheck}}", image])?;
        // `null` when the image has none.
        let check: Option<Healthcheck> = serde_json::from_str(&out)
            .with_context(|| format!("`docker image inspect {image}` printed a health check that is not JSON"))?;
        Ok(check.map(|c| c.test).filter(|t| !t.is_empty()))
    }
}

/// A container of this project as `docker inspect` describes it.
#[derive(Clone, Debug)]
pub struct Running {
    pub name: String,
    pub service: String,
    pub role: String,
    pub status: String,
    pub health: Option<String>,
    /// Docker's ID of the image it runs.
    pub image_id: String,
    pub started: String,
    pub spec: Option<RunSpec>,
    pub previous: Option<RunSpec>,
    pub spec_hash: String,
    /// The commit its deploy recorded.
    pub revision: String,
}

pub fn containers(project: &str) -> Result<Vec<Running>> {
    let list = xtask_kit::docker::with_label(&format!("xtask.project={project}"))?;
    Ok(list.into_iter().map(Running::from).collect())
}

/// `docker image inspect --format '{{json .Config.Healthcheck}}'`.
#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "PascalCase")]
struct Healthcheck {
    test: Vec<String>,
}

impl From<Container> for Running {
    fn from(c: Container) -> Running {
        let spec_of = |k: &str| serde_json::from_str::<RunSpec>(c.label(k)).ok();
        Running {
            name: c.name().to_string(),
            service: c.label("xtask.service").to_string(),
            role: c.label("xtask.role").to_string(),
            status: c.state.status.clone(),
            health: c.health().map(str::to_string),
            image_id: c.image.clone(),
            started: c.state.started_at.clone(),
            spec: spec_of("xtask.spec"),
            previous: spec_of("xtask.previous-spec"),
            spec_hash: c.label("xtask.spec-hash").to_string(),
            revision: c.label("xtask.revision").to_string(),
        }
    }
}

pub fn ensure_network(docker: &Docker, name: &str, project: &str) -> Result<()> {
    if docker.quiet(&["network", "inspect", name]).is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    docker.checked(&["network", "create", "--label", &format!("xtask.project={project}"), name])?;
    Ok(())
}

pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

pub fn short(image: &str) -> &str {
    match image.split_once("sha256:") {
        Some((_, hex)) => &hex[..hex.len().min(12)],
        None => image,
    }
}

/// Waits until the container is healthy (or running, without a health check). A container that
/// turns unhealthy, exits or restarts fails at once, with its last check output and logs.
pub fn wait_healthy(docker: &Docker, name: &str, healthcheck: bool, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut last_said = Instant::now();
    loop {
        let out = docker.checked_quiet(&["inspect", "--format", "{{json .State}}", name])?;
        let state: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let status = state["Status"].as_str().unwrap_or("unknown");
        let health = state["Health"]["Status"].as_str();
        let last_check = state["Health"]["Log"]
            .as_array()
            .and_then(|l| l.last())
            .and_then(|l| l["Output"].as_str())
            .map(|o| o.trim().to_string())
            .unwrap_or_default();
        let failed = match (status, health) {
            ("running", Some("healthy")) => return Ok(started.elapsed()),
            ("running", None) if !healthcheck => return Ok(started.elapsed()),
            ("running", Some("unhealthy")) => Some(format!("its health check failed: {last_check}")),
            ("exited" | "dead", _) => Some(format!("it exited with code {}", state["ExitCode"])),
            ("restarting", _) => Some(format!("it keeps restarting (last exit code {})", state["ExitCode"])),
            _ if started.elapsed() > timeout => Some(format!(
                "it was not healthy after {}s (last check: {})",
                timeout.as_secs(),
                if last_check.is_empty() { "none yet" } else { &last_check }
            )),
            _ => None,
        };
        if let Some(reason) = failed {
            let logs = docker.quiet(&["logs", "--tail", "15", name]).map(|o| {
                let mut all = String::from_utf8_lossy(&o.stdout).into_owned();
                all.push_str(&String::from_utf8_lossy(&o.stderr));
                all
            });
            let logs = logs.unwrap_or_default();
            if !logs.trim().is_empty() {
                eprintln!("--- last log lines of {name} ---\n{}\n---", logs.trim_end());
            }
            bail!("{name}: {reason}");
        }
        if last_said.elapsed() > Duration::from_secs(10) {
            eprintln!("  {name}: {} ({}s)", health.unwrap_or(status), started.elapsed().as_secs());
            last_said = Instant::now();
        }
        std::thread::sleep(POLL);
    }
}

/// SIGTERM, the drain, then removal.
pub fn retire(docker: &Docker, container: &Running) -> Result<()> {
    let grace = container.spec.as_ref().map_or(DEFAULT_STOP_GRACE, |s| s.stop_grace).to_string();
    docker.checked(&["stop", "--time", &grace, &container.name])?;
    docker.checked(&["rm", &container.name])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_read_from_docker_inspect() {
        let spec = r#"{"version":1,"service":"api","image":"sha256:1","image_name":"api:v1","env":{},"options":[],"command":[],"healthcheck":true,"stop_grace":10}"#;
        let inspected: Vec<Container> = serde_json::from_value(serde_json::json!([
            {"Name": "/p-api-1", "Image": "sha256:1", "State": {"Status": "running", "StartedAt": "2026-12-03T10:00:00Z",
              "Health": {"Status": "healthy"}},
             "Config": {"Labels": {"xtask.service": "api", "xtask.role": "app", "xtask.spec": spec, "xtask.spec-hash": "ab"}}},
            {"Name": "/p-redis", "Image": "sha256:2", "State": {"Status": "exited"}, "Config": {"Labels": null}},
        ]))
        .expect("docker's shape");
        let running: Vec<Running> = inspected.into_iter().map(Running::from).collect();
        assert_eq!((running[0].name.as_str(), running[0].service.as_str()), ("p-api-1", "api"));
        assert_eq!(running[0].health.as_deref(), Some("healthy"));
        assert_eq!(running[0].spec.as_ref().map(|s| s.stop_grace), Some(10));
        assert!(running[0].previous.is_none());
        assert_eq!((running[1].status.as_str(), running[1].health.as_deref()), ("exited", None));
        assert!(running[1].service.is_empty() && running[1].spec.is_none(), "no labels");
        let none: Option<Healthcheck> = serde_json::from_str("null").expect("no health check");
        assert!(none.is_none());
        let check: Option<Healthcheck> =
            serde_json::from_str(r#"{"Test":["CMD","/bin/api","healthcheck"],"Interval":5000000000}"#).expect("one");
        assert_eq!(check.expect("one").test, ["CMD", "/bin/api", "healthcheck"]);
    }
}
