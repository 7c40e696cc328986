//! Kernel splicing of a proxied connection pair through the sk_skb verdict program, and the
//! userspace copy it falls back to.
//!
//! Order matters (measured on 6.18: the README's proxy mode notes): drain both sockets to EAGAIN and forward what was
//! read; register each under the peer's cookie, then under its own (which runs the verdict);
//! then `SO_RCVLOWAT=1` so bytes queued meanwhile go through the verdict too. A half-close is
//! forwarded only once the peer has sent every byte the kernel redirected into it.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, SockHash},
    programs::SkSkb,
};
use sticky_common::maps::{PROG_SPLICE, SPLICE_BYTES, SPLICE_PEERS, SPLICE_SOCKS};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, unix::AsyncFd},
    net::TcpStream,
};

/// Copy buffers: large buffers copy 2× faster than tokio's default 8 KiB here.
pub const COPY_BUFFER: usize = 256 * 1024;

pub struct Splicer {
    socks: SockHash<MapData, u64>,
    peers: SockHash<MapData, u64>,
    bytes: HashMap<MapData, u64, u64>,
}

impl Splicer {
    /// Takes the splice maps out of the object and attaches the verdict program.
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        let socks: SockHash<MapData, u64> = SockHash::try_from(take(ebpf, SPLICE_SOCKS)?)?;
        let peers: SockHash<MapData, u64> = SockHash::try_from(take(ebpf, SPLICE_PEERS)?)?;
        let bytes: HashMap<MapData, u64, u64> = HashMap::try_from(take(ebpf, SPLICE_BYTES)?)?;
        let prog: &mut SkSkb = ebpf
            .program_mut(PROG_SPLICE)
            .context("splice program missing")?
            .try_into()?;
        prog.load().context("load the splice verdict (verifier)")?;
        prog.attach(socks.fd())
            .context("attach the splice verdict to its sockmap")?;
        Ok(Self {
            socks,
            peers,
            bytes,
        })
    }

    fn register(&mut self, a: RawFd, ca: u64, b: RawFd, cb: u64) -> anyhow::Result<()> {
        self.bytes.insert(ca, 0, 0)?;
        self.bytes.insert(cb, 0, 0)?;
        self.peers
            .insert(ca, b, 0)
            .context("sockmap insert (peer)")?;
        self.peers
            .insert(cb, a, 0)
            .context("sockmap insert (peer)")?;
        self.socks.insert(ca, a, 0).context("sockmap insert")?;
        self.socks.insert(cb, b, 0).context("sockmap insert")?;
        Ok(())
    }

    fn redirected(&self, cookie: u64) -> u64 {
        self.bytes.get(&cookie, 0).unwrap_or(0)
    }

    fn forget(&mut self, cookies: [u64; 2]) {
        for c in cookies {
            let _ = self.socks.remove(&c);
            let _ = self.peers.remove(&c);
            let _ = self.bytes.remove(&c);
        }
    }
}

pub type SharedSplicer = std::sync::Arc<std::sync::Mutex<Splicer>>;

fn cookie(fd: RawFd) -> anyhow::Result<u64> {
    let mut value = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!("SO_COOKIE: {}", std::io::Error::last_os_error());
    }
    Ok(value)
}

fn set_rcvlowat(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: valid fd and option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `tcpi_bytes_acked` and `tcpi_bytes_received` (offsets 120 and 128 of `struct tcp_info`,
/// Linux ≥ 4.1).
fn tcp_counts(fd: RawFd) -> (u64, u64) {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: valid fd, buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let at = |off: usize| {
        info.get(off..off + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    };
    if rc == 0 && len >= 136 {
        (at(120), at(128))
    } else {
        (0, 0)
    }
}

/// Bytes the socket has put on the wire or still holds to send: acked + queued.
fn bytes_out(fd: RawFd) -> u64 {
    let acked = tcp_counts(fd).0;
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int.
    unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    acked + queued.max(0) as u64
}

/// Forwards everything already readable from `from` to `to`; true if `from` reached EOF.
async fn drain(
    from: &TcpStream,
    to: &mut TcpStream,
    buf: &mut [u8],
    written: &mut u64,
) -> anyhow::Result<bool> {
    loop {
        match from.try_read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                to.write_all(&buf[..n]).await?;
                *written += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Watches two sockets for hang-ups only (edge-triggered RDHUP): quiet while the kernel moves
/// the bytes, unlike readiness on the sockets themselves.
struct HangupWatch {
    epoll: AsyncFd<OwnedFd>,
}

impl HangupWatch {
    fn new(fds: [RawFd; 2]) -> anyhow::Result<Self> {
        // SAFETY: plain syscall.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let epoll: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(ep) };
        for (i, fd) in fds.into_iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLET) as u32,
                u64: i as u64,
            };
            // SAFETY: valid fds and event.
            if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                bail!("epoll_ctl: {}", std::io::Error::last_os_error());
            }
        }
        // SAFETY: we own the epoll fd and keep it registered for its whole life.
        let epoll = unsafe { AsyncFd::register(epoll) }
            .map_err(|e| anyhow::anyhow!("register epoll: {e}"))?;
        Ok(Self { epoll })
    }

    /// Waits for hang-up events; returns per socket (peer sent FIN, error/reset).
    async fn next(&self) -> anyhow::Result<[(bool, bool); 2]> {
        loop {
            let mut guard = self.epoll.readable().await?;
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
            let fd: BorrowedFd<'_> = self.epoll.get_ref().as_fd();
            // SAFETY: valid epoll fd and buffer.
            let n = unsafe { libc::epoll_wait(fd.as_raw_fd(), events.as_mut_ptr(), 4, 0) };
            if n <= 0 {
                // Only now is the epoll fd known drained: clearing earlier could lose an event
                // that arrived between the wait and the clear.
                guard.clear_ready();
                continue;
            }
            let mut out = [(false, false); 2];
            for ev in events.iter().take(n as usize) {
                let i = (ev.u64 as usize).min(1);
                let flags = ev.events as i32;
                // HUP is both directions shut (our own half-close plus the peer's FIN): a
                // FIN as far as forwarding goes, not an error.
                out[i].0 |= flags & (libc::EPOLLRDHUP | libc::EPOLLHUP) != 0;
                out[i].1 |= flags & libc::EPOLLERR != 0;
            }
            return Ok(out);
        }
    }
}

/// `from` got a FIN: once the verdict has redirected everything `from` received (all but what
/// userspace read itself) and `to` has sent it (on top of `to_base`), half-close `to`. Bounded.
async fn forward_fin(
    splicer: &SharedSplicer,
    from: RawFd,
    from_cookie: u64,
    read_by_us: u64,
    to: RawFd,
    to_base: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let redirected = || {
        splicer
            .lock()
            .map(|s| s.redirected(from_cookie))
            .unwrap_or(0)
    };
    // The verdict runs asynchronously: a FIN can be seen before the last segments went through.
    // `tcpi_bytes_received` counts the FIN's sequence number too, hence the 1.
    let expected = || tcp_counts(from).1.saturating_sub(read_by_us + 1);
    while redirected() < expected() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let target = to_base + redirected();
    while bytes_out(to) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // SAFETY: shutting down our own socket.
    unsafe { libc::shutdown(to, libc::SHUT_WR) };
}

/// Splices `client` ↔ `backend` in the kernel until both directions closed. Returns the
/// streams untouched (`Err((c, b, why))`) when splicing is impossible, for the copy path.
/// `client_read` and `backend_read` are the bytes userspace already read from each socket.
pub async fn splice(
    splicer: &SharedSplicer,
    client: TcpStream,
    mut backend: TcpStream,
    client_read: u64,
    backend_read: u64,
) -> Result<(), (TcpStream, TcpStream, String)> {
    let mut client = client;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent_b = 0;
    let mut sent_c = 0;
    let drained = async {
        let a = drain(&client, &mut backend, &mut buf, &mut sent_b).await?;
        let b = drain(&backend, &mut client, &mut buf, &mut sent_c).await?;
        anyhow::Ok(a || b)
    }
    .await;
    let (client_read, backend_read) = (client_read + sent_b, backend_read + sent_c);
    match drained {
        Ok(false) => {}
        Ok(true) => {
            return Err((
                client,
                backend,
                "a side already closed (a socket with FIN cannot join a sockmap)".into(),
            ));
        }
        Err(e) => return Err((client, backend, format!("{e:#}"))),
    }
    let (cfd, bfd) = (client.as_raw_fd(), backend.as_raw_fd());
    let (cc, cb) = match (cookie(cfd), cookie(bfd)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err((client, backend, "no socket cookie".into())),
    };
    // What we wrote ourselves, measured before the kernel can add to it: the FIN targets below
    // are this plus what the verdict redirected.
    let base_b = bytes_out(bfd);
    let base_c = bytes_out(cfd);
    let registered = splicer
        .lock()
        .map_err(|_| anyhow::anyhow!("splicer poisoned"))
        .and_then(|mut s| {
            s.register(cfd, cc, bfd, cb)
                .inspect_err(|_| s.forget([cc, cb]))
        });
    if let Err(e) = registered {
        return Err((client, backend, format!("{e:#}")));
    }
    set_rcvlowat(cfd);
    set_rcvlowat(bfd);
    let watch = match HangupWatch::new([cfd, bfd]) {
        Ok(w) => w,
        Err(_) => {
            if let Ok(mut s) = splicer.lock() {
                s.forget([cc, cb]);
            }
            return Ok(());
        }
    };
    let (mut client_done, mut backend_done) = (false, false);
    while !(client_done && backend_done) {
        let Ok(events) = watch.next().await else {
            break;
        };
        if events[0].1 || events[1].1 {
            break; // reset or error on either side: close both
        }
        if events[0].0 && !client_done {
            client_done = true;
            forward_fin(splicer, cfd, cc, client_read, bfd, base_b).await;
        }
        if events[1].0 && !backend_done {
            backend_done = true;
            forward_fin(splicer, bfd, cb, backend_read, cfd, base_c).await;
        }
    }
    if let Ok(mut s) = splicer.lock() {
        s.forget([cc, cb]);
    }
    Ok(())
}

/// How a connection's copy phase ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Handoff {
    /// The connection ended while copying: nothing left to do.
    Closed,
    /// The connection moved `limit` bytes; userspace read this much from each side.
    Grown { client_read: u64, backend_read: u64 },
}

/// Buffers of the copy phase: short exchanges only (longer ones get spliced).
const PHASE_BUFFER: usize = 16 * 1024;

/// Copies both ways until `limit` bytes have passed (both directions together), then returns
/// with no byte held in userspace so the connection can be spliced; or copies to the end when
/// it closes first. Short upgraded exchanges never pay for the splice (`--splice-after`).
pub async fn copy_until(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    limit: u64,
) -> std::io::Result<Handoff> {
    let (mut cr, mut cw) = client.split();
    let (mut br, mut bw) = backend.split();
    let (mut up, mut down) = (vec![0u8; PHASE_BUFFER], vec![0u8; PHASE_BUFFER]);
    let (mut from_client, mut from_backend) = (0u64, 0u64);
    while from_client + from_backend < limit {
        tokio::select! {
            r = cr.read(&mut up) => {
                let n = r?;
                if n == 0 {
                    bw.shutdown().await?;
                    tokio::io::copy(&mut br, &mut cw).await?;
                    cw.shutdown().await?;
                    return Ok(Handoff::Closed);
                }
                bw.write_all(&up[..n]).await?;
                from_client += n as u64;
            }
            r = br.read(&mut down) => {
                let n = r?;
                if n == 0 {
                    cw.shutdown().await?;
                    tokio::io::copy(&mut cr, &mut bw).await?;
                    bw.shutdown().await?;
                    return Ok(Handoff::Closed);
                }
                cw.write_all(&down[..n]).await?;
                from_backend += n as u64;
            }
        }
    }
    Ok(Handoff::Grown {
        client_read: from_client,
        backend_read: from_backend,
    })
}

/// The userspace path: copies both ways with large buffers, forwarding half-closes.
pub async fn copy(mut client: TcpStream, mut backend: TcpStream) -> std::io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, COPY_BUFFER, COPY_BUFFER)
        .await
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// Two connected TCP sockets on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    async fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await.expect("read");
        buf
    }

    #[tokio::test]
    async fn copies_until_the_limit_then_hands_over_with_nothing_held() {
        let ((mut client, mut client_in), (mut backend_in, mut backend)) =
            (pair().await, pair().await);
        let phase = tokio::spawn(async move {
            let h = copy_until(&mut client_in, &mut backend_in, 100).await;
            (h, client_in, backend_in)
        });
        client.write_all(&[1u8; 60]).await.expect("write");
        assert_eq!(read_exactly(&mut backend, 60).await, vec![1u8; 60]);
        backend.write_all(&[2u8; 50]).await.expect("write");
        assert_eq!(read_exactly(&mut client, 50).await, vec![2u8; 50]);
        let (h, _, _) = phase.await.expect("task");
        assert_eq!(
            h.expect("copy"),
            Handoff::Grown {
                client_read: 60,
                backend_read: 50,
            }
        );
    }

    #[tokio::test]
    async fn a_close_while_copying_is_forwarded_and_ends_it() {
        let ((mut client, mut client_in), (mut backend_in, mut backend)) =
            (pair().await, pair().await);
        let phase =
            tokio::spawn(async move { copy_until(&mut client_in, &mut backend_in, 1 << 30).await });
        client.write_all(b"last words").await.expect("write");
        client.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.expect("read to EOF");
        assert_eq!(got, b"last words");
        backend.write_all(b"reply").await.expect("write");
        backend.shutdown().await.expect("close");
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.expect("read to EOF");
        assert_eq!(reply, b"reply");
        assert_eq!(phase.await.expect("task").expect("copy"), Handoff::Closed);
    }
}
