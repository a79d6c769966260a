//! What a pushed image carries beside it: its CycloneDX SBOM (trivy) and an in-toto/SLSA v1
//! provenance statement (commit, Cargo.lock digest, toolchain, profile, the CI run or machine
//! that built it), each pushed as an OCI 1.1 artifact whose `subject` is the image, under the
//! tag convention cosign uses (`REPO:sha256-<hex>.sbom`, `REPO:sha256-<hex>.att`), so registries
//! without the referrers API hold them too. `cargo xtask image verify REF` fetches both and checks
//! they exist and are about exactly that digest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::images::ImageRecord;
use crate::oci::{self, MEDIA_CYCLONEDX, MEDIA_IN_TOTO};
use crate::plan::Task;
use crate::process::Cmd;
use crate::tools::{SKOPEO, TRIVY};
use crate::{Ctx, UsageError};

pub const STATEMENT: &str = "https://in-toto.io/Statement/v1";
pub const SLSA_PROVENANCE: &str = "https://slsa.dev/provenance/v1";
const BUILD_TYPE: &str = "https://example.invalid/platform/xtask/image-build/v1";

/// The two documents, by tag suffix: what they are and their media type.
const DOCUMENTS: [(&str, &str, &str); 2] = [("sbom", "SBOM", MEDIA_CYCLONEDX), ("att", "provenance", MEDIA_IN_TOTO)];

/// `skopeo` talks plain HTTP only to a registry on this machine.
pub use xtask_kit::images::loopback;

/// Where an image's document lives: `REPO:sha256-<hex>.<suffix>`.
fn document_tag(repository: &str, digest: &str, suffix: &str) -> String {
    format!("{repository}:{}.{suffix}", digest.replace(':', "-"))
}

/// After a push: make the SBOM and the provenance and push both beside the image.
#[derive(Clone, Debug, Serialize)]
pub struct AttachDocuments {
    pub service: String,
    pub registry: String,
    /// The build's record of the image (its tar, manifest digest, revision).
    pub record: PathBuf,
    /// The digest the registry stored (written by the push).
    pub pushed: PathBuf,
    pub cargo_lock: PathBuf,
    /// The repository the source lives in (the provenance's dependency URI).
    pub source: String,
}

impl Task for AttachDocuments {
    fn summary(&self) -> String {
        format!(
            "SBOM (trivy, CycloneDX) and SLSA provenance of {0}, pushed as {1}/{0}:sha256-<digest>.sbom and .att",
            self.service, self.registry
        )
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("attach-sbom-and-provenance", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        attach(self, log)
    }
}

fn attach(task: &AttachDocuments, log: &mut dyn std::io::Write) -> Result<()> {
    let record: ImageRecord = serde_json::from_slice(
        &std::fs::read(&task.record).with_context(|| format!("reading {}", task.record.display()))?,
    )?;
    let digest = std::fs::read_to_string(&task.pushed)
        .with_context(|| format!("reading {} (written by the push)", task.pushed.display()))?
        .trim()
        .to_string();
    let (subject_size, _) = manifest_in_tar(&record.tar)?;
    let repository = format!("{}/{}", task.registry, task.service);
    let trivy = TRIVY.require()?;
    let sbom = Cmd::new(trivy)
        .args(["image", "--quiet", "--format", "cyclonedx", "--input"])
        .arg(&record.tar)
        .checked_output()
        .with_context(|| format!("the SBOM of {}", record.image))?
        .stdout;
    let provenance = provenance(task, &record, &repository, &digest)?;
    let dir = task.record.parent().context("records sit in a directory")?;
    for ((suffix, what, media), document) in DOCUMENTS.iter().zip([sbom, provenance]) {
        let (tar, artifact) = oci::artifact_tar(media, &document, &digest, subject_size, &record.created)?;
        let file = dir.join(format!("{}.{suffix}.tar", task.service));
        std::fs::write(&file, tar).with_context(|| format!("writing {}", file.display()))?;
        let to = document_tag(&repository, &digest, suffix);
        let mut copy = Cmd::new(SKOPEO.require()?).args(["copy", "--quiet", "--preserve-digests"]);
        if loopback(&task.registry) {
            copy = copy.arg("--dest-tls-verify=false");
        }
        copy.arg(format!("oci-archive:{}", file.display())).arg(format!("docker://{to}")).run()?;
        writeln!(log, "{what} of {repository}@{digest}: {to} ({artifact})")?;
    }
    Ok(())
}

/// The size and digest of the image manifest inside an image tar (from its `index.json`).
fn manifest_in_tar(tar: &Path) -> Result<(u64, String)> {
    let file = std::fs::File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.as_os_str() == "index.json" {
            let index: serde_json::Value = serde_json::from_reader(&mut entry)?;
            let size = index["manifests"][0]["size"].as_u64().context("index.json names its manifest's size")?;
            let digest = index["manifests"][0]["digest"].as_str().context("index.json names its manifest")?;
            return Ok((size, digest.to_string()));
        }
    }
    bail!("{} has no index.json: not an image tar xtask wrote", tar.display())
}

/// The in-toto statement (SLSA provenance v1) of one pushed image.
fn provenance(task: &AttachDocuments, record: &ImageRecord, repository: &str, digest: &str) -> Result<Vec<u8>> {
    let lock = std::fs::read(&task.cargo_lock).with_context(|| format!("reading {}", task.cargo_lock.display()))?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (builder, invocation) = match (env("GITHUB_SERVER_URL"), env("GITHUB_REPOSITORY"), env("GITHUB_RUN_ID")) {
        (Some(server), Some(repo), Some(run)) => {
            let attempt = env("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into());
            (
                format!("{server}/{repo}/actions/runs/{run}"),
                format!("{server}/{repo}/actions/runs/{run}/attempts/{attempt}"),
            )
        }
        _ => {
            let host = Cmd::new("hostname").read().map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into());
            (format!("cargo-xtask@{host}"), "local".to_string())
        }
    };
    let statement = serde_json::json!({
        "_type": STATEMENT,
        "subject": [{ "name": repository, "digest": { "sha256": digest.trim_start_matches("sha256:") } }],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": { "service": task.service, "revision": record.revision, "dirty": record.dirty },
                "internalParameters": {
                    "profile": super::image::PROFILE,
                    "target": super::image::TARGET,
                    "toolchain": super::image::rust_version().unwrap_or_else(|_| "unknown".into()),
                    "builder": record.builder,
                },
                "resolvedDependencies": [
                    { "uri": format!("git+{}@{}", task.source, record.revision), "digest": { "gitCommit": record.revision } },
                    { "uri": "Cargo.lock", "digest": { "sha256": oci::sha256_hex(&lock) } },
                ],
            },
            "runDetails": {
                "builder": { "id": builder },
                "metadata": { "invocationId": invocation, "startedOn": crate::date::now_rfc3339() },
            },
        },
    });
    Ok(serde_json::to_vec_pretty(&statement)?)
}

/// `image verify`: the image reference to check.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// A pushed image by digest: REGISTRY/SERVICE@sha256:...
    #[arg(value_name = "REF")]
    pub reference: String,
}

/// What was found beside the image.
#[derive(Debug, Serialize)]
struct Verified {
    reference: String,
    sbom: String,
    sbom_components: usize,
    provenance: String,
    commit: String,
    builder: String,
}

pub fn verify(ctx: &Ctx, args: &VerifyArgs) -> Result<ExitCode> {
    let Some((repository, digest)) = args.reference.split_once('@').filter(|(r, d)| {
        !r.is_empty()
            && d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    }) else {
        return Err(UsageError(format!(
            "{}: expected an image by digest, REGISTRY/SERVICE@sha256:<64 hex> (images.json's `pushed`)",
            args.reference
        ))
        .into());
    };
    let registry = repository.rsplit_once('/').map_or(repository, |(r, _)| r);
    if ctx.dry_run {
        let fetch: Vec<(String, &str)> =
            DOCUMENTS.iter().map(|(suffix, what, _)| (document_tag(repository, digest, suffix), *what)).collect();
        if ctx.ui.format == crate::runner::Format::Json {
            let plan: Vec<serde_json::Value> =
                fetch.iter().map(|(tag, what)| serde_json::json!({ "fetch": tag, "document": what })).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "verify": args.reference, "plan": plan }))?
            );
        } else {
            for (tag, what) in fetch {
                println!("would fetch the {what} at {tag} and check it is about {digest}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    ctx.install_now(&SKOPEO)?;
    let work = crate::target_dir(&ctx.root).join("xtask/verify").join(digest.replace(':', "-"));
    let mut documents = Vec::new();
    for (suffix, what, media) in DOCUMENTS {
        let tag = document_tag(repository, digest, suffix);
        let dir = work.join(suffix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&work)?;
        let mut copy = Cmd::new(SKOPEO.require()?).args(["copy", "--quiet"]);
        if loopback(registry) {
            copy = copy.arg("--src-tls-verify=false");
        }
        let fetched = copy.arg(format!("docker://{tag}")).arg(format!("oci:{}:document", dir.display())).output()?;
        if !fetched.status.success() {
            return Err(UsageError(format!(
                "{}: no {what} at {tag}; push the image with `cargo xtask image push` (it attaches one)",
                args.reference
            ))
            .into());
        }
        let document = artifact_document(&dir, media, digest)
            .map_err(|e| UsageError(format!("{}: the {what} at {tag} {e:#}", args.reference)))?;
        documents.push((tag, document));
    }
    let [(sbom_tag, sbom), (att_tag, att)] = <[_; 2]>::try_from(documents).expect("two documents");
    let sbom: serde_json::Value = serde_json::from_slice(&sbom)
        .map_err(|_| UsageError(format!("{}: the SBOM at {sbom_tag} is not JSON", args.reference)))?;
    if sbom["bomFormat"] != "CycloneDX" {
        return Err(UsageError(format!("{}: the SBOM at {sbom_tag} is not CycloneDX", args.reference)).into());
    }
    let statement: serde_json::Value = serde_json::from_slice(&att)
        .map_err(|_| UsageError(format!("{}: the provenance at {att_tag} is not JSON", args.reference)))?;
    let hex = digest.trim_start_matches("sha256:");
    let about: Vec<&str> =
        statement["subject"].as_array().into_iter().flatten().filter_map(|s| s["digest"]["sha256"].as_str()).collect();
    if statement["_type"] != STATEMENT || statement["predicateType"] != SLSA_PROVENANCE {
        return Err(UsageError(format!(
            "{}: the provenance at {att_tag} is not an in-toto statement of SLSA provenance v1",
            args.reference
        ))
        .into());
    }
    if !about.contains(&hex) {
        return Err(UsageError(format!(
            "{}: the provenance at {att_tag} is about sha256:{}, not this digest: it was tampered with or belongs to another image",
            args.reference,
            about.first().unwrap_or(&"nothing")
        ))
        .into());
    }
    let predicate = &statement["predicate"];
    let report = Verified {
        reference: args.reference.clone(),
        sbom: sbom_tag,
        sbom_components: sbom["components"].as_array().map_or(0, Vec::len),
        provenance: att_tag,
        commit: predicate["buildDefinition"]["externalParameters"]["revision"].as_str().unwrap_or("?").to_string(),
        builder: predicate["runDetails"]["builder"]["id"].as_str().unwrap_or("?").to_string(),
    };
    if ctx.ui.format == crate::runner::Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: SBOM ({} components) and provenance (commit {}, built by {}) are attached and about this digest",
            report.reference, report.sbom_components, report.commit, report.builder
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The one document of an artifact pulled into an OCI layout `dir`, after checking the
/// artifact is of `media` type and about `subject`. (skopeo already checked every blob's digest.)
fn artifact_document(dir: &Path, media: &str, subject: &str) -> Result<Vec<u8>> {
    let blob = |digest: &str| {
        let path = dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        std::fs::read(&path).with_context(|| format!("has no blob {digest}"))
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let manifest_digest = index["manifests"][0]["digest"].as_str().context("is not an OCI artifact")?;
    let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest_digest)?)?;
    if manifest["artifactType"] != media {
        bail!("is a {}, not a {media}", manifest["artifactType"].as_str().unwrap_or("plain image"));
    }
    let about = manifest["subject"]["digest"].as_str().unwrap_or("nothing");
    if about != subject {
        bail!("is about {about}, not this digest: it was tampered with or belongs to another image");
    }
    blob(manifest["layers"][0]["digest"].as_str().context("has no document layer")?)
}

/// `image login`: the registry to store credentials for.
#[derive(clap::Args, Debug, Clone)]
pub struct LoginArgs {
    /// The registry (host[:port][/path], no scheme), e.g. registry.example.com/team.
    #[arg(long, value_name = "REGISTRY")]
    pub registry: String,
}

/// The variables `image login` reads: in the release workflow, repository secrets.
pub const USERNAME_VAR: &str = "REGISTRY_USERNAME";
pub const PASSWORD_VAR: &str = "REGISTRY_PASSWORD";

/// `skopeo login` with the password on its standard input, never on a command line or in a
/// plan. The credentials go to `$REGISTRY_AUTH_FILE` when set (every later skopeo call reads it:
/// push, SBOM, deploy's digest lookup; the release workflow points `DOCKER_CONFIG` at the same
/// file's folder so the docker CLI pulls with them), else to skopeo's own per-user auth file.
#[derive(Debug, Serialize)]
struct RegistryLogin {
    registry: String,
    username: String,
    tls_verify: bool,
    auth_file: Option<PathBuf>,
}

impl Task for RegistryLogin {
    fn summary(&self) -> String {
        format!("skopeo login {} as {} (password from ${PASSWORD_VAR}, on stdin)", self.registry, self.username)
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("registry-login", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        use std::io::Write as _;
        let password = std::env::var(PASSWORD_VAR).unwrap_or_default();
        let host = self.registry.split('/').next().unwrap_or_default();
        let mut cmd = Cmd::new(SKOPEO.require()?).args(["login", "--username", &self.username, "--password-stdin"]);
        if let Some(file) = &self.auth_file {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            cmd = cmd.arg("--authfile").arg(file);
        }
        if !self.tls_verify {
            cmd = cmd.arg("--tls-verify=false");
        }
        let mut child = cmd
            .arg(host)
            .to_command()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running skopeo login")?;
        child.stdin.take().context("skopeo's stdin")?.write_all(password.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("skopeo login {host} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        writeln!(log, "{}", String::from_utf8_lossy(&out.stdout).trim())?;
        Ok(())
    }
}

/// `cargo xtask image login --registry R`: credentials from `REGISTRY_USERNAME` and
/// `REGISTRY_PASSWORD`, both required (exit 2 naming what is missing).
pub fn login_plan(args: &LoginArgs) -> Result<crate::plan::Plan> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let missing: Vec<&str> = [USERNAME_VAR, PASSWORD_VAR].into_iter().filter(|v| var(v).is_none()).collect();
    if !missing.is_empty() {
        return Err(UsageError(format!(
            "image login --registry {}: set {} (in the release workflow: repository secrets)",
            args.registry,
            missing.join(" and ")
        ))
        .into());
    }
    let task = RegistryLogin {
        registry: args.registry.clone(),
        username: var(USERNAME_VAR).unwrap_or_default(),
        tls_verify: !loopback(&args.registry),
        auth_file: std::env::var_os("REGISTRY_AUTH_FILE").filter(|f| !f.is_empty()).map(PathBuf::from),
    };
    let mut plan = crate::plan::Plan::new("image login");
    plan.push(
        crate::plan::Step::internal("image:login", &task.summary(), task, "skopeo login --help").requiring(&SKOPEO),
    );
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_sit_under_the_cosign_tags_of_the_digest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            document_tag("127.0.0.1:5000/api", &digest, "sbom"),
            format!("127.0.0.1:5000/api:sha256-{}.sbom", "ab".repeat(32))
        );
    }

    #[test]
    fn a_pulled_artifact_is_accepted_only_about_its_subject_and_of_its_type() {
        let dir = std::env::temp_dir().join(format!("xtask-artifact-{}", std::process::id()));
        let subject = format!("sha256:{}", "c".repeat(64));
        let (tar, _) =
            oci::artifact_tar(MEDIA_IN_TOTO, b"{\"_type\":\"x\"}", &subject, 10, "2026-12-03T00:00:00Z").expect("tar");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        tar::Archive::new(tar.as_slice()).unpack(&dir).expect("unpack");
        assert_eq!(artifact_document(&dir, MEDIA_IN_TOTO, &subject).expect("ok"), b"{\"_type\":\"x\"}");
        let other = format!("sha256:{}", "d".repeat(64));
        let err = artifact_document(&dir, MEDIA_IN_TOTO, &other).expect_err("another image");
        assert!(format!("{err:#}").contains("tampered"), "{err:#}");
        assert!(artifact_document(&dir, MEDIA_CYCLONEDX, &subject).is_err(), "not an SBOM");
        let _ = std::fs::remove_dir_all(dir);
    }
}
