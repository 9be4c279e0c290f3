//! Runs: created once by name, reopened by every later `run` (resume is the normal path).

use sqlx::any::AnyRow;

use crate::StoreError;
use crate::error::query;
use crate::model::{Event, Run, RunId, RunState};
use crate::store::{EventRow, Store, get, insert_event};

impl Store {
    /// Opens the run called `name`, creating it with this pipeline when it does not exist.
    /// Returns the run and whether it was created. Safe against concurrent callers on
    /// Postgres: the unique name decides, and everyone gets the same run.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails.
    pub async fn open_run(
        &self,
        name: &str,
        pipeline_yaml: &str,
        pipeline_hash: &str,
        actor: &str,
    ) -> Result<(Run, bool), StoreError> {
        const OP: &str = "open run";
        let now = self.now();
        let id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.write(OP).await?;
        let inserted = sqlx::query(
            "INSERT INTO runs (id, name, pipeline_yaml, pipeline_hash, state, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'running', $5, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&id)
        .bind(name)
        .bind(pipeline_yaml)
        .bind(pipeline_hash)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(query(OP))?
        .rows_affected()
            == 1;
        if inserted {
            insert_event(
                &mut tx,
                EventRow::of_run(&id, now, actor, "run_created", Some(name)),
            )
            .await?;
        }
        tx.commit().await.map_err(query(OP))?;
        let run = self
            .find_run(name)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "run",
                id: name.to_string(),
            })?;
        Ok((run, inserted))
    }

    /// The run called `name`, if any.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn find_run(&self, name: &str) -> Result<Option<Run>, StoreError> {
        const OP: &str = "find run";
        let row = sqlx::query(
            "SELECT id, name, pipeline_yaml, pipeline_hash, state, created_at FROM runs WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(query(OP))?;
        row.map(|row| run_from_row(&row)).transpose()
    }

    /// All runs, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn runs(&self) -> Result<Vec<Run>, StoreError> {
        const OP: &str = "list runs";
        let rows = sqlx::query(
            "SELECT id, name, pipeline_yaml, pipeline_hash, state, created_at FROM runs ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter().map(run_from_row).collect()
    }

    /// Sets a run's state, with an event.
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails.
    pub async fn set_run_state(
        &self,
        run: &RunId,
        state: RunState,
        actor: &str,
    ) -> Result<(), StoreError> {
        const OP: &str = "set run state";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        sqlx::query("UPDATE runs SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(now)
            .bind(&run.0)
            .execute(&mut *tx)
            .await
            .map_err(query(OP))?;
        let kind = format!("run_{state}");
        insert_event(&mut tx, EventRow::of_run(&run.0, now, actor, &kind, None)).await?;
        tx.commit().await.map_err(query(OP))
    }

    /// The run's most recent events, newest last.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn events(&self, run: &RunId, limit: i64) -> Result<Vec<Event>, StoreError> {
        const OP: &str = "list events";
        let rows = sqlx::query(
            "SELECT at, actor, kind, sample_id, task_id, detail FROM events WHERE run_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(&run.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, StoreError>>()?;
        events.reverse();
        Ok(events)
    }
}

impl Store {
    /// Appends an event (the engine's notes: a skipped reference, a run's settings).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn record_event(
        &self,
        run: &RunId,
        actor: &str,
        kind: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        const OP: &str = "record event";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        insert_event(
            &mut tx,
            EventRow {
                run: &run.0,
                at: now,
                actor,
                kind,
                sample: None,
                task: None,
                detail,
            },
        )
        .await?;
        tx.commit().await.map_err(query(OP))
    }

    /// The run's events of one kind, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn events_of_kind(&self, run: &RunId, kind: &str) -> Result<Vec<Event>, StoreError> {
        const OP: &str = "list events";
        let rows = sqlx::query(
            "SELECT at, actor, kind, sample_id, task_id, detail FROM events WHERE run_id = $1 AND kind = $2 ORDER BY id",
        )
        .bind(&run.0)
        .bind(kind)
        .fetch_all(&self.pool)
        .await
        .map_err(query(OP))?;
        rows.iter().map(event_from_row).collect()
    }
}

fn event_from_row(row: &AnyRow) -> Result<Event, StoreError> {
    const OP: &str = "list events";
    Ok(Event {
        at: get(row, "at", OP)?,
        actor: get(row, "actor", OP)?,
        kind: get(row, "kind", OP)?,
        sample: get(row, "sample_id", OP)?,
        task: get(row, "task_id", OP)?,
        detail: get(row, "detail", OP)?,
    })
}

fn run_from_row(row: &AnyRow) -> Result<Run, StoreError> {
    const OP: &str = "read run";
    let state: String = get(row, "state", OP)?;
    Ok(Run {
        id: RunId(get(row, "id", OP)?),
        name: get(row, "name", OP)?,
        pipeline_yaml: get(row, "pipeline_yaml", OP)?,
        pipeline_hash: get(row, "pipeline_hash", OP)?,
        state: RunState::parse(&state).ok_or(StoreError::Corrupt {
            what: "run state",
            detail: state,
        })?,
        created_at: get(row, "created_at", OP)?,
    })
}
