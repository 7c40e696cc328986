//! The status line of an HTTP/1.x response, parsed by httparse as far as it has arrived.

/// Why bytes cannot start an HTTP/1.x response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed status line: {reason}")]
pub struct StatusError {
    reason: &'static str,
}

/// The start of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusLine {
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub code: u16,
    /// Bytes of the status line including its line end; `None` while the rest of the line
    /// (the reason phrase) is still arriving.
    pub len: Option<usize>,
}

/// Parses the status line at the very start of `buf` (no blank line before it). `Ok(None)`
/// until the status code is here; from then on the code, and the line's length once its
/// end is here too. Nothing after the line is looked at.
pub fn status_line(buf: &[u8]) -> Result<Option<StatusLine>, StatusError> {
    if buf.starts_with(b"\r") || buf.starts_with(b"\n") {
        return Err(StatusError {
            reason: "blank line before the status line",
        });
    }
    // With no room for headers httparse stops right after the status line: at the first
    // header with `TooManyHeaders`, or at a blank line with a complete (empty) head.
    let mut resp = httparse::Response::new(&mut []);
    let outcome = resp.parse(buf);
    // httparse sets the reason once the whole line is in, the code once its digits are.
    let complete = resp.reason.is_some();
    match outcome {
        Err(e) if !complete => Err(StatusError {
            reason: super::request::reason(e),
        }),
        _ => Ok(resp
            .code
            .zip(resp.version)
            .map(|(code, version)| StatusLine {
                version,
                code,
                len: complete.then(|| line_len(buf)),
            })),
    }
}

/// Bytes through the first line feed; only called once httparse has seen the line end.
fn line_len(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |at| at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::fuzz::XorShift;

    fn code(buf: &[u8]) -> Option<u16> {
        status_line(buf).ok().flatten().map(|s| s.code)
    }

    #[test]
    fn status_lines_never_trust_the_peer() {
        assert_eq!(code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(code(b"HTTP/1.0 503\r\n"), Some(503));
        // A peer may close right after the code: it is known already.
        assert_eq!(code(b"HTTP/1.1 204"), Some(204));
        for bad in [
            &b""[..],
            b"HTTP/1.1",
            b"HTTP/1.1 ",
            b"HTTP/1.1 20",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 -20 OK",
            b"HTTP/2 200 OK",
            b"http/1.1 200 OK",
            b"HTTP/1.x 200 OK",
            b"\xff\xfe\x00garbage",
            b"\r\nHTTP/1.1 200 OK\r\n",
        ] {
            assert_eq!(code(bad), None, "{bad:?}");
        }
        assert!(status_line(b"SSH-2.0-OpenSSH_9.6\r\n").is_err());
        assert_eq!(status_line(b"HTTP/1."), Ok(None));
    }

    #[test]
    fn the_length_comes_with_the_line_end() {
        let line = |buf: &[u8]| status_line(buf).unwrap().unwrap();
        assert_eq!(
            line(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            StatusLine {
                version: 1,
                code: 101,
                len: Some(34)
            }
        );
        assert_eq!(line(b"HTTP/1.0 204 No Content\n\n").len, Some(24));
        assert_eq!(line(b"HTTP/1.1 200\r\n").len, Some(14));
        assert_eq!(line(b"HTTP/1.1 200 OK\r\nX: y\r\n").len, Some(17));
        // Headers after the line are not this parser's business.
        assert_eq!(line(b"HTTP/1.1 200 OK\r\nbad header\r\n").len, Some(17));
        assert_eq!(line(b"HTTP/1.1 200 O").len, None);
        assert_eq!(line(b"HTTP/1.1 200 OK\r").len, None);
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift::new(0x5747);
        let seeds: &[&[u8]] = &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\n\r\n"];
        for _ in 0..10_000 {
            let input = rng.input(seeds, b"\r\n 01HTTP/.", 80);
            if let Ok(Some(line)) = status_line(&input) {
                assert!(input.starts_with(b"HTTP/1."));
                assert!((100..=999).contains(&line.code));
                if let Some(len) = line.len {
                    assert!(input[..len].ends_with(b"\n"));
                    assert!(!input[..len - 1].contains(&b'\n'));
                }
            }
        }
    }
}
