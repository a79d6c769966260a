//! Container images written directly as tar files, without Docker ("ko for Rust").
//!
//! One image is one static binary in one layer on `scratch`. The tar holds both layouts at once:
//! the OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) for OCI tools, and the
//! legacy `manifest.json` that `docker load` of Engine 20.10 needs (it cannot read `index.json`).
//! Both point at the same blobs, so the image ID (the config digest) is the same either way.
//!
//! Reproducible by construction: every mtime, uid and gid is 0, entries are sorted, the gzip
//! header carries no time or name, JSON maps are sorted, and `created` is the commit time. Two
//! builds of one commit (same binary) give byte-identical tars.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The nonroot user of distroless and Chainguard images: not root, and not any real user on a host.
pub const NONROOT: u32 = 65532;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The empty config (`{}`) of an artifact manifest.
pub const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const MEDIA_CYCLONEDX: &str = "application/vnd.cyclonedx+json";
pub const MEDIA_IN_TOTO: &str = "application/vnd.in-toto+json";

/// Everything that goes into one service image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Repository name, e.g. `api`.
    pub name: String,
    /// Tag, e.g. the short git sha.
    pub tag: String,
    /// Where the binary lives inside the image (absolute), e.g. `/usr/local/bin/api`.
    pub binary_path: String,
    pub binary: Vec<u8>,
    /// The port the service listens on inside the container.
    pub port: u16,
    /// RFC 3339 time for `created` (the commit time, not the wall clock).
    pub created: String,
    /// Config labels; the same map becomes the OCI manifest's annotations.
    pub labels: BTreeMap<String, String>,
    /// Extra environment (`KEY=value`), after `PATH`.
    pub env: Vec<String>,
}

/// What was written, for the build manifest and for `docker inspect` cross-checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageDigests {
    /// `sha256:` of the config JSON: Docker's image ID.
    pub config: String,
    /// `sha256:` of the OCI manifest in this tar.
    pub manifest: String,
    /// `sha256:` of the compressed layer blob.
    pub layer: String,
    /// `sha256:` of the uncompressed layer (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// Bytes of the compressed layer: what the image costs to ship.
    pub layer_size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HealthConfig {
    test: Vec<String>,
    /// Nanoseconds, as the Docker engine stores them.
    interval: u64,
    timeout: u64,
    start_period: u64,
    retries: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    user: String,
    exposed_ports: BTreeMap<String, BTreeMap<(), ()>>,
    env: Vec<String>,
    entrypoint: Vec<String>,
    working_dir: String,
    labels: BTreeMap<String, String>,
    healthcheck: HealthConfig,
}

#[derive(Serialize)]
struct RootFs {
    r#type: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: String,
}

#[derive(Serialize)]
struct ImageConfig {
    created: String,
    architecture: &'static str,
    os: &'static str,
    config: RunConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: &'static str,
    /// Artifacts only (OCI 1.1): what the manifest carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'static str>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    /// Artifacts only (OCI 1.1): the image the artifact is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Descriptor>,
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LegacyManifest {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One tar entry with everything that could vary between machines pinned.
fn append(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: Option<&[u8]>) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    match data {
        Some(bytes) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, path, bytes).with_context(|| format!("adding {path}"))
        }
        None => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, path, std::io::empty()).with_context(|| format!("adding {path}"))
        }
    }
}

/// The single layer: the binary plus the few files a scratch image needs to behave.
fn layer_tar(spec: &ImageSpec) -> Result<Vec<u8>> {
    let binary_path = spec.binary_path.trim_start_matches('/');
    anyhow::ensure!(!binary_path.is_empty() && !binary_path.ends_with('/'), "binary path must name a file");
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnonroot:x:{NONROOT}:\n");
    // Static glibc resolves through files and DNS on its own (glibc >= 2.34); say so explicitly.
    let nsswitch = "hosts: files dns\n";
    let mut files: BTreeMap<String, (u32, Option<Vec<u8>>)> = BTreeMap::new();
    files.insert("etc/".into(), (0o755, None));
    files.insert("etc/group".into(), (0o644, Some(group.into_bytes())));
    files.insert("etc/nsswitch.conf".into(), (0o644, Some(nsswitch.as_bytes().to_vec())));
    files.insert("etc/passwd".into(), (0o644, Some(passwd.into_bytes())));
    files.insert("tmp/".into(), (0o1777, None));
    // Every parent directory of the binary, then the binary (root-owned, not writable by the service).
    let mut dir = String::new();
    for part in binary_path.split('/').collect::<Vec<_>>().split_last().map(|(_, d)| d.to_vec()).unwrap_or_default() {
        dir.push_str(part);
        dir.push('/');
        files.entry(dir.clone()).or_insert((0o755, None));
    }
    files.insert(binary_path.to_string(), (0o755, Some(spec.binary.clone())));

    let mut tar = tar::Builder::new(Vec::new());
    for (path, (mode, data)) in &files {
        append(&mut tar, path, *mode, data.as_deref())?;
    }
    Ok(tar.into_inner()?)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // GzEncoder writes mtime 0 and no file name: the header is the same on every machine.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// Docker stores durations in nanoseconds.
const fn secs(s: u64) -> u64 {
    s * 1_000_000_000
}

/// Build the image tar in memory; returns the tar and the digests inside it.
pub fn image_tar(spec: &ImageSpec) -> Result<(Vec<u8>, ImageDigests)> {
    let layer = layer_tar(spec)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let layer_gz = gzip(&layer)?;
    let layer_digest = sha256_hex(&layer_gz);

    let mut env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()];
    env.extend(spec.env.iter().cloned());
    let config = ImageConfig {
        created: spec.created.clone(),
        architecture: "amd64",
        os: "linux",
        config: RunConfig {
            user: format!("{NONROOT}:{NONROOT}"),
            exposed_ports: BTreeMap::from([(format!("{}/tcp", spec.port), BTreeMap::new())]),
            env,
            entrypoint: vec![spec.binary_path.clone()],
            working_dir: "/".into(),
            labels: spec.labels.clone(),
            healthcheck: HealthConfig {
                test: vec!["CMD".into(), spec.binary_path.clone(), "healthcheck".into()],
                interval: secs(5),
                timeout: secs(3),
                start_period: secs(5),
                retries: 3,
            },
        },
        rootfs: RootFs { r#type: "layers", diff_ids: vec![diff_id.clone()] },
        history: vec![History {
            created: spec.created.clone(),
            created_by: format!("cargo xtask image build ({} on scratch)", spec.binary_path),
        }],
    };
    let config_json = serde_json::to_vec(&config)?;
    let config_digest = sha256_hex(&config_json);

    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_MANIFEST,
        artifact_type: None,
        subject: None,
        config: Descriptor {
            media_type: MEDIA_CONFIG,
            digest: format!("sha256:{config_digest}"),
            size: config_json.len() as u64,
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: MEDIA_LAYER,
            digest: format!("sha256:{layer_digest}"),
            size: layer_gz.len() as u64,
            annotations: BTreeMap::new(),
        }],
        annotations: spec.labels.clone(),
    };
    let manifest_json = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256_hex(&manifest_json);
    let reference = format!("{}:{}", spec.name, spec.tag);
    let legacy = [LegacyManifest {
        config: format!("blobs/sha256/{config_digest}"),
        repo_tags: vec![reference.clone()],
        layers: vec![format!("blobs/sha256/{layer_digest}")],
    }];
    let layer_size = layer_gz.len() as u64;
    let tar = layout_tar(
        vec![config_json, layer_gz],
        manifest_json,
        BTreeMap::from([
            ("io.containerd.image.name".to_string(), reference),
            ("org.opencontainers.image.ref.name".to_string(), spec.tag.clone()),
        ]),
        Some(serde_json::to_vec(&legacy)?),
    )?;
    let digests = ImageDigests {
        config: format!("sha256:{config_digest}"),
        manifest: format!("sha256:{manifest_digest}"),
        layer: format!("sha256:{layer_digest}"),
        diff_id,
        layer_size,
    };
    Ok((tar, digests))
}

/// An OCI image layout as a tar: each blob and the manifest under `blobs/sha256/`, `index.json`
/// naming the manifest (with `annotations`), `oci-layout`, and Docker's `manifest.json` when
/// given. Entries are sorted and every header pinned, so equal inputs give equal bytes.
fn layout_tar(
    blobs: Vec<Vec<u8>>,
    manifest: Vec<u8>,
    annotations: BTreeMap<String, String>,
    docker_manifest: Option<Vec<u8>>,
) -> Result<Vec<u8>> {
    let index = Index {
        schema_version: 2,
        media_type: "application/vnd.oci.image.index.v1+json",
        manifests: vec![Descriptor {
            media_type: MEDIA_MANIFEST,
            digest: format!("sha256:{}", sha256_hex(&manifest)),
            size: manifest.len() as u64,
            annotations,
        }],
    };
    let mut entries: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    entries.insert("blobs/".into(), None);
    entries.insert("blobs/sha256/".into(), None);
    for blob in blobs.into_iter().chain([manifest]) {
        entries.insert(format!("blobs/sha256/{}", sha256_hex(&blob)), Some(blob));
    }
    entries.insert("index.json".into(), Some(serde_json::to_vec(&index)?));
    if let Some(legacy) = docker_manifest {
        entries.insert("manifest.json".into(), Some(legacy));
    }
    entries.insert("oci-layout".into(), Some(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in &entries {
        append(&mut tar, path, if data.is_some() { 0o644 } else { 0o755 }, data.as_deref())?;
    }
    Ok(tar.into_inner()?)
}

/// A document about an image (its SBOM, its provenance), as an OCI 1.1 artifact: a manifest whose
/// `artifactType` names the document, whose one layer is the document, and whose `subject` is
/// the image's manifest. Written as an OCI layout tar (skopeo pushes it like an image); returns
/// the tar and the artifact manifest's digest.
pub fn artifact_tar(
    artifact_type: &'static str,
    document: &[u8],
    subject_digest: &str,
    subject_size: u64,
    created: &str,
) -> Result<(Vec<u8>, String)> {
    let empty = b"{}".to_vec();
    let empty_digest = sha256_hex(&empty);
    let document_digest = sha256_hex(document);
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_MANIFEST,
        artifact_type: Some(artifact_type),
        config: Descriptor {
            media_type: MEDIA_EMPTY,
            digest: format!("sha256:{empty_digest}"),
            size: empty.len() as u64,
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: artifact_type,
            digest: format!("sha256:{document_digest}"),
            size: document.len() as u64,
            annotations: BTreeMap::new(),
        }],
        subject: Some(Descriptor {
            media_type: MEDIA_MANIFEST,
            digest: subject_digest.to_string(),
            size: subject_size,
            annotations: BTreeMap::new(),
        }),
        annotations: BTreeMap::from([("org.opencontainers.image.created".to_string(), created.to_string())]),
    };
    let manifest_json = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256_hex(&manifest_json);
    let tar = layout_tar(vec![empty, document.to_vec()], manifest_json, BTreeMap::new(), None)?;
    Ok((tar, format!("sha256:{manifest_digest}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_names_its_type_and_the_image_it_is_about() {
        let subject = format!("sha256:{}", "a".repeat(64));
        let (tar, digest) =
            artifact_tar(MEDIA_CYCLONEDX, br#"{"bomFormat":"CycloneDX"}"#, &subject, 812, "2026-12-03T00:00:00Z")
                .expect("tar");
        let files = entries(&tar);
        let manifest_blob = &files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))].1;
        assert_eq!(format!("sha256:{}", sha256_hex(manifest_blob)), digest);
        let manifest: serde_json::Value = serde_json::from_slice(manifest_blob).expect("json");
        assert_eq!(manifest["artifactType"], MEDIA_CYCLONEDX);
        assert_eq!(manifest["subject"]["digest"], subject.as_str());
        assert_eq!(manifest["config"]["mediaType"], MEDIA_EMPTY);
        let layer = manifest["layers"][0]["digest"].as_str().expect("layer").trim_start_matches("sha256:");
        assert_eq!(files[&format!("blobs/sha256/{layer}")].1, br#"{"bomFormat":"CycloneDX"}"#);
        let again =
            artifact_tar(MEDIA_CYCLONEDX, br#"{"bomFormat":"CycloneDX"}"#, &subject, 812, "2026-12-03T00:00:00Z");
        assert_eq!(again.expect("tar").0, tar, "reproducible");
    }

    fn spec() -> ImageSpec {
        ImageSpec {
            name: "api".into(),
            tag: "0123456789ab".into(),
            binary_path: "/usr/local/bin/api".into(),
            binary: b"\x7fELF not really a binary".to_vec(),
            port: 8081,
            created: "2026-11-01T10:00:00Z".into(),
            labels: BTreeMap::from([("org.opencontainers.image.title".to_string(), "api".to_string())]),
            env: vec![],
        }
    }

    fn entries(tar_bytes: &[u8]) -> BTreeMap<String, (tar::Header, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = BTreeMap::new();
        for entry in archive.entries().expect("tar") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("read");
            out.insert(path, (entry.header().clone(), data));
        }
        out
    }

    #[test]
    fn same_input_gives_the_same_bytes() {
        let (a, da) = image_tar(&spec()).expect("image");
        let (b, db) = image_tar(&spec()).expect("image");
        assert_eq!(sha256_hex(&a), sha256_hex(&b));
        assert_eq!(da, db);
        let mut other = spec();
        other.binary.push(0);
        let (c, _) = image_tar(&other).expect("image");
        assert_ne!(sha256_hex(&a), sha256_hex(&c), "a different binary must change the image");
    }

    #[test]
    fn tar_has_both_layouts_pointing_at_the_same_blobs() {
        let (bytes, digests) = image_tar(&spec()).expect("image");
        let files = entries(&bytes);
        let names: Vec<&String> = files.keys().collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (path, (header, _)) in &files {
            assert_eq!(header.mtime().expect("mtime"), 0, "{path}");
            assert_eq!(header.uid().expect("uid"), 0, "{path}");
        }
        let legacy: serde_json::Value = serde_json::from_slice(&files["manifest.json"].1).expect("json");
        let config_path = legacy[0]["Config"].as_str().expect("Config");
        assert_eq!(config_path, format!("blobs/sha256/{}", digests.config.trim_start_matches("sha256:")));
        assert_eq!(legacy[0]["RepoTags"][0], "api:0123456789ab");
        // Every blob is stored under its own digest.
        for (path, (_, data)) in files.iter().filter(|(p, _)| p.starts_with("blobs/sha256/") && p.len() > 13) {
            assert_eq!(path.trim_start_matches("blobs/sha256/"), sha256_hex(data), "{path}");
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"].1).expect("json");
        assert_eq!(index["manifests"][0]["digest"], digests.manifest);
        let manifest_blob = &files[&format!("blobs/sha256/{}", digests.manifest.trim_start_matches("sha256:"))].1;
        let manifest: serde_json::Value = serde_json::from_slice(manifest_blob).expect("json");
        assert_eq!(manifest["config"]["digest"], digests.config);
        assert_eq!(manifest["layers"][0]["digest"], digests.layer);
        assert_eq!(manifest["annotations"]["org.opencontainers.image.title"], "api");
    }

    #[test]
    fn config_runs_the_binary_as_nonroot_with_its_own_healthcheck() {
        let (bytes, digests) = image_tar(&spec()).expect("image");
        let files = entries(&bytes);
        let config: serde_json::Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{}", digests.config.trim_start_matches("sha256:"))].1)
                .expect("json");
        assert_eq!(config["created"], "2026-11-01T10:00:00Z");
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/api");
        assert_eq!(
            config["config"]["Healthcheck"]["Test"],
            serde_json::json!(["CMD", "/usr/local/bin/api", "healthcheck"])
        );
        assert!(config["config"]["ExposedPorts"]["8081/tcp"].is_object());
        assert_eq!(config["rootfs"]["diff_ids"][0], digests.diff_id);
    }

    #[test]
    fn layer_holds_the_binary_executable_and_a_world_writable_tmp() {
        let layer = layer_tar(&spec()).expect("layer");
        let files = entries(&layer);
        let (binary, data) = &files["usr/local/bin/api"];
        assert_eq!(binary.mode().expect("mode"), 0o755);
        assert_eq!(data, &spec().binary);
        assert_eq!(files["tmp/"].0.mode().expect("mode"), 0o1777);
        assert!(String::from_utf8_lossy(&files["etc/passwd"].1).contains("nonroot:x:65532:65532"));
        for dir in ["usr/", "usr/local/", "usr/local/bin/"] {
            assert!(files.contains_key(dir), "{dir} missing");
        }
    }
}
