//! Reading a head from a socket: until the parser finds it complete, refuses it, the peer
//! closes, or the deadline passes. Limits on size are the parser's.

use std::io;

use tokio::{
    io::{AsyncRead, AsyncReadExt as _},
    time::{Instant, timeout_at},
};

/// Why no head was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The parser refused the bytes.
    #[error("{0}")]
    Parse(E),
    /// The peer closed first; the caller's buffer tells whether it sent anything.
    #[error("connection closed before a complete head")]
    Closed,
    #[error("no complete head in time")]
    Timeout,
    #[error("read: {0}")]
    Io(#[from] io::Error),
}

/// Bytes asked of the socket per read.
const CHUNK: usize = 4096;

/// Appends what `stream` sends to `buf` until `parse` finds a complete head in it (bytes
/// already in `buf` count), and returns what `parse` made of it. Bytes past the head stay in
/// `buf` for the caller.
pub async fn until<S, T, E>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    deadline: Instant,
    mut parse: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, ReadError<E>>
where
    S: AsyncRead + Unpin,
{
    let mut chunk = [0u8; CHUNK];
    loop {
        if let Some(found) = parse(buf).map_err(ReadError::Parse)? {
            return Ok(found);
        }
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_elapsed) => return Err(ReadError::Timeout),
            Ok(Ok(0)) => return Err(ReadError::Closed),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt as _;

    use super::*;
    use crate::http::request::{self, HeadError};

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(200)
    }

    #[tokio::test]
    async fn reads_across_chunks_and_keeps_what_follows() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut buf = b"GET / HT".to_vec();
        let writer = tokio::spawn(async move {
            client.write_all(b"TP/1.1\r\nHost: x\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            client.write_all(b"\r\nbody").await.unwrap();
            client
        });
        let head = until(&mut server, &mut buf, soon(), |b| request::parse(b, 100))
            .await
            .unwrap();
        assert_eq!((head.path.as_str(), head.len), ("/", 27));
        assert_eq!(&buf[head.len..], b"body");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn parse_errors_closes_and_timeouts() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = Vec::new();
        let late = until(&mut server, &mut buf, soon(), |b| request::parse(b, 100)).await;
        assert!(matches!(late, Err(ReadError::Timeout)), "{late:?}");
        drop(client);
        let closed = until(&mut server, &mut buf, soon(), |b| request::parse(b, 100)).await;
        assert!(matches!(closed, Err(ReadError::Closed)), "{closed:?}");

        let mut big = vec![b'a'; 10];
        let refused = until(&mut server, &mut big, soon(), |b| request::parse(b, 8)).await;
        assert!(
            matches!(
                refused,
                Err(ReadError::Parse(HeadError::TooLarge { limit: 8 }))
            ),
            "{refused:?}"
        );
    }
}
