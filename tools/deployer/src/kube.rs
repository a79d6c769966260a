//! The Kubernetes target: render the environment's overlay, pin every image by digest from the
//! build manifest (kustomize's own `images:` transformer, in an overlay generated under the work
//! directory), validate offline, show the server-side diff, apply, wait for every rollout, smoke
//! test, and on any failure re-apply the last known-good render; `rollback` does that on demand
//! and `status` shows what runs.
//!
//! The last known-good render lives in the cluster (ConfigMap `xtask-known-good` in the
//! environment's namespace), so a rollback never depends on somebody's laptop. kubectl is
//! `$KUBECTL` when set (tests use a recorded stand-in; there is no cluster here).

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use xtask_kit::UsageError;
use xtask_kit::handoff::{DeployArgs, EnvArgs, OVERLAYS_DIR, Service, overlays};
use xtask_kit::images::BuildManifest;
use xtask_kit::process::Cmd;

use crate::{Ctx, confirm, work_dir};

pub const KNOWN_GOOD: &str = "xtask-known-good";

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

    /// Runs, insists on success, and reads its JSON answer.
    fn read_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        Kube::announce(args);
        self.cmd(args).read_json()
    }

    /// Runs and insists on success; the error carries kubectl's last words.
    fn checked(&self, args: &[&str]) -> Result<String> {
        Kube::announce(args);
        self.cmd(args).read()
    }
}

/// The namespace an overlay deploys to (its kustomization's `namespace:`).
pub fn overlay_namespace(root: &Path, env: &str) -> Result<String> {
    let file = root.join(OVERLAYS_DIR).join(env).join("kustomization.yaml");
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("namespace:").map(|v| v.trim().trim_matches('"').to_string()))
        .filter(|ns| !ns.is_empty())
        .ok_or_else(|| {
            UsageError(format!("{} sets no `namespace:`; deploy needs one per environment", file.display())).into()
        })
}

/// Service name -> the pushed, digest-pinned reference deploy applies.
pub fn pins(services: &[String], manifest: &BuildManifest, manifest_path: &Path) -> Result<BTreeMap<String, String>> {
    let mut pins = BTreeMap::new();
    for name in services {
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

/// Every `image:` a render names, as written (quotes removed).
fn images_in(render: &str) -> impl Iterator<Item = &str> {
    render.lines().filter_map(|line| {
        let trimmed = line.trim_start();
        let rest = trimmed.strip_prefix("- image:").or_else(|| trimmed.strip_prefix("image:"))?;
        Some(rest.trim().trim_matches('"').trim_matches('\''))
    })
}

/// The kustomization that pins an environment: its overlay as the one resource, and
/// kustomize's own `images:` transformer setting each of our images (an image whose last path
/// segment names a service, matched by the name the unpinned `render` gives it) to its pushed
/// digest. Any other image must be pinned by digest in the overlay already.
pub fn pin_overlay(overlay: &Path, render: &str, pins: &BTreeMap<String, String>) -> Result<String> {
    let mut ours = BTreeMap::new();
    for image in images_in(render) {
        let name = repository(image);
        let service = name.rsplit('/').next().unwrap_or_default();
        match pins.get(service) {
            Some(pinned) => {
                ours.insert(name.to_string(), pinned.as_str());
            }
            None if is_digest_ref(image) => {}
            None => {
                return Err(UsageError(format!(
                    "image `{image}` in the render is neither one of our services nor pinned by digest; pin it (name@sha256:...) in the overlay"
                ))
                .into());
            }
        }
    }
    // JSON strings are YAML scalars: nothing in a path or a name can change the document's shape.
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let mut out = String::from(
        "# Generated by the deployer for one deploy: the environment's overlay, our images pinned\n\
         # by digest through kustomize's images transformer. Not for editing.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    out.push_str(&format!("  - {}\nimages:\n", quote(&overlay.display().to_string())));
    for (name, pinned) in ours {
        let (new_name, digest) = pinned.split_once('@').expect("pins are digest references");
        out.push_str(&format!(
            "  - name: {}\n    newName: {}\n    digest: {}\n",
            quote(&name),
            quote(new_name),
            quote(digest)
        ));
    }
    Ok(out)
}

/// `to` as seen from `from` (both absolute, without `..`): `../../infra/k8s/overlays/dev`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path: PathBuf = std::iter::repeat_n(std::path::Component::ParentDir, from.len() - common).collect();
    path.extend(&to[common..]);
    path
}

/// After kustomize pinned the render: every image is a digest, ours the digest we pushed.
fn check_pinned(render: &str, pins: &BTreeMap<String, String>) -> Result<()> {
    for image in images_in(render) {
        if !is_digest_ref(image) {
            bail!("kustomize left `{image}` unpinned; nothing was applied");
        }
        let service = repository(image).rsplit('/').next().unwrap_or_default();
        if let Some(pinned) = pins.get(service)
            && pinned != image
        {
            bail!("kustomize pinned `{service}` to `{image}`, not the pushed `{pinned}`; nothing was applied");
        }
    }
    Ok(())
}

/// What deploy reads of kubectl's JSON, typed. kubectl omits empty fields, so every field
/// defaults; fields deploy does not read are ignored.
#[derive(Deserialize, Debug)]
struct List<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Meta {
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Pod {
    metadata: Meta,
    status: PodStatus,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodStatus {
    container_statuses: Vec<ContainerStatus>,
    conditions: Vec<Condition>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct ContainerStatus {
    state: ContainerState,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct ContainerState {
    waiting: Option<Waiting>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Waiting {
    reason: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Condition {
    r#type: String,
    status: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Deployment {
    metadata: Meta,
    spec: DeploymentSpec,
    status: DeploymentStatus,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct DeploymentSpec {
    replicas: u32,
    template: PodTemplate,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct PodTemplate {
    spec: PodSpec,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct PodSpec {
    containers: Vec<Container>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Container {
    image: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "camelCase")]
struct DeploymentStatus {
    ready_replicas: u32,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct ConfigMap {
    metadata: Meta,
    data: BTreeMap<String, String>,
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
                "xtask/deployed-at": xtask_kit::date::now_rfc3339(),
                "xtask/images": images.join(" "),
            },
        },
        "data": {"render.yaml": render},
    });
    serde_json::to_string_pretty(&doc).expect("JSON values serialise")
}

/// An environment's last known-good release, as its ConfigMap keeps it.
struct KnownGood {
    render: String,
    revision: String,
    deployed_at: String,
    /// The digest references it runs (`xtask/images`).
    images: Vec<String>,
}

impl KnownGood {
    fn from_configmap(cm: ConfigMap) -> Result<KnownGood> {
        let annotation = |key: &str| cm.metadata.annotations.get(key).cloned().unwrap_or_else(|| "?".into());
        let (revision, deployed_at) = (annotation("xtask/revision"), annotation("xtask/deployed-at"));
        let render = cm.data.get("render.yaml").cloned().context("the known-good ConfigMap has no render.yaml")?;
        let images = cm
            .metadata
            .annotations
            .get("xtask/images")
            .map_or_else(Vec::new, |i| i.split_whitespace().map(str::to_string).collect());
        Ok(KnownGood { render, revision, deployed_at, images })
    }
}

/// The known-good release; `None` before the first successful deploy.
fn fetch_known_good(kube: &Kube, namespace: &str) -> Result<Option<KnownGood>> {
    let out = kube.output(&["get", "configmap", KNOWN_GOOD, "-n", namespace, "-o", "json"])?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("NotFound") || err.contains("not found") {
            return Ok(None);
        }
        bail!("cannot read the known-good render from the cluster: {}", err.trim());
    }
    let cm: ConfigMap = serde_json::from_slice(&out.stdout).context("kubectl returned a ConfigMap that is not JSON")?;
    KnownGood::from_configmap(cm).map(Some)
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

/// The pods of our deployments: (deployment, pod).
fn our_pods<'a>(pods: &'a List<Pod>, deployments: &'a [String]) -> impl Iterator<Item = (&'a str, &'a Pod)> {
    pods.items.iter().filter_map(move |pod| {
        let app = pod.metadata.labels.get("app.kubernetes.io/name")?;
        deployments.contains(app).then_some((app.as_str(), pod))
    })
}

/// Pods stuck in a state that will not resolve: `deployment: reason (pod)`.
fn stuck_pods(pods: &List<Pod>, deployments: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (app, pod) in our_pods(pods, deployments) {
        for status in &pod.status.container_statuses {
            if let Some(waiting) = status.state.waiting.as_ref().filter(|w| STUCK.contains(&w.reason.as_str())) {
                found.push(format!("{app}: {} (pod {})", waiting.reason, pod.metadata.name));
            }
        }
    }
    found
}

fn unready_pods(pods: &List<Pod>, deployments: &[String]) -> Vec<String> {
    our_pods(pods, deployments)
        .filter(|(_, pod)| !pod.status.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
        .map(|(_, pod)| pod.metadata.name.clone())
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
            && let Ok(pods) = serde_json::from_slice::<List<Pod>>(&out.stdout)
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
    let pods: List<Pod> =
        kube.read_json(&["get", "pods", "-n", namespace, "-o", "json"]).map_err(|e| vec![format!("{e:#}")])?;
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

/// The service that has an Ingress is the one smoke checks go through.
fn edge_service(ctx: &Ctx) -> Option<&Service> {
    ctx.facts.services.iter().find(|s| ctx.root.join("infra/k8s/base").join(&s.name).join("ingress.yaml").is_file())
}

/// Schema and policy on the pinned render, digests required (the same checks as `k8s validate`).
fn validate(ctx: &Ctx, env: &str, file: &Path) -> Result<()> {
    let policy = ctx.facts.policy.as_ref().context("xtask handed over no policy checker (facts.policy)")?;
    let cmd = Cmd::new(policy)
        .args(["check", "--env", &format!("{env}={}", file.display()), "--require-digests"])
        .current_dir(&ctx.root);
    eprintln!("$ {}", cmd.line());
    // Its report goes to stderr: stdout carries only the plan (`--format json`).
    let status = cmd.to_command().stdout(std::io::stderr()).status()?;
    if !status.success() {
        bail!("the pinned render of {env} fails validation (above); nothing was applied");
    }
    Ok(())
}

fn deployments(ctx: &Ctx) -> Vec<String> {
    ctx.facts.services.iter().map(|s| s.name.clone()).collect()
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

/// The environment's overlay, or a usage error naming the ones that exist.
fn overlay(root: &Path, env: &str) -> Result<PathBuf> {
    let dir = root.join(OVERLAYS_DIR).join(env);
    if dir.join("kustomization.yaml").is_file() {
        return Ok(dir);
    }
    let known = overlays(root).join(", ");
    Err(UsageError(format!("--env {env}: no overlay {OVERLAYS_DIR}/{env} (environments: {known})")).into())
}

pub fn deploy(ctx: &Ctx, env: &str, args: &DeployArgs) -> Result<ExitCode> {
    overlay(&ctx.root, env)?;
    let manifest_path = args.images.clone().unwrap_or_else(|| ctx.facts.images.clone());
    if !manifest_path.is_file() {
        return Err(UsageError(format!(
            "no build manifest at {}; run `cargo xtask image build --push REGISTRY` first",
            manifest_path.display()
        ))
        .into());
    }
    let manifest = BuildManifest::read(&manifest_path)?;
    let pins = pins(&deployments(ctx), &manifest, &manifest_path)?;
    release(ctx, env, args, &pins, &ctx.facts.revision)
}

/// `promote --from A --to B`: deploy to B exactly the digests A runs, read from A itself (its
/// known-good release), refusing when A runs nothing, is not healthy, or runs another commit
/// than the one being promoted (`--commit`).
pub fn promote(ctx: &Ctx, from: &str, commit: Option<&str>, args: &DeployArgs) -> Result<ExitCode> {
    let to = args.env.clone().expect("clap requires --env");
    overlay(&ctx.root, from)?;
    if from == to {
        return Err(UsageError(format!("--from {from} --to {to}: promote between two environments")).into());
    }
    let source = overlay_namespace(&ctx.root, from)?;
    let kube = Kube { program: kubectl_program() };
    let Some(good) = fetch_known_good(&kube, &source)? else {
        return Err(UsageError(format!(
            "{from} runs nothing to promote: {source} has no known-good release (deploy {from} first)"
        ))
        .into());
    };
    crate::check_commit(from, &good.revision, commit)?;
    let list: List<Deployment> = kube.read_json(&["get", "deployments", "-n", &source, "-o", "json"])?;
    let services = deployments(ctx);
    let unhealthy = unhealthy_deployments(&list, &services);
    if !unhealthy.is_empty() {
        return Err(UsageError(format!(
            "{from} is not healthy ({}); nothing was promoted to {to}",
            unhealthy.join(", ")
        ))
        .into());
    }
    let pins = pins_of(&good.images, &services)
        .map_err(|e| UsageError(format!("{from}'s known-good release cannot be promoted: {e}")))?;
    eprintln!("promoting {from} (commit {}, deployed {}) to {to}", good.revision, good.deployed_at);
    release(ctx, &to, args, &pins, &good.revision)
}

/// Our deployments that are missing, or not at their replica count, in a `get deployments`.
fn unhealthy_deployments(list: &List<Deployment>, services: &[String]) -> Vec<String> {
    services
        .iter()
        .filter_map(|name| match list.items.iter().find(|d| &d.metadata.name == name) {
            None => Some(format!("{name}: missing")),
            Some(d) if d.spec.replicas == 0 || d.status.ready_replicas < d.spec.replicas => {
                Some(format!("{name}: {}/{} ready", d.status.ready_replicas, d.spec.replicas))
            }
            Some(_) => None,
        })
        .collect()
}

/// Service -> digest reference, from the references a release runs.
fn pins_of(images: &[String], services: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut pins = BTreeMap::new();
    for service in services {
        let found = images.iter().find(|i| repository(i).rsplit('/').next() == Some(service.as_str()));
        match found {
            Some(image) if is_digest_ref(image) => {
                pins.insert(service.clone(), image.clone());
            }
            Some(image) => return Err(format!("`{image}` is not pinned by digest")),
            None => return Err(format!("it names no image for `{service}`")),
        }
    }
    Ok(pins)
}

/// Render, pin to `pins`, validate, diff, confirm, apply, verify, and record as known-good at
/// `revision`; on a failure, put the last known-good release back.
fn release(
    ctx: &Ctx,
    env: &str,
    args: &DeployArgs,
    pins: &BTreeMap<String, String>,
    revision: &str,
) -> Result<ExitCode> {
    let overlay = overlay(&ctx.root, env)?;
    let namespace = overlay_namespace(&ctx.root, env)?;
    let deployments = deployments(ctx);
    let kube = Kube { program: kubectl_program() };
    let work = work_dir(ctx, env)?;
    let dir = &work.dir;

    // 1-2: render, pin through a generated overlay, validate offline.
    let rendered = kube.checked(&["kustomize", &overlay.display().to_string()])?;
    let pin_dir = dir.join("pinned");
    std::fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let kustomization = pin_dir.join("kustomization.yaml");
    // kustomize takes only relative paths to other kustomizations.
    let from_pin_dir = relative(&pin_dir.canonicalize()?, &overlay.canonicalize()?);
    std::fs::write(&kustomization, pin_overlay(&from_pin_dir, &rendered, pins)?)
        .with_context(|| format!("writing {}", kustomization.display()))?;
    let pinned = kube.checked(&["kustomize", &pin_dir.display().to_string()])?;
    check_pinned(&pinned, pins)?;
    let render_file = dir.join("render.yaml");
    std::fs::write(&render_file, &pinned).with_context(|| format!("writing {}", render_file.display()))?;
    validate(ctx, env, &render_file)?;

    // 3: what would change.
    let file = render_file.display().to_string();
    // `kubectl diff` exits 1 when there are differences; anything else but 0 is a failure.
    let diff_args = ["diff", "--server-side", "--field-manager=xtask", "--force-conflicts", "-f", &file];
    Kube::announce(&diff_args);
    let diff = kube.cmd(&diff_args).ok_codes(&[0, 1]).checked_output()?;
    let changes = diff.status.code() != Some(0);
    // The one presentation of the plan (human or JSON), then the one confirmation point.
    if ctx.json {
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
    confirm(env, &args.apply)?;
    let known_good = fetch_known_good(&kube, &namespace)?;
    if known_good.is_none() {
        eprintln!("warning: {namespace} has no known-good render yet (first deploy): a failure cannot be rolled back");
    }

    // 6: apply, wait, smoke.
    let timeout = args.apply.timeout;
    let edge = edge_service(ctx);
    let outcome = apply(&kube, &render_file)
        .map_err(|e| vec![format!("{e:#}")])
        .and_then(|()| wait_rollouts(&kube, &namespace, &deployments, timeout))
        .and_then(|()| {
            smoke(&kube, &namespace, &deployments, edge.map(|s| (s.name.as_str(), s.port, s.ready.as_str())))
        });
    match outcome {
        Ok(()) => {
            let cm = dir.join("known-good-configmap.json");
            std::fs::write(&cm, known_good_configmap(&namespace, &pinned, revision, pins))?;
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
            let Some(good) = known_good else {
                bail!(
                    "deploy of {env} failed ({}); there is no known-good render to roll back to",
                    failures.join("; ")
                );
            };
            eprintln!("rolling back {env} to the known-good render of {}", good.deployed_at);
            match roll_back(&kube, dir, &namespace, &good.render, &deployments, timeout) {
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

pub fn rollback(ctx: &Ctx, args: &EnvArgs) -> Result<ExitCode> {
    overlay(&ctx.root, &args.env)?;
    let namespace = overlay_namespace(&ctx.root, &args.env)?;
    let kube = Kube { program: kubectl_program() };
    let Some(good) = fetch_known_good(&kube, &namespace)? else {
        bail!("{namespace} has no known-good render (no successful `cargo xtask deploy --env {}` yet)", args.env);
    };
    if ctx.dry_run {
        eprintln!("dry run: would re-apply the known-good render of {}", good.deployed_at);
        return Ok(ExitCode::SUCCESS);
    }
    let work = work_dir(ctx, &args.env)?;
    match roll_back(&kube, &work.dir, &namespace, &good.render, &deployments(ctx), args.timeout) {
        Ok(()) => {
            eprintln!("rolled back {} to the known-good render of {}", args.env, good.deployed_at);
            Ok(ExitCode::SUCCESS)
        }
        Err(failures) => bail!("rollback of {} failed: {}", args.env, failures.join("; ")),
    }
}

/// `deploy history` on Kubernetes: the cluster keeps the last known-good release (one entry).
pub fn history(ctx: &Ctx, args: &EnvArgs) -> Result<ExitCode> {
    overlay(&ctx.root, &args.env)?;
    let namespace = overlay_namespace(&ctx.root, &args.env)?;
    let kube = Kube { program: kubectl_program() };
    let good = fetch_known_good(&kube, &namespace)?;
    let entries: Vec<serde_json::Value> = good
        .iter()
        .map(|g| {
            serde_json::json!({"state": "known-good", "commit": g.revision, "deployed_at": g.deployed_at, "images": g.images})
        })
        .collect();
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"env": args.env, "releases": entries}))?);
    } else if let Some(g) = &good {
        println!("known-good  commit {}  deployed {}  {}", g.revision, g.deployed_at, g.images.join(" "));
    } else {
        println!("{}: no known-good release yet", args.env);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(ctx: &Ctx, args: &EnvArgs) -> Result<ExitCode> {
    overlay(&ctx.root, &args.env)?;
    let namespace = overlay_namespace(&ctx.root, &args.env)?;
    let kube = Kube { program: kubectl_program() };
    let list: List<Deployment> = kube.cmd(&["get", "deployments", "-n", &namespace, "-o", "json"]).read_json()?;
    let known_good = fetch_known_good(&kube, &namespace)?;
    let images = |d: &Deployment| d.spec.template.spec.containers.iter().map(|c| c.image.clone()).collect::<Vec<_>>();
    if ctx.json {
        let deployments: Vec<serde_json::Value> = list
            .items
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.metadata.name,
                    "ready": d.status.ready_replicas,
                    "replicas": d.spec.replicas,
                    "images": images(d),
                })
            })
            .collect();
        let known_good =
            known_good.map(|good| serde_json::json!({ "revision": good.revision, "deployed_at": good.deployed_at }));
        let report = serde_json::json!({ "target": "k8s", "env": args.env, "namespace": namespace,
            "deployments": deployments, "known_good": known_good });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<12} {:<8} image", "deployment", "ready");
    for d in &list.items {
        let ready = format!("{}/{}", d.status.ready_replicas, d.spec.replicas);
        println!("{:<12} {ready:<8} {}", d.metadata.name, images(d).join(", "));
    }
    match known_good {
        Some(good) => println!("known-good: revision {} deployed at {}", good.revision, good.deployed_at),
        None => println!("known-good: none yet"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:5000/api@sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn our_images_are_pinned_by_the_name_the_render_gives_them_and_strangers_refused() {
        let pins = BTreeMap::from([("api".to_string(), A.to_string())]);
        let render = "spec:\n  containers:\n    - name: api\n      image: registry.example.invalid/platform/api:unpinned\n    - image: \"api\"\n";
        let overlay = pin_overlay(Path::new("/repo/infra/k8s/overlays/dev"), render, &pins).expect("pins");
        assert!(overlay.contains("resources:\n  - \"/repo/infra/k8s/overlays/dev\"\n"), "{overlay}");
        let digest = A.split_once('@').expect("digest").1;
        for name in ["registry.example.invalid/platform/api", "api"] {
            let entry =
                format!("  - name: \"{name}\"\n    newName: \"127.0.0.1:5000/api\"\n    digest: \"{digest}\"\n");
            assert!(overlay.contains(&entry), "{name} in {overlay}");
        }
        let stranger = "      image: docker.io/library/nginx:1.25\n";
        let err = pin_overlay(Path::new("/o"), stranger, &pins).expect_err("refused").to_string();
        assert!(err.contains("neither one of our services nor pinned"), "{err}");
        let pinned_stranger = format!("      image: docker.io/library/nginx@sha256:{}\n", "2".repeat(64));
        assert!(!pin_overlay(Path::new("/o"), &pinned_stranger, &pins).expect("kept").contains("nginx"));
    }

    #[test]
    fn a_render_is_accepted_only_with_every_image_at_its_pushed_digest() {
        let pins = BTreeMap::from([("api".to_string(), A.to_string())]);
        assert!(check_pinned(&format!("      image: {A}\n"), &pins).is_ok());
        let other = A.replace("1111", "3333");
        let err = check_pinned(&format!("      image: {other}\n"), &pins).expect_err("wrong digest").to_string();
        assert!(err.contains("not the pushed"), "{err}");
        let err = check_pinned("      image: api:v1\n", &pins).expect_err("a tag").to_string();
        assert!(err.contains("left `api:v1` unpinned"), "{err}");
    }

    #[test]
    fn the_pin_overlay_reaches_the_environment_by_a_relative_path() {
        let rel = |a: &str, b: &str| relative(Path::new(a), Path::new(b)).display().to_string();
        assert_eq!(
            rel("/repo/target/xtask/deploy/dev/pinned", "/repo/infra/k8s/overlays/dev"),
            "../../../../../infra/k8s/overlays/dev"
        );
        assert_eq!(rel("/ci/target/deploy", "/src/repo/infra"), "../../../src/repo/infra");
        assert_eq!(rel("/a/b", "/a/b/c"), "c");
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
        let pods: List<Pod> = serde_json::from_value(serde_json::json!({"items": [
            {"metadata": {"name": "api-1", "labels": {"app.kubernetes.io/name": "api"}},
             "status": {"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}},
            {"metadata": {"name": "worker-1", "labels": {"app.kubernetes.io/name": "worker"}},
             "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}],
                        "conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "gateway-1", "labels": {"app.kubernetes.io/name": "gateway"}},
             "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}},
            {"metadata": {"name": "postgres-0", "labels": {"app.kubernetes.io/name": "postgres"}},
             "status": {"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}},
            {"metadata": {"name": "bare-pod"}},
        ]}))
        .expect("kubectl's shape");
        let deployments = vec!["api".to_string(), "worker".to_string(), "gateway".to_string()];
        // Pods of other workloads (postgres here) are not ours to judge.
        assert_eq!(
            stuck_pods(&pods, &deployments),
            vec!["api: CrashLoopBackOff (pod api-1)", "gateway: ImagePullBackOff (pod gateway-1)"]
        );
        assert_eq!(unready_pods(&pods, &deployments), vec!["api-1", "gateway-1"]);
    }

    #[test]
    fn deployments_and_the_known_good_configmap_read_from_kubectl_json() {
        let list: List<Deployment> = serde_json::from_value(serde_json::json!({"items": [
            {"metadata": {"name": "api"}, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"image": A}]}}},
             "status": {"readyReplicas": 1}},
            {"metadata": {"name": "worker"}, "spec": {"replicas": 1}, "status": {}},
        ]}))
        .expect("kubectl's shape");
        assert_eq!((list.items[0].status.ready_replicas, list.items[0].spec.replicas), (1, 2));
        assert_eq!(list.items[0].spec.template.spec.containers[0].image, A);
        assert_eq!(list.items[1].status.ready_replicas, 0, "kubectl omits readyReplicas when none is ready");
        let cm: ConfigMap = serde_json::from_str(&known_good_configmap("ns", "kind: X\n", "abc", &BTreeMap::new()))
            .expect("our own ConfigMap reads back");
        let good = KnownGood::from_configmap(cm).expect("complete");
        assert_eq!((good.render.as_str(), good.revision.as_str()), ("kind: X\n", "abc"));
        assert!(KnownGood::from_configmap(ConfigMap::default()).is_err(), "no render.yaml");
    }

    #[test]
    fn a_release_is_promoted_only_whole_pinned_and_healthy() {
        let services = vec!["api".to_string(), "worker".to_string()];
        let worker = A.replace("/api@", "/worker@");
        let pins = pins_of(&[A.to_string(), worker.clone()], &services).expect("pins");
        assert_eq!((pins["api"].as_str(), pins["worker"].as_str()), (A, worker.as_str()));
        assert!(pins_of(&[A.to_string()], &services).expect_err("no worker").contains("no image for `worker`"));
        let tagged = pins_of(&[A.to_string(), "r/worker:v1".into()], &services).expect_err("a tag");
        assert!(tagged.contains("not pinned by digest"), "{tagged}");

        let list: List<Deployment> = serde_json::from_value(serde_json::json!({"items": [
            {"metadata": {"name": "api"}, "spec": {"replicas": 2}, "status": {"readyReplicas": 1}},
        ]}))
        .expect("kubectl's shape");
        assert_eq!(unhealthy_deployments(&list, &services), ["api: 1/2 ready", "worker: missing"]);
    }

    #[test]
    fn every_overlay_names_its_namespace() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = root.join(OVERLAYS_DIR);
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("overlays exist").flatten() {
            let env = entry.file_name().to_string_lossy().into_owned();
            assert_eq!(overlay_namespace(&root, &env).expect("namespace"), format!("platform-{env}"));
            seen += 1;
        }
        assert!(seen >= 2, "dev and prod at least");
        assert!(format!("{:#}", overlay(&root, "nope").expect_err("unknown")).contains("(environments: "));
    }
}
