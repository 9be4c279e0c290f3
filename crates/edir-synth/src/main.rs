//! `edir-synth`: parse the command line, run the command, map the outcome to an exit code.
//!
//! Exit codes: 0 done; 1 finished with failed samples; 2 usage, configuration or internal
//! error; 130 interrupted. A broken stdout pipe exits 0.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;

/// Exit code of a successful command.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code of a run that finished with failed samples.
#[expect(
    dead_code,
    reason = "used by `run` once the engine lands; documented in the README"
)]
pub(crate) const EXIT_FAILED_SAMPLES: u8 = 1;
/// Exit code of a usage, configuration or internal error.
pub(crate) const EXIT_ERROR: u8 = 2;

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
