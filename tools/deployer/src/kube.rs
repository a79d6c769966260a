//! The Kubernetes target: render the environment's overlay, pin every image by digest from the
//! build manifest (kustomize's own `images:` transformer, in an overlay generated under the work
//! directory), validate offline, show the server-side diff, apply, wait for every rollout, smoke
//! test, record the release, verify it against the environment's SLOs; on any failure re-apply
//! the last good release. `rollback [--to ID]` does that on demand, `history` lists the releases
//! and `status` shows what runs.
//!
//! The release history lives in the cluster: one ConfigMap per release (`xtask-release-<id>` in
//! the environment's namespace, labelled `xtask/release`) holding its record and the pinned
//! render it applied, the last `--history-limit` kept. A rollback, from any machine, re-applies
//! a render from there. Renders go to kubectl as JSON (a `kind: List`). kubectl is `$KUBECTL`
//! when set (tests use a recorded stand-in; there is no cluster here).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use xtask_kit::UsageError;
use xtask_kit::handoff::{DeployArgs, EnvArgs, OVERLAYS_DIR, RollbackArgs, Service, UnlockArgs, VerifyArgs, overlays};
use xtask_kit::images::BuildManifest;
use xtask_kit::process::Cmd;

use crate::history::{self, Keeper, Release, State};
use crate::verify;
use crate::{Ctx, confirm, work_dir};

/// The label every release ConfigMap carries (its value: the release id).
const RELEASE_LABEL: &str = "xtask/release";

fn kubectl_program() -> String {
    std::env::var("KUBECTL").ok().filter(|k| !k.is_empty()).unwrap_or_else(|| "kubectl".into())
}

/// kubectl, pinned to one context, with every command printed before it runs.
#[derive(Clone, Debug)]
pub struct Kube {
    program: String,
    /// `--context` on every call that talks to a cluster (rendering does not).
    context: Option<String>,
}

impl Kube {
    pub fn cmd(&self, args: &[&str]) -> Cmd {
        let cmd = Cmd::new(&self.program).args(args);
        match &self.context {
            Some(context) if args.first() != Some(&"kustomize") => cmd.args(["--context", context]),
            _ => cmd,
        }
    }

    pub fn announce(&self, args: &[&str]) {
        eprintln!("$ {}", self.cmd(args).line().replacen(&self.program, "kubectl", 1));
    }

    /// A long-running kubectl whose streams the caller wires itself.
    fn command(&self, args: &[&str]) -> Command {
        self.announce(args);
        self.cmd(args).to_command()
    }

    /// For polling: the same call without announcing it each time.
    fn quiet_output(&self, args: &[&str]) -> Result<Output> {
        self.cmd(args).output()
    }

    /// Runs, insists on success, and reads its JSON answer.
    fn read_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        self.announce(args);
        self.cmd(args).read_json()
    }

    /// One object as JSON, or `None` when the API server says it is not there (NotFound); any
    /// other failure is an error naming `what`.
    pub fn get<T: serde::de::DeserializeOwned>(&self, args: &[&str], what: &str) -> Result<Option<T>> {
        let out = self.cmd(args).output()?;
        if out.status.success() {
            return Ok(Some(
                serde_json::from_slice(&out.stdout)
                    .with_context(|| format!("kubectl returned {what} that is not JSON"))?,
            ));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("NotFound") {
            return Ok(None);
        }
        bail!("cannot read {what}: {}", err.trim())
    }

    /// Runs and insists on success; the error carries kubectl's last words.
    pub fn checked(&self, args: &[&str]) -> Result<String> {
        self.announce(args);
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
    reason: String,
    message: String,
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
    conditions: Vec<Condition>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct ConfigMap {
    metadata: Meta,
    data: BTreeMap<String, String>,
}

/// The ConfigMap that keeps one release of an environment: its record and the render it applied.
fn release_configmap(namespace: &str, release: &Release, render: &str) -> String {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("xtask-release-{}", release.id),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "xtask", RELEASE_LABEL: release.id.to_string()},
        },
        "data": {
            "release.json": serde_json::to_string(release).expect("a release serialises"),
            "render.json": render,
        },
    });
    serde_json::to_string_pretty(&doc).expect("JSON values serialise")
}

/// A release and the render it applied, read back from its ConfigMap.
fn from_configmap(cm: &ConfigMap) -> Result<(Release, String)> {
    let name = &cm.metadata.name;
    let field = |key: &str| cm.data.get(key).with_context(|| format!("ConfigMap {name} has no {key}"));
    let release = serde_json::from_str(field("release.json")?)
        .with_context(|| format!("ConfigMap {name}: release.json is not a release record"))?;
    Ok((release, field("render.json")?.clone()))
}

/// A pinned render (kustomize's YAML stream) as the JSON `List`s kubectl applies: all of it (what
/// a release records and a rollback re-applies), its Namespaces (applied first: nothing can be
/// created in a namespace that does not exist) and the rest.
fn render_lists(yaml: &str) -> Result<(String, Option<String>, String)> {
    let mut items = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc).context("kustomize rendered YAML that does not parse")?;
        if !value.is_null() {
            items.push(value);
        }
    }
    let all = json_list(items.iter().collect())?;
    let (spaces, rest) = split_list(&all)?;
    Ok((all, spaces, rest))
}

fn json_list(items: Vec<&serde_json::Value>) -> Result<String> {
    Ok(serde_json::to_string_pretty(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}))?)
}

/// A JSON `List` as its Namespaces (`None`: it has none) and everything else.
fn split_list(render: &str) -> Result<(Option<String>, String)> {
    let list: serde_json::Value = serde_json::from_str(render).context("a render that is not a JSON List")?;
    let items = list["items"].as_array().context("a render that is not a JSON List")?;
    let (spaces, rest): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) =
        items.iter().partition(|i| i["kind"] == "Namespace");
    let spaces = if spaces.is_empty() { None } else { Some(json_list(spaces)?) };
    Ok((spaces, json_list(rest)?))
}

/// One environment's namespace, as the release history sees it.
struct Namespace<'a> {
    kube: Kube,
    env: &'a str,
    namespace: String,
    deployments: Vec<String>,
    dir: &'a Path,
    timeout: Duration,
    limit: usize,
}

impl Namespace<'_> {
    fn configmaps(&self) -> Result<Vec<ConfigMap>> {
        let selector = format!("app.kubernetes.io/managed-by=xtask,{RELEASE_LABEL}");
        let list: List<ConfigMap> =
            self.kube.read_json(&["get", "configmaps", "-n", &self.namespace, "-l", &selector, "-o", "json"])?;
        Ok(list.items)
    }

    /// The render release `id` applied.
    fn render_of(&self, id: u64) -> Result<String> {
        let name = format!("xtask-release-{id}");
        let cm: ConfigMap = self.kube.read_json(&["get", "configmap", &name, "-n", &self.namespace, "-o", "json"])?;
        Ok(from_configmap(&cm)?.1)
    }

    /// Write `release` with the render it applied; drop what is beyond the limit.
    fn write(&self, release: &Release, render: &str) -> Result<()> {
        let file = self.dir.join(format!("release-{}.json", release.id));
        std::fs::write(&file, release_configmap(&self.namespace, release, render))
            .with_context(|| format!("writing {}", file.display()))?;
        apply(&self.kube, &file).with_context(|| format!("recording release {} of {}", release.id, self.env))?;
        let old: Vec<String> = history::beyond(&self.releases()?, self.limit)
            .into_iter()
            .map(|id| format!("xtask-release-{id}"))
            .collect();
        if !old.is_empty() {
            let mut args = vec!["delete", "configmap"];
            args.extend(old.iter().map(String::as_str));
            args.extend(["-n", &self.namespace]);
            eprint!("{}", self.kube.checked(&args)?);
        }
        Ok(())
    }

    /// Record a successful apply of `render` as a release (or find it is what runs already).
    fn record_new(
        &self,
        render: &str,
        pins: &BTreeMap<String, String>,
        commit: &str,
        rollback_of: Option<u64>,
    ) -> Result<Release> {
        let releases = self.releases()?;
        let release = Release {
            id: history::next_id(&releases),
            commit: commit.to_string(),
            deployed_at: xtask_kit::date::now_rfc3339(),
            state: State::Deployed,
            why: None,
            rollback_of,
            images: pins.clone(),
            specs: Vec::new(),
            render: Some(sha256(render)),
        };
        if let Some(now) =
            history::current(&releases).filter(|r| r.content() == release.content() && rollback_of.is_none())
        {
            eprintln!("release {} of {} runs this render already", now.id, self.env);
            return Ok(now.clone());
        }
        self.write(&release, render)?;
        eprintln!("recorded release {} of {} (commit {})", release.id, self.env, history::short(commit));
        Ok(release)
    }

    /// Apply a render and wait for every rollout.
    /// Apply a whole render (its Namespace, then the rest as the environment's ApplySet, pruning
    /// what an earlier release applied and this one does not render) and wait for every rollout.
    fn put(&self, render: &str, name: &str) -> Result<(), Vec<String>> {
        let fail = |e: anyhow::Error| vec![format!("{e:#}")];
        let (spaces, workloads) = split_list(render).map_err(fail)?;
        if let Some(spaces) = spaces {
            let file = self.dir.join(format!("namespaces-{name}"));
            std::fs::write(&file, spaces).map_err(|e| vec![format!("writing {}: {e}", file.display())])?;
            apply(&self.kube, &file).map_err(fail)?;
        }
        let file = self.dir.join(name);
        std::fs::write(&file, workloads).map_err(|e| vec![format!("writing {}: {e}", file.display())])?;
        apply_set(&self.kube, &self.namespace, &file).map_err(fail)?;
        wait_rollouts(&self.kube, &self.namespace, &self.deployments, self.timeout)
    }
}

impl Keeper for Namespace<'_> {
    fn env(&self) -> &str {
        self.env
    }

    fn releases(&self) -> Result<Vec<Release>> {
        let mut out = Vec::new();
        for cm in self.configmaps()? {
            out.push(from_configmap(&cm)?.0);
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    fn record(&self, release: &Release) -> Result<()> {
        self.write(release, &self.render_of(release.id)?)
    }

    fn restore(&self, release: &Release) -> Result<Release> {
        let render = self.render_of(release.id)?;
        self.put(&render, &format!("release-{}-render.json", release.id))
            .map_err(|f| anyhow::anyhow!("putting release {} back failed: {}", release.id, f.join("; ")))?;
        self.record_new(&render, &release.images, &release.commit, Some(release.id))
    }
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

/// Server-side apply as field manager `xtask`, never forcing: a field another manager owns (an
/// HPA's replicas) is a conflict kubectl names, not something to overwrite.
fn apply(kube: &Kube, file: &Path) -> Result<()> {
    let path = file.display().to_string();
    let said = kube.checked(&["apply", "--server-side", "--field-manager=xtask", "-f", &path])?;
    eprint!("{said}");
    Ok(())
}

/// The environment's ApplySet: the ConfigMap that records what a release applied, so the next
/// apply prunes what it no longer renders (kubectl's ApplySet, KEP-3659; `KUBECTL_APPLYSET=true`
/// while kubectl keeps it behind that switch).
pub const APPLYSET: &str = "configmap/xtask-applyset";

/// The workloads of a release, applied as the environment's ApplySet with `--prune`: what an
/// earlier release applied (labelled as the set's) and this one does not render is deleted, and
/// a rollback removes what the failed release added.
fn apply_set(kube: &Kube, namespace: &str, file: &Path) -> Result<()> {
    let path = file.display().to_string();
    let applyset = format!("--applyset={APPLYSET}");
    let args = ["apply", "--server-side", "--field-manager=xtask", &applyset, "--prune", "-n", namespace, "-f", &path];
    kube.announce(&args);
    let said = kube.cmd(&args).env("KUBECTL_APPLYSET", "true").read()?;
    eprint!("{said}");
    Ok(())
}

/// `apply --dry-run=server`: the API server's admission (Pod Security, quotas, webhooks, field
/// conflicts) judges the release before any of it is applied. A refusal, or a Pod Security
/// warning (pods the namespace would refuse), is a usage error naming what the server said.
fn server_dry_run(kube: &Kube, file: &Path) -> Result<()> {
    let path = file.display().to_string();
    let args = ["apply", "--server-side", "--field-manager=xtask", "--dry-run=server", "-f", &path];
    kube.announce(&args);
    let out = kube.cmd(&args).output()?;
    if !out.status.success() {
        return Err(UsageError(format!(
            "the API server refused the release in a server-side dry run, so none of it was applied: {}",
            crate::one_line(&String::from_utf8_lossy(&out.stderr))
        ))
        .into());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let refused: Vec<&str> = stderr.lines().filter(|l| l.contains("would violate PodSecurity")).collect();
    if !refused.is_empty() {
        return Err(UsageError(format!(
            "the namespace's Pod Security admission would refuse these pods, so none of the release was applied: {}",
            refused.join("; ")
        ))
        .into());
    }
    Ok(())
}

/// A Secret a workload of the render needs: (secret, key or `None` for all of it, workload).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SecretNeed {
    secret: String,
    key: Option<String>,
    workload: String,
}

/// Every Secret (and key) the render's pod templates read, unless marked `optional`:
/// `env[].valueFrom.secretKeyRef`, `envFrom[].secretRef`, `volumes[].secret`, `imagePullSecrets`.
fn secret_needs(render: &serde_json::Value) -> Vec<SecretNeed> {
    let mut out = std::collections::BTreeSet::new();
    for item in render["items"].as_array().into_iter().flatten() {
        let spec = &item["spec"]["template"]["spec"];
        if spec.is_null() {
            continue;
        }
        let workload =
            format!("{}/{}", item["kind"].as_str().unwrap_or("?"), item["metadata"]["name"].as_str().unwrap_or("?"));
        let mut need = |secret: &serde_json::Value, key: Option<&serde_json::Value>, optional: &serde_json::Value| {
            if let Some(secret) = secret.as_str().filter(|_| optional.as_bool() != Some(true)) {
                out.insert(SecretNeed {
                    secret: secret.to_string(),
                    key: key.and_then(|k| k.as_str()).map(str::to_string),
                    workload: workload.clone(),
                });
            }
        };
        let containers = spec["initContainers"].as_array().into_iter().chain(spec["containers"].as_array()).flatten();
        for c in containers {
            for e in c["env"].as_array().into_iter().flatten() {
                let r = &e["valueFrom"]["secretKeyRef"];
                need(&r["name"], Some(&r["key"]), &r["optional"]);
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                need(&e["secretRef"]["name"], None, &e["secretRef"]["optional"]);
            }
        }
        for v in spec["volumes"].as_array().into_iter().flatten() {
            need(&v["secret"]["secretName"], None, &v["secret"]["optional"]);
        }
        for p in spec["imagePullSecrets"].as_array().into_iter().flatten() {
            need(&p["name"], None, &serde_json::Value::Null);
        }
    }
    out.into_iter().collect()
}

/// The names and keys of a namespace's Secrets, never their values: a go-template prints only
/// each Secret's name and its data keys.
const SECRET_KEYS_TEMPLATE: &str =
    r#"{{range .items}}{{.metadata.name}}{{range $k, $v := .data}} {{$k}}{{end}}{{"\n"}}{{end}}"#;

/// Every needed Secret and key that the namespace lacks, as lines naming how to supply it.
fn missing_secrets(needs: &[SecretNeed], have: &BTreeMap<String, Vec<String>>, namespace: &str) -> Vec<String> {
    needs
        .iter()
        .filter(|n| match (have.get(&n.secret), &n.key) {
            (None, _) => true,
            (Some(keys), Some(key)) => !keys.contains(key),
            (Some(_), None) => false,
        })
        .map(|n| {
            let key = n.key.as_deref().unwrap_or("KEY");
            let what = match (&n.key, have.contains_key(&n.secret)) {
                (Some(k), true) => format!("Secret {} has no key {k}", n.secret),
                (Some(k), false) => format!("Secret {} (key {k}) does not exist", n.secret),
                (None, _) => format!("Secret {} does not exist", n.secret),
            };
            format!(
                "{what} in {namespace}, needed by {}: create it (`kubectl -n {namespace} create secret generic {} --from-literal={key}=...`, or an ExternalSecret: infra/k8s/README.md)",
                n.workload, n.secret
            )
        })
        .collect()
}

/// Checks every Secret the render needs exists with its keys, before the workloads are applied.
fn check_secrets(kube: &Kube, namespace: &str, render: &str) -> Result<()> {
    let render: serde_json::Value = serde_json::from_str(render)?;
    let needs = secret_needs(&render);
    if needs.is_empty() {
        return Ok(());
    }
    let template = format!("go-template={SECRET_KEYS_TEMPLATE}");
    let listing = kube.checked(&["get", "secrets", "-n", namespace, "-o", &template])?;
    let have: BTreeMap<String, Vec<String>> = listing
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_string(), words.map(str::to_string).collect()))
        })
        .collect();
    let missing = missing_secrets(&needs, &have, namespace);
    if !missing.is_empty() {
        return Err(UsageError(format!("{}; nothing of the release was applied", missing.join("; "))).into());
    }
    eprintln!(
        "secrets: all {} the render reads exist in {namespace} (names and keys checked, no values read)",
        needs.len()
    );
    Ok(())
}

/// Does the namespace exist yet? (A first deploy creates it from the render.)
fn namespace_exists(kube: &Kube, namespace: &str) -> Result<bool> {
    let args = ["get", "namespace", namespace, "-o", "json"];
    kube.announce(&args);
    Ok(kube.get::<serde_json::Value>(&args, &format!("namespace {namespace}"))?.is_some())
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

/// Deployments whose pods the API server refuses to create (a ResourceQuota exceeded, a
/// LimitRange or an admission webhook at pod creation): the controller sets `ReplicaFailure`
/// (https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/deployment-v1/#DeploymentStatus),
/// and waiting longer will not fix it.
fn refused_deployments(list: &List<Deployment>, deployments: &[String]) -> Vec<String> {
    list.items
        .iter()
        .filter(|d| deployments.contains(&d.metadata.name))
        .flat_map(|d| {
            d.status
                .conditions
                .iter()
                .filter(|c| c.r#type == "ReplicaFailure" && c.status == "True")
                .map(|c| format!("{}: its pods are refused ({}): {}", d.metadata.name, c.reason, c.message.trim()))
        })
        .collect()
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
        "watching pods and deployments meanwhile (kubectl get pods,deployments -n {namespace} -o json, every second) for states that will not recover"
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
        let mut stuck = Vec::new();
        if let Ok(out) = kube.quiet_output(&["get", "pods", "-n", namespace, "-o", "json"])
            && let Ok(pods) = serde_json::from_slice::<List<Pod>>(&out.stdout)
        {
            stuck.extend(stuck_pods(&pods, deployments));
        }
        if let Ok(out) = kube.quiet_output(&["get", "deployments", "-n", namespace, "-o", "json"])
            && let Ok(list) = serde_json::from_slice::<List<Deployment>>(&out.stdout)
        {
            stuck.extend(refused_deployments(&list, deployments));
        }
        if !stuck.is_empty() {
            for (_, mut child) in pending {
                let _ = child.kill();
                let _ = child.wait();
            }
            failures.extend(stuck);
            return Err(failures);
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

/// Readiness of every pod, then one HTTP check of the edge service through the API server's
/// service proxy (`kubectl get --raw .../services/NAME:PORT/proxy/PATH`): no child process to
/// keep alive, no local port, and the answer is kubectl's exit code (a non-2xx is an error).
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
    let raw =
        format!("/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/{}", path.trim_start_matches('/'));
    kube.checked(&["get", "--raw", &raw])
        .map(drop)
        .map_err(|e| vec![format!("smoke check: GET {path} on {service} through the API server: {e:#}")])
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
        .args(xtask_kit::handoff::needs_args(&ctx.facts.services))
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
    let work = work_dir(ctx, env)?;
    let (manifest, manifest_path) = crate::source::manifest(ctx, args, &work.dir)?;
    let pins = pins(&deployments(ctx), &manifest, &manifest_path)?;
    let kube = kube_for(&ctx.root, env, args.apply.context.as_deref(), true)?;
    release(ctx, env, args, &pins, &ctx.facts.revision, &work.dir, kube)
}

/// What an overlay says about the cluster it deploys to: `infra/k8s/overlays/ENV/cluster.toml`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ClusterConfig {
    /// The kube context (kubeconfig entry) of the environment's cluster.
    context: String,
}

fn cluster_config(root: &Path, env: &str) -> Result<ClusterConfig> {
    let file = root.join(OVERLAYS_DIR).join(env).join("cluster.toml");
    let how = format!("write {} with `context = \"KUBE-CONTEXT\"` (the cluster {env} deploys to)", file.display());
    let text = std::fs::read_to_string(&file).map_err(|_| UsageError(format!("{env} names no kube context: {how}")))?;
    let config: ClusterConfig =
        toml::from_str(&text).map_err(|e| UsageError(format!("{}: {}; {how}", file.display(), e.message())))?;
    if config.context.trim().is_empty() {
        return Err(UsageError(format!("{}: `context` is empty; {how}", file.display())).into());
    }
    Ok(config)
}

/// kubectl for `env`, pinned to the context its overlay names. `chosen` (`--context`) must be
/// that context; without it, when `guard` is set, kubectl's current context must be, so a deploy
/// never lands in whatever cluster happens to be current.
fn kube_for(root: &Path, env: &str, chosen: Option<&str>, guard: bool) -> Result<Kube> {
    let named = cluster_config(root, env)?.context;
    let file = format!("{OVERLAYS_DIR}/{env}/cluster.toml");
    let program = kubectl_program();
    match chosen {
        Some(c) if c != named => {
            return Err(UsageError(format!(
                "--context {c}, but {env} deploys to context `{named}` ({file}); pass --context {named}"
            ))
            .into());
        }
        Some(_) => {}
        None if guard => {
            let out = Cmd::new(&program).args(["config", "current-context"]).output()?;
            let current = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || current != named {
                let current = if current.is_empty() { "not set".to_string() } else { format!("`{current}`") };
                return Err(UsageError(format!(
                    "the current kube context is {current}, but {env} deploys to `{named}` ({file}); run `kubectl config use-context {named}` or pass --context {named}; nothing was applied"
                ))
                .into());
            }
        }
        None => {}
    }
    Ok(Kube { program, context: Some(named) })
}

/// An environment's namespace, with what deploy needs to change it.
fn namespace<'a>(
    ctx: &Ctx,
    env: &'a str,
    dir: &'a Path,
    timeout: Duration,
    limit: u32,
    kube: Kube,
) -> Result<Namespace<'a>> {
    overlay(&ctx.root, env)?;
    Ok(Namespace {
        kube,
        env,
        namespace: overlay_namespace(&ctx.root, env)?,
        deployments: deployments(ctx),
        dir,
        timeout,
        limit: limit as usize,
    })
}

/// `promote --from A --to B`: deploy to B exactly the digests A runs, read from A itself (its
/// current release), refusing when A runs nothing, failed its verification, is not healthy, or
/// runs another commit than the one being promoted (`--commit`).
pub fn promote(ctx: &Ctx, from: &str, commit: Option<&str>, args: &DeployArgs) -> Result<ExitCode> {
    let to = args.env.clone().expect("clap requires --env");
    overlay(&ctx.root, &to)?;
    if from == to {
        return Err(UsageError(format!("--from {from} --to {to}: promote between two environments")).into());
    }
    // The source is only read, in its own cluster: no current-context guard for it.
    let target_kube = kube_for(&ctx.root, &to, args.apply.context.as_deref(), true)?;
    let scratch = std::env::temp_dir();
    let source_kube = kube_for(&ctx.root, from, None, false)?;
    let source = namespace(ctx, from, &scratch, args.apply.timeout, args.apply.history_limit, source_kube)?;
    let releases = source.releases()?;
    let Some(now) = history::current(&releases) else {
        return Err(UsageError(format!(
            "{from} runs nothing to promote: {} has no release (deploy {from} first)",
            source.namespace
        ))
        .into());
    };
    if now.state == State::Failed {
        return Err(UsageError(format!(
            "{from}'s release {} failed its verification ({}); nothing was promoted",
            now.id,
            now.why.as_deref().unwrap_or("no reason recorded")
        ))
        .into());
    }
    crate::check_commit(from, &now.commit, commit)?;
    let list: List<Deployment> =
        source.kube.read_json(&["get", "deployments", "-n", &source.namespace, "-o", "json"])?;
    let unhealthy = unhealthy_deployments(&list, &source.deployments);
    if !unhealthy.is_empty() {
        return Err(UsageError(format!(
            "{from} is not healthy ({}); nothing was promoted to {to}",
            unhealthy.join(", ")
        ))
        .into());
    }
    let images: Vec<String> = now.images.values().cloned().collect();
    let pins = pins_of(&images, &source.deployments)
        .map_err(|e| UsageError(format!("{from}'s release {} cannot be promoted: {e}", now.id)))?;
    eprintln!(
        "promoting {from} release {} ({}, commit {}, deployed {}) to {to}",
        now.id, now.state, now.commit, now.deployed_at
    );
    let work = work_dir(ctx, &to)?;
    release(ctx, &to, args, &pins, &now.commit.clone(), &work.dir, target_kube)
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

/// Render, pin to `pins`, validate, diff, confirm, apply, wait, smoke, record as a release at
/// `revision`, verify; on a failure, put the last good release back.
fn release(
    ctx: &Ctx,
    env: &str,
    args: &DeployArgs,
    pins: &BTreeMap<String, String>,
    revision: &str,
    dir: &Path,
    kube: Kube,
) -> Result<ExitCode> {
    let overlay = overlay(&ctx.root, env)?;
    let ns = namespace(ctx, env, dir, args.apply.timeout, args.apply.history_limit, kube)?;
    let (kube, namespace) = (&ns.kube, &ns.namespace);
    // A broken SLO file is refused before anything changes.
    let slo = match args.apply.verify.no_verify {
        true => None,
        false => verify::preflight(&ctx.root, env, &process_vars())?,
    };
    // A migration that would break the running release (expand/contract) is refused too.
    xtask_kit::migrations::preflight(&ctx.root)?;

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
    let (render, spaces, workloads) = render_lists(&pinned)?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let file = dir.join(name);
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    };
    let list_file = write("render.json", &render)?;
    let spaces_file = spaces.map(|s| write("namespaces.json", &s)).transpose()?;
    let workloads_file = write("workloads.json", &workloads)?;

    // 3: what would change. A namespace that does not exist yet has nothing to diff against.
    let exists = namespace_exists(kube, namespace)?;
    let (changes, diff) = if exists {
        let file = list_file.display().to_string();
        // `kubectl diff` exits 1 when there are differences; anything else but 0 is a failure.
        let diff_args = ["diff", "--server-side", "--field-manager=xtask", "-f", &file];
        kube.announce(&diff_args);
        let diff = kube.cmd(&diff_args).ok_codes(&[0, 1]).checked_output()?;
        (diff.status.code() != Some(0), String::from_utf8_lossy(&diff.stdout).into_owned())
    } else {
        (true, format!("namespace {namespace} does not exist yet: the whole render is new\n"))
    };
    // The one presentation of the plan (human or JSON), then the one confirmation point.
    if ctx.json {
        let plan = serde_json::json!({
            "target": "k8s",
            "env": env,
            "namespace": namespace,
            "namespace_exists": exists,
            "images": pins,
            "changes": changes,
            "diff": diff,
            "render": pinned,
        });
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else if changes {
        print!("{diff}");
    } else {
        eprintln!("kubectl diff: no changes in {env}");
    }
    if ctx.dry_run {
        if exists {
            check_secrets(kube, namespace, &workloads)?;
        } else {
            eprintln!(
                "dry run: the Secrets the render reads are checked once the namespace exists (a deploy creates it first)"
            );
        }
        eprintln!("dry run: rendered, pinned, validated and diffed {env}; nothing was applied");
        return Ok(ExitCode::SUCCESS);
    }

    // 4-5: confirmation; the namespace (nothing else, not even the lock, can be created before
    // it); the lock, held until the release, its verification and any rollback are done; then
    // the rollback point, read under the lock.
    confirm(env, &args.apply)?;
    if !exists {
        eprintln!("creating namespace {namespace} from the render");
    }
    if let Some(file) = &spaces_file {
        apply(kube, file).context("applying the render's namespace")?;
    }
    let _lock = crate::lease::acquire(kube, namespace, env, dir)?;
    let releases = ns.releases()?;
    let before = releases.iter().rev().find(|r| r.state != State::Failed).cloned();
    if before.is_none() {
        eprintln!("warning: {namespace} has no release yet (first deploy): a failure cannot be rolled back");
    }

    // 6: the Secrets the workloads read, the API server's dry run of them, then the apply, the
    // wait and the smoke check.
    check_secrets(kube, namespace, &workloads)?;
    server_dry_run(kube, &workloads_file)?;
    let edge = edge_service(ctx);
    let outcome = ns.put(&workloads, "workloads.json").and_then(|()| {
        smoke(kube, namespace, &ns.deployments, edge.map(|s| (s.name.as_str(), s.port, s.ready.as_str())))
    });
    match outcome {
        Ok(()) => {
            let release = ns
                .record_new(&render, pins, revision, None)
                .context("the deploy succeeded, but recording the release failed")?;
            eprintln!("deployed {env} ({namespace}): every rollout finished, smoke checks passed");
            let Some(slo) = slo else {
                verify::note_unverified(env, release.id, args.apply.verify.no_verify);
                return Ok(ExitCode::SUCCESS);
            };
            verify_release(ctx, &ns, release, &slo, args.apply.verify.window, false)
        }
        // 7: put the last good release back.
        Err(failures) => {
            for f in &failures {
                eprintln!("failed: {f}");
            }
            let Some(good) = before else {
                bail!("deploy of {env} failed ({}); there is no earlier release to roll back to", failures.join("; "));
            };
            eprintln!("rolling back {env} to release {} (commit {})", good.id, history::short(&good.commit));
            let render = ns.render_of(good.id)?;
            match ns.put(&render, &format!("release-{}-render.json", good.id)) {
                Ok(()) => bail!(
                    "deploy of {env} failed ({}); rolled back to release {} (what ran before)",
                    failures.join("; "),
                    good.id
                ),
                Err(more) => bail!(
                    "deploy of {env} failed ({}), and so did the rollback ({})",
                    failures.join("; "),
                    more.join("; ")
                ),
            }
        }
    }
}

/// `${VAR}` in a cluster environment's SLO file: the runner's environment (in the release
/// workflow, repository variables).
fn process_vars() -> impl Fn(&str) -> Option<String> {
    |name| std::env::var(name).ok()
}

/// Verify `release` against `slo`; the verdict marks it, and a breach puts the last good
/// release back (unless `no_rollback`).
fn verify_release(
    ctx: &Ctx,
    ns: &Namespace<'_>,
    release: Release,
    slo: &verify::SloFile,
    window: Option<Duration>,
    no_rollback: bool,
) -> Result<ExitCode> {
    let loadgen = ctx.facts.loadgen.clone().context("xtask handed over no load generator (facts.loadgen)")?;
    let vars = process_vars();
    let setup = verify::Setup {
        root: &ctx.root,
        env: ns.env,
        slo,
        vars: &vars,
        loadgen: &loadgen,
        jobs: ns.deployments.clone(),
        window,
        work: ns.dir,
    };
    let verdict = verify::run(&setup)?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    }
    verify::print(&verdict);
    history::conclude(ns, release, &verdict, no_rollback)?;
    Ok(ExitCode::SUCCESS)
}

/// `deploy verify --target k8s`: the current release, held to the environment's SLOs.
pub fn verify(ctx: &Ctx, args: &VerifyArgs) -> Result<ExitCode> {
    let env = &args.env.env;
    let work = work_dir(ctx, env)?;
    let kube = kube_for(&ctx.root, env, args.env.context.as_deref(), true)?;
    let ns = namespace(ctx, env, &work.dir, args.env.timeout, history::DEFAULT_KEEP as u32, kube)?;
    let Some(slo) = verify::preflight(&ctx.root, env, &process_vars())? else {
        return Err(UsageError(format!(
            "{env} has no SLO file: write {}/{env}.toml (see infra/slo/README.md)",
            verify::SLO_DIR
        ))
        .into());
    };
    let Some(current) = history::current(&ns.releases()?).cloned() else {
        return Err(UsageError(format!("{env} has no release to verify (deploy it first)")).into());
    };
    if ctx.dry_run {
        eprintln!("dry run: would verify release {} of {env}", current.id);
        return Ok(ExitCode::SUCCESS);
    }
    // A breach rolls back: the environment is locked for the whole verification.
    let _lock = crate::lease::acquire(&ns.kube, &ns.namespace, env, &work.dir)?;
    verify_release(ctx, &ns, current, &slo, args.window, args.no_rollback)
}

/// `deploy rollback --target k8s [--to RELEASE]`.
pub fn rollback(ctx: &Ctx, args: &RollbackArgs) -> Result<ExitCode> {
    let env = &args.env.env;
    let work = work_dir(ctx, env)?;
    let kube = kube_for(&ctx.root, env, args.env.context.as_deref(), true)?;
    let ns = namespace(ctx, env, &work.dir, args.env.timeout, history::DEFAULT_KEEP as u32, kube)?;
    let _lock = match ctx.dry_run {
        true => None,
        false => Some(crate::lease::acquire(&ns.kube, &ns.namespace, env, &work.dir)?),
    };
    if history::rollback(&ns, args.to, ctx.dry_run)?.is_none() {
        bail!("{env} has no earlier good release to roll back to (see `cargo xtask deploy history --env {env}`)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `deploy unlock --target k8s`: delete the environment's deploy lock (`--force` required).
pub fn unlock(ctx: &Ctx, args: &UnlockArgs) -> Result<ExitCode> {
    let env = &args.env.env;
    overlay(&ctx.root, env)?;
    let kube = kube_for(&ctx.root, env, args.env.context.as_deref(), true)?;
    let namespace = overlay_namespace(&ctx.root, env)?;
    if ctx.dry_run {
        eprintln!("dry run: would delete the deploy lock of {env} (Lease {} in {namespace})", crate::lease::LEASE);
        return Ok(ExitCode::SUCCESS);
    }
    crate::lease::unlock(&kube, &namespace, env, args.force)?;
    Ok(ExitCode::SUCCESS)
}

/// `deploy history --target k8s`: the releases the namespace keeps.
pub fn history(ctx: &Ctx, args: &EnvArgs) -> Result<ExitCode> {
    let scratch = std::env::temp_dir();
    let kube = kube_for(&ctx.root, &args.env, args.context.as_deref(), true)?;
    let ns = namespace(ctx, &args.env, &scratch, args.timeout, history::DEFAULT_KEEP as u32, kube)?;
    history::print(&args.env, &ns.releases()?, ctx.json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn status(ctx: &Ctx, args: &EnvArgs) -> Result<ExitCode> {
    let scratch = std::env::temp_dir();
    let kube = kube_for(&ctx.root, &args.env, args.context.as_deref(), true)?;
    let ns = namespace(ctx, &args.env, &scratch, args.timeout, history::DEFAULT_KEEP as u32, kube)?;
    let namespace = &ns.namespace;
    let list: List<Deployment> = ns.kube.cmd(&["get", "deployments", "-n", namespace, "-o", "json"]).read_json()?;
    let releases = ns.releases()?;
    let current = history::current(&releases);
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
        let release = current.map(|r| {
            serde_json::json!({ "id": r.id, "state": r.state, "commit": r.commit, "deployed_at": r.deployed_at,
                "why": r.why, "rollback_of": r.rollback_of })
        });
        let report = serde_json::json!({ "target": "k8s", "env": args.env, "namespace": namespace,
            "deployments": deployments, "release": release });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<12} {:<8} image", "deployment", "ready");
    for d in &list.items {
        let ready = format!("{}/{}", d.status.ready_replicas, d.spec.replicas);
        println!("{:<12} {ready:<8} {}", d.metadata.name, images(d).join(", "));
    }
    match current {
        Some(r) => {
            println!("release {} ({}), commit {}, deployed {}", r.id, r.state, history::short(&r.commit), r.deployed_at)
        }
        None => println!("release: none yet"),
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
    fn deployments_whose_pods_are_refused_are_named_with_the_servers_message() {
        let list: List<Deployment> = serde_json::from_value(serde_json::json!({"items": [
            {"metadata": {"name": "worker"}, "status": {"conditions": [
                {"type": "Available", "status": "True"},
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                 "message": "pods \"worker-1\" is forbidden: exceeded quota: team, requested: pods=1, used: pods=4, limited: pods=4"}]}},
            {"metadata": {"name": "api"}, "status": {"conditions": [{"type": "ReplicaFailure", "status": "False"}]}},
            {"metadata": {"name": "other"}, "status": {"conditions": [{"type": "ReplicaFailure", "status": "True"}]}}
        ]}))
        .expect("list");
        let refused = refused_deployments(&list, &["api".into(), "worker".into()]);
        assert_eq!(
            refused,
            [
                "worker: its pods are refused (FailedCreate): pods \"worker-1\" is forbidden: exceeded quota: team, requested: pods=1, used: pods=4, limited: pods=4"
            ]
        );
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
    fn deployments_read_from_kubectl_json() {
        let list: List<Deployment> = serde_json::from_value(serde_json::json!({"items": [
            {"metadata": {"name": "api"}, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"image": A}]}}},
             "status": {"readyReplicas": 1}},
            {"metadata": {"name": "worker"}, "spec": {"replicas": 1}, "status": {}},
        ]}))
        .expect("kubectl's shape");
        assert_eq!((list.items[0].status.ready_replicas, list.items[0].spec.replicas), (1, 2));
        assert_eq!(list.items[0].spec.template.spec.containers[0].image, A);
        assert_eq!(list.items[1].status.ready_replicas, 0, "kubectl omits readyReplicas when none is ready");
    }

    #[test]
    fn a_release_reads_back_from_its_configmap_with_its_render() {
        let release = Release {
            id: 4,
            commit: "abc".into(),
            deployed_at: "2026-12-04T10:00:00Z".into(),
            state: State::Verified,
            why: None,
            rollback_of: Some(2),
            images: BTreeMap::from([("api".to_string(), A.to_string())]),
            specs: Vec::new(),
            render: Some(sha256("{}")),
        };
        let cm: ConfigMap =
            serde_json::from_str(&release_configmap("ns", &release, "{}")).expect("our own ConfigMap reads back");
        assert_eq!(cm.metadata.name, "xtask-release-4");
        assert_eq!(cm.metadata.labels[RELEASE_LABEL], "4", "listed by its label");
        assert_eq!(from_configmap(&cm).expect("complete"), (release, "{}".to_string()));
        let err = from_configmap(&ConfigMap::default()).expect_err("empty");
        assert!(format!("{err:#}").contains("has no release.json"), "{err:#}");
    }

    #[test]
    fn a_render_goes_to_kubectl_as_lists_namespaces_first() {
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n";
        let (all, spaces, rest) = render_lists(yaml).expect("parses");
        let list: serde_json::Value = serde_json::from_str(&all).expect("JSON");
        assert_eq!(list["kind"], "List");
        let spaces: serde_json::Value = serde_json::from_str(&spaces.expect("one")).expect("JSON");
        assert_eq!(spaces["items"][0]["metadata"]["name"], "a", "the namespace goes first, alone");
        let rest: serde_json::Value = serde_json::from_str(&rest).expect("JSON");
        assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
        assert!(render_lists("kind: ConfigMap\n").expect("parses").1.is_none(), "no namespace, nothing to apply first");
        let kinds: Vec<&str> =
            list["items"].as_array().expect("items").iter().map(|i| i["kind"].as_str().expect("kind")).collect();
        assert_eq!(kinds, ["Namespace", "Deployment"]);
        assert!(render_lists("a: [").is_err());
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
    fn the_secrets_a_render_reads_are_found_and_the_missing_ones_named_with_the_fix() {
        let render = serde_json::json!({"items": [{"kind": "Deployment", "metadata": {"name": "api"},
            "spec": {"template": {"spec": {
                "containers": [{"name": "api",
                    "env": [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "api-database", "key": "DATABASE_URL"}}},
                            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "extra", "key": "X", "optional": true}}}],
                    "envFrom": [{"secretRef": {"name": "api-env"}}]}],
                "volumes": [{"name": "tls", "secret": {"secretName": "api-tls"}}],
                "imagePullSecrets": [{"name": "registry"}]}}}},
            {"kind": "ConfigMap", "metadata": {"name": "c"}}]});
        let needs = secret_needs(&render);
        let names: Vec<(&str, Option<&str>)> = needs.iter().map(|n| (n.secret.as_str(), n.key.as_deref())).collect();
        assert_eq!(
            names,
            [("api-database", Some("DATABASE_URL")), ("api-env", None), ("api-tls", None), ("registry", None)],
            "optional references are not needed"
        );
        let have = BTreeMap::from([
            ("api-database".to_string(), vec!["REDIS_URL".to_string()]),
            ("api-env".to_string(), vec![]),
            ("api-tls".to_string(), vec!["tls.crt".to_string()]),
            ("registry".to_string(), vec![".dockerconfigjson".to_string()]),
        ]);
        let missing = missing_secrets(&needs, &have, "platform-prod");
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("Secret api-database has no key DATABASE_URL in platform-prod, needed by Deployment/api: create it (`kubectl -n platform-prod create secret generic api-database --from-literal=DATABASE_URL=...`"), "{}", missing[0]);
        assert!(missing_secrets(&needs, &BTreeMap::new(), "ns")[1].starts_with("Secret api-env does not exist in ns"));
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
