//! `<service> healthcheck`: GET the service's own health endpoint on localhost and exit 0 or 1.
//!
//! Images are `FROM scratch` with one static binary: there is no shell or curl for a Docker
//! HEALTHCHECK, so the binary checks itself. Plain blocking std I/O, no runtime needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::{Env, ServiceInfo};

const TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(info: &ServiceInfo, env: &Env) -> ExitCode {
    let port = match env.port_or("PORT", info.port) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match probe(SocketAddr::from(([127, 0, 0, 1], port)), info.health_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("healthcheck: {} on 127.0.0.1:{port}{}: {e}", info.name, info.health_path);
            ExitCode::FAILURE
        }
    }
}

/// One HTTP/1.1 GET; healthy means status 200.
pub fn probe(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("cannot connect: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nUser-Agent: healthcheck\r\n\r\n")
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| format!("no answer: {e}"))?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if code == "200" { Ok(()) } else { Err(format!("status {}", if code.is_empty() { "missing" } else { code })) }
}
