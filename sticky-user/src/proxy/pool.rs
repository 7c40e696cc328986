//! Idle backend connections, per backend: at most `max_idle` each, closed after `idle_timeout`
//! unused. A connection is handed back only once its response has been read to the end, and
//! only if neither side asked to close it.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use foldhash::fast::RandomState;

use super::backend::BackendConn;
pub use super::backend::ConnectError;

pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, VecDeque<Idle>, RandomState>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct Idle {
    conn: BackendConn,
    since: Instant,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration, connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::default()),
            max_idle,
            idle_timeout,
            connect_timeout,
        }
    }

    /// The most recently used idle connection to `addr` that is still open and quiet.
    pub fn take(&self, addr: SocketAddr) -> Option<BackendConn> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&addr)?;
        while let Some(mut i) = list.pop_back() {
            if i.since.elapsed() <= self.idle_timeout && i.conn.is_reusable() {
                return Some(i.conn);
            }
        }
        None
    }

    /// A new connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<BackendConn, ConnectError> {
        BackendConn::connect(addr, self.connect_timeout).await
    }

    /// Keeps `conn` (its last response read to the end) for the next request to `addr`.
    pub fn put(&self, addr: SocketAddr, conn: BackendConn) {
        if self.max_idle == 0 {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let list = idle.entry(addr).or_default();
        if list.len() >= self.max_idle {
            list.pop_front();
        }
        list.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than the timeout, or closed by their backend.
    pub fn sweep(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            for list in idle.values_mut() {
                list.retain_mut(|i| i.since.elapsed() <= self.idle_timeout && i.conn.is_reusable());
            }
            idle.retain(|_, list| !list.is_empty());
        }
    }

    /// Idle connections held for `addr`.
    #[cfg(test)]
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle
            .lock()
            .map(|i| i.get(&addr).map_or(0, VecDeque::len))
            .unwrap_or(0)
    }
}
