//! Diagnostics: a message, where, an optional label under the caret, and help.
//!
//! Rendered like rustc and uv:
//!
//! ```text
//! error: unknown stage `captoin` in `needs`
//!   --> pipelines/full.yaml:14:17
//!    |
//! 14 |     needs: [captoin]
//!    |             ^^^^^^^ not defined in this pipeline
//!    = help: did you mean `caption`?
//! ```

use std::fmt::Write as _;

use crate::source::{Sources, Span};

/// How bad a problem is: errors make `check` fail, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The pipeline cannot run.
    Error,
    /// Suspicious but runnable.
    Warning,
}

/// One problem found in a pipeline or a file it refers to.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, lower case, values in backticks.
    pub message: String,
    /// Where.
    pub span: Span,
    /// A short note under the caret.
    pub label: Option<String>,
    /// How to fix it, when likely.
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(message: impl Into<String>, span: Span) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: None,
            help: None,
        }
    }

    /// A warning at `span`.
    pub fn warning(message: impl Into<String>, span: Span) -> Self {
        Self {
            severity: Severity::Warning,
            message: message.into(),
            span,
            label: None,
            help: None,
        }
    }

    /// Adds the note shown under the caret.
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Adds a help line.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Sets the note shown under the caret, in place.
    pub fn labelled(&mut self, label: impl Into<String>) -> &mut Self {
        self.label = Some(label.into());
        self
    }

    /// Adds a help line when `help` is `Some`.
    #[must_use]
    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        self.help = help.or(self.help);
        self
    }

    /// Whether this is an error.
    #[must_use]
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `path:line:column`, or just the path when the span has no position.
    #[must_use]
    pub fn location(&self, sources: &Sources) -> String {
        let path = sources.path(self.span.source).display().to_string();
        if self.span.has_position() {
            format!("{path}:{}:{}", self.span.line, self.span.column)
        } else {
            path
        }
    }

    /// Renders the diagnostic with its snippet, as `check` prints it.
    #[must_use]
    pub fn render(&self, sources: &Sources) -> String {
        let mut out = String::new();
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{level}: {}", self.message);
        let line_text = sources
            .line_text(self.span.source, self.span.line)
            .filter(|_| self.span.has_position());
        let gutter = if self.span.has_position() {
            self.span.line.to_string().len()
        } else {
            1
        };
        let pad = " ".repeat(gutter);
        let _ = writeln!(out, "{pad}--> {}", self.location(sources));
        if let Some(text) = line_text {
            let text = text.replace('\t', " ");
            let column = self.span.column.max(1) as usize;
            let available = text.chars().count().saturating_sub(column - 1).max(1);
            let carets = "^".repeat((self.span.len.max(1) as usize).min(available));
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{} | {text}", self.span.line);
            let label = self
                .label
                .as_deref()
                .map(|l| format!(" {l}"))
                .unwrap_or_default();
            let _ = writeln!(out, "{pad} | {}{carets}{label}", " ".repeat(column - 1));
        } else if let Some(label) = &self.label {
            let _ = writeln!(out, "{pad} = note: {label}");
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "{pad} = help: {help}");
        }
        out
    }
}

/// Renders all diagnostics, errors first in file order, then a summary line.
#[must_use]
pub fn render_all(diagnostics: &[Diagnostic], sources: &Sources) -> String {
    let mut sorted: Vec<&Diagnostic> = diagnostics.iter().collect();
    sorted.sort_by_key(|d| (d.severity, d.span.source, d.span.line, d.span.column));
    let mut out = String::new();
    for d in &sorted {
        out.push_str(&d.render(sources));
        out.push('\n');
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    if errors > 0 || warnings > 0 {
        let _ = writeln!(
            out,
            "{}, {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_caret_under_the_span() {
        let mut sources = Sources::default();
        let id = sources.add(
            "pipelines/full.yaml",
            "stages:\n  a:\n    needs: [captoin]\n",
        );
        let d = Diagnostic::error(
            "unknown stage `captoin` in `needs`",
            Span {
                source: id,
                line: 3,
                column: 13,
                len: 7,
            },
        )
        .with_label("not defined in this pipeline")
        .with_help("did you mean `caption`?");
        let text = d.render(&sources);
        let expected = "\
error: unknown stage `captoin` in `needs`
 --> pipelines/full.yaml:3:13
  |
3 |     needs: [captoin]
  |             ^^^^^^^ not defined in this pipeline
  = help: did you mean `caption`?
";
        assert_eq!(text, expected);
    }
}
