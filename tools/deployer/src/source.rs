//! Where a deploy's images come from, for either target:
//!
//! - `--images FILE`: the build manifest `image build` wrote (the release workflow hands it from
//!   its build job to every deploy job as an artifact);
//! - `--images URL`: the same file, fetched over http(s) (curl) into the work directory;
//! - `--registry REGISTRY`: no manifest at all; each service's image tagged with the checkout's
//!   commit (the tag `image build --push` gives it) is resolved to its digest in the registry
//!   (skopeo), so a machine that built nothing deploys exactly what was pushed for the commit;
//! - neither: `target/xtask/images.json`.
//!
//! Whatever the source, the result is a build manifest written under the work directory, and a
//! source that cannot give every service a digest is refused before anything changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xtask_kit::UsageError;
use xtask_kit::handoff::DeployArgs;
use xtask_kit::images::{BuildManifest, loopback};
use xtask_kit::process::Cmd;

use crate::Ctx;

/// The build manifest a deploy pins from, and where it is (for messages).
pub fn manifest(ctx: &Ctx, args: &DeployArgs, dir: &Path) -> Result<(BuildManifest, PathBuf)> {
    if let Some(registry) = &args.registry {
        return from_registry(ctx, registry, dir);
    }
    let given = args.images.clone().unwrap_or_else(|| ctx.facts.images.clone());
    let text = given.display().to_string();
    let path = if text.starts_with("http://") || text.starts_with("https://") { fetch(&text, dir)? } else { given };
    if !path.is_file() {
        return Err(UsageError(format!(
            "no build manifest at {}; run `cargo xtask image build --push REGISTRY` first, or deploy what a registry holds for this commit with `--registry REGISTRY`",
            path.display()
        ))
        .into());
    }
    Ok((BuildManifest::read(&path)?, path))
}

/// `--images URL`: the manifest, downloaded once per deploy.
fn fetch(url: &str, dir: &Path) -> Result<PathBuf> {
    let file = dir.join("images-fetched.json");
    let _ = std::fs::remove_file(&file);
    let cmd = Cmd::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location", "--max-time", "60", "--retry", "2", "--output"])
        .arg(&file)
        .arg(url);
    eprintln!("$ {}", cmd.line());
    cmd.read().map_err(|e| {
        UsageError(format!(
            "--images {url}: the build manifest cannot be fetched ({}); nothing was deployed",
            one_line(&e)
        ))
    })?;
    Ok(file)
}

/// `--registry`: each of our services' image for the checkout's commit, by digest.
fn from_registry(ctx: &Ctx, registry: &str, dir: &Path) -> Result<(BuildManifest, PathBuf)> {
    let revision = &ctx.facts.revision;
    if revision.len() < 12 || !revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UsageError(format!(
            "--registry {registry}: images are found by the commit they were built from, and this checkout has none ({revision})"
        ))
        .into());
    }
    let tag = &revision[..12];
    let mut digests = BTreeMap::new();
    for service in ctx.facts.services.iter().map(|s| &s.name) {
        let reference = format!("{registry}/{service}:{tag}");
        let mut cmd = Cmd::new("skopeo").args(["inspect", "--format", "{{.Digest}}"]);
        if loopback(registry) {
            cmd = cmd.arg("--tls-verify=false");
        }
        let cmd = cmd.arg(format!("docker://{reference}"));
        eprintln!("$ {}", cmd.line());
        let digest = cmd.read().map_err(|e| {
            UsageError(format!(
                "{reference} is not in the registry ({}): push this commit's images first (`cargo xtask image build --push {registry}`); nothing was deployed",
                one_line(&e)
            ))
        })?;
        let digest = digest.trim().to_string();
        if !digest.starts_with("sha256:") {
            anyhow::bail!("skopeo gave `{digest}` as the digest of {reference}");
        }
        eprintln!("{service}: {registry}/{service}@{digest}");
        digests.insert(service.clone(), digest);
    }
    let manifest = BuildManifest::from_registry(registry, tag, revision, &digests);
    let path = dir.join("images-from-registry.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((manifest, path))
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ")
}
