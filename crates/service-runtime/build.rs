//! Bakes the git commit into the binary for the `build_info` metric (`GIT_SHA` overrides it).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_SHA");
    let sha = std::env::var("GIT_SHA").ok().filter(|s| !s.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!("cargo:rustc-env=SERVICE_GIT_SHA={}", sha.as_deref().unwrap_or("unknown"));
    // Rebuild when HEAD moves: HEAD itself, the branch it points at, and packed refs.
    let git_dir = Path::new("../../.git");
    let head = git_dir.join("HEAD");
    let mut watched = vec![head.clone(), git_dir.join("packed-refs")];
    if let Ok(text) = std::fs::read_to_string(&head)
        && let Some(reference) = text.strip_prefix("ref: ")
    {
        watched.push(git_dir.join(reference.trim()));
    }
    // A path that does not exist would make cargo rerun this script on every build.
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
