//! The engine's checkpoint: completions, failures and the sample decisions they imply, all in
//! one transaction, so a judge's verdict and the sample's fate are never written apart.
//!
//! A batch of a few hundred results costs one transaction (one fsync on SQLite), which is
//! what lets the store keep up with thousands of model calls per second.

use sqlx::{Any, Transaction};

use crate::StoreError;
use crate::error::query;
use crate::model::{Claim, Completion, Failure, RunId, SampleId, SampleState, TaskId};
use crate::store::{EventRow, Store, get, insert_event};
use crate::url::Backend;

/// What a written result means for its sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// Nothing (more tasks follow).
    Continue,
    /// Decide the sample now: rejected by a judge or filter, or failed for good.
    Decide {
        /// `rejected` or `failed`.
        state: SampleState,
        /// Why.
        reason: String,
    },
    /// Accept the sample if none of its tasks is left unfinished (a sink stage finished),
    /// unless its subcategory already has `quota` accepted samples: then it is rejected as
    /// surplus, so a subcategory never holds more than its quota, whatever reopened samples
    /// or several workers race for the last place.
    AcceptIfComplete {
        /// The subcategory's quota.
        quota: u64,
    },
}

/// One result to checkpoint.
#[derive(Debug, Clone)]
pub enum Step {
    /// A finished task.
    Complete {
        /// The result.
        completion: Completion,
        /// Its sample.
        sample: SampleId,
        /// The stage (recorded as the deciding stage).
        stage: String,
        /// What it means for the sample.
        then: Then,
    },
    /// A failed attempt.
    Fail {
        /// The failure.
        failure: Failure,
        /// Its sample.
        sample: SampleId,
        /// The stage.
        stage: String,
        /// What it means for the sample (`Decide` with `failed` when final).
        then: Then,
    },
}

/// What a checkpoint wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointOutcome {
    /// Results written.
    pub written: usize,
    /// Tasks whose lease was lost (nothing written for them).
    pub lost: Vec<TaskId>,
    /// Samples decided by this checkpoint, with their new state.
    pub decided: Vec<(SampleId, SampleState)>,
    /// Tasks this checkpoint made ready and leased to the caller (see [`Store::checkpoint`]).
    pub leased: Vec<Claim>,
}

/// Lease what a checkpoint makes ready to this owner, for this long.
#[derive(Debug, Clone)]
pub struct HandOff {
    /// The lease holder.
    pub owner: String,
    /// The lease.
    pub lease: std::time::Duration,
}

const UNFINISHED: &str =
    "SELECT COUNT(*) AS n FROM tasks WHERE sample_id = $1 AND state NOT IN ('done', 'skipped')";

impl Store {
    /// Writes a batch of results and the decisions they imply in one transaction. With
    /// `hand_off`, the tasks the batch made ready are leased to its owner in the same
    /// transaction and returned, so a worker hands finished work straight on to the next
    /// stage without a claim per stage (the engine's in-process channels).
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails (then nothing is written).
    pub async fn checkpoint(
        &self,
        run: &RunId,
        actor: &str,
        steps: &[Step],
        hand_off: Option<&HandOff>,
    ) -> Result<CheckpointOutcome, StoreError> {
        const OP: &str = "checkpoint";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        let mut outcome = CheckpointOutcome::default();
        // All completions in a few multi-row statements, then the failures, then what they
        // mean for their samples (every accept check sees the whole batch written).
        let completions: Vec<&Completion> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Complete { completion, .. } => Some(completion),
                Step::Fail { .. } => None,
            })
            .collect();
        let written = crate::tasks::complete_many(&mut tx, &completions, now).await?;
        let mut completed = Vec::with_capacity(completions.len());
        for step in steps {
            let (ok, task, sample, stage, then) = match step {
                Step::Complete {
                    completion,
                    sample,
                    stage,
                    then,
                } => {
                    let ok = written.contains(&completion.task);
                    if ok {
                        completed.push(completion.task);
                    }
                    (ok, completion.task, sample, stage, then)
                }
                Step::Fail {
                    failure,
                    sample,
                    stage,
                    then,
                } => (
                    crate::tasks::fail_in(&mut tx, failure, now).await?,
                    failure.task,
                    sample,
                    stage,
                    then,
                ),
            };
            if !ok {
                outcome.lost.push(task);
                continue;
            }
            outcome.written += 1;
            let decision = match then {
                Then::Continue => None,
                Then::Decide { state, reason } => Some((*state, Some(reason.clone()))),
                Then::AcceptIfComplete { quota } => {
                    let row = sqlx::query(UNFINISHED)
                        .bind(&sample.0)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(query(OP))?;
                    let unfinished: i64 = get(&row, "n", OP)?;
                    if unfinished == 0 {
                        match self.accepted_room(&mut tx, &run.0, sample, *quota).await? {
                            None => Some((SampleState::Accepted, None)),
                            Some(surplus) => Some((SampleState::Rejected, Some(surplus))),
                        }
                    } else {
                        None
                    }
                }
            };
            if let Some((state, reason)) = decision
                && decide_in(
                    &mut tx,
                    &run.0,
                    sample,
                    state,
                    Some(stage),
                    reason.as_deref(),
                    actor,
                    now,
                )
                .await?
            {
                outcome.decided.push((sample.clone(), state));
            }
        }
        crate::tasks::ready_dependents(&mut tx, &completed, now).await?;
        if let Some(hand_off) = hand_off {
            outcome.leased =
                crate::tasks::lease_dependents(&mut tx, &completed, hand_off, now).await?;
        }
        tx.commit().await.map_err(query(OP))?;
        Ok(outcome)
    }

    /// `None` when the sample's subcategory has room for one more accepted sample; otherwise
    /// the surplus reason. On Postgres a transaction-scoped advisory lock per (run,
    /// subcategory) serialises the check, so two workers cannot both take the last place
    /// (SQLite has one writer at a time anyway).
    async fn accepted_room(
        &self,
        tx: &mut Transaction<'static, Any>,
        run: &str,
        sample: &SampleId,
        quota: u64,
    ) -> Result<Option<String>, StoreError> {
        const OP: &str = "check the quota";
        let row = sqlx::query("SELECT subcategory FROM samples WHERE id = $1")
            .bind(&sample.0)
            .fetch_one(&mut **tx)
            .await
            .map_err(query(OP))?;
        let subcategory: String = get(&row, "subcategory", OP)?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))::TEXT AS locked")
                .bind(format!("{run}/{subcategory}"))
                .fetch_one(&mut **tx)
                .await
                .map_err(query(OP))?;
        }
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM samples WHERE run_id = $1 AND subcategory = $2 AND state = 'accepted'",
        )
        .bind(run)
        .bind(&subcategory)
        .fetch_one(&mut **tx)
        .await
        .map_err(query(OP))?;
        let accepted: i64 = get(&row, "n", OP)?;
        Ok((u64::try_from(accepted).unwrap_or(0) >= quota).then(|| {
            format!("surplus: {subcategory} already has its quota of {quota} accepted samples")
        }))
    }

    /// Extends every lease `owner` holds in `run` to `now + lease`; returns how many. Workers
    /// call it periodically, so a lease outlives slow calls but expires soon after a crash.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn renew_leases(
        &self,
        run: &RunId,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<u64, StoreError> {
        const OP: &str = "renew leases";
        let now = self.now();
        let expires = crate::tasks::lease_expiry(now, lease);
        let mut tx = self.write(OP).await?;
        let renewed = sqlx::query(
            "UPDATE tasks SET lease_expires_at = $1 \
             WHERE run_id = $2 AND lease_owner = $3 AND state = 'leased' AND lease_expires_at >= $4",
        )
        .bind(expires)
        .bind(&run.0)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(query(OP))?
        .rows_affected();
        tx.commit().await.map_err(query(OP))?;
        Ok(renewed)
    }
}

/// Decides an active sample inside a transaction: sets its state, skips its tasks that have not
/// started, records an event. Returns `false` when it was already decided.
#[expect(clippy::too_many_arguments, reason = "one row's columns")]
pub(crate) async fn decide_in(
    tx: &mut Transaction<'static, Any>,
    run: &str,
    sample: &SampleId,
    state: SampleState,
    stage: Option<&str>,
    reason: Option<&str>,
    actor: &str,
    now: i64,
) -> Result<bool, StoreError> {
    const OP: &str = "decide sample";
    let changed = sqlx::query(
        "UPDATE samples SET state = $1, decided_stage = $2, reason = $3, updated_at = $4 \
         WHERE id = $5 AND state = 'active'",
    )
    .bind(state.as_str())
    .bind(stage)
    .bind(reason)
    .bind(now)
    .bind(&sample.0)
    .execute(&mut **tx)
    .await
    .map_err(query(OP))?
    .rows_affected();
    if changed == 0 {
        return Ok(false);
    }
    if state != SampleState::Accepted {
        // An accepted sample has no unfinished task left; the others stop here.
        sqlx::query(
            "UPDATE tasks SET state = 'skipped', updated_at = $1 WHERE sample_id = $2 AND state IN ('blocked', 'ready')",
        )
        .bind(now)
        .bind(&sample.0)
        .execute(&mut **tx)
        .await
        .map_err(query(OP))?;
    }
    let kind = format!("sample_{state}");
    insert_event(
        tx,
        EventRow {
            run,
            at: now,
            actor,
            kind: &kind,
            sample: Some(&sample.0),
            task: None,
            detail: reason,
        },
    )
    .await?;
    Ok(true)
}
