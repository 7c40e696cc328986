//! Backend health checks: the `[health]` settings (global, with per-backend overrides), one
//! probe (TCP connect or HTTP status line), and the rise/fall tracker that turns probe results
//! into up/down transitions the way HAProxy does.
//!
//! Checks are opt-in: with nothing configured every backend stays in the table.

mod config;
mod probe;
mod tracker;

pub use config::{
    CheckKind, DEFAULT_FALL, DEFAULT_INTERVAL, DEFAULT_RISE, DEFAULT_STATUS, DEFAULT_TIMEOUT,
    HealthCheck, HealthConfig, HealthError, HealthLayer, MAX_COUNT,
};
pub use probe::probe;
pub use tracker::{Tracker, Transition};
