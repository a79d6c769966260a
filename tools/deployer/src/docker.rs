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
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use xtask_kit::UsageError;
use xtask_kit::handoff::{ApplyArgs, DeployArgs, EnvArgs, RollbackArgs, Target, VerifyArgs};

use crate::compose::{ComposeService, compose_command, compose_config};
use crate::engine::{Docker, Running, containers, ensure_network, retire, short, wait_healthy, write_private};
use crate::env::DockerEnv;
use crate::history::{self, Release, State};
use crate::spec::{Planned, Role, RunSpec, app_image, edge_identity, edge_spec, order, plan_service};
use crate::verify::{self, Verdict};
use crate::{Ctx, confirm};

/// The compose program xtask found on this machine.
fn compose_program(ctx: &Ctx) -> Result<&[String]> {
    ctx.facts.compose.as_deref().context("xtask handed over no compose program (facts.compose)")
}

/// Everything one deploy needs to know, resolved before anything changes.
pub struct Deployment {
    pub env: DockerEnv,
    pub planned: BTreeMap<String, Planned>,
    pub order: Vec<String>,
    pub edges: Vec<RunSpec>,
    pub revision: String,
    /// The environment's copies of the compose files (what `compose build` runs on).
    pub copies: Vec<PathBuf>,
    /// Images to fetch or build before anything is replaced (or that are missing for good).
    pub prepare: Vec<Prepare>,
}

/// An image the Docker host lacks, and what deploy will do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Prepare {
    pub service: String,
    pub image: String,
    #[serde(flatten)]
    pub action: PrepareAction,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "action", content = "why", rename_all = "kebab-case")]
pub enum PrepareAction {
    /// Pinned by digest: `docker pull`.
    Pull,
    /// Compose can build it.
    Build,
    /// Neither: the deploy is refused with this line.
    Missing(String),
}

/// Our image for a service: (what `docker run` is given, its name for people).
type Images<'a> = &'a dyn Fn(&str) -> Result<(String, String)>;

/// Service -> (what `docker run` is given, its name for people).
type ImageMap = BTreeMap<String, (String, String)>;

pub fn plan(ctx: &Ctx, env: DockerEnv, images: Images<'_>, revision: &str, dir: &Path) -> Result<Deployment> {
    let docker = Docker;
    let (config, compose_copies) = compose_config(compose_program(ctx)?, &ctx.root, &env, dir)?;
    let ours: BTreeSet<String> = ctx.facts.services.iter().map(|s| s.name.clone()).collect();
    // Every check that needs only the files comes first, so a broken environment is refused
    // before an image is pulled or built.
    let mut parsed = Vec::new();
    for (name, raw) in &config.services {
        let svc: ComposeService = serde_yaml::from_value(raw.clone()).map_err(|e| {
            UsageError(format!(
                "service {name}: {e} (deploy --target docker cannot honour it; remove it or ask for support)"
            ))
        })?;
        let image = if ours.contains(name) { Some(images(name)?) } else { None };
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
        false => Some(images("gateway")?),
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
    Ok(Deployment { env, planned, order, edges, revision: revision.to_string(), prepare, copies: compose_copies })
}

pub fn now_stamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}{:03}", now.as_secs(), now.subsec_millis())
}

/// `docker run -d` for a spec, on one network with optional alias; returns the container name.
pub fn start(
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

/// What happened to one service, for the summary.
#[derive(Debug)]
pub enum Outcome {
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
pub fn replace_app(
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
pub fn ensure_dependency(
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
pub fn ensure_edge(
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
pub struct Needed<'a> {
    pub service: &'a str,
    pub image: &'a str,
    pub image_name: &'a str,
    pub app: bool,
    pub buildable: bool,
}

/// What getting an image onto the host takes (`None`: it is there): pull what is pinned by
/// digest, build what compose can build, and the rest is missing, named.
pub fn image_need(docker: &Docker, env: &DockerEnv, n: &Needed<'_>) -> Option<Prepare> {
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
pub fn fetch_images(docker: &Docker, program: &[String], root: &Path, dep: &Deployment) -> Result<()> {
    for p in &dep.prepare {
        match &p.action {
            PrepareAction::Missing(why) => return Err(UsageError(format!("{why}; nothing was changed")).into()),
            PrepareAction::Pull => {
                let pulled = docker.quiet(&["pull", &p.image])?;
                if !pulled.status.success() {
                    return Err(UsageError(format!(
                        "{} ({}) cannot be pulled: {}; is the release manifest from this registry? nothing was changed",
                        p.image,
                        p.service,
                        String::from_utf8_lossy(&pulled.stderr).trim()
                    ))
                    .into());
                }
            }
            PrepareAction::Build => {
                let cmd = compose_command(program, root, &dep.env, &dep.copies, &["build", &p.service])?;
                eprintln!("$ compose build {} (image {} is missing)", p.service, p.image);
                if !cmd.to_command().stdout(std::io::stderr()).status()?.success() {
                    bail!("building the image of {} failed (above); nothing was changed", p.service);
                }
            }
        }
    }
    Ok(())
}

/// `promote --from A --to B` on Docker hosts: B gets exactly the images A's services run (their
/// run specs' images: digests when pushed, else image IDs on the same host), refused when A runs
/// nothing, one of its services is not healthy, or it runs another commit than `--commit`.
pub fn promote(ctx: &Ctx, from: &str, commit: Option<&str>, args: &DeployArgs, dir: &Path) -> Result<ExitCode> {
    let to = args.env.clone().expect("clap requires --to");
    if from == to {
        return Err(UsageError(format!("--from {from} --to {to}: promote between two environments")).into());
    }
    let target = DockerEnv::load(&ctx.root, &to)?;
    let source = DockerEnv::load(&ctx.root, from)?;
    let (images, revision) = release_of(from, &containers(&source.project)?, commit)?;
    let releases = history::docker::releases(&source.project)?;
    match history::current(&releases) {
        Some(r) if r.state == State::Failed => {
            return Err(UsageError(format!(
                "{from}'s release {} failed its verification ({}); nothing was promoted",
                r.id,
                r.why.as_deref().unwrap_or("see `deploy history`")
            ))
            .into());
        }
        Some(r) if r.state == State::Deployed && verify::load(&ctx.root, from)?.is_some() => eprintln!(
            "warning: {from}'s release {} has not passed `deploy verify` yet; promoting it as it runs, healthy",
            r.id
        ),
        _ => {}
    }
    eprintln!("promoting {from} (commit {revision}) to {to}");
    let lookup = |service: &str| -> Result<(String, String)> {
        images.get(service).cloned().ok_or_else(|| UsageError(format!("{from} runs no `{service}` to promote")).into())
    };
    release(ctx, target, args, dir, &lookup, &revision)
}

/// What an environment runs, service by service (the image its run spec was given, and its
/// name), and the one commit it runs: the newest running container of each of our services,
/// each healthy.
fn release_of(env: &str, running: &[Running], commit: Option<&str>) -> Result<(ImageMap, String)> {
    let mut newest: BTreeMap<&str, &Running> = BTreeMap::new();
    for c in running.iter().filter(|c| c.role == Role::App.label() && c.spec.is_some()) {
        if newest.get(c.service.as_str()).is_none_or(|n| n.started <= c.started) {
            newest.insert(&c.service, c);
        }
    }
    if newest.is_empty() {
        return Err(UsageError(format!("{env} runs nothing to promote (deploy it first)")).into());
    }
    let mut problems = Vec::new();
    let mut revisions = BTreeSet::new();
    let mut images = BTreeMap::new();
    for (service, c) in &newest {
        let spec = c.spec.as_ref().expect("filtered on a spec");
        let healthy = c.status == "running" && (!spec.healthcheck || c.health.as_deref() == Some("healthy"));
        if !healthy {
            problems.push(format!("{service}: {} ({})", c.status, c.health.as_deref().unwrap_or("no health check")));
        }
        revisions.insert(c.revision.clone());
        images.insert(service.to_string(), (spec.image.clone(), spec.image_name.clone()));
    }
    if !problems.is_empty() {
        return Err(UsageError(format!("{env} is not healthy ({}); nothing was promoted", problems.join(", "))).into());
    }
    let revision = match revisions.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => one.clone(),
        several => {
            return Err(UsageError(format!(
                "{env} runs several commits ({}): deploy one release to it before promoting",
                several.join(", ")
            ))
            .into());
        }
    };
    crate::check_commit(env, &revision, commit)?;
    Ok((images, revision))
}

pub fn deploy(ctx: &Ctx, env_name: &str, args: &DeployArgs, dir: &Path) -> Result<ExitCode> {
    // An unknown environment is named before anything else is looked at.
    let env = DockerEnv::load(&ctx.root, env_name)?;
    let (manifest, manifest_path) = crate::source::manifest(ctx, args, dir)?;
    let images = |service: &str| app_image(&manifest, &manifest_path, service);
    release(ctx, env, args, dir, &images, &ctx.facts.revision)
}

/// Plan with `images`, show the plan, confirm, then replace service by service, recording
/// `revision`; on a failure, switch back what this run switched.
fn release(
    ctx: &Ctx,
    env: DockerEnv,
    args: &DeployArgs,
    dir: &Path,
    images: Images<'_>,
    revision: &str,
) -> Result<ExitCode> {
    let timeout = args.apply.timeout;
    let env_name = env.name.clone();
    // The SLO file the verification will read is checked before anything changes.
    let slo = match args.apply.verify.no_verify {
        true => None,
        false => verify::preflight(&ctx.root, &env_name, &verify::lookup(&env.vars))?,
    };
    // A migration that would break the running release (expand/contract) is refused too.
    xtask_kit::migrations::preflight(&ctx.root)?;
    alert_receiver(&env, &|k| std::env::var(k).ok())?;
    let docker = Docker;
    let mut dep = plan(ctx, env.clone(), images, revision, dir)?;
    let running = containers(&dep.env.project)?;
    // The one presentation of the plan, then the one confirmation point, then changes.
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&plan_json(&dep, &running))?);
    } else {
        print_plan(&dep, &running);
    }
    if ctx.dry_run {
        eprintln!("dry run: nothing was changed on the Docker host");
        return Ok(ExitCode::SUCCESS);
    }
    confirm(&env_name, &args.apply)?;
    // The database as it was, before this release's migrations run (DEPLOY_BACKUP=before-deploy).
    if crate::backup::before_deploy(&dep.env)? && running.iter().any(|c| c.service == "postgres") {
        let store = crate::backup::Store::of(&dep.env, &ctx.root, &ctx.facts.target_dir)?;
        crate::backup::take(&dep.env, &store, &format!("before deploying {}", &revision[..revision.len().min(12)]))?;
    }
    if !dep.prepare.is_empty() {
        fetch_images(&docker, compose_program(ctx)?, &ctx.root, &dep)?;
        // Now that every image is here, plan with their own health checks (what is run).
        dep = plan(ctx, env, images, revision, dir)?;
    }
    ensure_network(&docker, &dep.env.network(), &dep.env.project)?;
    ensure_network(&docker, &dep.env.serving_network(), &dep.env.project)?;

    let mut switched: Vec<(String, Option<RunSpec>)> = Vec::new();
    let mut report: Vec<(String, Outcome)> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    for service in &dep.order {
        let p = &dep.planned[service];
        eprintln!("{service}:");
        let running = containers(&dep.env.project)?;
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
            let running = containers(&dep.env.project)?;
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
        let release = record(&docker, &dep, &args.apply, None)?;
        let Some(slo) = slo else {
            verify::note_unverified(&env_name, release.id, args.apply.verify.no_verify);
            return Ok(ExitCode::SUCCESS);
        };
        return verify_release(ctx, &dep.env, release, &slo, args.apply.verify.window, false, dir, &args.apply);
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
        let running = containers(&dep.env.project)?;
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

pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Unchanged => "unchanged".into(),
        Outcome::Created(took) => format!("started, healthy in {:.1}s", took.as_secs_f64()),
        Outcome::Replaced { took, previous } => {
            format!("replaced {}: healthy and switched in {:.1}s", previous.image_name, took.as_secs_f64())
        }
    }
}

/// What deploy will do to each service: create, replace, unchanged or keep.
pub fn action(p: &Planned, running: &[Running]) -> String {
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
pub fn plan_json(dep: &Deployment, running: &[Running]) -> serde_json::Value {
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

pub fn print_plan(dep: &Deployment, running: &[Running]) {
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

pub fn summary(dep: &Deployment, report: &[(String, Outcome)]) {
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

/// The release a successful deploy leaves: added to the history, unless it runs exactly what
/// the current release runs (a deploy of the same images again), which it then is.
fn record(docker: &Docker, dep: &Deployment, apply: &ApplyArgs, rollback_of: Option<u64>) -> Result<Release> {
    let releases = history::docker::releases(&dep.env.project)?;
    let specs: Vec<RunSpec> =
        dep.order.iter().filter(|s| dep.planned[*s].role == Role::App).map(|s| dep.planned[s].spec.clone()).collect();
    let release = Release {
        id: history::next_id(&releases),
        commit: dep.revision.clone(),
        deployed_at: xtask_kit::date::now_rfc3339(),
        state: State::Deployed,
        why: None,
        rollback_of,
        images: specs.iter().map(|s| (s.service.clone(), s.image_name.clone())).collect(),
        render: None,
        specs,
    };
    if let Some(now) = history::current(&releases).filter(|r| r.content() == release.content() && rollback_of.is_none())
    {
        eprintln!("release {} of {} runs these images already", now.id, dep.env.name);
        return Ok(now.clone());
    }
    if release.specs.is_empty() {
        bail!("nothing of ours was deployed to {}; no release recorded", dep.env.name);
    }
    history::docker::record(docker, &dep.env.project, &release, apply.history_limit as usize)?;
    eprintln!("recorded release {} of {} (commit {})", release.id, dep.env.name, history::short(&release.commit));
    Ok(release)
}

/// A deployment that replaces nothing by plan: rollbacks replace what a release recorded.
fn bare(env: DockerEnv, revision: &str) -> Deployment {
    Deployment {
        env,
        planned: BTreeMap::new(),
        order: Vec::new(),
        edges: Vec::new(),
        revision: revision.to_string(),
        copies: Vec::new(),
        prepare: Vec::new(),
    }
}

/// Start `specs` again through the health-gated replace, in dependency order, after checking
/// that every image is still on the host (if one is not, nothing is changed); `what` names the
/// run in errors. The specs in the order they were put back.
fn replace_in_order(
    env: &DockerEnv,
    revision: &str,
    mut specs: Vec<RunSpec>,
    timeout: Duration,
    dir: &Path,
    what: &str,
) -> Result<Vec<RunSpec>> {
    let docker = Docker;
    for spec in &specs {
        if !docker.image_exists(&spec.image) {
            return Err(UsageError(format!(
                "the image of {} for {what} ({}) is no longer on the Docker host; nothing was changed",
                spec.service, spec.image_name
            ))
            .into());
        }
    }
    let sequence = order(&specs.iter().map(|s| (s.service.clone(), s.depends_on.clone())).collect())?;
    specs.sort_by_key(|s| sequence.iter().position(|n| *n == s.service));
    let dep = bare(env.clone(), revision);
    for spec in &specs {
        let running = containers(&env.project)?;
        eprintln!("{}:", spec.service);
        let outcome = replace_app(&docker, &dep, dir, spec, &running, timeout)
            .with_context(|| format!("{what} stopped at {}", spec.service))?;
        eprintln!("  {}: {}", spec.service, describe(&outcome));
    }
    Ok(specs)
}

/// Put `release` back through the same health-gated replace, and record that as a release.
fn restore(env: &DockerEnv, release: &Release, apply: &ApplyArgs, dir: &Path) -> Result<Release> {
    let what = format!("the rollback of {} to release {}", env.name, release.id);
    let specs = replace_in_order(env, &release.commit, release.specs.clone(), apply.timeout, dir, &what)?;
    let mut dep = bare(env.clone(), &release.commit);
    for spec in specs {
        dep.order.push(spec.service.clone());
        dep.planned.insert(spec.service.clone(), Planned::app(spec));
    }
    record(&Docker, &dep, apply, Some(release.id))
}

/// How a rollback or a verification's own rollback replaces: no question asked (the command
/// was the confirmation), the environment's timeout, the default history length.
fn replace_args(env: &EnvArgs) -> ApplyArgs {
    ApplyArgs {
        target: env.target,
        yes: true,
        confirm: None,
        timeout: env.timeout,
        verify: Default::default(),
        history_limit: history::DEFAULT_KEEP as u32,
        context: env.context.clone(),
    }
}

/// The Docker host as the release history sees it.
struct HostKeeper<'a> {
    env: &'a DockerEnv,
    apply: ApplyArgs,
    dir: &'a Path,
}

impl history::Keeper for HostKeeper<'_> {
    fn env(&self) -> &str {
        &self.env.name
    }

    fn releases(&self) -> Result<Vec<Release>> {
        history::docker::releases(&self.env.project)
    }

    fn record(&self, release: &Release) -> Result<()> {
        history::docker::record(&Docker, &self.env.project, release, self.apply.history_limit as usize)
    }

    fn restore(&self, release: &Release) -> Result<Release> {
        restore(self.env, release, &self.apply, self.dir)
    }
}

/// `deploy rollback --target docker [--to RELEASE]`: the release named, else the newest earlier
/// one that did not fail verification. An environment deployed before release history existed
/// goes back to the spec each container recorded of the one it replaced.
pub fn rollback(ctx: &Ctx, args: &RollbackArgs, dir: &Path) -> Result<ExitCode> {
    let env = DockerEnv::load(&ctx.root, &args.env.env)?;
    let keeper = HostKeeper { env: &env, apply: replace_args(&args.env), dir };
    if history::rollback(&keeper, args.to, ctx.dry_run)?.is_none() {
        return rollback_by_labels(ctx, env.clone(), args.env.timeout, dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// Rollback from the containers' labels: every app that has an earlier spec goes back to it.
fn rollback_by_labels(ctx: &Ctx, env: DockerEnv, timeout: Duration, dir: &Path) -> Result<ExitCode> {
    let env_name = env.name.clone();
    let running = containers(&env.project)?;
    let apps: Vec<&Running> = running.iter().filter(|r| r.role == "app" && r.status == "running").collect();
    if apps.is_empty() {
        bail!("nothing of {env_name} runs on the Docker host (project {}); nothing to roll back", env.project);
    }
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
    let what = format!("the rollback of {env_name}");
    replace_in_order(&env, &ctx.facts.revision, targets, timeout, dir, &what)?;
    eprintln!("rolled back {env_name} on the Docker host");
    Ok(ExitCode::SUCCESS)
}

/// `deploy verify --target docker`: the current release, held to the environment's SLOs.
pub fn verify_command(ctx: &Ctx, args: &VerifyArgs, dir: &Path) -> Result<ExitCode> {
    let env_name = &args.env.env;
    let env = DockerEnv::load(&ctx.root, env_name)?;
    let Some((_, slo)) = verify::load(&ctx.root, env_name)? else {
        return Err(UsageError(format!(
            "{env_name} has no SLO file: write {}/{env_name}.toml (see infra/slo/README.md)",
            verify::SLO_DIR
        ))
        .into());
    };
    let releases = history::docker::releases(&env.project)?;
    let Some(current) = history::current(&releases).cloned() else {
        return Err(UsageError(format!("{env_name} has no release to verify (deploy it first)")).into());
    };
    if ctx.dry_run {
        eprintln!("dry run: would verify release {} of {env_name}", current.id);
        return Ok(ExitCode::SUCCESS);
    }
    let apply = replace_args(&args.env);
    verify_release(ctx, &env, current, &slo, args.window, args.no_rollback, dir, &apply)
}

/// Verify `release` against `slo`; on a breach mark it failed and, unless told not to, put the
/// last good release back; exit 1 naming the breach either way.
#[allow(clippy::too_many_arguments)]
fn verify_release(
    ctx: &Ctx,
    env: &DockerEnv,
    release: Release,
    slo: &verify::SloFile,
    window: Option<Duration>,
    no_rollback: bool,
    dir: &Path,
    apply: &ApplyArgs,
) -> Result<ExitCode> {
    let loadgen = ctx.facts.loadgen.clone().context("xtask handed over no load generator (facts.loadgen)")?;
    let vars = verify::lookup(&env.vars);
    let setup = verify::Setup {
        root: &ctx.root,
        env: &env.name,
        slo,
        vars: &vars,
        loadgen: &loadgen,
        jobs: ctx.facts.services.iter().map(|s| s.name.clone()).collect(),
        window,
        work: dir,
    };
    let verdict: Verdict = verify::run(&setup)?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    }
    verify::print(&verdict);
    let keeper = HostKeeper { env, apply: apply.clone(), dir };
    history::conclude(&keeper, release, &verdict, no_rollback)?;
    Ok(ExitCode::SUCCESS)
}

/// `deploy history --target docker`.
/// The variables that name where an environment's Alertmanager sends alerts.
const RECEIVERS: &[&str] = &["ALERT_WEBHOOK_URL", "ALERT_SLACK_URL", "ALERT_PAGERDUTY_KEY"];

/// An environment that runs Alertmanager names a receiver (the file or the process environment):
/// alerts that reach no one are refused before anything changes.
fn alert_receiver(env: &DockerEnv, process: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    let runs = env.services.as_ref().is_none_or(|s| s.iter().any(|s| s == "alertmanager"));
    let named = |k: &&str| env.vars.get(*k).cloned().or_else(|| process(k)).is_some_and(|v| !v.trim().is_empty());
    if runs && !RECEIVERS.iter().any(named) {
        return Err(UsageError(format!(
            "{}: {} runs Alertmanager but names no receiver: set ALERT_WEBHOOK_URL (or ALERT_SLACK_URL, ALERT_PAGERDUTY_KEY) in the deploy's environment, e.g. a CI secret; nothing was deployed",
            env.file.display(),
            env.name
        ))
        .into());
    }
    Ok(())
}

/// The Docker environment and its backup store; the Kubernetes target has none yet.
pub fn backups(ctx: &Ctx, args: &EnvArgs) -> Result<(DockerEnv, crate::backup::Store)> {
    if args.target != Target::Docker {
        return Err(UsageError(
            "backups are made on the Docker target (`--target docker`); on Kubernetes, back the database up where it is managed"
                .into(),
        )
        .into());
    }
    let env = DockerEnv::load(&ctx.root, &args.env)?;
    let store = crate::backup::Store::of(&env, &ctx.root, &ctx.facts.target_dir)?;
    Ok((env, store))
}

pub fn history(ctx: &Ctx, env_name: &str) -> Result<ExitCode> {
    let env = DockerEnv::load(&ctx.root, env_name)?;
    history::print(env_name, &history::docker::releases(&env.project)?, ctx.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `deploy status --target docker`: every container of the project, from its labels.
pub fn status(ctx: &Ctx, env_name: &str) -> Result<ExitCode> {
    let env = DockerEnv::load(&ctx.root, env_name)?;
    let running = containers(&env.project)?;
    let releases = history::docker::releases(&env.project)?;
    // What runs, as a release: its number, commit and what verification said.
    let release = history::current(&releases).map(|r| {
        serde_json::json!({ "id": r.id, "state": r.state, "commit": r.commit, "deployed_at": r.deployed_at,
            "why": r.why, "rollback_of": r.rollback_of })
    });
    if ctx.json {
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
            "release": release, "containers": containers });
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
    if let Some(r) = history::current(&releases) {
        println!("release {} ({}), commit {}, deployed {}", r.id, r.state, history::short(&r.commit), r.deployed_at);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_running_alertmanager_must_name_a_receiver() {
        let env = |services: Option<&[&str]>, vars: &[(&str, &str)]| DockerEnv {
            name: "staging".into(),
            project: "xtask-staging".into(),
            file: PathBuf::from("staging.env"),
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            compose_files: Vec::new(),
            services: services.map(|s| s.iter().map(|x| x.to_string()).collect()),
            publish: Vec::new(),
        };
        let none = |_: &str| None;
        let err = alert_receiver(&env(Some(&["postgres", "alertmanager"]), &[("ALERT_SLACK_URL", " ")]), &none)
            .expect_err("no receiver");
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
        assert!(
            err.to_string().contains("staging runs Alertmanager but names no receiver: set ALERT_WEBHOOK_URL"),
            "{err}"
        );
        assert!(alert_receiver(&env(Some(&["postgres"]), &[]), &none).is_ok(), "no Alertmanager, no receiver needed");
        let named = [("ALERT_PAGERDUTY_KEY", "routing-key")];
        assert!(alert_receiver(&env(None, &named), &none).is_ok());
        let secret = |k: &str| (k == "ALERT_WEBHOOK_URL").then(|| "https://hooks.example/alerts".to_string());
        assert!(alert_receiver(&env(None, &[]), &secret).is_ok(), "the process environment (a CI secret) counts");
    }

    fn running(service: &str, image: &str, revision: &str, status: &str, health: Option<&str>) -> Running {
        let spec = RunSpec {
            version: 1,
            service: service.into(),
            image: image.into(),
            image_name: format!("{service}:abc"),
            env: BTreeMap::new(),
            options: Vec::new(),
            command: Vec::new(),
            healthcheck: true,
            stop_grace: 10,
            ports: Vec::new(),
            depends_on: Vec::new(),
        };
        Running {
            name: format!("p-{service}-1"),
            service: service.into(),
            role: "app".into(),
            status: status.into(),
            health: health.map(str::to_string),
            image_id: "sha256:id".into(),
            started: "2026-12-03T10:00:00Z".into(),
            spec: Some(spec),
            previous: None,
            spec_hash: "h".into(),
            revision: revision.into(),
        }
    }

    const PINNED: &str = "127.0.0.1:5000/api@sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn an_environment_promotes_what_its_healthy_services_run_at_one_commit() {
        let env = [
            running("api", PINNED, "abc123", "running", Some("healthy")),
            running("worker", "sha256:local", "abc123", "running", Some("healthy")),
        ];
        let (images, revision) = release_of("staging", &env, Some("abc")).expect("promotable");
        assert_eq!(revision, "abc123");
        assert_eq!(images["api"], (PINNED.to_string(), "api:abc".to_string()), "a pushed digest goes as it is");
        assert_eq!(images["worker"].0, "sha256:local", "an unpushed image goes by its ID on this host");

        let err = release_of("staging", &env, Some("def")).expect_err("another commit").to_string();
        assert!(err.contains("runs commit abc123, not def"), "{err}");
        let sick = [running("api", PINNED, "abc123", "running", Some("unhealthy"))];
        let err = release_of("staging", &sick, None).expect_err("unhealthy").to_string();
        assert!(err.contains("not healthy (api: running (unhealthy))"), "{err}");
        let mixed = [
            running("api", PINNED, "abc123", "running", Some("healthy")),
            running("worker", PINNED, "def456", "running", Some("healthy")),
        ];
        assert!(release_of("staging", &mixed, None).expect_err("two commits").to_string().contains("several commits"));
        let err = release_of("staging", &[], None).expect_err("nothing").to_string();
        assert!(err.contains("runs nothing to promote"), "{err}");
    }
}
