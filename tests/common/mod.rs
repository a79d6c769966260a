//! Helpers every end-to-end test binary under tests/ shares (each uses a subset).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use test_support::{eventually, free_port, http};

/// The workspace root: this package's manifest sits in `<root>/tests`.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The xtask binary under test. `cargo xtask test --e2e` passes its own path in `XTASK_BIN`;
/// run any other way (`cargo nextest run -p e2e`), the tests build it once with cargo and ask
/// cargo where it is, so they never run a stale copy.
pub fn xtask_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("XTASK_BIN").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--package", "xtask", "--locked", "--message-format=json"])
            .current_dir(root())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(out.status.success(), "cargo build --package xtask failed (its errors are above)");
        text(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["target"]["name"] == "xtask" && m["target"]["kind"][0] == "bin")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the xtask executable it built")
    })
    .clone()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A tool the test cannot do without: missing means a loud failure that says how to install it.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} is not on PATH; install the pinned tools with `cargo xtask setup`");
}

/// Where cargo (and so xtask) puts build output for this run.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// The real `cargo xtask` binary, run from the workspace root with plain (uncoloured, not
/// GitHub Actions) output: what every end-to-end test starts from. `CARGO_MANIFEST_DIR` is what
/// `cargo xtask` gives it (the test runner set this package's for the test itself).
pub fn xtask_command() -> Command {
    let mut cmd = Command::new(xtask_bin());
    cmd.current_dir(root())
        .env_remove("GITHUB_ACTIONS")
        .env("CARGO_TERM_COLOR", "never")
        .env("NO_COLOR", "1")
        .env("CARGO_MANIFEST_DIR", root().join("xtask"));
    cmd
}

/// `cargo xtask ARGS` with `xtask_command`'s setup, to completion.
pub fn xtask(args: &[&str]) -> Output {
    xtask_command().args(args).output().expect("xtask binary runs")
}

/// `docker ARGS` to completion; a missing docker is a loud failure with its install hint.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap_or_else(|e| {
        panic!("docker is not on PATH ({e}); install Docker Engine 20.10+ (apt-get install docker.io)")
    })
}

/// `docker ARGS`, which must succeed; its trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {}: {}", args.join(" "), text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// Debian's `docker-registry` on a free loopback port, with its storage in a temp dir.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("docker-registry cannot start ({e}); install it with `cargo xtask setup` (apt: docker-registry)")
            });
        let registry = Registry { child, port, _dir: dir };
        eventually("the registry to answer /v2/", Duration::from_secs(20), || {
            http("GET", &format!("http://127.0.0.1:{port}/v2/"), &[], b"").ok().filter(|r| r.status == 200)
        });
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
