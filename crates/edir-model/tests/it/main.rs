//! The clients against the simulator and against scripted servers: each fault class, retries
//! and `Retry-After`, failover, circuit breaking, every rung of the repair ladder.

#![allow(clippy::unwrap_used, reason = "test code panics on failure by design")]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::needless_pass_by_value,
    clippy::disallowed_methods,
    reason = "test fixtures"
)]

mod clients;
mod faults;
mod ladder;
mod scripted;
