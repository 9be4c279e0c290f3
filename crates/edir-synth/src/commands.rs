//! One function per command; each returns the exit code or an error (exit 2).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use edir_config::{Compiled, Taxonomy};

use crate::cli::{Cli, Command};
use crate::output;
use crate::{EXIT_ERROR, EXIT_OK};

pub(crate) fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Check { pipeline } => check(&pipeline),
        Command::Taxonomy { file, json } => taxonomy(&file, json),
    }
}

fn check(path: &Path) -> anyhow::Result<u8> {
    let compiled = edir_config::compile_file(path);
    if !compiled.diagnostics.is_empty() {
        output::stderr(&compiled.render());
    }
    let Some(pipeline) = compiled.pipeline else {
        return Ok(EXIT_ERROR);
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "`{}` is valid: {} stages, {} subcategories, {} accepted samples wanted, {} endpoints",
        path.display(),
        pipeline.stages.len(),
        pipeline.subcategories.len(),
        pipeline.total_quota(),
        pipeline.endpoints.len(),
    );
    for stage in &pipeline.stages {
        let target = stage
            .op
            .endpoint()
            .map(|e| format!(" {e}"))
            .unwrap_or_default();
        let needs = if stage.needs.is_empty() {
            String::new()
        } else {
            format!(" <- {}", stage.needs.join(", "))
        };
        let _ = writeln!(
            text,
            "  {:<12} {}{target}{needs}",
            stage.id,
            stage.op.kind()
        );
    }
    output::stdout(&text)?;
    Ok(EXIT_OK)
}

fn taxonomy(path: &Path, json: bool) -> anyhow::Result<u8> {
    let text = fs_err::read_to_string(path).context("cannot read the taxonomy")?;
    // A pipeline names its taxonomy and may select subcategories; a taxonomy file has
    // `categories` at the top.
    let is_taxonomy = text.lines().any(|line| line.starts_with("categories:"));
    let (taxonomy, selected, compiled) = if is_taxonomy {
        let (taxonomy, diagnostics, sources) = edir_config::compile_taxonomy_file(path);
        let compiled = Compiled {
            pipeline: None,
            diagnostics,
            sources,
        };
        let selected = taxonomy
            .as_ref()
            .map(|t| t.subcategories.iter().map(|s| s.id.clone()).collect());
        (taxonomy, selected, compiled)
    } else {
        let mut compiled = edir_config::compile_file(path);
        let pipeline = compiled.pipeline.take();
        let selected = pipeline.as_ref().map(|p| p.subcategories.clone());
        (pipeline.map(|p| p.taxonomy), selected, compiled)
    };
    if compiled.has_errors() {
        output::stderr(&compiled.render());
        return Ok(EXIT_ERROR);
    }
    let (Some(taxonomy), Some(selected)) = (taxonomy, selected) else {
        return Ok(EXIT_ERROR);
    };
    let taxonomy = Taxonomy {
        categories: taxonomy.categories.clone(),
        subcategories: taxonomy
            .subcategories
            .into_iter()
            .filter(|s| selected.contains(&s.id))
            .collect(),
    };
    if json {
        output::stdout(&(serde_json::to_string_pretty(&taxonomy)? + "\n"))?;
    } else {
        output::stdout(&render_taxonomy(&taxonomy))?;
    }
    Ok(EXIT_OK)
}

fn render_taxonomy(taxonomy: &Taxonomy) -> String {
    let mut text = String::new();
    let id_width = taxonomy
        .subcategories
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(0);
    let label_width = taxonomy
        .subcategories
        .iter()
        .map(|s| s.label.len())
        .max()
        .unwrap_or(0);
    for category in &taxonomy.categories {
        let subs: Vec<_> = taxonomy
            .subcategories
            .iter()
            .filter(|s| s.category == category.id)
            .collect();
        if subs.is_empty() {
            continue;
        }
        let _ = writeln!(text, "{} ({})", category.label, category.id);
        for sub in subs {
            let _ = writeln!(
                text,
                "  {:<id_width$}  {:<label_width$}  {}",
                sub.id, sub.label, sub.definition
            );
        }
    }
    let _ = writeln!(
        text,
        "{} categories, {} subcategories",
        taxonomy
            .categories
            .iter()
            .filter(|c| taxonomy.subcategories.iter().any(|s| s.category == c.id))
            .count(),
        taxonomy.subcategories.len()
    );
    text
}
