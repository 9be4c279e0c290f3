//! Export: the accepted samples in the EDIR layout, plus `taxonomy.json`, `stats.json`, a
//! dataset card (`README.md`) and `preview.html` (static, no external assets).
//!
//! Which stage gives what, by convention of the pipeline's operators: the target is the first
//! `edit` stage without `for_each`; the hard negatives are the items of the `edit` stages with
//! `for_each`, in item order; the query text is the `query` (else `text`) field of the last
//! `chat` stage that has one; the instruction is the `edit` field of the first `chat` stage
//! that has one; judges' reasons are shown in the preview.
//!
//! Ids are stable for as long as a sample is accepted: its group number is
//! `(subcategory position + 1) * 1_000_000 + ordinal`, its query id `query_<group>`, its
//! images `<group>_<source>_<k>.<ext>` (`k` 0 for the target, 1.. for the negatives), and a
//! reference image `ref_<source>.<ext>`. The same store exports the same bytes: nothing
//! depends on time or on the order rows come back in.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use edir_config::{Operator, Pipeline};
use edir_dataset::{Export, ExportImage};
use edir_store::{ArtifactStore, RunId, SampleRecord, SampleState, Store, TaskRecord, TaskState};
use serde_json::{Value, json};

use crate::error::EngineError;
use crate::source;

/// Accepted, rejected and failed samples per subcategory shown in the preview.
const PREVIEW_PER_SUBCATEGORY: usize = 3;

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct ExportSummary {
    /// Queries written.
    pub queries: usize,
    /// Corpus images written.
    pub corpus: usize,
    /// The folder.
    pub dir: PathBuf,
}

struct Roles {
    target: Option<String>,
    negatives: Vec<String>,
    query: Option<String>,
    instruction: Option<String>,
    judges: Vec<String>,
}

impl Roles {
    fn of(pipeline: &Pipeline) -> Self {
        let fields = |stage: &edir_config::Stage| -> Vec<String> {
            stage
                .schema
                .as_ref()
                .and_then(|s| s.value.get("properties"))
                .and_then(Value::as_object)
                .map_or_else(|| vec!["text".to_string()], |p| p.keys().cloned().collect())
        };
        let chats = pipeline
            .stages
            .iter()
            .filter(|s| matches!(s.op, Operator::Chat { .. }));
        Self {
            target: pipeline
                .stages
                .iter()
                .find(|s| matches!(s.op, Operator::Edit { .. }) && s.for_each.is_none())
                .map(|s| s.id.clone()),
            negatives: pipeline
                .stages
                .iter()
                .filter(|s| matches!(s.op, Operator::Edit { .. }) && s.for_each.is_some())
                .map(|s| s.id.clone())
                .collect(),
            query: chats
                .clone()
                .rfind(|s| {
                    let f = fields(s);
                    f.iter().any(|x| x == "query") || f.iter().any(|x| x == "text")
                })
                .map(|s| s.id.clone()),
            instruction: chats
                .clone()
                .find(|s| fields(s).iter().any(|x| x == "edit"))
                .map(|s| s.id.clone()),
            judges: pipeline
                .stages
                .iter()
                .filter(|s| matches!(s.op, Operator::Judge { .. }))
                .map(|s| s.id.clone())
                .collect(),
        }
    }
}

fn output<'a>(tasks: &'a [TaskRecord], stage: &str) -> Option<&'a TaskRecord> {
    tasks
        .iter()
        .find(|t| t.stage == stage && t.item == 0 && t.state == TaskState::Done)
}

fn field(task: Option<&TaskRecord>, names: &[&str]) -> Option<String> {
    let json: Value = serde_json::from_str(task?.output_json.as_deref()?).ok()?;
    names.iter().find_map(|n| {
        json.get(*n)
            .and_then(Value::as_str)
            .map(ToString::to_string)
    })
}

/// A file-name-safe form of a reference name (path separators and odd characters to `-`).
fn safe(name: &str) -> String {
    let stem = Path::new(name)
        .with_extension("")
        .to_string_lossy()
        .to_string();
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn extension(artifacts: &ArtifactStore, hash: &str) -> Result<&'static str, EngineError> {
    let bytes = artifacts.get(hash).map_err(|e| EngineError::Export {
        path: artifacts.describe(hash),
        message: e.to_string(),
    })?;
    Ok(source::extension_of(&bytes[..bytes.len().min(16)]))
}

struct Exported {
    sample: SampleRecord,
    query_id: String,
    text: String,
    reference_file: String,
    target_file: String,
    negative_files: Vec<String>,
    judge_reasons: Vec<(String, String)>,
    instruction: Option<String>,
}

/// Exports the accepted samples of `run` into `dir`.
///
/// # Errors
/// Store errors; [`EngineError::Export`] for files that cannot be read or written.
pub async fn export(
    pipeline: &Pipeline,
    store: &Store,
    artifacts: &ArtifactStore,
    run: &RunId,
    dir: &Path,
) -> Result<ExportSummary, EngineError> {
    let roles = Roles::of(pipeline);
    let Some(target_stage) = roles.target.clone() else {
        return Err(EngineError::Export {
            path: dir.to_path_buf(),
            message: "the pipeline has no `edit` stage without `for_each` to take targets from"
                .into(),
        });
    };
    let position: HashMap<&str, usize> = pipeline
        .taxonomy
        .subcategories
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut samples: Vec<SampleRecord> = store
        .samples(run, None)
        .await?
        .into_iter()
        .filter(|s| s.state != SampleState::Superseded)
        .collect();
    samples.sort_by_key(|s| {
        (
            position
                .get(s.subcategory.as_str())
                .copied()
                .unwrap_or(usize::MAX),
            s.subcategory.clone(),
            s.ordinal,
            s.generation,
        )
    });

    let mut export = Export::default();
    let mut images: BTreeMap<String, ExportImage> = BTreeMap::new();
    let mut exported: Vec<Exported> = Vec::new();
    let mut rejected_preview: BTreeMap<String, Vec<(SampleRecord, Vec<TaskRecord>)>> =
        BTreeMap::new();
    let add_image = |name: &str, hash: &str, images: &mut BTreeMap<String, ExportImage>| {
        images
            .entry(name.to_string())
            .or_insert_with(|| ExportImage {
                name: name.to_string(),
                hash: hash.to_string(),
            });
    };
    for sample in samples {
        if sample.state != SampleState::Accepted {
            let shown = rejected_preview
                .entry(sample.subcategory.clone())
                .or_default();
            if matches!(sample.state, SampleState::Rejected | SampleState::Failed)
                && shown.len() < PREVIEW_PER_SUBCATEGORY
            {
                let tasks = store.tasks_of_sample(&sample.id).await?;
                shown.push((sample, tasks));
            }
            continue;
        }
        let tasks = store.tasks_of_sample(&sample.id).await?;
        let Some(target_hash) =
            output(&tasks, &target_stage).and_then(|t| t.output_artifact.clone())
        else {
            return Err(EngineError::Internal(format!(
                "accepted sample `{}` has no `{target_stage}` image",
                sample.id
            )));
        };
        let mut negatives: Vec<&TaskRecord> = tasks
            .iter()
            .filter(|t| {
                roles.negatives.contains(&t.stage)
                    && t.state == TaskState::Done
                    && t.output_artifact.is_some()
            })
            .collect();
        negatives.sort_by_key(|t| (roles.negatives.iter().position(|s| *s == t.stage), t.item));
        let group = (position
            .get(sample.subcategory.as_str())
            .copied()
            .unwrap_or(0)
            + 1)
            * 1_000_000
            + usize::try_from(sample.ordinal).unwrap_or(0);
        let source_name = safe(&sample.reference_name);
        let reference_file = format!(
            "ref_{source_name}.{}",
            extension(artifacts, &sample.reference)?
        );
        add_image(&reference_file, &sample.reference, &mut images);
        let target_file = format!(
            "{group}_{source_name}_0.{}",
            extension(artifacts, &target_hash)?
        );
        add_image(&target_file, &target_hash, &mut images);
        let mut negative_files = Vec::new();
        for (k, task) in negatives.iter().enumerate() {
            let hash = task.output_artifact.as_deref().unwrap_or_default();
            let name = format!(
                "{group}_{source_name}_{}.{}",
                k + 1,
                extension(artifacts, hash)?
            );
            add_image(&name, hash, &mut images);
            negative_files.push(name);
        }
        let text = roles
            .query
            .as_deref()
            .and_then(|q| field(output(&tasks, q), &["query", "text"]))
            .unwrap_or_default();
        let judge_reasons = roles
            .judges
            .iter()
            .filter_map(|j| field(output(&tasks, j), &["reason"]).map(|r| (j.clone(), r)))
            .collect();
        let instruction = roles
            .instruction
            .as_deref()
            .and_then(|i| field(output(&tasks, i), &["edit"]));
        exported.push(Exported {
            query_id: format!("query_{group}"),
            sample,
            text,
            reference_file,
            target_file,
            negative_files,
            judge_reasons,
            instruction,
        });
    }

    for e in &exported {
        let sub = pipeline.taxonomy.find(&e.sample.subcategory);
        let label = sub.map_or(e.sample.subcategory.as_str(), |s| s.label.as_str());
        let category = sub.map_or("", |s| s.category.as_str());
        let mut metadata = json!({
            "subcategory": label,
            "category": category,
            "subcategory_id": e.sample.subcategory,
            "reference": e.sample.reference_name,
            "sample": e.sample.id.0,
        });
        if let Some(instruction) = &e.instruction {
            metadata["instruction"] = json!(instruction);
        }
        export.queries.push(json!({
            "id": e.query_id,
            "image": e.reference_file,
            "text": e.text,
            "modality": "image",
            "metadata": metadata,
        }));
        for file in std::iter::once(&e.target_file).chain(&e.negative_files) {
            export
                .corpus
                .push(json!({"id": file, "image": file, "modality": "image"}));
        }
        export.instances.push(json!({
            "qid": e.query_id,
            "pos": [e.target_file],
            "neg": e.negative_files,
        }));
    }
    export.images = images.into_values().collect();

    let stats = stats(pipeline, store, run, &exported).await?;
    let taxonomy = serde_json::to_vec_pretty(&pipeline.taxonomy)
        .map_err(|e| EngineError::Internal(e.to_string()))?;
    export.files.push(("taxonomy.json".into(), taxonomy));
    let mut stats_bytes =
        serde_json::to_vec_pretty(&stats).map_err(|e| EngineError::Internal(e.to_string()))?;
    stats_bytes.push(b'\n');
    export.files.push(("stats.json".into(), stats_bytes));
    export
        .files
        .push(("README.md".into(), card(pipeline, &stats).into_bytes()));
    export.files.push((
        "preview.html".into(),
        preview(pipeline, &exported, &rejected_preview, &roles).into_bytes(),
    ));
    let summary = ExportSummary {
        queries: export.queries.len(),
        corpus: export.corpus.len(),
        dir: dir.to_path_buf(),
    };
    let dir_owned = dir.to_path_buf();
    let artifacts = artifacts.clone();
    tokio::task::spawn_blocking(move || {
        edir_dataset::write(&dir_owned, &export, &|image| {
            artifacts
                .get(&image.hash)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
    })
    .await
    .map_err(|e| EngineError::Internal(e.to_string()))?
    .map_err(|e| EngineError::Export {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(summary)
}

async fn stats(
    pipeline: &Pipeline,
    store: &Store,
    run: &RunId,
    exported: &[Exported],
) -> Result<Value, EngineError> {
    let counts = store.sample_counts(run).await?;
    let reasons = store.reason_counts(run).await?;
    let mut subcategories = serde_json::Map::new();
    for sub in &pipeline.taxonomy.subcategories {
        let count = |state: SampleState| {
            counts
                .iter()
                .filter(|c| c.subcategory == sub.id && c.state == state)
                .map(|c| c.count)
                .sum::<i64>()
        };
        let (accepted, rejected, failed, active) = (
            count(SampleState::Accepted),
            count(SampleState::Rejected),
            count(SampleState::Failed),
            count(SampleState::Active),
        );
        if accepted + rejected + failed + active == 0 {
            continue;
        }
        let mut by_stage: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for r in reasons.iter().filter(|r| r.subcategory == sub.id) {
            *by_stage
                .entry(r.stage.clone())
                .or_default()
                .entry(r.reason.clone())
                .or_default() += r.count;
        }
        let decided = accepted + rejected + failed;
        #[expect(clippy::cast_precision_loss, reason = "a ratio")]
        let rate = if decided == 0 {
            0.0
        } else {
            (accepted as f64 / decided as f64 * 1e4).round() / 1e4
        };
        subcategories.insert(
            sub.label.clone(),
            json!({
                "id": sub.id,
                "category": sub.category,
                "accepted": accepted,
                "rejected": rejected,
                "failed": failed,
                "active": active,
                "acceptance_rate": rate,
                "rejections": by_stage,
            }),
        );
    }
    let models: BTreeMap<&str, &str> = pipeline
        .endpoints
        .values()
        .filter(|e| e.api != edir_config::Api::Unused)
        .map(|e| (e.name.as_str(), e.model.as_str()))
        .collect();
    let prompts: BTreeMap<&str, Value> = pipeline
        .stages
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                json!({
                    "op": s.op.kind(),
                    "endpoint": s.op.endpoint(),
                    "prompt": s.prompt.as_ref().map(|p| &p.hash),
                    "system": s.system.as_ref().map(|p| &p.hash),
                    "schema": s.schema.as_ref().map(|p| &p.hash),
                }),
            )
        })
        .collect();
    let corpus: usize = exported.iter().map(|e| 1 + e.negative_files.len()).sum();
    Ok(json!({
        "pipeline": pipeline.name,
        "pipeline_hash": pipeline.hash,
        "queries": exported.len(),
        "corpus": corpus,
        "subcategories": subcategories,
        "models": models,
        "stages": prompts,
    }))
}

fn card(pipeline: &Pipeline, stats: &Value) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# {}\n", pipeline.name);
    if let Some(description) = &pipeline.description {
        let _ = writeln!(text, "{description}\n");
    }
    let _ = writeln!(
        text,
        "A composed-image-retrieval benchmark in the EDIR layout (arXiv 2601.16125), made by \
         edir-synth: each query is a reference image plus a modification text; the answer is \
         an edited image, and the other images of its group are hard negatives.\n"
    );
    let _ = writeln!(
        text,
        "- queries: {}\n- corpus images: {}\n- pipeline hash: `{}`\n",
        stats["queries"], stats["corpus"], pipeline.hash
    );
    let _ = writeln!(
        text,
        "## Samples per subcategory\n\n| subcategory | category | accepted | rejected | failed | acceptance |\n|---|---|---:|---:|---:|---:|"
    );
    if let Some(subs) = stats["subcategories"].as_object() {
        for (label, s) in subs {
            let _ = writeln!(
                text,
                "| {label} | {} | {} | {} | {} | {:.1}% |",
                s["category"].as_str().unwrap_or(""),
                s["accepted"],
                s["rejected"],
                s["failed"],
                s["acceptance_rate"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
    }
    let _ = writeln!(text, "\n## Models\n\n| endpoint | model |\n|---|---|");
    if let Some(models) = stats["models"].as_object() {
        for (name, model) in models {
            let _ = writeln!(text, "| {name} | {} |", model.as_str().unwrap_or(""));
        }
    }
    let _ = writeln!(
        text,
        "\n## Prompts (BLAKE3 of the template text)\n\n| stage | op | prompt | system | schema |\n|---|---|---|---|---|"
    );
    if let Some(stages) = stats["stages"].as_object() {
        for (id, s) in stages {
            let short = |v: &Value| {
                v.as_str().map_or_else(
                    || "-".to_string(),
                    |h| format!("`{}`", &h[..h.len().min(12)]),
                )
            };
            let _ = writeln!(
                text,
                "| {id} | {} | {} | {} | {} |",
                s["op"].as_str().unwrap_or(""),
                short(&s["prompt"]),
                short(&s["system"]),
                short(&s["schema"])
            );
        }
    }
    let _ = writeln!(
        text,
        "\nFiles: `queries.jsonl`, `corpus.jsonl`, `instances.jsonl`, `images/`, `taxonomy.json`, \
         `stats.json` (counts, rejection reasons), `preview.html` (a few samples per subcategory)."
    );
    text
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn preview(
    pipeline: &Pipeline,
    exported: &[Exported],
    rejected: &BTreeMap<String, Vec<(SampleRecord, Vec<TaskRecord>)>>,
    roles: &Roles,
) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} preview</title>\n<style>\
body{{font-family:sans-serif;margin:2em;color:#222}}h2{{border-bottom:1px solid #ccc}}\
.sample{{margin:1em 0;padding:.5em;border:1px solid #ddd;border-radius:4px}}\
.imgs img{{height:128px;margin-right:4px;border:2px solid #ccc}}.imgs img.target{{border-color:#2a2}}\
.imgs img.ref{{border-color:#22a}}.rejected{{background:#fff4f4}}.why{{color:#a22}}small{{color:#666}}\
</style></head><body>\n<h1>{} : preview</h1>\n<p>Blue: reference; green: target; grey: hard negatives.</p>\n",
        escape(&pipeline.name),
        escape(&pipeline.name)
    );
    for sub in &pipeline.taxonomy.subcategories {
        let accepted: Vec<&Exported> = exported
            .iter()
            .filter(|e| e.sample.subcategory == sub.id)
            .take(PREVIEW_PER_SUBCATEGORY)
            .collect();
        let rejected = rejected.get(&sub.id).map(Vec::as_slice).unwrap_or_default();
        if accepted.is_empty() && rejected.is_empty() {
            continue;
        }
        let _ = writeln!(
            html,
            "<h2>{} <small>{}</small></h2>",
            escape(&sub.label),
            escape(&sub.id)
        );
        for e in accepted {
            let _ = write!(
                html,
                "<div class=\"sample\"><div class=\"imgs\"><img class=\"ref\" src=\"images/{}\" alt=\"reference\"><img class=\"target\" src=\"images/{}\" alt=\"target\">",
                escape(&e.reference_file),
                escape(&e.target_file)
            );
            for n in &e.negative_files {
                let _ = write!(html, "<img src=\"images/{}\" alt=\"negative\">", escape(n));
            }
            let _ = write!(
                html,
                "</div><p><b>{}</b>: {}</p>",
                escape(&e.query_id),
                escape(&e.text)
            );
            if let Some(i) = &e.instruction {
                let _ = write!(html, "<p><small>instruction: {}</small></p>", escape(i));
            }
            for (judge, reason) in &e.judge_reasons {
                let _ = write!(
                    html,
                    "<p><small>{}: {}</small></p>",
                    escape(judge),
                    escape(reason)
                );
            }
            html.push_str("</div>\n");
        }
        for (sample, tasks) in rejected {
            let _ = write!(
                html,
                "<div class=\"sample rejected\"><p class=\"why\">{} at <b>{}</b>: {}</p>",
                escape(sample.state.as_str()),
                escape(sample.decided_stage.as_deref().unwrap_or("?")),
                escape(sample.reason.as_deref().unwrap_or(""))
            );
            if let Some(i) = roles
                .instruction
                .as_deref()
                .and_then(|s| field(output(tasks, s), &["edit"]))
            {
                let _ = write!(html, "<p><small>instruction: {}</small></p>", escape(&i));
            }
            if let Some(q) = roles
                .query
                .as_deref()
                .and_then(|s| field(output(tasks, s), &["query", "text"]))
            {
                let _ = write!(html, "<p><small>query: {}</small></p>", escape(&q));
            }
            let _ = writeln!(
                html,
                "<p><small>reference: {}</small></p></div>",
                escape(&sample.reference_name)
            );
        }
    }
    html.push_str("</body></html>\n");
    html
}
