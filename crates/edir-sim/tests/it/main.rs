//! The simulator: pixel edits for every subcategory, the simulated models, and the server
//! (shapes, faults, capacity) over real HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used, reason = "test code panics on failure by design")]

mod edits;
mod server;
