//! The command line as users run it: exit codes, stdout and stderr.

#![allow(clippy::unwrap_used, reason = "test code panics on failure by design")]

mod check;
mod resume;
mod run;
mod score;
