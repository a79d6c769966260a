//! `cargo xtask deny [--offline]`: cargo-deny's advisories, licenses, bans and sources checks.
//!
//! Offline, cargo-deny still wants a git checkout of the advisory database at a path derived
//! from its URL, and judges freshness by the checkout's fetch time. We build that checkout from
//! a plain-files snapshot, dated with the snapshot's own date (never "now"), and raise the
//! staleness limit explicitly, printing the database's real age so the report stays honest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::plan::{Plan, Step, Task};
use crate::process::Cmd;
use crate::tools::{CARGO_DENY, GIT};
use crate::{Ctx, UsageError};

/// The URL cargo-deny fetches by default; its checkout directory name is derived from it.
const ADVISORY_DB_URL: &str = "https://github.com/rustsec/advisory-db";
const CHECKS: [&str; 4] = ["advisories", "bans", "licenses", "sources"];

/// Check dependencies against RustSec advisories and the licence, ban and source policy in deny.toml.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Do not touch the network: use a local advisory-db snapshot (see --advisory-db).
    #[arg(long)]
    pub offline: bool,
    /// Plain-files or git copy of github.com/rustsec/advisory-db (implies --offline).
    #[arg(long, value_name = "PATH", env = "XTASK_ADVISORY_DB")]
    pub advisory_db: Option<PathBuf>,
    /// Fetch the advisory database even if a local snapshot is configured or found.
    #[arg(long, conflicts_with_all = ["offline", "advisory_db"])]
    pub online: bool,
    /// Oldest snapshot accepted offline, in days. The age is always printed.
    #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_MAX_DB_AGE_DAYS)]
    pub max_db_age: u32,
}

/// A snapshot older than a year is more likely forgotten than deliberately pinned.
const DEFAULT_MAX_DB_AGE_DAYS: u32 = 365;

impl Default for Args {
    fn default() -> Args {
        Args { offline: false, advisory_db: None, online: false, max_db_age: DEFAULT_MAX_DB_AGE_DAYS }
    }
}

/// Where a team's shared snapshot sits when the checkout is laid out as our CI machines lay it
/// out (air-gapped: GitHub is unreachable). Used only when no other source is named.
const SIBLING_SNAPSHOT: &str = "../shared/advisory-db";

pub fn plan(ctx: &Ctx, args: &Args) -> Result<Plan> {
    let DenySteps { prep: mut plan, cargo_args, rerun } = steps(ctx, args, DenyOutput::Human)?;
    let offline = cargo_args.iter().any(|a| a == "--offline");
    let mut step = Step::cargo(
        "deny",
        if offline {
            "cargo-deny against the local advisory-db snapshot"
        } else {
            "cargo-deny: advisories, bans, licenses, sources"
        },
        cargo_args,
        &ctx.root,
    )
    .requiring(&CARGO_DENY);
    if let Some(rerun) = rerun {
        step = step.reproduced_by(&rerun);
    }
    plan.push(step);
    Ok(plan)
}

/// The preparation steps (advisory-db checkout, crate fetch) and the `cargo deny ...` arguments,
/// shared by `deny` and `scan` (which asks for JSON).
pub fn steps(ctx: &Ctx, args: &Args, output: DenyOutput) -> Result<DenySteps> {
    let mut plan = Plan::new("deny");
    let mut advisory_db = args.advisory_db.clone();
    let sibling = ctx.root.join(SIBLING_SNAPSHOT);
    if advisory_db.is_none() && !args.online && sibling.join("crates").is_dir() {
        plan.notes.push(format!(
            "deny: using the advisory-db snapshot at {SIBLING_SNAPSHOT} (pass --online to fetch, or --advisory-db PATH)"
        ));
        advisory_db = Some(sibling.canonicalize()?);
    }
    let offline = args.offline || advisory_db.is_some();
    if !offline {
        let cargo_args = deny_args(&["--workspace", "--all-features"], output);
        return Ok(DenySteps { prep: plan, cargo_args, rerun: None });
    }
    let Some(source) = &advisory_db else {
        return Err(UsageError(
            "deny --offline needs a local advisory database: pass --advisory-db PATH or set XTASK_ADVISORY_DB (CI uses ../shared/advisory-db)".into(),
        )
        .into());
    };
    if !source.join("crates").is_dir() {
        return Err(UsageError(format!(
            "--advisory-db {}: not an advisory-db copy (no crates/ directory inside)",
            source.display()
        ))
        .into());
    }
    let source = source.canonicalize()?;
    let snap = snapshot_of(&source)?;
    plan.notes.push(format!(
        "deny: advisory-db snapshot {} dated {} is {} days old (offline limit: {} days)",
        &snap.commit[..snap.commit.len().min(12)],
        snap.date,
        today() - snap.day,
        args.max_db_age
    ));
    let work = crate::target_dir(&ctx.root).join("xtask/deny");
    let checkout =
        work.join("advisory-dbs").join(format!("advisory-db-{:016x}", xxh64(ADVISORY_DB_URL.as_bytes(), 0xca80de71)));
    let config_out = work.join("deny-offline.toml");
    plan.push(
        Step::internal(
            "deny:advisory-db",
            "dated git checkout of the advisory-db snapshot",
            PrepareAdvisoryDb {
                source: source.clone(),
                checkout,
                config_in: ctx.root.join("deny.toml"),
                config_out: config_out.clone(),
                max_age_days: args.max_db_age,
            },
            &format!("cargo xtask deny --offline --advisory-db {}", source.display()),
        )
        .requiring(&GIT),
    );
    // cargo-deny --offline also runs `cargo metadata --offline`, which needs every crate of every
    // platform in the local cache; fetch them first (crates.io, not the advisory database).
    plan.push(Step::cargo(
        "deny:fetch",
        "download every locked crate for cargo-deny's offline metadata",
        ["fetch", "--locked"],
        &ctx.root,
    ));
    let config = config_out.display().to_string();
    let cargo_args = deny_args(&["--offline", "--workspace", "--all-features", "--config", &config], output);
    let rerun = Some(format!("cargo xtask deny --offline --advisory-db {}", source.display()));
    Ok(DenySteps { prep: plan, cargo_args, rerun })
}

/// How cargo-deny reports: statistics for people, or JSON diagnostics for `scan`'s gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyOutput {
    Human,
    Json,
}

/// What running cargo-deny takes: preparation steps, its arguments, and the rerun line when
/// that differs from the cargo command (an offline database must be prepared first).
pub struct DenySteps {
    pub prep: Plan,
    pub cargo_args: Vec<String>,
    pub rerun: Option<String>,
}

/// `cargo deny GLOBAL... [--format json] check [--show-stats] CHECKS...`.
fn deny_args(global: &[&str], output: DenyOutput) -> Vec<String> {
    let mut args = vec!["deny"];
    args.extend(global);
    if output == DenyOutput::Json {
        args.extend(["--format", "json"]);
    }
    args.push("check");
    if output == DenyOutput::Human {
        args.push("--show-stats");
    }
    args.extend(CHECKS);
    args.into_iter().map(String::from).collect()
}

/// When and from which commit a snapshot was taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub commit: String,
    /// Days since 1970-01-01.
    pub day: i64,
    pub date: String,
}

/// Read `SNAPSHOT` (`source: github rustsec/advisory-db @ <sha> (YYYY-MM-DD)`).
pub fn parse_snapshot(text: &str) -> Option<Snapshot> {
    let commit = text.split('@').nth(1)?.split_whitespace().next()?.to_string();
    let date = text.rsplit_once('(')?.1.split(')').next()?.trim().to_string();
    let day = crate::date::parse_day(&date)?;
    Some(Snapshot { commit, day, date })
}

fn snapshot_of(source: &Path) -> Result<Snapshot> {
    if let Ok(text) = std::fs::read_to_string(source.join("SNAPSHOT")) {
        return parse_snapshot(&text)
            .with_context(|| format!("{}/SNAPSHOT: expected `... @ <commit> (YYYY-MM-DD)`", source.display()));
    }
    if source.join(".git").exists() {
        let out = crate::git::git(source, &["log", "-1", "--format=%H %cs"])?;
        if let Some((commit, date)) = out.trim().split_once(' ') {
            return parse_snapshot(&format!("@ {commit} ({date})")).context("reading the checkout's commit date");
        }
    }
    Err(UsageError(format!(
        "cannot tell how old the advisory DB at {} is: add a SNAPSHOT file (`... @ <commit> (YYYY-MM-DD)`) or use a git checkout",
        source.display()
    ))
    .into())
}

use crate::date::today;

/// The internal step behind `deny --offline`: make the checkout and the derived config.
/// Turn a plain-files advisory-db snapshot into the dated git checkout cargo-deny reads.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrepareAdvisoryDb {
    pub source: PathBuf,
    pub checkout: PathBuf,
    pub config_in: PathBuf,
    pub config_out: PathBuf,
    pub max_age_days: u32,
}

impl Task for PrepareAdvisoryDb {
    fn summary(&self) -> String {
        format!("dated git checkout of {} at {}", self.source.display(), self.checkout.display())
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("prepare-advisory-db", self)
    }
    fn run(&self, log: &mut dyn Write) -> Result<()> {
        prepare_advisory_db(self, log)
    }
}

pub fn prepare_advisory_db(task: &PrepareAdvisoryDb, log: &mut dyn Write) -> Result<()> {
    let PrepareAdvisoryDb { source, checkout, config_in, config_out, max_age_days } = task;
    let snap = snapshot_of(source)?;
    let age = today() - snap.day;
    writeln!(
        log,
        "advisory-db snapshot {} dated {} is {age} days old (offline limit: {max_age_days} days)",
        &snap.commit[..snap.commit.len().min(12)],
        snap.date
    )?;
    if age > i64::from(*max_age_days) {
        bail!(
            "the advisory-db snapshot is {age} days old, over the {max_age_days}-day limit: refresh the snapshot or raise --max-db-age knowingly"
        );
    }

    let marker = checkout.with_extension("snapshot");
    let stamp = format!("{} {}", snap.commit, snap.date);
    let fresh = std::fs::read_to_string(&marker).is_ok_and(|m| m == stamp) && checkout.join(".git").is_dir();
    if !fresh {
        if checkout.exists() {
            std::fs::remove_dir_all(checkout).with_context(|| format!("removing {}", checkout.display()))?;
        }
        copy_tree(source, checkout)?;
        let git = GIT.require()?;
        let when = format!("{}T00:00:00Z", snap.date);
        for args in [
            vec!["init", "--quiet", "--initial-branch=main"],
            vec!["add", "--all"],
            vec![
                "-c",
                "user.name=xtask",
                "-c",
                "user.email=xtask@localhost",
                "commit",
                "--quiet",
                "--no-gpg-sign",
                "-m",
            ],
        ] {
            let mut cmd = Cmd::new(&git).arg("-C").arg(checkout).args(&args);
            if args.contains(&"commit") {
                cmd = cmd.arg(format!("advisory-db snapshot {} ({})", snap.commit, snap.date));
            }
            cmd.env("GIT_AUTHOR_DATE", &when).env("GIT_COMMITTER_DATE", &when).run()?;
        }
        std::fs::write(&marker, &stamp)?;
    }
    // cargo-deny dates a database by FETCH_HEAD's mtime when present: make it the snapshot's date.
    let fetch_head = checkout.join(".git/FETCH_HEAD");
    std::fs::write(&fetch_head, format!("{}\t\tbranch 'main' of {ADVISORY_DB_URL}\n", snap.commit))?;
    let taken = UNIX_EPOCH + Duration::from_secs(u64::try_from(snap.day.max(0))? * 86_400);
    std::fs::File::options().write(true).open(&fetch_head)?.set_modified(taken)?;

    write_offline_config(config_in, config_out, checkout, *max_age_days)?;
    writeln!(log, "checkout: {}\nconfig:   {}", checkout.display(), config_out.display())?;
    Ok(())
}

/// deny.toml with the advisory source pointed at our checkout and the staleness limit made explicit.
fn write_offline_config(config_in: &Path, config_out: &Path, checkout: &Path, max_age_days: u32) -> Result<()> {
    let text = std::fs::read_to_string(config_in).with_context(|| format!("reading {}", config_in.display()))?;
    let mut config: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", config_in.display()))?;
    let advisories = config
        .entry("advisories")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .context("[advisories] in deny.toml is not a table")?;
    let db_root = checkout.parent().context("checkout has a parent")?;
    advisories.insert("db-path".into(), db_root.display().to_string().into());
    advisories.insert("db-urls".into(), toml::Value::Array(vec![ADVISORY_DB_URL.into()]));
    advisories.insert("maximum-db-staleness".into(), format!("P{max_age_days}D").into());
    let header = format!(
        "# Generated by `cargo xtask deny --offline` from {}; do not edit.\n",
        config_in.file_name().and_then(|n| n.to_str()).unwrap_or("deny.toml")
    );
    std::fs::write(config_out, header + &toml::to_string(&config)?)?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// XXH64, which cargo-deny uses to name the checkout directory of each advisory-db URL.
pub fn xxh64(input: &[u8], seed: u64) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    const P4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P5: u64 = 0x27D4_EB2F_1656_67C5;
    let read64 = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let read32 = |b: &[u8]| u64::from(u32::from_le_bytes(b[..4].try_into().expect("4 bytes")));
    let round = |acc: u64, lane: u64| acc.wrapping_add(lane.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1);
    let merge = |acc: u64, v: u64| (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4);

    let mut rest = input;
    let mut h = if input.len() >= 32 {
        let mut v = [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
        while rest.len() >= 32 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, read64(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(input.len() as u64);
    while rest.len() >= 8 {
        h = (h ^ round(0, read64(rest))).rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h = (h ^ read32(rest).wrapping_mul(P1)).rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        h = (h ^ u64::from(byte).wrapping_mul(P5)).rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_matches_the_reference_vectors() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn snapshot_files_give_commit_and_date() {
        let s = parse_snapshot("source: github rustsec/advisory-db @ bf5c0d245a9 (2026-08-21)\n").expect("parses");
        assert_eq!(s.commit, "bf5c0d245a9");
        assert_eq!(s.date, "2026-08-21");
        assert_eq!(s.day, crate::date::days_from_civil(2026, 8, 21));
        assert!(parse_snapshot("no date here").is_none());
        assert!(parse_snapshot("x @ abc (2026-13-01)").is_none());
    }
}

#[cfg(test)]
mod default_tests {
    use clap::Parser;

    /// `ci` builds deny's arguments with `Default`; they must match what the CLI gives.
    #[test]
    fn programmatic_defaults_match_the_command_line() {
        let cli = crate::Cli::try_parse_from(["xtask", "deny"]).expect("parses");
        let crate::Command::Deny(parsed) = cli.command else { panic!("deny") };
        let default = super::Args::default();
        assert_eq!(parsed.max_db_age, default.max_db_age);
        assert_eq!((parsed.offline, parsed.online), (default.offline, default.online));
    }
}
