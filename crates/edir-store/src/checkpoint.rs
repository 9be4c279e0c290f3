//! The engine's checkpoint: completions, failures and the sample decisions they imply, all in
//! one transaction, so a judge's verdict and the sample's fate are never written apart.
//!
//! A batch of a few hundred results costs one transaction (one fsync on SQLite) of a dozen
//! set-based statements, which is what lets the store keep up with thousands of model calls
//! per second.

use std::collections::{HashMap, HashSet};

use sqlx::{Any, Transaction};

use crate::StoreError;
use crate::error::query;
use crate::model::{Claim, Completion, Failure, RunId, SampleId, SampleState, TaskId};
use crate::rows;
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

impl Store {
    /// Writes a batch of results and the decisions they imply in one transaction. With
    /// `hand_off`, the tasks the batch made ready are leased to its owner in the same
    /// transaction and returned, so a worker hands finished work straight on to the next
    /// stage without a claim per stage (the engine's in-process channels).
    ///
    /// The statements are set-based (a dozen per batch, whatever its size): all completions,
    /// then the failures, then the decisions as if taken in the steps' order (a sample's first
    /// decision wins; every accept check sees the whole batch written).
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
        let backend = self.backend();
        let mut tx = self.write(OP).await?;
        let mut outcome = CheckpointOutcome::default();
        let completions: Vec<&Completion> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Complete { completion, .. } => Some(completion),
                Step::Fail { .. } => None,
            })
            .collect();
        let written = crate::tasks::complete_many(&mut tx, backend, &completions, now).await?;
        let mut completed = Vec::with_capacity(completions.len());
        // The written steps: (sample, stage, then).
        let mut kept: Vec<(&SampleId, &str, &Then)> = Vec::with_capacity(steps.len());
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
            if ok {
                kept.push((sample, stage.as_str(), then));
            } else {
                outcome.lost.push(task);
            }
        }
        outcome.written = kept.len();
        let decisions = self.decisions(&mut tx, &run.0, &kept).await?;
        outcome.decided = decide_many(&mut tx, backend, &run.0, &decisions, actor, now).await?;
        crate::tasks::ready_dependents(&mut tx, backend, &completed, now).await?;
        if let Some(hand_off) = hand_off {
            outcome.leased =
                crate::tasks::lease_dependents(&mut tx, backend, &completed, hand_off, now).await?;
        }
        tx.commit().await.map_err(query(OP))?;
        Ok(outcome)
    }

    /// What the written steps decide, one decision per sample (its first), in step order.
    /// A sink's completion accepts its sample when the sample is active and none of its tasks
    /// is left unfinished, unless the subcategory already has `quota` accepted samples: then it
    /// is rejected as surplus. On Postgres a transaction-scoped advisory lock per (run,
    /// subcategory) serialises the quota check, so two workers cannot both take the last place
    /// (SQLite has one writer at a time anyway).
    async fn decisions<'a>(
        &self,
        tx: &mut Transaction<'static, Any>,
        run: &str,
        kept: &[(&'a SampleId, &'a str, &'a Then)],
    ) -> Result<Vec<Decision<'a>>, StoreError> {
        const OP: &str = "check the quota";
        let backend = self.backend();
        let mut candidates: Vec<[&str; 1]> = kept
            .iter()
            .filter(|(_, _, then)| matches!(then, Then::AcceptIfComplete { .. }))
            .map(|(sample, _, _)| [sample.0.as_str()])
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        // Per candidate: its subcategory, whether it is complete, and (per subcategory) how
        // many samples are accepted already.
        let mut complete: HashMap<&str, String> = HashMap::new();
        let mut accepted: HashMap<String, u64> = HashMap::new();
        if !candidates.is_empty() {
            let sql = format!(
                "SELECT s.id, s.subcategory FROM samples s \
                 WHERE s.id IN (SELECT e.value ->> 0 FROM {}) AND s.state = 'active' \
                   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.sample_id = s.id AND t.state NOT IN ('done', 'skipped'))",
                rows::source(backend, 1)
            );
            let found = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(rows::encode(&candidates))
                .fetch_all(&mut **tx)
                .await
                .map_err(query(OP))?;
            let ids: HashSet<&str> = candidates.iter().map(|[id]| *id).collect();
            for row in &found {
                let id: String = get(row, "id", OP)?;
                if let Some(&candidate) = ids.get(id.as_str()) {
                    complete.insert(candidate, get(row, "subcategory", OP)?);
                }
            }
        }
        if !complete.is_empty() {
            let mut subcategories: Vec<[&str; 1]> =
                complete.values().map(|s| [s.as_str()]).collect();
            subcategories.sort_unstable();
            subcategories.dedup();
            let list = rows::encode(&subcategories);
            if backend == Backend::Postgres {
                // In a fixed order, so two writers cannot wait on each other.
                let sql = format!(
                    "SELECT COUNT(*) AS n FROM (SELECT pg_advisory_xact_lock(hashtext(CAST($2 AS TEXT) || '/' || (e.value ->> 0))) \
                     FROM {} ORDER BY e.key) AS locked",
                    rows::source(backend, 1)
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&list)
                    .bind(run)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(query(OP))?;
            }
            let sql = format!(
                "SELECT subcategory, COUNT(*) AS n FROM samples \
                 WHERE run_id = $2 AND state = 'accepted' AND subcategory IN (SELECT e.value ->> 0 FROM {}) \
                 GROUP BY subcategory",
                rows::source(backend, 1)
            );
            let found = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&list)
                .bind(run)
                .fetch_all(&mut **tx)
                .await
                .map_err(query(OP))?;
            for row in &found {
                let n: i64 = get(row, "n", OP)?;
                accepted.insert(get(row, "subcategory", OP)?, u64::try_from(n).unwrap_or(0));
            }
        }
        let mut decided: HashSet<&str> = HashSet::new();
        let mut decisions = Vec::new();
        for &(sample, stage, then) in kept {
            if decided.contains(sample.0.as_str()) {
                continue;
            }
            let (state, reason) = match then {
                Then::Continue => continue,
                Then::Decide { state, reason } => (*state, Some(reason.clone())),
                Then::AcceptIfComplete { quota } => {
                    let Some(subcategory) = complete.get(sample.0.as_str()) else {
                        continue;
                    };
                    let n = accepted.entry(subcategory.clone()).or_insert(0);
                    if *n >= *quota {
                        let surplus = format!(
                            "surplus: {subcategory} already has its quota of {quota} accepted samples"
                        );
                        (SampleState::Rejected, Some(surplus))
                    } else {
                        *n += 1;
                        (SampleState::Accepted, None)
                    }
                }
            };
            decided.insert(sample.0.as_str());
            decisions.push(Decision {
                sample,
                state,
                stage,
                reason,
            });
        }
        Ok(decisions)
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

/// A decision about one sample.
#[derive(Debug)]
struct Decision<'a> {
    sample: &'a SampleId,
    state: SampleState,
    stage: &'a str,
    reason: Option<String>,
}

/// Applies decisions (one per sample) in a few statements: sets the states of the samples
/// still active, skips the unstarted tasks of those not accepted, records an event each.
/// Returns the samples it decided, in order (an already decided sample is left as it is).
async fn decide_many(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    run: &str,
    decisions: &[Decision<'_>],
    actor: &str,
    now: i64,
) -> Result<Vec<(SampleId, SampleState)>, StoreError> {
    const OP: &str = "decide samples";
    if decisions.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<_> = decisions
        .iter()
        .map(|d| {
            (
                d.sample.0.as_str(),
                d.state.as_str(),
                d.stage,
                d.reason.as_deref(),
                format!("sample_{}", d.state),
            )
        })
        .collect();
    let list = rows::encode(&rows);
    let sql = format!(
        "UPDATE samples SET state = v.state, decided_stage = v.stage, reason = v.reason, updated_at = $2 \
         FROM (SELECT e.value ->> 0 AS id, e.value ->> 1 AS state, e.value ->> 2 AS stage, e.value ->> 3 AS reason \
               FROM {}) AS v \
         WHERE samples.id = v.id AND samples.state = 'active' \
         RETURNING samples.id",
        rows::source(backend, 1)
    );
    let found = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&list)
        .bind(now)
        .fetch_all(&mut **tx)
        .await
        .map_err(query(OP))?;
    let mut changed = HashSet::with_capacity(found.len());
    for row in &found {
        changed.insert(get::<String>(row, "id", OP)?);
    }
    let decided: Vec<_> = rows
        .into_iter()
        .filter(|row| changed.contains(row.0))
        .collect();
    let stopped: Vec<[&str; 1]> = decided
        .iter()
        .filter(|row| row.1 != SampleState::Accepted.as_str())
        .map(|row| [row.0])
        .collect();
    if !stopped.is_empty() {
        // An accepted sample has no unfinished task left; the others stop here.
        let sql = format!(
            "UPDATE tasks SET state = 'skipped', updated_at = $2 \
             WHERE sample_id IN (SELECT e.value ->> 0 FROM {}) AND state IN ('blocked', 'ready')",
            rows::source(backend, 1)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(rows::encode(&stopped))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(query(OP))?;
    }
    if !decided.is_empty() {
        let sql = format!(
            "INSERT INTO events (run_id, at, actor, kind, sample_id, task_id, detail) \
             SELECT CAST($2 AS TEXT), CAST($3 AS BIGINT), CAST($4 AS TEXT), e.value ->> 4, e.value ->> 0, NULL, e.value ->> 3 FROM {} ORDER BY e.key",
            rows::source(backend, 1)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(rows::encode(&decided))
            .bind(run)
            .bind(now)
            .bind(actor)
            .execute(&mut **tx)
            .await
            .map_err(query(OP))?;
    }
    Ok(decisions
        .iter()
        .filter(|d| changed.contains(&d.sample.0))
        .map(|d| (d.sample.clone(), d.state))
        .collect())
}
