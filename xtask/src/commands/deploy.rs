//! `cargo xtask deploy --env ENV`: render the overlay, pin every image by digest from the build
//! manifest, validate offline, show the server-side diff, apply, wait for every rollout, smoke
//! test, and on any failure re-apply the last known-good render; `deploy rollback --env ENV`
//! does that on demand and `deploy status --env ENV` shows what runs.
//!
//! The last known-good render lives in the cluster (ConfigMap `xtask-known-good` in the
//! environment's namespace), so a rollback never depends on somebody's laptop. kubectl is
//! `$KUBECTL` when set (tests use a recorded stand-in; there is no cluster here).
//! With the global `--dry-run`, deploy renders, validates and diffs, then stops.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::commands::image;
use crate::commands::k8s;
use crate::images::BuildManifest;
use crate::process::Cmd;
use crate::workspace::Workspace;
use crate::{Ctx, UsageError};

pub const KNOWN_GOOD: &str = "xtask-known-good";

/// Deploy an environment (render, pin by digest, validate, diff, apply, verify; roll back on failure).
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub deploy: DeployArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Action {
    /// Re-apply the environment's last known-good render and wait for it.
    Rollback(EnvArgs),
    /// What runs where: deployments, images and digests, ready replicas, the known-good render.
    Status(EnvArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct EnvArgs {
    /// The environment (an overlay under infra/k8s/overlays, or infra/compose/env/ENV.env).
    #[arg(long, value_name = "ENV")]
    pub env: String,
    #[arg(long, value_enum, default_value_t = Target::K8s)]
    pub target: Target,
    /// How long to wait for every rollout (docker: for each container to turn healthy), e.g.
    /// `5m`, `90s` (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = crate::duration::flag)]
    pub timeout: Duration,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// A Kubernetes cluster through kubectl (the current context).
    #[default]
    K8s,
    /// A Docker host (`DOCKER_HOST`, else the local engine): health-gated replace of the
    /// compose project described by infra/compose/env/ENV.env.
    Docker,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DeployArgs {
    /// The environment (an overlay under infra/k8s/overlays, or infra/compose/env/ENV.env).
    #[arg(long, value_name = "ENV", required = true)]
    pub env: Option<String>,
    #[arg(long, value_enum, default_value_t = Target::K8s)]
    pub target: Target,
    /// Go ahead without asking (prod also needs `--confirm prod`, or typing it on a terminal).
    #[arg(long)]
    pub yes: bool,
    /// The environment's name again, for prod without a terminal.
    #[arg(long, value_name = "ENV")]
    pub confirm: Option<String>,
    /// How long to wait for every rollout (docker: for each container to turn healthy), e.g.
    /// `5m`, `90s` (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = crate::duration::flag)]
    pub timeout: Duration,
    /// The build manifest to pin images from (default: target/xtask/images.json).
    #[arg(long, value_name = "FILE")]
    pub images: Option<PathBuf>,
}

/// Environments that need the explicit confirmation.
const GUARDED: &[&str] = &["prod"];

fn kubectl_program() -> String {
    std::env::var("KUBECTL").ok().filter(|k| !k.is_empty()).unwrap_or_else(|| "kubectl".into())
}

/// kubectl, with every command printed before it runs.
struct Kube {
    program: String,
}

impl Kube {
    fn cmd(&self, args: &[&str]) -> Cmd {
        Cmd::new(&self.program).args(args)
    }

    fn announce(args: &[&str]) {
        eprintln!("$ kubectl {}", args.join(" "));
    }

    /// A long-running kubectl whose streams the caller wires itself.
    fn command(&self, args: &[&str]) -> Command {
        Kube::announce(args);
        self.cmd(args).to_command()
    }

    /// For polling: the same call without announcing it each time.
    fn quiet_output(&self, args: &[&str]) -> Result<Output> {
        self.cmd(args).output()
    }

    fn output(&self, args: &[&str]) -> Result<Output> {
        Kube::announce(args);
        self.cmd(args).output()
    }

    /// Runs and insists on success; the error carries kubectl's last words.
    fn checked(&self, args: &[&str]) -> Result<String> {
        Kube::announce(args);
        self.cmd(args).read()
    }
}

/// The namespace an overlay deploys to (its kustomization's `namespace:`).
pub fn overlay_namespace(root: &Path, env: &str) -> Result<String> {
    let file = root.join(k8s::OVERLAYS_DIR).join(env).join("kustomization.yaml");
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("namespace:").map(|v| v.trim().trim_matches('"').to_string()))
        .filter(|ns| !ns.is_empty())
        .ok_or_else(|| {
            UsageError(format!("{} sets no `namespace:`; deploy needs one per environment", file.display())).into()
        })
}

/// Service name → the pushed, digest-pinned reference deploy applies.
pub fn pins(ws: &Workspace, manifest: &BuildManifest, manifest_path: &Path) -> Result<BTreeMap<String, String>> {
    let mut pins = BTreeMap::new();
    for (name, _) in ws.services() {
        let Some(record) = manifest.images.get(name) else {
            return Err(UsageError(format!(
                "{} has no image for `{name}`; run `cargo xtask image build --push REGISTRY` first",
                manifest_path.display()
            ))
            .into());
        };
        let Some(pushed) = record.pushed.as_deref() else {
            return Err(UsageError(format!(
                "image `{}` was built but never pushed, so it has no digest a cluster can pull; run `cargo xtask image build --push REGISTRY`",
                record.image
            ))
            .into());
        };
        if !is_digest_ref(pushed) {
            return Err(UsageError(format!(
                "`{pushed}` (for `{name}`) is not pinned by digest; rebuild with `--push`"
            ))
            .into());
        }
        if record.dirty {
            eprintln!("warning: `{name}` was built from a tree with uncommitted changes ({})", record.image);
        }
        pins.insert(name.clone(), pushed.to_string());
    }
    Ok(pins)
}

fn is_digest_ref(reference: &str) -> bool {
    reference
        .split_once("@sha256:")
        .is_some_and(|(name, hex)| !name.is_empty() && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The repository part of an image reference: no tag, no digest.
fn repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

/// Rewrites every `image:` of a rendered overlay to its pinned reference, in memory. An image
/// whose last path segment names a service is ours; any other image must already be pinned.
pub fn pin_images(render: &str, pins: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(render.len() + 512);
    for line in render.lines() {
        let trimmed = line.trim_start();
        let (prefix, rest) = match trimmed.strip_prefix("- image:").or_else(|| trimmed.strip_prefix("image:")) {
            Some(rest) => (&line[..line.len() - rest.len()], rest),
            None => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        let image = rest.trim().trim_matches('"').trim_matches('\'');
        let service = repository(image).rsplit('/').next().unwrap_or_default();
        let pinned = match pins.get(service) {
            Some(p) => p.clone(),
            None if is_digest_ref(image) => image.to_string(),
            None => {
                return Err(UsageError(format!(
                    "image `{image}` in the render is neither one of our services nor pinned by digest; pin it (name@sha256:...) in the overlay"
                ))
                .into());
            }
        };
        out.push_str(prefix);
        out.push(' ');
        out.push_str(&pinned);
        out.push('\n');
    }
    Ok(out)
}

/// The ConfigMap that keeps an environment's last known-good render in the cluster.
fn known_good_configmap(namespace: &str, render: &str, revision: &str, pins: &BTreeMap<String, String>) -> String {
    let images: Vec<String> = pins.values().cloned().collect();
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": KNOWN_GOOD,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "xtask"},
            "annotations": {
                "xtask/revision": revision,
                "xtask/deployed-at": crate::date::now_rfc3339(),
                "xtask/images": images.join(" "),
            },
        },
        "data": {"render.yaml": render},
    });
    serde_json::to_string_pretty(&doc).expect("JSON values serialise")
}

/// The known-good render and its annotations; `None` before the first successful deploy.
fn fetch_known_good(kube: &Kube, namespace: &str) -> Result<Option<(String, serde_json::Value)>> {
    let out = kube.output(&["get", "configmap", KNOWN_GOOD, "-n", namespace, "-o", "json"])?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("NotFound") || err.contains("not found") {
            return Ok(None);
        }
        bail!("cannot read the known-good render from the cluster: {}", err.trim());
    }
    let cm: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("kubectl returned a ConfigMap that is not JSON")?;
    let render = cm["data"]["render.yaml"]
        .as_str()
        .map(str::to_string)
        .context("the known-good ConfigMap has no render.yaml")?;
    Ok(Some((render, cm["metadata"]["annotations"].clone())))
}

fn apply(kube: &Kube, file: &Path) -> Result<()> {
    let path = file.display().to_string();
    let said = kube.checked(&["apply", "--server-side", "--field-manager=xtask", "--force-conflicts", "-f", &path])?;
    eprint!("{said}");
    Ok(())
}

/// Waiting reasons that will not fix themselves: fail now instead of at the timeout.
const STUCK: &[&str] =
    &["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName"];

/// The pods of our deployments in a `kubectl get pods -o json` answer: (deployment, pod name, pod).
fn our_pods<'a>(
    pods: &'a serde_json::Value,
    deployments: &'a [String],
) -> impl Iterator<Item = (&'a str, &'a str, &'a serde_json::Value)> {
    pods["items"].as_array().into_iter().flatten().filter_map(move |pod| {
        let app = pod["metadata"]["labels"]["app.kubernetes.io/name"].as_str()?;
        deployments.iter().any(|d| d == app).then(|| (app, pod["metadata"]["name"].as_str().unwrap_or("?"), pod))
    })
}

/// Pods stuck in a state that will not resolve: `deployment: reason (pod)`.
fn stuck_pods(pods: &serde_json::Value, deployments: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (app, name, pod) in our_pods(pods, deployments) {
        for status in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
            if let Some(reason) = status["state"]["waiting"]["reason"].as_str().filter(|r| STUCK.contains(r)) {
                found.push(format!("{app}: {reason} (pod {name})"));
            }
        }
    }
    found
}

fn unready_pods(pods: &serde_json::Value, deployments: &[String]) -> Vec<String> {
    our_pods(pods, deployments)
        .filter(|(_, _, pod)| {
            !pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|(_, name, _)| name.to_string())
        .collect()
}

/// Every rollout waited for at once; every failure reported; stuck pods end the wait early.
fn wait_rollouts(kube: &Kube, namespace: &str, deployments: &[String], timeout: Duration) -> Result<(), Vec<String>> {
    let deadline = format!("--timeout={}s", timeout.as_secs().max(1));
    let mut waits: Vec<(String, Child)> = Vec::new();
    for d in deployments {
        let target = format!("deployment/{d}");
        match kube
            .command(&["rollout", "status", &target, "-n", namespace, &deadline])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => waits.push((d.clone(), child)),
            Err(e) => return Err(vec![format!("{d}: cannot run kubectl: {e}")]),
        }
    }
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut pending: Vec<(String, Child)> = waits;
    eprintln!(
        "watching pods meanwhile (kubectl get pods -n {namespace} -o json, every second) for states that will not recover"
    );
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (name, mut child) in pending {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => eprintln!("rollout {name}: done"),
                Ok(Some(_)) => {
                    let mut err = String::new();
                    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                    failures.push(format!("{name}: rollout did not finish: {}", err.trim()));
                }
                Ok(None) => still.push((name, child)),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if let Ok(out) = kube.quiet_output(&["get", "pods", "-n", namespace, "-o", "json"])
            && let Ok(pods) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        {
            let stuck = stuck_pods(&pods, deployments);
            if !stuck.is_empty() {
                for (_, mut child) in pending {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                failures.extend(stuck);
                return Err(failures);
            }
        }
        if started.elapsed() > timeout + Duration::from_secs(30) {
            for (name, mut child) in pending {
                let _ = child.kill();
                let _ = child.wait();
                failures.push(format!("{name}: no answer from `kubectl rollout status` within the timeout"));
            }
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if failures.is_empty() { Ok(()) } else { Err(failures) }
}

/// Readiness of every pod, then one HTTP check through a port-forward to the edge service.
fn smoke(
    kube: &Kube,
    namespace: &str,
    deployments: &[String],
    edge: Option<(&str, u16, &str)>,
) -> Result<(), Vec<String>> {
    let pods = kube.output(&["get", "pods", "-n", namespace, "-o", "json"]).map_err(|e| vec![format!("{e:#}")])?;
    let pods: serde_json::Value =
        serde_json::from_slice(&pods.stdout).map_err(|e| vec![format!("pods are not JSON: {e}")])?;
    let unready = unready_pods(&pods, deployments);
    if !unready.is_empty() {
        return Err(vec![format!("pods not ready after the rollout: {}", unready.join(", "))]);
    }
    let Some((service, port, path)) = edge else { return Ok(()) };
    let target = format!("svc/{service}");
    let ports = format!("0:{port}");
    let mut forward = kube
        .command(&["port-forward", "-n", namespace, &target, &ports])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| vec![format!("port-forward: {e}")])?;
    let result = (|| {
        let stdout = forward.stdout.take().ok_or("port-forward has no output")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    let _ = tx.send(rest.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()));
                    return;
                }
            }
        });
        let local = rx
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .flatten()
            .ok_or("port-forward never said which local port it listens on")?;
        let status = http_status(local, path).map_err(|e| format!("GET {path} through the port-forward: {e}"))?;
        if status == 200 { Ok(()) } else { Err(format!("GET {path} on {service} answered {status}")) }
    })();
    let _ = forward.kill();
    let _ = forward.wait();
    result.map_err(|e: String| vec![format!("smoke check: {e}")])
}

fn http_status(port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut head = String::new();
    std::io::BufReader::new(stream).read_line(&mut head)?;
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))
}

/// The service that has an Ingress is the one smoke checks go through: (name, port, readiness path).
fn edge_service(ws: &Workspace) -> Option<(String, u16, String)> {
    ws.services()
        .find(|(name, _)| ws.root.join("infra/k8s/base").join(name).join("ingress.yaml").is_file())
        .map(|(name, meta)| (name.clone(), meta.port, meta.ready.clone()))
}

/// The one confirmation point of a deploy: after its plan is shown, before anything changes.
pub(crate) fn confirm(env: &str, args: &DeployArgs) -> Result<()> {
    if !GUARDED.contains(&env) {
        return Ok(());
    }
    if !args.yes {
        return Err(UsageError(format!(
            "deploying to {env} needs --yes (and --confirm {env} without a terminal); nothing was applied"
        ))
        .into());
    }
    if args.confirm.as_deref() == Some(env) {
        return Ok(());
    }
    if let Some(other) = &args.confirm {
        return Err(UsageError(format!("--confirm {other} does not match --env {env}; nothing was applied")).into());
    }
    if !std::io::stdin().is_terminal() {
        return Err(UsageError(format!(
            "deploying to {env} without a terminal needs --confirm {env}; nothing was applied"
        ))
        .into());
    }
    eprint!("Deploying to {env}. Type the environment's name to go on: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != env {
        return Err(UsageError(format!("`{}` is not `{env}`; nothing was applied", answer.trim())).into());
    }
    Ok(())
}

/// Where one deploy of an environment works. A real deploy holds the environment's directory
/// exclusively: two deploys of one environment from this checkout take turns instead of
/// overwriting each other's render (the lock ends with the process). A dry run changes nothing,
/// so it takes no lock and plans in a scratch directory of its own, removed when it ends.
struct WorkDir {
    dir: PathBuf,
    _lock: Option<std::fs::File>,
    scratch: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.scratch {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn work_dir(ctx: &Ctx, env: &str) -> Result<WorkDir> {
    let home = crate::target_dir(&ctx.root).join("xtask/deploy").join(env);
    if ctx.dry_run {
        let dir = home.join(format!("dry-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        return Ok(WorkDir { dir, _lock: None, scratch: true });
    }
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let lock =
        std::fs::File::create(home.join(".lock")).with_context(|| format!("creating {}/.lock", home.display()))?;
    if lock.try_lock().is_err() {
        eprintln!("another deploy of {env} is running from this checkout; waiting for it to finish");
        lock.lock().with_context(|| format!("locking {}/.lock", home.display()))?;
    }
    Ok(WorkDir { dir: home, _lock: Some(lock), scratch: false })
}

/// Schema and policy on the pinned render, digests required (the same checks as `k8s validate`).
fn validate(ctx: &Ctx, env: &str, file: &Path) -> Result<()> {
    let step = k8s::policy_step(ctx, "deploy:validate", &[(env.to_string(), file.to_path_buf())], true);
    let crate::plan::Action::Exec { program, args, cwd, .. } = &step.action else {
        unreachable!("policy_step runs cargo")
    };
    eprintln!("$ {}", step.command_line());
    // Its report goes to stderr: stdout carries only the plan (`--format json`).
    let status = Cmd::new(program).args(args).current_dir(cwd).to_command().stdout(std::io::stderr()).status()?;
    if !status.success() {
        bail!("the pinned render of {env} fails validation (above); nothing was applied");
    }
    Ok(())
}

fn deployments(ws: &Workspace) -> Vec<String> {
    ws.services().map(|(name, _)| name.clone()).collect()
}

/// Puts the known-good render back and waits for it.
fn roll_back(
    kube: &Kube,
    dir: &Path,
    namespace: &str,
    render: &str,
    deployments: &[String],
    timeout: Duration,
) -> Result<(), Vec<String>> {
    let file = dir.join("known-good.yaml");
    std::fs::write(&file, render).map_err(|e| vec![format!("writing {}: {e}", file.display())])?;
    apply(kube, &file).map_err(|e| vec![format!("{e:#}")])?;
    wait_rollouts(kube, namespace, deployments, timeout)
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<ExitCode> {
    use crate::commands::deploy_docker as docker;
    match &args.action {
        Some(Action::Rollback(a)) if a.target == Target::Docker => {
            let work = work_dir(ctx, &a.env)?;
            docker::rollback(ctx, &a.env, a.timeout, &work.dir)
        }
        Some(Action::Status(a)) if a.target == Target::Docker => docker::status(ctx, &a.env),
        Some(Action::Rollback(a)) => rollback(ctx, a),
        Some(Action::Status(a)) => status(ctx, a),
        None if args.deploy.target == Target::Docker => {
            let env = args.deploy.env.clone().expect("clap requires --env");
            let work = work_dir(ctx, &env)?;
            docker::deploy(ctx, &env, &args.deploy, &work.dir)
        }
        None => deploy(ctx, &args.deploy),
    }
}

fn deploy(ctx: &Ctx, args: &DeployArgs) -> Result<ExitCode> {
    let env = args.env.clone().expect("clap requires --env");
    k8s::resolve_envs(&ctx.root, std::slice::from_ref(&env))?;
    let ws = ctx.workspace()?;
    let namespace = overlay_namespace(&ctx.root, &env)?;
    let manifest_path = args.images.clone().unwrap_or_else(|| image::manifest_path(&ws));
    if !manifest_path.is_file() {
        return Err(UsageError(format!(
            "no build manifest at {}; run `cargo xtask image build --push REGISTRY` first",
            manifest_path.display()
        ))
        .into());
    }
    let manifest = BuildManifest::read(&manifest_path)?;
    let pins = pins(&ws, &manifest, &manifest_path)?;
    let kube = Kube { program: kubectl_program() };
    let work = work_dir(ctx, &env)?;
    let dir = &work.dir;

    // 1-2: render, pin in memory, validate offline.
    let overlay = ctx.root.join(k8s::OVERLAYS_DIR).join(&env).display().to_string();
    let rendered = kube.checked(&["kustomize", &overlay])?;
    let pinned = pin_images(&rendered, &pins)?;
    let render_file = dir.join("render.yaml");
    std::fs::write(&render_file, &pinned).with_context(|| format!("writing {}", render_file.display()))?;
    validate(ctx, &env, &render_file)?;

    // 3: what would change.
    let file = render_file.display().to_string();
    // `kubectl diff` exits 1 when there are differences; anything else but 0 is a failure.
    let diff_args = ["diff", "--server-side", "--field-manager=xtask", "--force-conflicts", "-f", &file];
    Kube::announce(&diff_args);
    let diff = kube.cmd(&diff_args).ok_codes(&[0, 1]).checked_output()?;
    let changes = diff.status.code() != Some(0);
    // The one presentation of the plan (human or JSON), then the one confirmation point.
    if ctx.ui.format == crate::runner::Format::Json {
        let plan = serde_json::json!({
            "target": "k8s",
            "env": env,
            "namespace": namespace,
            "images": pins,
            "changes": changes,
            "diff": String::from_utf8_lossy(&diff.stdout),
            "render": pinned,
        });
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else if changes {
        print!("{}", String::from_utf8_lossy(&diff.stdout));
    } else {
        eprintln!("kubectl diff: no changes in {env}");
    }
    if ctx.dry_run {
        eprintln!("dry run: rendered, pinned, validated and diffed {env}; nothing was applied");
        return Ok(ExitCode::SUCCESS);
    }

    // 4-5: confirmation, then the rollback point, before anything changes.
    confirm(&env, args)?;
    let known_good = fetch_known_good(&kube, &namespace)?;
    if known_good.is_none() {
        eprintln!("warning: {namespace} has no known-good render yet (first deploy): a failure cannot be rolled back");
    }

    // 6: apply, wait, smoke.
    let deployments = deployments(&ws);
    let timeout = args.timeout;
    let edge = edge_service(&ws);
    let outcome = apply(&kube, &render_file)
        .map_err(|e| vec![format!("{e:#}")])
        .and_then(|()| wait_rollouts(&kube, &namespace, &deployments, timeout))
        .and_then(|()| {
            smoke(&kube, &namespace, &deployments, edge.as_ref().map(|(s, p, r)| (s.as_str(), *p, r.as_str())))
        });
    match outcome {
        Ok(()) => {
            let revision = image::Revision::of(&ctx.root).map_or_else(|_| "unknown".to_string(), |r| r.sha);
            let cm = dir.join("known-good-configmap.json");
            std::fs::write(&cm, known_good_configmap(&namespace, &pinned, &revision, &pins))?;
            apply(&kube, &cm).context("the deploy succeeded, but recording it as known-good failed")?;
            eprintln!(
                "deployed {env} ({namespace}): every rollout finished, smoke checks passed; recorded as known-good"
            );
            Ok(ExitCode::SUCCESS)
        }
        // 7: put the last known-good render back.
        Err(failures) => {
            for f in &failures {
                eprintln!("failed: {f}");
            }
            let Some((render, meta)) = known_good else {
                bail!(
                    "deploy of {env} failed ({}); there is no known-good render to roll back to",
                    failures.join("; ")
                );
            };
            eprintln!(
                "rolling back {env} to the known-good render of {}",
                meta["xtask/deployed-at"].as_str().unwrap_or("an earlier deploy")
            );
            match roll_back(&kube, dir, &namespace, &render, &deployments, timeout) {
                Ok(()) => {
                    bail!("deploy of {env} failed ({}); rolled back to the last known-good render", failures.join("; "))
                }
                Err(more) => bail!(
                    "deploy of {env} failed ({}), and so did the rollback ({})",
                    failures.join("; "),
                    more.join("; ")
                ),
            }
        }
    }
}

fn rollback(ctx: &Ctx, args: &EnvArgs) -> Result<ExitCode> {
    k8s::resolve_envs(&ctx.root, std::slice::from_ref(&args.env))?;
    let ws = ctx.workspace()?;
    let namespace = overlay_namespace(&ctx.root, &args.env)?;
    let kube = Kube { program: kubectl_program() };
    let Some((render, meta)) = fetch_known_good(&kube, &namespace)? else {
        bail!("{namespace} has no known-good render (no successful `cargo xtask deploy --env {}` yet)", args.env);
    };
    if ctx.dry_run {
        eprintln!(
            "dry run: would re-apply the known-good render of {}",
            meta["xtask/deployed-at"].as_str().unwrap_or("?")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let work = work_dir(ctx, &args.env)?;
    match roll_back(&kube, &work.dir, &namespace, &render, &deployments(&ws), args.timeout) {
        Ok(()) => {
            eprintln!(
                "rolled back {} to the known-good render of {}",
                args.env,
                meta["xtask/deployed-at"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(failures) => bail!("rollback of {} failed: {}", args.env, failures.join("; ")),
    }
}

fn status(ctx: &Ctx, args: &EnvArgs) -> Result<ExitCode> {
    k8s::resolve_envs(&ctx.root, std::slice::from_ref(&args.env))?;
    let namespace = overlay_namespace(&ctx.root, &args.env)?;
    let kube = Kube { program: kubectl_program() };
    let list: serde_json::Value = kube.cmd(&["get", "deployments", "-n", &namespace, "-o", "json"]).read_json()?;
    let known_good = fetch_known_good(&kube, &namespace)?;
    if ctx.ui.format == crate::runner::Format::Json {
        let deployments: Vec<serde_json::Value> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                serde_json::json!({
                    "name": d["metadata"]["name"],
                    "ready": d["status"]["readyReplicas"].as_u64().unwrap_or(0),
                    "replicas": d["spec"]["replicas"],
                    "images": d["spec"]["template"]["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| c["image"].clone())
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let known_good = known_good.map(|(_, meta)| {
            serde_json::json!({ "revision": meta["xtask/revision"], "deployed_at": meta["xtask/deployed-at"] })
        });
        let report = serde_json::json!({ "target": "k8s", "env": args.env, "namespace": namespace,
            "deployments": deployments, "known_good": known_good });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<12} {:<8} image", "deployment", "ready");
    for d in list["items"].as_array().into_iter().flatten() {
        let name = d["metadata"]["name"].as_str().unwrap_or("?");
        let ready = format!(
            "{}/{}",
            d["status"]["readyReplicas"].as_u64().unwrap_or(0),
            d["spec"]["replicas"].as_u64().unwrap_or(0)
        );
        let images: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["image"].as_str())
            .collect();
        println!("{name:<12} {ready:<8} {}", images.join(", "));
    }
    match known_good {
        Some((_, meta)) => println!(
            "known-good: revision {} deployed at {}",
            meta["xtask/revision"].as_str().unwrap_or("?"),
            meta["xtask/deployed-at"].as_str().unwrap_or("?")
        ),
        None => println!("known-good: none yet"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:5000/api@sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn images_are_pinned_in_memory_and_strangers_refused() {
        let pins = BTreeMap::from([("api".to_string(), A.to_string())]);
        let render = "spec:\n  containers:\n    - name: api\n      image: registry.example.invalid/platform/api:unpinned\n    - image: \"api\"\n";
        let pinned = pin_images(render, &pins).expect("pins");
        assert_eq!(pinned, format!("spec:\n  containers:\n    - name: api\n      image: {A}\n    - image: {A}\n"));
        let stranger = "      image: docker.io/library/nginx:1.25\n";
        assert!(
            pin_images(stranger, &pins)
                .expect_err("refused")
                .to_string()
                .contains("neither one of our services nor pinned")
        );
        let pinned_stranger = format!("      image: docker.io/library/nginx@sha256:{}\n", "2".repeat(64));
        assert_eq!(pin_images(&pinned_stranger, &pins).expect("kept"), pinned_stranger);
    }

    #[test]
    fn only_digests_count_as_pinned() {
        assert!(is_digest_ref(A));
        assert!(!is_digest_ref("127.0.0.1:5000/api:latest"));
        assert!(!is_digest_ref("api@sha256:abc"));
        assert_eq!(repository("127.0.0.1:5000/api:v1"), "127.0.0.1:5000/api");
        assert_eq!(repository("127.0.0.1:5000/api"), "127.0.0.1:5000/api");
        assert_eq!(repository(A), "127.0.0.1:5000/api");
    }

    #[test]
    fn stuck_pods_are_named_with_their_reason() {
        let pods = serde_json::json!({"items": [
            {"metadata": {"name": "api-1", "labels": {"app.kubernetes.io/name": "api"}},
             "status": {"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}},
            {"metadata": {"name": "worker-1", "labels": {"app.kubernetes.io/name": "worker"}},
             "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}],
                        "conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "gateway-1", "labels": {"app.kubernetes.io/name": "gateway"}},
             "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}},
            {"metadata": {"name": "postgres-0", "labels": {"app.kubernetes.io/name": "postgres"}},
             "status": {"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}},
        ]});
        let deployments = vec!["api".to_string(), "worker".to_string(), "gateway".to_string()];
        // Pods of other workloads (postgres here) are not ours to judge.
        assert_eq!(
            stuck_pods(&pods, &deployments),
            vec!["api: CrashLoopBackOff (pod api-1)", "gateway: ImagePullBackOff (pod gateway-1)"]
        );
        assert_eq!(unready_pods(&pods, &deployments), vec!["api-1", "gateway-1"]);
    }

    #[test]
    fn every_overlay_names_its_namespace() {
        for env in k8s::overlays(&crate::project_root()) {
            assert_eq!(overlay_namespace(&crate::project_root(), &env).expect("namespace"), format!("platform-{env}"));
        }
    }
}
