//! The simulator: pixel edits for every subcategory, the simulated models, and the server
//! (shapes, faults, capacity) over real HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used, reason = "test code panics on failure by design")]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::float_cmp,
    clippy::needless_pass_by_value,
    clippy::semicolon_if_nothing_returned,
    reason = "test fixtures: small exact values"
)]

mod edits;
mod server;
mod typed;
