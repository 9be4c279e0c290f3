//! The writer: checkpoints results in batches, one transaction each, then hands what became
//! ready straight to its stage and wakes the drawer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use edir_store::{SampleId, SampleState, Step};
use tokio::sync::mpsc;

use crate::error::EngineError;

use crate::engine::{Shared, Written};

/// How long the writer gathers results before a checkpoint that is not full.
const LINGER: Duration = Duration::from_millis(20);

/// Checkpoints results in batches; returns when every sender is gone and the queue is empty.
pub(crate) async fn writer(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Written>,
) -> Result<(), EngineError> {
    let mut batch: Vec<Written> = Vec::with_capacity(shared.options.batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Group commit: gather for up to LINGER (or a full batch), so a checkpoint's fixed
        // cost (an artifact sync, a transaction) is spread over many results; but not while
        // no task is running, when no result can come (the end of a run, a quiet stage chain:
        // waiting would only add LINGER to every hop of the samples still in progress).
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < shared.options.batch {
            if rx.is_empty() && nothing_running(&shared) {
                break;
            }
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let steps: Vec<Step> = batch.iter().map(|w| w.step.clone()).collect();
        let mut attempt = 0;
        let started = std::time::Instant::now();
        // The results name artifacts the operators wrote: durable before the rows are.
        if let Err(error) = crate::engine::sync_artifacts(&shared.artifacts).await {
            tracing::error!(%error, "cannot make the artifacts durable; stopping the run");
            shared.intake.cancel();
            shared.hard.cancel();
            return Err(error);
        }
        let synced = started.elapsed();
        let outcome = loop {
            let hand_off = shared.hand_off();
            match shared
                .store
                .checkpoint(&shared.run, &shared.owner, &steps, hand_off.as_ref())
                .await
            {
                Ok(outcome) => {
                    tracing::debug!(
                        results = steps.len(),
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        sync_ms = synced.as_secs_f64() * 1e3,
                        "checkpoint"
                    );
                    break outcome;
                }
                Err(error) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "checkpoint failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(error) => {
                    // Nothing of this batch is written; stop the run (resume redoes it).
                    tracing::error!(%error, "checkpoint failed for good; stopping the run");
                    shared.intake.cancel();
                    shared.hard.cancel();
                    return Err(error.into());
                }
            }
        };
        shared.progress.checkpoints.fetch_add(1, Ordering::Relaxed);
        let lost: HashSet<_> = outcome.lost.iter().copied().collect();
        let mut woken = vec![false; shared.pipeline.stages.len()];
        // Which subcategory each sample of the batch belongs to, and which stage rejected it.
        let mut subcategory_of: HashMap<&SampleId, String> = HashMap::new();
        let mut rejected_by: HashMap<&SampleId, usize> = HashMap::new();
        for w in &batch {
            let task = match &w.step {
                Step::Complete { completion, .. } => completion.task,
                Step::Fail { failure, .. } => failure.task,
            };
            let progress = &shared.progress.stages[w.stage];
            if lost.contains(&task) {
                tracing::warn!(task = %task, sample = %w.sample, "lease lost; the result was not written");
                shared.cache.remove(&w.sample);
                continue;
            }
            if let Some(class) = &w.error_class {
                progress.error(class);
            } else if w.skipped {
                progress.skipped.fetch_add(1, Ordering::Relaxed);
            } else {
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(latency) = w.latency_s {
                progress.observe(latency);
            }
            if let Some(context) = &w.context {
                subcategory_of.insert(&w.sample, context.subcategory.clone());
            }
            if w.rejected {
                rejected_by.insert(&w.sample, w.stage);
            }
            for &i in &shared.plan.dependents_at[w.stage] {
                woken[i] = true;
            }
        }
        // Each decision counts once, however many results of its sample the batch holds.
        for (sample, state) in &outcome.decided {
            let subcategory = match subcategory_of.get(sample) {
                Some(s) => s.clone(),
                None => shared.store.sample(sample).await?.subcategory,
            };
            if *state == SampleState::Rejected
                && let Some(stage) = rejected_by.get(sample)
            {
                shared.progress.stages[*stage]
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
            }
            let mut subs = shared
                .progress
                .subcategories
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(sub) = subs.iter_mut().find(|s| s.id == subcategory) {
                sub.active = sub.active.saturating_sub(1);
                match state {
                    SampleState::Accepted => sub.accepted += 1,
                    SampleState::Rejected => sub.rejected += 1,
                    _ => sub.failed += 1,
                }
            }
            drop(subs);
            shared.cache.remove(sample);
        }
        // What the checkpoint made ready is leased to us: hand it straight on.
        let handed = outcome.leased.len();
        for claim in outcome.leased {
            if let Some(&i) = shared.plan.position.get(&claim.stage) {
                let _ = shared.handoff[i].send(claim);
            }
        }
        if handed == 0 {
            for (i, wake) in woken.iter().enumerate() {
                if *wake {
                    shared.wake[i].notify_one();
                }
            }
        }
        if !outcome.decided.is_empty() {
            shared.drawer.notify_one();
        }
        batch.clear();
    }
    Ok(())
}

/// Whether no task is running now (their results are sent after they stop counting).
fn nothing_running(shared: &Shared) -> bool {
    shared
        .progress
        .stages
        .iter()
        .all(|s| s.in_flight.load(Ordering::Relaxed) <= 0)
}
