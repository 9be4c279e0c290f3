//! One prompt template: source text, the variables it reads, its content hash, strict rendering.
//!
//! Invariant: `variables` is computed once from `source` when the template is built, and `hash`
//! is the BLAKE3 of `source`; both change exactly when the text changes.

use std::collections::BTreeSet;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};

use crate::{PromptError, content_hash};

/// Name of the single template inside a [`Template`]'s private environment.
const MAIN: &str = "main";

/// A variable the template reads, and where it first appears in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableUse {
    /// Dotted path, e.g. `instruct.edit`.
    pub path: String,
    /// 1-based line of the first textual occurrence, if found.
    pub line: Option<usize>,
    /// 1-based column (in characters) of that occurrence.
    pub column: Option<usize>,
}

/// A loaded, parsed prompt template.
#[derive(Debug)]
pub struct Template {
    name: String,
    source: String,
    hash: String,
    variables: BTreeSet<String>,
    /// The top-level names of `variables`: all a render converts of its context.
    heads: BTreeSet<String>,
    env: Environment<'static>,
}

impl Template {
    /// Loads a template file; its name is the path as given.
    ///
    /// # Errors
    /// [`PromptError::Read`] when the file cannot be read, [`PromptError::Syntax`] when it does
    /// not parse.
    pub fn from_file(path: &Path) -> Result<Self, PromptError> {
        let source = fs_err::read_to_string(path).map_err(|source| PromptError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(path.display().to_string(), source)
    }

    /// Builds a template from text given in the pipeline itself.
    ///
    /// # Errors
    /// [`PromptError::Syntax`] when it does not parse.
    pub fn inline(name: impl Into<String>, source: impl Into<String>) -> Result<Self, PromptError> {
        Self::new(name.into(), source.into())
    }

    fn new(name: String, source: String) -> Result<Self, PromptError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|error| PromptError::Syntax {
                name: name.clone(),
                line: 1,
                message: error.to_string(),
            })?;
        env.set_syntax(syntax);
        env.add_template_owned(MAIN, source.clone())
            .map_err(|error| PromptError::Syntax {
                name: name.clone(),
                line: error.line().unwrap_or(1),
                message: error.detail().unwrap_or("invalid template").to_string(),
            })?;
        let variables: BTreeSet<String> = env
            .get_template(MAIN)
            .map(|t| t.undeclared_variables(true).into_iter().collect())
            .unwrap_or_default();
        let hash = content_hash(source.as_bytes());
        let heads = variables
            .iter()
            .map(|path: &String| path.split('.').next().unwrap_or(path).to_string())
            .collect();
        Ok(Self {
            name,
            source,
            hash,
            variables,
            heads,
            env,
        })
    }

    /// The name used in messages: the path for files, the stage for inline templates.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exact template text.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// BLAKE3 of the template text (hex).
    #[must_use]
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Every variable the template may read, as dotted paths (`a.b` for `{{ a.b }}`).
    #[must_use]
    pub fn variables(&self) -> &BTreeSet<String> {
        &self.variables
    }

    /// The top-level names the template reads (`instruct` for `{{ instruct.edit }}`).
    #[must_use]
    pub fn heads(&self) -> &BTreeSet<String> {
        &self.heads
    }

    /// The variables with the position of their first textual occurrence, for diagnostics.
    #[must_use]
    pub fn variable_uses(&self) -> Vec<VariableUse> {
        self.variables
            .iter()
            .map(|path| {
                let (line, column) = locate(&self.source, path);
                VariableUse {
                    path: path.clone(),
                    line,
                    column,
                }
            })
            .collect()
    }

    /// Renders with `context`; a missing variable is an error.
    ///
    /// # Errors
    /// [`PromptError::Render`] naming the template and, when known, the line.
    pub fn render(&self, context: &serde_json::Value) -> Result<String, PromptError> {
        let render_error = |error: minijinja::Error| PromptError::Render {
            name: self.name.clone(),
            line: error.line(),
            message: match error.detail() {
                Some(detail) => format!("{}: {detail}", error.kind()),
                None => error.kind().to_string(),
            },
        };
        let template = self.env.get_template(MAIN).map_err(render_error)?;
        // Only what the template reads is converted: the context holds every upstream output
        // of the sample, most of it unread by any one template. A name the context lacks stays
        // missing, so strict undefined behaviour is the same as with the whole context.
        let context = match context.as_object() {
            Some(map) => minijinja::Value::from_object(
                self.heads
                    .iter()
                    .filter_map(|head| {
                        map.get(head).map(|v| {
                            (
                                minijinja::Value::from(head.as_str()),
                                minijinja::Value::from(minijinja::value::Serde(v)),
                            )
                        })
                    })
                    .collect::<std::collections::BTreeMap<_, _>>(),
            ),
            None => minijinja::Value::from(minijinja::value::Serde(context)),
        };
        template.render(context).map_err(render_error)
    }
}

/// Finds the first occurrence of `path` (or its first segment) as a whole word.
fn locate(source: &str, path: &str) -> (Option<usize>, Option<usize>) {
    let head = path.split('.').next().unwrap_or(path);
    for needle in [path, head] {
        for (line_index, line) in source.lines().enumerate() {
            let mut from = 0;
            while let Some(found) = line[from..].find(needle) {
                let start = from + found;
                let end = start + needle.len();
                let before = line[..start].chars().next_back();
                let after = line[end..].chars().next();
                let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                if !is_word(before) && !is_word(after) && before != Some('.') {
                    let column = line[..start].chars().count() + 1;
                    return (Some(line_index + 1), Some(column));
                }
                from = end;
            }
        }
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_nested_variables_but_not_loop_locals() {
        let t = Template::inline(
            "t",
            "{{ subcategory.label }}{% for e in subcategory.examples %}- {{ e }}\n{% endfor %}{{ instruct.edit }}",
        )
        .unwrap();
        let vars: Vec<_> = t.variables().iter().cloned().collect();
        assert_eq!(
            vars,
            ["instruct.edit", "subcategory.examples", "subcategory.label"]
        );
    }

    #[test]
    fn missing_variable_is_an_error_not_an_empty_string() {
        let t = Template::inline("judge", "Edit: {{ instruct.edit }}").unwrap();
        let err = t.render(&json!({"instruct": {}})).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("cannot render template `judge`"),
            "{message}"
        );
        assert!(message.contains("undefined"), "{message}");
    }

    #[test]
    fn syntax_error_names_template_and_line() {
        let err = Template::inline("q.md", "line one\n{{ broken ").unwrap_err();
        match err {
            PromptError::Syntax { name, line, .. } => {
                assert_eq!(name, "q.md");
                assert_eq!(line, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn hash_changes_with_text_only() {
        let a = Template::inline("a", "Hello {{ x }}").unwrap();
        let b = Template::inline("b", "Hello {{ x }}").unwrap();
        let c = Template::inline("a", "Hello  {{ x }}").unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn locates_first_use() {
        let t = Template::inline("t", "intro\n  see {{ instruct.edit }} and {{ item }}").unwrap();
        let uses = t.variable_uses();
        let item = uses.iter().find(|u| u.path == "item").unwrap();
        assert_eq!((item.line, item.column), (Some(2), Some(34)));
        let edit = uses.iter().find(|u| u.path == "instruct.edit").unwrap();
        assert_eq!((edit.line, edit.column), (Some(2), Some(10)));
    }

    /// A context where every path `template` reads is a string, plus keys it does not read.
    fn context_for(template: &Template) -> serde_json::Value {
        let mut context = json!({"unread": {"big": vec!["x"; 64]}, "seed": 7});
        for path in template.variables() {
            let mut at = &mut context;
            let segments: Vec<&str> = path.split('.').collect();
            for (i, segment) in segments.iter().enumerate() {
                let last = i + 1 == segments.len();
                let map = at.as_object_mut().expect("an object on the way");
                at = map.entry((*segment).to_string()).or_insert_with(|| {
                    if last {
                        json!(format!("v-{path}"))
                    } else {
                        json!({})
                    }
                });
                if !last && !at.is_object() {
                    *at = json!({});
                }
            }
        }
        context
    }

    #[test]
    fn rendering_only_what_is_read_gives_the_same_text_for_every_shipped_prompt() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../prompts");
        let mut checked = 0;
        for entry in fs_err::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let template = Template::from_file(&path).unwrap();
            let context = context_for(&template);
            let whole = template
                .env
                .get_template(MAIN)
                .unwrap()
                .render(minijinja::Value::from(minijinja::value::Serde(&context)))
                .map_err(|e| e.to_string());
            let pruned = template.render(&context).map_err(|e| e.to_string());
            assert!(whole.is_ok(), "{}: {whole:?}", path.display());
            assert_eq!(pruned, whole, "{}", path.display());
            checked += 1;
        }
        assert!(
            checked >= 5,
            "only {checked} prompts found in {}",
            dir.display()
        );
        // Inline templates with loops, filters and tests over what they read.
        let t = Template::inline(
            "t",
            "{% for e in s.examples %}{{ loop.index }}:{{ e }} {% endfor %}{{ s.examples | length }} \
             {{ x is defined }} {{ n + 1 }}",
        )
        .unwrap();
        let context =
            json!({"s": {"examples": ["a", "b"], "label": "L"}, "x": null, "n": 2, "o": 1});
        let whole = t
            .env
            .get_template(MAIN)
            .unwrap()
            .render(minijinja::Value::from(minijinja::value::Serde(&context)))
            .unwrap();
        assert_eq!(whole, "1:a 2:b 2 True 3");
        assert_eq!(t.render(&context).unwrap(), whole);
    }
}
