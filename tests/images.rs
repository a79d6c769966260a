//! End-to-end tests of `cargo xtask image build` against the real Docker engine and a real
//! registry (Debian's `docker-registry`, on 127.0.0.1): every service image loads, runs as uid
//! 65532, turns healthy through its own HEALTHCHECK and answers on a 127.0.0.1-published port;
//! rebuilds are byte-identical; a push pulls back by digest.
//!
//! These tests share Docker's image store, so nextest runs them one at a time (the `docker`
//! test group in .config/nextest.toml).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use test_support::{Link, eventually, http};

mod common;
use common::{Registry, docker, docker_ok, require_tool, target_dir, text, xtask, xtask_command};

fn build_manifest() -> serde_json::Value {
    let path = target_dir().join("xtask/images.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .expect("images.json is JSON")
}

fn build_images(extra: &[&str]) -> serde_json::Value {
    build_images_with(extra, &[]).0
}

/// `cargo xtask image build EXTRA` with `env` set, which must succeed: the build manifest, and
/// what xtask said on stderr.
fn build_images_with(extra: &[&str], env: &[(&str, &str)]) -> (serde_json::Value, String) {
    let mut args = vec!["image", "build"];
    args.extend(extra);
    let out = xtask_command().args(&args).envs(env.iter().copied()).output().expect("xtask binary runs");
    let said = text(&out.stderr);
    assert!(out.status.success(), "cargo xtask {}:\n{}\n{said}", args.join(" "), text(&out.stdout));
    (build_manifest(), said)
}

/// A container removed when the test ends, pass or fail.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// A user-defined bridge network of the test's own, removed at the end. Its gateway is the
/// host's address on it: containers reach host services through it.
struct Network {
    name: String,
    gateway: IpAddr,
}

impl Network {
    fn create() -> Network {
        let name = format!("xtask-images-{}", std::process::id());
        let _ = docker(&["network", "rm", &name]);
        docker_ok(&["network", "create", &name]);
        let gateway = docker_ok(&["network", "inspect", &name, "--format", "{{(index .IPAM.Config 0).Gateway}}"]);
        let gateway = gateway.parse().unwrap_or_else(|e| panic!("network {name} gateway {gateway:?}: {e}"));
        Network { name, gateway }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

fn url_target(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("scheme").1;
    let authority = rest.split('/').next().expect("authority");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port.parse().expect("test servers listen on an IP:port")
}

/// Point a URL of a loopback test server at a link the containers can reach.
fn through(url: &str, link: &Link, gateway: IpAddr) -> String {
    let target = url_target(url);
    url.replacen(&target.to_string(), &format!("{gateway}:{}", link.port), 1)
}

#[test]
fn every_service_image_runs_as_nonroot_turns_healthy_and_answers_on_loopback() {
    let manifest = build_images(&[]);
    let images = manifest["images"].as_object().expect("images");
    assert_eq!(images.keys().collect::<Vec<_>>(), ["api", "gateway", "worker"]);

    // The API and worker need Postgres and Redis at start-up: the test servers listen on
    // loopback only, so links on the bridge gateway carry the containers' connections to them.
    let network = Network::create();
    let gateway_ip = network.gateway;
    let db_url = test_support::fresh_database("images");
    let redis = test_support::redis_url();
    let db_link = Link::on(gateway_ip, url_target(&db_url));
    let redis_link = Link::on(gateway_ip, url_target(&redis));
    let env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", through(&db_url, &db_link, gateway_ip)),
        ("REDIS_URL", through(&redis, &redis_link, gateway_ip)),
        ("GATEWAY_ROUTES", "/v1/jobs=http://127.0.0.1:9".to_string()),
    ];

    for (service, record) in images {
        assert_runs_healthy_as_nonroot(service, record, &network, &env);
    }
}

/// Labels, user, HEALTHCHECK-driven health, the process's real uid, and `/healthz` on a
/// 127.0.0.1-published port: what every service image must do.
fn assert_runs_healthy_as_nonroot(
    service: &str,
    record: &serde_json::Value,
    network: &Network,
    env: &[(&str, String)],
) {
    let image = record["image"].as_str().expect("image");
    let id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", image]);
    assert_eq!(id, record["id"], "docker's image ID is the one recorded");
    let labels: serde_json::Value =
        serde_json::from_str(&docker_ok(&["image", "inspect", "--format", "{{json .Config.Labels}}", image]))
            .expect("labels");
    assert_eq!(labels["org.opencontainers.image.title"], service);
    assert_eq!(labels["org.opencontainers.image.revision"], record["revision"]);
    assert_eq!(labels["org.opencontainers.image.created"], record["created"]);
    for key in ["source", "version"] {
        let value = labels[format!("org.opencontainers.image.{key}")].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "{image} lacks org.opencontainers.image.{key}");
    }
    assert_eq!(docker_ok(&["image", "inspect", "--format", "{{.Config.User}}", image]), "65532:65532");

    let name = format!("xtask-image-test-{service}-{}", std::process::id());
    let _ = docker(&["rm", "-f", &name]);
    let port =
        docker_ok(&["image", "inspect", "--format", "{{range $p, $_ := .Config.ExposedPorts}}{{$p}}{{end}}", image]);
    let mut args: Vec<String> =
        ["run", "-d", "--name", &name, "--network", &network.name, "--health-interval", "1s", "-p"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.push(format!("127.0.0.1::{}", port.trim_end_matches("/tcp")));
    for (k, v) in env {
        args.extend(["-e".to_string(), format!("{k}={v}")]);
    }
    args.push(image.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&args);
    let container = Container(name);

    let status = eventually(&format!("{image} to report healthy"), Duration::from_secs(60), || {
        let status = docker_ok(&["inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", &container.0]);
        assert!(
            !status.starts_with("exited"),
            "{image} exited; logs:\n{}",
            text(&docker(&["logs", &container.0]).stderr)
        );
        (status == "running healthy").then_some(status)
    });
    assert_eq!(status, "running healthy");

    let pid = docker_ok(&["inspect", "--format", "{{.State.Pid}}", &container.0]);
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == "65532"), "{image} runs as {uid_line}");

    let published = docker_ok(&["port", &container.0, &port]);
    let published = published.lines().next().expect("a published address");
    assert!(published.starts_with("127.0.0.1:"), "{image} published on {published}, not loopback");
    let health = http("GET", &format!("http://{published}/healthz"), &[], b"").expect("GET /healthz");
    assert_eq!(health.status, 200, "{image} /healthz: {}", health.text());
}

/// The docker builder (cargo-chef inside containers) with a builder image assembled here:
/// debootstrapped Debian plus this machine's toolchain (no Rust image can be pulled). `buildkit`
/// picks the path: `Dockerfile.buildkit` with cache mounts, or `Dockerfile` through Docker's legacy
/// builder (`DOCKER_BUILDKIT=0`: no `RUN --mount`, layer caching only).
fn docker_builder_makes_a_healthy_image(buildkit: bool) {
    let out = xtask(&["image", "builder"]);
    assert!(out.status.success(), "cargo xtask image builder:\n{}", text(&out.stderr));
    let env: &[(&str, &str)] = if buildkit { &[] } else { &[("DOCKER_BUILDKIT", "0")] };
    let (manifest, said) = build_images_with(&["--builder", "docker", "--service", "gateway"], env);
    if buildkit {
        assert!(
            said.contains("docker builder: BuildKit through") && said.contains("infra/docker/Dockerfile.buildkit"),
            "no BuildKit-capable docker client: install the buildx plugin, or the 20.10 CLI at /usr/bin/docker \
             (apt-get install docker.io):\n{said}"
        );
    } else {
        assert!(
            said.contains("docker builder: legacy builder") && said.contains("(infra/docker/Dockerfile)"),
            "{said}"
        );
    }
    let record = &manifest["images"]["gateway"];
    assert_eq!(record["builder"], "docker");
    let network = Network::create();
    let env = [("GATEWAY_ROUTES", "/v1/jobs=http://127.0.0.1:9".to_string())];
    assert_runs_healthy_as_nonroot("gateway", record, &network, &env);
}

#[test]
fn the_docker_builder_with_buildkit_makes_a_healthy_image() {
    docker_builder_makes_a_healthy_image(true);
}

#[test]
fn the_docker_builder_without_buildkit_makes_a_healthy_image() {
    docker_builder_makes_a_healthy_image(false);
}

/// The scan's image part on real images: a CycloneDX SBOM per image listing the crates that
/// cargo-auditable embedded, and the image configs pass trivy's checks.
#[test]
fn scanning_the_images_writes_an_sbom_listing_their_crates() {
    let manifest = build_images(&["--no-load"]);
    let out = xtask(&[
        "scan",
        "--skip",
        "deny",
        "--skip",
        "secrets",
        "--skip",
        "fs",
        "--skip",
        "config",
        "--offline",
        "--format",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    for service in manifest["images"].as_object().expect("images").keys() {
        let scanner =
            report["scanners"].as_array().expect("scanners").iter().find(|s| s["source"] == format!("image:{service}"));
        assert!(scanner.is_some_and(|s| s["status"].as_str().unwrap_or("").starts_with("ok")), "{report:#}");
        let sbom_path = target_dir().join(format!("xtask/sbom/{service}.cdx.json"));
        let sbom: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&sbom_path).expect("sbom written")).expect("json");
        assert_eq!(sbom["bomFormat"], "CycloneDX");
        let names: Vec<&str> =
            sbom["components"].as_array().expect("components").iter().filter_map(|c| c["name"].as_str()).collect();
        for krate in ["tokio", "service-runtime"] {
            assert!(names.contains(&krate), "{service}'s SBOM lacks {krate}: cargo-auditable data missing? {names:?}");
        }
    }
}

fn sha256_of(path: &str) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum runs");
    text(&out.stdout).split_whitespace().next().expect("a digest").to_string()
}

/// Two builds of one commit: the second writes every tar again, and compiles the gateway again
/// from a clean state, and every tar must come out with the same sha256.
#[test]
fn two_builds_of_one_commit_write_byte_identical_tars() {
    let first = build_images(&["--no-load"]);
    // Nothing changed: every tar is recognised as current instead of being written again.
    let again = xtask(&["image", "build", "--no-load"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stderr).matches("unchanged since the last build").count(), 3, "{}", text(&again.stderr));
    let mut digests = Vec::new();
    for record in first["images"].as_object().expect("images").values() {
        let tar = record["tar"].as_str().expect("tar");
        assert_eq!(sha256_of(tar), record["tar_sha256"], "the record describes the tar on disk");
        digests.push((tar.to_string(), sha256_of(tar)));
        std::fs::remove_file(tar).expect("remove the tar before rebuilding");
    }
    // Compile one service again from its sources (the gateway: the quickest to link), so the
    // comparison covers cargo's output too, not only how xtask writes the tars.
    let binary = target_dir().join("x86_64-unknown-linux-gnu/image/gateway");
    let clean = std::process::Command::new(env!("CARGO"))
        .args(["clean", "--profile", "image", "--target", "x86_64-unknown-linux-gnu", "-p", "gateway"])
        .current_dir(common::root())
        .output()
        .expect("cargo clean runs");
    assert!(clean.status.success(), "cargo clean -p gateway: {}", text(&clean.stderr));
    assert!(!binary.exists(), "{} still there after cargo clean", binary.display());
    build_images(&["--no-load"]);
    assert!(binary.exists(), "the gateway was compiled again");
    for (tar, digest) in digests {
        assert_eq!(sha256_of(&tar), digest, "{tar} changed between two builds of one commit");
    }
}

#[test]
fn a_pushed_image_pulls_back_by_its_recorded_digest() {
    let registry = Registry::start();
    let address = format!("127.0.0.1:{}", registry.port);
    let manifest = build_images(&["--service", "gateway", "--push", &address]);
    let record = &manifest["images"]["gateway"];
    let pinned = record["pushed"].as_str().expect("the push recorded a digest").to_string();
    assert!(pinned.starts_with(&format!("{address}/gateway@sha256:")), "{pinned}");

    // The registry holds the manifest xtask wrote: the pushed digest is the one it computed.
    assert_eq!(pinned.split_once('@').expect("digest").1, record["manifest_digest"], "pushed as written");
    // Forget the local name of the image (the push never gave Docker another), then pull it
    // back by digest alone.
    let image = record["image"].as_str().expect("image");
    docker_ok(&["rmi", "-f", image]);
    let gone = docker(&["image", "inspect", &pinned]);
    assert!(!gone.status.success(), "the image should be gone before the pull");
    docker_ok(&["pull", &pinned]);
    let id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", &pinned]);
    assert_eq!(id, record["id"], "the pulled image is the one xtask built");
    // Put the local tag back for whoever uses the image next.
    docker_ok(&["tag", &pinned, image]);
}

/// The CI shape: one job writes the tars without Docker, another pushes them as they are.
#[test]
fn tars_written_without_docker_are_pushed_as_they_are_and_pull_back() {
    require_tool("skopeo");
    let registry = Registry::start();
    let address = format!("127.0.0.1:{}", registry.port);
    let built = build_images(&["--service", "worker", "--service", "gateway", "--no-load"]);
    let written = built["images"]["worker"]["manifest_digest"].as_str().expect("digest").to_string();
    let out = xtask(&["image", "push", "--registry", &address, "--service", "worker", "--service", "gateway"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let manifest = build_manifest();
    let pinned = manifest["images"]["worker"]["pushed"].as_str().expect("recorded").to_string();
    assert_eq!(pinned, format!("{address}/worker@{written}"), "the digest xtask computed is the registry's");
    docker_ok(&["pull", &pinned]);
    let id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", &pinned]);
    assert_eq!(id, built["images"]["worker"]["id"], "the pulled image is the one xtask wrote");
    docker_ok(&["rmi", "-f", &pinned]);

    // Its SBOM and provenance went beside it, about exactly this digest.
    let out = xtask(&["--format", "json", "image", "verify", &pinned]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(verified["sbom_components"].as_u64().is_some_and(|n| n > 10), "the crates are listed: {verified}");
    assert_eq!(verified["commit"], built["images"]["worker"]["revision"], "{verified}");
    // Swap in another image's provenance: verification names the mismatch and fails with exit 2.
    let gateway = manifest["images"]["gateway"]["pushed"].as_str().expect("recorded");
    let tag = |pinned: &str, suffix: &str| {
        let (repo, digest) = pinned.split_once('@').expect("digest ref");
        format!("docker://{repo}:{}.{suffix}", digest.replace(':', "-"))
    };
    let swap = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .args([tag(gateway, "att"), tag(&pinned, "att")])
        .status()
        .expect("skopeo runs");
    assert!(swap.success());
    let out = xtask(&["image", "verify", &pinned]);
    assert_eq!(out.status.code(), Some(2), "{}{}", text(&out.stdout), text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("provenance") && err.contains("tampered"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let unknown = format!("{address}/worker@sha256:{}", "0".repeat(64));
    let out = xtask(&["image", "verify", &unknown]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no SBOM at"), "{}", text(&out.stderr));

    let out = xtask(&["image", "push", "--registry", &address, "--service", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--service nope"), "{}", text(&out.stderr));
}

#[test]
fn a_bad_registry_is_refused_before_anything_builds() {
    let out = xtask(&["image", "build", "--push", "http://127.0.0.1:5000"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--push") && err.contains("without a scheme"), "{err}");
}

/// `image login` hands skopeo the password on stdin and leaves the credentials in the auth file
/// later pushes and deploys read; without both variables it refuses and writes nothing.
#[test]
fn image_login_stores_credentials_where_skopeo_and_docker_read_them() {
    require_tool("skopeo");
    let registry = Registry::start();
    let host = format!("127.0.0.1:{}", registry.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.json");
    let login = |vars: &[(&str, &str)]| {
        xtask_command()
            .args(["image", "login", "--registry", &format!("{host}/team")])
            .env_remove("REGISTRY_USERNAME")
            .env_remove("REGISTRY_PASSWORD")
            .env("REGISTRY_AUTH_FILE", &auth)
            .envs(vars.iter().copied())
            .output()
            .expect("xtask runs")
    };
    let refused = login(&[("REGISTRY_USERNAME", "ci")]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("set REGISTRY_PASSWORD"), "{}", text(&refused.stderr));
    assert!(!auth.exists(), "nothing written");

    let out = login(&[("REGISTRY_USERNAME", "ci"), ("REGISTRY_PASSWORD", "s3cret-pw")]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("s3cret-pw"), "the password is never printed: {said}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&auth).expect("auth file")).expect("JSON");
    // The docker config format: base64 of `user:password` under the registry's host.
    assert_eq!(file["auths"][&host]["auth"], "Y2k6czNjcmV0LXB3", "{file}");
}
