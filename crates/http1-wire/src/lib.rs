//! HTTP/1.1 message framing over a buffered byte stream (RFC 9112): a head is parsed in place
//! from the stream's buffer, then its body is forwarded, collected or skipped by its framing
//! (Content-Length, chunked, or until the connection closes).
//!
//! It is the shared wire layer of the two programs whose hot path is one HTTP/1.1 exchange:
//! the gateway (which relays bodies between two connections) and the load generator (which
//! skips them). A general HTTP library builds request, header-map and body-frame values per
//! message; here a message costs a parse over bytes already read and one write.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read per `read` call to start with; the buffer doubles only for a head that does not
/// fit, so memory stays per connection, not per byte relayed.
const READ_CHUNK: usize = 4 * 1024;
/// Largest head (request or status line plus headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size or trailer line, CRLF included.
const MAX_LINE: usize = 4096;

#[derive(Debug)]
pub enum WireError {
    /// The peer closed the connection in the middle of a message.
    Eof,
    Io(io::Error),
    /// Not HTTP/1.x, or framing that cannot be trusted (what, for the log).
    Malformed(&'static str),
    /// A head larger than [`MAX_HEAD`].
    HeadTooLarge,
    /// A collected body larger than its limit.
    BodyTooLarge,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Eof => f.write_str("connection closed mid-message"),
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Malformed(what) => write!(f, "malformed message: {what}"),
            WireError::HeadTooLarge => write!(f, "message head over {MAX_HEAD} bytes"),
            WireError::BodyTooLarge => f.write_str("body over its limit"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        WireError::Io(e)
    }
}

/// How a message's body is delimited (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What a message's headers say about its framing and its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageHeaders {
    pub content_length: Option<u64>,
    /// A Transfer-Encoding header is present.
    pub transfer_encoding: bool,
    /// ... and its last coding is `chunked`.
    pub chunked: bool,
    pub close: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl MessageHeaders {
    pub fn scan(headers: &[httparse::Header<'_>]) -> Result<MessageHeaders, WireError> {
        let mut seen = MessageHeaders::default();
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let digits = h.value.trim_ascii();
                let length = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.len() <= 19 && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<u64>().ok())
                    .ok_or(WireError::Malformed("content-length is not a number"))?;
                if seen.content_length.is_some_and(|l| l != length) {
                    return Err(WireError::Malformed("conflicting content-length headers"));
                }
                seen.content_length = Some(length);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                seen.transfer_encoding = true;
                seen.chunked = h
                    .value
                    .split(|b| *b == b',')
                    .next_back()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        seen.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        seen.keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case(b"expect") {
                seen.expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
        }
        Ok(seen)
    }

    /// Does the connection stay open after this message (`version` is httparse's minor version)?
    pub fn persistent(&self, version: u8) -> bool {
        !self.close && (version >= 1 || self.keep_alive)
    }

    /// A request's body framing. Both Content-Length and Transfer-Encoding, or a coding other
    /// than chunked, is refused: a proxy that guessed could be made to see two requests where
    /// the next hop sees one (request smuggling).
    pub fn request_framing(&self, version: u8) -> Result<Framing, WireError> {
        if self.transfer_encoding && version == 0 {
            return Err(WireError::Malformed("transfer-encoding in an HTTP/1.0 request"));
        }
        match (self.transfer_encoding, self.content_length) {
            (true, Some(_)) => Err(WireError::Malformed("both content-length and transfer-encoding")),
            (true, None) if self.chunked => Ok(Framing::Chunked),
            (true, None) => Err(WireError::Malformed("transfer-encoding other than chunked")),
            (false, Some(0) | None) => Ok(Framing::None),
            (false, Some(n)) => Ok(Framing::Length(n)),
        }
    }

    /// A response's body framing, given its status and whether it answers a HEAD request.
    pub fn response_framing(&self, status: u16, head_request: bool) -> Framing {
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::None
        } else if self.chunked {
            Framing::Chunked
        } else if self.transfer_encoding {
            Framing::UntilClose
        } else if let Some(n) = self.content_length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        }
    }
}

/// Where a body goes.
pub enum Sink<'a, W> {
    /// Read and dropped.
    Discard,
    /// Kept, decoded, up to `limit` bytes (more is [`WireError::BodyTooLarge`]).
    Collect { body: &'a mut Vec<u8>, limit: usize },
    /// Written to `to`. Output is staged in `staged` (which may already hold a head, so a small
    /// message goes out in one write), written before every read and at the end. A chunked
    /// body keeps its encoding when `keep_chunked`, else only its data is written.
    Forward { to: &'a mut W, staged: &'a mut Vec<u8>, keep_chunked: bool },
}

impl<W: AsyncWrite + Unpin> Sink<'_, W> {
    /// `framing` marks chunk-size lines, CRLFs and trailers, as opposed to body data.
    fn put(&mut self, bytes: &[u8], framing: bool) -> Result<(), WireError> {
        match self {
            Sink::Discard => {}
            Sink::Collect { body, limit } => {
                if !framing {
                    if body.len() + bytes.len() > *limit {
                        return Err(WireError::BodyTooLarge);
                    }
                    body.extend_from_slice(bytes);
                }
            }
            Sink::Forward { staged, keep_chunked, .. } => {
                if !framing || *keep_chunked {
                    staged.extend_from_slice(bytes);
                }
            }
        }
        Ok(())
    }

    /// Write what is staged; called before every read, so a body is relayed as it arrives.
    async fn flush(&mut self, limit: Option<std::time::Duration>) -> Result<(), WireError> {
        if let Sink::Forward { to, staged, .. } = self
            && !staged.is_empty()
        {
            within(limit, to.write_all(staged)).await?;
            staged.clear();
        }
        Ok(())
    }
}

/// A stream and the bytes read from it but not yet consumed.
pub struct Wire<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Longest wait for the next bytes of a body, or for a write, before giving up.
    io_timeout: Option<std::time::Duration>,
}

fn timed_out() -> WireError {
    WireError::Io(io::Error::new(io::ErrorKind::TimedOut, "no progress within the I/O timeout"))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(stream: S) -> Wire<S> {
        Wire { stream, buf: vec![0; READ_CHUNK], start: 0, end: 0, io_timeout: None }
    }

    /// Bound every wait for body bytes and every write (a peer that stops reading or sending
    /// mid-message must not hold the connection forever). Heads are bounded by the caller.
    pub fn with_io_timeout(mut self, timeout: std::time::Duration) -> Wire<S> {
        self.io_timeout = Some(timeout);
        self
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Read more into the buffer; `Ok(0)` at end of stream.
    pub async fn fill(&mut self) -> Result<usize, WireError> {
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
                return Err(WireError::HeadTooLarge);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// [`Wire::fill`] within the I/O timeout, for body bytes.
    async fn fill_body(&mut self) -> Result<usize, WireError> {
        match self.io_timeout {
            Some(limit) => tokio::time::timeout(limit, self.fill()).await.map_err(|_| timed_out())?,
            None => self.fill().await,
        }
    }

    /// Parse a head from the buffer, reading more until `parse` finds a whole one. `parse`
    /// returns the head's length and what it took from it (it cannot keep borrowing the
    /// buffer); the head is then consumed. End of stream before a whole head is `Eof`.
    pub async fn read_head<T>(
        &mut self,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(usize, T)>, WireError>,
    ) -> Result<T, WireError> {
        loop {
            if let Some(taken) = self.try_head(&mut parse)? {
                return Ok(taken);
            }
            if self.end - self.start >= MAX_HEAD {
                return Err(WireError::HeadTooLarge);
            }
            if self.fill().await? == 0 {
                return Err(WireError::Eof);
            }
        }
    }

    /// [`Wire::read_head`] over what is buffered only: `None` when no whole head is there yet.
    pub fn try_head<T>(
        &mut self,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(usize, T)>, WireError>,
    ) -> Result<Option<T>, WireError> {
        if self.start == self.end {
            return Ok(None);
        }
        let Some((len, taken)) = parse(&self.buf[self.start..self.end])? else { return Ok(None) };
        self.start += len;
        Ok(Some(taken))
    }

    /// Move the body that follows a head into `sink`; returns the body's length (data bytes).
    pub async fn body<W: AsyncWrite + Unpin>(
        &mut self,
        framing: Framing,
        mut sink: Sink<'_, W>,
    ) -> Result<u64, WireError> {
        let total = match framing {
            Framing::None => 0,
            Framing::Length(n) => {
                if let Sink::Collect { limit, .. } = sink
                    && n > limit as u64
                {
                    return Err(WireError::BodyTooLarge);
                }
                self.exactly(n, &mut sink).await?
            }
            Framing::Chunked => self.chunked(&mut sink).await?,
            Framing::UntilClose => {
                let mut total = 0;
                loop {
                    let here = self.end - self.start;
                    sink.put(&self.buf[self.start..self.end], false)?;
                    self.start = self.end;
                    total += here as u64;
                    sink.flush(self.io_timeout).await?;
                    if self.fill_body().await? == 0 {
                        break total;
                    }
                }
            }
        };
        sink.flush(self.io_timeout).await?;
        Ok(total)
    }

    async fn exactly<W: AsyncWrite + Unpin>(
        &mut self,
        mut left: u64,
        sink: &mut Sink<'_, W>,
    ) -> Result<u64, WireError> {
        let total = left;
        loop {
            let here = ((self.end - self.start) as u64).min(left) as usize;
            sink.put(&self.buf[self.start..self.start + here], false)?;
            self.start += here;
            left -= here as u64;
            if left == 0 {
                return Ok(total);
            }
            sink.flush(self.io_timeout).await?;
            if self.fill_body().await? == 0 {
                return Err(WireError::Eof);
            }
        }
    }

    /// The next line's length without its CRLF, reading more as needed (lines are short:
    /// chunk sizes and trailers).
    /// One chunk-size or trailer line (without its CRLF): its length.
    async fn line<W: AsyncWrite + Unpin>(&mut self, sink: &mut Sink<'_, W>) -> Result<usize, WireError> {
        loop {
            // A line and its CRLF fit in MAX_LINE bytes, judged the same however the bytes arrive
            // (a CRLF found further on, in a buffer a long head grew, is still too long).
            if let Some(pos) = self.buf[self.start..self.end].windows(2).position(|w| w == b"\r\n") {
                if pos + 2 > MAX_LINE {
                    return Err(WireError::Malformed("chunk line too long"));
                }
                return Ok(pos);
            }
            if self.end - self.start >= MAX_LINE {
                return Err(WireError::Malformed("chunk line too long"));
            }
            sink.flush(self.io_timeout).await?;
            if self.fill_body().await? == 0 {
                return Err(WireError::Eof);
            }
        }
    }

    async fn chunked<W: AsyncWrite + Unpin>(&mut self, sink: &mut Sink<'_, W>) -> Result<u64, WireError> {
        let mut total = 0;
        loop {
            let len = self.line(sink).await?;
            let line = &self.buf[self.start..self.start + len];
            if line.contains(&b'\n') {
                return Err(WireError::Malformed("bare LF in a chunk line"));
            }
            let digits = line.split(|b| *b == b';').next().unwrap_or_default().trim_ascii_end();
            let size = std::str::from_utf8(digits)
                .ok()
                .filter(|d| !d.is_empty() && d.len() <= 15 && d.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|d| u64::from_str_radix(d, 16).ok())
                .ok_or(WireError::Malformed("bad chunk size"))?;
            sink.put(&self.buf[self.start..self.start + len + 2], true)?;
            self.start += len + 2;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let len = self.line(sink).await?;
                    sink.put(&self.buf[self.start..self.start + len + 2], true)?;
                    self.start += len + 2;
                    if len == 0 {
                        return Ok(total);
                    }
                }
            }
            total += self.exactly(size, sink).await?;
            if self.line(sink).await? != 0 {
                return Err(WireError::Malformed("chunk longer than its size"));
            }
            sink.put(b"\r\n", true)?;
            self.start += 2;
        }
    }

    /// Write within the I/O timeout.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        within(self.io_timeout, self.stream.write_all(bytes)).await
    }
}

/// An I/O future within an optional limit.
async fn within(limit: Option<std::time::Duration>, io: impl Future<Output = io::Result<()>>) -> Result<(), WireError> {
    let Some(limit) = limit else { return io.await.map_err(WireError::Io) };
    let mut io = std::pin::pin!(io);
    // Most writes finish at once; only one that has to wait pays for a timer (and a clock read).
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(io.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(done) => done.map_err(WireError::Io),
        std::task::Poll::Pending => {
            tokio::time::timeout(limit, io).await.map_err(|_| timed_out())?.map_err(WireError::Io)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// A wire reading `input` in 7-byte pieces, so every parse has to read more than once.
    fn wire(input: &'static [u8]) -> Wire<tokio::io::DuplexStream> {
        let (ours, mut theirs) = tokio::io::duplex(7);
        // Writing stops with an error once the test has read what it wanted and dropped its end.
        tokio::spawn(async move {
            for piece in input.chunks(7) {
                theirs.write_all(piece).await?;
            }
            Ok::<_, io::Error>(())
        });
        Wire::new(ours)
    }

    async fn head(w: &mut Wire<tokio::io::DuplexStream>) -> Result<(u16, MessageHeaders), WireError> {
        w.read_head(|buf| {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(buf).map_err(|_| WireError::Malformed("head"))? {
                httparse::Status::Complete(len) => {
                    Ok(Some((len, (response.code.unwrap_or(0), MessageHeaders::scan(response.headers)?))))
                }
                httparse::Status::Partial => Ok(None),
            }
        })
        .await
    }

    async fn forwarded(
        w: &mut Wire<tokio::io::DuplexStream>,
        framing: Framing,
        keep_chunked: bool,
    ) -> Result<(u64, Vec<u8>), WireError> {
        let (mut to, mut staged) = (Vec::new(), Vec::new());
        let n = w.body(framing, Sink::Forward { to: &mut to, staged: &mut staged, keep_chunked }).await?;
        Ok((n, to))
    }

    #[test]
    fn bodies_are_forwarded_as_framed_or_decoded() {
        runtime().block_on(async {
            let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
            let mut w = wire(chunked);
            let (status, h) = head(&mut w).await.expect("head");
            assert_eq!(h.response_framing(status, false), Framing::Chunked);
            let (n, out) = forwarded(&mut w, Framing::Chunked, true).await.expect("relayed");
            assert_eq!((n, &out[..]), (9, &b"4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\n"[..]));
            let (status, h) = head(&mut w).await.expect("the next message starts right after");
            assert_eq!((status, h.response_framing(status, false)), (204, Framing::None));

            let mut w = wire(chunked);
            let (status, _) = head(&mut w).await.expect("head");
            assert_eq!(status, 200);
            let (n, out) = forwarded(&mut w, Framing::Chunked, false).await.expect("decoded");
            assert_eq!((n, &out[..]), (9, &b"wikipedia"[..]));

            let mut w = wire(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhelloextra");
            let (status, h) = head(&mut w).await.expect("head");
            assert!(!h.persistent(0), "HTTP/1.0 closes unless asked to keep alive");
            let (n, out) = forwarded(&mut w, h.response_framing(status, false), true).await.expect("body");
            assert_eq!((n, &out[..]), (5, &b"hello"[..]));
            assert!(b"extra".starts_with(w.buffered()), "what follows the body stays unread");
        });
    }

    #[test]
    fn unframed_bodies_run_to_the_close_and_truncation_is_an_error() {
        runtime().block_on(async {
            let mut w = wire(b"HTTP/1.1 200 OK\r\nserver: old\r\n\r\nuntil the end");
            let (status, h) = head(&mut w).await.expect("head");
            assert_eq!(h.response_framing(status, false), Framing::UntilClose);
            assert_eq!(
                forwarded(&mut w, Framing::UntilClose, true).await.expect("body"),
                (13, b"until the end".to_vec())
            );

            let mut w = wire(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort");
            let (status, h) = head(&mut w).await.expect("head");
            let err = forwarded(&mut w, h.response_framing(status, false), true).await.expect_err("truncated");
            assert!(matches!(err, WireError::Eof), "{err}");

            let mut w = wire(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n");
            head(&mut w).await.expect("head");
            let err = forwarded(&mut w, Framing::Chunked, true).await.expect_err("bad size");
            assert!(matches!(err, WireError::Malformed(_)), "{err}");

            let mut w = wire(b"SMTP ready\r\n\r\n");
            assert!(head(&mut w).await.is_err());
        });
    }

    #[test]
    fn collected_bodies_stop_at_their_limit() {
        runtime().block_on(async {
            let mut w = wire(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
            let mut body = Vec::new();
            let sink: Sink<'_, Vec<u8>> = Sink::Collect { body: &mut body, limit: 64 };
            assert_eq!(w.body(Framing::Chunked, sink).await.expect("collected"), 11);
            assert_eq!(body, b"hello world");

            let mut w = wire(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
            let mut body = Vec::new();
            let sink: Sink<'_, Vec<u8>> = Sink::Collect { body: &mut body, limit: 8 };
            assert!(matches!(w.body(Framing::Chunked, sink).await, Err(WireError::BodyTooLarge)));

            let mut w = wire(b"0123456789");
            let mut body = Vec::new();
            let sink: Sink<'_, Vec<u8>> = Sink::Collect { body: &mut body, limit: 8 };
            assert!(matches!(w.body(Framing::Length(10), sink).await, Err(WireError::BodyTooLarge)), "refused unread");
        });
    }

    #[test]
    fn a_body_that_stops_arriving_times_out() {
        runtime().block_on(async {
            let (ours, mut theirs) = tokio::io::duplex(64);
            theirs.write_all(b"12345").await.expect("write");
            let mut w = Wire::new(ours).with_io_timeout(std::time::Duration::from_millis(50));
            let mut body = Vec::new();
            let sink: Sink<'_, Vec<u8>> = Sink::Collect { body: &mut body, limit: 64 };
            let err = w.body(Framing::Length(10), sink).await.expect_err("stalled");
            assert!(matches!(&err, WireError::Io(e) if e.kind() == io::ErrorKind::TimedOut), "{err}");
            drop(theirs);
        });
    }

    fn request_headers(raw: &[u8]) -> Result<MessageHeaders, WireError> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(raw).expect("parses").is_complete());
        MessageHeaders::scan(request.headers)
    }

    #[test]
    fn ambiguous_request_framing_is_refused() {
        let framing = |raw: &[u8]| request_headers(raw).and_then(|h| h.request_framing(1));
        assert_eq!(framing(b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\n").ok(), Some(Framing::Length(3)));
        assert_eq!(framing(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n").ok(), Some(Framing::Chunked));
        assert_eq!(framing(b"GET / HTTP/1.1\r\n\r\n").ok(), Some(Framing::None));
        for smuggled in [
            &b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: -3\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: +3\r\n\r\n",
        ] {
            assert!(framing(smuggled).is_err(), "{}", String::from_utf8_lossy(smuggled));
        }
        let h =
            request_headers(b"POST / HTTP/1.1\r\nConnection: Keep-Alive\r\nExpect: 100-continue\r\n\r\n").expect("ok");
        assert!(h.expect_continue && h.persistent(0) && h.persistent(1));
        assert!(!request_headers(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").expect("ok").persistent(1));
        let chunked10 = request_headers(b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n").expect("ok");
        assert!(chunked10.request_framing(0).is_err(), "HTTP/1.0 has no chunked requests");
    }
}
