//! Network faults between a client and a receiver: `BlackHole` and `FaultProxy`.
//!
//! Owns two TCP servers on 127.0.0.1:0. `BlackHole` accepts and then never reads or
//! answers (a hung peer). `FaultProxy` forwards bytes to an upstream address (TLS
//! stays end to end, the proxy sees only ciphertext) and can, switched at runtime,
//! cut or stall a connection after n client→server bytes, or refuse connections.
//! Invariant: both stop their threads and close every socket they hold on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Accepts connections and holds them without reading or answering.
pub struct BlackHole {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl BlackHole {
    pub fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind black hole");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let thread = {
            let (stop, held) = (stop.clone(), held.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(s) = stream {
                        held.lock().unwrap().push(s);
                    }
                }
            })
        };
        Self {
            addr,
            stop,
            held,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Default for BlackHole {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.held.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// What the proxy does with connections; switch with `FaultProxy::set_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// After n client→server bytes of a connection, close both sides.
    CutAfter(u64),
    /// After n client→server bytes of a connection, forward nothing more in either
    /// direction but keep both sockets open.
    StallAfter(u64),
    /// Accept, then close at once.
    Refuse,
}

struct Shared {
    mode: Mutex<Mode>,
    upstream: Mutex<SocketAddr>,
    stop: AtomicBool,
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    sockets: Mutex<Vec<TcpStream>>,
}

/// A TCP proxy from 127.0.0.1:<port> to an upstream address, with faults.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    pub fn new(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            upstream: Mutex::new(upstream),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            sockets: Mutex::default(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(client) = stream else { continue };
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    if *shared.mode.lock().unwrap() == Mode::Refuse {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let shared = shared.clone();
                    std::thread::spawn(move || proxy_connection(client, &shared));
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

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.lock().unwrap()
    }

    /// Where new connections go (e.g. a receiver restarted on another port).
    pub fn set_upstream(&self, addr: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = addr;
    }

    /// Connections accepted so far (including refused ones).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Client→server bytes forwarded so far, over all connections.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::Relaxed)
    }

    /// Closes every connection open through the proxy now.
    pub fn cut_all(&self) {
        for s in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.cut_all();
    }
}

fn proxy_connection(client: TcpStream, shared: &Arc<Shared>) {
    let upstream = *shared.upstream.lock().unwrap();
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut sockets = shared.sockets.lock().unwrap();
        for s in [&client, &server] {
            if let Ok(s) = s.try_clone() {
                sockets.push(s);
            }
        }
    }
    let stalled = Arc::new(AtomicBool::new(false));
    let down = {
        let (stalled, shared) = (stalled.clone(), shared.clone());
        std::thread::spawn(move || forward_down(server2, client2, &stalled, &shared))
    };
    forward_up(client, server, &stalled, shared);
    let _ = down.join();
}

/// Client → server, applying the mode.
fn forward_up(mut client: TcpStream, mut server: TcpStream, stalled: &AtomicBool, shared: &Shared) {
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = server.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let mode = *shared.mode.lock().unwrap();
        let limit = match mode {
            Mode::Pass | Mode::Refuse => None,
            Mode::CutAfter(n) | Mode::StallAfter(n) => Some(n),
        };
        let allowed = limit.map_or(n, |l| n.min(l.saturating_sub(sent) as usize));
        if allowed > 0 {
            if server.write_all(&buf[..allowed]).is_err() {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            sent += allowed as u64;
            shared.bytes_up.fetch_add(allowed as u64, Ordering::Relaxed);
        }
        if limit.is_some_and(|l| sent >= l) {
            match mode {
                Mode::CutAfter(_) => {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                _ => {
                    stalled.store(true, Ordering::Relaxed);
                    // Hold both sockets open, reading nothing, until the proxy stops
                    // or something else closes them.
                    while !shared.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        if client.peer_addr().is_err() {
                            break;
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// Server → client; nothing is forwarded once the connection stalled.
fn forward_down(
    mut server: TcpStream,
    mut client: TcpStream,
    stalled: &AtomicBool,
    shared: &Shared,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => {
                if !stalled.load(Ordering::Relaxed) {
                    let _ = client.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => n,
        };
        if stalled.load(Ordering::Relaxed) || shared.stop.load(Ordering::Relaxed) {
            continue;
        }
        if client.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::plain_connect;
    use crate::stub::{Reply, StubServer};

    fn put(conn_addr: SocketAddr, body_len: usize) -> crate::raw::RawConn {
        let mut conn = plain_connect(conn_addr).unwrap();
        let len = body_len.to_string();
        conn.send_head("PUT", "/v1/x", &[("Content-Length", len.as_str())])
            .unwrap();
        let _ = conn.send(&vec![7u8; body_len]);
        conn
    }

    #[test]
    fn passes_bytes_and_counts_them() {
        let stub = StubServer::new(Reply::new(201, &[], serde_json::json!({"ok": true})));
        let proxy = FaultProxy::new(stub.addr());
        let mut conn = put(proxy.addr(), 5000);
        let response = conn.read_response(Duration::from_secs(5)).unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(stub.requests()[0].body_len, 5000);
        assert_eq!(proxy.connections(), 1);
        assert!(proxy.bytes_up() > 5000);
    }

    #[test]
    fn cuts_after_n_bytes() {
        let stub = StubServer::new(Reply::new(201, &[], serde_json::json!({})));
        let proxy = FaultProxy::new(stub.addr());
        proxy.set_mode(Mode::CutAfter(100));
        let mut conn = put(proxy.addr(), 10_000);
        assert!(conn.closed_within(Duration::from_secs(5)));
        assert_eq!(proxy.bytes_up(), 100);
        assert_eq!(stub.count("PUT"), 0);
    }

    #[test]
    fn stalls_after_n_bytes_and_keeps_the_connection() {
        let stub = StubServer::new(Reply::new(201, &[], serde_json::json!({})));
        let proxy = FaultProxy::new(stub.addr());
        proxy.set_mode(Mode::StallAfter(100));
        let mut conn = put(proxy.addr(), 10_000);
        assert!(!conn.closed_within(Duration::from_millis(300)));
        assert_eq!(proxy.bytes_up(), 100);
        assert_eq!(stub.count("PUT"), 0);
        // Back to normal for new connections.
        proxy.set_mode(Mode::Pass);
        let mut conn = put(proxy.addr(), 10);
        assert_eq!(
            conn.read_response(Duration::from_secs(5)).unwrap().status,
            201
        );
    }

    #[test]
    fn refuses_and_moves_upstream() {
        let first = StubServer::new(Reply::new(200, &[], serde_json::json!({"which": 1})));
        let second = StubServer::new(Reply::new(200, &[], serde_json::json!({"which": 2})));
        let proxy = FaultProxy::new(first.addr());
        proxy.set_mode(Mode::Refuse);
        let mut conn = plain_connect(proxy.addr()).unwrap();
        assert!(conn.closed_within(Duration::from_secs(5)));
        proxy.set_mode(Mode::Pass);
        proxy.set_upstream(second.addr());
        let mut conn = put(proxy.addr(), 1);
        let response = conn.read_response(Duration::from_secs(5)).unwrap();
        assert_eq!(response.json()["which"], 2);
        assert_eq!((first.count("PUT"), second.count("PUT")), (0, 1));
        assert_eq!(proxy.connections(), 2);
    }

    #[test]
    fn a_black_hole_accepts_and_never_answers() {
        let hole = BlackHole::new();
        let mut conn = put(hole.addr(), 10);
        let err = conn.read_response(Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(hole.connections(), 1);
        assert!(hole.url().starts_with("https://127.0.0.1:"));
    }
}
