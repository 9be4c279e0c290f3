//! Samples and their task graphs: added in batches, decided once.

use std::collections::HashMap;

use sqlx::any::AnyRow;

use crate::StoreError;
use crate::error::query;
use crate::model::{NewSample, RunId, SampleId, SampleRecord, SampleState};
use crate::store::{Store, get};

/// Bound parameters per multi-row statement. Small on purpose: sqlx's SQLite driver resolves
/// each `$n` by scanning the statement's parameter names, so binding costs grow with the
/// square of the parameter count (4,000 parameters made a batch cost ~100 ms).
const ROWS_PER_INSERT: usize = 180;

/// `rows` copies of `row` joined by commas, each `?` replaced by the next `$n`.
fn placeholders(rows: usize, row: &str) -> String {
    let mut out = String::with_capacity(rows * (row.len() + 16));
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        for c in row.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
    }
    out
}

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
        let ids: Vec<String> = samples
            .iter()
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let mut tx = self.write(OP).await?;
        // Multi-row statements: a batch of samples costs a handful of statements, not one
        // per task and dependency.
        let per_chunk = ROWS_PER_INSERT / 10;
        for (chunk_samples, chunk_ids) in samples.chunks(per_chunk).zip(ids.chunks(per_chunk)) {
            let sql = format!(
                "INSERT INTO samples (id, run_id, subcategory, ordinal, generation, reference, reference_name, seed, state, created_at, updated_at) VALUES {}",
                placeholders(
                    chunk_samples.len(),
                    "(?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)"
                )
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
            for (sample, id) in chunk_samples.iter().zip(chunk_ids) {
                q = q
                    .bind(id)
                    .bind(&run.0)
                    .bind(&sample.subcategory)
                    .bind(sample.ordinal)
                    .bind(sample.generation)
                    .bind(&sample.reference)
                    .bind(&sample.reference_name)
                    .bind(sample.seed)
                    .bind(now)
                    .bind(now);
            }
            q.execute(&mut *tx).await.map_err(query(OP))?;
        }
        // Tasks, then their ids by (sample, stage, item).
        let rows: Vec<(&str, &crate::model::NewTask)> = samples
            .iter()
            .zip(&ids)
            .flat_map(|(sample, id)| sample.tasks.iter().map(move |t| (id.as_str(), t)))
            .collect();
        let mut task_ids: HashMap<(String, String, i64), i64> = HashMap::with_capacity(rows.len());
        for chunk in rows.chunks(ROWS_PER_INSERT / 9) {
            let sql = format!(
                "INSERT INTO tasks (run_id, sample_id, stage, item, state, deps_pending, cache_key, created_at, updated_at) VALUES {} \
                 RETURNING id, sample_id, stage, item",
                placeholders(chunk.len(), "(?, ?, ?, ?, ?, ?, ?, ?, ?)")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
            for (sample, task) in chunk {
                let pending = i64::try_from(task.needs.len()).unwrap_or(i64::MAX);
                let state = if pending == 0 { "ready" } else { "blocked" };
                q = q
                    .bind(&run.0)
                    .bind(*sample)
                    .bind(&task.stage)
                    .bind(task.item)
                    .bind(state)
                    .bind(pending)
                    .bind(task.cache_key.as_deref())
                    .bind(now)
                    .bind(now);
            }
            for row in q.fetch_all(&mut *tx).await.map_err(query(OP))? {
                let sample: String = get(&row, "sample_id", OP)?;
                let stage: String = get(&row, "stage", OP)?;
                let item: i64 = get(&row, "item", OP)?;
                task_ids.insert((sample, stage, item), get(&row, "id", OP)?);
            }
        }
        let mut edges: Vec<(i64, i64)> = Vec::new();
        for (sample, task) in &rows {
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
        for chunk in edges.chunks(ROWS_PER_INSERT / 2) {
            // Integers we hold ourselves: inlined, no injection is possible.
            let values = chunk
                .iter()
                .map(|(t, d)| format!("({t}, {d})"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("INSERT INTO task_deps (task_id, dep_id) VALUES {values}");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(query(OP))?;
        }
        tx.commit().await.map_err(query(OP))?;
        Ok(ids.into_iter().map(SampleId).collect())
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
