//! Samples and their task graphs: added in batches, decided once.

use std::collections::HashMap;

use sqlx::any::AnyRow;

use crate::StoreError;
use crate::error::query;
use crate::model::{NewSample, RunId, SampleId, SampleRecord, SampleState};
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
        const OP: &str = "add samples";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        let mut ids = Vec::with_capacity(samples.len());
        for sample in samples {
            let id = uuid::Uuid::now_v7().to_string();
            sqlx::query(
                "INSERT INTO samples (id, run_id, subcategory, ordinal, generation, reference, reference_name, seed, state, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 0, $5, $6, $7, 'active', $8, $8)",
            )
            .bind(&id)
            .bind(&run.0)
            .bind(&sample.subcategory)
            .bind(sample.ordinal)
            .bind(&sample.reference)
            .bind(&sample.reference_name)
            .bind(sample.seed)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(query(OP))?;
            let mut task_ids: HashMap<(&str, i64), i64> =
                HashMap::with_capacity(sample.tasks.len());
            for task in &sample.tasks {
                let pending = i64::try_from(task.needs.len()).unwrap_or(i64::MAX);
                let state = if pending == 0 { "ready" } else { "blocked" };
                let row = sqlx::query(
                    "INSERT INTO tasks (run_id, sample_id, stage, item, state, deps_pending, cache_key, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
                )
                .bind(&run.0)
                .bind(&id)
                .bind(&task.stage)
                .bind(task.item)
                .bind(state)
                .bind(pending)
                .bind(task.cache_key.as_deref())
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(query(OP))?;
                task_ids.insert((task.stage.as_str(), task.item), get(&row, "id", OP)?);
            }
            for task in &sample.tasks {
                let task_id = task_ids[&(task.stage.as_str(), task.item)];
                for (stage, item) in &task.needs {
                    let Some(&dep_id) = task_ids.get(&(stage.as_str(), *item)) else {
                        return Err(StoreError::NotFound {
                            what: "dependency",
                            id: format!("{stage}[{item}] of task {}[{}]", task.stage, task.item),
                        });
                    };
                    sqlx::query("INSERT INTO task_deps (task_id, dep_id) VALUES ($1, $2)")
                        .bind(task_id)
                        .bind(dep_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(query(OP))?;
                }
            }
            ids.push(SampleId(id));
        }
        tx.commit().await.map_err(query(OP))?;
        Ok(ids)
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
        let decided = crate::checkpoint::decide_in(
            &mut tx, &run, sample, state, stage, reason, actor, now,
        )
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
