//! Reports: `results.json` (one object per model, or a list for several), `results.md` (models
//! as columns), `predictions.json` (the official shape, `{qid: {corpus_id: score}}`, top 100).

use std::fmt::Write as _;
use std::path::Path;

use edir_dataset::Benchmark;

use crate::metrics::{CUTOFFS, ModelResult};
use crate::topk::Ranked;

/// Items per query in `predictions.json`, as the official evaluation keeps.
pub const PREDICTIONS_TOP: usize = 100;

/// `{qid: {corpus_id: score}}` for the top `PREDICTIONS_TOP`.
#[must_use]
pub fn predictions(bench: &Benchmark, ranked: &[Vec<Ranked>]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (query, list) in bench.queries.iter().zip(ranked) {
        let scores: serde_json::Map<String, serde_json::Value> = list
            .iter()
            .take(PREDICTIONS_TOP)
            .map(|r| {
                (
                    bench.corpus[r.index as usize].id.clone(),
                    serde_json::json!(r.score),
                )
            })
            .collect();
        out.insert(query.id.clone(), serde_json::Value::Object(scores));
    }
    serde_json::Value::Object(out)
}

/// A Markdown table: rows are overall, categories and subcategories; columns are models'
/// Recall@1 and @3 ... as percentages.
#[must_use]
pub fn markdown(results: &[ModelResult]) -> String {
    let mut text = String::from("| group | queries |");
    for result in results {
        for k in CUTOFFS {
            let _ = write!(text, " {} R@{k} |", result.model);
        }
    }
    text.push('\n');
    text.push_str("|---|---:|");
    for _ in results {
        for _ in CUTOFFS {
            text.push_str("---:|");
        }
    }
    text.push('\n');
    let Some(first) = results.first() else {
        return text;
    };
    let mut rows: Vec<(String, usize, Vec<&crate::metrics::Group>)> = vec![(
        "**overall**".into(),
        first.overall.queries,
        results.iter().map(|r| &r.overall).collect(),
    )];
    for (name, group) in &first.by_category {
        rows.push((
            format!("*{name}*"),
            group.queries,
            results
                .iter()
                .filter_map(|r| r.by_category.get(name))
                .collect(),
        ));
    }
    for (name, group) in &first.by_subcategory {
        rows.push((
            name.clone(),
            group.queries,
            results
                .iter()
                .filter_map(|r| r.by_subcategory.get(name))
                .collect(),
        ));
    }
    for (name, queries, groups) in rows {
        let _ = write!(text, "| {name} | {queries} |");
        for group in groups {
            for k in CUTOFFS {
                let value = group
                    .recall
                    .get(&format!("recall@{k}"))
                    .copied()
                    .unwrap_or(0.0);
                let _ = write!(text, " {:.1} |", value * 100.0);
            }
        }
        text.push('\n');
    }
    text
}

/// Writes the three reports into `out`.
///
/// # Errors
/// I/O errors, naming the file.
pub fn write(
    out: &Path,
    bench: &Benchmark,
    results: &[(ModelResult, Vec<Vec<Ranked>>)],
) -> std::io::Result<()> {
    fs_err::create_dir_all(out)?;
    let summaries: Vec<&ModelResult> = results.iter().map(|(r, _)| r).collect();
    let json = if summaries.len() == 1 {
        serde_json::to_value(summaries[0])
    } else {
        serde_json::to_value(&summaries)
    }
    .map_err(std::io::Error::other)?;
    fs_err::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json).map_err(std::io::Error::other)? + "\n",
    )?;
    let owned: Vec<ModelResult> = results.iter().map(|(r, _)| r.clone()).collect();
    fs_err::write(out.join("results.md"), markdown(&owned))?;
    let mut png = std::io::Cursor::new(Vec::new());
    crate::chart::recall_chart(&summaries)
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    fs_err::write(out.join("recall_at_1.png"), png.into_inner())?;
    for (result, ranked) in results {
        let name = if results.len() == 1 {
            "predictions.json".to_string()
        } else {
            format!("predictions.{}.json", result.model.replace(['/', ' '], "_"))
        };
        fs_err::write(
            out.join(name),
            serde_json::to_string(&predictions(bench, ranked)).map_err(std::io::Error::other)?,
        )?;
    }
    Ok(())
}
