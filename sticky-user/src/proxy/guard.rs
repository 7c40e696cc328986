//! Request framing checked on the raw bytes, before hyper sees them. hyper resolves some
//! ambiguous framings one way (Transfer-Encoding over Content-Length, duplicate equal lengths
//! merged) and drops the evidence from its header map; a server in front that resolved them
//! the other way would be desynchronised from us (request smuggling). So each request head is
//! held back until it is complete, checked here, and only then passed on; bodies are followed
//! (lengths, chunk sizes) to know where the next head starts. A refused head never reaches
//! hyper: in its place hyper reads a request that `forward` answers with 400 and a close.

use super::framing::{self, Ambiguous};
use crate::http::MAX_HEADERS;

/// The header of the stand-in request; its value says what was refused.
pub const REFUSED: &str = "x-sticky-refused-framing";

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
    /// Not followed any more (an upgrade, or something hyper refuses on its own).
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
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(rest) {
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
        let upgrade = req.method == Some("CONNECT")
            || req
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
        self.state = match framing {
            _ if upgrade => State::Off,
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

/// The size at the start of a chunk-size line (hex digits, before any extension).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}
