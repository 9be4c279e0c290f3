//! `check`'s diagnostics, one test per class of bad pipeline, each pinning the message and the
//! location; the taxonomy; and the agreement of `docker-compose.yml` with `pipelines/full.yaml`.

#![allow(clippy::unwrap_used, reason = "test code panics on failure by design")]

mod check;
mod compose;
mod fixture;
mod taxonomy;
