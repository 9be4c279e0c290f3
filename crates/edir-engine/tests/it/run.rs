//! End-to-end runs of `pipelines/full.yaml` against the in-process simulator, on SQLite and
//! on Postgres: every subcategory, faults, exact quotas under rejection, a corrupt reference,
//! and a valid, byte-deterministic export.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edir_config::Pipeline;
use edir_engine::{Engine, RunOptions, RunSummary};
use edir_sim::{SimConfig, SimServer};
use edir_store::{ArtifactStore, SampleState, Store, StoreUrl, TaskState};
use sqlx::Connection as _;

fn pipeline() -> Pipeline {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/full.yaml");
    let compiled = edir_config::compile_file(&path);
    let mut pipeline = compiled.pipeline.expect("pipelines/full.yaml compiles");
    // A hung simulated request must not hold a test for minutes.
    for endpoint in pipeline.endpoints.values_mut() {
        endpoint.timeout_s = 2.0;
        endpoint.retry.initial_backoff_ms = 20;
        endpoint.retry.max_backoff_ms = 200;
    }
    pipeline
}

struct Harness {
    dir: tempfile::TempDir,
    store: Store,
    postgres: Option<(String, String)>,
}

impl Harness {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreUrl::sqlite(&dir.path().join("store.sqlite")))
            .await
            .unwrap();
        Self {
            dir,
            store,
            postgres: None,
        }
    }

    /// A fresh Postgres database, or `None` (skipped, said on stderr) when none is configured.
    async fn postgres() -> Option<Self> {
        let Ok(admin) = std::env::var("EDIR_TEST_POSTGRES_URL") else {
            let required = std::hint::black_box(cfg!(feature = "postgres-tests"));
            assert!(
                !required,
                "the `postgres-tests` feature is on but EDIR_TEST_POSTGRES_URL is not set"
            );
            eprintln!(
                "SKIPPED: Postgres engine test; set EDIR_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres to run it"
            );
            return None;
        };
        let name = format!(
            "edir_engine_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let store = Store::open(&StoreUrl::parse(&format!("{base}/{name}")).unwrap())
            .await
            .unwrap();
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            store,
            postgres: Some((admin, name)),
        })
    }

    fn artifacts(&self) -> ArtifactStore {
        ArtifactStore::open(self.dir.path().join("artifacts")).unwrap()
    }

    fn scenes(&self, count: usize) -> PathBuf {
        let dir = self.dir.path().join("scenes");
        edir_sim::write_scenes(&dir, count, 7, &[64, 96]).unwrap();
        dir
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some((admin, name)) = self.postgres
            && let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await
        {
            let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await;
        }
    }
}

async fn run(
    h: &Harness,
    pipeline: &Arc<Pipeline>,
    source: &Path,
    quota: u32,
    faults: f64,
    only: &[&str],
) -> RunSummary {
    let mut config = SimConfig::default_models();
    if faults > 0.0 {
        config = config.with_faults(faults);
        for model in &mut config.models {
            model.faults.hang_s = 5;
        }
    }
    config.seed = 11;
    let sim = SimServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = sim.base_url();
    let lookup = move |_: &str| Some(base.clone());
    let endpoints = edir_engine::connect(pipeline, &lookup).await.unwrap();
    let options = RunOptions {
        quota: Some(quota),
        source: Some(source.to_path_buf()),
        only: only.iter().map(ToString::to_string).collect(),
        poll: Duration::from_millis(50),
        ..RunOptions::default()
    };
    let engine = Engine::new(
        pipeline.clone(),
        h.store.clone(),
        h.artifacts(),
        endpoints,
        options,
    );
    tokio::time::timeout(Duration::from_secs(240), engine.run())
        .await
        .expect("the run finishes in time")
        .expect("the run succeeds")
}

/// Every accepted sample has all its tasks done or skipped; no sample is left active.
async fn check_invariants(store: &Store, summary: &RunSummary) {
    let samples = store.samples(&summary.run, None).await.unwrap();
    for sample in &samples {
        assert_ne!(
            sample.state,
            SampleState::Active,
            "a finished run leaves no active sample"
        );
        if sample.state == SampleState::Accepted {
            let tasks = store.tasks_of_sample(&sample.id).await.unwrap();
            assert!(
                tasks
                    .iter()
                    .all(|t| matches!(t.state, TaskState::Done | TaskState::Skipped)),
                "accepted sample {} has unfinished tasks",
                sample.id
            );
            assert!(
                tasks
                    .iter()
                    .any(|t| t.stage == "judge_query" && t.state == TaskState::Done)
            );
        }
    }
}

/// Model calls the store has recorded for a run.
async fn model_calls(store: &Store, run: &edir_store::RunId) -> i64 {
    store
        .stage_usage(run)
        .await
        .unwrap()
        .iter()
        .map(|u| u.calls)
        .sum()
}

fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs_err::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                files.insert(rel, fs_err::read(&path).unwrap());
            }
        }
    }
    files
}

async fn end_to_end(h: Harness) {
    let pipeline = Arc::new(pipeline());
    let source = h.scenes(60);
    let summary = run(&h, &pipeline, &source, 3, 0.0, &[]).await;
    assert!(!summary.interrupted);
    assert_eq!(summary.subcategories.len(), 15);
    for sub in &summary.subcategories {
        assert_eq!(sub.accepted, 3, "{} accepted exactly its quota", sub.id);
    }
    check_invariants(&h.store, &summary).await;

    let out = h.dir.path().join("export");
    let exported = edir_engine::export(&pipeline, &h.store, &h.artifacts(), &summary.run, &out)
        .await
        .unwrap();
    assert_eq!(exported.queries, 45);
    let bench = edir_dataset::Benchmark::read(&out, None, true).expect("a valid EDIR export");
    assert_eq!(bench.queries.len(), 45);
    let mut per_label: HashMap<&str, usize> = HashMap::new();
    for q in &bench.queries {
        *per_label.entry(q.subcategory()).or_default() += 1;
        assert!(q.category().is_some());
        assert!(!q.text.is_empty(), "query {} has text", q.id);
    }
    assert_eq!(per_label.len(), 15);
    assert!(per_label.values().all(|n| *n == 3));
    for instance in &bench.instances {
        assert_eq!(instance.pos.len(), 1);
        assert!(
            !instance.neg.is_empty(),
            "hard negatives for {}",
            instance.qid
        );
    }
    for file in ["taxonomy.json", "stats.json", "README.md", "preview.html"] {
        assert!(out.join(file).is_file(), "{file} is written");
    }
    let html = fs_err::read_to_string(out.join("preview.html")).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    // The same store exports the same bytes, into a fresh folder or over the old one.
    let again = h.dir.path().join("export-again");
    edir_engine::export(&pipeline, &h.store, &h.artifacts(), &summary.run, &again)
        .await
        .unwrap();
    edir_engine::export(&pipeline, &h.store, &h.artifacts(), &summary.run, &out)
        .await
        .unwrap();
    assert_eq!(read_tree(&out), read_tree(&again));

    // A second run of a finished run has nothing to do.
    let calls_before = model_calls(&h.store, &summary.run).await;
    let second = run(&h, &pipeline, &source, 3, 0.0, &[]).await;
    assert_eq!(second.run, summary.run, "the run is reopened");
    assert_eq!(second.calls, 0, "nothing left to do");
    let calls_after = model_calls(&h.store, &summary.run).await;
    assert_eq!(calls_before, calls_after);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcategory_end_to_end_on_sqlite() {
    end_to_end(Harness::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcategory_end_to_end_on_postgres() {
    if let Some(h) = Harness::postgres().await {
        end_to_end(h).await;
    }
}

async fn faults_and_rejections(h: Harness) {
    let pipeline = Arc::new(pipeline());
    let source = h.scenes(60);
    let only = [
        "attribute.color",
        "object.remove",
        "relationship.action",
        "complex.complex",
    ];
    let summary = run(&h, &pipeline, &source, 4, 0.1, &only).await;
    assert_eq!(summary.subcategories.len(), 4);
    for sub in &summary.subcategories {
        assert_eq!(
            sub.accepted, 4,
            "{}: quota met exactly despite faults",
            sub.id
        );
    }
    let rejected: u64 = summary.subcategories.iter().map(|s| s.rejected).sum();
    assert!(rejected > 0, "the judges and filters rejected some samples");
    check_invariants(&h.store, &summary).await;
    // Rejections keep their reason and stage.
    let reasons = h.store.reason_counts(&summary.run).await.unwrap();
    assert!(
        reasons
            .iter()
            .all(|r| !r.reason.is_empty() && !r.stage.is_empty())
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_faults_still_meet_the_quota_on_sqlite() {
    faults_and_rejections(Harness::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_faults_still_meet_the_quota_on_postgres() {
    if let Some(h) = Harness::postgres().await {
        faults_and_rejections(h).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_reference_is_skipped_and_reported() {
    let h = Harness::sqlite().await;
    let pipeline = Arc::new(pipeline());
    let source = h.scenes(3);
    fs_err::write(
        source.join("broken.png"),
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR truncated",
    )
    .unwrap();
    fs_err::write(source.join("empty.jpg"), b"").unwrap();
    let summary = run(&h, &pipeline, &source, 2, 0.0, &["global.style"]).await;
    assert_eq!(summary.subcategories[0].accepted, 2);
    assert_eq!(summary.bad_references, 2);
    let events = h
        .store
        .events_of_kind(&summary.run, "reference_skipped")
        .await
        .unwrap();
    let details: Vec<String> = events.into_iter().filter_map(|e| e.detail).collect();
    assert_eq!(details.len(), 2);
    assert!(
        details
            .iter()
            .any(|d| d.contains("broken.png") && d.contains("decode"))
    );
    let samples = h.store.samples(&summary.run, None).await.unwrap();
    assert!(
        samples
            .iter()
            .all(|s| s.reference_name.starts_with("scene_")),
        "no sample uses a broken reference"
    );
    h.finish().await;
}
