//! Real Postgres and Redis for `cargo xtask test`: started natively from Debian's packages on
//! free loopback ports before the tests, stopped after them (even when tests fail).
//!
//! Postgres refuses to run as root, so under root its commands run as the `postgres` user
//! (`runuser`), with the data directory under the system temp dir where that user can reach it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::plan::{Step, Task};
use crate::process::Cmd;
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

/// The test servers of one run: where they keep their data and the loopback ports they take.
#[derive(Clone, Debug)]
pub struct TestServers {
    dir: PathBuf,
    pg_port: u16,
    redis_port: u16,
}

impl TestServers {
    /// Two free loopback ports for this checkout's servers (a fact gathered before planning).
    pub fn on_free_ports(root: &Path) -> Result<TestServers> {
        Ok(TestServers { dir: state_dir(root), pg_port: free_port()?, redis_port: free_port()? })
    }

    fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// What the tests read to find the servers (test-support).
    pub fn env(&self) -> [(String, String); 2] {
        [("TEST_DATABASE_URL".into(), self.database_url()), ("TEST_REDIS_URL".into(), self.redis_url())]
    }

    pub fn note(&self) -> String {
        format!("tests get a real Postgres ({}) and Redis ({})", self.database_url(), self.redis_url())
    }

    /// Start both before the tests.
    pub fn up_step(&self) -> Step {
        Step::internal(
            "test:deps-up",
            "start Postgres and Redis on loopback for the tests",
            StartTestDeps { dir: self.dir.clone(), pg_port: self.pg_port, redis_port: self.redis_port },
            "cargo xtask test",
        )
        .requiring(&POSTGRES)
        .requiring(&REDIS)
    }

    /// Stop them after the tests, whether the tests passed or not.
    pub fn down_step(&self) -> Step {
        Step::internal(
            "test:deps-down",
            "stop the test Postgres and Redis",
            StopTestDeps { dir: self.dir.clone() },
            "cargo xtask test",
        )
        .always()
    }
}

/// Start Postgres and Redis for the tests on these loopback ports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StartTestDeps {
    pub dir: PathBuf,
    pub pg_port: u16,
    pub redis_port: u16,
}

impl Task for StartTestDeps {
    fn summary(&self) -> String {
        format!(
            "start postgres on 127.0.0.1:{} and redis on 127.0.0.1:{} (data in {})",
            self.pg_port,
            self.redis_port,
            self.dir.display()
        )
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("start-test-deps", self)
    }
    fn run(&self, log: &mut dyn Write) -> Result<()> {
        start(&self.dir, self.pg_port, self.redis_port, log)
    }
}

/// Stop them again and remove their data.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StopTestDeps {
    pub dir: PathBuf,
}

impl Task for StopTestDeps {
    fn summary(&self) -> String {
        format!("stop the test postgres and redis, remove {}", self.dir.display())
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("stop-test-deps", self)
    }
    fn run(&self, log: &mut dyn Write) -> Result<()> {
        stop(&self.dir, log)
    }
}

fn is_root() -> bool {
    Cmd::new("id").arg("-u").read().is_ok_and(|uid| uid.trim() == "0")
}

/// Run a Postgres program, as the `postgres` user when we are root.
fn pg_command(program: &Path) -> Cmd {
    if is_root() { Cmd::new("runuser").args(["-u", "postgres", "--"]).arg(program) } else { Cmd::new(program) }
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
        Cmd::new("chown").args(["-R", "postgres:"]).arg(dir).run_logged(log)?;
    }
    pg_command(&bin.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .run_logged(log)?;
    let options = format!(
        "-p {pg_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
        dir.display()
    );
    pg_command(&pg_ctl)
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .args(["-o", &options, "-w", "-t", "60", "start"])
        .run_logged(log)?;
    writeln!(log, "postgres listening on 127.0.0.1:{pg_port}")?;

    let redis = REDIS.require()?;
    Cmd::new(redis)
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "yes", "--pidfile"])
        .arg(dir.join("redis.pid"))
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .arg("--dir")
        .arg(dir)
        .run_logged(log)?;
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
                let stop = pg_command(&pg_ctl).arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]);
                if let Err(e) = stop.run_logged(log) {
                    problems.push(format!("{e:#}"));
                }
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if let Ok(pid) = std::fs::read_to_string(dir.join("redis.pid")) {
        let pid = pid.trim().to_string();
        let _ = Cmd::new("kill").arg(&pid).output();
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
