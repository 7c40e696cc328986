//! A backend response's body (RFC 9112 §6.3): none, a length, chunked (decoded: hyper frames
//! it again for the client), or up to the connection's end; read from the backend connection
//! as hyper asks for it, and the connection given back to its pool at the end when both
//! sides keep it open.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::{backend::BackendConn, framing::content_length, pool::Pool};

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes: the connection cannot be used again.
    ToClose,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("several or invalid Content-Length")]
    Length,
}

/// How the body of a response with `status` and these header lines (names and values as
/// sent) to a `method` request ends: read off the lines in one pass, before they become a
/// header map.
pub fn framing<'a>(
    method: &Method,
    status: StatusCode,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<Framing, FramingError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let (mut coding, mut length) = (None, None);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            coding = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(value).ok_or(FramingError::Length)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::Length);
            }
            length = Some(n);
        }
    }
    // The last coding of the last line decides.
    if let Some(last) = coding {
        let chunked = last
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::ToClose
        });
    }
    Ok(match length {
        None => Framing::ToClose,
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

#[derive(Debug)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The line end after a chunk's data.
    ChunkEnd,
    Trailer,
    ToClose,
    Done,
}

/// Where a finished connection goes back to.
pub struct Return {
    pub pool: Arc<Pool>,
    pub addr: std::net::SocketAddr,
}

pub struct ResponseBody {
    conn: Option<BackendConn>,
    state: State,
    /// Given back at the end, if both sides keep the connection open.
    back: Option<Return>,
}

impl ResponseBody {
    pub fn new(conn: BackendConn, framing: Framing, back: Option<Return>) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::ToClose => State::ToClose,
        };
        let back = back.filter(|_| framing != Framing::ToClose);
        let mut body = Self {
            conn: Some(conn),
            state,
            back,
        };
        body.finish_if_done();
        body
    }

    fn finish_if_done(&mut self) {
        if matches!(self.state, State::Done)
            && let Some(mut conn) = self.conn.take()
            && let Some(back) = self.back.take()
            // Bytes past the body are nobody's: such a connection is not used again.
            && conn.buffered().is_empty()
        {
            back.pool.put(back.addr, conn);
        }
    }

    /// The next frame of data, or `None` at the end.
    fn next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        loop {
            let buf = conn.buffered();
            match self.state {
                State::Done => return Poll::Ready(Ok(None)),
                State::Length(left) | State::ChunkData(left) if !buf.is_empty() => {
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = match self.state {
                        State::Length(_) if n == left => State::Done,
                        State::Length(_) => State::Length(left - n),
                        _ if n == left => State::ChunkEnd,
                        _ => State::ChunkData(left - n),
                    };
                    return Poll::Ready(Ok(Some(data)));
                }
                State::ToClose if !buf.is_empty() => {
                    return Poll::Ready(Ok(Some(buf.split().freeze())));
                }
                State::ChunkSize | State::ChunkEnd | State::Trailer => {
                    if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                        let line = buf.split_to(end + 1);
                        self.state = next_after_line(&self.state, &line)?;
                        continue;
                    }
                    if buf.len() > MAX_LINE {
                        return Poll::Ready(Err(invalid("chunk line too long")));
                    }
                }
                _ => {}
            }
            let n = ready!(conn.poll_fill(cx))?;
            if n == 0 {
                return Poll::Ready(match self.state {
                    State::ToClose => {
                        self.state = State::Done;
                        Ok(None)
                    }
                    _ => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backend closed within a response body",
                    )),
                });
            }
        }
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// The state after a complete line (with its line feed) in a line-shaped state.
fn next_after_line(state: &State, line: &[u8]) -> io::Result<State> {
    let text = line
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(line);
    Ok(match state {
        State::ChunkEnd if text.is_empty() => State::ChunkSize,
        State::ChunkEnd => return Err(invalid("no line end after chunk data")),
        State::Trailer if text.is_empty() => State::Done,
        State::Trailer => State::Trailer,
        _ => {
            // A size in hex, then perhaps `;extensions`.
            let digits = text
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            let size = (!digits.is_empty() && digits.len() <= 15)
                .then(|| std::str::from_utf8(digits).ok())
                .flatten()
                .and_then(|d| u64::from_str_radix(d, 16).ok())
                .ok_or_else(|| invalid("invalid chunk size"))?;
            if size == 0 {
                State::Trailer
            } else {
                State::ChunkData(size)
            }
        }
    })
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let next = ready!(this.next(cx));
        match &next {
            Ok(_) => this.finish_if_done(),
            // A broken connection goes back to no pool.
            Err(_) => {
                this.conn = None;
                this.state = State::Done;
            }
        }
        Poll::Ready(next.transpose().map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let ok = StatusCode::OK;
        let f = |m: &Method, s: StatusCode, h: &[(&str, &str)]| {
            framing(m, s, h.iter().map(|(k, v)| (*k, v.as_bytes())))
        };
        assert_eq!(
            f(&Method::HEAD, ok, &[("content-length", "5")]),
            Ok(Framing::Empty)
        );
        for s in [
            StatusCode::NO_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::CONTINUE,
        ] {
            assert_eq!(f(&get, s, &[("content-length", "5")]), Ok(Framing::Empty));
        }
        assert_eq!(
            f(&get, ok, &[("content-length", "5")]),
            Ok(Framing::Length(5))
        );
        assert_eq!(f(&get, ok, &[("content-length", "0")]), Ok(Framing::Empty));
        assert_eq!(
            f(
                &get,
                ok,
                &[("content-length", "5"), ("content-length", "5")]
            ),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f(
                &get,
                ok,
                &[("content-length", "5"), ("content-length", "6")]
            ),
            Err(FramingError::Length)
        );
        assert_eq!(
            f(&get, ok, &[("content-length", "-1")]),
            Err(FramingError::Length)
        );
        assert_eq!(
            f(
                &get,
                ok,
                &[
                    ("transfer-encoding", "gzip, Chunked"),
                    ("content-length", "5")
                ]
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f(&get, ok, &[("transfer-encoding", "gzip")]),
            Ok(Framing::ToClose)
        );
        assert_eq!(f(&get, ok, &[]), Ok(Framing::ToClose));
    }

    #[test]
    fn chunk_lines() {
        let size = |l: &[u8]| next_after_line(&State::ChunkSize, l);
        assert!(matches!(size(b"1a\r\n"), Ok(State::ChunkData(26))));
        assert!(matches!(size(b"A;ext=1\n"), Ok(State::ChunkData(10))));
        assert!(matches!(size(b"0\r\n"), Ok(State::Trailer)));
        for bad in [&b"\r\n"[..], b"x\r\n", b"-1\r\n", b"1000000000000000\r\n"] {
            assert!(size(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            next_after_line(&State::ChunkEnd, b"\r\n"),
            Ok(State::ChunkSize)
        ));
        assert!(next_after_line(&State::ChunkEnd, b"xx\r\n").is_err());
        assert!(matches!(
            next_after_line(&State::Trailer, b"a: b\r\n"),
            Ok(State::Trailer)
        ));
        assert!(matches!(
            next_after_line(&State::Trailer, b"\r\n"),
            Ok(State::Done)
        ));
    }
}
