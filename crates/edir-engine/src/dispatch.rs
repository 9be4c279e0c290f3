//! Per stage: claim ready tasks (or take those handed over), run them within the stage's
//! concurrency, and send each result to the writer; and the lease renewer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use edir_store::{Claim, Completion, Failure, Outcome, SampleState, Step, Then};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use crate::context::Output;
use crate::operator::{TaskError, Verdict};

use crate::engine::{Shared, Written};

/// Extends this owner's leases while it works, so a lease outlives slow calls, and puts
/// expired leases (a crashed worker's) back to `ready`, so they are redone within a lease
/// and a third.
pub(crate) async fn renew(shared: Arc<Shared>) {
    let every = shared.options.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        if let Err(error) = shared.store.heartbeat(&shared.owner).await {
            tracing::warn!(%error, "cannot record this worker's heartbeat");
        }
        if let Err(error) = shared
            .store
            .renew_leases(&shared.run, &shared.owner, shared.options.lease)
            .await
        {
            tracing::warn!(%error, "cannot renew leases");
        }
        // Tasks of a worker that died become claimable again once their lease expired.
        match shared
            .store
            .reclaim_expired(&shared.run, &shared.owner)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(tasks = n, "reclaimed tasks whose lease expired");
                for wake in &shared.wake {
                    wake.notify_one();
                }
            }
            Err(error) => tracing::warn!(%error, "cannot reclaim expired leases"),
        }
    }
}

pub(crate) async fn dispatch(
    shared: Arc<Shared>,
    index: usize,
    mut handed: mpsc::UnboundedReceiver<Claim>,
    tx: mpsc::Sender<Written>,
    tracker: TaskTracker,
) {
    let stage = &shared.pipeline.stages[index];
    let capacity = match stage.op.endpoint() {
        Some(name) => shared
            .pipeline
            .endpoints
            .get(name)
            .map_or(16, |e| e.max_in_flight as usize),
        None => shared.options.filter_concurrency,
    }
    .max(1);
    let permits = Arc::new(Semaphore::new(capacity));
    let mut pending: std::collections::VecDeque<Claim> = std::collections::VecDeque::new();
    let mut look = true;
    loop {
        if shared.intake.is_cancelled() {
            return;
        }
        while let Ok(claim) = handed.try_recv() {
            pending.push_back(claim);
        }
        while permits.available_permits() > 0
            && let Some(claim) = pending.pop_front()
        {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            spawn_task(&shared, index, claim, permit, &tx, &tracker);
        }
        if !pending.is_empty() {
            tokio::select! {
                permit = permits.clone().acquire_owned() => drop(permit),
                () = shared.intake.cancelled() => return,
            }
            continue;
        }
        let free = permits.available_permits();
        if look && free > 0 {
            let limit = u32::try_from(free.min(shared.options.batch)).unwrap_or(u32::MAX);
            let started = std::time::Instant::now();
            let claimed = {
                let (store, run, stage, owner, lease) = (
                    shared.store.clone(),
                    shared.run.clone(),
                    stage.id.clone(),
                    shared.owner.clone(),
                    shared.options.lease,
                );
                shared
                    .store_thread
                    .spawn(async move { store.claim(&run, &stage, &owner, limit, lease).await })
                    .await
            };
            match claimed
                .map_err(|e| e.to_string())
                .and_then(|c| c.map_err(|e| e.to_string()))
            {
                Ok(claims) => {
                    tracing::debug!(stage = %stage.id, claimed = claims.len(), ms = started.elapsed().as_secs_f64() * 1e3, "claim");
                    // A full batch: there may be more.
                    look = claims.len() == limit as usize;
                    pending.extend(claims);
                }
                Err(error) => {
                    tracing::error!(stage = %stage.id, %error, "cannot claim tasks");
                    look = false;
                }
            }
            continue;
        }
        tokio::select! {
            claim = handed.recv() => match claim {
                Some(claim) => pending.push_back(claim),
                None => return,
            },
            () = shared.wake[index].notified() => look = true,
            () = tokio::time::sleep(shared.options.poll) => look = true,
            () = shared.intake.cancelled() => return,
        }
    }
}

fn spawn_task(
    shared: &Arc<Shared>,
    index: usize,
    claim: Claim,
    permit: tokio::sync::OwnedSemaphorePermit,
    tx: &mpsc::Sender<Written>,
    tracker: &TaskTracker,
) {
    let shared = shared.clone();
    let tx = tx.clone();
    tracker.spawn(async move {
        let progress = &shared.progress.stages[index];
        progress.in_flight.fetch_add(1, Ordering::Relaxed);
        let written = tokio::select! {
            written = execute(&shared, index, claim) => Some(written),
            () = shared.hard.cancelled() => None,
        };
        progress.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(written) = written {
            let _ = tx.send(written).await;
        }
        drop(permit);
    });
}

async fn execute(shared: &Shared, index: usize, claim: Claim) -> Written {
    let stage = &shared.pipeline.stages[index];
    let sink = shared.plan.sinks.contains(&stage.id);
    let context = shared
        .cache
        .get(&shared.store, &claim.sample, &shared.needs[index])
        .await;
    let result = match &context {
        Ok(context) => shared.operators.run(stage, claim.item, context).await,
        Err(error) => Err(TaskError {
            class: "internal".into(),
            message: error.to_string(),
        }),
    };
    let context = context.ok();
    let quota = context
        .as_ref()
        .and_then(|c| shared.quotas.get(&c.subcategory))
        .copied()
        .unwrap_or(u64::MAX);
    match result {
        Ok(output) => {
            let (then, rejected) = match &output.verdict {
                Verdict::Reject(reason) => (
                    Then::Decide {
                        state: SampleState::Rejected,
                        reason: reason.clone(),
                    },
                    true,
                ),
                Verdict::Continue if sink => (Then::AcceptIfComplete { quota }, false),
                Verdict::Continue => (Then::Continue, false),
            };
            let cache_key = context.as_ref().map(|context| {
                let upstream: Vec<(&str, i64, Option<crate::key::OutputDigest>)> = shared.needs
                    [index]
                    .iter()
                    .map(|(s, i)| (s.as_str(), *i, context.digest(s, *i)))
                    .collect();
                crate::key::task_key(
                    &shared.stage_keys[index],
                    context.seed,
                    claim.item,
                    &upstream,
                )
            });
            if let Some(context) = &context {
                context.put(
                    &stage.id,
                    claim.item,
                    Output {
                        json: output.json.clone(),
                        artifact: output.artifact.clone(),
                        skipped: output.skipped,
                    },
                );
            }
            #[expect(clippy::cast_precision_loss, reason = "seconds for metrics")]
            let latency_s = output.latency_ms.map(|ms| ms as f64 / 1000.0);
            let completion = Completion {
                task: claim.id,
                owner: claim.owner.clone(),
                attempt: claim.attempt,
                outcome: if output.skipped {
                    Outcome::Skipped
                } else {
                    Outcome::Done
                },
                output_json: (!output.skipped).then(|| output.json.to_string()),
                output_artifact: output.artifact,
                cache_key,
                endpoint: output.replica,
                latency_ms: output.latency_ms,
                prompt_tokens: output.prompt_tokens,
                completion_tokens: output.completion_tokens,
            };
            Written {
                step: Step::Complete {
                    completion,
                    sample: claim.sample.clone(),
                    stage: stage.id.clone(),
                    then,
                },
                stage: index,
                sample: claim.sample,
                context,
                error_class: None,
                rejected,
                skipped: output.skipped,
                latency_s,
            }
        }
        Err(error) => {
            tracing::debug!(stage = %stage.id, sample = %claim.sample, class = %error.class, message = %error.message, "task failed");
            let reason = format!("{}: {}: {}", stage.id, error.class, error.message);
            Written {
                step: Step::Fail {
                    failure: Failure {
                        task: claim.id,
                        owner: claim.owner.clone(),
                        attempt: claim.attempt,
                        class: error.class.clone(),
                        message: error.message,
                        retry_at: None,
                    },
                    sample: claim.sample.clone(),
                    stage: stage.id.clone(),
                    then: Then::Decide {
                        state: SampleState::Failed,
                        reason,
                    },
                },
                stage: index,
                sample: claim.sample,
                context,
                error_class: Some(error.class),
                rejected: false,
                skipped: false,
                latency_s: None,
            }
        }
    }
}
