//! `edir-synth`: parse the command line, run the command, map the outcome to an exit code.
//!
//! Exit codes: 0 done; 1 finished with failed samples; 2 usage, configuration or internal
//! error; 130 interrupted. A broken stdout pipe exits 0.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
