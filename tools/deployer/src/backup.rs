//! Backups of a Docker-target environment's Postgres: `pg_dump -Fc` run inside the project's
//! `postgres` container (`docker exec`, so it works against a remote `DOCKER_HOST` too), streamed
//! to a file on the deploying machine with its SHA-256 beside it; `pg_restore --clean` back from
//! one after checking that checksum.
//!
//! Where and how many (the environment file, `infra/compose/env/ENV.env`):
//! - `DEPLOY_BACKUP=before-deploy`: every deploy of the environment takes one first (prod);
//! - `DEPLOY_BACKUP_DIR` (default `target/xtask/deploy/ENV/backups`, relative to the checkout);
//! - `DEPLOY_BACKUP_KEEP` (default 7): the newest kept, older ones deleted after each backup.
//!
//! A backup is `ID.dump` and `ID.json` (what, when, size, sha256, why); the ID is its UTC time,
//! `20261204T231500Z`, so names sort by age.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xtask_kit::UsageError;
use xtask_kit::process::Cmd;

use crate::env::DockerEnv;

/// What a backup file holds, written beside it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Meta {
    pub id: String,
    pub env: String,
    pub database: String,
    pub created: String,
    pub bytes: u64,
    pub sha256: String,
    /// Why it was taken: `before release 7`, `by hand`.
    pub why: String,
}

/// An environment's backups: where they live and how many are kept.
pub struct Store {
    pub dir: PathBuf,
    pub keep: usize,
}

impl Store {
    pub fn of(env: &DockerEnv, root: &Path, target_dir: &Path) -> Result<Store> {
        let dir = match env.vars.get("DEPLOY_BACKUP_DIR") {
            Some(d) => root.join(d),
            None => target_dir.join("xtask/deploy").join(&env.name).join("backups"),
        };
        let keep = match env.vars.get("DEPLOY_BACKUP_KEEP") {
            None => 7,
            Some(n) => n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                UsageError(format!("{}: DEPLOY_BACKUP_KEEP={n}: give a number of 1 or more", env.file.display()))
            })?,
        };
        Ok(Store { dir, keep })
    }

    /// Every backup, newest first.
    pub fn list(&self) -> Result<Vec<Meta>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(Vec::new()) };
        let mut all = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let meta: Meta =
                serde_json::from_str(&text).with_context(|| format!("{} is not a backup record", path.display()))?;
            all.push(meta);
        }
        all.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(all)
    }

    fn dump(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.dump"))
    }
}

/// Does the environment back up before each deploy?
pub fn before_deploy(env: &DockerEnv) -> Result<bool> {
    match env.vars.get("DEPLOY_BACKUP").map(String::as_str) {
        None | Some("" | "off") => Ok(false),
        Some("before-deploy") => Ok(true),
        Some(other) => {
            Err(UsageError(format!("{}: DEPLOY_BACKUP={other}: use `before-deploy` or `off`", env.file.display()))
                .into())
        }
    }
}

fn container(env: &DockerEnv) -> String {
    format!("{}-postgres", env.project)
}

/// (user, database) as the postgres container was started with.
fn credentials(env: &DockerEnv) -> (String, String) {
    let user = env.vars.get("POSTGRES_USER").cloned().unwrap_or_else(|| "postgres".into());
    let db = env.vars.get("POSTGRES_DB").cloned().unwrap_or_else(|| user.clone());
    (user, db)
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((bytes, format!("{:x}", hasher.finalize())))
}

/// The UTC time as a backup ID and as RFC 3339.
fn now() -> (String, String) {
    let rfc = xtask_kit::date::now_rfc3339();
    (rfc.replace(['-', ':'], ""), rfc)
}

/// Take a backup now; prune to `keep`. Nothing is left behind when the dump fails.
pub fn take(env: &DockerEnv, store: &Store, why: &str) -> Result<Meta> {
    std::fs::create_dir_all(&store.dir).with_context(|| format!("creating {}", store.dir.display()))?;
    let (mut id, created) = now();
    while store.dump(&id).exists() {
        // Two backups in one second: the second waits for its own name.
        std::thread::sleep(std::time::Duration::from_millis(200));
        (id, _) = now();
    }
    let (user, db) = credentials(env);
    let partial = store.dir.join(format!("{id}.dump.partial"));
    let out = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let cmd = Cmd::new("docker").args(["exec", &container(env), "pg_dump", "-U", &user, "-d", &db, "-Fc"]);
    eprintln!("$ {} > {}", cmd.line(), store.dump(&id).display());
    let result = cmd.to_command().stdout(out).stderr(Stdio::piped()).output();
    let failed = match result {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Some(format!("cannot run docker: {e}")),
    };
    if let Some(why) = failed {
        let _ = std::fs::remove_file(&partial);
        bail!("backup of {} ({db} in {}) failed: {why}", env.name, container(env));
    }
    let (bytes, sha256) = sha256_file(&partial)?;
    std::fs::rename(&partial, store.dump(&id))?;
    let meta = Meta { id: id.clone(), env: env.name.clone(), database: db, created, bytes, sha256, why: why.into() };
    let record = store.dir.join(format!("{id}.json"));
    let tmp = store.dir.join(format!("{id}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&meta)?)?;
    std::fs::rename(&tmp, &record)?;
    eprintln!("backup {id} of {}: {} bytes, sha256 {}", env.name, bytes, &meta.sha256[..12]);
    for old in store.list()?.iter().skip(store.keep) {
        for ext in ["dump", "json"] {
            let _ = std::fs::remove_file(store.dir.join(format!("{}.{ext}", old.id)));
        }
        eprintln!("backup {} removed (DEPLOY_BACKUP_KEEP={})", old.id, store.keep);
    }
    Ok(meta)
}

/// What `backup` or `restore` would do, for `--dry-run` (human on stderr, or JSON on stdout).
pub fn dry_run(env: &DockerEnv, store: &Store, action: &str, backup: Option<&str>, json: bool) -> Result<ExitCode> {
    let (user, db) = credentials(env);
    let plan = serde_json::json!({
        "action": action, "env": env.name, "container": container(env), "user": user, "database": db,
        "dir": store.dir, "keep": store.keep, "backup": backup,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        let what = match backup {
            Some(id) => format!("restore {db} in {} from {}", container(env), store.dump(id).display()),
            None => format!("pg_dump {db} in {} to {} (keeping {})", container(env), store.dir.display(), store.keep),
        };
        eprintln!("dry run: would {what}; nothing was changed");
    }
    Ok(ExitCode::SUCCESS)
}

/// `deploy backup`: one now.
pub fn backup(env: &DockerEnv, store: &Store, json: bool) -> Result<ExitCode> {
    let meta = take(env, store, "by hand")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&meta)?);
    } else {
        println!("{}", meta.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `deploy backups`: newest first.
pub fn list(env: &DockerEnv, store: &Store, json: bool) -> Result<ExitCode> {
    let all = store.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("{} has no backups in {}", env.name, store.dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<18} {:<22} {:>12}  {:<14} why", "backup", "created", "bytes", "sha256");
    for m in &all {
        println!("{:<18} {:<22} {:>12}  {:<14} {}", m.id, m.created, m.bytes, &m.sha256[..12], m.why);
    }
    Ok(ExitCode::SUCCESS)
}

/// `deploy restore --backup ID`: the checksum first, then the confirmation (prod), then
/// `pg_restore --clean --if-exists` from the dump on stdin.
pub fn restore(env: &DockerEnv, store: &Store, id: &str, confirmed: &dyn Fn() -> Result<()>) -> Result<ExitCode> {
    let all = store.list()?;
    let Some(meta) = all.iter().find(|m| m.id == id) else {
        let known: Vec<&str> = all.iter().map(|m| m.id.as_str()).collect();
        return Err(UsageError(format!(
            "{} has no backup {id} (it keeps: {}); nothing was restored",
            env.name,
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ))
        .into());
    };
    let dump = store.dump(id);
    let (bytes, sha256) = sha256_file(&dump)?;
    if sha256 != meta.sha256 || bytes != meta.bytes {
        return Err(UsageError(format!(
            "{}: sha256 {sha256} ({bytes} bytes) is not the {} ({} bytes) recorded when it was taken; the file changed, nothing was restored",
            dump.display(),
            meta.sha256,
            meta.bytes
        ))
        .into());
    }
    confirmed()?;
    let (user, db) = credentials(env);
    let cmd = Cmd::new("docker").args([
        "exec",
        "-i",
        &container(env),
        "pg_restore",
        "-U",
        &user,
        "-d",
        &db,
        "--clean",
        "--if-exists",
        "--single-transaction",
        "--no-owner",
    ]);
    eprintln!("$ {} < {}", cmd.line(), dump.display());
    let mut child = cmd.to_command().stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().context("running docker")?;
    {
        let mut stdin = child.stdin.take().context("pg_restore's stdin")?;
        let mut file = std::fs::File::open(&dump)?;
        std::io::copy(&mut file, &mut stdin).context("sending the dump to pg_restore")?;
        stdin.flush()?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "pg_restore of {id} into {} failed (one transaction: nothing was changed): {}",
            env.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    eprintln!("restored {} from backup {id} (taken {}, {})", env.name, meta.created, meta.why);
    Ok(ExitCode::SUCCESS)
}
