//! Everything the binary prints: logs (tracing, stderr), errors in the house style, results
//! (stdout). Only this module writes to stdout.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing_subscriber::EnvFilter;

/// Logs go to stderr at the level `-v`/`-q` choose; `RUST_LOG` overrides.
pub(crate) fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Prints an error as `error: ...` with one `Caused by:` line per source.
pub(crate) fn print_error(error: &anyhow::Error) {
    let mut text = format!("error: {error}\n");
    for cause in error.chain().skip(1) {
        let _ = writeln!(text, "  Caused by: {cause}");
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Whether the error is a write to a closed stdout (`edir-synth taxonomy | head`).
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes a result to stdout.
pub(crate) fn stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes diagnostics or notes to stderr.
pub(crate) fn stderr(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}
