//! The built-in HTTP/1.1 client: a request is bytes encoded once per endpoint and written with
//! one syscall; a response is parsed in place (httparse) and its body skipped by its framing
//! (Content-Length, chunked, or until close) without being collected.
//!
//! It exists because a general client's per-request work (request and header-map values, a
//! channel between the caller and the connection task, body frames) costs several times the
//! user CPU of the exchange itself; see BENCHMARKS.md. `--client hyper` uses hyper instead.

use crate::stats::FailureKind;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Uri};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request line, headers and body of one endpoint, as sent.
pub fn encode(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(128 + body.len());
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.freeze()
}

// Small to start (responses under test are usually small); it doubles for a large head, and
// bodies are skipped through it whatever their size, so memory stays per connection, not per byte.
const READ_CHUNK: usize = 4 * 1024;
const MAX_HEAD: usize = 64 * 1024;

pub struct WireConnection {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// How the response body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl WireConnection {
    pub async fn connect(addr: SocketAddr) -> Result<WireConnection, FailureKind> {
        let stream = TcpStream::connect(addr).await.map_err(|_| FailureKind::Connect)?;
        stream.set_nodelay(true).map_err(|_| FailureKind::Connect)?;
        Ok(WireConnection { stream, buf: vec![0; READ_CHUNK], start: 0, end: 0 })
    }

    /// Reads more bytes into the buffer; end of stream is an error unless `eof_ok`.
    async fn fill(&mut self) -> Result<usize, FailureKind> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                return Err(FailureKind::Io);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await.map_err(|_| FailureKind::Io)?;
        self.end += n;
        Ok(n)
    }

    /// Sends the request and reads the whole response: (status, body bytes, connection reusable).
    pub async fn exchange(&mut self, request: &[u8], head_request: bool) -> Result<(u16, u64, bool), FailureKind> {
        self.stream.write_all(request).await.map_err(|_| FailureKind::Io)?;
        loop {
            let (status, framing, keep_alive, head_len) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 48];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(len)) => {
                        let status = response.code.ok_or(FailureKind::Io)?;
                        let (framing, keep_alive) = framing(&response, status, head_request)?;
                        break (status, framing, keep_alive, len);
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.fill().await? == 0 {
                            return Err(FailureKind::Io);
                        }
                    }
                    Err(_) => return Err(FailureKind::Io),
                }
            };
            self.start += head_len;
            // Interim responses (100 Continue and the like) precede the real one.
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let body = match framing {
                Framing::None => 0,
                Framing::Length(n) => self.skip(n).await?,
                Framing::Chunked => self.skip_chunked().await?,
                Framing::UntilClose => {
                    let mut total = (self.end - self.start) as u64;
                    self.start = self.end;
                    while self.fill().await? > 0 {
                        total += (self.end - self.start) as u64;
                        self.start = self.end;
                    }
                    return Ok((status, total, false));
                }
            };
            return Ok((status, body, keep_alive));
        }
    }

    async fn skip(&mut self, mut left: u64) -> Result<u64, FailureKind> {
        let total = left;
        loop {
            let here = ((self.end - self.start) as u64).min(left);
            self.start += here as usize;
            left -= here;
            if left == 0 {
                return Ok(total);
            }
            if self.fill().await? == 0 {
                return Err(FailureKind::Io);
            }
        }
    }

    /// A line (without CRLF) from the buffer, reading more as needed.
    async fn line(&mut self) -> Result<Vec<u8>, FailureKind> {
        loop {
            if let Some(pos) = self.buf[self.start..self.end].windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[self.start..self.start + pos].to_vec();
                self.start += pos + 2;
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err(FailureKind::Io);
            }
        }
    }

    async fn skip_chunked(&mut self) -> Result<u64, FailureKind> {
        let mut total = 0;
        loop {
            let line = self.line().await?;
            let digits = line.split(|b| *b == b';').next().unwrap_or_default();
            let text = std::str::from_utf8(digits).map_err(|_| FailureKind::Io)?;
            let size = u64::from_str_radix(text.trim(), 16).map_err(|_| FailureKind::Io)?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(total);
            }
            total += self.skip(size).await?;
            if !self.line().await?.is_empty() {
                return Err(FailureKind::Io);
            }
        }
    }
}

fn framing(
    response: &httparse::Response<'_, '_>,
    status: u16,
    head_request: bool,
) -> Result<(Framing, bool), FailureKind> {
    let http10 = response.version == Some(0);
    let mut keep_alive = !http10;
    let mut length = None;
    let mut chunked = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| FailureKind::Io)?;
            length = Some(text.trim().parse::<u64>().map_err(|_| FailureKind::Io)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|b| *b == b',')
                .next_back()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok((framing, keep_alive))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// A server that answers each request with the next canned response, split into pieces so
    /// the parser has to read more than once.
    async fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            for response in responses {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                for piece in response.chunks(7) {
                    stream.write_all(piece).await.expect("write");
                    stream.flush().await.expect("flush");
                    tokio::task::yield_now().await;
                }
            }
        });
        addr
    }

    #[test]
    fn requests_are_encoded_once_as_sent() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:8080".parse().expect("value"));
        headers.insert("content-length", "2".parse().expect("value"));
        let uri: Uri = "/v1/jobs?limit=5".parse().expect("uri");
        let wire = encode(&Method::POST, &uri, &headers, b"{}");
        assert_eq!(&wire[..], b"POST /v1/jobs?limit=5 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-length: 2\r\n\r\n{}");
    }

    #[test]
    fn responses_are_skipped_by_their_framing() {
        runtime().block_on(async {
            let addr = serve(vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 500 Oops\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbad",
            ])
            .await;
            let mut conn = WireConnection::connect(addr).await.expect("connect");
            assert_eq!(conn.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await, Ok((200, 5, true)));
            assert_eq!(conn.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await, Ok((201, 9, true)));
            assert_eq!(conn.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await, Ok((204, 0, true)));
            assert_eq!(conn.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await, Ok((500, 3, false)));
        });
    }

    #[test]
    fn http10_and_unframed_bodies_run_to_the_close() {
        runtime().block_on(async {
            let addr = serve(vec![b"HTTP/1.0 200 OK\r\nserver: old\r\n\r\nuntil the end"]).await;
            let mut conn = WireConnection::connect(addr).await.expect("connect");
            assert_eq!(conn.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await, Ok((200, 13, false)));
        });
    }

    #[test]
    fn truncated_or_garbled_responses_are_failures() {
        runtime().block_on(async {
            let addr = serve(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort"]).await;
            let mut conn = WireConnection::connect(addr).await.expect("connect");
            assert_eq!(conn.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await, Err(FailureKind::Io));
            let addr = serve(vec![b"SMTP ready\r\n\r\n"]).await;
            let mut conn = WireConnection::connect(addr).await.expect("connect");
            assert_eq!(conn.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await, Err(FailureKind::Io));
        });
    }
}
