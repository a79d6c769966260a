//! `cargo xtask image build`: service images from one host build, written by xtask ("ko for Rust").
//!
//! Host builder (default): one `cargo build --release --locked` of every selected service,
//! statically linked for `x86_64-unknown-linux-gnu` (with cargo-auditable's dependency data when
//! it is installed), then xtask writes each image tar itself (see `oci.rs`), `docker load`s it as
//! `<service>:<git-sha>`, optionally pushes it, and records tag and digests in
//! `target/xtask/images.json`, which deploy pins by digest.
//!
//! Docker builder (`--builder docker`): `infra/docker/Dockerfile`, a cargo-chef multi-stage build
//! inside containers for teams that want hermetic builds; slower after a one-line change (27x
//! with cargo-chef's layer cache alone, 1.7x with BuildKit cache mounts; BENCHMARKS.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::date::rfc3339_utc;
use crate::images::{BuildManifest, Builder, ImageRecord, MANIFEST_SCHEMA};
use crate::oci::{self, ImageDigests, ImageSpec};
use crate::plan::{Plan, Step, Task};
use crate::process::Cmd;
use crate::tools::{CARGO_AUDITABLE, DOCKER, SKOPEO, TRIVY};
use crate::workspace::Workspace;
use crate::{Ctx, UsageError, affected};

/// The only target images are built for; explicit so `+crt-static` never reaches proc-macros.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The cargo profile images are built with (Cargo.toml: release, with the cross-crate ThinLTO
/// left to the linker; see `image_rustflags`).
pub const PROFILE: &str = "image";

/// Flags for the image target: a static binary, and cross-crate ThinLTO done by lld (the
/// toolchain's default linker for this target) instead of rustc, because lld keeps a cache of
/// optimised modules: after a one-line change only the modules it touches are optimised again
/// (a cached module is reused only when its inputs are identical, so the output is the same
/// bytes as an uncached link). The cache lives in the target dir, capped at 1 GiB.
pub fn image_rustflags(target_dir: &Path) -> Result<String> {
    let cache = target_dir.join(TARGET).join("thinlto-cache");
    let cache = cache.to_str().filter(|c| !c.contains(char::is_whitespace)).ok_or_else(|| {
        UsageError(format!(
            "target dir {} has whitespace or non-UTF-8 in its path, which cargo's RUSTFLAGS cannot carry; \
             set CARGO_TARGET_DIR to a plain path",
            target_dir.display()
        ))
    })?;
    Ok(format!(
        "-C target-feature=+crt-static -C linker-plugin-lto -C link-arg=-Wl,--thinlto-cache-dir={cache} \
         -C link-arg=-Wl,--thinlto-cache-policy=cache_size_bytes=1g"
    ))
}

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
    /// Make the docker builder's image offline: Debian (debootstrap) + this machine's Rust + cargo-chef.
    Builder(BuilderArgs),
    /// Push the image tars the last `image build` wrote to a registry, as they are (skopeo, no
    /// Docker daemon), with each image's SBOM and provenance beside it; record the digests.
    Push(PushArgs),
    /// Check a pushed image's SBOM and provenance are in the registry and about its digest.
    Verify(super::attest::VerifyArgs),
    /// Store credentials for a registry (from REGISTRY_USERNAME / REGISTRY_PASSWORD) where
    /// every later push, SBOM upload and deploy lookup reads them.
    Login(super::attest::LoginArgs),
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PushArgs {
    /// The registry (host[:port][/path], no scheme), e.g. 127.0.0.1:5000.
    #[arg(long, value_name = "REGISTRY")]
    pub registry: String,
    /// Only this service (repeatable); default: every image in images.json.
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BuilderArgs {
    /// Tag of the builder image (default: xtask-rust-builder:<rustc version>).
    #[arg(long, value_name = "IMAGE")]
    pub tag: Option<String>,
    /// Debian mirror for debootstrap.
    #[arg(long, value_name = "URL", default_value = "http://deb.debian.org/debian")]
    pub mirror: String,
    /// Make the Debian root file system again even if a finished one is cached.
    #[arg(long)]
    pub fresh: bool,
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
    /// The image the docker builder compiles in (Rust + cargo-chef); default: the one
    /// `cargo xtask image builder` made, else rust:<version>-bookworm from Docker Hub.
    #[arg(long, value_name = "IMAGE")]
    pub builder_image: Option<String>,
    /// Write the tars only, no `docker load` (no Docker needed; `--push` still pushes them).
    #[arg(long)]
    pub no_load: bool,
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<std::process::ExitCode> {
    match &args.command {
        ImageCommand::Build(build) => ctx.execute(&plan(ctx, &ctx.workspace()?, build)?),
        ImageCommand::Builder(builder) => ctx.execute(&builder_plan(ctx, &ctx.workspace()?, builder)?),
        ImageCommand::Push(push) => ctx.execute(&push_plan(ctx, &ctx.workspace()?, push)?),
        ImageCommand::Verify(verify) => super::attest::verify(ctx, verify),
        ImageCommand::Login(login) => ctx.execute(&super::attest::login_plan(login)?),
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

/// Write the record of every image into the manifest, keeping other services' entries.
#[derive(Clone, Debug, Serialize)]
pub struct RecordImages {
    pub records: Vec<PathBuf>,
    pub manifest: PathBuf,
    /// Images were loaded into Docker: check that Docker's image ID is ours.
    pub loaded: bool,
    pub registry: Option<String>,
    /// Images `docker build` made (no record file: Docker is the source of truth).
    pub docker_built: Vec<DockerBuilt>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DockerBuilt {
    pub service: String,
    pub image: String,
    pub tar: PathBuf,
    pub revision: Revision,
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
        validate_registry("--push", registry)?;
        if args.no_load && args.builder == Builder::Docker {
            return Err(UsageError(
                "--builder docker --no-load --push: the docker builder's images exist only in Docker; drop --no-load"
                    .into(),
            )
            .into());
        }
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

/// `registry`, given as `flag`, is host[:port][/path] without a scheme.
fn validate_registry(flag: &str, registry: &str) -> Result<()> {
    let ok = !registry.is_empty()
        && !registry.contains("://")
        && !registry.ends_with('/')
        && registry.chars().all(|c| c.is_ascii_alphanumeric() || "-._:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "{flag} {registry}: expected a registry host[:port][/path] without a scheme, e.g. 127.0.0.1:5000"
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
    let auditable = ctx.will_have(&CARGO_AUDITABLE);
    let mut cargo_args: Vec<String> = Vec::new();
    if auditable {
        cargo_args.push("auditable".into());
    } else if crate::in_ci() {
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
    cargo_args.extend(["build".into(), "--profile".into(), PROFILE.into(), "--locked".into()]);
    cargo_args.extend(["--target".into(), TARGET.into()]);
    for s in services {
        cargo_args.extend(["-p".into(), s.clone()]);
    }
    let mut compile = Step::cargo(
        "image:compile",
        &format!("static build (profile {PROFILE}) of {} for {TARGET}", services.join(", ")),
        cargo_args,
        &ctx.root,
    )
    // Target-scoped flags reach the service binaries but never build scripts or proc-macros.
    .with_env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", &image_rustflags(&ws.target_dir)?);
    if auditable {
        compile = compile.requiring(&CARGO_AUDITABLE);
    }
    plan.push(compile);

    let mut records = Vec::new();
    for service in services {
        let meta = ws.members[service].service.as_ref().context("service metadata")?;
        let assemble = AssembleImage {
            service: service.clone(),
            binary: ws.target_dir.join(TARGET).join(PROFILE).join(service),
            tar: image_file(ws, service, "tar"),
            record: image_file(ws, service, "json"),
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
            assemble,
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
            plan.push(skopeo_push(ctx, ws, service, &image_file(ws, service, "tar"), registry, &revision.tag));
            plan.push(attach_step(ctx, ws, service, registry));
        }
    }
    plan.push(record_step(ws, records, !args.no_load, args.push.clone(), Vec::new()));
    Ok(())
}

/// One service's files of a build, side by side: `tar` (the image), `json` (its record) and
/// `pushed` (the digest a push stored, beside the record it completes).
fn image_file(ws: &Workspace, service: &str, extension: &str) -> PathBuf {
    output_dir(ws).join("images").join(format!("{service}.{extension}"))
}

/// The image tar xtask wrote, copied to `registry` as it is: no Docker daemon, and the manifest
/// digest in the registry is the one xtask computed (`--preserve-digests` refuses any rewrite).
fn skopeo_push(ctx: &Ctx, ws: &Workspace, service: &str, tar: &Path, registry: &str, tag: &str) -> Step {
    let remote = format!("{registry}/{service}:{tag}");
    let mut args = vec!["copy".to_string(), "--quiet".into(), "--preserve-digests".into()];
    if super::attest::loopback(registry) {
        args.push("--dest-tls-verify=false".into());
    }
    args.extend([
        "--digestfile".into(),
        image_file(ws, service, "pushed").display().to_string(),
        format!("oci-archive:{}", tar.display()),
        format!("docker://{remote}"),
    ]);
    Step::exec(
        &format!("image:push:{service}"),
        &format!("push {remote} (skopeo, as written)"),
        "skopeo",
        args,
        &ctx.root,
    )
    .requiring(&SKOPEO)
}

/// After the push: the image's SBOM and provenance, pushed beside it.
fn attach_step(ctx: &Ctx, ws: &Workspace, service: &str, registry: &str) -> Step {
    let task = super::attest::AttachDocuments {
        service: service.to_string(),
        registry: registry.to_string(),
        record: image_file(ws, service, "json"),
        pushed: image_file(ws, service, "pushed"),
        cargo_lock: ws.root.join("Cargo.lock"),
        source: source_of(ctx, ws, service),
    };
    Step::internal(
        &format!("image:attest:{service}"),
        &format!("SBOM and provenance of {service}, pushed beside it"),
        task,
        &format!("cargo xtask image push --registry {registry} --service {service}"),
    )
    .requiring(&TRIVY)
    .requiring(&SKOPEO)
}

/// `image push`: what the last build wrote, to a registry, with the digests recorded.
pub fn push_plan(ctx: &Ctx, ws: &Workspace, args: &PushArgs) -> Result<Plan> {
    validate_registry("--registry", &args.registry)?;
    let manifest_file = manifest_path(ws);
    let manifest = BuildManifest::read(&manifest_file)?;
    let services: Vec<String> =
        if args.services.is_empty() { manifest.images.keys().cloned().collect() } else { args.services.clone() };
    if services.is_empty() {
        return Err(UsageError(format!(
            "{} records no image to push; run `cargo xtask image build --no-load` first",
            manifest_file.display()
        ))
        .into());
    }
    let mut plan = Plan::new("image push");
    let mut records = Vec::new();
    for service in &services {
        let Some(record) = manifest.images.get(service) else {
            return Err(UsageError(format!(
                "--service {service}: {} has no image for it; run `cargo xtask image build --service {service}`",
                manifest_file.display()
            ))
            .into());
        };
        if record.builder != Builder::Host || record.manifest_digest.is_none() {
            return Err(UsageError(format!(
                "`{}` was built by the docker builder and lives only in Docker; push it with `image build --builder docker --push`",
                record.image
            ))
            .into());
        }
        let tag = record.image.split_once(':').map_or("latest", |(_, tag)| tag);
        plan.push(skopeo_push(ctx, ws, service, &record.tar, &args.registry, tag));
        plan.push(attach_step(ctx, ws, service, &args.registry));
        records.push(image_file(ws, service, "json"));
    }
    plan.push(record_step(ws, records, false, Some(args.registry.clone()), Vec::new()));
    Ok(plan)
}

/// `docker tag` and `docker push` of one image to `registry`.
fn push_steps(plan: &mut Plan, ctx: &Ctx, service: &str, image: &str, registry: &str) {
    let remote = format!("{registry}/{image}");
    let tag = Step::exec(
        &format!("image:tag:{service}"),
        &format!("tag {remote}"),
        "docker",
        ["tag", image, &remote],
        &ctx.root,
    );
    let push =
        Step::exec(&format!("image:push:{service}"), &format!("push {remote}"), "docker", ["push", &remote], &ctx.root);
    plan.push(tag.requiring(&DOCKER));
    plan.push(push.requiring(&DOCKER));
}

fn record_step(
    ws: &Workspace,
    records: Vec<PathBuf>,
    loaded: bool,
    registry: Option<String>,
    docker_built: Vec<DockerBuilt>,
) -> Step {
    let manifest = manifest_path(ws);
    Step::internal(
        "image:record",
        &format!("record tags and digests in {}", manifest.display()),
        RecordImages { records, manifest, loaded, registry, docker_built },
        "cargo xtask image build",
    )
}

/// The Docker client that can drive BuildKit here, if any: `docker` with buildx, or a 20.10
/// client (BuildKit built in; newer clients need the buildx plugin for it).
fn buildkit_client() -> Option<String> {
    if std::env::var("DOCKER_BUILDKIT").is_ok_and(|v| v == "0") {
        return None;
    }
    if Cmd::new("docker").args(["buildx", "version"]).succeeds() {
        return Some("docker".into());
    }
    let legacy_client = "/usr/bin/docker";
    let version = Cmd::new(legacy_client).args(["version", "--format", "{{.Client.Version}}"]).read().ok()?;
    version.starts_with("20.").then(|| legacy_client.to_string())
}

pub fn rust_version() -> Result<String> {
    let out = Cmd::new("rustc").arg("--version").read()?;
    crate::tools::parse_version(&out).context("rustc printed no version")
}

pub fn default_builder_tag() -> Result<String> {
    Ok(format!("xtask-rust-builder:{}", rust_version()?))
}

pub fn image_exists(reference: &str) -> bool {
    Cmd::new("docker").args(["image", "inspect", reference]).succeeds()
}

fn docker_steps(
    ctx: &Ctx,
    ws: &Workspace,
    args: &BuildArgs,
    services: &[String],
    revision: &Revision,
    plan: &mut Plan,
) -> Result<()> {
    let builder_image = match &args.builder_image {
        Some(image) => image.clone(),
        None => {
            let local = default_builder_tag()?;
            if image_exists(&local) {
                local
            } else {
                plan.notes.push(format!(
                    "no local builder image {local}: using rust:{}-bookworm from Docker Hub (offline: run `cargo xtask image builder`)",
                    rust_version()?
                ));
                format!("rust:{}-bookworm", rust_version()?)
            }
        }
    };
    let (program, dockerfile, buildkit) = match buildkit_client() {
        Some(program) => (program, "infra/docker/Dockerfile.buildkit", "1"),
        None => ("docker".to_string(), "infra/docker/Dockerfile", "0"),
    };
    plan.notes.push(if buildkit == "1" {
        format!("docker builder: BuildKit through {program}, cache mounts for the registry and target dir")
    } else {
        let why = if std::env::var("DOCKER_BUILDKIT").is_ok_and(|v| v == "0") {
            "DOCKER_BUILDKIT=0"
        } else {
            "no BuildKit client here: docker buildx, or the 20.10 CLI at /usr/bin/docker"
        };
        format!("docker builder: legacy builder ({why}): layer caching only")
    });
    let mut built = Vec::new();
    for service in services {
        let meta = ws.members[service].service.as_ref().context("service metadata")?;
        let image = format!("{service}:{}", revision.tag);
        let build_args = [
            ("BUILDER_IMAGE", builder_image.clone()),
            ("SERVICE", service.clone()),
            ("PORT", meta.port.to_string()),
            ("REVISION", revision.sha.clone()),
            ("CREATED", revision.created.clone()),
            ("VERSION", ws.members[service].version.clone()),
            ("SOURCE", source_of(ctx, ws, service)),
        ];
        let mut docker_args: Vec<String> =
            vec!["build".into(), "-f".into(), dockerfile.into(), "--target".into(), "runtime".into()];
        for (k, v) in build_args {
            docker_args.extend(["--build-arg".into(), format!("{k}={v}")]);
        }
        docker_args.extend(["-t".into(), image.clone(), ".".into()]);
        plan.push(
            Step::exec(
                &format!("image:docker-build:{service}"),
                &format!("docker build {image} ({dockerfile})"),
                &program,
                docker_args,
                &ctx.root,
            )
            .with_env("DOCKER_BUILDKIT", buildkit)
            .requiring(&DOCKER),
        );
        let tar = image_file(ws, service, "tar");
        plan.push(
            Step::exec(
                &format!("image:save:{service}"),
                &format!("docker save {image} (for scans)"),
                "docker",
                ["save", "-o", &tar.display().to_string(), &image],
                &ctx.root,
            )
            .requiring(&DOCKER),
        );
        if let Some(registry) = &args.push {
            push_steps(plan, ctx, service, &image, registry);
        }
        built.push(DockerBuilt { service: service.clone(), image, tar, revision: revision.clone() });
    }
    plan.push(record_step(ws, Vec::new(), true, args.push.clone(), built));
    Ok(())
}

/// Debootstrap a Debian root file system (once; cached with a marker file).
#[derive(Clone, Debug, Serialize)]
pub struct Debootstrap {
    pub dir: PathBuf,
    pub suite: String,
    pub mirror: String,
    pub include: Vec<String>,
}

/// Put this machine's toolchain, cargo-chef and CA bundle into the root fs, then `docker import` it.
#[derive(Clone, Debug, Serialize)]
pub struct ImportBuilder {
    pub dir: PathBuf,
    pub sysroot: PathBuf,
    pub cargo_chef: PathBuf,
    pub tag: String,
}

pub const ROOTFS_MARKER: &str = ".xtask-rootfs-complete";

pub fn builder_plan(ctx: &Ctx, ws: &Workspace, args: &BuilderArgs) -> Result<Plan> {
    let mut plan = Plan::new("image builder");
    let tag = match &args.tag {
        Some(t) => t.clone(),
        None => default_builder_tag()?,
    };
    let dir = output_dir(ws).join("rootfs/rust-builder");
    if args.fresh || !dir.join(ROOTFS_MARKER).is_file() {
        plan.push(
            Step::internal(
                "builder:debootstrap",
                "Debian bookworm with gcc and libc6-dev (static glibc) via debootstrap",
                Debootstrap {
                    dir: dir.clone(),
                    suite: "bookworm".into(),
                    mirror: args.mirror.clone(),
                    include: ["gcc", "libc6-dev", "ca-certificates"].map(String::from).to_vec(),
                },
                "cargo xtask image builder --fresh",
            )
            .requiring(&crate::tools::DEBOOTSTRAP),
        );
    } else {
        plan.notes.push(format!("reusing the Debian root fs in {} (--fresh to remake it)", dir.display()));
    }
    let pin = crate::tools::pins().cargo.get("cargo-chef").cloned().context("xtask/tools.toml pins cargo-chef")?;
    let chef_root = output_dir(ws).join(format!("tools/cargo-chef-{pin}"));
    let cargo_chef = chef_root.join("bin/cargo-chef");
    if !cargo_chef.is_file() {
        plan.push(Step::cargo(
            "builder:cargo-chef",
            &format!("install cargo-chef {pin} for the builder image"),
            ["install", "--locked", &format!("cargo-chef@{pin}"), "--root", &chef_root.display().to_string()],
            &ctx.root,
        ));
    }
    let sysroot = PathBuf::from(Cmd::new("rustc").args(["--print", "sysroot"]).read()?.trim());
    plan.push(
        Step::internal(
            "builder:import",
            &format!("add Rust {} and cargo-chef, docker import {tag}", rust_version()?),
            ImportBuilder { dir, sysroot, cargo_chef, tag },
            "cargo xtask image builder",
        )
        .requiring(&DOCKER),
    );
    Ok(plan)
}

impl Task for AssembleImage {
    fn summary(&self) -> String {
        format!("write {} from {} (uid 65532, port {})", self.tar.display(), self.binary.display(), self.port)
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("assemble-image", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        assemble(self, log)
    }
}

impl Task for RecordImages {
    fn summary(&self) -> String {
        format!("merge {} image record(s) into {}", self.records.len(), self.manifest.display())
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("record-images", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        record(self, log)
    }
}

impl Task for Debootstrap {
    fn summary(&self) -> String {
        format!(
            "debootstrap --variant=minbase --include={} {} {} {}",
            self.include.join(","),
            self.suite,
            self.dir.display(),
            self.mirror
        )
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("debootstrap", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        debootstrap(self, log)
    }
}

impl Task for ImportBuilder {
    fn summary(&self) -> String {
        format!(
            "copy {} (bin, lib) and cargo-chef into {}, then tar | docker import - {}",
            self.sysroot.display(),
            self.dir.display(),
            self.tag
        )
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("import-builder", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        import_builder(self, log)
    }
}

impl Task for ImportRootfs {
    fn summary(&self) -> String {
        format!("tar -C {} -c . | docker import - {}", self.dir.display(), self.tag)
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("import-rootfs", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        import_rootfs(self, log)
    }
}

pub fn debootstrap(task: &Debootstrap, log: &mut dyn std::io::Write) -> Result<()> {
    if task.dir.exists() {
        std::fs::remove_dir_all(&task.dir)
            .with_context(|| format!("removing the unfinished {}", task.dir.display()))?;
    }
    std::fs::create_dir_all(&task.dir)?;
    let program = crate::tools::DEBOOTSTRAP.require()?;
    let include = format!("--include={}", task.include.join(","));
    let args = ["--variant=minbase", include.as_str(), task.suite.as_str()];
    writeln!(log, "$ {} {} {} {}", program.display(), args.join(" "), task.dir.display(), task.mirror)?;
    Cmd::new(&program)
        .args(args)
        .arg(&task.dir)
        .arg(&task.mirror)
        .run_logged(log)
        .context("debootstrap needs root and a reachable Debian mirror")?;
    // As Debian's own container images do: packages installed later in a container build must
    // not try to start their services (there is no init to start them under).
    let policy = task.dir.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, "#!/bin/sh\n# Never start services while building container images.\nexit 101\n")?;
    std::fs::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::write(task.dir.join(ROOTFS_MARKER), b"")?;
    writeln!(log, "root fs ready in {}", task.dir.display())?;
    Ok(())
}

pub fn import_builder(task: &ImportBuilder, log: &mut dyn std::io::Write) -> Result<()> {
    let rust = task.dir.join("usr/local/rust");
    if rust.exists() {
        std::fs::remove_dir_all(&rust)?;
    }
    std::fs::create_dir_all(&rust)?;
    std::fs::create_dir_all(task.dir.join("usr/local/cargo/bin"))?;
    // The toolchain without its documentation (bin/ and lib/ are what cargo and rustc need).
    Cmd::new("cp").arg("-a").arg(task.sysroot.join("bin")).arg(task.sysroot.join("lib")).arg(&rust).run()?;
    std::fs::copy(&task.cargo_chef, task.dir.join("usr/local/cargo/bin/cargo-chef")).context("copying cargo-chef")?;
    // Trust what this machine trusts (a company proxy's CA, say), or cargo cannot reach crates.io.
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.is_file() {
        std::fs::copy(bundle, task.dir.join("etc/ssl/certs/ca-certificates.crt")).context("copying CA bundle")?;
    }
    import_rootfs(
        &ImportRootfs {
            dir: task.dir.clone(),
            tag: task.tag.clone(),
            changes: vec![
                "ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                    .into(),
                "ENV CARGO_HOME=/usr/local/cargo".into(),
                "WORKDIR /src".into(),
            ],
        },
        log,
    )
}

/// A root file system directory turned into an image (`tar | docker import`).
#[derive(Clone, Debug, Serialize)]
pub struct ImportRootfs {
    pub dir: PathBuf,
    pub tag: String,
    /// Dockerfile instructions applied on import (`ENV ...`, `WORKDIR ...`).
    pub changes: Vec<String>,
}

pub fn import_rootfs(task: &ImportRootfs, log: &mut dyn std::io::Write) -> Result<()> {
    if !task.dir.join(ROOTFS_MARKER).is_file() {
        bail!("{} is not a finished root file system (its debootstrap step did not complete)", task.dir.display());
    }
    writeln!(log, "$ tar -C {} -c . | docker import - {}", task.dir.display(), task.tag)?;
    let mut tar = Cmd::new("tar")
        .arg("-C")
        .arg(&task.dir)
        .args(["--exclude", ROOTFS_MARKER, "-c", "."])
        .to_command()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running tar")?;
    let stdin = tar.stdout.take().context("tar's stdout")?;
    let mut import = Cmd::new("docker").arg("import");
    for change in &task.changes {
        import = import.args(["--change", change]);
    }
    let import = import.args(["-", &task.tag]);
    let out = import.to_command().stdin(stdin).output().with_context(|| format!("running {}", import.line()))?;
    let tar_ok = tar.wait()?.success();
    if !out.status.success() || !tar_ok {
        bail!(
            "{}",
            crate::process::failure(
                &format!("tar -C {} -c . | {}", task.dir.display(), import.line()),
                out.status,
                &out.stderr
            )
        );
    }
    writeln!(log, "image {} ({})", task.tag, String::from_utf8_lossy(&out.stdout).trim())?;
    Ok(())
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
    // Everything the tar is made of: when none of it changed, the tar on disk is already right
    // (the writer is deterministic), so an unchanged service costs a hash, not a gzip.
    let inputs = format!(
        "sha256:{}",
        oci::sha256_hex(
            format!(
                "{}\n{}\n{}\n{}\n{}",
                oci::sha256_hex(&binary),
                task.revision.tag,
                task.revision.created,
                task.port,
                serde_json::to_string(&labels(task))?
            )
            .as_bytes()
        )
    );
    if let Some(previous) =
        std::fs::read(&task.record).ok().and_then(|b| serde_json::from_slice::<ImageRecord>(&b).ok())
        && previous.inputs.as_deref() == Some(inputs.as_str())
        && std::fs::read(&task.tar).is_ok_and(|t| oci::sha256_hex(&t) == previous.tar_sha256)
    {
        writeln!(log, "{}: unchanged since the last build; {} is current", previous.image, task.tar.display())?;
        return Ok(());
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
        manifest_digest: Some(digests.manifest.clone()),
        tar: task.tar.clone(),
        tar_sha256: oci::sha256_hex(&tar),
        binary_size: Some(binary.len() as u64),
        layer_size: Some(digests.layer_size),
        builder: Builder::Host,
        inputs: Some(inputs),
        pushed: None,
    };
    write_atomically(&task.record, &serde_json::to_vec_pretty(&record)?)?;
    writeln!(
        log,
        "{}: {} (binary {} KiB, layer {} KiB, id {})",
        record.image,
        task.tar.display(),
        binary.len() / 1024,
        digests.layer_size / 1024,
        &record.id[..19]
    )?;
    Ok(())
}

fn docker_inspect(reference: &str, format: &str) -> Result<String> {
    let docker = DOCKER.require()?;
    Ok(Cmd::new(docker).args(["image", "inspect", "--format", format, reference]).read()?.trim().to_string())
}

/// `<registry>/<service>@sha256:...` of a tar skopeo pushed: the digest the registry stored
/// (skopeo's digest file beside the record) must be the manifest digest xtask computed.
fn pushed_as(registry: &str, record_file: &Path, record: &ImageRecord) -> Result<String> {
    let file = record_file.with_extension("pushed");
    let stored =
        std::fs::read_to_string(&file).with_context(|| format!("reading {} (written by the push)", file.display()))?;
    let stored = stored.trim();
    let written = record.manifest_digest.as_deref().context("a host-built record has its manifest digest")?;
    if stored != written {
        bail!(
            "the registry stored {} as {stored}, but xtask wrote it as {written}: it was rewritten on the way",
            record.image
        );
    }
    Ok(format!("{registry}/{}@{stored}", record.service))
}

/// `<registry>/<service>@sha256:...` from Docker's record of the push.
fn pushed_digest(registry: &str, record: &ImageRecord) -> Result<String> {
    let repository = format!("{registry}/{}", record.service);
    let docker = DOCKER.require()?;
    let digests: Vec<String> =
        Cmd::new(docker).args(["image", "inspect", "--format", "{{json .RepoDigests}}", &record.image]).read_json()?;
    digests
        .into_iter()
        .find(|d| d.split_once('@').is_some_and(|(repo, _)| repo == repository))
        .with_context(|| format!("{} has no digest in {repository} after the push", record.image))
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
            let pinned = pushed_as(registry, path, &record)?;
            writeln!(log, "{}: pushed as {pinned}", record.image)?;
            record.pushed = Some(pinned);
        }
        manifest.images.insert(record.service.clone(), record);
    }
    for built in &task.docker_built {
        let id = docker_inspect(&built.image, "{{.Id}}")?;
        let tar = std::fs::read(&built.tar).with_context(|| format!("reading {}", built.tar.display()))?;
        let mut record = ImageRecord {
            service: built.service.clone(),
            image: built.image.clone(),
            revision: built.revision.sha.clone(),
            dirty: built.revision.dirty,
            created: built.revision.created.clone(),
            id,
            manifest_digest: None,
            tar: built.tar.clone(),
            tar_sha256: oci::sha256_hex(&tar),
            binary_size: None,
            layer_size: None,
            builder: Builder::Docker,
            inputs: None,
            pushed: None,
        };
        if let Some(registry) = &task.registry {
            record.pushed = Some(pushed_digest(registry, &record)?);
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
    fn dynamic_binaries_are_told_apart_from_static_ones() {
        let ours = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        // Test binaries are built the default way: dynamically linked against glibc.
        let interp = elf_interpreter(&ours).expect("parse").expect("has an interpreter");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
    }

    /// `git ARGS` in `dir` as a fixed committer at a fixed commit time (2001-09-09T01:46:40Z).
    fn git(dir: &Path, args: &[&str]) {
        Cmd::new("git")
            .args(["-c", "user.email=t@example.invalid", "-c", "user.name=t"])
            .args(args)
            .env("GIT_COMMITTER_DATE", "2001-09-09T01:46:40Z")
            .current_dir(dir)
            .run()
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Against a real git repository: the tag is the commit's first 12 digits, with `-dirty`
    /// once the tree has uncommitted changes, and `created` is the commit time either way.
    #[test]
    fn the_tag_is_the_commit_and_says_dirty_when_the_tree_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        git(dir.path(), &["init", "--quiet"]);
        std::fs::write(dir.path().join("a.txt"), "one\n").expect("write");
        git(dir.path(), &["add", "a.txt"]);
        git(dir.path(), &["commit", "--quiet", "-m", "one"]);
        let clean = Revision::of(dir.path()).expect("revision");
        assert_eq!((clean.tag.len(), clean.dirty), (12, false), "{clean:?}");
        assert!(clean.sha.starts_with(&clean.tag));
        assert_eq!(clean.created, "2001-09-09T01:46:40Z");

        std::fs::write(dir.path().join("a.txt"), "two\n").expect("write");
        let dirty = Revision::of(dir.path()).expect("revision");
        assert_eq!(dirty.tag, format!("{}-dirty", clean.tag));
        assert!(dirty.dirty);
        assert_eq!(dirty.created, clean.created, "still the commit's time, not the edit's");
    }

    /// `image build --changed` on a real git repository holding a copy of the affected-packages
    /// fixture (util <- kit <- {api, worker}; gateway only runs the api): each edit selects the
    /// images whose binaries it can alter, for both the cargo command and the image steps.
    #[test]
    fn changed_rebuilds_only_the_images_an_edit_can_alter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/affected");
        Cmd::new("cp").arg("-a").arg(fixture.join(".")).arg(dir.path()).run().unwrap_or_else(|e| panic!("{e:#}"));
        git(dir.path(), &["init", "--quiet"]);
        git(dir.path(), &["add", "--all"]);
        git(dir.path(), &["commit", "--quiet", "-m", "fixture"]);
        let ctx = Ctx { root: dir.path().to_path_buf(), ..crate::test_ctx() };
        let ws = Workspace::load(dir.path()).expect("fixture workspace loads");
        let args = BuildArgs { changed: true, base: Some("HEAD".into()), no_load: true, ..Default::default() };
        let built = |edit: Option<&str>| -> (Vec<String>, Vec<String>) {
            if let Some(file) = edit {
                let path = dir.path().join(file);
                let text = std::fs::read_to_string(&path).expect("read");
                std::fs::write(&path, text + "\n").expect("write one more line");
            }
            let plan = plan(&ctx, &ws, &args).expect("plan");
            git(dir.path(), &["checkout", "--quiet", "--", "."]);
            let assembled = plan
                .steps
                .iter()
                .filter_map(|s| s.name.strip_prefix("image:assemble:").map(String::from))
                .collect::<Vec<_>>();
            let compiled = plan
                .steps
                .iter()
                .find(|s| s.name == "image:compile")
                .map(|s| match &s.action {
                    crate::plan::Action::Exec { args, .. } => {
                        args.windows(2).filter(|w| w[0] == "-p").map(|w| w[1].clone()).collect()
                    }
                    crate::plan::Action::Internal(_) => panic!("image:compile runs cargo"),
                })
                .unwrap_or_default();
            (assembled, compiled)
        };

        let (none, no_compile) = built(None);
        assert!(none.is_empty() && no_compile.is_empty(), "a clean tree rebuilds nothing: {none:?} {no_compile:?}");
        let leaf = built(Some("services/gateway/src/main.rs"));
        assert_eq!(leaf, (vec!["gateway".to_string()], vec!["gateway".to_string()]));
        let shared = built(Some("crates/util/src/lib.rs"));
        assert_eq!(shared.0, ["api", "worker"], "util reaches api and worker through kit; gateway only runs api");
        assert_eq!(shared.1, shared.0, "cargo builds exactly the images' services");
        let (everything, _) = built(Some("Cargo.toml"));
        assert_eq!(everything, ["api", "gateway", "worker"], "a workspace-level file rebuilds every image");
    }

    #[test]
    fn registries_are_host_and_port_without_a_scheme() {
        assert!(validate_registry("--push", "127.0.0.1:5000").is_ok());
        assert!(validate_registry("--push", "ghcr.io/acme").is_ok());
        for bad in ["http://127.0.0.1:5000", "", "reg/", "a b"] {
            assert!(validate_registry("--push", bad).is_err(), "{bad}");
        }
    }
}
