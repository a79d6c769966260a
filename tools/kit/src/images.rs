//! `target/xtask/images.json`, the build manifest: what `cargo xtask image build` built (and
//! pushed) for each service, written by xtask and read by the deployer to pin images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Version of the `images.json` layout; bump when a field changes meaning.
pub const MANIFEST_SCHEMA: u32 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Builder {
    /// Compile on this machine, write the image tars in xtask (fast, reproducible).
    #[default]
    Host,
    /// `docker build` with infra/docker/Dockerfile (cargo-chef; hermetic, slow).
    Docker,
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
    /// Digest of the OCI manifest inside the tar (host builder only).
    pub manifest_digest: Option<String>,
    pub tar: PathBuf,
    pub tar_sha256: String,
    pub binary_size: Option<u64>,
    /// The compressed layer: what pulling the image costs (host builder only).
    pub layer_size: Option<u64>,
    #[serde(default)]
    pub builder: Builder,
    /// Digest of everything the tar was made from (host builder): equal means the tar is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
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
                        "{} has schema {} (this build writes {MANIFEST_SCHEMA}); run `cargo xtask image build`",
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

/// A registry on this machine speaks plain HTTP (skopeo's `--tls-verify=false`).
pub fn loopback(registry: &str) -> bool {
    let host = registry.split('/').next().unwrap_or_default();
    let host =
        host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl BuildManifest {
    /// The manifest of images found in a registry rather than built here: service -> the
    /// `manifest digest` `registry/service:tag` resolved to. What deploy pins is the same
    /// `pushed` reference an `image build --push` would have recorded.
    pub fn from_registry(
        registry: &str,
        tag: &str,
        revision: &str,
        digests: &BTreeMap<String, String>,
    ) -> BuildManifest {
        let images = digests
            .iter()
            .map(|(service, digest)| {
                let record = ImageRecord {
                    service: service.clone(),
                    image: format!("{service}:{tag}"),
                    revision: revision.to_string(),
                    dirty: false,
                    created: String::new(),
                    id: digest.clone(),
                    manifest_digest: Some(digest.clone()),
                    tar: PathBuf::new(),
                    tar_sha256: String::new(),
                    binary_size: None,
                    layer_size: None,
                    builder: Builder::Host,
                    inputs: None,
                    pushed: Some(format!("{registry}/{service}@{digest}")),
                };
                (service.clone(), record)
            })
            .collect();
        BuildManifest { schema: MANIFEST_SCHEMA, images }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_told_apart_from_remote_ones() {
        assert!(loopback("127.0.0.1:5000") && loopback("localhost/team") && !loopback("registry.example.com:443"));
    }

    #[test]
    fn a_manifest_from_the_registry_pins_what_it_holds() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let found = BTreeMap::from([("api".to_string(), digest.clone())]);
        let m = BuildManifest::from_registry("r.example/team", "0123456789ab", &"0".repeat(40), &found);
        let api = &m.images["api"];
        assert_eq!(api.pushed.as_deref(), Some(format!("r.example/team/api@{digest}").as_str()));
        assert_eq!((api.image.as_str(), api.dirty), ("api:0123456789ab", false));
    }
}
