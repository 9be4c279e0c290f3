//! `edir-synth`: parse the command line, run the command, map the outcome to an exit code.
//!
//! Exit codes: 0 done; 1 finished with failed samples; 2 usage, configuration or internal
//! error; 130 interrupted. A broken stdout pipe exits 0.

/// mimalloc: the engine allocates and frees across threads at thousands of calls a second,
/// where glibc's malloc cost a third of the throughput (`scripts/bench-engine`: 3,327 against
/// 4,955 calls/s).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's option enum (`mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Its default in mimalloc 3 (ms; `options.c`).
const MI_DEFAULT_PURGE_DELAY: std::ffi::c_long = 1000;

/// Makes mimalloc give freed memory back at once. With its 1 s default a 110,797-sample run
/// peaked at 384 MB RSS; purging at once, 253 MB (the goal is under 300 MB), for about 3% of
/// the throughput. Changes nothing unless the option reads as the documented default, so a
/// renumbered enum in a later mimalloc is harmless (a test checks the number).
#[expect(
    unsafe_code,
    reason = "the second audited exception: two calls that take any option number"
)]
fn purge_freed_memory_at_once() {
    if purge_delay() == MI_DEFAULT_PURGE_DELAY {
        // SAFETY: `mi_option_set` accepts any option number (out of range ones are ignored)
        // and may be called from any thread at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
    }
}

/// mimalloc's purge delay (ms).
#[expect(unsafe_code, reason = "see `purge_freed_memory_at_once`")]
fn purge_delay() -> std::ffi::c_long {
    // SAFETY: as in `purge_freed_memory_at_once`: any option number, any thread.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

mod cli;
mod commands;
mod output;
mod resume;
mod run;
mod status;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;

/// Exit code of a successful command.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code of a run that finished with a subcategory short of its quota (failed or rejected
/// samples the over-generation budget could not replace).
pub(crate) const EXIT_FAILED_SAMPLES: u8 = 1;
/// Exit code of a usage, configuration or internal error.
pub(crate) const EXIT_ERROR: u8 = 2;
/// Exit code of a run stopped by Ctrl-C or SIGTERM (run it again to resume).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() {
                EXIT_ERROR
            } else {
                EXIT_OK
            };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    output::init_tracing(cli.verbose, cli.quiet);
    match commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            if output::is_broken_pipe(&error) {
                return ExitCode::from(EXIT_OK);
            }
            output::print_error(&error);
            ExitCode::from(EXIT_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mimalloc_purges_at_once() {
        super::purge_freed_memory_at_once();
        assert_eq!(
            super::purge_delay(),
            0,
            "mimalloc purge_delay is not option 15"
        );
    }
}
