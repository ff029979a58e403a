//! Open connections: the `max_connections` cap, a per-address limit, and closing
//! the connection idle longest (handshake unfinished, or no request in flight)
//! under pressure; a connection with a request in flight is never closed here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections one address may hold: an eighth of the cap, at least 16.
pub fn per_address_limit(max_connections: usize) -> usize {
    (max_connections / 8).max(16).min(max_connections)
}

/// Open connections above which idle ones are closed to make room.
pub fn high_water(max_connections: usize) -> usize {
    max_connections - max_connections / 4
}

/// Of `(id, idle since)` pairs (`None`: busy), the one idle longest.
pub fn oldest_idle(candidates: impl IntoIterator<Item = (u64, Option<u64>)>) -> Option<u64> {
    candidates
        .into_iter()
        .filter_map(|(id, since)| since.map(|s| (s, id)))
        .min()
        .map(|(_, id)| id)
}

/// One open connection, as the table sees it.
pub struct Conn {
    id: u64,
    in_flight: AtomicUsize,
    /// When it became idle (ms since the table's epoch, plus one); 0 while busy.
    idle_since: AtomicU64,
    close: CancellationToken,
}

impl Conn {
    /// Resolves when the table closes this connection to make room.
    pub async fn closed(&self) {
        self.close.cancelled().await;
    }

    /// True while a request is in flight on it.
    pub fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }
}

/// Marks its connection busy while it lives (one per request in flight).
pub struct Busy {
    conn: Arc<Conn>,
    connections: Arc<Connections>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.conn
                .idle_since
                .store(self.connections.now_ms(), Ordering::SeqCst);
        }
    }
}

#[derive(Default)]
struct Table {
    next_id: u64,
    by_addr: HashMap<IpAddr, usize>,
    open: HashMap<u64, Arc<Conn>>,
}

pub struct Connections {
    max: usize,
    per_address: usize,
    permits: Arc<Semaphore>,
    table: Mutex<Table>,
    epoch: Instant,
    /// When pressure was last logged (ms since epoch), to log it once per period.
    logged_ms: AtomicU64,
}

/// A registered connection; unregisters it (and frees its permit) on drop.
pub struct Registration {
    connections: Arc<Connections>,
    pub conn: Arc<Conn>,
    addr: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Registration {
    /// Marks the connection busy until the guard drops.
    pub fn busy(&self) -> Busy {
        self.conn.in_flight.fetch_add(1, Ordering::SeqCst);
        self.conn.idle_since.store(0, Ordering::SeqCst);
        Busy {
            conn: self.conn.clone(),
            connections: self.connections.clone(),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut table = self.connections.table();
        table.open.remove(&self.conn.id);
        if let Some(n) = table.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                table.by_addr.remove(&self.addr);
            }
        }
    }
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Connections {
    pub fn new(max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max_connections,
            per_address: per_address_limit(max_connections),
            permits: Arc::new(Semaphore::new(max_connections)),
            table: Mutex::default(),
            epoch: Instant::now(),
            logged_ms: AtomicU64::new(0),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// True above the high-water mark.
    pub fn under_pressure(&self) -> bool {
        self.open() >= high_water(self.max)
    }

    /// A permit for the next connection: above the high-water mark, the connection
    /// idle longest is closed first; waits only while every connection is busy.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if self.under_pressure() {
            self.close_oldest_idle();
        }
        self.permits.clone().acquire_owned().await.ok()
    }

    fn close_oldest_idle(&self) {
        let victim = {
            let table = self.table();
            let candidates = table.open.values().map(|c| {
                let since = c.idle_since.load(Ordering::SeqCst);
                (
                    c.id,
                    (since != 0 && !c.close.is_cancelled()).then_some(since),
                )
            });
            oldest_idle(candidates).and_then(|id| table.open.get(&id).cloned())
        };
        if let Some(conn) = victim {
            conn.close.cancel();
            let now = self.now_ms();
            let last = self.logged_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64
                && self
                    .logged_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    event = %episode_common::Event::ConnectionPressure,
                    open = self.open(),
                    max_connections = self.max,
                    "many connections open: closing the ones idle longest to make room"
                );
            }
        }
    }

    /// Registers a connection from `addr`, idle until its first request; `None`
    /// (the caller closes it) when that address already holds its limit.
    pub fn register(
        self: &Arc<Self>,
        addr: IpAddr,
        permit: OwnedSemaphorePermit,
    ) -> Option<Registration> {
        let mut table = self.table();
        let count = table.by_addr.entry(addr).or_default();
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        table.next_id += 1;
        let conn = Arc::new(Conn {
            id: table.next_id,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            close: CancellationToken::new(),
        });
        table.open.insert(conn.id, conn.clone());
        Some(Registration {
            connections: self.clone(),
            conn,
            addr,
            _permit: permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_scale_with_the_cap() {
        assert_eq!(per_address_limit(1024), 128);
        assert_eq!(per_address_limit(64), 16);
        assert_eq!(per_address_limit(8), 8);
        assert_eq!(high_water(1024), 768);
        assert_eq!(high_water(64), 48);
    }

    #[test]
    fn the_connection_idle_longest_is_chosen_and_busy_ones_never() {
        assert_eq!(
            oldest_idle([(1, None), (2, Some(30)), (3, Some(10))]),
            Some(3)
        );
        assert_eq!(oldest_idle([(1, None), (2, None)]), None);
    }

    #[tokio::test]
    async fn pressure_closes_the_oldest_idle_connection_never_a_busy_one() {
        let connections = Connections::new(16);
        let addr: IpAddr = "127.0.0.2".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..16 {
            // Permits taken directly: `acquire` would already close some.
            let permit = connections.permits.clone().acquire_owned().await.unwrap();
            held.push(connections.register(addr, permit).unwrap());
        }
        let _busy = held[0].busy();
        let acquiring = tokio::spawn({
            let connections = connections.clone();
            async move { connections.acquire().await.is_some() }
        });
        tokio::time::timeout(Duration::from_secs(1), held[1].conn.closed())
            .await
            .expect("the oldest idle connection is closed");
        assert!(!held[0].conn.close.is_cancelled(), "busy: kept");
        held.remove(1); // its task ends, freeing its permit
        assert!(acquiring.await.unwrap());
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_limit() {
        let connections = Connections::new(64);
        let (one, other): (IpAddr, IpAddr) =
            ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let mut held = Vec::new();
        for _ in 0..16 {
            let permit = connections.acquire().await.unwrap();
            held.push(connections.register(one, permit).unwrap());
        }
        let permit = connections.acquire().await.unwrap();
        assert!(connections.register(one, permit).is_none(), "a 17th");
        let permit = connections.acquire().await.unwrap();
        assert!(
            connections.register(other, permit).is_some(),
            "another address"
        );
        held.pop();
        let permit = connections.acquire().await.unwrap();
        assert!(connections.register(one, permit).is_some(), "room again");
    }
}
