//! Tasks: claim with a lease, then complete or fail, each checkpoint fenced by the lease.
//!
//! A lease is (`task`, `owner`, `attempt`): claiming increments `attempts`, so a worker whose
//! lease expired and was claimed again can never write over the new holder; and a write after
//! `lease_expires_at` is refused even if nobody re-claimed, so an expired lease fails loudly.
//! Completing a task and readying its dependents is one transaction.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::StoreError;
use crate::error::query;
use crate::model::{
    BatchOutcome, Claim, Completion, Failure, Outcome, RunId, SampleId, TaskId, TaskRecord,
    TaskState,
};
use crate::rows;
use crate::store::{EventRow, Store, get, insert_event};
use crate::url::Backend;

const CLAIM_SQLITE: &str = "\
UPDATE tasks SET state = 'leased', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1, updated_at = $3 \
WHERE id IN ( \
    SELECT id FROM tasks \
    WHERE run_id = $4 AND stage = $5 \
      AND state = 'ready' AND not_before <= $3 \
    ORDER BY id LIMIT $6) \
RETURNING id, sample_id, stage, item, attempts";

const CLAIM_POSTGRES: &str = "\
UPDATE tasks SET state = 'leased', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1, updated_at = $3 \
WHERE id IN ( \
    SELECT id FROM tasks \
    WHERE run_id = $4 AND stage = $5 \
      AND state = 'ready' AND not_before <= $3 \
    ORDER BY id LIMIT $6 \
    FOR UPDATE SKIP LOCKED) \
RETURNING id, sample_id, stage, item, attempts";

const FAIL: &str = "\
UPDATE tasks SET state = $1, not_before = $2, error_class = $3, error_message = $4, \
    lease_owner = NULL, lease_expires_at = NULL, updated_at = $5, finished_at = $6 \
WHERE id = $7 AND state = 'leased' AND lease_owner = $8 AND attempts = $9 AND lease_expires_at >= $5";

/// When a lease taken at `now` for `lease` expires (ms).
pub(crate) fn lease_expiry(now: i64, lease: Duration) -> i64 {
    now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

/// A claim from a row of `RETURNING id, sample_id, stage, item, attempts`.
fn claim_from_row(
    row: &AnyRow,
    owner: &str,
    expires: i64,
    op: &'static str,
) -> Result<Claim, StoreError> {
    Ok(Claim {
        id: TaskId(get(row, "id", op)?),
        sample: SampleId(get(row, "sample_id", op)?),
        stage: get(row, "stage", op)?,
        item: get(row, "item", op)?,
        attempt: get(row, "attempts", op)?,
        owner: owner.to_string(),
        lease_expires_at: expires,
    })
}

/// Longest error message kept per task; the rest is cut (messages can quote whole replies).
const MAX_ERROR_MESSAGE: usize = 2_000;

impl Store {
    /// Claims up to `limit` ready and due tasks of `stage`, oldest first, leasing them to
    /// `owner` for `lease`. The walk follows the `(run, stage, state, id)` index, so a claim
    /// costs the same after a million finished tasks; tasks whose lease expired become
    /// claimable once [`Store::reclaim_expired`] puts them back to `ready` (the engine calls
    /// it at start and every few seconds).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn claim(
        &self,
        run: &RunId,
        stage: &str,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        const OP: &str = "claim tasks";
        let now = self.now();
        let expires = lease_expiry(now, lease);
        let sql = match self.backend() {
            Backend::Sqlite => CLAIM_SQLITE,
            Backend::Postgres => CLAIM_POSTGRES,
        };
        let mut tx = self.write(OP).await?;
        let rows = sqlx::query(sql)
            .bind(owner)
            .bind(expires)
            .bind(now)
            .bind(&run.0)
            .bind(stage)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(query(OP))?;
        tx.commit().await.map_err(query(OP))?;
        let mut claims = rows
            .iter()
            .map(|row| claim_from_row(row, owner, expires, OP))
            .collect::<Result<Vec<_>, StoreError>>()?;
        claims.sort_by_key(|c| c.id);
        Ok(claims)
    }

    /// Checkpoints one completed task and readies its dependents.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease expired or was taken over (nothing written).
    pub async fn complete(&self, completion: &Completion) -> Result<(), StoreError> {
        let outcome = self
            .complete_batch(std::slice::from_ref(completion))
            .await?;
        match outcome.lost.first() {
            Some(task) => Err(StoreError::LeaseLost {
                task: task.0,
                attempt: completion.attempt,
            }),
            None => Ok(()),
        }
    }

    /// Checkpoints many completed tasks in one transaction. Tasks whose lease was lost write
    /// nothing and are listed in the outcome; the others are written.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails (then nothing is written).
    pub async fn complete_batch(
        &self,
        completions: &[Completion],
    ) -> Result<BatchOutcome, StoreError> {
        const OP: &str = "complete tasks";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        let mut outcome = BatchOutcome::default();
        let refs: Vec<&Completion> = completions.iter().collect();
        let done = complete_many(&mut tx, self.backend(), &refs, now).await?;
        let mut written = Vec::with_capacity(completions.len());
        for c in completions {
            if done.contains(&c.task) {
                outcome.written += 1;
                written.push(c.task);
            } else {
                outcome.lost.push(c.task);
            }
        }
        ready_dependents(&mut tx, self.backend(), &written, now).await?;
        tx.commit().await.map_err(query(OP))?;
        Ok(outcome)
    }

    /// Records failed attempts in one transaction: back to `ready` at `retry_at`, or `failed`
    /// for good (with an event). Lost leases write nothing and are listed.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails.
    pub async fn fail_batch(&self, failures: &[Failure]) -> Result<BatchOutcome, StoreError> {
        const OP: &str = "fail tasks";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        let mut outcome = BatchOutcome::default();
        for f in failures {
            if fail_in(&mut tx, f, now).await? {
                outcome.written += 1;
            } else {
                outcome.lost.push(f.task);
            }
        }
        tx.commit().await.map_err(query(OP))?;
        Ok(outcome)
    }

    /// Records one failed attempt.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease expired or was taken over (nothing written).
    pub async fn fail(&self, failure: &Failure) -> Result<(), StoreError> {
        let outcome = self.fail_batch(std::slice::from_ref(failure)).await?;
        match outcome.lost.first() {
            Some(task) => Err(StoreError::LeaseLost {
                task: task.0,
                attempt: failure.attempt,
            }),
            None => Ok(()),
        }
    }

    /// Returns tasks whose lease expired to `ready`, where claims find them, and returns how
    /// many.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails.
    pub async fn reclaim_expired(&self, run: &RunId, actor: &str) -> Result<u64, StoreError> {
        const OP: &str = "reclaim expired leases";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        let reclaimed = sqlx::query(
            "UPDATE tasks SET state = 'ready', lease_owner = NULL, lease_expires_at = NULL, updated_at = $2 \
             WHERE run_id = $1 AND state = 'leased' AND lease_expires_at < $2",
        )
        .bind(&run.0)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(query(OP))?
        .rows_affected();
        if reclaimed > 0 {
            let detail = reclaimed.to_string();
            insert_event(
                &mut tx,
                EventRow {
                    run: &run.0,
                    at: now,
                    actor,
                    kind: "leases_reclaimed",
                    sample: None,
                    task: None,
                    detail: Some(&detail),
                },
            )
            .await?;
        }
        tx.commit().await.map_err(query(OP))?;
        Ok(reclaimed)
    }

    /// One task.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] or [`StoreError::Query`].
    pub async fn task(&self, task: TaskId) -> Result<TaskRecord, StoreError> {
        const OP: &str = "read task";
        let row = sqlx::query(
            "SELECT id, sample_id, stage, item, state, deps_pending, attempts, lease_owner, output_json, output_artifact, error_class, error_message \
             FROM tasks WHERE id = $1",
        )
        .bind(task.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(query(OP))?
        .ok_or_else(|| StoreError::NotFound { what: "task", id: task.0.to_string() })?;
        task_from_row(&row)
    }

    /// A sample's tasks, in creation order.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn tasks_of_sample(&self, sample: &SampleId) -> Result<Vec<TaskRecord>, StoreError> {
        const OP: &str = "list tasks";
        let rows = sqlx::query(
            "SELECT id, sample_id, stage, item, state, deps_pending, attempts, lease_owner, output_json, output_artifact, error_class, error_message \
             FROM tasks WHERE sample_id = $1 ORDER BY id",
        )
        .bind(&sample.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter().map(task_from_row).collect()
    }
}

/// Writes one failed attempt inside a transaction (with an event when it is final); `false`
/// when the lease was lost (nothing written).
pub(crate) async fn fail_in(
    tx: &mut Transaction<'static, Any>,
    f: &Failure,
    now: i64,
) -> Result<bool, StoreError> {
    const OP: &str = "fail tasks";
    let message = truncate(&f.message, MAX_ERROR_MESSAGE);
    let (state, not_before, finished) = match f.retry_at {
        Some(at) => (TaskState::Ready, at, None),
        None => (TaskState::Failed, 0, Some(now)),
    };
    let written = sqlx::query(FAIL)
        .bind(state.as_str())
        .bind(not_before)
        .bind(&f.class)
        .bind(message)
        .bind(now)
        .bind(finished)
        .bind(f.task.0)
        .bind(&f.owner)
        .bind(f.attempt)
        .execute(&mut **tx)
        .await
        .map_err(query(OP))?
        .rows_affected();
    if written != 1 {
        return Ok(false);
    }
    if f.retry_at.is_none() {
        let row = sqlx::query("SELECT run_id, sample_id FROM tasks WHERE id = $1")
            .bind(f.task.0)
            .fetch_one(&mut **tx)
            .await
            .map_err(query(OP))?;
        let run: String = get(&row, "run_id", OP)?;
        let sample: String = get(&row, "sample_id", OP)?;
        let detail = format!("{}: {message}", f.class);
        insert_event(
            tx,
            EventRow {
                run: &run,
                at: now,
                actor: &f.owner,
                kind: "task_failed",
                sample: Some(&sample),
                task: Some(f.task.0),
                detail: Some(&detail),
            },
        )
        .await?;
    }
    Ok(true)
}

/// Writes many completions in one statement; returns the tasks written. Each write is fenced
/// by its lease (`id`, `owner`, `attempt`, not expired): a task whose lease was lost or
/// expired is not written.
pub(crate) async fn complete_many(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    completions: &[&Completion],
    now: i64,
) -> Result<std::collections::HashSet<TaskId>, StoreError> {
    const OP: &str = "complete tasks";
    let mut written = std::collections::HashSet::new();
    if completions.is_empty() {
        return Ok(written);
    }
    let rows: Vec<_> = completions
        .iter()
        .map(|c| {
            let state = match c.outcome {
                Outcome::Done => TaskState::Done,
                Outcome::Skipped => TaskState::Skipped,
            };
            (
                c.task.0,
                c.owner.as_str(),
                c.attempt,
                state.as_str(),
                c.output_json.as_deref(),
                c.output_artifact.as_deref(),
                c.cache_key.as_deref(),
                c.endpoint.as_deref(),
                c.latency_ms,
                c.prompt_tokens,
                c.completion_tokens,
            )
        })
        .collect();
    let sql = format!(
        "UPDATE tasks SET state = v.state, output_json = v.output_json, output_artifact = v.output_artifact, \
            cache_key = COALESCE(v.cache_key, tasks.cache_key), endpoint = v.endpoint, latency_ms = v.latency_ms, \
            prompt_tokens = v.prompt_tokens, completion_tokens = v.completion_tokens, \
            lease_owner = NULL, lease_expires_at = NULL, error_class = NULL, error_message = NULL, \
            updated_at = $2, finished_at = $2 \
         FROM (SELECT CAST(e.value ->> 0 AS BIGINT) AS id, e.value ->> 1 AS owner, \
                      CAST(e.value ->> 2 AS BIGINT) AS attempt, e.value ->> 3 AS state, \
                      e.value ->> 4 AS output_json, e.value ->> 5 AS output_artifact, \
                      e.value ->> 6 AS cache_key, e.value ->> 7 AS endpoint, \
                      CAST(e.value ->> 8 AS BIGINT) AS latency_ms, CAST(e.value ->> 9 AS BIGINT) AS prompt_tokens, \
                      CAST(e.value ->> 10 AS BIGINT) AS completion_tokens \
               FROM {}) AS v \
         WHERE tasks.id = v.id AND tasks.state = 'leased' AND tasks.lease_owner = v.owner \
           AND tasks.attempts = v.attempt AND tasks.lease_expires_at >= $2 \
         RETURNING tasks.id",
        rows::source(backend, 1)
    );
    let found = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(rows::encode(&rows))
        .bind(now)
        .fetch_all(&mut **tx)
        .await
        .map_err(query(OP))?;
    for row in found {
        written.insert(TaskId(get(&row, "id", OP)?));
    }
    Ok(written)
}

/// `[[id], ...]`: task ids as the rows of a JSON parameter.
fn id_rows(tasks: &[TaskId]) -> String {
    let ids: Vec<[i64; 1]> = tasks.iter().map(|t| [t.0]).collect();
    rows::encode(&ids)
}

/// Decrements the pending count of every dependent of `tasks` (once per finished dependency)
/// and readies those with none left, in one statement.
pub(crate) async fn ready_dependents(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    tasks: &[TaskId],
    now: i64,
) -> Result<(), StoreError> {
    if tasks.is_empty() {
        return Ok(());
    }
    // One aggregate over the edges, joined once: cost linear in the batch.
    let sql = format!(
        "UPDATE tasks SET \
            state = CASE WHEN tasks.state = 'blocked' AND tasks.deps_pending - c.n <= 0 THEN 'ready' ELSE tasks.state END, \
            deps_pending = tasks.deps_pending - c.n, updated_at = $2 \
         FROM (SELECT task_id, COUNT(*) AS n FROM task_deps \
               WHERE dep_id IN (SELECT CAST(e.value ->> 0 AS BIGINT) FROM {}) GROUP BY task_id) AS c \
         WHERE tasks.id = c.task_id",
        rows::source(backend, 1)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id_rows(tasks))
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(query("ready dependents"))?;
    Ok(())
}

/// Leases the ready dependents of `tasks` to the hand-off's owner; returns the claims.
pub(crate) async fn lease_dependents(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    tasks: &[TaskId],
    hand_off: &crate::checkpoint::HandOff,
    now: i64,
) -> Result<Vec<Claim>, StoreError> {
    lease_in(tx, backend, Picked::DependentsOf, tasks, hand_off, now).await
}

/// Leases those of `tasks` that are ready to the hand-off's owner; returns the claims.
pub(crate) async fn lease_ready(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    tasks: &[TaskId],
    hand_off: &crate::checkpoint::HandOff,
    now: i64,
) -> Result<Vec<Claim>, StoreError> {
    lease_in(tx, backend, Picked::These, tasks, hand_off, now).await
}

/// Which tasks [`lease_in`] leases, given a list of task ids.
#[derive(Clone, Copy)]
enum Picked {
    /// Those tasks.
    These,
    /// The tasks that depend on them.
    DependentsOf,
}

/// Leases the ready, due tasks `picked` names, given `tasks`, to the hand-off's owner.
async fn lease_in(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    picked: Picked,
    tasks: &[TaskId],
    hand_off: &crate::checkpoint::HandOff,
    now: i64,
) -> Result<Vec<Claim>, StoreError> {
    const OP: &str = "hand off tasks";
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let expires = lease_expiry(now, hand_off.lease);
    let ids = format!(
        "SELECT CAST(e.value ->> 0 AS BIGINT) FROM {}",
        rows::source(backend, 1)
    );
    let picked = match picked {
        Picked::These => ids,
        Picked::DependentsOf => format!("SELECT task_id FROM task_deps WHERE dep_id IN ({ids})"),
    };
    let sql = format!(
        "UPDATE tasks SET state = 'leased', lease_owner = $2, lease_expires_at = $3, attempts = attempts + 1, updated_at = $4 \
         WHERE state = 'ready' AND not_before <= $4 AND id IN ({picked}) \
         RETURNING id, sample_id, stage, item, attempts"
    );
    let found = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id_rows(tasks))
        .bind(&hand_off.owner)
        .bind(expires)
        .bind(now)
        .fetch_all(&mut **tx)
        .await
        .map_err(query(OP))?;
    let mut claims = found
        .iter()
        .map(|row| claim_from_row(row, &hand_off.owner, expires, OP))
        .collect::<Result<Vec<_>, StoreError>>()?;
    claims.sort_by_key(|c| c.id);
    Ok(claims)
}

impl Store {
    /// Releases `owner`'s remaining leases in `run` (claimed, never started): back to `ready`.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn release_leases(&self, run: &RunId, owner: &str) -> Result<u64, StoreError> {
        const OP: &str = "release leases";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        let released = sqlx::query(
            "UPDATE tasks SET state = 'ready', lease_owner = NULL, lease_expires_at = NULL, updated_at = $3 \
             WHERE run_id = $1 AND lease_owner = $2 AND state = 'leased'",
        )
        .bind(&run.0)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(query(OP))?
        .rows_affected();
        tx.commit().await.map_err(query(OP))?;
        Ok(released)
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn task_from_row(row: &AnyRow) -> Result<TaskRecord, StoreError> {
    const OP: &str = "read task";
    let state: String = get(row, "state", OP)?;
    Ok(TaskRecord {
        id: TaskId(get(row, "id", OP)?),
        sample: SampleId(get(row, "sample_id", OP)?),
        stage: get(row, "stage", OP)?,
        item: get(row, "item", OP)?,
        state: TaskState::parse(&state).ok_or(StoreError::Corrupt {
            what: "task state",
            detail: state,
        })?,
        deps_pending: get(row, "deps_pending", OP)?,
        attempts: get(row, "attempts", OP)?,
        lease_owner: get(row, "lease_owner", OP)?,
        output_json: get(row, "output_json", OP)?,
        output_artifact: get(row, "output_artifact", OP)?,
        error_class: get(row, "error_class", OP)?,
        error_message: get(row, "error_message", OP)?,
    })
}
