//! Helpers for the services' integration tests, which run against real dependencies:
//!
//! - [`database_admin_url`] / [`redis_url`]: the Postgres and Redis `cargo xtask test` started
//!   (`TEST_DATABASE_URL`, `TEST_REDIS_URL`); [`fresh_database`] gives each test its own database.
//! - [`ServiceProcess`]: a service binary as a child process, killed when dropped.
//! - [`http`]: a small blocking HTTP/1.1 client (tests stay plain `#[test]`s).
//! - [`Link`]: a TCP forwarder that can be cut and restored, to take a dependency "down".

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HINT: &str = "run the tests through `cargo xtask test`, which starts Postgres and Redis and sets it";

/// The Postgres server for tests (a superuser URL, e.g. `postgres://postgres@127.0.0.1:5433/postgres`).
pub fn database_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| panic!("TEST_DATABASE_URL is not set: {HINT}"))
}

/// The Redis server for tests. Each call picks one of its 16 databases, so tests rarely share.
pub fn redis_url() -> String {
    let base = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| panic!("TEST_REDIS_URL is not set: {HINT}"));
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let db = (std::process::id() as usize + NEXT.fetch_add(1, Ordering::SeqCst)) % 16;
    format!("{}/{db}", base.trim_end_matches('/'))
}

/// Create an empty database for one test and return its URL.
pub fn fresh_database(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let admin = database_admin_url();
    let name = format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test Postgres");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut conn).await.expect("drop");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    });
    let (base, _) = admin.rsplit_once('/').expect("database URL ends with /dbname");
    format!("{base}/{name}")
}

/// Run a future to completion on a private runtime (for the few async calls tests make).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(future)
}

/// A free loopback port (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Another binary of the workspace, built next to the running test (e.g. the API for a worker
/// test). `cargo xtask test` builds every binary; a narrower run may need `cargo build -p NAME`.
pub fn workspace_binary(name: &str) -> String {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>: the binaries sit in target/<profile>.
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build -p {name}` or the whole `cargo xtask test`",
        path.display()
    );
    path.display().to_string()
}

/// A service binary running as a child process with its own log file.
pub struct ServiceProcess {
    pub name: String,
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl ServiceProcess {
    /// Start `binary` listening on 127.0.0.1 on a free port, with `env` on top of a clean slate.
    pub fn start(binary: &str, env: &[(&str, String)]) -> ServiceProcess {
        let port = free_port();
        let name = PathBuf::from(binary).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let log = std::env::temp_dir().join(format!("{name}-{port}-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        ServiceProcess { name, port, child, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Wait until `path` answers 200, or panic with the service's log.
    pub fn wait_until_ok(&mut self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status} before it was ready:\n{}", self.name, self.logs());
            }
            if http("GET", &self.url(path), &[], b"").is_ok_and(|r| r.status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not answer 200 on {path} within {timeout:?}:\n{}", self.name, self.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by name (`TERM`, `KILL`) with the system's `kill`.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {} failed", self.pid());
    }

    /// Wait for the process to exit and return its exit code (`None`: killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} still running {timeout:?} after it was asked to stop:\n{}", self.name, self.logs());
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("--- {} log ({}) ---\n{}", self.name, self.log.display(), self.logs());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// The status and headers of a GET sent the way a keep-alive client sends it (no
/// `Connection: close`), for checking what the server says about the connection.
pub fn get_head_keep_alive(url: &str) -> std::io::Result<Response> {
    let (_, status, headers) = send("GET", url, &[], b"", false)?;
    Ok(Response { status, headers, body: Vec::new() })
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), 30 s timeout.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
    let (mut reader, status, headers) = send(method, url, headers, body, true)?;
    let mut body = Vec::new();
    if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(std::io::Error::other)?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response { status, headers, body })
}

/// Sends one request on a new connection and reads the response head; the body is left unread.
fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> std::io::Result<(BufReader<TcpStream>, u16, HashMap<String, String>)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| std::io::Error::other("only http:// URLs"))?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let addr: SocketAddr = authority.parse().map_err(std::io::Error::other)?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n");
    if close {
        request.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok((reader, status, headers))
}

/// A TCP forwarder in front of a real server; [`Link::cut`] drops every connection and refuses
/// new ones until [`Link::restore`], which is how tests take Postgres "down" for one service.
pub struct Link {
    pub port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Link {
    pub fn to(target: SocketAddr) -> Link {
        Link::on([127, 0, 0, 1].into(), target)
    }

    /// A link listening on another local address, e.g. the Docker bridge's gateway so that a
    /// container can reach a loopback-only test server through it.
    pub fn on(bind: std::net::IpAddr, target: SocketAddr) -> Link {
        let listener = TcpListener::bind((bind, 0)).unwrap_or_else(|e| panic!("bind a link on {bind}: {e}"));
        let port = listener.local_addr().expect("addr").port();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, o) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(NetShutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else { continue };
                for s in [&client, &server] {
                    if let Ok(clone) = s.try_clone() {
                        o.lock().expect("lock").push(clone);
                    }
                }
                for (mut from, mut to) in
                    [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(NetShutdown::Both);
                    });
                }
            }
        });
        Link { port, down, open }
    }

    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(NetShutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// Poll `check` until it returns `Some`, or panic after `timeout` with `what`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
