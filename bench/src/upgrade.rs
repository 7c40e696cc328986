//! Head-first framing, for paths that need an HTTP request before anything else (sticky's
//! proxy mode reads the first request head to pick the backend): the client sends an
//! HTTP/1.1 upgrade request, the backend answers 101 and the connection becomes an echo
//! (`/echo`) or a byte sink (`/sink`, which answers the byte count when the client closes
//! its side). Used on every path, so the proxy's figures compare with the same tool's.

use std::io::{Read as _, Write as _};

use anyhow::Context as _;

use crate::serve::find;

/// The backend's answer to an upgrade request.
pub const ANSWER: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: bench\r\n\r\n";
/// The backend's answer to a request for anything else.
pub const REFUSED: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What the connection becomes after the 101.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every byte comes back.
    Echo,
    /// Bytes are counted and dropped; at the client's FIN the sink writes `<count>\n`.
    Sink,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Echo => "/echo",
            Self::Sink => "/sink",
        }
    }

    pub fn request(self) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: bench\r\n\r\n",
            self.path()
        )
        .into_bytes()
    }

    /// The kind a request head asks for, from its request line.
    pub fn of_head(head: &[u8]) -> Option<Self> {
        let line = head.split(|&b| b == b'\n').next()?;
        let mut words = line.split(|&b| b == b' ');
        let (method, path) = (words.next()?, words.next()?);
        if method != b"GET" {
            return None;
        }
        [Self::Echo, Self::Sink]
            .into_iter()
            .find(|k| k.path().as_bytes() == path)
    }
}

/// The length of the complete head at the start of `buf`, blank line included.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    find(buf, b"\r\n\r\n").map(|end| end + 4)
}

/// Checks that an answer head is a 101.
pub fn check_answer(head: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "expected 101 Switching Protocols, got {:?}",
        String::from_utf8_lossy(head.get(..40.min(head.len())).unwrap_or_default())
    );
    Ok(())
}

/// The sink's final count line.
pub fn parse_count(text: &[u8]) -> anyhow::Result<u64> {
    anyhow::ensure!(
        !text.is_empty(),
        "closed without the sink's byte count: the path did not pass the half-close on"
    );
    let text = std::str::from_utf8(text).context("sink count is not text")?;
    text.trim()
        .parse()
        .with_context(|| format!("sink count {text:?}"))
}

/// Client side, on a blocking stream: sends the request and reads the 101. Nothing may follow
/// the answer until the client speaks, so bytes after it are an error.
pub fn open(stream: &mut std::net::TcpStream, kind: Kind) -> anyhow::Result<()> {
    stream
        .write_all(&kind.request())
        .context("send the upgrade request")?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let len = loop {
        if let Some(len) = head_len(&buf) {
            break len;
        }
        anyhow::ensure!(buf.len() < 16 * 1024, "upgrade answer head too large");
        let n = stream.read(&mut chunk).context("read the upgrade answer")?;
        anyhow::ensure!(n > 0, "connection closed before the upgrade answer");
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    check_answer(buf.get(..len).unwrap_or_default())?;
    anyhow::ensure!(
        buf.len() == len,
        "{} unexpected bytes after the 101",
        buf.len() - len
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_their_kind() {
        for kind in [Kind::Echo, Kind::Sink] {
            let req = kind.request();
            assert_eq!(head_len(&req), Some(req.len()));
            assert_eq!(Kind::of_head(&req), Some(kind));
        }
        assert_eq!(
            Kind::Echo.request(),
            b"GET /echo HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: bench\r\n\r\n"
        );
        assert_eq!(Kind::of_head(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(Kind::of_head(b"POST /echo HTTP/1.1\r\n\r\n"), None);
        assert_eq!(Kind::of_head(b"GET /echoes HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn heads_end_at_the_blank_line() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nxyz"), Some(18));
        assert_eq!(head_len(ANSWER), Some(ANSWER.len()));
    }

    #[test]
    fn only_101_is_an_upgrade() {
        check_answer(ANSWER).unwrap();
        assert!(check_answer(REFUSED).is_err());
        assert!(check_answer(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn counts_parse() {
        assert_eq!(parse_count(b"1048576\n").unwrap(), 1_048_576);
        assert!(parse_count(b"").is_err());
        assert!(parse_count(b"12x\n").is_err());
    }
}
