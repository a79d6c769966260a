//! Helpers every end-to-end test binary under tests/ shares (each uses a subset).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root: the tests are built as xtask's, whose manifest sits in `<root>/xtask`.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
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
/// GitHub Actions) output: what every end-to-end test starts from.
pub fn xtask_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(root()).env_remove("GITHUB_ACTIONS").env("CARGO_TERM_COLOR", "never").env("NO_COLOR", "1");
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
