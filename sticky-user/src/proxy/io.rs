//! The sockets hyper reads and writes: a TCP stream that first replays bytes read before hyper
//! took over (a PROXY header's remainder, the first request head), on a client's side passes
//! what it reads through the framing guard, and counts every byte read from the socket (the
//! splice's half-close accounting needs the total).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::guard::{Guard, Step};

pub struct Stream {
    pub tcp: TcpStream,
    /// Bytes to give the reader before reading `tcp` again: read before hyper took over, or
    /// held back by the guard until their head was checked.
    pub replay: BytesMut,
    /// Read from `tcp`, not yet passed by the guard (an incomplete request head); after an
    /// upgrade, bytes that belong to the peer.
    pub held: Vec<u8>,
    guard: Option<Guard>,
    /// After a refused head: end of stream once `replay` is read.
    ended: bool,
    /// Bytes read from `tcp` so far, including those read before this wrapper.
    pub read: u64,
}

impl Stream {
    /// A backend's stream: read as is.
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            replay: BytesMut::new(),
            held: Vec::new(),
            guard: None,
            ended: false,
            read: 0,
        }
    }

    /// A client's stream: `first` (already read, `already_read` bytes in all) and what
    /// follows pass through `guard`.
    pub fn guarded(tcp: TcpStream, first: Vec<u8>, already_read: u64, guard: Guard) -> Self {
        let mut s = Self {
            held: first,
            guard: Some(guard),
            read: already_read,
            ..Self::new(tcp)
        };
        s.release();
        s
    }

    /// Moves what the guard passes from `held` to `replay`.
    fn release(&mut self) {
        let Some(guard) = &mut self.guard else {
            self.replay.extend_from_slice(&self.held);
            self.held.clear();
            return;
        };
        match guard.scan(&self.held) {
            Step::Pass(n) => {
                self.replay.extend_from_slice(&self.held[..n]);
                self.held.drain(..n);
            }
            Step::Refuse(n, why) => {
                self.replay.extend_from_slice(&self.held[..n]);
                self.replay.extend_from_slice(&Guard::stand_in(why));
                self.held.clear();
                self.guard = None;
                self.ended = true;
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.replay.is_empty() {
                let n = this.replay.len().min(buf.remaining());
                buf.put_slice(&this.replay[..n]);
                this.replay.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
            let n = buf.filled().len() - before;
            this.read += n as u64;
            let Some(guard) = &mut this.guard else {
                return Poll::Ready(Ok(()));
            };
            if n == 0 {
                // End of stream: whatever is held goes as it is, for hyper to judge.
                this.guard = None;
                this.ended = true;
                this.release();
                continue;
            }
            if this.held.is_empty() {
                // The usual case, without copying: all of it passes.
                let passed = match guard.scan(&buf.filled()[before..]) {
                    Step::Pass(k) if k == n => return Poll::Ready(Ok(())),
                    Step::Pass(k) => {
                        this.held.extend_from_slice(&buf.filled()[before + k..]);
                        k
                    }
                    Step::Refuse(k, why) => {
                        this.replay.extend_from_slice(&Guard::stand_in(why));
                        this.guard = None;
                        this.ended = true;
                        k
                    }
                };
                buf.set_filled(before + passed);
                if passed > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                this.held.extend_from_slice(&buf.filled()[before..]);
                buf.set_filled(before);
                this.release();
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (peer.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn replays_first_then_reads_and_counts_the_socket() {
        let (mut peer, tcp) = pair().await;
        let first = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let mut s = Stream::guarded(tcp, first.clone(), 30, Guard::new(8192));
        // A head in three pieces is passed on only once complete, then a body as it comes.
        let (mut got, mut all) = (vec![0u8; 64], Vec::new());
        let n = s.read(&mut got).await.unwrap();
        all.extend_from_slice(&got[..n]);
        assert_eq!(all, first);
        let second = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        for piece in [&second[..10], &second[10..30], &second[30..]] {
            peer.write_all(piece).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let n = s.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], &second[..], "the head and its body at once");
        assert_eq!(s.read, 30 + second.len() as u64);
        // A refused head never comes out: the stand-in does, then the end.
        peer.write_all(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx")
            .await
            .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(
            rest,
            Guard::stand_in(super::super::framing::Ambiguous::SeveralLengths)
        );
    }
}
