//! The few git questions xtask asks: tracked files, what changed since a base, the HEAD commit.

use std::path::Path;

use anyhow::Result;

use crate::process::Cmd;

pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let git = crate::tools::GIT.require()?;
    Cmd::new(git).arg("-C").arg(dir).args(args).read()
}

fn nul_separated(text: &str) -> Vec<String> {
    text.split('\0').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Files git tracks (plus files added to the index), relative to the repository root.
pub fn tracked_files(repo: &Path) -> Result<Vec<String>> {
    Ok(nul_separated(&git(repo, &["ls-files", "-z", "--cached"])?))
}

/// Files changed between the merge-base with `base` and the working tree, untracked ones included.
pub fn changed_files(repo: &Path, base: &str) -> Result<Vec<String>> {
    if git(repo, &["rev-parse", "--verify", "--quiet", &format!("{base}^{{commit}}")]).is_err() {
        return Err(crate::UsageError(format!(
            "--base {base}: no such commit or branch here; fetch it or pass another ref (e.g. --base origin/main)"
        ))
        .into());
    }
    let merge_base = git(repo, &["merge-base", "HEAD", base])?;
    let mut files = nul_separated(&git(repo, &["diff", "--name-only", "--no-renames", "-z", merge_base.trim()])?);
    files.extend(nul_separated(&git(repo, &["ls-files", "-z", "--others", "--exclude-standard"])?));
    files.sort();
    files.dedup();
    Ok(files)
}
