//! Real Postgres and Redis for `cargo xtask test`: started natively from Debian's packages on
//! free loopback ports before the tests, stopped after them (even when tests fail).
//!
//! Postgres refuses to run as root, so under root its commands run as the `postgres` user
//! (`runuser`), with the data directory under the system temp dir where that user can reach it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::plan::{Internal, Plan, Step};
use crate::runner::clean_command;
use crate::tools::{POSTGRES, REDIS};

/// Where one checkout's test servers keep their data: per checkout, so two clones don't collide.
pub fn state_dir(root: &Path) -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root.display().to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    std::env::temp_dir().join(format!("xtask-test-deps-{h:012x}"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wrap the test step between starting and stopping the servers, and pass their URLs to it.
pub fn wrap(plan: &mut Plan, root: &Path) -> Result<()> {
    let dir = state_dir(root);
    let (pg_port, redis_port) = (free_port()?, free_port()?);
    let database_url = format!("postgres://postgres@127.0.0.1:{pg_port}/postgres");
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let up = Step::internal(
        "test:deps-up",
        "start Postgres and Redis on loopback for the tests",
        Internal::StartTestDeps { dir: dir.clone(), pg_port, redis_port },
        "cargo xtask test",
    )
    .requiring(&POSTGRES)
    .requiring(&REDIS);
    let down = Step::internal(
        "test:deps-down",
        "stop the test Postgres and Redis",
        Internal::StopTestDeps { dir },
        "cargo xtask test",
    )
    .always();
    for step in plan.steps.iter_mut().filter(|s| s.name == "test") {
        *step = step.clone().with_env("TEST_DATABASE_URL", &database_url).with_env("TEST_REDIS_URL", &redis_url);
    }
    plan.steps.insert(0, up);
    plan.steps.push(down);
    plan.notes.push(format!("tests get a real Postgres ({database_url}) and Redis ({redis_url})"));
    Ok(())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Run a Postgres program, as the `postgres` user when we are root.
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut cmd = clean_command("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        clean_command(program)
    }
}

fn run(mut cmd: Command, what: &str, log: &mut dyn Write) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    log.write_all(&out.stdout)?;
    log.write_all(&out.stderr)?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub fn start(dir: &Path, pg_port: u16, redis_port: u16, log: &mut dyn Write) -> Result<()> {
    // A previous run that was killed may have left servers behind: stop them first.
    stop(dir, &mut std::io::sink()).ok();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pg_ctl = POSTGRES.require()?;
    let bin = pg_ctl.parent().context("pg_ctl has a directory")?;
    let data = dir.join("pg");
    std::fs::create_dir_all(&data)?;
    if is_root() {
        run(
            {
                let mut c = clean_command("chown");
                c.args(["-R", "postgres:"]).arg(dir);
                c
            },
            "chown to postgres",
            log,
        )?;
    }
    let mut initdb = pg_command(&bin.join("initdb"));
    initdb.args(["-D"]).arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    run(initdb, "initdb", log)?;
    let options = format!(
        "-p {pg_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
        dir.display()
    );
    let mut start = pg_command(&pg_ctl);
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .args(["-o", &options, "-w", "-t", "60", "start"]);
    run(start, "pg_ctl start", log)?;
    writeln!(log, "postgres listening on 127.0.0.1:{pg_port}")?;

    let redis = REDIS.require()?;
    let mut redis_cmd = clean_command(redis);
    redis_cmd
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "yes", "--pidfile"])
        .arg(dir.join("redis.pid"))
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .arg("--dir")
        .arg(dir);
    run(redis_cmd, "redis-server", log)?;
    wait_for_redis(SocketAddr::from(([127, 0, 0, 1], redis_port)), Duration::from_secs(20))?;
    writeln!(log, "redis listening on 127.0.0.1:{redis_port}")?;
    Ok(())
}

fn wait_for_redis(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let pong = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(buf == *b"+PONG\r\n")
        });
        if pong.is_ok_and(|ok| ok) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("redis on {addr} did not answer PING within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stop(dir: &Path, log: &mut dyn Write) -> Result<()> {
    let data = dir.join("pg");
    let mut problems = Vec::new();
    if data.join("postmaster.pid").exists() {
        match POSTGRES.require() {
            Ok(pg_ctl) => {
                let mut stop = pg_command(&pg_ctl);
                stop.arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]);
                if let Err(e) = run(stop, "pg_ctl stop", log) {
                    problems.push(format!("{e:#}"));
                }
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if let Ok(pid) = std::fs::read_to_string(dir.join("redis.pid")) {
        let pid = pid.trim().to_string();
        let _ = clean_command("kill").arg(&pid).status();
        writeln!(log, "stopped redis (pid {pid})")?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}
