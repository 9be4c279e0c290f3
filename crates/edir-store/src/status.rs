//! Counts for `status` and for quota decisions: tasks per stage, samples per state, reasons.
//! Superseded samples (older generations after `regen`) are left out of every count.

use crate::StoreError;
use crate::error::query;
use crate::model::{ReasonCount, RunId, SampleCount, SampleState, TaskCount, TaskState};
use crate::store::{Store, get};

impl Store {
    /// Tasks per (subcategory, stage, state).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn task_counts(&self, run: &RunId) -> Result<Vec<TaskCount>, StoreError> {
        const OP: &str = "count tasks";
        let rows = sqlx::query(
            "SELECT s.subcategory, t.stage, t.state, COUNT(*) AS n FROM tasks t JOIN samples s ON s.id = t.sample_id \
             WHERE t.run_id = $1 AND s.state <> 'superseded' \
             GROUP BY s.subcategory, t.stage, t.state ORDER BY s.subcategory, t.stage, t.state",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter()
            .map(|row| {
                let state: String = get(row, "state", OP)?;
                Ok(TaskCount {
                    subcategory: get(row, "subcategory", OP)?,
                    stage: get(row, "stage", OP)?,
                    state: TaskState::parse(&state).ok_or(StoreError::Corrupt {
                        what: "task state",
                        detail: state,
                    })?,
                    count: get(row, "n", OP)?,
                })
            })
            .collect()
    }

    /// Samples per (subcategory, state).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn sample_counts(&self, run: &RunId) -> Result<Vec<SampleCount>, StoreError> {
        const OP: &str = "count samples";
        let rows = sqlx::query(
            "SELECT subcategory, state, COUNT(*) AS n FROM samples WHERE run_id = $1 AND state <> 'superseded' \
             GROUP BY subcategory, state ORDER BY subcategory, state",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter()
            .map(|row| {
                let state: String = get(row, "state", OP)?;
                Ok(SampleCount {
                    subcategory: get(row, "subcategory", OP)?,
                    state: SampleState::parse(&state).ok_or(StoreError::Corrupt {
                        what: "sample state",
                        detail: state,
                    })?,
                    count: get(row, "n", OP)?,
                })
            })
            .collect()
    }

    /// Rejected and failed samples per (subcategory, stage, reason), most frequent first.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn reason_counts(&self, run: &RunId) -> Result<Vec<ReasonCount>, StoreError> {
        const OP: &str = "count reasons";
        let rows = sqlx::query(
            "SELECT subcategory, COALESCE(decided_stage, '') AS stage, COALESCE(reason, '') AS reason, COUNT(*) AS n \
             FROM samples WHERE run_id = $1 AND state IN ('rejected', 'failed') \
             GROUP BY subcategory, decided_stage, reason ORDER BY n DESC, subcategory, stage, reason",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter()
            .map(|row| {
                Ok(ReasonCount {
                    subcategory: get(row, "subcategory", OP)?,
                    stage: get(row, "stage", OP)?,
                    reason: get(row, "reason", OP)?,
                    count: get(row, "n", OP)?,
                })
            })
            .collect()
    }

    /// Model-call accounting per stage: calls, latency, tokens and the time span they cover.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn stage_usage(&self, run: &RunId) -> Result<Vec<StageUsage>, StoreError> {
        const OP: &str = "stage usage";
        let rows = sqlx::query(
            "SELECT stage, COUNT(*) AS n, CAST(COALESCE(SUM(latency_ms), 0) AS BIGINT) AS latency, \
                    CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt, CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion, \
                    COALESCE(MIN(finished_at - COALESCE(latency_ms, 0)), 0) AS first_start, COALESCE(MAX(finished_at), 0) AS last_end \
             FROM tasks WHERE run_id = $1 AND state = 'done' AND endpoint IS NOT NULL GROUP BY stage ORDER BY stage",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter()
            .map(|row| {
                Ok(StageUsage {
                    stage: get(row, "stage", OP)?,
                    calls: get(row, "n", OP)?,
                    latency_ms: get(row, "latency", OP)?,
                    prompt_tokens: get(row, "prompt", OP)?,
                    completion_tokens: get(row, "completion", OP)?,
                    first_start_ms: get(row, "first_start", OP)?,
                    last_end_ms: get(row, "last_end", OP)?,
                })
            })
            .collect()
    }

    /// Failed tasks per (stage, error class), with one message as an example.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn failure_counts(&self, run: &RunId) -> Result<Vec<FailureCount>, StoreError> {
        const OP: &str = "count failures";
        let rows = sqlx::query(
            "SELECT stage, COALESCE(error_class, '') AS class, COUNT(*) AS n, MAX(error_message) AS example \
             FROM tasks WHERE run_id = $1 AND state = 'failed' GROUP BY stage, error_class ORDER BY n DESC, stage, class",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter()
            .map(|row| {
                Ok(FailureCount {
                    stage: get(row, "stage", OP)?,
                    class: get(row, "class", OP)?,
                    count: get(row, "n", OP)?,
                    example: get::<Option<String>>(row, "example", OP)?.unwrap_or_default(),
                })
            })
            .collect()
    }
}

/// Model-call accounting of one stage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageUsage {
    /// Stage id.
    pub stage: String,
    /// Calls that produced an output.
    pub calls: i64,
    /// Sum of their latencies.
    pub latency_ms: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// When the first of them started (ms since the epoch).
    pub first_start_ms: i64,
    /// When the last of them finished.
    pub last_end_ms: i64,
}

/// Failed tasks of one (stage, class).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailureCount {
    /// Stage id.
    pub stage: String,
    /// Error class.
    pub class: String,
    /// How many tasks.
    pub count: i64,
    /// One of their messages.
    pub example: String,
}
