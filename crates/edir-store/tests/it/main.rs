//! The store's test suite. Every test in `store_ops` runs twice: against a fresh SQLite file
//! and against a fresh Postgres database (`EDIR_TEST_POSTGRES_URL`; with the `postgres-tests`
//! feature a missing URL is a failure, without it the Postgres half is skipped loudly).

#![allow(clippy::unwrap_used, reason = "test code panics on failure by design")]

mod harness;
mod store_ops;
