//! `cargo xtask dev up|down|status|logs|reset|urls|base`: the local stack in infra/compose.
//!
//! `up` builds the service images (incrementally: only what changed recompiles), starts the
//! compose project, waits until every container is healthy while showing who is up and who is
//! waiting, and prints the URLs. A container that never turns healthy fails `up` with its last
//! log lines; the rest keeps running for inspection. `--offline` adds the override that builds
//! Postgres, Redis and Prometheus from a local Debian base (`dev base`) instead of pulling them.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::commands::image;
use crate::plan::{Plan, Step, Task};
use crate::process::Cmd;
use crate::runner::Format;
use crate::tools::{DEBOOTSTRAP, DOCKER};
use crate::workspace::Workspace;
use crate::{Ctx, UsageError};

pub const COMPOSE_DIR: &str = "infra/compose";
pub const COMPOSE_FILE: &str = "infra/compose/docker-compose.yml";
pub const OFFLINE_FILE: &str = "infra/compose/docker-compose.offline.yml";
pub const BASE_IMAGE: &str = "xtask-debian-base:bookworm";
/// Dependencies the offline override builds (the rest are our images or need a registry).
const OFFLINE_BUILT: &[&str] = &["postgres", "redis", "prometheus", "alertmanager"];
/// What `--deps-only` starts: what `cargo xtask test` needs.
const DEPS_ONLY: &[&str] = &["postgres", "redis"];

/// The dependencies' published ports: (compose service, variable naming the host port, its
/// default, what it is). Our own services' come from `[package.metadata.service]` (`published`).
const DEPENDENCY_PORTS: &[(&str, &str, u16, &str)] = &[
    ("prometheus", "PROMETHEUS_PORT", 9090, "Prometheus"),
    ("alertmanager", "ALERTMANAGER_PORT", 9093, "Alertmanager"),
    ("grafana", "GRAFANA_PORT", 3000, "Grafana (observability profile)"),
    ("postgres", "POSTGRES_PORT", 5432, "Postgres"),
    ("redis", "REDIS_PORT", 6379, "Redis"),
];

/// Dependencies that do not speak HTTP (no URL to load-test).
pub const NOT_HTTP: &[&str] = &["postgres", "redis"];

/// A port the dev stack publishes on loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The compose service.
    pub service: String,
    /// The `.env` variable naming the host port.
    pub var: String,
    pub default: u16,
    /// What people call it.
    pub what: String,
}

/// `NAME_PORT` for a service: the variable its compose entry publishes on (a tidy test checks).
pub fn port_var(service: &str) -> String {
    format!("{}_PORT", service.to_ascii_uppercase().replace('-', "_"))
}

/// Every published port: each workspace service on `NAME_PORT` (default: the port its
/// `[package.metadata.service]` declares), then the dependencies.
pub fn published(ws: &Workspace) -> Vec<Published> {
    let mut ports: Vec<Published> = ws
        .services()
        .map(|(name, meta)| Published {
            service: name.clone(),
            var: port_var(name),
            default: meta.port,
            what: name.clone(),
        })
        .collect();
    ports.extend(DEPENDENCY_PORTS.iter().map(|(service, var, default, what)| Published {
        service: service.to_string(),
        var: var.to_string(),
        default: *default,
        what: what.to_string(),
    }));
    ports
}

/// Run the local stack: services, Postgres, Redis, Prometheus (Grafana under a profile).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Compose project name: several stacks can run side by side.
    #[arg(long, global = true, value_name = "NAME", default_value = "xtask-dev", env = "XTASK_DEV_PROJECT")]
    pub project: String,
    #[command(subcommand)]
    pub command: DevCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DevCommand {
    /// Build what changed, start the stack, wait until every container is healthy, print URLs.
    Up(UpArgs),
    /// Stop and remove the containers (data volumes are kept).
    Down,
    /// Every container of the stack: state, health, ports.
    Status,
    /// Show (or follow) the logs of one service or all.
    Logs(LogsArgs),
    /// Remove the containers and the data volumes (asks first).
    Reset(ResetArgs),
    /// Print the URLs of the stack.
    Urls,
    /// Make the local Debian base image the offline override builds on (debootstrap).
    Base(BaseArgs),
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct UpArgs {
    /// Build Postgres, Redis and Prometheus locally from Debian packages instead of pulling them.
    #[arg(long)]
    pub offline: bool,
    /// Only Postgres and Redis (what the tests need).
    #[arg(long)]
    pub deps_only: bool,
    /// Also start Grafana (upstream image: needs a registry).
    #[arg(long)]
    pub observability: bool,
    /// How long to wait for every container to be healthy, e.g. `3m`, `90s` (a bare number is
    /// seconds).
    #[arg(long, value_name = "DURATION", default_value = "180s", value_parser = crate::duration::flag)]
    pub timeout: Duration,
    /// Extra compose file layered on top (repeatable), e.g. local overrides.
    #[arg(long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogsArgs {
    /// Only this compose service (e.g. api, postgres).
    pub service: Option<String>,
    /// Keep printing new lines.
    #[arg(short, long)]
    pub follow: bool,
    /// Lines of history per container.
    #[arg(long, default_value_t = 100)]
    pub tail: usize,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ResetArgs {
    /// Do not ask.
    #[arg(long)]
    pub yes: bool,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BaseArgs {
    /// Debian mirror for debootstrap.
    #[arg(long, value_name = "URL", default_value = "http://deb.debian.org/debian")]
    pub mirror: String,
    /// Remake the root file system even if a finished one is cached.
    #[arg(long)]
    pub fresh: bool,
}

/// `docker compose` (v2 plugin) when it exists, else `docker-compose` (v1.29).
pub fn compose_program() -> Result<Vec<String>> {
    if crate::tools::compose_v2().is_some() {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    if crate::tools::DOCKER_COMPOSE.locate().is_some() {
        return Ok(vec!["docker-compose".into()]);
    }
    bail!(
        "neither `docker compose` (v2) nor `docker-compose` (v1.29) is installed; install: {}",
        crate::tools::DOCKER_COMPOSE.install_hint
    )
}

/// The `KEY=value` lines of infra/compose/.env (process variables win, as in compose).
pub fn env_values(root: &Path, ports: &[Published]) -> Result<BTreeMap<String, String>> {
    let dir = root.join(COMPOSE_DIR);
    let file = [dir.join(".env"), dir.join(".env.example")].into_iter().find(|f| f.is_file());
    let mut values = match file {
        Some(file) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            crate::env_file::parse(&text, &file)?
        }
        None => BTreeMap::new(),
    };
    // The process environment wins, as compose lets it.
    for (k, v) in std::env::vars() {
        if values.contains_key(&k) || ports.iter().any(|p| p.var == k) {
            values.insert(k, v);
        }
    }
    Ok(values)
}

fn port_of(values: &BTreeMap<String, String>, var: &str, default: u16) -> Result<u16> {
    match values.get(var) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| UsageError(format!("{var}={v} is not a port number; fix it in {COMPOSE_DIR}/.env")).into()),
    }
}

/// The compose command line for this project: program, project, files, env file.
#[derive(Clone, Debug, Serialize)]
pub struct Compose {
    pub program: Vec<String>,
    pub project: String,
    pub files: Vec<PathBuf>,
    pub env_file: PathBuf,
    /// Variables compose interpolates that xtask decides (IMAGE_TAG).
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
}

impl Compose {
    pub fn new(ctx: &Ctx, project: &str, offline: bool, extra: &[PathBuf]) -> Result<Compose> {
        validate_project(project)?;
        let mut files = vec![ctx.root.join(COMPOSE_FILE)];
        if offline {
            files.push(ctx.root.join(OFFLINE_FILE));
        }
        for f in extra {
            let path = if f.is_absolute() { f.clone() } else { std::env::current_dir()?.join(f) };
            if !path.is_file() {
                return Err(UsageError(format!("--file {}: no such compose file", f.display())).into());
            }
            files.push(path);
        }
        let tag = image::Revision::of(&ctx.root).map(|r| r.tag).unwrap_or_else(|_| "unknown".into());
        Ok(Compose {
            program: compose_program()?,
            project: project.to_string(),
            files,
            env_file: ctx.root.join(COMPOSE_DIR).join(".env"),
            env: BTreeMap::from([("IMAGE_TAG".to_string(), tag)]),
            cwd: ctx.root.clone(),
        })
    }

    /// Arguments after the program for one compose subcommand.
    pub fn args(&self, sub: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = self.program[1..].to_vec();
        args.extend(["--project-name".into(), self.project.clone()]);
        for f in &self.files {
            args.extend(["--file".into(), f.display().to_string()]);
        }
        args.extend(["--env-file".into(), self.env_file.display().to_string()]);
        args.extend(sub.iter().map(|s| s.to_string()));
        args
    }

    pub fn step(&self, name: &str, description: &str, sub: &[&str]) -> Step {
        let mut step = Step::exec(name, description, &self.program[0], self.args(sub), &self.cwd).requiring(&DOCKER);
        for (k, v) in &self.env {
            step = step.with_env(k, v);
        }
        step
    }

    pub fn command(&self, sub: &[&str]) -> Cmd {
        Cmd::new(&self.program[0]).args(self.args(sub)).envs(&self.env).current_dir(&self.cwd)
    }
}

fn validate_project(project: &str) -> Result<()> {
    let ok = !project.is_empty()
        && project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && project.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "--project {project}: use lowercase letters, digits, '-' and '_' (compose project names)"
        ))
        .into())
    }
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<ExitCode> {
    match &args.command {
        DevCommand::Up(up) => ctx.execute(&up_plan(ctx, &args.project, up)?),
        DevCommand::Base(base) => ctx.execute(&base_plan(ctx, base)?),
        DevCommand::Down => {
            let compose = Compose::new(ctx, &args.project, false, &[])?;
            let mut plan = Plan::new("dev down");
            plan.push(compose.step(
                "dev:down",
                "stop and remove the containers (volumes kept)",
                &["down", "--remove-orphans"],
            ));
            ctx.execute(&plan)
        }
        DevCommand::Reset(reset) => {
            if !reset.yes {
                confirm_reset(&args.project)?;
            }
            let compose = Compose::new(ctx, &args.project, false, &[])?;
            let mut plan = Plan::new("dev reset");
            plan.push(compose.step(
                "dev:reset",
                "remove the containers and the data volumes",
                &["down", "--volumes", "--remove-orphans"],
            ));
            ctx.execute(&plan)
        }
        DevCommand::Status => status(ctx, &args.project),
        DevCommand::Logs(logs) => {
            let compose = Compose::new(ctx, &args.project, false, &[])?;
            let tail = logs.tail.to_string();
            let mut sub = vec!["logs", "--tail", tail.as_str()];
            if logs.follow {
                sub.push("--follow");
            }
            if let Some(s) = &logs.service {
                sub.push(s);
            }
            let status = compose.command(&sub).status().context("running compose logs")?;
            Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILED) })
        }
        DevCommand::Urls => {
            let ports = published(&ctx.workspace()?);
            let values = env_values(&ctx.root, &ports)?;
            match ctx.ui.format {
                Format::Json | Format::Sarif => {
                    println!("{}", serde_json::to_string_pretty(&url_map(&values, &ports)?)?)
                }
                Format::Human => print!("{}", urls(&values, &ports)?),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn confirm_reset(project: &str) -> Result<()> {
    let question = format!("This deletes the data volumes (Postgres, Redis, Prometheus) of dev stack `{project}`.");
    if !std::io::stdin().is_terminal() {
        return Err(UsageError(format!("{question} Pass --yes to confirm (no terminal to ask on)")).into());
    }
    eprint!("{question} Type `yes` to go on: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        return Err(UsageError("reset cancelled; nothing was removed".into()).into());
    }
    Ok(())
}

pub fn urls(values: &BTreeMap<String, String>, ports: &[Published]) -> Result<String> {
    let mut out = String::new();
    for (p, url) in url_list(values, ports)? {
        out.push_str(&format!("  {:<32} {url}\n", p.what));
    }
    Ok(out)
}

/// Service name to URL, for `dev urls --format json`.
fn url_map(values: &BTreeMap<String, String>, ports: &[Published]) -> Result<BTreeMap<String, String>> {
    Ok(url_list(values, ports)?.into_iter().map(|(p, url)| (p.service.clone(), url)).collect())
}

/// Each published port with the URL it is reached at.
fn url_list<'p>(values: &BTreeMap<String, String>, ports: &'p [Published]) -> Result<Vec<(&'p Published, String)>> {
    let mut out = Vec::new();
    for p in ports {
        let Published { service, var, default, .. } = p;
        let port = port_of(values, var, *default)?;
        let url = match service.as_str() {
            "postgres" => format!(
                "postgres://{}@127.0.0.1:{port}/{}",
                values.get("POSTGRES_USER").map_or("postgres", String::as_str),
                values.get("POSTGRES_DB").map_or("jobs", String::as_str)
            ),
            "redis" => format!("redis://127.0.0.1:{port}"),
            _ => format!("http://127.0.0.1:{port}"),
        };
        out.push((p, url));
    }
    Ok(out)
}

/// The base image the offline override builds on: minimal Debian bookworm, made with debootstrap.
pub fn base_plan(ctx: &Ctx, args: &BaseArgs) -> Result<Plan> {
    let ws = ctx.workspace()?;
    let mut plan = Plan::new("dev base");
    let dir = image::output_dir(&ws).join("rootfs/debian-base");
    if args.fresh || !dir.join(image::ROOTFS_MARKER).is_file() {
        plan.push(
            Step::internal(
                "dev:debootstrap",
                "minimal Debian bookworm via debootstrap",
                image::Debootstrap {
                    dir: dir.clone(),
                    suite: "bookworm".into(),
                    mirror: args.mirror.clone(),
                    include: vec!["ca-certificates".into()],
                },
                "cargo xtask dev base --fresh",
            )
            .requiring(&DEBOOTSTRAP),
        );
    }
    plan.push(
        Step::internal(
            "dev:base-import",
            &format!("docker import {BASE_IMAGE}"),
            image::ImportRootfs {
                dir,
                tag: BASE_IMAGE.into(),
                changes: vec!["ENV DEBIAN_FRONTEND=noninteractive".into()],
            },
            "cargo xtask dev base",
        )
        .requiring(&DOCKER),
    );
    Ok(plan)
}

/// What `dev up` waits for, fixed at plan time.
#[derive(Clone, Debug, Serialize)]
pub struct DevUp {
    pub compose: Compose,
    pub services: Vec<String>,
    /// (service, variable, host port) of every port this `up` publishes.
    pub ports: Vec<(String, String, u16)>,
    pub timeout_secs: u64,
    pub urls: String,
}

pub fn up_plan(ctx: &Ctx, project: &str, args: &UpArgs) -> Result<Plan> {
    if !ctx.root.join(COMPOSE_DIR).join(".env").is_file() {
        let example = ctx.root.join(COMPOSE_DIR).join(".env.example");
        let env = ctx.root.join(COMPOSE_DIR).join(".env");
        // Copying a template is not a side effect worth a dry run: the plan needs its values.
        if !ctx.dry_run {
            std::fs::copy(&example, &env)
                .with_context(|| format!("copying {} to {}", example.display(), env.display()))?;
            eprintln!("note: created {COMPOSE_DIR}/.env from .env.example (local values; untracked)");
        }
    }
    let compose = Compose::new(ctx, project, args.offline, &args.files)?;
    let mut plan = Plan::new("dev up");
    let ws = ctx.workspace()?;
    // Postgres and Redis first; our services as the workspace declares them; then Prometheus.
    let mut services: Vec<String> = DEPS_ONLY.iter().map(|s| s.to_string()).collect();
    if !args.deps_only {
        services.extend(ws.services().map(|(name, _)| name.clone()));
        services.push("prometheus".into());
        services.push("alertmanager".into());
    }
    if args.observability {
        if args.deps_only {
            return Err(UsageError("--observability and --deps-only do not go together".into()).into());
        }
        services.push("grafana".into());
        if args.offline {
            plan.notes.push("grafana has no Debian package: the observability profile pulls grafana/grafana".into());
        }
    }
    if !args.deps_only {
        plan.extend(image::plan(ctx, &ws, &image::BuildArgs::default())?);
    }
    if args.offline {
        if !image::image_exists(BASE_IMAGE) {
            plan.notes.push(format!("no {BASE_IMAGE} yet: making it first (debootstrap, about a minute)"));
            plan.extend(base_plan(ctx, &BaseArgs { mirror: "http://deb.debian.org/debian".into(), fresh: false })?);
        }
        let built: Vec<&str> = OFFLINE_BUILT.iter().copied().filter(|s| services.iter().any(|x| x == s)).collect();
        let mut sub = vec!["build"];
        sub.extend(&built);
        plan.push(compose.step(
            "dev:build-deps",
            &format!("build {} from Debian packages on {BASE_IMAGE}", built.join(", ")),
            &sub,
        ));
    }
    let published = published(&ws);
    let values = env_values(&ctx.root, &published)?;
    let mut ports = Vec::new();
    for Published { service, var, default, .. } in &published {
        if services.iter().any(|s| s == service) {
            ports.push((service.clone(), var.clone(), port_of(&values, var, *default)?));
        }
    }
    let mut sub = vec!["up", "--detach", "--remove-orphans"];
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    sub.extend(&names);
    let mut compose_up = compose.clone();
    if args.observability {
        compose_up.env.insert("COMPOSE_PROFILES".into(), "observability".into());
    }
    // A taken port is a configuration problem: say so before building or starting anything.
    let wanted: Vec<(String, String, u16)> = ports.clone();
    if !ctx.dry_run {
        let running = containers(project)?;
        check_ports(&wanted, &running)?;
    }
    let up = DevUp {
        compose: compose_up,
        services: services.clone(),
        ports,
        timeout_secs: args.timeout.as_secs(),
        urls: urls(&values, &published)?,
    };
    plan.push(
        Step::internal(
            "dev:up",
            &format!("start {} and wait until healthy (at most {}s)", services.join(", "), args.timeout.as_secs()),
            up,
            "cargo xtask dev up",
        )
        .requiring(&DOCKER),
    );
    Ok(plan)
}

/// One container of the project as `docker ps` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerState {
    pub service: String,
    pub name: String,
    /// created, running, exited, ...
    pub state: String,
    /// healthy, unhealthy, starting, or "-" without a health check.
    pub health: String,
    pub ports: String,
}

pub fn containers(project: &str) -> Result<Vec<ContainerState>> {
    let list = xtask_kit::docker::with_label(&format!("com.docker.compose.project={project}"))?;
    Ok(states(&list))
}

/// Docker's containers as the dev stack's states, by service; `-` for no health check.
fn states(list: &[xtask_kit::docker::Container]) -> Vec<ContainerState> {
    let mut states: Vec<ContainerState> = list
        .iter()
        .map(|c| ContainerState {
            service: c.label("com.docker.compose.service").to_string(),
            name: c.name().to_string(),
            state: c.state.status.clone(),
            health: c.health().unwrap_or("-").to_string(),
            ports: c.published(),
        })
        .collect();
    states.sort_by(|a, b| a.service.cmp(&b.service));
    states
}

fn status(ctx: &Ctx, project: &str) -> Result<ExitCode> {
    validate_project(project)?;
    let list = containers(project)?;
    match ctx.ui.format {
        Format::Json | Format::Sarif => println!("{}", serde_json::to_string_pretty(&list)?),
        Format::Human => {
            if list.is_empty() {
                println!("dev stack `{project}`: no containers (start it with `cargo xtask dev up`)");
            } else {
                println!("{:<12} {:<36} {:<10} {:<10} ports", "service", "container", "state", "health");
                for c in &list {
                    println!("{:<12} {:<36} {:<10} {:<10} {}", c.service, c.name, c.state, c.health, c.ports);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuse before starting anything when a port is taken by something other than this stack.
fn check_ports(ports: &[(String, String, u16)], running: &[ContainerState]) -> Result<()> {
    for (service, var, port) in ports {
        let ours = running.iter().any(|c| &c.service == service && c.state == "running");
        if ours {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", *port)).is_err() {
            return Err(UsageError(format!(
                "port 127.0.0.1:{port} ({var}, for {service}) is already in use; stop what holds it or set {var} in {COMPOSE_DIR}/.env"
            ))
            .into());
        }
    }
    Ok(())
}

fn is_ready(c: &ContainerState) -> bool {
    c.state == "running" && (c.health == "healthy" || c.health == "-")
}

fn has_failed(c: &ContainerState) -> bool {
    c.health == "unhealthy" || matches!(c.state.as_str(), "exited" | "dead")
}

/// What one look at the stack's containers says about `dev up`.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// Every service is running and healthy (or has no health check), and compose finished.
    Healthy,
    Waiting,
    /// Stop: the services whose logs explain it, and one line saying why.
    Failed {
        culprits: Vec<String>,
        why: String,
    },
}

/// The wait's decision, from the services asked for, the containers `docker ps` lists, whether
/// `compose up` has finished (and how), and whether the deadline passed.
fn classify(
    services: &[String],
    list: &[ContainerState],
    compose_done: Option<bool>,
    timed_out: bool,
    timeout_secs: u64,
) -> Wait {
    let expected: Vec<&ContainerState> =
        services.iter().filter_map(|s| list.iter().find(|c| &c.service == s)).collect();
    let all_ready = expected.len() == services.len() && expected.iter().all(|c| is_ready(c));
    if all_ready && compose_done == Some(true) {
        return Wait::Healthy;
    }
    let failed: Vec<&ContainerState> = expected.iter().copied().filter(|c| has_failed(c)).collect();
    if failed.is_empty() && compose_done != Some(false) && !timed_out {
        return Wait::Waiting;
    }
    let culprits: Vec<String> = if failed.is_empty() {
        expected.iter().filter(|c| !is_ready(c)).map(|c| c.service.clone()).collect()
    } else {
        failed.iter().map(|c| c.service.clone()).collect()
    };
    let names = culprits.join(", ");
    let mut why = if !failed.is_empty() {
        format!("{names} failed its health check or exited")
    } else if timed_out {
        format!("not healthy within {timeout_secs}s: {names}")
    } else {
        format!(
            "compose up failed (see above){}",
            if names.is_empty() { String::new() } else { format!("; not healthy: {names}") }
        )
    };
    let missing: Vec<&str> =
        services.iter().filter(|s| !list.iter().any(|c| &c.service == *s)).map(String::as_str).collect();
    if !missing.is_empty() {
        why.push_str(&format!("; never created: {}", missing.join(", ")));
    }
    Wait::Failed { culprits, why }
}

fn summary_line(task: &DevUp, list: &[ContainerState], elapsed: Duration) -> String {
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for s in &task.services {
        match list.iter().find(|c| &c.service == s) {
            Some(c) if is_ready(c) => ready.push(s.clone()),
            Some(c) => {
                waiting.push(format!("{s} ({})", if c.health == "-" { c.state.as_str() } else { c.health.as_str() }))
            }
            None => waiting.push(format!("{s} (not created)")),
        }
    }
    format!(
        "{:>3}s  healthy: {}  |  waiting: {}",
        elapsed.as_secs(),
        if ready.is_empty() { "-".to_string() } else { ready.join(", ") },
        if waiting.is_empty() { "-".to_string() } else { waiting.join(", ") }
    )
}

fn last_logs(project: &str, c: &ContainerState, log: &mut dyn std::io::Write) -> Result<()> {
    writeln!(log, "---- {} ({}; {} {}): last log lines ----", c.service, c.name, c.state, c.health)?;
    let out = Cmd::new("docker").args(["logs", "--tail", "30", &c.name]).output()?;
    log.write_all(&out.stdout)?;
    log.write_all(&out.stderr)?;
    let health = Cmd::new("docker")
        .args([
            "inspect",
            "--format",
            "{{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}",
            &c.name,
        ])
        .output()?;
    let health = String::from_utf8_lossy(&health.stdout);
    if !health.trim().is_empty() {
        writeln!(log, "---- {}: health check output ----\n{}", c.service, health.trim())?;
    }
    writeln!(
        log,
        "(the stack is left running: `cargo xtask dev status --project {project}`, `cargo xtask dev logs {}`)",
        c.service
    )?;
    Ok(())
}

impl Task for DevUp {
    fn summary(&self) -> String {
        format!(
            "check ports {}, {} up --detach {}, wait for health (at most {}s)",
            self.ports.iter().map(|p| p.2.to_string()).collect::<Vec<_>>().join(","),
            self.compose.program.join(" "),
            self.services.join(" "),
            self.timeout_secs
        )
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("dev-up", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        up(self, log)
    }
}

/// The internal step: compose up (in its own process group, so Ctrl-C here never interrupts it
/// half-way), then wait for health with a progress line, then print the URLs.
pub fn up(task: &DevUp, log: &mut dyn std::io::Write) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let project = &task.compose.project;
    check_ports(&task.ports, &containers(project)?)?;
    let mut sub = vec!["up", "--detach", "--remove-orphans"];
    sub.extend(task.services.iter().map(String::as_str));
    writeln!(
        log,
        "$ {}",
        crate::plan::shell_line(&task.compose.env, &task.compose.program[0], &task.compose.args(&sub))
    )?;
    let output_path = std::env::temp_dir().join(format!("xtask-dev-up-{}-{}.log", project, std::process::id()));
    let output = std::fs::File::create(&output_path)?;
    let mut child = task
        .compose
        .command(&sub)
        .to_command()
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .process_group(0)
        .spawn()
        .context("starting compose")?;

    let started = Instant::now();
    let timeout = Duration::from_secs(task.timeout_secs);
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    let mut last_print = Instant::now() - Duration::from_secs(60);
    let mut compose_done: Option<bool> = None;
    loop {
        if compose_done.is_none()
            && let Some(status) = child.try_wait()?
        {
            compose_done = Some(status.success());
            let text = std::fs::read_to_string(&output_path).unwrap_or_default();
            if !status.success() {
                log.write_all(text.as_bytes())?;
            }
        }
        let list = containers(project)?;
        let line = summary_line(task, &list, started.elapsed());
        let changed = line.split_once("healthy:").map(|p| p.1) != last_line.split_once("healthy:").map(|p| p.1);
        if tty {
            eprint!("\r\x1b[2K  {line}");
        } else if changed || last_print.elapsed() >= Duration::from_secs(5) {
            writeln!(log, "  {line}")?;
            last_print = Instant::now();
        }
        last_line = line;
        let verdict = classify(&task.services, &list, compose_done, started.elapsed() >= timeout, task.timeout_secs);
        if tty && verdict != Wait::Waiting {
            eprintln!();
        }
        match verdict {
            Wait::Waiting => {}
            Wait::Healthy => {
                let _ = std::fs::remove_file(&output_path);
                writeln!(log, "dev stack `{project}` is healthy after {}s:", started.elapsed().as_secs())?;
                write!(log, "{}", task.urls)?;
                return Ok(());
            }
            Wait::Failed { culprits, why } => {
                if compose_done.is_none() {
                    // compose is still waiting on a dependency's health; let it go on by itself.
                    writeln!(
                        log,
                        "(compose is still running in the background; its output: {})",
                        output_path.display()
                    )?;
                }
                for c in list.iter().filter(|c| culprits.contains(&c.service)) {
                    last_logs(project, c, log)?;
                }
                bail!("{why}");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four containers as `docker inspect` describes them.
    fn ps() -> Vec<ContainerState> {
        let container = |service: &str, status: &str, health: Option<&str>, ports: serde_json::Value| {
            serde_json::json!({"Name": format!("/xtask-dev_{service}_1"),
                "State": {"Status": status, "Health": health.map(|h| serde_json::json!({"Status": h}))},
                "Config": {"Labels": {"com.docker.compose.service": service}},
                "NetworkSettings": {"Ports": ports}})
        };
        let list: Vec<xtask_kit::docker::Container> = serde_json::from_value(serde_json::json!([
            container(
                "api",
                "running",
                Some("healthy"),
                serde_json::json!({"8081/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}]})
            ),
            container("worker", "running", Some("starting"), serde_json::Value::Null),
            container("postgres", "exited", None, serde_json::json!({"5432/tcp": null})),
            container("redis", "running", None, serde_json::Value::Null),
        ]))
        .expect("docker's shape");
        states(&list)
    }

    fn services(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn docker_containers_become_container_states_with_their_health() {
        let list = ps();
        let got: Vec<(&str, &str, &str)> =
            list.iter().map(|c| (c.service.as_str(), c.state.as_str(), c.health.as_str())).collect();
        assert_eq!(
            got,
            [
                ("api", "running", "healthy"),
                ("postgres", "exited", "-"),
                ("redis", "running", "-"),
                ("worker", "running", "starting")
            ]
        );
        assert_eq!(list[0].ports, "127.0.0.1:8081->8081/tcp");
        assert_eq!(list[1].ports, "", "postgres is not published");
    }

    #[test]
    fn the_wait_ends_healthy_only_when_every_service_is_ready_and_compose_finished() {
        let list = ps();
        let ready = services(&["api", "redis"]);
        assert_eq!(classify(&ready, &list, Some(true), false, 60), Wait::Healthy);
        assert_eq!(classify(&ready, &list, None, false, 60), Wait::Waiting, "compose is still working");
        assert_eq!(classify(&services(&["api", "worker"]), &list, Some(true), false, 60), Wait::Waiting);
    }

    #[test]
    fn an_exited_or_unhealthy_service_stops_the_wait_naming_it() {
        let list = ps();
        let Wait::Failed { culprits, why } = classify(&services(&["api", "postgres"]), &list, None, false, 60) else {
            panic!("postgres exited")
        };
        assert_eq!(culprits, ["postgres"]);
        assert_eq!(why, "postgres failed its health check or exited");
    }

    #[test]
    fn a_timeout_names_who_is_not_ready_and_who_was_never_created() {
        let list = ps();
        let Wait::Failed { culprits, why } = classify(&services(&["worker", "gateway"]), &list, None, true, 90) else {
            panic!("timed out")
        };
        assert_eq!(culprits, ["worker"]);
        assert_eq!(why, "not healthy within 90s: worker; never created: gateway");
    }

    #[test]
    fn a_failed_compose_up_stops_the_wait() {
        let list = ps();
        let verdict = classify(&services(&["api"]), &list, Some(false), false, 60);
        assert_eq!(verdict, Wait::Failed { culprits: Vec::new(), why: "compose up failed (see above)".into() });
    }

    #[test]
    fn urls_follow_the_env_file_and_print_as_json_by_service() {
        let ports = published(&crate::fixture_workspace());
        let values: BTreeMap<String, String> = [("API_PORT".to_string(), "9081".to_string())].into();
        let map = url_map(&values, &ports).expect("urls");
        assert_eq!(map["api"], "http://127.0.0.1:9081");
        assert_eq!(map["redis"], "redis://127.0.0.1:6379");
        assert!(urls(&values, &ports).expect("text").contains("http://127.0.0.1:9081"));
        let bad: BTreeMap<String, String> = [("API_PORT".to_string(), "eighty".to_string())].into();
        assert!(format!("{:#}", urls(&bad, &ports).expect_err("not a port")).contains("API_PORT=eighty"));
    }

    /// The dev stack's services and ports come from `[package.metadata.service]`, not a list.
    #[test]
    fn published_ports_follow_each_services_metadata() {
        let ws = crate::fixture_workspace();
        let ports = published(&ws);
        for (name, meta) in ws.services() {
            let p = ports.iter().find(|p| &p.service == name).expect("every service is published");
            assert_eq!((p.var.as_str(), p.default), (port_var(name).as_str(), meta.port));
        }
        assert_eq!(port_var("job-runner"), "JOB_RUNNER_PORT");
        assert!(ports.iter().any(|p| p.service == "postgres" && p.var == "POSTGRES_PORT"));
    }

    #[test]
    fn project_names_are_what_compose_accepts() {
        assert!(validate_project("xtask-dev_2").is_ok());
        for bad in ["", "Dev", "-dev", "dev stack", "dev.1"] {
            assert!(validate_project(bad).is_err(), "{bad:?}");
        }
    }
}
