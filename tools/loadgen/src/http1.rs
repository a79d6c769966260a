//! The built-in HTTP/1.1 client: a request is bytes encoded once per endpoint and written with
//! one syscall; a response is parsed in place (httparse) and its body skipped by its framing
//! (Content-Length, chunked, or until close) without being collected (`http1-wire`, shared
//! with the gateway).
//!
//! It exists because a general client's per-request work (request and header-map values, a
//! channel between the caller and the connection task, body frames) costs several times the
//! user CPU of the exchange itself; see BENCHMARKS.md. `--client hyper` uses hyper instead.

use crate::stats::FailureKind;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Uri};
use http1_wire::{Framing, MessageHeaders, Sink, Wire, WireError};
use std::net::SocketAddr;
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

pub struct WireConnection {
    wire: Wire<TcpStream>,
}

impl WireConnection {
    pub async fn connect(addr: SocketAddr) -> Result<WireConnection, FailureKind> {
        let stream = TcpStream::connect(addr).await.map_err(|_| FailureKind::Connect)?;
        stream.set_nodelay(true).map_err(|_| FailureKind::Connect)?;
        Ok(WireConnection { wire: Wire::new(stream) })
    }

    /// Sends the request and reads the whole response: (status, body bytes, connection reusable).
    pub async fn exchange(&mut self, request: &[u8], head_request: bool) -> Result<(u16, u64, bool), FailureKind> {
        self.wire.write_all(request).await.map_err(|_| FailureKind::Io)?;
        loop {
            let head = self
                .wire
                .read_head(|buf| {
                    let mut headers = [httparse::EMPTY_HEADER; 48];
                    let mut response = httparse::Response::new(&mut headers);
                    match response.parse(buf) {
                        Ok(httparse::Status::Complete(len)) => {
                            let status = response.code.ok_or(WireError::Malformed("no status"))?;
                            // Interim responses (100 Continue and the like) precede the real one.
                            if (100..200).contains(&status) && status != 101 {
                                return Ok(Some((len, None)));
                            }
                            let seen = MessageHeaders::scan(response.headers)?;
                            let framing = seen.response_framing(status, head_request);
                            let keep_alive =
                                seen.persistent(response.version.unwrap_or(1)) && framing != Framing::UntilClose;
                            Ok(Some((len, Some((status, framing, keep_alive)))))
                        }
                        Ok(httparse::Status::Partial) => Ok(None),
                        Err(_) => Err(WireError::Malformed("not an HTTP/1.x response")),
                    }
                })
                .await
                .map_err(|_| FailureKind::Io)?;
            let Some((status, framing, keep_alive)) = head else { continue };
            let body = self.wire.body::<TcpStream>(framing, Sink::Discard).await.map_err(|_| FailureKind::Io)?;
            return Ok((status, body, keep_alive));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
