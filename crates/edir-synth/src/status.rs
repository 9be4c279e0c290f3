//! `edir-synth status`: where a run stands, read from the store alone (so it works while the
//! run goes on in another process or on another host).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use edir_store::{Run, SampleState, Store, StoreUrl, TaskState};
use serde_json::{Value, json};

use crate::output;
use crate::{EXIT_ERROR, EXIT_OK};

fn default_workdir() -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = fs_err::read_dir("runs") {
        for entry in entries.flatten() {
            if entry.path().join("store.sqlite").is_file() {
                found.push(entry.path());
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!("no run found under `runs/`; give `--workdir DIR` or `--store URL`"),
        _ => anyhow::bail!(
            "several runs under `runs/` ({}); give `--workdir DIR`",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Opens an existing store (never creates one).
pub(crate) async fn open_existing(
    workdir: Option<&Path>,
    store: Option<&str>,
) -> anyhow::Result<Store> {
    let url = match store {
        Some(url) => StoreUrl::parse(url)?,
        None => {
            let dir = match workdir {
                Some(dir) => dir.to_path_buf(),
                None => default_workdir()?,
            };
            let file = dir.join("store.sqlite");
            anyhow::ensure!(
                file.is_file(),
                "no store at `{}`: nothing has run in this work directory",
                file.display()
            );
            StoreUrl::sqlite(&file)
        }
    };
    Ok(Store::open(&url).await?)
}

pub(crate) async fn pick_run(store: &Store, name: Option<&str>) -> anyhow::Result<Run> {
    let runs = store.runs().await?;
    match name {
        Some(name) => runs
            .into_iter()
            .find(|r| r.name == name)
            .with_context(|| format!("no run called `{name}` in this store")),
        None => match runs.len() {
            0 => anyhow::bail!("the store holds no run yet"),
            1 => Ok(runs.into_iter().next().expect("one run")),
            _ => anyhow::bail!(
                "the store holds several runs ({}); give `--run NAME`",
                runs.iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

pub(crate) fn status(
    workdir: Option<&Path>,
    store: Option<&str>,
    run: Option<&str>,
    json_out: bool,
) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = match open_existing(workdir, store).await {
            Ok(store) => store,
            Err(error) => {
                output::stderr(&format!("error: {error}\n"));
                return Ok(EXIT_ERROR);
            }
        };
        let run = pick_run(&store, run).await?;
        let report = report(&store, &run).await?;
        store.close().await;
        if json_out {
            output::stdout(&(serde_json::to_string_pretty(&report)? + "\n"))?;
        } else {
            output::stdout(&render(&report))?;
        }
        Ok(EXIT_OK)
    })
}

/// The status report as JSON (the `--json` output; the table renders it).
pub(crate) async fn report(store: &Store, run: &Run) -> anyhow::Result<Value> {
    let settings: Value = store
        .events_of_kind(&run.id, "run_started")
        .await?
        .last()
        .and_then(|e| e.detail.as_deref())
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    let samples = store.sample_counts(&run.id).await?;
    let tasks = store.task_counts(&run.id).await?;
    let reasons = store.reason_counts(&run.id).await?;
    let failures = store.failure_counts(&run.id).await?;
    let usage = store.stage_usage(&run.id).await?;
    let skipped: Vec<Value> = store
        .events_of_kind(&run.id, "reference_skipped")
        .await?
        .into_iter()
        .filter_map(|e| e.detail.and_then(|d| serde_json::from_str(&d).ok()))
        .collect();

    let mut subs: BTreeMap<String, Value> = BTreeMap::new();
    let quota_of = |s: &str| settings["quota"][s].as_u64();
    let mut names: Vec<String> = samples.iter().map(|c| c.subcategory.clone()).collect();
    if let Some(q) = settings["quota"].as_object() {
        names.extend(q.keys().cloned());
    }
    names.sort();
    names.dedup();
    let mut accepted_total = 0i64;
    for name in &names {
        let count = |state: SampleState| {
            samples
                .iter()
                .filter(|c| &c.subcategory == name && c.state == state)
                .map(|c| c.count)
                .sum::<i64>()
        };
        let mut stages: BTreeMap<String, BTreeMap<&str, i64>> = BTreeMap::new();
        for t in tasks.iter().filter(|t| &t.subcategory == name) {
            let key = match t.state {
                TaskState::Done => "done",
                TaskState::Leased => "in_flight",
                TaskState::Ready | TaskState::Blocked => "pending",
                TaskState::Failed => "failed",
                TaskState::Skipped => "skipped",
            };
            *stages
                .entry(t.stage.clone())
                .or_default()
                .entry(key)
                .or_default() += t.count;
        }
        accepted_total += count(SampleState::Accepted);
        subs.insert(
            name.clone(),
            json!({
                "quota": quota_of(name),
                "accepted": count(SampleState::Accepted),
                "active": count(SampleState::Active),
                "rejected": count(SampleState::Rejected),
                "failed": count(SampleState::Failed),
                "stages": stages,
            }),
        );
    }

    // Usage and cost per endpoint: busy span x GPUs, shared by every accepted sample (so the
    // work the judges threw away is counted in).
    let mut endpoints: BTreeMap<String, Value> = BTreeMap::new();
    let mut grouped: BTreeMap<String, Vec<&edir_store::StageUsage>> = BTreeMap::new();
    for u in &usage {
        let endpoint = settings["stages"][&u.stage]
            .as_str()
            .unwrap_or("?")
            .to_string();
        grouped.entry(endpoint).or_default().push(u);
    }
    for (name, uses) in grouped {
        let calls: i64 = uses.iter().map(|u| u.calls).sum();
        let latency: i64 = uses.iter().map(|u| u.latency_ms).sum();
        let prompt: i64 = uses.iter().map(|u| u.prompt_tokens).sum();
        let completion: i64 = uses.iter().map(|u| u.completion_tokens).sum();
        let start = uses.iter().map(|u| u.first_start_ms).min().unwrap_or(0);
        let end = uses.iter().map(|u| u.last_end_ms).max().unwrap_or(0);
        #[expect(clippy::cast_precision_loss, reason = "seconds and rates for display")]
        let (span_s, mean_ms) = (
            (end - start).max(1) as f64 / 1000.0,
            latency as f64 / calls.max(1) as f64,
        );
        #[expect(clippy::cast_precision_loss, reason = "rates for display")]
        let (throughput, tokens_per_s) =
            (calls as f64 / span_s, (prompt + completion) as f64 / span_s);
        let info = &settings["endpoints"][&name];
        let gpu_seconds = info["gpus"].as_f64().map(|g| g * span_s);
        let usd = gpu_seconds.and_then(|s| info["gpu_hour_usd"].as_f64().map(|p| s / 3600.0 * p));
        #[expect(clippy::cast_precision_loss, reason = "a ratio")]
        let per = |v: Option<f64>| {
            v.filter(|_| accepted_total > 0)
                .map(|v| v / accepted_total as f64)
        };
        endpoints.insert(
            name.clone(),
            json!({
                "model": info["model"],
                "calls": calls,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "mean_latency_ms": (mean_ms * 10.0).round() / 10.0,
                "calls_per_s": (throughput * 100.0).round() / 100.0,
                "tokens_per_s": (tokens_per_s * 10.0).round() / 10.0,
                "gpu_seconds": gpu_seconds,
                "usd": usd,
                "per_accepted": {"gpu_seconds": per(gpu_seconds), "usd": per(usd)},
            }),
        );
    }
    Ok(json!({
        "run": run.name,
        "id": run.id.0,
        "state": run.state.as_str(),
        "pipeline_hash": run.pipeline_hash,
        "accepted": accepted_total,
        "subcategories": subs,
        "rejections": reasons.iter().take(25).map(|r| json!({
            "subcategory": r.subcategory, "stage": r.stage, "reason": r.reason, "count": r.count
        })).collect::<Vec<_>>(),
        "failures": failures.iter().map(|f| json!({
            "stage": f.stage, "class": f.class, "count": f.count, "example": f.example
        })).collect::<Vec<_>>(),
        "endpoints": endpoints,
        "references_skipped": skipped,
    }))
}

fn render(report: &Value) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "run `{}` ({}), {} accepted",
        report["run"].as_str().unwrap_or(""),
        report["state"].as_str().unwrap_or(""),
        report["accepted"]
    );
    let _ = writeln!(
        text,
        "\n{:<28} {:>6} {:>8} {:>6} {:>8} {:>6}",
        "subcategory", "quota", "accepted", "active", "rejected", "failed"
    );
    let empty = serde_json::Map::new();
    let subs = report["subcategories"].as_object().unwrap_or(&empty);
    for (name, s) in subs {
        let _ = writeln!(
            text,
            "{name:<28} {:>6} {:>8} {:>6} {:>8} {:>6}",
            s["quota"].to_string(),
            s["accepted"].to_string(),
            s["active"].to_string(),
            s["rejected"].to_string(),
            s["failed"].to_string()
        );
    }
    let _ = writeln!(
        text,
        "\ntasks per stage (done / in flight / pending / failed / skipped):"
    );
    let mut stages: BTreeMap<String, [i64; 5]> = BTreeMap::new();
    for s in subs.values() {
        for (stage, counts) in s["stages"].as_object().unwrap_or(&empty) {
            let entry = stages.entry(stage.clone()).or_default();
            for (i, key) in ["done", "in_flight", "pending", "failed", "skipped"]
                .iter()
                .enumerate()
            {
                entry[i] += counts[*key].as_i64().unwrap_or(0);
            }
        }
    }
    for (stage, c) in &stages {
        let _ = writeln!(
            text,
            "  {stage:<14} {:>7} {:>7} {:>7} {:>7} {:>7}",
            c[0], c[1], c[2], c[3], c[4]
        );
    }
    if let Some(reasons) = report["rejections"].as_array().filter(|r| !r.is_empty()) {
        let _ = writeln!(text, "\nrejections (most frequent first):");
        for r in reasons.iter().take(12) {
            let _ = writeln!(
                text,
                "  {:>5}  {} at {}: {}",
                r["count"].to_string(),
                r["subcategory"].as_str().unwrap_or(""),
                r["stage"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(failures) = report["failures"].as_array().filter(|f| !f.is_empty()) {
        let _ = writeln!(text, "\nfailed tasks by stage and error class:");
        for f in failures {
            let _ = writeln!(
                text,
                "  {:>5}  {} {}: e.g. {}",
                f["count"].to_string(),
                f["stage"].as_str().unwrap_or(""),
                f["class"].as_str().unwrap_or(""),
                f["example"].as_str().unwrap_or("")
            );
        }
        let _ = writeln!(
            text,
            "  `run` retries transient failures by itself; re-queue others with \
             `edir-synth retry --failed [--stage S] [--error CLASS]`, and `edir-synth plan` shows which"
        );
    }
    if let Some(endpoints) = report["endpoints"].as_object() {
        let _ = writeln!(
            text,
            "\n{:<10} {:>8} {:>10} {:>10} {:>12} {:>14}",
            "endpoint", "calls", "calls/s", "tokens/s", "latency ms", "GPU-s/accepted"
        );
        for (name, e) in endpoints {
            let per = e["per_accepted"]["gpu_seconds"]
                .as_f64()
                .map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
            let _ = writeln!(
                text,
                "{name:<10} {:>8} {:>10} {:>10} {:>12} {per:>14}",
                e["calls"].to_string(),
                e["calls_per_s"].to_string(),
                e["tokens_per_s"].to_string(),
                e["mean_latency_ms"].to_string()
            );
        }
    }
    if let Some(skipped) = report["references_skipped"]
        .as_array()
        .filter(|s| !s.is_empty())
    {
        let _ = writeln!(text, "\nreference images skipped:");
        for s in skipped {
            let _ = writeln!(
                text,
                "  {}: {}",
                s["path"].as_str().unwrap_or(""),
                s["error"].as_str().unwrap_or("")
            );
        }
    }
    text
}
