//! Request framing checked on the raw bytes, before hyper sees them. hyper resolves some
//! ambiguous framings one way (Transfer-Encoding over Content-Length, duplicate equal lengths
//! merged) and drops the evidence from its header map; a server in front that resolved them
//! the other way would be desynchronised from us (request smuggling). So each request head is
//! held back until it is complete, checked here, and only then passed on; bodies are followed
//! (lengths, chunk sizes) to know where the next head starts. A refused head never reaches
//! hyper: in its place hyper reads a request that `forward` answers with 400 and a close.

use http::HeaderName;

use super::framing::{self, Ambiguous};
use crate::http::header_slots;

/// The header of the stand-in request; its value says what was refused.
pub const REFUSED: &str = "x-sticky-refused-framing";
/// [`REFUSED`] as a name: looked up on every request, parsed once.
pub static REFUSED_NAME: HeaderName = HeaderName::from_static(REFUSED);

/// Longest chunk-size or trailer line followed; hyper refuses longer ones itself.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The line end after a chunk's data.
    ChunkEnd,
    Trailer,
    /// Not followed any more (a CONNECT tunnel, or something hyper refuses on its own).
    Off,
}

/// What to do with the bytes not yet passed on.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The first `n` may go; the rest is the start of a head still incomplete.
    Pass(usize),
    /// The first `n` may go; the head after them is refused.
    Refuse(usize, Ambiguous),
}

#[derive(Debug)]
pub struct Guard {
    state: State,
    max_head: usize,
}

impl Guard {
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            max_head,
        }
    }

    /// The stand-in request for a refused head.
    pub fn stand_in(why: Ambiguous) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nhost: sticky\r\n{REFUSED}: {why}\r\n\r\n").into_bytes()
    }

    /// Follows `window`, the bytes not yet passed on (the same unpassed bytes again, plus
    /// new ones, on the next call).
    pub fn scan(&mut self, window: &[u8]) -> Step {
        let mut at = 0;
        while at < window.len() {
            let rest = &window[at..];
            match self.state {
                State::Off => return Step::Pass(window.len()),
                State::Head => match self.head(rest) {
                    Ok(Some(len)) => at += len,
                    Ok(None) => return Step::Pass(at),
                    Err(why) => return Step::Refuse(at, why),
                },
                State::Body(left) => {
                    let n = left.min(rest.len() as u64);
                    at += n as usize;
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Body(left - n)
                    };
                }
                State::ChunkData(left) => {
                    let n = left.min(rest.len() as u64);
                    at += n as usize;
                    self.state = if n == left {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left - n)
                    };
                }
                State::ChunkSize | State::ChunkEnd | State::Trailer => match self.line(rest) {
                    Some(n) => at += n,
                    None => return Step::Pass(at),
                },
            }
        }
        Step::Pass(at)
    }

    /// A head at the start of `rest`: its length once complete and acceptable.
    fn head(&mut self, rest: &[u8]) -> Result<Option<usize>, Ambiguous> {
        let mut slots = header_slots();
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(rest, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if rest.len() < self.max_head => return Ok(None),
            // Too large or malformed: hyper refuses it on its own.
            _ => {
                self.state = State::Off;
                return Ok(Some(rest.len()));
            }
        };
        let pairs = req.headers.iter().map(|h| (h.name, h.value));
        let framing = framing::check(pairs, req.version.unwrap_or(1))?;
        // A request asking for an upgrade is followed like any other: the backend may decline
        // it (no 101) and the connection stays HTTP. After a 101 the socket leaves hyper and
        // what the guard still holds goes along (`upgrade::take_back`). CONNECT is a tunnel.
        let tunnel = req.method == Some("CONNECT");
        self.state = match framing {
            _ if tunnel => State::Off,
            framing::Length::Chunked => State::ChunkSize,
            framing::Length::Bytes(0) => State::Head,
            framing::Length::Bytes(n) => State::Body(n),
        };
        Ok(Some(len))
    }

    /// Follows a line-shaped part (a chunk size, the line end after chunk data, a trailer):
    /// the bytes it takes once its line feed is here.
    fn line(&mut self, rest: &[u8]) -> Option<usize> {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE {
                self.state = State::Off;
                return Some(rest.len());
            }
            return None;
        };
        let line = &rest[..=end];
        let blank = line.trim_ascii().is_empty();
        self.state = match self.state {
            State::ChunkEnd if blank => State::ChunkSize,
            State::ChunkSize => match chunk_size(line) {
                Some(0) => State::Trailer,
                Some(n) => State::ChunkData(n),
                None => State::Off,
            },
            State::Trailer if blank => State::Head,
            State::Trailer => State::Trailer,
            // Anything unexpected: hyper judges it (and refuses it).
            _ => State::Off,
        };
        Some(end + 1)
    }
}

/// The size at the start of a chunk-size line (hex digits, before any extension), read as
/// hyper reads it: any number of leading zeros, then what fits in 64 bits. A size hyper
/// would refuse (no digit, an overflow) is `None`: hyper ends the connection on it.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let significant = line[..digits]
        .iter()
        .position(|&b| b != b'0')
        .map_or(&[][..], |first| &line[first..digits]);
    if significant.len() > 16 {
        return None;
    }
    significant.iter().try_fold(0u64, |n, &b| {
        Some(n << 4 | u64::from(char::from(b).to_digit(16)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `size` as a socket would; what passes and the refusal.
    fn through(stream: &[u8], size: usize) -> (Vec<u8>, Option<Ambiguous>) {
        let (mut guard, mut held, mut passed) = (Guard::new(8192), Vec::new(), Vec::new());
        for piece in stream.chunks(size) {
            held.extend_from_slice(piece);
            match guard.scan(&held) {
                Step::Pass(n) => {
                    passed.extend(held.drain(..n));
                }
                Step::Refuse(n, why) => {
                    passed.extend_from_slice(&held[..n]);
                    return (passed, Some(why));
                }
            }
        }
        (passed, None)
    }

    #[test]
    fn chunk_sizes_are_read_as_hyper_reads_them() {
        assert_eq!(chunk_size(b"1a\r\n"), Some(0x1a));
        assert_eq!(chunk_size(b"00000000000000000005\r\n"), Some(5));
        assert_eq!(chunk_size(b"0000\r\n"), Some(0));
        assert_eq!(chunk_size(b"ffffffffffffffff;ext\r\n"), Some(u64::MAX));
        assert_eq!(chunk_size(b"10000000000000000\r\n"), None);
        assert_eq!(chunk_size(b"\r\n"), None);
    }

    #[test]
    fn bodies_are_followed_to_the_next_head_in_any_pieces() {
        let good = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;x=y\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
            POST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nGET \
            GET /c HTTP/1.1\r\n\r\n";
        let bad = b"GET /d HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = [&good[..], &bad[..]].concat();
        for size in [1, 2, 3, 7, 16, 1000] {
            let (passed, why) = through(&stream, size);
            assert_eq!(passed, good, "pieces of {size}");
            assert_eq!(why, Some(Ambiguous::LengthAndChunked), "pieces of {size}");
        }
    }

    #[test]
    fn a_declined_upgrade_is_still_watched_and_tunnels_and_what_hyper_refuses_end_it() {
        // The backend may answer the upgrade with 200: the next head is still checked.
        let up = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let smuggled = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        let (passed, why) = through(&[&up[..], &smuggled[..]].concat(), 5);
        assert_eq!(
            (passed, why),
            (up.to_vec(), Some(Ambiguous::SeveralLengths))
        );
        // After a 101 the client's frames are no request: they pass, in order.
        let frames = [&up[..], &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f][..]].concat();
        assert_eq!(through(&frames, 3), (frames.clone(), None));
        let connect = b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org\r\n\r\n\
            GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(through(connect, 5), (connect.to_vec(), None));
        let folded = b"GET / HTTP/1.1\r\nX: 1\r\n 2\r\n\r\n";
        assert_eq!(through(folded, 4), (folded.to_vec(), None));
        let huge = [&b"GET / HTTP/1.1\r\nX: "[..], &[b'a'; 9000]].concat();
        assert_eq!(
            through(&huge, 1000).0,
            huge,
            "too large: passed, for hyper's 431"
        );
    }
}
