//! The taxonomy: categories and subcategories of modification, as data (`pipelines/taxonomy.yaml`).
//!
//! Invariants of a [`Taxonomy`]: ids are unique and lower-case (`attribute.color`), each
//! subcategory id starts with its category's id and a dot, labels (the names written to
//! `metadata.subcategory`) are unique, and every subcategory has a definition, guidance and at
//! least one example.

use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::node::{self, Node};
use crate::source::{Span, Spanned};
use crate::suggest::did_you_mean;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaxonomyFile {
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted for forward compatibility; only version 1 exists"
    )]
    version: Option<u32>,
    categories: Vec<CategoryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryFile {
    id: Spanned<String>,
    label: String,
    #[serde(default)]
    description: String,
    subcategories: Spanned<Vec<SubcategoryFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubcategoryFile {
    id: Spanned<String>,
    label: Spanned<String>,
    definition: Spanned<String>,
    guidance: Spanned<String>,
    #[serde(default)]
    avoid: Option<String>,
    examples: Spanned<Vec<String>>,
    /// For `complex`: how many simple edits are combined.
    #[serde(default)]
    combines: Option<u32>,
}

/// A top-level category (`attribute`, `object`, ...).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Category {
    /// Lower-case id, e.g. `attribute`.
    pub id: String,
    /// Display name, e.g. `Attribute`.
    pub label: String,
    /// What the category covers.
    pub description: String,
}

/// A subcategory: the unit of quotas, prompts and per-subcategory scores.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Subcategory {
    /// Dotted id, e.g. `attribute.color`.
    pub id: String,
    /// The bare name written to the benchmark's `metadata.subcategory`, e.g. `color`.
    pub label: String,
    /// The category id, e.g. `attribute`.
    pub category: String,
    /// What an edit of this kind is.
    pub definition: String,
    /// Advice to the instruction writer: what makes a good, visually checkable edit.
    pub guidance: String,
    /// What to avoid.
    pub avoid: Option<String>,
    /// Example edits.
    pub examples: Vec<String>,
    /// For combined edits: how many simple edits are applied at once.
    pub combines: Option<u32>,
}

/// The validated taxonomy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Taxonomy {
    /// Categories in file order.
    pub categories: Vec<Category>,
    /// Subcategories in file order.
    pub subcategories: Vec<Subcategory>,
}

impl Taxonomy {
    /// The subcategory with this id (`attribute.color`) or label (`color`).
    #[must_use]
    pub fn find(&self, name: &str) -> Option<&Subcategory> {
        self.subcategories
            .iter()
            .find(|s| s.id == name)
            .or_else(|| self.subcategories.iter().find(|s| s.label == name))
    }

    /// The category with this id.
    #[must_use]
    pub fn category(&self, id: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.id == id)
    }

    /// A "did you mean" hint for an unknown subcategory name.
    #[must_use]
    pub fn suggest(&self, name: &str) -> Option<String> {
        let candidates = self
            .subcategories
            .iter()
            .flat_map(|s| [s.id.as_str(), s.label.as_str()]);
        did_you_mean(name, candidates).map(|s| format!("did you mean `{s}`?"))
    }
}

fn is_id_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Builds the taxonomy from a parsed file, pushing every problem to `diagnostics`.
pub(crate) fn compile(root: &Node, diagnostics: &mut Vec<Diagnostic>) -> Option<Taxonomy> {
    let file: TaxonomyFile = match node::from_node(root) {
        Ok(file) => file,
        Err(error) => {
            diagnostics.push(
                Diagnostic::error(error.message, error.span.unwrap_or(root.span))
                    .with_help_opt(error.help),
            );
            return None;
        }
    };
    let before = diagnostics.len();
    let mut taxonomy = Taxonomy {
        categories: Vec::new(),
        subcategories: Vec::new(),
    };
    let mut seen_ids: Vec<(String, Span)> = Vec::new();
    let mut seen_labels: Vec<(String, Span)> = Vec::new();
    let check_unique = |list: &mut Vec<(String, Span)>,
                        what: &str,
                        value: &Spanned<String>,
                        diagnostics: &mut Vec<Diagnostic>| {
        if let Some((_, first)) = list.iter().find(|(v, _)| *v == value.value) {
            diagnostics.push(
                Diagnostic::error(format!("duplicate {what} `{}`", value.value), value.span)
                    .with_label("defined twice")
                    .with_help(format!("first defined at line {}", first.line)),
            );
        } else {
            list.push((value.value.clone(), value.span));
        }
    };
    if file.categories.is_empty() {
        diagnostics.push(Diagnostic::error(
            "the taxonomy defines no categories",
            root.span,
        ));
    }
    for category in file.categories {
        if !is_id_segment(&category.id) {
            diagnostics.push(
                Diagnostic::error(
                    format!("invalid category id `{}`", category.id.value),
                    category.id.span,
                )
                .with_help("use lower-case letters, digits and `_`, e.g. `attribute`"),
            );
        }
        check_unique(&mut seen_ids, "id", &category.id, diagnostics);
        if category.subcategories.is_empty() {
            diagnostics.push(Diagnostic::error(
                format!("category `{}` has no subcategories", category.id.value),
                category.subcategories.span,
            ));
        }
        for sub in category.subcategories.value {
            let prefix = format!("{}.", category.id.value);
            match sub.id.strip_prefix(&prefix) {
                Some(rest) if is_id_segment(rest) => {}
                _ => diagnostics.push(
                    Diagnostic::error(
                        format!("invalid subcategory id `{}`", sub.id.value),
                        sub.id.span,
                    )
                    .with_label(format!("must be `{prefix}<name>`"))
                    .with_help(format!("write it as `{prefix}{}`", sub.label.value)),
                ),
            }
            check_unique(&mut seen_ids, "id", &sub.id, diagnostics);
            check_unique(
                &mut seen_labels,
                "subcategory label",
                &sub.label,
                diagnostics,
            );
            for (field, value) in [
                ("definition", &sub.definition),
                ("guidance", &sub.guidance),
                ("label", &sub.label),
            ] {
                if value.trim().is_empty() {
                    diagnostics.push(Diagnostic::error(
                        format!("subcategory `{}` has an empty `{field}`", sub.id.value),
                        value.span,
                    ));
                }
            }
            if sub.examples.iter().all(|e| e.trim().is_empty()) {
                diagnostics.push(
                    Diagnostic::error(
                        format!("subcategory `{}` has no examples", sub.id.value),
                        sub.examples.span,
                    )
                    .with_help("give at least two example edits; the instruction writer sees them"),
                );
            }
            taxonomy.subcategories.push(Subcategory {
                id: sub.id.value,
                label: sub.label.value,
                category: category.id.value.clone(),
                definition: sub.definition.value.trim().to_string(),
                guidance: sub.guidance.value.trim().to_string(),
                avoid: sub.avoid.map(|a| a.trim().to_string()),
                examples: sub.examples.value,
                combines: sub.combines,
            });
        }
        taxonomy.categories.push(Category {
            id: category.id.value,
            label: category.label,
            description: category.description.trim().to_string(),
        });
    }
    (diagnostics[before..].iter().all(|d| !d.is_error())).then_some(taxonomy)
}
