//! `cargo xtask deploy --target docker --env ENV`: a health-gated rolling replace of the
//! environment's compose project on a Docker host (`DOCKER_HOST` may be remote), with the same
//! rollback promise as the Kubernetes target; `deploy rollback|status --target docker` go with it.
//!
//! How traffic moves, so a replace drops nothing:
//! - Dependencies (Postgres, Redis, ...) are created once on the project network with their
//!   service name as alias, and never replaced behind anybody's back (one volume, one server).
//!   They join the serving network too, where our services answer (Prometheus scrapes them).
//! - Each of our services runs as `<project>-<service>-<stamp>`. A new version starts beside the
//!   old one on the project network only (it reaches its dependencies, nobody reaches it), and
//!   must turn healthy by its own health check. Then it joins `<project>-serving` under the
//!   service's name: from that moment callers resolve both. The old container then gets SIGTERM:
//!   it answers `Connection: close` while its shutdown delay runs, closes its listener, finishes
//!   what is in flight and exits, leaving DNS. Callers (our gateway) retry a refused connection on
//!   the next address, whatever the method, since such a request never reached anybody.
//! - Published ports belong to an edge container per published service (`DEPLOY_PUBLISH`): the
//!   gateway binary routing `/` to the service by name. It stays while the services behind it
//!   are replaced; it is recreated (a short gap) only when its ports or route change.
//! - A new version that never turns healthy (or exits) is removed with its logs shown; the old
//!   one never stopped serving. Services already switched in the same run are switched back.
//!
//! What runs is recorded on the host, in the containers' labels: the full run spec of each
//! container and of the one it replaced. `deploy status` reads them; `deploy rollback` runs the
//! previous spec through the same health-gated replace, so rollback needs no local files.
//!
//! The environment is `infra/compose/env/ENV.env`: the compose variables plus `DEPLOY_*` keys
//! (which services, which are published, which compose files, the project name). Values in the
//! process environment win over the file, so secrets come from CI, never from the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::commands::deploy::DeployArgs;
use crate::commands::dev;
use crate::commands::image;
use crate::images::BuildManifest;
use crate::process::Cmd;
use crate::workspace::Workspace;
use crate::{Ctx, UsageError};

pub const ENV_DIR: &str = "infra/compose/env";
/// Health checks are polled this often.
const POLL: Duration = Duration::from_millis(250);
/// How long an old container gets to drain after SIGTERM before Docker kills it.
const DEFAULT_STOP_GRACE: u64 = 30;
/// Version of the run spec kept in the labels.
const SPEC_VERSION: u32 = 1;

/// One docker environment: its compose variables and its deploy settings.
#[derive(Clone, Debug)]
pub struct DockerEnv {
    pub name: String,
    pub project: String,
    pub file: PathBuf,
    /// Compose interpolation variables: the file's, then the process environment's over them.
    pub vars: BTreeMap<String, String>,
    pub compose_files: Vec<PathBuf>,
    /// Services to run (`DEPLOY_SERVICES`); `None`: every service without a profile.
    pub services: Option<Vec<String>>,
    /// Our services whose ports are published through an edge (`DEPLOY_PUBLISH`).
    pub publish: Vec<String>,
}

fn list(value: Option<&String>) -> Option<Vec<String>> {
    value.map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

impl DockerEnv {
    pub fn load(root: &Path, name: &str) -> Result<DockerEnv> {
        let file = root.join(ENV_DIR).join(format!("{name}.env"));
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut known: Vec<String> = std::fs::read_dir(root.join(ENV_DIR))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".env").map(str::to_string))
                    .collect();
                known.sort();
                return Err(UsageError(format!(
                    "no docker environment `{name}`: create {ENV_DIR}/{name}.env (known: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ))
                .into());
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        let mut vars = crate::env_file::parse(&text, &file)?;
        for key in vars.keys().cloned().collect::<Vec<_>>() {
            if let Ok(v) = std::env::var(&key) {
                vars.insert(key, v);
            }
        }
        for (key, value) in std::env::vars() {
            if key.starts_with("DEPLOY_") {
                vars.insert(key, value);
            }
        }
        let project = vars.get("DEPLOY_PROJECT").cloned().unwrap_or_else(|| format!("xtask-{name}"));
        let valid = !project.is_empty()
            && project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && project.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(UsageError(format!(
                "DEPLOY_PROJECT={project}: use lowercase letters, digits, '-' and '_' (it names containers)"
            ))
            .into());
        }
        let compose_files = list(vars.get("DEPLOY_COMPOSE_FILES"))
            .unwrap_or_else(|| vec!["docker-compose.yml".into()])
            .into_iter()
            .map(|f| root.join(dev::COMPOSE_DIR).join(f))
            .collect::<Vec<_>>();
        for f in &compose_files {
            if !f.is_file() {
                return Err(UsageError(format!(
                    "{}: DEPLOY_COMPOSE_FILES names {}, which does not exist",
                    file.display(),
                    f.display()
                ))
                .into());
            }
        }
        Ok(DockerEnv {
            name: name.to_string(),
            services: list(vars.get("DEPLOY_SERVICES")),
            publish: list(vars.get("DEPLOY_PUBLISH")).unwrap_or_default(),
            project,
            file,
            compose_files,
            vars,
        })
    }

    fn network(&self) -> String {
        self.project.clone()
    }

    fn serving_network(&self) -> String {
        format!("{}-serving", self.project)
    }
}

/// A string or a list, as compose allows for `command`, `tmpfs`, healthcheck `test`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
struct ComposeHealth {
    test: Option<OneOrMany>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    start_period: Option<String>,
    #[serde(default)]
    disable: bool,
}

/// One service as `docker-compose config` prints it (1.29 short syntax or v2 long syntax). Keys
/// this deploy cannot honour are refused by name rather than silently dropped.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
struct ComposeService {
    image: Option<String>,
    build: Option<serde_yaml::Value>,
    command: Option<OneOrMany>,
    #[serde(default)]
    environment: BTreeMap<String, serde_yaml::Value>,
    healthcheck: Option<ComposeHealth>,
    user: Option<String>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    cap_drop: Vec<String>,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default)]
    security_opt: Vec<String>,
    tmpfs: Option<OneOrMany>,
    mem_limit: Option<serde_yaml::Value>,
    cpus: Option<serde_yaml::Value>,
    #[serde(default)]
    ports: Vec<serde_yaml::Value>,
    #[serde(default)]
    volumes: Vec<serde_yaml::Value>,
    #[serde(default)]
    depends_on: BTreeMap<String, serde_yaml::Value>,
    restart: Option<String>,
    stop_grace_period: Option<String>,
    // Profiles chose the services already; every service joins the project's networks.
    #[serde(default, rename = "profiles")]
    _profiles: serde::de::IgnoredAny,
    #[serde(default, rename = "networks")]
    _networks: serde::de::IgnoredAny,
    #[serde(default)]
    entrypoint: Option<serde_yaml::Value>,
}

#[derive(Deserialize, Debug)]
struct ComposeConfig {
    services: BTreeMap<String, serde_yaml::Value>,
}

/// A published port: host address, host port, container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
}

fn parse_port(value: &serde_yaml::Value, service: &str) -> Result<Port> {
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
fn volume_arg(value: &serde_yaml::Value, project: &str, service: &str) -> Result<String> {
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
fn unescape(s: &str) -> String {
    s.replace("$$", "$")
}

fn scalar(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) => unescape(s),
        serde_yaml::Value::Null => String::new(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// Single-quoted for `/bin/sh`, so an exec-form health check keeps its words.
fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What a container is: image and `docker run` arguments (without name, labels, networks).
/// Kept as JSON in the container's labels so a rollback can run it again exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub version: u32,
    pub service: String,
    /// What `docker run` is given: an image ID, or a digest reference when pushed.
    pub image: String,
    /// For people: `api:1a2b3c4d5e6f`.
    pub image_name: String,
    pub env: BTreeMap<String, String>,
    pub options: Vec<String>,
    pub command: Vec<String>,
    /// Has a health check to gate on (else: running is enough).
    pub healthcheck: bool,
    pub stop_grace: u64,
    /// Edge only: the ports it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Services this one needs first (a rollback replaces in this order too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

impl RunSpec {
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(self).expect("specs serialise");
        let digest = sha2::Sha256::digest(&json);
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Ours: rolled beside the old one.
    App,
    /// Stateful or third-party: created once, never replaced by deploy.
    Dependency,
    /// Holds a published port in front of an app.
    Edge,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Dependency => "dependency",
            Role::Edge => "edge",
        }
    }
}

/// What deploy will run for one service.
#[derive(Clone, Debug)]
struct Planned {
    service: String,
    role: Role,
    spec: RunSpec,
    /// Published ports (apps: held by an edge when the service is in DEPLOY_PUBLISH).
    ports: Vec<Port>,
}

/// Docker, with every changing command printed before it runs; `quiet` for polling.
struct Docker;

impl Docker {
    fn quiet(&self, args: &[&str]) -> Result<Output> {
        Cmd::new("docker").args(args).output()
    }

    fn checked(&self, args: &[&str]) -> Result<String> {
        eprintln!("$ docker {}", args.join(" "));
        self.checked_quiet(args)
    }

    fn checked_quiet(&self, args: &[&str]) -> Result<String> {
        Ok(Cmd::new("docker").args(args).read()?.trim().to_string())
    }

    fn image_exists(&self, image: &str) -> bool {
        self.quiet(&["image", "inspect", "--format", "{{.Id}}", image]).is_ok_and(|o| o.status.success())
    }

    /// The image's own health check test (`["CMD", ...]`), if it has one.
    fn image_health_test(&self, image: &str) -> Result<Option<Vec<String>>> {
        if !self.image_exists(image) {
            return Ok(None);
        }
        let out = self.checked_quiet(&["image", "inspect", "--format", "{{json .Config.Healthcheck}}", image])?;
        let value: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        Ok(value["Test"].as_array().map(|t| t.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()))
    }
}

/// A container of this project as `docker inspect` describes it.
#[derive(Clone, Debug)]
struct Running {
    name: String,
    service: String,
    role: String,
    status: String,
    health: Option<String>,
    /// Docker's ID of the image it runs.
    image_id: String,
    started: String,
    spec: Option<RunSpec>,
    previous: Option<RunSpec>,
    spec_hash: String,
}

fn containers(docker: &Docker, project: &str) -> Result<Vec<Running>> {
    let filter = format!("label=xtask.project={project}");
    let ids = docker.checked_quiet(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter])?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["inspect"];
    args.extend(&ids);
    let out = docker.checked_quiet(&args)?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).context("docker inspect printed no JSON")?;
    let mut found: Vec<Running> = list
        .iter()
        .map(|c| {
            let labels = &c["Config"]["Labels"];
            let label = |k: &str| labels[k].as_str().unwrap_or_default().to_string();
            let spec_of = |k: &str| labels[k].as_str().and_then(|s| serde_json::from_str::<RunSpec>(s).ok());
            Running {
                name: c["Name"].as_str().unwrap_or_default().trim_start_matches('/').to_string(),
                service: label("xtask.service"),
                role: label("xtask.role"),
                status: c["State"]["Status"].as_str().unwrap_or_default().to_string(),
                health: c["State"]["Health"]["Status"].as_str().map(str::to_string),
                image_id: c["Image"].as_str().unwrap_or_default().to_string(),
                started: c["State"]["StartedAt"].as_str().unwrap_or_default().to_string(),
                spec: spec_of("xtask.spec"),
                previous: spec_of("xtask.previous-spec"),
                spec_hash: label("xtask.spec-hash"),
            }
        })
        .collect();
    found.sort_by(|a, b| a.started.cmp(&b.started));
    Ok(found)
}

/// Dependency order: every service after what it depends on (names outside the map are taken
/// as there already); ties by name.
fn order(needs: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>> {
    let mut done: Vec<String> = Vec::new();
    let mut left: BTreeSet<String> = needs.keys().cloned().collect();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|s| needs[*s].iter().all(|d| done.contains(d) || !needs.contains_key(d)))
            .cloned()
            .collect();
        if ready.is_empty() {
            bail!("the services' depends_on form a cycle: {}", left.into_iter().collect::<Vec<_>>().join(", "));
        }
        for s in ready {
            left.remove(&s);
            done.push(s);
        }
    }
    Ok(done)
}

/// The selected services of the compose files, rendered by compose itself with the
/// environment's variables. Services left out are removed from copies of the files first, so a
/// variable only they require (Grafana's password) is not demanded.
fn compose_config(root: &Path, env: &DockerEnv, dir: &Path) -> Result<(ComposeConfig, Vec<PathBuf>)> {
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
    let out = compose_command(root, env, &copies, &["config"])?.output()?;
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
fn depends_on_names(service: &serde_yaml::Value) -> Vec<String> {
    match service.get("depends_on") {
        Some(serde_yaml::Value::Sequence(list)) => list.iter().filter_map(|d| d.as_str().map(str::to_string)).collect(),
        Some(serde_yaml::Value::Mapping(map)) => map.keys().filter_map(|d| d.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// Compose on the environment's copies of the files, with its variables.
fn compose_command(root: &Path, env: &DockerEnv, copies: &[PathBuf], sub: &[&str]) -> Result<Cmd> {
    let program = dev::compose_program()?;
    let mut cmd = Cmd::new(&program[0]).args(&program[1..]).args(["--project-name", &env.project]);
    cmd = cmd.arg("--project-directory").arg(root.join(dev::COMPOSE_DIR));
    for f in copies {
        cmd = cmd.arg("--file").arg(f);
    }
    // The environment's file, not the developer's infra/compose/.env; the process wins over it.
    cmd = cmd.arg("--env-file").arg(&env.file);
    // Our images come from the build manifest; the tag only has to satisfy the file's `:?`.
    Ok(cmd.args(sub).envs(&env.vars).env("IMAGE_TAG", "from-build-manifest").current_dir(root))
}

/// Our image for a service: the pushed digest reference when there is one, else Docker's ID.
fn app_image(manifest: &BuildManifest, manifest_path: &Path, service: &str) -> Result<(String, String)> {
    let Some(record) = manifest.images.get(service) else {
        return Err(UsageError(format!(
            "{} has no image for `{service}`; run `cargo xtask image build` first",
            manifest_path.display()
        ))
        .into());
    };
    if record.dirty {
        eprintln!("warning: `{service}` was built from a tree with uncommitted changes ({})", record.image);
    }
    Ok((record.pushed.clone().unwrap_or_else(|| record.id.clone()), record.image.clone()))
}

/// Turn one compose service into a run spec.
/// The image's own health check test (`["CMD", ...]`), if it has one: a fact about the Docker
/// host, looked up for `plan_service` (by Docker when deploying, by a table in tests).
type ImageHealth<'a> = &'a dyn Fn(&str) -> Result<Option<Vec<String>>>;

/// Compose's description of one service as the `docker run` spec deploy runs it with. Pure but
/// for `image_health`, so every translation rule is a table test.
fn plan_service(
    image_health: ImageHealth<'_>,
    env: &DockerEnv,
    name: &str,
    svc: ComposeService,
    ours: Option<(String, String)>,
) -> Result<Planned> {
    if svc.entrypoint.is_some() {
        return Err(UsageError(format!(
            "service {name}: `entrypoint` is not supported by deploy --target docker; set it in the image"
        ))
        .into());
    }
    let role = if ours.is_some() { Role::App } else { Role::Dependency };
    let (image, image_name) = match ours {
        Some(pair) => pair,
        None => {
            let image = svc.image.clone().ok_or_else(|| UsageError(format!("service {name} has no image")))?;
            (image.clone(), image)
        }
    };
    let mut options: Vec<String> = Vec::new();
    let mut push = |flag: &str, value: String| {
        options.push(flag.to_string());
        options.push(value);
    };
    if let Some(r) = &svc.restart {
        push("--restart", r.clone());
    }
    if let Some(u) = &svc.user {
        push("--user", u.clone());
    }
    for c in &svc.cap_drop {
        push("--cap-drop", c.clone());
    }
    for c in &svc.cap_add {
        push("--cap-add", c.clone());
    }
    for s in &svc.security_opt {
        push("--security-opt", s.clone());
    }
    for t in svc.tmpfs.clone().map(OneOrMany::into_vec).unwrap_or_default() {
        push("--tmpfs", t);
    }
    if let Some(m) = &svc.mem_limit {
        push("--memory", scalar(m));
    }
    if let Some(c) = &svc.cpus {
        push("--cpus", scalar(c));
    }
    for v in &svc.volumes {
        push("--volume", volume_arg(v, &env.project, name)?);
    }
    let mut healthcheck = false;
    match &svc.healthcheck {
        Some(h) if h.disable => push("--no-healthcheck", String::new()),
        Some(h) => {
            let test = h.test.clone().map(OneOrMany::into_vec).unwrap_or_default();
            let test: Vec<String> = test.iter().map(|w| unescape(w)).collect();
            match test.first().map(String::as_str) {
                Some("NONE") => push("--no-healthcheck", String::new()),
                Some("CMD-SHELL") => {
                    push("--health-cmd", test[1..].join(" "));
                    healthcheck = true;
                }
                Some("CMD") => {
                    // `docker run` can only say CMD-SHELL; an image without a shell (ours are
                    // FROM scratch) keeps its own exec-form check when it is the same one.
                    let same = image_health(&image)?.is_some_and(|own| own == test);
                    if !same {
                        let words: Vec<String> = test[1..].iter().map(|w| shell_quote(w)).collect();
                        push("--health-cmd", words.join(" "));
                    }
                    healthcheck = true;
                }
                Some(other) if test.len() == 1 => {
                    push("--health-cmd", other.to_string());
                    healthcheck = true;
                }
                _ => healthcheck = image_health(&image)?.is_some(),
            }
            if let Some(v) = &h.interval {
                push("--health-interval", v.clone());
            }
            if let Some(v) = &h.timeout {
                push("--health-timeout", v.clone());
            }
            if let Some(v) = h.retries {
                push("--health-retries", v.to_string());
            }
            if let Some(v) = &h.start_period {
                push("--health-start-period", v.clone());
            }
        }
        None => healthcheck = image_health(&image)?.is_some_and(|t| t.first().is_some_and(|w| w != "NONE")),
    }
    if svc.read_only {
        options.push("--read-only".into());
    }
    options.retain(|o| !o.is_empty());
    let ports = svc.ports.iter().map(|p| parse_port(p, name)).collect::<Result<Vec<_>>>()?;
    let stop_grace =
        // Docker counts whole seconds: a part-second grace rounds up rather than to no grace.
        svc.stop_grace_period.as_deref().and_then(crate::duration::parse).map_or(DEFAULT_STOP_GRACE, |d| {
            d.as_secs() + u64::from(d.subsec_nanos() > 0)
        });
    if role == Role::App && !healthcheck {
        return Err(UsageError(format!(
            "service {name} has no health check; deploy --target docker switches traffic only to a healthy container (add `healthcheck:` in compose)"
        ))
        .into());
    }
    Ok(Planned {
        service: name.to_string(),
        role,
        spec: RunSpec {
            version: SPEC_VERSION,
            service: name.to_string(),
            image,
            image_name,
            env: svc.environment.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
            options,
            command: svc
                .command
                .clone()
                .map(OneOrMany::into_vec)
                .unwrap_or_default()
                .iter()
                .map(|w| unescape(w))
                .collect(),
            healthcheck,
            stop_grace,
            ports: Vec::new(),
            depends_on: svc.depends_on.keys().cloned().collect(),
        },
        ports,
    })
}

/// The edge in front of a published app: the gateway binary routing `/` to the service.
fn edge_spec(gateway_image: &(String, String), app: &Planned, port: &Port) -> RunSpec {
    let env = BTreeMap::from([
        ("GATEWAY_ROUTES".to_string(), format!("/=http://{}:{}", app.service, port.container_port)),
        ("PORT".to_string(), port.container_port.to_string()),
        ("SHUTDOWN_DELAY".to_string(), "1s".to_string()),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]);
    let options = [
        "--restart",
        "unless-stopped",
        "--user",
        "65532:65532",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "--read-only",
        "--health-interval",
        "2s",
        "--health-timeout",
        "3s",
        "--health-retries",
        "15",
    ]
    .map(str::to_string)
    .to_vec();
    RunSpec {
        version: SPEC_VERSION,
        service: format!("edge-{}-{}", app.service, port.container_port),
        image: gateway_image.0.clone(),
        image_name: gateway_image.1.clone(),
        env,
        options,
        command: Vec::new(),
        healthcheck: true,
        stop_grace: 10,
        ports: vec![port.clone()],
        depends_on: vec![app.service.clone()],
    }
}

/// The edge's identity for deciding whether it must be recreated: routing and ports, not the
/// image (a new gateway image alone does not justify the gap a recreate costs).
fn edge_identity(spec: &RunSpec) -> (BTreeMap<String, String>, Vec<Port>) {
    (spec.env.clone(), spec.ports.clone())
}

/// Everything one deploy needs to know, resolved before anything changes.
struct Deployment {
    env: DockerEnv,
    planned: BTreeMap<String, Planned>,
    order: Vec<String>,
    edges: Vec<RunSpec>,
    revision: String,
    /// The environment's copies of the compose files (what `compose build` runs on).
    copies: Vec<PathBuf>,
    /// Images to fetch or build before anything is replaced (or that are missing for good).
    prepare: Vec<Prepare>,
}

/// An image the Docker host lacks, and what deploy will do about it.
#[derive(Clone, Debug, Serialize)]
struct Prepare {
    service: String,
    image: String,
    #[serde(flatten)]
    action: PrepareAction,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "action", content = "why", rename_all = "kebab-case")]
enum PrepareAction {
    /// Pinned by digest: `docker pull`.
    Pull,
    /// Compose can build it.
    Build,
    /// Neither: the deploy is refused with this line.
    Missing(String),
}

fn plan(
    ctx: &Ctx,
    ws: &Workspace,
    env: DockerEnv,
    manifest: &BuildManifest,
    manifest_path: &Path,
    dir: &Path,
) -> Result<Deployment> {
    let docker = Docker;
    let (config, compose_copies) = compose_config(&ctx.root, &env, dir)?;
    let ours: BTreeSet<String> = ws.services().map(|(n, _)| n.clone()).collect();
    // Every check that needs only the files comes first, so a broken environment is refused
    // before an image is pulled or built.
    let mut parsed = Vec::new();
    for (name, raw) in &config.services {
        let svc: ComposeService = serde_yaml::from_value(raw.clone()).map_err(|e| {
            UsageError(format!(
                "service {name}: {e} (deploy --target docker cannot honour it; remove it or ask for support)"
            ))
        })?;
        let image = if ours.contains(name) { Some(app_image(manifest, manifest_path, name)?) } else { None };
        parsed.push((name, svc, image));
    }
    for p in &env.publish {
        if !parsed.iter().any(|(name, _, image)| *name == p && image.is_some()) {
            return Err(UsageError(format!(
                "DEPLOY_PUBLISH names `{p}`, which is not one of our services deployed here"
            ))
            .into());
        }
    }
    // Edges run the gateway binary, deployed here or not.
    let edge_image = match env.publish.is_empty() {
        true => None,
        false => Some(app_image(manifest, manifest_path, "gateway")?),
    };
    // What the host lacks is a fact gathered here; fetching or building it is a step of the
    // deploy, after the plan is shown and confirmed.
    let mut prepare = Vec::new();
    if let Some((image, image_name)) = &edge_image {
        let needed = Needed { service: "gateway", image, image_name, app: true, buildable: false };
        prepare.extend(image_need(&docker, &env, &needed));
    }
    let mut planned = BTreeMap::new();
    for (name, svc, image) in parsed {
        let (wanted, wanted_name) = image.clone().unwrap_or_else(|| {
            let i = svc.image.clone().unwrap_or_default();
            (i.clone(), i)
        });
        let needed = Needed {
            service: name,
            image: &wanted,
            image_name: &wanted_name,
            app: ours.contains(name),
            buildable: svc.build.is_some(),
        };
        if !prepare.iter().any(|p: &Prepare| p.image == wanted && p.service == *name) {
            prepare.extend(image_need(&docker, &env, &needed));
        }
        // The image's own health check decides how the compose one is given to Docker; an image
        // not here yet is planned without it and planned again once it is here.
        let own_health = |image: &str| docker.image_health_test(image);
        planned.insert(name.clone(), plan_service(&own_health, &env, name, svc, image)?);
    }
    let mut edges = Vec::new();
    if let Some(gateway) = &edge_image {
        for name in &env.publish {
            for port in &planned[name].ports {
                edges.push(edge_spec(gateway, &planned[name], port));
            }
        }
    }
    let unpublished: Vec<&str> = planned
        .values()
        .filter(|p| p.role == Role::App && !p.ports.is_empty() && !env.publish.contains(&p.service))
        .map(|p| p.service.as_str())
        .collect();
    if !unpublished.is_empty() {
        eprintln!(
            "note: {} not published on the host (only DEPLOY_PUBLISH services are; others are reached through them)",
            unpublished.join(", ")
        );
    }
    let order = order(&planned.iter().map(|(k, p)| (k.clone(), p.spec.depends_on.clone())).collect())?;
    let revision = image::Revision::of(&ctx.root).map_or_else(|_| "unknown".to_string(), |r| r.sha);
    Ok(Deployment { env, planned, order, edges, revision, prepare, copies: compose_copies })
}

fn now_stamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}{:03}", now.as_secs(), now.subsec_millis())
}

fn ensure_network(docker: &Docker, name: &str, project: &str) -> Result<()> {
    if docker.quiet(&["network", "inspect", name]).is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    docker.checked(&["network", "create", "--label", &format!("xtask.project={project}"), name])?;
    Ok(())
}

/// `docker run -d` for a spec, on one network with optional alias; returns the container name.
fn start(
    docker: &Docker,
    dep: &Deployment,
    dir: &Path,
    spec: &RunSpec,
    role: Role,
    previous: Option<&RunSpec>,
) -> Result<String> {
    // Apps start where they reach their dependencies but nobody reaches them (the switch comes
    // after their health check); dependencies are found by name on both networks; edges face the
    // serving network.
    let (network, alias) = match role {
        Role::App => (dep.env.network(), None),
        Role::Dependency => (dep.env.network(), Some(spec.service.as_str())),
        Role::Edge => (dep.env.serving_network(), None),
    };
    let name = match role {
        Role::Edge | Role::Dependency => format!("{}-{}", dep.env.project, spec.service),
        Role::App => format!("{}-{}-{}", dep.env.project, spec.service, now_stamp()),
    };
    // Values stay out of the process list: they go through a private env file.
    let env_file = dir.join(format!("{}.env", spec.service));
    let mut text = String::new();
    for (k, v) in &spec.env {
        if v.contains('\n') {
            bail!("{}: the value of {k} has a line break, which docker's env files cannot carry", spec.service);
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    write_private(&env_file, &text)?;
    let spec_json = serde_json::to_string(spec)?;
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
    args.extend(["--network".into(), network]);
    if let Some(a) = alias {
        args.extend(["--network-alias".into(), a.to_string()]);
    }
    let labels = [
        ("xtask.project", dep.env.project.clone()),
        ("xtask.env", dep.env.name.clone()),
        ("xtask.service", spec.service.clone()),
        ("xtask.role", role.label().to_string()),
        ("xtask.revision", dep.revision.clone()),
        ("xtask.spec-hash", spec.hash()),
        ("xtask.spec", spec_json),
    ];
    for (k, v) in labels {
        args.extend(["--label".into(), format!("{k}={v}")]);
    }
    if let Some(p) = previous {
        args.extend(["--label".into(), format!("xtask.previous-spec={}", serde_json::to_string(p)?)]);
    }
    args.extend(["--env-file".into(), env_file.display().to_string()]);
    for port in &spec.ports {
        let ip = if port.host_ip.is_empty() { String::new() } else { format!("{}:", port.host_ip) };
        args.extend(["--publish".into(), format!("{ip}{}:{}", port.host_port, port.container_port)]);
    }
    args.extend(spec.options.iter().cloned());
    args.push(spec.image.clone());
    args.extend(spec.command.iter().cloned());
    eprintln!("$ docker run -d --name {name} ... {} ({})", spec.image_name, short(&spec.image));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = docker.checked_quiet(&refs).and_then(|_| match role {
        // Some dependencies call our services (Prometheus scrapes them), and those answer by
        // name only on the serving network.
        Role::Dependency => {
            docker.checked(&["network", "connect", "--alias", &spec.service, &dep.env.serving_network(), &name])
        }
        _ => Ok(String::new()),
    });
    let _ = std::fs::remove_file(&env_file);
    if let Err(e) = result {
        // A container that was created but could not start (a port taken) must not linger.
        let _ = docker.quiet(&["rm", "-f", &name]);
        return Err(e);
    }
    Ok(name)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
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

fn short(image: &str) -> &str {
    match image.split_once("sha256:") {
        Some((_, hex)) => &hex[..hex.len().min(12)],
        None => image,
    }
}

/// Waits until the container is healthy (or running, without a health check). A container that
/// turns unhealthy, exits or restarts fails at once, with its last check output and logs.
fn wait_healthy(docker: &Docker, name: &str, healthcheck: bool, timeout: Duration) -> Result<Duration> {
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
fn retire(docker: &Docker, container: &Running) -> Result<()> {
    let grace = container.spec.as_ref().map_or(DEFAULT_STOP_GRACE, |s| s.stop_grace).to_string();
    docker.checked(&["stop", "--time", &grace, &container.name])?;
    docker.checked(&["rm", &container.name])?;
    Ok(())
}

/// What happened to one service, for the summary.
#[derive(Debug)]
enum Outcome {
    Unchanged,
    Created(Duration),
    /// `previous`: the spec the replaced container ran, what an undo returns to.
    Replaced {
        took: Duration,
        previous: Box<RunSpec>,
    },
}

/// Start `spec` beside whatever runs for the service, gate on health, switch, retire the old.
/// On failure the new container is removed and the old ones keep serving.
fn replace_app(
    docker: &Docker,
    dep: &Deployment,
    dir: &Path,
    spec: &RunSpec,
    running: &[Running],
    timeout: Duration,
) -> Result<Outcome> {
    let started = Instant::now();
    let current: Vec<&Running> = running.iter().filter(|r| r.service == spec.service && r.role == "app").collect();
    let serving: Vec<&&Running> = current.iter().filter(|r| r.status == "running").collect();
    if serving.len() == 1 && serving[0].spec_hash == spec.hash() && current.len() == 1 {
        return Ok(Outcome::Unchanged);
    }
    // The spec the newest running container was started from is what a rollback returns to.
    let previous = serving.last().and_then(|r| r.spec.clone());
    let name = start(docker, dep, dir, spec, Role::App, previous.as_ref())?;
    eprintln!("  {}: waiting for {name} to turn healthy", spec.service);
    if let Err(e) = wait_healthy(docker, &name, spec.healthcheck, timeout) {
        let _ = docker.checked(&["rm", "-f", &name]);
        return Err(e.context(if serving.is_empty() {
            format!("{} did not start; nothing was serving it before", spec.service)
        } else {
            format!("{} was not switched; the running version keeps serving", spec.service)
        }));
    }
    // The switch: joining the serving network under the service's name.
    docker.checked(&["network", "connect", "--alias", &spec.service, &dep.env.serving_network(), &name])?;
    for old in &current {
        retire(docker, old)?;
    }
    Ok(match previous {
        Some(p) => Outcome::Replaced { took: started.elapsed(), previous: Box::new(p) },
        None => Outcome::Created(started.elapsed()),
    })
}

/// A dependency is created when missing and otherwise left alone.
fn ensure_dependency(
    docker: &Docker,
    dep: &Deployment,
    dir: &Path,
    p: &Planned,
    running: &[Running],
    timeout: Duration,
) -> Result<Outcome> {
    let current: Vec<&Running> = running.iter().filter(|r| r.service == p.service && r.role == "dependency").collect();
    if let Some(c) = current.iter().find(|c| c.status == "running") {
        if c.spec_hash != p.spec.hash() {
            eprintln!(
                "warning: {} runs with a different configuration than the compose files now say; dependencies are not replaced by deploy (one volume, one server): recreate it in a maintenance window",
                p.service
            );
        }
        wait_healthy(docker, &c.name, p.spec.healthcheck, timeout)?;
        return Ok(Outcome::Unchanged);
    }
    for c in &current {
        docker.checked(&["rm", "-f", &c.name])?;
    }
    let mut spec = p.spec.clone();
    spec.ports = p.ports.clone();
    let started = Instant::now();
    let name = start(docker, dep, dir, &spec, Role::Dependency, None)?;
    wait_healthy(docker, &name, spec.healthcheck, timeout)?;
    Ok(Outcome::Created(started.elapsed()))
}

/// Edges hold published ports; one is recreated only when its routing or ports change.
fn ensure_edge(
    docker: &Docker,
    dep: &Deployment,
    dir: &Path,
    spec: &RunSpec,
    running: &[Running],
    timeout: Duration,
) -> Result<Outcome> {
    let current = running.iter().find(|r| r.role == "edge" && r.service == spec.service);
    if let Some(c) = current {
        let same = c.spec.as_ref().is_some_and(|s| edge_identity(s) == edge_identity(spec));
        if same && c.status == "running" {
            return Ok(Outcome::Unchanged);
        }
        eprintln!(
            "warning: recreating {} (its ports or route changed): the published port is down for a moment",
            c.name
        );
        docker.checked(&["rm", "-f", &c.name])?;
    }
    let started = Instant::now();
    let name = start(docker, dep, dir, spec, Role::Edge, None)?;
    wait_healthy(docker, &name, true, timeout)?;
    Ok(Outcome::Created(started.elapsed()))
}

/// One image deploy needs on the host.
struct Needed<'a> {
    service: &'a str,
    image: &'a str,
    image_name: &'a str,
    app: bool,
    buildable: bool,
}

/// What getting an image onto the host takes (`None`: it is there): pull what is pinned by
/// digest, build what compose can build, and the rest is missing, named.
fn image_need(docker: &Docker, env: &DockerEnv, n: &Needed<'_>) -> Option<Prepare> {
    if docker.image_exists(n.image) {
        return None;
    }
    let action = if n.image.contains('@') {
        PrepareAction::Pull
    } else if n.app {
        PrepareAction::Missing(format!(
            "image {} ({}) for {} is not on the Docker host; push it (`cargo xtask image build --push REGISTRY`) or build it there",
            n.image_name,
            short(n.image),
            n.service
        ))
    } else if !n.buildable {
        PrepareAction::Missing(format!(
            "image {} for {} is not on the Docker host and compose cannot build it; load it, or set its image variable in {}",
            n.image,
            n.service,
            env.file.display()
        ))
    } else {
        PrepareAction::Build
    };
    Some(Prepare { service: n.service.to_string(), image: n.image.to_string(), action })
}

/// Put every image the plan lacks on the host; nothing has been replaced yet if this fails.
fn fetch_images(docker: &Docker, root: &Path, dep: &Deployment) -> Result<()> {
    for p in &dep.prepare {
        match &p.action {
            PrepareAction::Missing(why) => return Err(UsageError(format!("{why}; nothing was changed")).into()),
            PrepareAction::Pull => {
                docker.checked(&["pull", &p.image])?;
            }
            PrepareAction::Build => {
                let cmd = compose_command(root, &dep.env, &dep.copies, &["build", &p.service])?;
                eprintln!("$ compose build {} (image {} is missing)", p.service, p.image);
                if !cmd.to_command().stdout(std::io::stderr()).status()?.success() {
                    bail!("building the image of {} failed (above); nothing was changed", p.service);
                }
            }
        }
    }
    Ok(())
}

pub fn deploy(ctx: &Ctx, env_name: &str, args: &DeployArgs, dir: &Path) -> Result<ExitCode> {
    let images = args.images.as_deref();
    let timeout = args.timeout;
    let ws = ctx.workspace()?;
    let env = DockerEnv::load(&ctx.root, env_name)?;
    let manifest_path = images.map_or_else(|| image::manifest_path(&ws), Path::to_path_buf);
    if !manifest_path.is_file() {
        return Err(UsageError(format!(
            "no build manifest at {}; run `cargo xtask image build` first",
            manifest_path.display()
        ))
        .into());
    }
    let manifest = BuildManifest::read(&manifest_path)?;
    let docker = Docker;
    let mut dep = plan(ctx, &ws, env.clone(), &manifest, &manifest_path, dir)?;
    let running = containers(&docker, &dep.env.project)?;
    // The one presentation of the plan, then the one confirmation point, then changes.
    if ctx.ui.format == crate::runner::Format::Json {
        println!("{}", serde_json::to_string_pretty(&plan_json(&dep, &running))?);
    } else {
        print_plan(&dep, &running);
    }
    if ctx.dry_run {
        eprintln!("dry run: nothing was changed on the Docker host");
        return Ok(ExitCode::SUCCESS);
    }
    super::deploy::confirm(env_name, args)?;
    if !dep.prepare.is_empty() {
        fetch_images(&docker, &ctx.root, &dep)?;
        // Now that every image is here, plan with their own health checks (what is run).
        dep = plan(ctx, &ws, env, &manifest, &manifest_path, dir)?;
    }
    ensure_network(&docker, &dep.env.network(), &dep.env.project)?;
    ensure_network(&docker, &dep.env.serving_network(), &dep.env.project)?;

    let mut switched: Vec<(String, Option<RunSpec>)> = Vec::new();
    let mut report: Vec<(String, Outcome)> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    for service in &dep.order {
        let p = &dep.planned[service];
        eprintln!("{service}:");
        let running = containers(&docker, &dep.env.project)?;
        let result = match p.role {
            Role::App => replace_app(&docker, &dep, dir, &p.spec, &running, timeout),
            _ => ensure_dependency(&docker, &dep, dir, p, &running, timeout),
        };
        match result {
            Ok(outcome) => {
                match &outcome {
                    Outcome::Replaced { previous, .. } => switched.push((service.clone(), Some((**previous).clone()))),
                    Outcome::Created(_) if p.role == Role::App => switched.push((service.clone(), None)),
                    _ => {}
                }
                eprintln!("  {service}: {}", describe(&outcome));
                report.push((service.clone(), outcome));
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() {
        for spec in &dep.edges {
            let running = containers(&docker, &dep.env.project)?;
            match ensure_edge(&docker, &dep, dir, spec, &running, timeout) {
                Ok(outcome) => {
                    eprintln!("  {}: {}", spec.service, describe(&outcome));
                    report.push((spec.service.clone(), outcome));
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    let Some(error) = failure else {
        summary(&dep, &report);
        return Ok(ExitCode::SUCCESS);
    };
    eprintln!("failed: {error:#}");
    // Put back what this run already switched, newest first.
    let mut undone = Vec::new();
    let mut undo_failed = Vec::new();
    for (service, before) in switched.iter().rev() {
        let Some(before) = before else {
            undo_failed.push(format!("{service} had no earlier version to return to"));
            continue;
        };
        eprintln!("rolling {service} back to {}", before.image_name);
        let running = containers(&docker, &dep.env.project)?;
        match replace_app(&docker, &dep, dir, before, &running, timeout) {
            Ok(_) => undone.push(service.clone()),
            Err(e) => undo_failed.push(format!("{service}: {e:#}")),
        }
    }
    let mut message = format!("deploy of {} to the Docker host failed: {error:#}", dep.env.name);
    if !undone.is_empty() {
        message.push_str(&format!("; rolled back {}", undone.join(", ")));
    }
    if !undo_failed.is_empty() {
        message.push_str(&format!("; could not roll back: {}", undo_failed.join("; ")));
    }
    bail!(message)
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Unchanged => "unchanged".into(),
        Outcome::Created(took) => format!("started, healthy in {:.1}s", took.as_secs_f64()),
        Outcome::Replaced { took, previous } => {
            format!("replaced {}: healthy and switched in {:.1}s", previous.image_name, took.as_secs_f64())
        }
    }
}

/// What deploy will do to each service: create, replace, unchanged or keep.
fn action(p: &Planned, running: &[Running]) -> String {
    let current = running.iter().rev().find(|r| r.service == p.service && r.status == "running");
    match (p.role, current) {
        (_, None) => "create".to_string(),
        (Role::App, Some(c)) if c.spec_hash == p.spec.hash() => "unchanged".to_string(),
        (Role::App, Some(c)) => {
            format!("replace {} with {}", c.spec.as_ref().map_or("?", |s| s.image_name.as_str()), p.spec.image_name)
        }
        (_, Some(_)) => "keep (dependencies are not replaced)".to_string(),
    }
}

/// The plan as `--format json` prints it (stdout).
fn plan_json(dep: &Deployment, running: &[Running]) -> serde_json::Value {
    let services: Vec<serde_json::Value> = dep
        .order
        .iter()
        .map(|name| {
            let p = &dep.planned[name];
            serde_json::json!({
                "service": name,
                "role": p.role.label(),
                "image": p.spec.image_name,
                "action": action(p, running),
                "spec": p.spec,
            })
        })
        .collect();
    serde_json::json!({
        "target": "docker",
        "env": dep.env.name,
        "project": dep.env.project,
        "docker_host": std::env::var("DOCKER_HOST").ok(),
        "revision": dep.revision,
        "prepare": dep.prepare,
        "services": services,
        "edges": dep.edges,
    })
}

fn print_plan(dep: &Deployment, running: &[Running]) {
    eprintln!(
        "deploying {} to the Docker host{} as project {}:",
        dep.env.name,
        std::env::var("DOCKER_HOST").map(|h| format!(" {h}")).unwrap_or_default(),
        dep.env.project
    );
    for p in &dep.prepare {
        let what = match &p.action {
            PrepareAction::Pull => format!("pull {}", p.image),
            PrepareAction::Build => format!("build {} with compose", p.image),
            PrepareAction::Missing(why) => format!("refused: {why}"),
        };
        eprintln!("  {:<12} image      {what}", p.service);
    }
    for service in &dep.order {
        let p = &dep.planned[service];
        eprintln!("  {service:<12} {:<10} {}", p.role.label(), action(p, running));
    }
    for e in &dep.edges {
        let port = &e.ports[0];
        eprintln!("  {:<12} edge       {}:{} -> {}", e.service, port.host_ip, port.host_port, e.env["GATEWAY_ROUTES"]);
    }
}

fn summary(dep: &Deployment, report: &[(String, Outcome)]) {
    let changed = report.iter().filter(|(_, o)| !matches!(o, Outcome::Unchanged)).count();
    eprintln!(
        "deployed {} to the Docker host ({} changed, {} unchanged)",
        dep.env.name,
        changed,
        report.len() - changed
    );
    for e in &dep.edges {
        let p = &e.ports[0];
        let host = if p.host_ip.is_empty() { "0.0.0.0" } else { &p.host_ip };
        eprintln!("  {} -> http://{host}:{}", e.service.trim_start_matches("edge-"), p.host_port);
    }
}

/// `deploy rollback --target docker`: every app that has an earlier spec goes back to it through
/// the same health-gated replace.
pub fn rollback(ctx: &Ctx, env_name: &str, timeout: Duration, dir: &Path) -> Result<ExitCode> {
    let env = DockerEnv::load(&ctx.root, env_name)?;
    let docker = Docker;
    let running = containers(&docker, &env.project)?;
    let apps: Vec<&Running> = running.iter().filter(|r| r.role == "app" && r.status == "running").collect();
    if apps.is_empty() {
        bail!("nothing of {env_name} runs on the Docker host (project {}); nothing to roll back", env.project);
    }
    let revision = image::Revision::of(&ctx.root).map_or_else(|_| "unknown".to_string(), |r| r.sha);
    let dep = Deployment {
        env,
        planned: BTreeMap::new(),
        order: Vec::new(),
        edges: Vec::new(),
        revision,
        copies: Vec::new(),
        prepare: Vec::new(),
    };
    let mut targets: Vec<RunSpec> = Vec::new();
    for app in &apps {
        match &app.previous {
            Some(p) => {
                eprintln!(
                    "{}: {} -> {}",
                    app.service,
                    app.spec.as_ref().map_or("?", |s| s.image_name.as_str()),
                    p.image_name
                );
                targets.push(p.clone());
            }
            None => eprintln!("{}: no earlier version recorded; left as it is", app.service),
        }
    }
    if targets.is_empty() {
        bail!("no service of {env_name} has an earlier version recorded; nothing to roll back");
    }
    if ctx.dry_run {
        eprintln!("dry run: nothing was changed on the Docker host");
        return Ok(ExitCode::SUCCESS);
    }
    // In dependency order, as deploy goes.
    let sequence = order(&targets.iter().map(|s| (s.service.clone(), s.depends_on.clone())).collect())?;
    targets.sort_by_key(|s| sequence.iter().position(|n| *n == s.service));
    for spec in &targets {
        if !docker.image_exists(&spec.image) {
            bail!(
                "the earlier image of {} ({}) is no longer on the Docker host; nothing was changed",
                spec.service,
                spec.image_name
            );
        }
    }
    for spec in &targets {
        let running = containers(&docker, &dep.env.project)?;
        eprintln!("{}:", spec.service);
        let outcome = replace_app(&docker, &dep, dir, spec, &running, timeout)
            .with_context(|| format!("rollback of {env_name} stopped at {}", spec.service))?;
        eprintln!("  {}: {}", spec.service, describe(&outcome));
    }
    eprintln!("rolled back {env_name} on the Docker host");
    Ok(ExitCode::SUCCESS)
}

/// `deploy status --target docker`: every container of the project, from its labels.
pub fn status(ctx: &Ctx, env_name: &str) -> Result<ExitCode> {
    let env = DockerEnv::load(&ctx.root, env_name)?;
    let running = containers(&Docker, &env.project)?;
    if ctx.ui.format == crate::runner::Format::Json {
        let containers: Vec<serde_json::Value> = running
            .iter()
            .map(|r| {
                serde_json::json!({
                    "service": r.service, "container": r.name, "role": r.role, "state": r.status,
                    "health": r.health, "image": r.spec.as_ref().map(|s| s.image_name.clone()),
                    "image_id": r.image_id, "started": r.started,
                    "previous": r.previous.as_ref().map(|p| p.image_name.clone()),
                })
            })
            .collect();
        let report = serde_json::json!({ "target": "docker", "env": env_name, "project": env.project,
            "containers": containers });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if running.is_empty() {
        println!("{env_name}: nothing deployed on the Docker host (project {})", env.project);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<18} {:<11} {:<10} {:<26} {:<14} {:<22} previous",
        "service", "role", "state", "image", "id", "started"
    );
    for r in &running {
        let image = r.spec.as_ref().map_or("?", |s| s.image_name.as_str());
        let id = short(&r.image_id);
        let state = r.health.clone().unwrap_or_else(|| r.status.clone());
        let previous = r.previous.as_ref().map_or("-".to_string(), |p| p.image_name.clone());
        let started: String = r.started.chars().take(19).collect();
        println!("{:<18} {:<11} {:<10} {:<26} {:<14} {:<22} {previous}", r.service, r.role, state, image, id, started);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> DockerEnv {
        DockerEnv {
            name: "staging".into(),
            project: "xtask-staging".into(),
            file: PathBuf::from("staging.env"),
            vars: BTreeMap::new(),
            compose_files: Vec::new(),
            services: None,
            publish: Vec::new(),
        }
    }

    fn service(yaml: &str) -> ComposeService {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("compose service {yaml}: {e}"))
    }

    /// Images as a table: `api:v1` carries our binary's exec-form check, `redis:7` none.
    fn image_health(image: &str) -> Result<Option<Vec<String>>> {
        Ok(match image {
            "sha256:api" => Some(vec!["CMD".into(), "/usr/local/bin/api".into(), "healthcheck".into()]),
            _ => None,
        })
    }

    fn planned(name: &str, yaml: &str, ours: bool) -> Result<Planned> {
        let ours = ours.then(|| ("sha256:api".to_string(), "api:v1".to_string()));
        plan_service(&image_health, &env(), name, service(yaml), ours)
    }

    /// Compose service -> `docker run` spec, rule by rule.
    #[test]
    fn compose_services_become_run_specs() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "restart and user",
                "{image: redis:7, restart: unless-stopped, user: \"999\"}",
                &["--restart", "unless-stopped", "--user", "999"],
            ),
            (
                "capabilities",
                "{image: redis:7, cap_drop: [ALL], cap_add: [NET_BIND_SERVICE]}",
                &["--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE"],
            ),
            (
                "security options and tmpfs",
                "{image: redis:7, security_opt: [\"no-new-privileges:true\"], tmpfs: /tmp}",
                &["--security-opt", "no-new-privileges:true", "--tmpfs", "/tmp"],
            ),
            ("limits", "{image: redis:7, mem_limit: 256m, cpus: 0.5}", &["--memory", "256m", "--cpus", "0.5"]),
            (
                "a named volume is the project's",
                "{image: redis:7, volumes: [\"data:/data\"]}",
                &["--volume", "xtask-staging_data:/data"],
            ),
            ("read-only root", "{image: redis:7, read_only: true}", &["--read-only"]),
            (
                "shell-form check",
                "{image: redis:7, healthcheck: {test: [CMD-SHELL, redis-cli ping], interval: 5s, retries: 3}}",
                &["--health-cmd", "redis-cli ping", "--health-interval", "5s", "--health-retries", "3"],
            ),
            ("a disabled check", "{image: redis:7, healthcheck: {disable: true}}", &["--no-healthcheck"]),
        ];
        for (what, yaml, options) in cases {
            let p = planned("redis", yaml, false).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(p.role, Role::Dependency, "{what}");
            assert_eq!(p.spec.options, options.iter().map(|o| o.to_string()).collect::<Vec<_>>(), "{what}");
        }
    }

    #[test]
    fn our_images_keep_their_own_exec_form_check_and_others_get_it_in_shell_form() {
        let same = "{healthcheck: {test: [CMD, /usr/local/bin/api, healthcheck]}}";
        let p = planned("api", same, true).expect("plans");
        assert_eq!((p.role, p.spec.healthcheck), (Role::App, true));
        assert!(p.spec.options.is_empty(), "the image's own check is kept: {:?}", p.spec.options);
        assert_eq!((p.spec.image.as_str(), p.spec.image_name.as_str()), ("sha256:api", "api:v1"));

        let other = "{healthcheck: {test: [CMD, /usr/local/bin/api, healthcheck, --path, /ready z]}}";
        let p = planned("api", other, true).expect("plans");
        assert_eq!(p.spec.options, ["--health-cmd", "/usr/local/bin/api healthcheck --path '/ready z'"]);

        let inherited = planned("api", "{}", true).expect("the image's check counts");
        assert!(inherited.spec.healthcheck);
    }

    #[test]
    fn environment_command_ports_grace_and_dependencies_are_carried() {
        let yaml = "{image: redis:7, environment: {A: \"1\", B: two}, command: [redis-server, --save, \"\"], \
                    ports: [\"127.0.0.1:16379:6379\"], stop_grace_period: 1m30s, depends_on: {postgres: {condition: service_healthy}}}";
        let p = planned("redis", yaml, false).expect("plans");
        assert_eq!(p.spec.env.get("B").map(String::as_str), Some("two"));
        assert_eq!(p.spec.command, ["redis-server", "--save", ""]);
        assert_eq!(p.ports.len(), 1);
        assert_eq!(p.spec.stop_grace, 90);
        assert_eq!(p.spec.depends_on, ["postgres"]);
        assert!(!p.spec.healthcheck, "no check anywhere: running is enough for a dependency");
    }

    #[test]
    fn what_deploy_cannot_honour_is_refused_by_name() {
        let no_check = planned("api", "{healthcheck: {test: [NONE]}}", true).expect_err("an app without a check");
        assert!(format!("{no_check:#}").contains("service api has no health check"), "{no_check:#}");
        let entry = planned("redis", "{image: redis:7, entrypoint: [sh]}", false).expect_err("entrypoint");
        assert!(format!("{entry:#}").contains("`entrypoint` is not supported"), "{entry:#}");
        let no_image = planned("redis", "{}", false).expect_err("no image");
        assert!(format!("{no_image:#}").contains("service redis has no image"), "{no_image:#}");
        assert!(
            serde_yaml::from_str::<ComposeService>("{image: x, privileged: true}").is_err(),
            "unknown keys refused"
        );
    }

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
    fn dependency_order_and_cycles() {
        let mk = |name: &str, deps: &[&str]| Planned {
            service: name.into(),
            role: Role::App,
            spec: RunSpec {
                version: 1,
                service: name.into(),
                image: "i".into(),
                image_name: "i".into(),
                env: BTreeMap::new(),
                options: Vec::new(),
                command: Vec::new(),
                healthcheck: true,
                stop_grace: 1,
                ports: Vec::new(),
                depends_on: deps.iter().map(|d| d.to_string()).collect(),
            },
            ports: Vec::new(),
        };
        let needs = |planned: BTreeMap<String, Planned>| -> BTreeMap<String, Vec<String>> {
            planned.into_iter().map(|(k, p)| (k, p.spec.depends_on)).collect()
        };
        let planned: BTreeMap<String, Planned> = [
            mk("gateway", &["api"]),
            mk("worker", &["api", "postgres"]),
            mk("api", &["postgres", "redis"]),
            mk("postgres", &[]),
            mk("redis", &[]),
        ]
        .into_iter()
        .map(|p| (p.service.clone(), p))
        .collect();
        assert_eq!(order(&needs(planned)).expect("test input"), ["postgres", "redis", "api", "gateway", "worker"]);
        let cyclic: BTreeMap<String, Planned> =
            [mk("a", &["b"]), mk("b", &["a"])].into_iter().map(|p| (p.service.clone(), p)).collect();
        assert!(order(&needs(cyclic)).expect_err("refused").to_string().contains("cycle: a, b"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("redis-cli"), "redis-cli");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(unescape("pg_isready -U \"$$POSTGRES_USER\""), "pg_isready -U \"$POSTGRES_USER\"");
    }

    #[test]
    fn every_committed_environment_loads() {
        let root = crate::project_root();
        let dir = root.join(ENV_DIR);
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("infra/compose/env exists") {
            let name = entry.expect("test input").file_name().to_string_lossy().into_owned();
            let Some(env) = name.strip_suffix(".env") else { continue };
            let loaded = DockerEnv::load(&root, env).expect("loads");
            assert!(loaded.publish.iter().all(|p| loaded.services.as_ref().is_none_or(|s| s.contains(p))), "{name}");
            seen += 1;
        }
        assert!(seen >= 2, "staging and prod are defined");
    }
}
