//! `plan`, `retry` and `regen`: what a run would compute, and the two ways to ask for more.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use edir_engine::resume;

use crate::{EXIT_ERROR, EXIT_OK, output};

/// How long a worker's heartbeat vouches for it (the engine's default lease).
const LEASE: Duration = Duration::from_secs(60);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Who `retry` and `regen` say they are in the store's events.
fn actor(command: &str) -> String {
    format!("{command}:{}:{}", resume::host_name(), std::process::id())
}

pub(crate) fn plan(
    path: &Path,
    workdir: Option<&Path>,
    store: Option<&str>,
    quota: Option<u32>,
    only: &[String],
    json: bool,
) -> anyhow::Result<u8> {
    let Some(pipeline) = crate::run::compile(path, true) else {
        return Ok(EXIT_ERROR);
    };
    let (workdir, url) = crate::run::locate(&pipeline, workdir, store)?;
    runtime()?.block_on(async {
        let exists = url.sqlite_path().is_none_or(|p| p.is_file());
        let (assessment, run) = if exists {
            let store = edir_store::Store::open(&url).await?;
            let run = store.find_run(&pipeline.name).await?;
            let selected = selected(&pipeline, only)?;
            let assessment =
                resume::assess(&store, &pipeline, run.as_ref(), &selected, quota).await?;
            store.close().await;
            (assessment, run)
        } else {
            let selected = selected(&pipeline, only)?;
            (resume::assess_new(&pipeline, &selected, quota), None)
        };
        if json {
            output::stdout(&format!("{}\n", serde_json::to_string_pretty(&assessment)?))?;
        } else {
            output::stdout(&render(&assessment, run.is_some(), &workdir))?;
        }
        Ok(if assessment.blockers.is_empty() {
            EXIT_OK
        } else {
            EXIT_ERROR
        })
    })
}

fn selected(pipeline: &edir_config::Pipeline, only: &[String]) -> anyhow::Result<Vec<String>> {
    Ok(edir_engine::select(pipeline, only)?)
}

fn render(a: &resume::Assessment, exists: bool, workdir: &Path) -> String {
    let mut out = String::new();
    if !exists {
        let _ = writeln!(
            out,
            "no run in `{}` yet: `run` starts one",
            workdir.display()
        );
    }
    if !a.blockers.is_empty() {
        let _ = writeln!(out, "this run cannot be resumed with this pipeline:");
        for b in &a.blockers {
            let _ = writeln!(out, "  - {b}");
        }
        let _ = writeln!(
            out,
            "restore the pipeline, or start a fresh run with `run --new` (the old one stays in the store)"
        );
    }
    let _ = writeln!(out, "\nmissing (per subcategory)");
    let _ = writeln!(
        out,
        "  {:<28} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "subcategory", "quota", "accepted", "active", "to draw", "drawn/budget"
    );
    for m in &a.missing {
        let _ = writeln!(
            out,
            "  {:<28} {:>8} {:>8} {:>8} {:>8} {:>12}",
            m.subcategory,
            m.quota,
            m.accepted,
            m.active,
            m.to_draw,
            format!("{}/{}", m.drawn, m.budget)
        );
    }
    let _ = writeln!(out, "\nstale (tasks recomputed, with their descendants)");
    if a.stale.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for s in &a.stale {
        let _ = writeln!(
            out,
            "  {:<14} {:<28} {:>6} tasks ({} samples): {}",
            s.stage, s.subcategory, s.tasks, s.samples, s.reason
        );
    }
    let _ = writeln!(out, "\nfailed");
    if a.failed.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for f in &a.failed {
        let what = if f.retried == f.tasks {
            "run retries them".to_string()
        } else if f.retried > 0 {
            format!("run retries {}", f.retried)
        } else {
            format!(
                "not retried by run: `edir-synth retry --failed --stage {} --error {}`",
                f.stage, f.class
            )
        };
        let _ = writeln!(
            out,
            "  {:<14} {:<28} {:<14} {:>6} tasks, {what}; e.g. {}",
            f.stage, f.subcategory, f.class, f.tasks, f.example
        );
    }
    let _ = writeln!(
        out,
        "\ntotal: {} samples to draw, {} stale tasks, {} failed tasks retried",
        a.missing.iter().map(|m| m.to_draw).sum::<u64>(),
        a.stale_tasks(),
        a.retried_tasks()
    );
    out
}

pub(crate) fn retry(
    workdir: Option<&Path>,
    store: Option<&str>,
    run: Option<&str>,
    stage: Option<&str>,
    class: Option<&str>,
) -> anyhow::Result<u8> {
    runtime()?.block_on(async {
        let store = crate::status::open_existing(workdir, store).await?;
        let run = crate::status::pick_run(&store, run).await?;
        let me = actor("retry");
        resume::claim_run(&store, &run.id, &me, LEASE).await?;
        let retried = resume::retry(&store, &run.id, stage, class, &me).await?;
        store.close().await;
        let filter = match (stage, class) {
            (None, None) => String::new(),
            (Some(s), None) => format!(" of stage `{s}`"),
            (None, Some(c)) => format!(" of class `{c}`"),
            (Some(s), Some(c)) => format!(" of stage `{s}` and class `{c}`"),
        };
        output::stdout(&format!(
            "re-queued {} failed tasks{filter} ({} samples are active again); `run` redoes them\n",
            retried.tasks, retried.samples
        ))?;
        Ok(EXIT_OK)
    })
}

pub(crate) fn regen(
    workdir: Option<&Path>,
    store: Option<&str>,
    run: Option<&str>,
    subcategory: &str,
    from_stage: Option<&str>,
) -> anyhow::Result<u8> {
    runtime()?.block_on(async {
        let store = crate::status::open_existing(workdir, store).await?;
        let run = crate::status::pick_run(&store, run).await?;
        let me = actor("regen");
        resume::claim_run(&store, &run.id, &me, LEASE).await?;
        let done = resume::regen(&store, &run.id, subcategory, from_stage, &me).await?;
        store.close().await;
        let text = match from_stage {
            None => format!(
                "superseded {} samples of `{}` (kept in the store for audit); `run` draws the subcategory afresh\n",
                done.samples, done.subcategory
            ),
            Some(stage) => format!(
                "superseded the outputs of `{stage}` and what follows it for {} samples of `{}` ({} tasks, kept in the store for audit); `run` remakes them\n",
                done.samples, done.subcategory, done.tasks
            ),
        };
        output::stdout(&text)?;
        Ok(EXIT_OK)
    })
}
