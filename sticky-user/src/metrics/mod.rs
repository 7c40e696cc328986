//! The Prometheus endpoint: [`render`] encodes a [`Status`](crate::status::Status) through
//! prometheus-client in the text exposition format 0.0.4, and [`serve`] answers
//! `GET /metrics` with a deliberately small HTTP/1.1 server that reads one request head per
//! connection, answers it and closes.

mod exposition;
mod server;

/// A status with every field set, for tests of what renders it.
#[cfg(test)]
pub(crate) use exposition::tests::sample as sample_status;
pub use exposition::{CONTENT_TYPE, render};
pub use server::{Refused, Snapshot, bind, parse_request, serve};
