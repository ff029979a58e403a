//! Hand-written HTTP/1.1 over a plain or rustls socket.
//!
//! Owns what a well-behaved client library will not do: sending only the headers of
//! a request, half a body, or a path that a URL parser would normalise (`..`), and
//! reading one response with a deadline. It does not pool, retry or follow
//! redirects. Invariant: every read has a deadline, so a silent server fails the
//! test instead of hanging it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use episode_common::Sha256;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::receiver::{CODE_COMMIT, Receiver};

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One raw connection.
pub struct RawConn {
    stream: Stream,
    buf: Vec<u8>,
    /// Methods of requests sent and not yet answered (a HEAD answer has no body).
    pending: std::collections::VecDeque<String>,
}

/// One response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The problem slug of a problem+json body.
    pub fn slug(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("type")?
            .as_str()
            .map(str::to_owned)
    }
}

/// Connects to `receiver` with its own scheme: TLS presenting `host`'s client
/// certificate (or none), or plain TCP. The TLS handshake is driven to completion
/// from the client's side; under TLS 1.3 a refused client certificate shows up at
/// the first read.
pub fn connect(receiver: &Receiver, host: Option<&str>) -> io::Result<RawConn> {
    if receiver.url.starts_with("http://") {
        return plain_connect(receiver.addr);
    }
    tls_connect_with(
        receiver.addr,
        receiver.ca(),
        host.map(|h| receiver.identity(h)),
    )
}

/// A TLS connection to `receiver` presenting `host`'s certificate; panics if TCP
/// or the client's side of the handshake fails.
pub fn tls_connect(receiver: &Receiver, host: &str) -> RawConn {
    connect(receiver, Some(host)).unwrap_or_else(|e| panic!("connect to {}: {e}", receiver.url))
}

/// A plain TCP connection.
pub fn plain_connect(addr: SocketAddr) -> io::Result<RawConn> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    Ok(RawConn {
        stream: Stream::Plain(tcp),
        buf: Vec::new(),
        pending: Default::default(),
    })
}

/// A TLS connection to `addr` (server name "localhost") trusting `ca` and
/// presenting `identity` (cert, key) if given.
pub fn tls_connect_with(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> io::Result<RawConn> {
    let roots = episode_common::tls::load_certs(ca).map_err(io::Error::other)?;
    let identity = match identity {
        Some((cert, key)) => Some((
            episode_common::tls::load_certs(cert).map_err(io::Error::other)?,
            episode_common::tls::load_key(key).map_err(io::Error::other)?,
        )),
        None => None,
    };
    let config =
        episode_common::tls::client_config(Some(&roots), identity).map_err(io::Error::other)?;
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(RawConn {
        stream: Stream::Tls(Box::new(StreamOwned::new(conn, tcp))),
        buf: Vec::new(),
        pending: Default::default(),
    })
}

/// The headers of a valid PUT of a body of `len` bytes with digest `digest`.
pub fn put_headers(len: u64, digest: &Sha256) -> Vec<(String, String)> {
    vec![
        ("Content-Length".into(), len.to_string()),
        ("Repr-Digest".into(), digest.to_field()),
        ("X-Code-Commit".into(), CODE_COMMIT.into()),
        ("Content-Type".into(), "application/zstd".into()),
    ]
}

impl RawConn {
    /// Writes `bytes` and flushes them to the socket.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends a request line and headers (adding `Host: localhost`) and the blank line
    /// that ends them; the body, if any, is up to the caller.
    pub fn send_head<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(K, V)],
    ) -> io::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{}: {}\r\n", name.as_ref(), value.as_ref()));
        }
        head.push_str("\r\n");
        self.pending.push_back(method.to_owned());
        self.send(head.as_bytes())
    }

    /// Reads one response (status line, headers, body by Content-Length, chunked, or
    /// to the end of the connection; none for a HEAD sent with `send_head`) within
    /// `timeout`.
    pub fn read_response(&mut self, timeout: Duration) -> io::Result<RawResponse> {
        let deadline = Instant::now() + timeout;
        let header_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill(deadline)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head ({} bytes: {:?})",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..header_end]).into_owned();
        self.buf.drain(..header_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) {
            return self.read_response(deadline.saturating_duration_since(Instant::now()));
        }
        let method = self.pending.pop_front();
        if method.as_deref() == Some("HEAD") || matches!(status, 204 | 304) {
            return Ok(response);
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::other(format!("bad Content-Length {len:?}")))?;
            while self.buf.len() < len {
                if self.fill(deadline)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body cut short",
                    ));
                }
            }
            response.body = self.buf.drain(..len).collect();
        } else if response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            response.body = self.read_chunked(deadline)?;
        } else {
            while self.fill(deadline)? > 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    fn read_chunked(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                if self.fill(deadline)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunk cut short",
                    ));
                }
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {size_text:?}")))?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                if self.fill(deadline)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunk cut short",
                    ));
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    /// Reads more bytes into the buffer; 0 at the end of the connection.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no response before the deadline",
            ));
        }
        self.stream.tcp().set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 << 10];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            // A TLS peer that closes without close_notify: the end, for our purposes.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no response before the deadline",
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the server closed the connection (read returns end of stream or an
    /// error) within `timeout`; bytes that arrive meanwhile are kept for
    /// `read_response`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }

    /// Shuts the socket down in both directions.
    pub fn shutdown(&self) {
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
