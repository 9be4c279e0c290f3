//! Samples and their task graphs: added in batches, decided once.

use std::collections::HashMap;

use sqlx::any::AnyRow;

use crate::StoreError;
use crate::checkpoint::HandOff;
use crate::error::query;
use crate::model::{Claim, NewSample, RunId, SampleId, SampleRecord, SampleState, TaskId};
use crate::rows;
use crate::store::{Store, get};

impl Store {
    /// Adds samples with their tasks and dependency edges, all in one transaction. Tasks without
    /// dependencies start `ready`, the others `blocked`.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails (nothing is written then), for example
    /// when a dependency names a task that is not in the sample.
    pub async fn add_samples(
        &self,
        run: &RunId,
        samples: &[NewSample],
    ) -> Result<Vec<SampleId>, StoreError> {
        Ok(self.add_samples_handing_off(run, samples, None).await?.0)
    }

    /// [`Store::add_samples`], and with `hand_off` the new tasks that start `ready` are leased
    /// to its owner in the same transaction and returned, so the engine hands them straight to
    /// their stage instead of claiming them.
    ///
    /// # Errors
    /// As [`Store::add_samples`].
    pub async fn add_samples_handing_off(
        &self,
        run: &RunId,
        samples: &[NewSample],
        hand_off: Option<&HandOff>,
    ) -> Result<(Vec<SampleId>, Vec<Claim>), StoreError> {
        const OP: &str = "add samples";
        let now = self.now();
        let ids: Vec<String> = samples
            .iter()
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let backend = self.backend();
        let mut tx = self.write(OP).await?;
        // Three statements whatever the batch: samples, tasks, edges (see `rows`).
        let sample_rows: Vec<_> = samples
            .iter()
            .zip(&ids)
            .map(|(sample, id)| {
                (
                    id.as_str(),
                    sample.subcategory.as_str(),
                    sample.ordinal,
                    sample.generation,
                    sample.reference.as_str(),
                    sample.reference_name.as_str(),
                    sample.seed,
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO samples (id, run_id, subcategory, ordinal, generation, reference, reference_name, seed, state, created_at, updated_at) \
             SELECT e.value ->> 0, CAST($2 AS TEXT), e.value ->> 1, CAST(e.value ->> 2 AS BIGINT), CAST(e.value ->> 3 AS BIGINT), \
                    e.value ->> 4, e.value ->> 5, CAST(e.value ->> 6 AS BIGINT), 'active', CAST($3 AS BIGINT), CAST($3 AS BIGINT) \
             FROM {} ORDER BY e.key",
            rows::source(backend, 1)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(rows::encode(&sample_rows))
            .bind(&run.0)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(query(OP))?;
        // Tasks, then their ids by (sample, stage, item).
        let rows: Vec<(&str, &crate::model::NewTask)> = samples
            .iter()
            .zip(&ids)
            .flat_map(|(sample, id)| sample.tasks.iter().map(move |t| (id.as_str(), t)))
            .collect();
        let task_rows: Vec<_> = rows
            .iter()
            .map(|(sample, task)| {
                let pending = i64::try_from(task.needs.len()).unwrap_or(i64::MAX);
                let state = if pending == 0 { "ready" } else { "blocked" };
                (
                    *sample,
                    task.stage.as_str(),
                    task.item,
                    state,
                    pending,
                    task.cache_key.as_deref(),
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO tasks (run_id, sample_id, stage, item, state, deps_pending, cache_key, created_at, updated_at) \
             SELECT CAST($2 AS TEXT), e.value ->> 0, e.value ->> 1, CAST(e.value ->> 2 AS BIGINT), e.value ->> 3, \
                    CAST(e.value ->> 4 AS BIGINT), e.value ->> 5, CAST($3 AS BIGINT), CAST($3 AS BIGINT) \
             FROM {} ORDER BY e.key \
             RETURNING id, sample_id, stage, item",
            rows::source(backend, 1)
        );
        let found = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(rows::encode(&task_rows))
            .bind(&run.0)
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(query(OP))?;
        let mut task_ids: HashMap<(String, String, i64), i64> = HashMap::with_capacity(rows.len());
        let mut ready = Vec::new();
        for row in found {
            let sample: String = get(&row, "sample_id", OP)?;
            let stage: String = get(&row, "stage", OP)?;
            let item: i64 = get(&row, "item", OP)?;
            task_ids.insert((sample, stage, item), get(&row, "id", OP)?);
        }
        let mut edges: Vec<(i64, i64)> = Vec::new();
        for (sample, task) in &rows {
            if task.needs.is_empty()
                && let Some(&id) =
                    task_ids.get(&((*sample).to_string(), task.stage.clone(), task.item))
            {
                ready.push(TaskId(id));
            }
            let key = |stage: &str, item: i64| ((*sample).to_string(), stage.to_string(), item);
            let Some(&task_id) = task_ids.get(&key(&task.stage, task.item)) else {
                return Err(StoreError::Corrupt {
                    what: "inserted task",
                    detail: format!("{sample} {}[{}] has no id", task.stage, task.item),
                });
            };
            for (stage, item) in &task.needs {
                let Some(&dep_id) = task_ids.get(&key(stage, *item)) else {
                    return Err(StoreError::NotFound {
                        what: "dependency",
                        id: format!("{stage}[{item}] of task {}[{}]", task.stage, task.item),
                    });
                };
                edges.push((task_id, dep_id));
            }
        }
        if !edges.is_empty() {
            let sql = format!(
                "INSERT INTO task_deps (task_id, dep_id) \
                 SELECT CAST(e.value ->> 0 AS BIGINT), CAST(e.value ->> 1 AS BIGINT) FROM {}",
                rows::source(backend, 1)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(rows::encode(&edges))
                .execute(&mut *tx)
                .await
                .map_err(query(OP))?;
        }
        let leased = match hand_off {
            Some(hand_off) => {
                crate::tasks::lease_ready(&mut tx, backend, &ready, hand_off, now).await?
            }
            None => Vec::new(),
        };
        tx.commit().await.map_err(query(OP))?;
        Ok((ids.into_iter().map(SampleId).collect(), leased))
    }

    /// Decides an active sample: accepted, rejected or failed, recording the stage and reason,
    /// and skips its tasks that have not started. Returns `false` (and changes nothing) when the
    /// sample was already decided, so a decision is taken exactly once.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails.
    pub async fn decide_sample(
        &self,
        sample: &SampleId,
        state: SampleState,
        stage: Option<&str>,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<bool, StoreError> {
        const OP: &str = "decide sample";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        let row = sqlx::query("SELECT run_id FROM samples WHERE id = $1")
            .bind(&sample.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query(OP))?;
        let Some(row) = row else {
            tx.rollback().await.map_err(query(OP))?;
            return Ok(false);
        };
        let run: String = get(&row, "run_id", OP)?;
        let decided =
            crate::checkpoint::decide_in(&mut tx, &run, sample, state, stage, reason, actor, now)
                .await?;
        tx.commit().await.map_err(query(OP))?;
        Ok(decided)
    }

    /// One sample.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] or [`StoreError::Query`].
    pub async fn sample(&self, sample: &SampleId) -> Result<SampleRecord, StoreError> {
        const OP: &str = "read sample";
        let row = sqlx::query(
            "SELECT id, subcategory, ordinal, generation, reference, reference_name, seed, state, decided_stage, reason \
             FROM samples WHERE id = $1",
        )
            .bind(&sample.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(query(OP))?
            .ok_or_else(|| StoreError::NotFound { what: "sample", id: sample.0.clone() })?;
        sample_from_row(&row)
    }

    /// The run's samples in a subcategory (all when `None`), in drawing order.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn samples(
        &self,
        run: &RunId,
        subcategory: Option<&str>,
    ) -> Result<Vec<SampleRecord>, StoreError> {
        const OP: &str = "list samples";
        let rows = sqlx::query(
            "SELECT id, subcategory, ordinal, generation, reference, reference_name, seed, state, decided_stage, reason \
             FROM samples WHERE run_id = $1 AND ($2 IS NULL OR subcategory = $2) ORDER BY subcategory, ordinal, generation",
        )
        .bind(&run.0)
        .bind(subcategory)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter().map(sample_from_row).collect()
    }
}

fn sample_from_row(row: &AnyRow) -> Result<SampleRecord, StoreError> {
    const OP: &str = "read sample";
    let state: String = get(row, "state", OP)?;
    Ok(SampleRecord {
        id: SampleId(get(row, "id", OP)?),
        subcategory: get(row, "subcategory", OP)?,
        ordinal: get(row, "ordinal", OP)?,
        generation: get(row, "generation", OP)?,
        reference: get(row, "reference", OP)?,
        reference_name: get(row, "reference_name", OP)?,
        seed: get(row, "seed", OP)?,
        state: SampleState::parse(&state).ok_or(StoreError::Corrupt {
            what: "sample state",
            detail: state,
        })?,
        decided_stage: get(row, "decided_stage", OP)?,
        reason: get(row, "reason", OP)?,
    })
}
