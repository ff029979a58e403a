//! `StubServer`: a plain HTTP/1.1 server that plays a receiver answering whatever
//! the test says (503, 401, 404, 3xx, …).
//!
//! Owns a listener on 127.0.0.1:0, one thread per connection (keep-alive; bodies by
//! Content-Length or chunked, read and counted, not kept; a request whose body is
//! cut short is neither recorded nor answered), the reply (status,
//! headers, JSON body; changeable at runtime) and a record of every request. It
//! does not speak TLS or HTTP/2. Invariant: every request is recorded before it is
//! answered, so a client that saw an answer finds its request in `requests()`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the stub answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Reply {
    /// `status` with a JSON body; `Content-Type: application/problem+json` for 4xx/5xx,
    /// `application/json` otherwise (unless `headers` sets one).
    pub fn new(status: u16, headers: &[(&str, &str)], body: serde_json::Value) -> Self {
        Self {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body,
        }
    }

    /// A problem+json answer with slug `slug`.
    pub fn problem(status: u16, slug: &str) -> Self {
        Self::new(
            status,
            &[],
            serde_json::json!({"type": slug, "title": slug, "status": status, "detail": "from the stub server"}),
        )
    }
}

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// When its request line arrived.
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    reply: Mutex<Reply>,
    requests: Mutex<Vec<Request>>,
    stop: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

pub struct StubServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl StubServer {
    /// A stub answering every request with `reply`.
    pub fn new(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            reply: Mutex::new(reply),
            requests: Mutex::default(),
            stop: AtomicBool::new(false),
            sockets: Mutex::default(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Ok(clone) = stream.try_clone() {
                        shared.sockets.lock().unwrap().push(clone);
                    }
                    let shared = shared.clone();
                    std::thread::spawn(move || serve(stream, &shared));
                }
            })
        };
        Self {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the answer for requests from now on.
    pub fn set_reply(&self, reply: Reply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// How many requests used `method` (e.g. "PUT", "HEAD", "GET").
    pub fn count(&self, method: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method))
            .count()
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Serves one connection until the client closes it or asks to.
fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let at = Instant::now();
        let request_line = request_line.trim_end();
        if request_line.is_empty() {
            continue;
        }
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let mut request = Request {
            method,
            path,
            headers,
            body_len: 0,
            at,
        };
        if request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        let body_len = if request
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            read_chunked(&mut reader)
        } else {
            let len: u64 = request
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // A body cut short is no request: the client never finished sending it.
            std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())
                .ok()
                .filter(|n| *n == len)
        };
        let Some(body_len) = body_len else { return };
        request.body_len = body_len;
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let is_head = request.method.eq_ignore_ascii_case("HEAD");
        shared.requests.lock().unwrap().push(request);
        let reply = shared.reply.lock().unwrap().clone();
        let body = serde_json::to_vec(&reply.body).unwrap_or_default();
        let has = |name: &str| {
            reply
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        for (n, v) in &reply.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if !has("content-type") {
            let ct = if reply.status >= 400 {
                "application/problem+json"
            } else {
                "application/json"
            };
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if !has("content-length") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !is_head {
            out.extend_from_slice(&body);
        }
        if writer.write_all(&out).is_err() || close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Reads a chunked body, returning its decoded length (`None` on a broken one).
fn read_chunked(reader: &mut impl BufRead) -> Option<u64> {
    let mut total = 0u64;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let size = u64::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t).ok()? == 0 || t.trim().is_empty() {
                    return Some(total);
                }
            }
        }
        std::io::copy(&mut reader.take(size), &mut std::io::sink()).ok()?;
        total += size;
        let mut crlf = String::new();
        reader.read_line(&mut crlf).ok()?;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_told_and_records_requests() {
        let stub = StubServer::new(Reply::problem(503, "unavailable"));
        let client = crate::receiver::http_client();
        let url = format!("{}/v1/episodes/lab1/01X", stub.url());
        let response = client
            .put(&url)
            .header("x-host-id", "lab1")
            .body(vec![1u8; 3000])
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().unwrap()).unwrap();
        assert_eq!(body["type"], "unavailable");

        stub.set_reply(Reply::new(
            307,
            &[("Location", "http://127.0.0.1:1/elsewhere")],
            serde_json::json!({}),
        ));
        let no_redirects = crate::receiver::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = no_redirects.head(&url).send().unwrap();
        assert_eq!(response.status().as_u16(), 307);
        assert_eq!(
            response.headers()["location"],
            "http://127.0.0.1:1/elsewhere"
        );

        let requests = stub.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(
            (requests[0].method.as_str(), requests[0].path.as_str()),
            ("PUT", "/v1/episodes/lab1/01X")
        );
        assert_eq!(requests[0].body_len, 3000);
        assert_eq!(requests[0].header("X-Host-Id"), Some("lab1"));
        assert_eq!(
            (stub.count("PUT"), stub.count("HEAD"), stub.count("GET")),
            (1, 1, 0)
        );
    }

    #[test]
    fn reads_chunked_bodies_and_keeps_connections_alive() {
        let stub = StubServer::new(Reply::new(200, &[], serde_json::json!({"ok": true})));
        let mut conn = crate::raw::plain_connect(stub.addr()).unwrap();
        conn.send_head("PUT", "/a", &[("Transfer-Encoding", "chunked")])
            .unwrap();
        conn.send(b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!(
            conn.read_response(Duration::from_secs(5)).unwrap().status,
            200
        );
        conn.send_head("GET", "/b", &[("Content-Length", "0")])
            .unwrap();
        assert_eq!(
            conn.read_response(Duration::from_secs(5)).unwrap().status,
            200
        );
        let requests = stub.requests();
        assert_eq!(requests[0].body_len, 8);
        assert_eq!(requests[1].path, "/b");
    }
}
