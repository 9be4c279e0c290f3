//! Everything the binary prints: logs (tracing, stderr), errors in the house style, results
//! (stdout). Only this module writes to stdout.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing_subscriber::EnvFilter;

/// The JSON log file of the current run, once `run` knows its work directory.
static LOG_FILE: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Writes JSON log lines to [`LOG_FILE`] (nowhere until it is set).
struct LogFile;

impl std::io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match LOG_FILE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            Some(file) => file.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the structured log to `path` (JSON lines) from now on.
pub(crate) fn log_to(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *LOG_FILE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(file);
    Ok(())
}

/// Logs go to stderr at the level `-v`/`-q` choose (`RUST_LOG` overrides), and always, at
/// info (debug with `-vv`), as JSON lines to the run's log file once [`log_to`] is called.
pub(crate) fn init_tracing(verbose: u8, quiet: bool) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let file_level = if verbose >= 2 { "debug" } else { "info" };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(filter);
    let file = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(|| LogFile)
        .with_filter(EnvFilter::new(format!(
            "{file_level},sqlx=warn,hyper=warn,reqwest=warn"
        )));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
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
