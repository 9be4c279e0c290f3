//! Source files and spans: every diagnostic points into a file this map holds.
//!
//! Invariant: a [`Span`]'s `source` indexes the [`Sources`] it was made with; lines and columns
//! are 1-based and counted in characters, as editors show them.

use std::path::{Path, PathBuf};

/// Index of a file in [`Sources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SourceId(pub u32);

/// A place in a source file: 1-based line and column, and a length in characters for the caret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// The file.
    pub source: SourceId,
    /// 1-based line; 0 when unknown.
    pub line: u32,
    /// 1-based column in characters; 0 when unknown.
    pub column: u32,
    /// Length in characters of the thing at fault (at least 1 when rendered).
    pub len: u32,
}

impl Span {
    /// A span covering a whole file, for problems with no better place (a missing file).
    #[must_use]
    pub fn file(source: SourceId) -> Self {
        Self {
            source,
            line: 0,
            column: 0,
            len: 0,
        }
    }

    /// Whether the span has a line to show.
    #[must_use]
    pub fn has_position(&self) -> bool {
        self.line > 0
    }
}

/// One loaded file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as shown to the user (relative when given relative).
    pub path: PathBuf,
    /// The whole text.
    pub text: String,
}

/// All files read while compiling a pipeline: the pipeline, the taxonomy, prompts, schemas.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    /// Adds a file and returns its id.
    pub fn add(&mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> SourceId {
        let id = SourceId(u32::try_from(self.files.len()).unwrap_or(u32::MAX));
        self.files.push(SourceFile {
            path: path.into(),
            text: text.into(),
        });
        id
    }

    /// The file with this id.
    #[must_use]
    pub fn get(&self, id: SourceId) -> Option<&SourceFile> {
        self.files.get(id.0 as usize)
    }

    /// The path of the file with this id (empty when unknown).
    #[must_use]
    pub fn path(&self, id: SourceId) -> &Path {
        self.get(id).map_or(Path::new(""), |f| f.path.as_path())
    }

    /// The text of a 1-based line, without its line break.
    #[must_use]
    pub fn line_text(&self, id: SourceId, line: u32) -> Option<&str> {
        let file = self.get(id)?;
        file.text.lines().nth((line as usize).checked_sub(1)?)
    }

    /// Converts a byte offset in a file to a 1-based (line, column in characters).
    #[must_use]
    pub fn position_of_offset(&self, id: SourceId, offset: usize) -> (u32, u32) {
        let Some(file) = self.get(id) else {
            return (0, 0);
        };
        let offset = offset.min(file.text.len());
        let before = &file.text[..floor_char_boundary(&file.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (to_u32(line), to_u32(column))
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

pub(crate) fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A value with the place it was written.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: Span,
}

impl<T> Spanned<T> {
    /// Wraps a value.
    pub fn new(value: T, span: Span) -> Self {
        Self { value, span }
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<T: Eq> Eq for Spanned<T> {}
impl<T: PartialOrd> PartialOrd for Spanned<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.value.partial_cmp(&other.value)
    }
}
impl<T: Ord> Ord for Spanned<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}
impl<T: std::hash::Hash> std::hash::Hash for Spanned<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_character_columns() {
        let mut sources = Sources::default();
        let id = sources.add("a.yaml", "ab\nçd: x\n");
        assert_eq!(sources.position_of_offset(id, 0), (1, 1));
        assert_eq!(sources.position_of_offset(id, 3), (2, 1));
        // `ç` is two bytes; `d` is the second character.
        assert_eq!(sources.position_of_offset(id, 5), (2, 2));
        assert_eq!(sources.line_text(id, 2), Some("çd: x"));
    }
}
