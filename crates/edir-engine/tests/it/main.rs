//! The engine's test suite: whole runs against the in-process simulator, each on SQLite and on
//! Postgres (`EDIR_TEST_POSTGRES_URL`; with the `postgres-tests` feature a missing URL is a
//! failure, without it the Postgres half is skipped loudly).

#![allow(clippy::unwrap_used, reason = "test code panics on failure by design")]

mod run;
