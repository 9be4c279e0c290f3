//! The store: one handle over SQLite or Postgres, opened and migrated.
//!
//! Both backends go through sqlx's `Any` driver with TEXT/BIGINT/BLOB columns only (the `Any`
//! driver cannot decode UUID or JSONB), so every statement but the claim is shared text. The
//! claim differs by one clause: Postgres adds `FOR UPDATE SKIP LOCKED` so concurrent claimers
//! never block on or receive the same rows.
//!
//! SQLite runs in WAL mode with `synchronous = NORMAL` (a crash loses no committed transaction
//! that reached the WAL's fsync at checkpoint; power loss may lose the last few), one writer
//! connection per process (SQLite allows one writer; a pool of one avoids `SQLITE_BUSY` between
//! our own connections) and `BEGIN IMMEDIATE` for write transactions, so a transaction never
//! fails half-way to upgrade its lock. Other processes (`status`) wait up to the busy timeout.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use crate::StoreError;
use crate::clock::Clock;
use crate::error::query;
use crate::url::{Backend, StoreUrl};

/// Migrations of the SQLite schema.
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");
/// Migrations of the Postgres schema.
pub static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// How long a SQLite connection waits for another process's write lock.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 30_000;
/// Default Postgres pool size: enough for the engine's stage workers plus status queries.
const POSTGRES_MAX_CONNECTIONS: u32 = 16;

/// Options for [`Store::open_with`].
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// The clock (tests use a manual one).
    pub clock: Clock,
    /// Postgres pool size (SQLite always uses one connection).
    pub max_connections: Option<u32>,
}

/// A handle on the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) url: StoreUrl,
    pub(crate) clock: Clock,
}

impl Store {
    /// Opens (creating a SQLite file and its folder when missing) and migrates the store.
    ///
    /// # Errors
    /// [`StoreError::Connect`] or [`StoreError::Migrate`], naming the URL without password.
    pub async fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        Self::open_with(url, StoreOptions::default()).await
    }

    /// [`Store::open`] with options.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn open_with(url: &StoreUrl, options: StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let connect_error = |source| StoreError::Connect {
            url: url.to_string(),
            source,
        };
        let (pool, migrator) = match url.backend() {
            Backend::Sqlite => {
                let path = url.sqlite_path().unwrap_or_default();
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs_err::create_dir_all(parent).map_err(|source| StoreError::Io {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                let connect = format!("sqlite://{}?mode=rwc", path.display());
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(Duration::from_secs(600))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(sqlx::AssertSqlSafe(format!(
                                "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"
                            )))
                            .await?;
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA temp_store = MEMORY").await?;
                            conn.execute("PRAGMA cache_size = -16384").await?;
                            Ok(())
                        })
                    })
                    .connect(&connect)
                    .await
                    .map_err(connect_error)?;
                (pool, &SQLITE_MIGRATOR)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(options.max_connections.unwrap_or(POSTGRES_MAX_CONNECTIONS))
                    .acquire_timeout(Duration::from_secs(60))
                    .connect(url.expose())
                    .await
                    .map_err(connect_error)?;
                (pool, &POSTGRES_MIGRATOR)
            }
        };
        migrator
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                url: url.to_string(),
                source,
            })?;
        Ok(Self {
            pool,
            url: url.clone(),
            clock: options.clock,
        })
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    /// The URL (displays without password).
    #[must_use]
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The store's clock.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Closes the pool, waiting for connections to finish (SQLite checkpoints its WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub(crate) async fn write(
        &self,
        operation: &'static str,
    ) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend() {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(query(operation))
    }
}

/// Reads a column, mapping a decode error to [`StoreError::Query`].
pub(crate) fn get<'r, T>(
    row: &'r AnyRow,
    column: &str,
    operation: &'static str,
) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column).map_err(query(operation))
}

/// Inserts an audit event inside a transaction.
pub(crate) async fn insert_event(
    tx: &mut Transaction<'static, Any>,
    event: EventRow<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (run_id, at, actor, kind, sample_id, task_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.run)
    .bind(event.at)
    .bind(event.actor)
    .bind(event.kind)
    .bind(event.sample)
    .bind(event.task)
    .bind(event.detail)
    .execute(&mut **tx)
    .await
    .map_err(query("insert event"))?;
    Ok(())
}

/// The columns of one event to insert.
pub(crate) struct EventRow<'a> {
    pub(crate) run: &'a str,
    pub(crate) at: i64,
    pub(crate) actor: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) sample: Option<&'a str>,
    pub(crate) task: Option<i64>,
    pub(crate) detail: Option<&'a str>,
}

impl<'a> EventRow<'a> {
    /// An event about the run as a whole (no sample, no task).
    pub(crate) fn of_run(
        run: &'a str,
        at: i64,
        actor: &'a str,
        kind: &'a str,
        detail: Option<&'a str>,
    ) -> Self {
        Self {
            run,
            at,
            actor,
            kind,
            sample: None,
            task: None,
            detail,
        }
    }
}
