//! `cargo xtask image build`: service images from one host build, written by xtask ("ko for Rust").
//!
//! Host builder (default): one `cargo build --release --locked` of every selected service,
//! statically linked for `x86_64-unknown-linux-gnu` (with cargo-auditable's dependency data when
//! it is installed), then xtask writes each image tar itself (see `oci.rs`), `docker load`s it as
//! `<service>:<git-sha>`, optionally pushes it, and records tag and digests in
//! `target/xtask/images.json`, which deploy pins by digest.
//!
//! Docker builder (`--builder docker`): `infra/docker/Dockerfile`, a cargo-chef multi-stage build
//! inside containers for teams that want hermetic builds; much slower (see BENCHMARKS.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::oci::{self, ImageDigests, ImageSpec};
use crate::plan::{Internal, Plan, Step};
use crate::runner::clean_command;
use crate::tools::{CARGO_AUDITABLE, DOCKER};
use crate::workspace::Workspace;
use crate::{Ctx, UsageError, affected};

/// The only target images are built for; explicit so `+crt-static` never reaches proc-macros.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";
/// Version of the `images.json` layout; bump when a field changes meaning.
pub const MANIFEST_SCHEMA: u32 = 1;

/// Build, load and optionally push container images of the services.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ImageCommand {
    /// Build service images (host build + xtask-written tars), load them into Docker, record digests.
    Build(BuildArgs),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Builder {
    /// Compile on this machine, write the image tars in xtask (fast, reproducible).
    #[default]
    Host,
    /// `docker build` with infra/docker/Dockerfile (cargo-chef; hermetic, slow).
    Docker,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BuildArgs {
    /// Only this service (repeatable); default: every service.
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,
    #[arg(long, value_enum, default_value = "host")]
    pub builder: Builder,
    /// Also push every image to this registry (e.g. 127.0.0.1:5000) and record its digest there.
    #[arg(long, value_name = "REGISTRY")]
    pub push: Option<String>,
    /// Only services whose binaries a change since --base can alter (others keep their record).
    #[arg(long)]
    pub changed: bool,
    /// Where the change starts (default: origin/main, else main); see `cargo xtask ci --changed`.
    #[arg(long, value_name = "REF", requires = "changed")]
    pub base: Option<String>,
    /// The image the docker builder compiles in (must have Rust and cargo-chef).
    #[arg(long, value_name = "IMAGE", default_value = "rust:1.95-bookworm")]
    pub builder_image: String,
    /// Write the tars only: no `docker load`, no push (no Docker needed).
    #[arg(long, conflicts_with = "push")]
    pub no_load: bool,
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<std::process::ExitCode> {
    match &args.command {
        ImageCommand::Build(build) => ctx.execute(&plan(ctx, &ctx.workspace()?, build)?),
    }
}

/// The commit an image is built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub sha: String,
    /// What images are tagged with: 12 hex digits, plus `-dirty` for uncommitted changes.
    pub tag: String,
    pub dirty: bool,
    /// The commit time, RFC 3339 UTC: the images' `created`, so rebuilds are byte-identical.
    pub created: String,
}

impl Revision {
    pub fn of(root: &Path) -> Result<Revision> {
        let sha = crate::git::git(root, &["rev-parse", "HEAD"])
            .map_err(|e| UsageError(format!("images are tagged with the commit, but {e:#}; commit first")))?
            .trim()
            .to_string();
        let epoch: i64 = crate::git::git(root, &["log", "-1", "--format=%ct", "HEAD"])?
            .trim()
            .parse()
            .context("git printed no commit time")?;
        let dirty = !crate::git::git(root, &["status", "--porcelain"])?.trim().is_empty();
        let short = &sha[..sha.len().min(12)];
        let tag = if dirty { format!("{short}-dirty") } else { short.to_string() };
        Ok(Revision { sha, tag, dirty, created: rfc3339_utc(epoch) })
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (days-to-civil after H. Hinnant).
pub fn rfc3339_utc(epoch: i64) -> String {
    let (days, secs) = (epoch.div_euclid(86_400), epoch.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Where image tars, their records and the build manifest go.
pub fn output_dir(ws: &Workspace) -> PathBuf {
    ws.target_dir.join("xtask")
}

pub fn manifest_path(ws: &Workspace) -> PathBuf {
    output_dir(ws).join("images.json")
}

/// Inputs of one image, fixed at plan time (shown by `--dry-run`).
#[derive(Clone, Debug, Serialize)]
pub struct AssembleImage {
    pub service: String,
    pub binary: PathBuf,
    pub tar: PathBuf,
    pub record: PathBuf,
    pub port: u16,
    pub version: String,
    pub source: String,
    pub revision: Revision,
}

/// What one build left behind, kept beside the tar until the manifest is written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    pub service: String,
    /// `<service>:<tag>` as loaded into Docker.
    pub image: String,
    pub revision: String,
    pub dirty: bool,
    pub created: String,
    /// Docker's image ID: the config digest.
    pub id: String,
    /// Digest of the OCI manifest inside the tar.
    pub manifest_digest: String,
    pub tar: PathBuf,
    pub tar_sha256: String,
    pub binary_size: u64,
    /// The compressed layer: what pulling the image costs.
    pub layer_size: u64,
    /// Set by `--push`: `<registry>/<service>@sha256:...`, what deploy pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<String>,
}

/// `target/xtask/images.json`: the last image built for each service.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BuildManifest {
    pub schema: u32,
    pub images: BTreeMap<String, ImageRecord>,
}

impl BuildManifest {
    pub fn read(path: &Path) -> Result<BuildManifest> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let manifest: BuildManifest = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a build manifest; delete it and rebuild", path.display()))?;
                if manifest.schema != MANIFEST_SCHEMA {
                    bail!(
                        "{} has schema {} (this xtask writes {MANIFEST_SCHEMA}); run `cargo xtask image build`",
                        path.display(),
                        manifest.schema
                    );
                }
                Ok(manifest)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(BuildManifest { schema: MANIFEST_SCHEMA, images: BTreeMap::new() })
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Write the record of every image into the manifest, keeping other services' entries.
#[derive(Clone, Debug, Serialize)]
pub struct RecordImages {
    pub records: Vec<PathBuf>,
    pub manifest: PathBuf,
    /// Images were loaded into Docker: check that Docker's image ID is ours.
    pub loaded: bool,
    pub registry: Option<String>,
}

fn services_to_build(ctx: &Ctx, ws: &Workspace, args: &BuildArgs, plan: &mut Plan) -> Result<Vec<String>> {
    let mut services = ws.require_services(&args.services)?;
    if services.is_empty() {
        services = ws.services().map(|(n, _)| n.clone()).collect();
    }
    if services.is_empty() {
        return Err(UsageError("no service declares [package.metadata.service]; nothing to build".into()).into());
    }
    if args.changed {
        let base = args.base.clone().unwrap_or_else(|| crate::commands::ci::default_base(ctx));
        let files = crate::git::changed_files(&ctx.root, &base)?;
        let affected = affected::compute_reach(ws, &files, affected::Reach::Binaries);
        let before = services.len();
        services.retain(|s| affected.packages.contains_key(s));
        plan.notes.push(format!(
            "--changed: {} of {before} service image(s) to rebuild since merge-base with {base}: {}",
            services.len(),
            if services.is_empty() { "none".to_string() } else { services.join(", ") }
        ));
    }
    Ok(services)
}

pub fn plan(ctx: &Ctx, ws: &Workspace, args: &BuildArgs) -> Result<Plan> {
    let mut plan = Plan::new("image build");
    if let Some(registry) = &args.push {
        validate_registry(registry)?;
    }
    let services = services_to_build(ctx, ws, args, &mut plan)?;
    if services.is_empty() {
        return Ok(plan);
    }
    let revision = Revision::of(&ctx.root)?;
    if revision.dirty {
        plan.notes.push(format!(
            "warning: the working tree has uncommitted changes; images are tagged {} and not reproducible from {}",
            revision.tag, revision.sha
        ));
    }
    match args.builder {
        Builder::Host => host_steps(ctx, ws, args, &services, &revision, &mut plan)?,
        Builder::Docker => docker_steps(ctx, ws, args, &services, &revision, &mut plan)?,
    }
    Ok(plan)
}

fn validate_registry(registry: &str) -> Result<()> {
    let ok = !registry.is_empty()
        && !registry.contains("://")
        && !registry.ends_with('/')
        && registry.chars().all(|c| c.is_ascii_alphanumeric() || "-._:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "--push {registry}: expected a registry host[:port][/path] without a scheme, e.g. 127.0.0.1:5000"
        ))
        .into())
    }
}

fn labels(a: &AssembleImage) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("org.opencontainers.image.created".to_string(), a.revision.created.clone()),
        ("org.opencontainers.image.revision".to_string(), a.revision.sha.clone()),
        ("org.opencontainers.image.source".to_string(), a.source.clone()),
        ("org.opencontainers.image.title".to_string(), a.service.clone()),
        ("org.opencontainers.image.version".to_string(), a.version.clone()),
    ])
}

fn source_of(ctx: &Ctx, ws: &Workspace, service: &str) -> String {
    ws.members
        .get(service)
        .and_then(|m| m.repository.clone())
        .or_else(|| crate::git::git(&ctx.root, &["remote", "get-url", "origin"]).ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

fn host_steps(
    ctx: &Ctx,
    ws: &Workspace,
    args: &BuildArgs,
    services: &[String],
    revision: &Revision,
    plan: &mut Plan,
) -> Result<()> {
    let auditable = CARGO_AUDITABLE.locate().is_some();
    let mut cargo_args: Vec<String> = Vec::new();
    if auditable {
        cargo_args.push("auditable".into());
    } else if std::env::var_os("CI").is_some() {
        return Err(anyhow::anyhow!(
            "cargo-auditable not found on PATH (CI images must carry their dependency list for scanners); install: {}",
            CARGO_AUDITABLE.install_hint
        ));
    } else {
        plan.notes.push(format!(
            "warning: cargo-auditable not installed: the binaries will not list their crates for scanners ({})",
            CARGO_AUDITABLE.install_hint
        ));
    }
    cargo_args.extend(["build".into(), "--release".into(), "--locked".into(), "--target".into(), TARGET.into()]);
    for s in services {
        cargo_args.extend(["-p".into(), s.clone()]);
    }
    let mut compile = Step::cargo(
        "image:compile",
        &format!("static release build of {} for {TARGET}", services.join(", ")),
        cargo_args,
        &ctx.root,
    )
    // Target-scoped flags reach the service binaries but never build scripts or proc-macros.
    .with_env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", STATIC_RUSTFLAGS);
    if auditable {
        compile = compile.requiring(&CARGO_AUDITABLE);
    }
    plan.push(compile);

    let out = output_dir(ws);
    let mut records = Vec::new();
    for service in services {
        let meta = ws.members[service].service.as_ref().context("service metadata")?;
        let assemble = AssembleImage {
            service: service.clone(),
            binary: ws.target_dir.join(TARGET).join("release").join(service),
            tar: out.join("images").join(format!("{service}.tar")),
            record: out.join("images").join(format!("{service}.json")),
            port: meta.port,
            version: ws.members[service].version.clone(),
            source: source_of(ctx, ws, service),
            revision: revision.clone(),
        };
        records.push(assemble.record.clone());
        let image = format!("{service}:{}", revision.tag);
        let tar = assemble.tar.display().to_string();
        plan.push(Step::internal(
            &format!("image:assemble:{service}"),
            &format!("write {image} as an image tar (scratch + static binary, uid 65532)"),
            Internal::AssembleImage(Box::new(assemble)),
            &format!("cargo xtask image build --service {service} --no-load"),
        ));
        if !args.no_load {
            plan.push(
                Step::exec(
                    &format!("image:load:{service}"),
                    &format!("docker load {image}"),
                    "docker",
                    ["load", "-i", &tar],
                    &ctx.root,
                )
                .requiring(&DOCKER),
            );
        }
        if let Some(registry) = &args.push {
            let remote = format!("{registry}/{image}");
            plan.push(
                Step::exec(
                    &format!("image:tag:{service}"),
                    &format!("tag {remote}"),
                    "docker",
                    ["tag", &image, &remote],
                    &ctx.root,
                )
                .requiring(&DOCKER),
            );
            plan.push(
                Step::exec(
                    &format!("image:push:{service}"),
                    &format!("push {remote}"),
                    "docker",
                    ["push", &remote],
                    &ctx.root,
                )
                .requiring(&DOCKER),
            );
        }
    }
    plan.push(record_step(ws, records, !args.no_load, args.push.clone()));
    Ok(())
}

fn record_step(ws: &Workspace, records: Vec<PathBuf>, loaded: bool, registry: Option<String>) -> Step {
    let manifest = manifest_path(ws);
    Step::internal(
        "image:record",
        &format!("record tags and digests in {}", manifest.display()),
        Internal::RecordImages(Box::new(RecordImages { records, manifest, loaded, registry })),
        "cargo xtask image build",
    )
}

fn docker_steps(
    ctx: &Ctx,
    ws: &Workspace,
    args: &BuildArgs,
    services: &[String],
    revision: &Revision,
    plan: &mut Plan,
) -> Result<()> {
    let _ = (ctx, ws, args, services, revision, plan);
    Err(UsageError("--builder docker is not available yet".into()).into())
}

/// An ELF with a `PT_INTERP` program header needs a dynamic loader, which scratch does not have.
pub fn elf_interpreter(binary: &[u8]) -> Result<Option<String>> {
    let word = |at: usize, n: usize| -> Result<u64> {
        let bytes = binary.get(at..at + n).context("truncated ELF header")?;
        Ok(bytes.iter().rev().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    anyhow::ensure!(binary.starts_with(b"\x7fELF"), "not an ELF binary");
    anyhow::ensure!(binary.get(4) == Some(&2) && binary.get(5) == Some(&1), "not a 64-bit little-endian ELF");
    let phoff = word(0x20, 8)? as usize;
    let phentsize = word(0x36, 2)? as usize;
    let phnum = word(0x38, 2)? as usize;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if word(at, 4)? == 3 {
            let (offset, size) = (word(at + 8, 8)? as usize, word(at + 32, 8)? as usize);
            let path = binary.get(offset..offset + size).context("truncated PT_INTERP")?;
            return Ok(Some(String::from_utf8_lossy(path).trim_end_matches('\0').to_string()));
        }
    }
    Ok(None)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

/// The internal step: read the static binary, write the image tar and its record.
pub fn assemble(task: &AssembleImage, log: &mut dyn std::io::Write) -> Result<()> {
    let binary = std::fs::read(&task.binary)
        .with_context(|| format!("reading {} (did the image:compile step run?)", task.binary.display()))?;
    if let Some(interp) = elf_interpreter(&binary)? {
        bail!(
            "{} is dynamically linked (needs {interp}) and cannot run on scratch; is RUSTFLAGS set? it overrides \
             the target's +crt-static flag: unset it and rebuild",
            task.binary.display()
        );
    }
    let spec = ImageSpec {
        name: task.service.clone(),
        tag: task.revision.tag.clone(),
        binary_path: format!("/usr/local/bin/{}", task.service),
        binary: binary.clone(),
        port: task.port,
        created: task.revision.created.clone(),
        labels: labels(task),
        env: vec![],
    };
    let (tar, digests): (Vec<u8>, ImageDigests) = oci::image_tar(&spec)?;
    write_atomically(&task.tar, &tar)?;
    let record = ImageRecord {
        service: task.service.clone(),
        image: format!("{}:{}", task.service, task.revision.tag),
        revision: task.revision.sha.clone(),
        dirty: task.revision.dirty,
        created: task.revision.created.clone(),
        id: digests.config.clone(),
        manifest_digest: digests.manifest.clone(),
        tar: task.tar.clone(),
        tar_sha256: oci::sha256_hex(&tar),
        binary_size: binary.len() as u64,
        layer_size: digests.layer_size,
        pushed: None,
    };
    write_atomically(&task.record, &serde_json::to_vec_pretty(&record)?)?;
    writeln!(
        log,
        "{}: {} (binary {} KiB, layer {} KiB, id {})",
        record.image,
        task.tar.display(),
        record.binary_size / 1024,
        record.layer_size / 1024,
        &record.id[..19]
    )?;
    Ok(())
}

fn docker_inspect(reference: &str, format: &str) -> Result<String> {
    let docker = DOCKER.require()?;
    let out = clean_command(docker)
        .args(["image", "inspect", "--format", format, reference])
        .output()
        .context("running docker image inspect")?;
    if !out.status.success() {
        bail!("docker image inspect {reference}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The internal step: merge this build's records into `images.json` (checked against Docker).
pub fn record(task: &RecordImages, log: &mut dyn std::io::Write) -> Result<()> {
    let mut manifest = BuildManifest::read(&task.manifest)?;
    manifest.schema = MANIFEST_SCHEMA;
    for path in &task.records {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut record: ImageRecord = serde_json::from_slice(&bytes)?;
        if task.loaded {
            let id = docker_inspect(&record.image, "{{.Id}}")?;
            if id != record.id {
                bail!("docker has {} as {id}, but xtask wrote {}; was it loaded?", record.image, record.id);
            }
        }
        if let Some(registry) = &task.registry {
            let repository = format!("{registry}/{}", record.service);
            let digests = docker_inspect(&record.image, "{{json .RepoDigests}}")?;
            let digests: Vec<String> = serde_json::from_str(&digests).context("parsing RepoDigests")?;
            let pinned = digests
                .into_iter()
                .find(|d| d.split_once('@').is_some_and(|(repo, _)| repo == repository))
                .with_context(|| format!("{} has no digest in {repository} after the push", record.image))?;
            writeln!(log, "{}: pushed as {pinned}", record.image)?;
            record.pushed = Some(pinned);
        }
        manifest.images.insert(record.service.clone(), record);
    }
    write_atomically(&task.manifest, &serde_json::to_vec_pretty(&manifest)?)?;
    writeln!(log, "wrote {} ({} image(s))", task.manifest.display(), manifest.images.len())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_become_utc_rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn dynamic_binaries_are_told_apart_from_static_ones() {
        let ours = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        // Test binaries are built the default way: dynamically linked against glibc.
        let interp = elf_interpreter(&ours).expect("parse").expect("has an interpreter");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn registries_are_host_and_port_without_a_scheme() {
        assert!(validate_registry("127.0.0.1:5000").is_ok());
        assert!(validate_registry("ghcr.io/acme").is_ok());
        for bad in ["http://127.0.0.1:5000", "", "reg/", "a b"] {
            assert!(validate_registry(bad).is_err(), "{bad}");
        }
    }
}
