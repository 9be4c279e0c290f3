//! Resume, retry and regen: workers and their heartbeats, reopening tasks (their old outputs
//! kept in `task_history`), superseding samples, archiving a run for `--new`, what stale
//! detection reads, and the invariants a store must hold after any crash.

use std::collections::BTreeMap;

use sqlx::{Any, Transaction};

use crate::StoreError;
use crate::error::query;
use crate::model::{RunId, SampleId};
use crate::store::{EventRow, Store, get, insert_event};

/// Characters of a cache key that identify the stage's definition (the rest hashes the
/// task's own inputs). Stale detection compares this prefix.
pub const STAGE_KEY_LEN: usize = 16;

/// Samples per reopen statement.
const SAMPLES_PER_STATEMENT: usize = 100;

/// A process working on a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Its lease owner name.
    pub owner: String,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: i64,
    /// Last heartbeat (ms since the epoch).
    pub heartbeat_at: i64,
}

/// Done tasks of live (active or accepted) samples per stage, stage key and subcategory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGroup {
    /// Stage id.
    pub stage: String,
    /// The stage part of the tasks' cache key (`None`: written without one).
    pub key: Option<String>,
    /// Subcategory id.
    pub subcategory: String,
    /// Samples.
    pub samples: i64,
}

/// A failed task whose sample is not superseded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedTask {
    /// Its sample.
    pub sample: SampleId,
    /// The sample's subcategory.
    pub subcategory: String,
    /// The sample's ordinal.
    pub ordinal: i64,
    /// Stage id.
    pub stage: String,
    /// Error class.
    pub class: String,
    /// Error message.
    pub message: String,
    /// Attempts since the last retry (the attempt budget used).
    pub attempts: i64,
}

impl Store {
    /// Announces `owner` as working on `run` (or refreshes it).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn register_worker(
        &self,
        run: &RunId,
        owner: &str,
        host: &str,
        pid: u32,
    ) -> Result<(), StoreError> {
        const OP: &str = "register worker";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        sqlx::query(
            "INSERT INTO workers (owner, run_id, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (owner) DO UPDATE SET run_id = $2, host = $3, pid = $4, heartbeat_at = $5",
        )
        .bind(owner)
        .bind(&run.0)
        .bind(host)
        .bind(i64::from(pid))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(query(OP))?;
        tx.commit().await.map_err(query(OP))
    }

    /// Refreshes `owner`'s heartbeat.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn heartbeat(&self, owner: &str) -> Result<(), StoreError> {
        const OP: &str = "heartbeat";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        sqlx::query("UPDATE workers SET heartbeat_at = $1 WHERE owner = $2")
            .bind(now)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(query(OP))?;
        tx.commit().await.map_err(query(OP))
    }

    /// Removes `owner` (a clean exit, or a worker found dead).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn unregister_worker(&self, owner: &str) -> Result<(), StoreError> {
        const OP: &str = "unregister worker";
        let mut tx = self.write(OP).await?;
        sqlx::query("DELETE FROM workers WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(query(OP))?;
        tx.commit().await.map_err(query(OP))
    }

    /// The workers registered on `run`, live or not (the caller judges by heartbeat and pid).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn workers(&self, run: &RunId) -> Result<Vec<Worker>, StoreError> {
        const OP: &str = "list workers";
        let rows = sqlx::query(
            "SELECT owner, host, pid, heartbeat_at FROM workers WHERE run_id = $1 ORDER BY owner",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter()
            .map(|row| {
                Ok(Worker {
                    owner: get(row, "owner", OP)?,
                    host: get(row, "host", OP)?,
                    pid: get(row, "pid", OP)?,
                    heartbeat_at: get(row, "heartbeat_at", OP)?,
                })
            })
            .collect()
    }

    /// Renames the run called `name` out of the way (`name@<run id>`, state `archived`), so
    /// `run --new` starts afresh under the same name; everything of the old run stays in the
    /// store. Returns whether there was one.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails.
    pub async fn archive_run(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        const OP: &str = "archive run";
        let Some(run) = self.find_run(name).await? else {
            return Ok(false);
        };
        let now = self.now();
        let mut tx = self.write(OP).await?;
        sqlx::query("UPDATE runs SET name = $1, state = 'archived', updated_at = $2 WHERE id = $3")
            .bind(format!("{name}@{}", run.id))
            .bind(now)
            .bind(&run.id.0)
            .execute(&mut *tx)
            .await
            .map_err(query(OP))?;
        insert_event(
            &mut tx,
            EventRow::of_run(&run.id.0, now, actor, "run_archived", Some(name)),
        )
        .await?;
        tx.commit().await.map_err(query(OP))?;
        Ok(true)
    }

    /// The stages and fan-out widths the run's tasks have (`stage -> items`).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn task_shape(&self, run: &RunId) -> Result<BTreeMap<String, i64>, StoreError> {
        const OP: &str = "task shape";
        let rows = sqlx::query(
            "SELECT stage, MAX(item) + 1 AS items FROM tasks WHERE run_id = $1 GROUP BY stage",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter()
            .map(|row| Ok((get(row, "stage", OP)?, get(row, "items", OP)?)))
            .collect()
    }

    /// The stage keys of finished tasks of live samples, grouped (see [`KeyGroup`]).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn key_groups(&self, run: &RunId) -> Result<Vec<KeyGroup>, StoreError> {
        const OP: &str = "cache key groups";
        let sql = format!(
            "SELECT t.stage AS stage, substr(t.cache_key, 1, {STAGE_KEY_LEN}) AS k, s.subcategory AS subcategory, \
                    COUNT(DISTINCT t.sample_id) AS n \
             FROM tasks t JOIN samples s ON s.id = t.sample_id \
             WHERE t.run_id = $1 AND s.state IN ('active', 'accepted') \
               AND t.state IN ('done', 'skipped') AND t.finished_at IS NOT NULL \
             GROUP BY t.stage, substr(t.cache_key, 1, {STAGE_KEY_LEN}), s.subcategory \
             ORDER BY t.stage, s.subcategory"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&run.0)
            .fetch_all(&self.pool)
            .await
            .map_err(query(OP))?;
        rows.iter()
            .map(|row| {
                Ok(KeyGroup {
                    stage: get(row, "stage", OP)?,
                    key: get(row, "k", OP)?,
                    subcategory: get(row, "subcategory", OP)?,
                    samples: get(row, "n", OP)?,
                })
            })
            .collect()
    }

    /// Live samples with a finished task of `stage` whose stage key is `key`.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn samples_with_key(
        &self,
        run: &RunId,
        stage: &str,
        key: &str,
    ) -> Result<Vec<SampleId>, StoreError> {
        const OP: &str = "samples by cache key";
        let sql = format!(
            "SELECT DISTINCT t.sample_id AS sample_id FROM tasks t JOIN samples s ON s.id = t.sample_id \
             WHERE t.run_id = $1 AND t.stage = $2 AND substr(t.cache_key, 1, {STAGE_KEY_LEN}) = $3 \
               AND s.state IN ('active', 'accepted') AND t.state IN ('done', 'skipped') \
               AND t.finished_at IS NOT NULL \
             ORDER BY t.sample_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&run.0)
            .bind(stage)
            .bind(key)
            .fetch_all(&self.pool)
            .await
            .map_err(query(OP))?;
        rows.iter()
            .map(|row| Ok(SampleId(get(row, "sample_id", OP)?)))
            .collect()
    }

    /// Failed tasks of samples that are not superseded, by subcategory and ordinal.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn failed_tasks(&self, run: &RunId) -> Result<Vec<FailedTask>, StoreError> {
        const OP: &str = "failed tasks";
        let rows = sqlx::query(
            "SELECT t.sample_id AS sample_id, s.subcategory AS subcategory, s.ordinal AS ordinal, t.stage AS stage, \
                    t.error_class AS error_class, t.error_message AS error_message, \
                    t.attempts - t.attempt_base AS used \
             FROM tasks t JOIN samples s ON s.id = t.sample_id \
             WHERE t.run_id = $1 AND t.state = 'failed' AND s.state <> 'superseded' \
             ORDER BY s.subcategory, s.ordinal, t.stage, t.item",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter()
            .map(|row| {
                Ok(FailedTask {
                    sample: SampleId(get(row, "sample_id", OP)?),
                    subcategory: get(row, "subcategory", OP)?,
                    ordinal: get(row, "ordinal", OP)?,
                    stage: get(row, "stage", OP)?,
                    class: get::<Option<String>>(row, "error_class", OP)?.unwrap_or_default(),
                    message: get::<Option<String>>(row, "error_message", OP)?.unwrap_or_default(),
                    attempts: get(row, "used", OP)?,
                })
            })
            .collect()
    }

    /// Reopens `stages` of `samples`: their tasks' outputs and errors go to `task_history`
    /// (marked with `why`), the tasks become `blocked` or `ready` again with a fresh attempt
    /// budget, the tasks their samples' decision had skipped are revived, and the samples become
    /// `active` again (their decision cleared; `bump_generation` counts a regen). The next `run`
    /// computes exactly what was reopened. Returns how many tasks were reset.
    ///
    /// The caller makes sure no live worker holds the run (see [`Store::workers`]).
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails (then nothing is changed).
    pub async fn reopen(
        &self,
        run: &RunId,
        actor: &str,
        samples: &[SampleId],
        stages: &[String],
        why: &str,
        bump_generation: bool,
    ) -> Result<u64, StoreError> {
        const OP: &str = "reopen tasks";
        if samples.is_empty() || stages.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let mut tx = self.write(OP).await?;
        let mut reset = 0;
        for chunk in samples.chunks(SAMPLES_PER_STATEMENT) {
            reset += reopen_chunk(&mut tx, run, chunk, stages, why, bump_generation, now).await?;
        }
        let detail = serde_json::json!({
            "why": why,
            "stages": stages,
            "samples": samples.len(),
            "tasks": reset,
        })
        .to_string();
        insert_event(
            &mut tx,
            EventRow::of_run(&run.0, now, actor, "tasks_reopened", Some(&detail)),
        )
        .await?;
        tx.commit().await.map_err(query(OP))?;
        Ok(reset)
    }

    /// Marks every sample of `subcategory` that is not superseded yet as `superseded` (kept,
    /// with all its tasks, for audit); the next `run` draws the subcategory afresh, one
    /// generation up. Returns how many samples, and the generation the new ones get.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails.
    pub async fn supersede_subcategory(
        &self,
        run: &RunId,
        actor: &str,
        subcategory: &str,
    ) -> Result<(u64, i64), StoreError> {
        const OP: &str = "supersede samples";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        let superseded = sqlx::query(
            "UPDATE samples SET state = 'superseded', updated_at = $1 \
             WHERE run_id = $2 AND subcategory = $3 AND state <> 'superseded'",
        )
        .bind(now)
        .bind(&run.0)
        .bind(subcategory)
        .execute(&mut *tx)
        .await
        .map_err(query(OP))?
        .rows_affected();
        // Their unfinished tasks stop: nothing claims them again.
        sqlx::query(
            "UPDATE tasks SET state = 'skipped', lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE state IN ('blocked', 'ready', 'leased') AND sample_id IN \
               (SELECT id FROM samples WHERE run_id = $2 AND subcategory = $3 AND state = 'superseded')",
        )
        .bind(now)
        .bind(&run.0)
        .bind(subcategory)
        .execute(&mut *tx)
        .await
        .map_err(query(OP))?;
        let row = sqlx::query(
            "SELECT COALESCE(MAX(generation), -1) + 1 AS g FROM samples WHERE run_id = $1 AND subcategory = $2",
        )
        .bind(&run.0)
        .bind(subcategory)
        .fetch_one(&mut *tx)
        .await
        .map_err(query(OP))?;
        let generation: i64 = get(&row, "g", OP)?;
        let detail = serde_json::json!({
            "subcategory": subcategory,
            "samples": superseded,
            "generation": generation,
        })
        .to_string();
        insert_event(
            &mut tx,
            EventRow::of_run(&run.0, now, actor, "subcategory_superseded", Some(&detail)),
        )
        .await?;
        tx.commit().await.map_err(query(OP))?;
        Ok((superseded, generation))
    }

    /// The generation new samples of each subcategory get: one more than any superseded one.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn next_generations(&self, run: &RunId) -> Result<BTreeMap<String, i64>, StoreError> {
        const OP: &str = "next generations";
        let rows = sqlx::query(
            "SELECT subcategory, MAX(generation) + 1 AS g FROM samples \
             WHERE run_id = $1 AND state = 'superseded' GROUP BY subcategory",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter()
            .map(|row| Ok((get(row, "subcategory", OP)?, get(row, "g", OP)?)))
            .collect()
    }

    /// Rows of `task_history` for `run` (tasks whose outputs were superseded).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn history_count(&self, run: &RunId) -> Result<i64, StoreError> {
        const OP: &str = "count task history";
        let row = sqlx::query("SELECT COUNT(*) AS n FROM task_history WHERE run_id = $1")
            .bind(&run.0)
            .fetch_one(&self.pool)
            .await
            .map_err(query(OP))?;
        get(&row, "n", OP)
    }

    /// What must hold of `run` after any crash and resume; returns the violations (empty when
    /// sound). `finished`: the run ended normally, so no sample may still be active and no task
    /// leased. `unique_references`: no reference is used twice within a subcategory.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails.
    pub async fn verify(
        &self,
        run: &RunId,
        quotas: &BTreeMap<String, u64>,
        finished: bool,
        unique_references: bool,
    ) -> Result<Vec<String>, StoreError> {
        const OP: &str = "verify store";
        let mut checks: Vec<(&str, &str)> = vec![
            (
                "SELECT COUNT(*) AS n FROM tasks t JOIN samples s ON s.id = t.sample_id \
             WHERE s.run_id = $1 AND s.state = 'accepted' \
               AND NOT (t.state = 'done' OR (t.state = 'skipped' AND t.finished_at IS NOT NULL))",
                "tasks of accepted samples are not done",
            ),
            (
                "SELECT COUNT(*) AS n FROM tasks t LEFT JOIN samples s ON s.id = t.sample_id \
             WHERE t.run_id = $1 AND (s.id IS NULL OR s.run_id <> t.run_id)",
                "tasks have no sample in the run (orphans)",
            ),
            (
                "SELECT COUNT(*) AS n FROM task_deps d JOIN tasks t ON t.id = d.task_id \
             LEFT JOIN tasks u ON u.id = d.dep_id \
             WHERE t.run_id = $1 AND (u.id IS NULL OR u.sample_id <> t.sample_id)",
                "dependency edges point outside their sample (orphans)",
            ),
            (
                "SELECT COUNT(*) AS n FROM (SELECT subcategory, ordinal FROM samples \
               WHERE run_id = $1 AND state <> 'superseded' GROUP BY subcategory, ordinal HAVING COUNT(*) > 1) dup",
                "(subcategory, ordinal) pairs are drawn twice (duplicate samples)",
            ),
            (
                "SELECT COUNT(*) AS n FROM (SELECT sample_id, stage, item FROM tasks WHERE run_id = $1 \
               GROUP BY sample_id, stage, item HAVING COUNT(*) > 1) dup",
                "tasks exist twice (a task done twice)",
            ),
            (
                "SELECT COUNT(*) AS n FROM tasks t JOIN samples s ON s.id = t.sample_id \
             WHERE s.run_id = $1 AND t.state = 'done' AND (t.output_json IS NULL AND t.output_artifact IS NULL)",
                "done tasks have no output",
            ),
            (
                "SELECT COUNT(*) AS n FROM tasks t JOIN samples s ON s.id = t.sample_id \
             WHERE s.run_id = $1 AND s.state IN ('rejected', 'failed', 'superseded') AND t.state IN ('blocked', 'ready')",
                "tasks of decided samples are still waiting",
            ),
        ];
        if unique_references {
            checks.extend([
                ("SELECT COUNT(*) AS n FROM (SELECT subcategory, reference_name FROM samples \
                   WHERE run_id = $1 AND state <> 'superseded' GROUP BY subcategory, reference_name HAVING COUNT(*) > 1) dup",
                 "references are used twice within a subcategory"),
            ]);
        }
        if finished {
            checks.extend([
                (
                    "SELECT COUNT(*) AS n FROM samples WHERE run_id = $1 AND state = 'active'",
                    "samples are still active in a finished run",
                ),
                (
                    "SELECT COUNT(*) AS n FROM tasks WHERE run_id = $1 AND state = 'leased'",
                    "tasks are still leased in a finished run",
                ),
            ]);
        }
        let mut problems = Vec::new();
        for (sql, what) in checks {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .bind(&run.0)
                .fetch_one(&self.pool)
                .await
                .map_err(query(OP))?;
            let n: i64 = get(&row, "n", OP)?;
            if n > 0 {
                problems.push(format!("{n} {what}"));
            }
        }
        let rows = sqlx::query(
            "SELECT subcategory, COUNT(*) AS n FROM samples WHERE run_id = $1 AND state = 'accepted' GROUP BY subcategory",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        for row in &rows {
            let subcategory: String = get(row, "subcategory", OP)?;
            let n: i64 = get(row, "n", OP)?;
            if let Some(&quota) = quotas.get(&subcategory)
                && u64::try_from(n).unwrap_or(0) > quota
            {
                problems.push(format!(
                    "{subcategory} has {n} accepted samples, more than its quota of {quota}"
                ));
            }
        }
        Ok(problems)
    }
}

/// `$first, $first+1, ...` for `n` values.
fn binds(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn reopen_chunk(
    tx: &mut Transaction<'static, Any>,
    run: &RunId,
    samples: &[SampleId],
    stages: &[String],
    why: &str,
    bump_generation: bool,
    now: i64,
) -> Result<u64, StoreError> {
    const OP: &str = "reopen tasks";
    // Each statement binds exactly the parameters it names (Postgres refuses extra ones):
    // the fixed ones first, then the samples, then the stages.
    let statement = |sql: String, fixed: usize, with_stages: bool| {
        let sample_list = binds(fixed + 1, samples.len());
        let stage_list = binds(fixed + 1 + samples.len(), stages.len());
        let sql = sql
            .replace("{samples}", &sample_list)
            .replace("{stages}", &stage_list);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(&run.0);
        if fixed >= 2 {
            q = q.bind(now);
        }
        if fixed >= 3 {
            q = q.bind(why);
        }
        for s in samples {
            q = q.bind(&s.0);
        }
        if with_stages {
            for s in stages {
                q = q.bind(s);
            }
        }
        q
    };
    statement(
        "INSERT INTO task_history (task_id, run_id, sample_id, stage, item, generation, state, attempts, cache_key, \
            output_json, output_artifact, error_class, error_message, endpoint, latency_ms, prompt_tokens, \
            completion_tokens, finished_at, superseded_at, why) \
         SELECT t.id, t.run_id, t.sample_id, t.stage, t.item, s.generation, t.state, t.attempts, t.cache_key, \
            t.output_json, t.output_artifact, t.error_class, t.error_message, t.endpoint, t.latency_ms, \
            t.prompt_tokens, t.completion_tokens, t.finished_at, $2, $3 \
         FROM tasks t JOIN samples s ON s.id = t.sample_id \
         WHERE t.run_id = $1 AND t.sample_id IN ({samples}) AND t.stage IN ({stages}) \
           AND t.finished_at IS NOT NULL"
            .to_string(),
        3,
        true,
    )
    .execute(&mut **tx)
    .await
    .map_err(query(OP))?;
    let changed = statement(
        "UPDATE tasks SET state = 'blocked', deps_pending = 0, attempt_base = attempts, not_before = 0, \
            lease_owner = NULL, lease_expires_at = NULL, cache_key = NULL, output_json = NULL, \
            output_artifact = NULL, error_class = NULL, error_message = NULL, endpoint = NULL, \
            latency_ms = NULL, prompt_tokens = NULL, completion_tokens = NULL, finished_at = NULL, \
            updated_at = $2 \
         WHERE run_id = $1 AND sample_id IN ({samples}) AND \
           (stage IN ({stages}) OR (state = 'skipped' AND finished_at IS NULL))"
            .to_string(),
        2,
        true,
    )
    .execute(&mut **tx)
    .await
    .map_err(query(OP))?
    .rows_affected();
    // Every waiting task of these samples counts its unfinished dependencies again.
    statement(
        "UPDATE tasks SET deps_pending = (SELECT COUNT(*) FROM task_deps d JOIN tasks u ON u.id = d.dep_id \
             WHERE d.task_id = tasks.id AND u.state NOT IN ('done', 'skipped')) \
         WHERE run_id = $1 AND sample_id IN ({samples}) AND state = 'blocked'"
            .to_string(),
        1,
        false,
    )
    .execute(&mut **tx)
    .await
    .map_err(query(OP))?;
    statement(
        "UPDATE tasks SET state = 'ready' \
         WHERE run_id = $1 AND sample_id IN ({samples}) AND state = 'blocked' AND deps_pending = 0"
            .to_string(),
        1,
        false,
    )
    .execute(&mut **tx)
    .await
    .map_err(query(OP))?;
    let bump = i64::from(bump_generation);
    statement(
        format!(
            "UPDATE samples SET state = 'active', decided_stage = NULL, reason = NULL, \
                generation = generation + {bump}, updated_at = $2 \
             WHERE run_id = $1 AND id IN ({{samples}}) AND state <> 'superseded'"
        ),
        2,
        false,
    )
    .execute(&mut **tx)
    .await
    .map_err(query(OP))?;
    Ok(changed)
}
