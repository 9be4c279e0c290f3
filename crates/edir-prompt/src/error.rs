//! Errors of loading and rendering templates; each names the template at fault.

use std::path::PathBuf;

/// What can go wrong with a prompt template.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The template file could not be read.
    #[error("cannot read template `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The template does not parse.
    #[error("template `{name}` has a syntax error at line {line}: {message}")]
    Syntax {
        /// The template's name (its path, or the stage for inline templates).
        name: String,
        /// 1-based line in the template text.
        line: usize,
        /// minijinja's description.
        message: String,
    },
    /// Rendering failed, most often because a variable is missing.
    #[error("cannot render template `{name}`{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Render {
        /// The template's name.
        name: String,
        /// 1-based line in the template text, when known.
        line: Option<usize>,
        /// minijinja's description.
        message: String,
    },
}
