//! The one body type the proxy sends either way: bytes it holds (its own answers, a request
//! body read in full before it is forwarded, a handshake response it looked into) followed by
//! the rest of a body still streaming; and, for responses, the backend connection handed back
//! to its pool once the body has ended.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::pool::Checkin;

pub struct Relay {
    held: Option<Bytes>,
    rest: Option<Incoming>,
    on_end: Option<Checkin>,
}

/// What reading the start of a body gave.
pub enum Prefix {
    /// The whole body (its end was reached within the limit).
    Whole(Bytes),
    /// The first bytes, at least the limit; the rest is still to come.
    Partial(Bytes, Incoming),
}

impl Relay {
    pub fn bytes(b: impl Into<Bytes>) -> Self {
        Self {
            held: Some(b.into()),
            rest: None,
            on_end: None,
        }
    }

    pub fn empty() -> Self {
        Self::bytes(Bytes::new())
    }

    pub fn from_prefix(prefix: Prefix) -> Self {
        match prefix {
            Prefix::Whole(b) => Self::bytes(b),
            Prefix::Partial(b, rest) => Self {
                held: Some(b),
                rest: Some(rest),
                on_end: None,
            },
        }
    }

    pub fn stream(rest: Incoming) -> Self {
        Self {
            held: None,
            rest: Some(rest),
            on_end: None,
        }
    }

    /// Another body with the same bytes, if this one holds all of its bytes.
    pub fn copy(&self) -> Option<Self> {
        self.rest
            .is_none()
            .then(|| Self::bytes(self.held.clone().unwrap_or_default()))
    }

    /// Calls `on_end` when the body has been read to its end (at once if it is empty).
    pub fn then(mut self, on_end: Checkin) -> Self {
        self.on_end = Some(on_end);
        self.end_if_done();
        self
    }

    fn end_if_done(&mut self) {
        if self.is_end_stream()
            && let Some(c) = self.on_end.take()
        {
            c.done();
        }
    }
}

/// Reads `body` until its end, until at least `limit` bytes are held, or until `patience` has
/// passed (a client may wait for the answer before it sends more). Trailers are dropped (the
/// proxy forwards no trailers).
pub async fn read_prefix(
    mut body: Incoming,
    limit: usize,
    patience: Duration,
) -> Result<Prefix, hyper::Error> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut held = Vec::new();
    while held.len() < limit {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break,
            Ok(None) => return Ok(Prefix::Whole(held.into())),
            Ok(Some(frame)) => {
                if let Ok(data) = frame?.into_data() {
                    held.extend_from_slice(&data);
                }
            }
        }
    }
    if body.is_end_stream() {
        Ok(Prefix::Whole(held.into()))
    } else {
        Ok(Prefix::Partial(held.into(), body))
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(b) = this.held.take()
            && !b.is_empty()
        {
            this.end_if_done();
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let Some(rest) = this.rest.as_mut() else {
            this.end_if_done();
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(rest).poll_frame(cx));
        match &frame {
            None => {
                this.rest = None;
                this.end_if_done();
            }
            Some(Ok(_)) => this.end_if_done(),
            // The backend connection broke: it goes back to no pool.
            Some(Err(_)) => this.on_end = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.held.as_ref().is_none_or(Bytes::is_empty)
            && self.rest.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |b| b.len() as u64);
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + held);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}
