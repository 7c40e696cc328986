//! Idle backend connections, per backend: at most `max_idle` each, closed after `idle_timeout`
//! unused. A connection is handed back only once its response has been read to the end, and
//! only if neither side asked to close it.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use foldhash::fast::RandomState;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::{body::Relay, io::Stream};

pub type Sender = SendRequest<Relay>;

/// How long a pooled connection may take to say it is ready for the next request.
const READY_WAIT: Duration = Duration::from_secs(1);

pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, VecDeque<Idle>, RandomState>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection lent out for one exchange; [`Checkin::done`] returns it.
pub struct Checkin {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: Sender,
}

impl Checkin {
    pub fn done(self) {
        self.pool.put(self.addr, self.sender);
    }
}

/// Why no connection to a backend could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake: {0}")]
    Http(#[from] hyper::Error),
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

    /// The most recently used idle connection to `addr` that is still open and ready.
    pub async fn take(&self, addr: SocketAddr) -> Option<Sender> {
        loop {
            let idle = self.idle.lock().ok()?.get_mut(&addr)?.pop_back()?;
            if idle.since.elapsed() > self.idle_timeout || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            // Usually ready already: no timer for it then.
            if sender.is_ready() {
                return Some(sender);
            }
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                return Some(sender);
            }
        }
    }

    /// A new connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Sender, ConnectError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(Stream::new(tcp));
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!("backend {addr} connection: {e}");
            }
        });
        Ok(sender)
    }

    /// Lends `sender` out; the returned handle gives it back.
    pub fn lend(self: &Arc<Self>, addr: SocketAddr, sender: Sender) -> Checkin {
        Checkin {
            pool: self.clone(),
            addr,
            sender,
        }
    }

    fn put(&self, addr: SocketAddr, sender: Sender) {
        if self.max_idle == 0 || sender.is_closed() {
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
            sender,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than the timeout, or closed by their backend.
    pub fn sweep(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            for list in idle.values_mut() {
                list.retain(|i| i.since.elapsed() <= self.idle_timeout && !i.sender.is_closed());
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
