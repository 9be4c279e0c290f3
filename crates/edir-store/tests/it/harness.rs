//! Fresh databases per test: a temporary SQLite file, or a new Postgres database created on
//! the server named by `EDIR_TEST_POSTGRES_URL` and dropped afterwards.

use edir_store::{Clock, Store, StoreOptions, StoreUrl};
use sqlx::Connection as _;

/// The manual clock every test store starts with (2026-12-01T00:00:00Z).
pub(crate) const START_MS: i64 = 1_796_083_200_000;

pub(crate) struct TestDb {
    pub(crate) store: Store,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub(crate) async fn finish(self) {
        self.store.close().await;
        if let Some((admin, name)) = self.postgres
            && let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await
        {
            {
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
}

pub(crate) async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::sqlite(&dir.path().join("store.sqlite"));
    let store = Store::open_with(
        &url,
        StoreOptions {
            clock: Clock::manual(START_MS),
            max_connections: None,
        },
    )
    .await
    .unwrap();
    TestDb {
        store,
        _dir: Some(dir),
        postgres: None,
    }
}

/// A fresh Postgres database, or `None` (skipped, said on stderr) when none is configured.
pub(crate) async fn postgres() -> Option<TestDb> {
    let Ok(admin) = std::env::var("EDIR_TEST_POSTGRES_URL") else {
        let required = std::hint::black_box(cfg!(feature = "postgres-tests"));
        assert!(
            !required,
            "the `postgres-tests` feature is on but EDIR_TEST_POSTGRES_URL is not set"
        );
        eprintln!(
            "SKIPPED: Postgres store test; set EDIR_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres to run it"
        );
        return None;
    };
    let name = format!("edir_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach Postgres at EDIR_TEST_POSTGRES_URL: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = StoreUrl::parse(&format!("{base}/{name}")).unwrap();
    let store = Store::open_with(
        &url,
        StoreOptions {
            clock: Clock::manual(START_MS),
            max_connections: Some(8),
        },
    )
    .await
    .unwrap();
    Some(TestDb {
        store,
        _dir: None,
        postgres: Some((admin, name)),
    })
}

/// Opens a second handle (another "process") on the same database.
pub(crate) async fn reopen(store: &Store) -> Store {
    Store::open_with(
        store.url(),
        StoreOptions {
            clock: store.clock().clone(),
            max_connections: Some(4),
        },
    )
    .await
    .unwrap()
}

/// Runs each named async test function against both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::harness::sqlite().await;
                    super::$name(db.store.clone()).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::harness::postgres().await else { return };
                    super::$name(db.store.clone()).await;
                    db.finish().await;
                }
            )*
        }
    };
}
