//! The one body type the proxy sends either way: bytes it holds (its own answers, a request
//! body read in full before it is forwarded, a handshake response it looked into) followed by
//! the rest of a body still streaming, from the client (a request's) or from a backend
//! connection (a response's, which hands the connection back to its pool at its end).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::response_body::ResponseBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Relay {
    held: Option<Bytes>,
    rest: Rest,
}

/// What is still streaming after the held bytes.
pub enum Rest {
    None,
    Client(Incoming),
    Backend(Box<ResponseBody>),
}

/// What reading the start of a body gave.
pub enum Prefix<B> {
    /// The whole body (its end was reached within the limit).
    Whole(Bytes),
    /// The first bytes, at least the limit; the rest is still to come.
    Partial(Bytes, B),
}

impl From<Incoming> for Rest {
    fn from(b: Incoming) -> Self {
        Self::Client(b)
    }
}

impl From<ResponseBody> for Rest {
    fn from(b: ResponseBody) -> Self {
        Self::Backend(Box::new(b))
    }
}

impl Relay {
    pub fn bytes(b: impl Into<Bytes>) -> Self {
        Self {
            held: Some(b.into()),
            rest: Rest::None,
        }
    }

    pub fn empty() -> Self {
        Self::bytes(Bytes::new())
    }

    pub fn from_prefix<B: Into<Rest>>(prefix: Prefix<B>) -> Self {
        match prefix {
            Prefix::Whole(b) => Self::bytes(b),
            Prefix::Partial(b, rest) => Self {
                held: Some(b),
                rest: rest.into(),
            },
        }
    }

    pub fn stream(rest: impl Into<Rest>) -> Self {
        Self {
            held: None,
            rest: rest.into(),
        }
    }

    /// The bytes held, if they are the whole body.
    pub fn whole(&self) -> Option<Bytes> {
        matches!(self.rest, Rest::None).then(|| self.held.clone().unwrap_or_default())
    }

    /// The held bytes, taken, and what streams after them.
    pub fn into_parts(self) -> (Bytes, Rest) {
        (self.held.unwrap_or_default(), self.rest)
    }
}

/// Reads `body` until its end, until at least `limit` bytes are held, or until `patience` has
/// passed (a client may wait for the answer before it sends more). Trailers are dropped (the
/// proxy forwards no trailers).
pub async fn read_prefix<B>(
    mut body: B,
    limit: usize,
    patience: Duration,
) -> Result<Prefix<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
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
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(b) = this.held.take()
            && !b.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let frame = match &mut this.rest {
            Rest::None => None,
            Rest::Client(b) => ready!(Pin::new(b).poll_frame(cx)).map(|f| f.map_err(Into::into)),
            Rest::Backend(b) => {
                ready!(Pin::new(b.as_mut()).poll_frame(cx)).map(|f| f.map_err(Into::into))
            }
        };
        if frame.is_none() {
            this.rest = Rest::None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.held.as_ref().is_none_or(Bytes::is_empty)
            && match &self.rest {
                Rest::None => true,
                Rest::Client(b) => b.is_end_stream(),
                Rest::Backend(b) => b.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |b| b.len() as u64);
        let rest = match &self.rest {
            Rest::None => SizeHint::with_exact(0),
            Rest::Client(b) => b.size_hint(),
            Rest::Backend(b) => b.size_hint(),
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + held);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}
