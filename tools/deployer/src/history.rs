//! Release history: what an environment ran, newest last, kept in the environment itself so any
//! machine (a CI runner, a laptop) sees the same history and can roll back without local files.
//!
//! A release is one successful deploy: its commit, its images, when, and what verification said
//! of it. A rollback is a release too (`rollback_of` names the one it returned to), as in Helm,
//! so the history reads in the order things happened. The last `keep` releases are kept
//! (`--history N`, default 10); older ones are removed from the environment.
//!
//! Where it lives: on a Docker host, one never-started record container per release
//! (`<project>-release-<id>`, labels `xtask.release-of` and `xtask.release`), whose image also
//! keeps that release's gateway image on the host for a rollback. In a Kubernetes namespace, one
//! ConfigMap per release (`xtask-release-<id>`, see `kube.rs`) holding the record and the pinned
//! render it applied.
//!
//! What is common to both targets lives here, behind [`Keeper`]: which release a rollback goes
//! to, and what a verification's verdict does to a release.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use xtask_kit::UsageError;

use crate::engine::Docker;
use crate::spec::RunSpec;
use crate::verify::{self, Verdict};

/// How many releases an environment keeps unless told otherwise.
pub const DEFAULT_KEEP: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Deployed and healthy; not verified (no SLO file, or `--no-verify`), or not yet.
    Deployed,
    /// Held its SLOs for the verification window.
    Verified,
    /// Breached an SLO; rolled back (`why` says which).
    Failed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Deployed => "deployed",
            State::Verified => "verified",
            State::Failed => "failed",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// 1, 2, 3, ... per environment.
    pub id: u64,
    pub commit: String,
    pub deployed_at: String,
    pub state: State,
    /// Why it failed verification, or what it was verified against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// For a rollback: the release it put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// Service -> the image it ran, for people (`api:1a2b3c4d5e6f`).
    pub images: BTreeMap<String, String>,
    /// Docker target: the run spec of each of our services (what a rollback starts again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<RunSpec>,
    /// Kubernetes target: the sha256 of the pinned render it applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render: Option<String>,
}

impl Release {
    /// What the release runs, whatever it is called: two releases with one content are the same
    /// thing to roll back to.
    pub fn content(&self) -> String {
        let mut specs: Vec<String> = self.specs.iter().map(RunSpec::hash).collect();
        specs.sort();
        format!("{:?}{specs:?}{:?}", self.images, self.render)
    }
}

/// An environment as the release history sees it: where its releases are kept and how one is
/// put back. The Docker host and a Kubernetes namespace each implement it.
pub trait Keeper {
    fn env(&self) -> &str;
    /// Every release kept, oldest first.
    fn releases(&self) -> Result<Vec<Release>>;
    /// Write a release (a new one, or a new state of one); drop what is beyond the limit.
    fn record(&self, release: &Release) -> Result<()>;
    /// Put `release` back, wait until it is healthy, and record that as a new release.
    fn restore(&self, release: &Release) -> Result<Release>;
}

/// `deploy rollback [--to ID]`: the release named, else the newest earlier one that did not fail
/// and runs something else. `Ok(None)`: there is none (the caller may know another way back).
pub fn rollback(keeper: &dyn Keeper, to: Option<u64>, dry_run: bool) -> Result<Option<Release>> {
    let env = keeper.env();
    let releases = keeper.releases()?;
    let target = match to {
        Some(id) => find(&releases, env, id)?.clone(),
        None => match previous_good(&releases) {
            Some(r) => r.clone(),
            None => return Ok(None),
        },
    };
    if let Some(now) = current(&releases).filter(|now| now.content() == target.content()) {
        eprintln!("{env} runs release {} already (as release {}); nothing to do", target.id, now.id);
        return Ok(Some(now.clone()));
    }
    eprintln!("rolling {env} back to release {} (commit {})", target.id, short(&target.commit));
    for (service, image) in &target.images {
        eprintln!("  {service}: {image}");
    }
    if dry_run {
        eprintln!("dry run: nothing was changed in {env}");
        return Ok(Some(target));
    }
    let back = keeper.restore(&target)?;
    eprintln!("rolled back {env} to release {} (now release {})", target.id, back.id);
    Ok(Some(back))
}

/// The first 12 characters of a commit.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// What a verification's verdict does to `release`: held, it is marked verified; breached, it is
/// marked failed and (unless `no_rollback`) the last good release is put back. The error of a
/// breach names the objective, the observed value and the limit, and what was done about it.
pub fn conclude(keeper: &dyn Keeper, mut release: Release, verdict: &Verdict, no_rollback: bool) -> Result<()> {
    let env = keeper.env().to_string();
    if verdict.breaches().is_empty() {
        release.state = State::Verified;
        release.why = Some(format!("{} objectives held for {}s", verdict.findings.len(), verdict.window_s));
        keeper.record(&release)?;
        eprintln!("release {} of {env} verified", release.id);
        return Ok(());
    }
    let breach = verify::breach_line(verdict);
    release.state = State::Failed;
    release.why = Some(breach.clone());
    keeper.record(&release)?;
    let id = release.id;
    if no_rollback {
        anyhow::bail!("release {id} of {env} breached its SLOs: {breach}; left running (--no-rollback)");
    }
    let releases = keeper.releases()?;
    let Some(good) = previous_good(&releases).cloned() else {
        anyhow::bail!(
            "release {id} of {env} breached its SLOs: {breach}; there is no earlier good release to roll back to"
        );
    };
    eprintln!("release {id} breached its SLOs; rolling {env} back to release {}", good.id);
    match keeper.restore(&good) {
        Ok(back) => anyhow::bail!(
            "release {id} of {env} breached its SLOs: {breach}; rolled back to release {} (now release {})",
            good.id,
            back.id
        ),
        Err(e) => anyhow::bail!("release {id} of {env} breached its SLOs: {breach}; the rollback failed too: {e:#}"),
    }
}

/// The release a history's next one gets.
pub fn next_id(history: &[Release]) -> u64 {
    history.iter().map(|r| r.id).max().unwrap_or(0) + 1
}

/// The newest release: what the environment runs.
pub fn current(history: &[Release]) -> Option<&Release> {
    history.iter().max_by_key(|r| r.id)
}

/// What `rollback` without `--to` returns to: the newest release older than the current one
/// that did not fail and runs something else.
pub fn previous_good(history: &[Release]) -> Option<&Release> {
    let now = current(history)?;
    history
        .iter()
        .filter(|r| r.id < now.id && r.state != State::Failed && r.content() != now.content())
        .max_by_key(|r| r.id)
}

/// The release `--to` names; refused (usage) with the ones there are.
pub fn find<'a>(history: &'a [Release], env: &str, id: u64) -> Result<&'a Release> {
    history.iter().find(|r| r.id == id).ok_or_else(|| {
        let known: Vec<String> = history.iter().map(|r| r.id.to_string()).collect();
        UsageError(format!(
            "{env} has no release {id} (it keeps: {}); see `cargo xtask deploy history --env {env}`",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ))
        .into()
    })
}

/// The ids beyond the newest `keep`, oldest first: what to remove after recording one.
pub fn beyond(history: &[Release], keep: usize) -> Vec<u64> {
    let mut ids: Vec<u64> = history.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    let extra = ids.len().saturating_sub(keep.max(1));
    ids.truncate(extra);
    ids
}

/// The history as `deploy history` prints it (stdout), newest first.
pub fn print(env: &str, history: &[Release], json: bool) -> Result<()> {
    let mut sorted: Vec<&Release> = history.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.id));
    if json {
        let out = serde_json::json!({ "env": env, "releases": sorted });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if sorted.is_empty() {
        println!("{env}: no releases recorded yet");
        return Ok(());
    }
    println!("{:<8} {:<10} {:<13} {:<21} images", "release", "state", "commit", "deployed");
    for r in sorted {
        let commit: String = r.commit.chars().take(12).collect();
        let when: String = r.deployed_at.chars().take(19).collect();
        let images: Vec<&str> = r.images.values().map(String::as_str).collect();
        let mut line = format!("{:<8} {:<10} {commit:<13} {when:<21} {}", r.id, r.state.to_string(), images.join(" "));
        if let Some(of) = r.rollback_of {
            line.push_str(&format!(" (rollback to {of})"));
        }
        if let Some(why) = &r.why {
            line.push_str(&format!(" ({why})"));
        }
        println!("{line}");
    }
    Ok(())
}

/// The Docker host's store: one never-started record container per release.
pub mod docker {
    use super::*;

    const RECORD_OF: &str = "xtask.release-of";
    const RECORD: &str = "xtask.release";

    fn record_name(project: &str, id: u64) -> String {
        format!("{project}-release-{id}")
    }

    /// Every release the host keeps for `project`.
    pub fn releases(project: &str) -> Result<Vec<Release>> {
        let mut out = Vec::new();
        for c in xtask_kit::docker::with_label(&format!("{RECORD_OF}={project}"))? {
            let release: Release = serde_json::from_str(c.label(RECORD))
                .with_context(|| format!("the release record {} is not readable", c.name()))?;
            out.push(release);
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Write a release (a new one, or a new state of one), then drop what is beyond `keep`.
    pub fn record(docker: &Docker, project: &str, release: &Release, keep: usize) -> Result<()> {
        // Any image of the release carries the record (and stays on the host while it exists).
        let image = release.specs.first().map(|s| s.image.clone()).context("a release records at least one service")?;
        let name = record_name(project, release.id);
        let _ = docker.quiet(&["rm", "-f", &name]);
        let json = serde_json::to_string(release)?;
        docker
            .checked_quiet(&[
                "create",
                "--name",
                &name,
                "--network",
                "none",
                "--label",
                &format!("{RECORD_OF}={project}"),
                "--label",
                &format!("{RECORD}={json}"),
                &image,
            ])
            .with_context(|| format!("recording release {} of {project}", release.id))?;
        for old in beyond(&releases(project)?, keep) {
            docker.checked_quiet(&["rm", "-f", &record_name(project, old)])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(id: u64, state: State, api: &str) -> Release {
        Release {
            id,
            commit: format!("c{id}"),
            deployed_at: "2026-12-03T10:00:00Z".into(),
            state,
            why: None,
            rollback_of: None,
            images: BTreeMap::from([("api".to_string(), api.to_string())]),
            specs: Vec::new(),
            render: None,
        }
    }

    #[test]
    fn rollback_returns_to_the_newest_earlier_release_that_did_not_fail_and_differs() {
        let history = [
            release(1, State::Verified, "api:v1"),
            release(2, State::Verified, "api:v2"),
            release(3, State::Failed, "api:v3"),
            release(4, State::Deployed, "api:v2"),
        ];
        assert_eq!(current(&history).map(|r| r.id), Some(4));
        assert_eq!(previous_good(&history).map(|r| r.id), Some(1), "3 failed, 2 is what runs");
        assert_eq!(next_id(&history), 5);
        assert_eq!(previous_good(&history[..1]), None, "one release has nothing before it");
        assert_eq!(next_id(&[]), 1);
    }

    #[test]
    fn history_keeps_the_newest_and_names_what_it_lacks() {
        let history: Vec<Release> = (1..=12).map(|i| release(i, State::Verified, "api:v")).collect();
        assert_eq!(beyond(&history, 10), [1, 2]);
        assert!(beyond(&history, 20).is_empty());
        assert_eq!(beyond(&history, 0).len(), 11, "at least the current release is kept");
        let err = find(&history[..2], "staging", 9).expect_err("no 9").to_string();
        assert!(err.contains("staging has no release 9 (it keeps: 1, 2)"), "{err}");
    }

    #[test]
    fn a_release_reads_back_from_its_record() {
        let r = Release { why: Some("error_ratio 0.2 > 0.01".into()), ..release(3, State::Failed, "api:v3") };
        let back: Release = serde_json::from_str(&serde_json::to_string(&r).expect("JSON")).expect("reads");
        assert_eq!(back, r);
        assert!(serde_json::to_string(&r).expect("JSON").contains(r#""state":"failed""#));
    }
}
