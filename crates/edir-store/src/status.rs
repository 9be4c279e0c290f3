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
}
