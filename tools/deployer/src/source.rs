//! Where a deploy's images come from, for either target:
//!
//! - `--images FILE`: the build manifest `image build` wrote (the release workflow hands it from
//!   its build job to every deploy job as an artifact);
//! - `--images URL`: the same file, fetched over http(s) (curl) into the work directory;
//! - `--registry REGISTRY`: no manifest at all; each service's image tagged with the checkout's
//!   commit (the tag `image build --push` gives it) is resolved to its digest in the registry
//!   (skopeo), so a machine that built nothing deploys exactly what was pushed for the commit;
//! - neither: `target/xtask/images.json`; when that file is absent and `$REGISTRY` is set (the
//!   release workflow's repository variable), the registry as with `--registry $REGISTRY`.
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

/// Where a deploy's images come from.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    Registry(String),
    Url(String),
    File(PathBuf),
}

/// `--registry`, else `--images` (a URL or a file), else the default manifest, else `$REGISTRY`
/// (`env_registry`) when the default manifest is absent.
fn source_of(images: Option<&Path>, registry: Option<&str>, default: &Path, env_registry: Option<&str>) -> Source {
    if let Some(registry) = registry {
        return Source::Registry(registry.to_string());
    }
    match images {
        Some(given) => {
            let text = given.display().to_string();
            if text.starts_with("http://") || text.starts_with("https://") {
                Source::Url(text)
            } else {
                Source::File(given.to_path_buf())
            }
        }
        None => match env_registry.filter(|r| !r.trim().is_empty() && !default.is_file()) {
            Some(registry) => Source::Registry(registry.to_string()),
            None => Source::File(default.to_path_buf()),
        },
    }
}

/// The build manifest a deploy pins from, and where it is (for messages).
pub fn manifest(ctx: &Ctx, args: &DeployArgs, dir: &Path) -> Result<(BuildManifest, PathBuf)> {
    let env_registry = std::env::var("REGISTRY").ok();
    let path =
        match source_of(args.images.as_deref(), args.registry.as_deref(), &ctx.facts.images, env_registry.as_deref()) {
            Source::Registry(registry) => {
                if args.registry.is_none() {
                    eprintln!(
                        "no build manifest at {}: reading this commit's digests from $REGISTRY ({registry})",
                        ctx.facts.images.display()
                    );
                }
                return from_registry(ctx, &registry, dir);
            }
            Source::Url(url) => fetch(&url, dir)?,
            Source::File(path) => path,
        };
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
            crate::one_line(&format!("{e:#}"))
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
    if !Cmd::new("skopeo").arg("--version").succeeds() {
        return Err(UsageError(format!(
            "reading digests from {registry} needs skopeo, which is not installed: cargo xtask setup (apt-get install skopeo)"
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
                crate::one_line(&format!("{e:#}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_images_come_from_the_flag_then_the_manifest_then_the_registry_variable() {
        let dir = std::env::temp_dir().join(format!("xtask-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (present, absent) = (dir.join("images.json"), dir.join("none.json"));
        std::fs::write(&present, "{}").expect("write");
        let reg = |r: &str| Source::Registry(r.to_string());
        assert_eq!(source_of(None, Some("r1"), &present, Some("r2")), reg("r1"), "--registry wins");
        assert_eq!(
            source_of(Some(Path::new("https://x/i.json")), None, &absent, Some("r2")),
            Source::Url("https://x/i.json".into())
        );
        assert_eq!(
            source_of(Some(&absent), None, &present, Some("r2")),
            Source::File(absent.clone()),
            "--images is taken as given"
        );
        assert_eq!(
            source_of(None, None, &present, Some("r2")),
            Source::File(present.clone()),
            "a local manifest first"
        );
        assert_eq!(source_of(None, None, &absent, Some("r2")), reg("r2"), "no manifest: $REGISTRY");
        assert_eq!(
            source_of(None, None, &absent, Some(" ")),
            Source::File(absent.clone()),
            "an empty $REGISTRY is unset"
        );
        assert_eq!(source_of(None, None, &absent, None), Source::File(absent));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
