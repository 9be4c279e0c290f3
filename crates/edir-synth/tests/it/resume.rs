//! Resume, retry, regen and crash safety as users meet them: `kill -9` at seeded moments,
//! Ctrl-C, a second process on a store in use, a prompt edit, `retry` and `regen`. Each on
//! SQLite and on Postgres (`EDIR_TEST_POSTGRES_URL`; with the `postgres-tests` feature a missing
//! URL is a failure, without it the Postgres half is skipped loudly).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use edir_store::{Store, StoreUrl};
use sqlx::Connection as _;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn edir_synth(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edir-synth"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_jsonl(name: &str) -> bool {
    Path::new(name).extension().is_some_and(|e| e == "jsonl")
}

/// Sleeps this (test) thread.
fn pause(duration: Duration) {
    runtime().block_on(async move { tokio::time::sleep(duration).await });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A work directory with its store: SQLite inside it, or a fresh Postgres database.
struct Place {
    dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl Place {
    fn sqlite() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            postgres: None,
        }
    }

    /// `None` (skipped, said on stderr) when no Postgres is configured.
    fn postgres() -> Option<Self> {
        let Ok(admin) = std::env::var("EDIR_TEST_POSTGRES_URL") else {
            let required = std::hint::black_box(cfg!(feature = "postgres-tests"));
            assert!(
                !required,
                "the `postgres-tests` feature is on but EDIR_TEST_POSTGRES_URL is not set"
            );
            eprintln!(
                "SKIPPED: Postgres resume test; set EDIR_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres to run it"
            );
            return None;
        };
        let name = format!(
            "edir_cli_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        runtime().block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        });
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            postgres: Some((admin, name)),
        })
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn postgres_url(&self) -> Option<String> {
        self.postgres.as_ref().map(|(admin, name)| {
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            format!("{base}/{name}")
        })
    }

    fn url(&self) -> StoreUrl {
        match self.postgres_url() {
            None => StoreUrl::sqlite(&self.work().join("store.sqlite")),
            Some(url) => StoreUrl::parse(&url).unwrap(),
        }
    }

    /// `--workdir W` plus `--store URL` on Postgres.
    fn place_args(&self) -> Vec<String> {
        let mut args = vec!["--workdir".to_string(), self.work().display().to_string()];
        if let Some(url) = self.postgres_url() {
            args.extend(["--store".to_string(), url]);
        }
        args
    }

    /// `run PIPELINE --sim` with small scenes and no scoring, at `quota`, for `only` (all when
    /// empty), plus `extra`.
    fn run_args(&self, pipeline: &Path, quota: u32, only: &[&str], extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            pipeline.to_str().unwrap(),
            "--sim",
            "--sim-sizes",
            "64",
            "--no-score",
            "-q",
            "--quota",
            &quota.to_string(),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        for o in only {
            args.extend(["--only".to_string(), (*o).to_string()]);
        }
        args.extend(self.place_args());
        args.extend(extra.iter().map(ToString::to_string));
        args
    }

    fn store<T>(&self, f: impl AsyncFnOnce(&Store, &edir_store::Run) -> T) -> T {
        runtime().block_on(async {
            let store = Store::open(&self.url()).await.unwrap();
            let run = store.runs().await.unwrap().pop().unwrap();
            let out = f(&store, &run).await;
            store.close().await;
            out
        })
    }

    /// The store's invariants after a finished run (see `Store::verify`).
    fn verify(&self, quotas: &BTreeMap<String, u64>) -> Vec<String> {
        self.store(async |store, run| store.verify(&run.id, quotas, true, true).await.unwrap())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.postgres {
            runtime().block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        }
    }
}

fn full() -> PathBuf {
    repo().join("pipelines/full.yaml")
}

/// A copy of the shipped pipeline and prompts, to edit.
fn pipeline_copy(dir: &Path) -> PathBuf {
    for sub in ["pipelines", "prompts"] {
        let from = repo().join(sub);
        let to = dir.join(sub);
        fs_err::create_dir_all(&to).unwrap();
        for entry in fs_err::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                fs_err::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    dir.join("pipelines/full.yaml")
}

/// The export's files, with the sample ids (uuids, different per run) taken out of the JSON
/// lines, so two runs of the same work compare equal.
fn export_files(work: &Path) -> BTreeMap<String, Vec<u8>> {
    let root = work.join("benchmark");
    let mut out = BTreeMap::new();
    let mut todo = vec![root.clone()];
    while let Some(dir) = todo.pop() {
        for entry in fs_err::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let name = path.strip_prefix(&root).unwrap().display().to_string();
            let bytes = fs_err::read(&path).unwrap();
            let bytes = if is_jsonl(&name) {
                text(&bytes)
                    .lines()
                    .map(|line| {
                        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
                        if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                            m.remove("sample");
                        }
                        v.to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes()
            } else {
                bytes
            };
            out.insert(name, bytes);
        }
    }
    out
}

fn quotas(ids: &[&str], quota: u64) -> BTreeMap<String, u64> {
    ids.iter().map(|s| ((*s).to_string(), quota)).collect()
}

const ALL: [&str; 15] = [
    "attribute.color",
    "attribute.material",
    "attribute.shape",
    "attribute.texture",
    "object.addition",
    "object.remove",
    "object.replace",
    "object.count",
    "relationship.spatial",
    "relationship.action",
    "relationship.viewpoint",
    "global.style",
    "global.time",
    "global.weather",
    "complex.complex",
];

/// A small deterministic generator for the kill moments.
struct Lcg(u64);

impl Lcg {
    fn next_in(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

/// Kills `run` with SIGKILL at 20 seeded moments, then lets it finish: the result equals an
/// uninterrupted run's byte for byte (sample ids aside) and the store's invariants hold.
///
/// The moments are scaled to this machine: fixed ones (40 to 700 ms) stopped landing in the
/// run once the engine got faster, since a few killed runs already finished the work. The
/// clean run's time `T` and a second, nothing-to-do run's time `T0` (start, open, export,
/// exit) place each kill between 0.8 `T0` and `T0` plus a twentieth of the work's time, so
/// the 20 killed runs together do about half the work, and most kills land in it.
fn kill_9_at_seeded_moments(reference: &Place, killed: &Place) {
    const QUOTA: u32 = 8;
    let timed = Instant::now();
    let clean = edir_synth(&reference.run_args(&full(), QUOTA, &[], &[]));
    let whole = timed.elapsed();
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
    let timed = Instant::now();
    let idle = edir_synth(&reference.run_args(&full(), QUOTA, &[], &[]));
    let startup = timed.elapsed();
    assert_eq!(idle.status.code(), Some(0), "{}", text(&idle.stderr));
    let work = whole
        .saturating_sub(startup)
        .max(Duration::from_millis(100));
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (lo, hi) = (ms(startup) * 4 / 5, ms(startup + work / 20));
    eprintln!("kill -9: clean run {whole:?}, nothing to do {startup:?}: kills at {lo}..{hi} ms");

    let mut rng = Lcg(2026);
    let mut hit = 0;
    let started = Instant::now();
    for _ in 0..20 {
        let wait = Duration::from_millis(rng.next_in(lo, hi));
        let mut child = Command::new(env!("CARGO_BIN_EXE_edir-synth"))
            .args(killed.run_args(&full(), QUOTA, &[], &[]))
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        pause(wait);
        if child.try_wait().unwrap().is_none() {
            hit += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap(); // reaped: its pid is gone, as after a real crash
        assert!(started.elapsed() < Duration::from_secs(300), "bounded");
    }
    eprintln!("kill -9: {hit} of 20 kills hit a running process");
    assert!(hit >= 10, "only {hit} of 20 kills hit a running process");
    // The kills landed in the work, not only in start-up: some of it was checkpointed, not all.
    let done = |place: &Place| {
        place.store(async |store, run| {
            let counts = store.task_counts(&run.id).await.unwrap();
            counts
                .iter()
                .filter(|c| c.state == edir_store::TaskState::Done)
                .map(|c| c.count)
                .sum::<i64>()
        })
    };
    let (so_far, all) = (done(killed), done(reference));
    eprintln!("kill -9: {so_far} of {all} tasks done when the kills ended");
    assert!(
        so_far > 0 && so_far < all,
        "{so_far} of {all} tasks done: the kills missed the work"
    );
    let last = edir_synth(&killed.run_args(&full(), QUOTA, &[], &[]));
    assert_eq!(last.status.code(), Some(0), "{}", text(&last.stderr));
    assert_eq!(
        killed.verify(&quotas(&ALL, QUOTA.into())),
        Vec::<String>::new()
    );
    let (a, b) = (
        export_files(&reference.work()),
        export_files(&killed.work()),
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same files"
    );
    for (name, bytes) in &a {
        assert!(b[name] == *bytes, "{name} differs after kill -9 and resume");
    }
    // A finished run has nothing left to do.
    let again = edir_synth(&killed.run_args(&full(), QUOTA, &[], &[]));
    assert!(
        text(&again.stdout).contains(" 0 model calls"),
        "{}",
        text(&again.stdout)
    );
}

#[test]
fn kill_9_at_twenty_moments_then_resume_matches_a_clean_run() {
    kill_9_at_seeded_moments(&Place::sqlite(), &Place::sqlite());
}

#[test]
fn kill_9_at_twenty_moments_then_resume_matches_a_clean_run_on_postgres() {
    if let (Some(a), Some(b)) = (Place::postgres(), Place::postgres()) {
        kill_9_at_seeded_moments(&a, &b);
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Ctrl-C (or SIGTERM) exits 130 after the in-flight calls; a second process meanwhile is refused (the
/// store is in use), so is `retry`; the next run resumes and completes.
fn ctrl_c_and_a_store_in_use(place: &Place, stop: &str) {
    const QUOTA: u32 = 12;
    let args = place.run_args(&full(), QUOTA, &[], &["--sim-sizes", "128"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_edir-synth"))
        .args(&args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it has accepted something (it is well under way), bounded.
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended too early"
        );
        let accepted = place.url().sqlite_path().is_none_or(|p| p.is_file())
            && runtime().block_on(async {
                let Ok(store) = Store::open(&place.url()).await else {
                    return false;
                };
                let runs = store.runs().await.unwrap_or_default();
                let mut any = false;
                for run in runs {
                    let counts = store.sample_counts(&run.id).await.unwrap_or_default();
                    any |= counts
                        .iter()
                        .any(|c| c.state == edir_store::SampleState::Accepted);
                }
                store.close().await;
                any
            });
        if accepted {
            break;
        }
        pause(Duration::from_millis(100));
    }
    // A second run on the same store is refused, and so is `retry`.
    let second = edir_synth(&args);
    assert_eq!(second.status.code(), Some(2), "{}", text(&second.stderr));
    assert!(
        text(&second.stderr).contains("in use by process"),
        "{}",
        text(&second.stderr)
    );
    let mut retry = vec!["retry".to_string(), "--failed".to_string()];
    retry.extend(
        place
            .place_args()
            .into_iter()
            .skip(if place.postgres.is_some() { 2 } else { 0 }),
    );
    let retried = edir_synth(&retry);
    assert_eq!(retried.status.code(), Some(2), "{}", text(&retried.stderr));
    assert!(
        text(&retried.stderr).contains("in use by process"),
        "{}",
        text(&retried.stderr)
    );

    signal(&child, stop);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("waiting up to 30 s for the calls in flight"),
        "it says what it waits for: {}",
        text(&out.stderr)
    );
    let resumed = edir_synth(&args);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed.stderr));
    assert_eq!(
        place.verify(&quotas(&ALL, QUOTA.into())),
        Vec::<String>::new()
    );
}

#[test]
fn ctrl_c_exits_130_a_second_process_is_refused_and_resume_completes() {
    ctrl_c_and_a_store_in_use(&Place::sqlite(), "INT");
}

#[test]
fn sigterm_exits_130_a_second_process_is_refused_and_resume_completes_on_postgres() {
    if let Some(place) = Place::postgres() {
        ctrl_c_and_a_store_in_use(&place, "TERM");
    }
}

/// (sample, stage, item) -> (state, output, error class, attempts) of the run's tasks.
type Snapshot = BTreeMap<(String, String, i64), (String, Option<String>, Option<String>, i64)>;

fn snapshot(place: &Place) -> Snapshot {
    place.store(async |store, run| {
        let mut out = Snapshot::new();
        for sample in store.samples(&run.id, None).await.unwrap() {
            for t in store.tasks_of_sample(&sample.id).await.unwrap() {
                out.insert(
                    (sample.id.0.clone(), t.stage.clone(), t.item),
                    (
                        t.state.to_string(),
                        t.output_json.or(t.output_artifact),
                        t.error_class,
                        t.attempts,
                    ),
                );
            }
        }
        out
    })
}

fn plan_json(place: &Place, pipeline: &Path, quota: u32, only: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "plan".to_string(),
        pipeline.display().to_string(),
        "--json".to_string(),
        "--quota".to_string(),
        quota.to_string(),
    ];
    for o in only {
        args.extend(["--only".to_string(), (*o).to_string()]);
    }
    args.extend(place.place_args());
    let out = edir_synth(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const THREE: [&str; 3] = ["attribute.color", "global.style", "object.count"];

/// A prompt edit makes `plan` list exactly the tasks of that stage and downstream, and `run`
/// recompute exactly those, nothing else.
fn prompt_edit_recomputes_exactly_the_affected_tasks(place: &Place) {
    let first = edir_synth(&place.run_args(&full(), 2, &THREE, &[]));
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let clean = plan_json(place, &full(), 2, &THREE);
    assert_eq!(clean["stale"], serde_json::json!([]), "{clean}");

    let copy = tempfile::tempdir().unwrap();
    let edited = pipeline_copy(copy.path());
    let prompt = copy.path().join("prompts/query.md");
    let mut body = fs_err::read_to_string(&prompt).unwrap();
    body.push_str("\nKeep it under twenty words.\n");
    fs_err::write(&prompt, body).unwrap();

    let plan = plan_json(place, &edited, 2, &THREE);
    let stale = plan["stale"].as_array().unwrap();
    let stages: BTreeSet<&str> = stale.iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, BTreeSet::from(["query", "judge_query"]), "{plan}");
    for s in stale {
        assert_eq!(s["samples"], 2, "{s}");
        let reason = s["reason"].as_str().unwrap();
        if s["stage"] == "query" {
            assert_eq!(reason, "prompt changed");
        } else {
            assert_eq!(reason, "downstream of stale `query`");
        }
    }
    assert_eq!(stale.len(), 6, "two stages x three subcategories: {plan}");

    let before = snapshot(place);
    let run = edir_synth(&place.run_args(&edited, 2, &THREE, &[]));
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let after = snapshot(place);
    let mut recomputed = 0;
    for (key, old) in &before {
        let new = &after[key];
        let affected = key.1 == "query" || key.1 == "judge_query";
        if affected && old.0 == "done" {
            recomputed += 1;
            assert_eq!(new.0, "done", "{key:?}");
            assert!(
                new.3 > old.3,
                "{key:?} was computed again: {old:?} -> {new:?}"
            );
        } else {
            assert_eq!(old, new, "{key:?} must not change");
        }
    }
    assert_eq!(recomputed, 12, "6 accepted samples x (query, judge_query)");
    let history = place.store(async |store, run| store.history_count(&run.id).await.unwrap());
    assert_eq!(history, 12, "the old outputs are kept for audit");
    let again = plan_json(place, &edited, 2, &THREE);
    assert_eq!(again["stale"], serde_json::json!([]), "{again}");
    assert_eq!(place.verify(&quotas(&THREE, 2)), Vec::<String>::new());
}

#[test]
fn a_prompt_edit_recomputes_exactly_the_affected_tasks() {
    prompt_edit_recomputes_exactly_the_affected_tasks(&Place::sqlite());
}

#[test]
fn a_prompt_edit_recomputes_exactly_the_affected_tasks_on_postgres() {
    if let Some(place) = Place::postgres() {
        prompt_edit_recomputes_exactly_the_affected_tasks(&place);
    }
}

/// The export's files that belong to `subcategory` (JSON lines by their metadata, images by
/// their group prefix) and the others.
fn split_export(
    files: &BTreeMap<String, Vec<u8>>,
    subcategory: &str,
    position: usize,
) -> (Vec<String>, Vec<String>) {
    let prefix = format!("{}", position + 1);
    let (mut mine, mut others) = (Vec::new(), Vec::new());
    for (name, bytes) in files {
        if is_jsonl(name) {
            for line in text(bytes).lines() {
                let entry = format!("{name}: {line}");
                if line.contains(&format!("\"subcategory_id\":\"{subcategory}\"")) {
                    mine.push(entry);
                } else {
                    others.push(entry);
                }
            }
        } else if let Some(image) = name.strip_prefix("images/") {
            let group = image.split('_').next().unwrap_or_default();
            let entry = format!("{name}: {}", blake(bytes));
            if group.len() == prefix.len() + 6 && group.starts_with(&prefix) {
                mine.push(entry);
            } else {
                others.push(entry);
            }
        }
    }
    (mine, others)
}

fn blake(bytes: &[u8]) -> String {
    format!(
        "{}:{}",
        bytes.len(),
        bytes.iter().map(|b| u64::from(*b)).sum::<u64>()
    )
}

/// `regen` remakes one subcategory and leaves every other byte of the export as it was.
fn regen_changes_only_its_subcategory(place: &Place) {
    let first = edir_synth(&place.run_args(&full(), 2, &THREE, &[]));
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let before = export_files(&place.work());
    let position = ALL.iter().position(|s| *s == "global.style").unwrap();
    let (style_before, others_before) = split_export(&before, "global.style", position);
    assert!(!style_before.is_empty() && !others_before.is_empty());

    let mut regen = vec![
        "regen".to_string(),
        "--subcategory".to_string(),
        "style".to_string(),
    ];
    regen.extend(
        place
            .place_args()
            .into_iter()
            .skip(if place.postgres.is_some() { 2 } else { 0 }),
    );
    let out = edir_synth(&regen);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("superseded"),
        "{}",
        text(&out.stdout)
    );
    let run = edir_synth(&place.run_args(&full(), 2, &THREE, &[]));
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let after = export_files(&place.work());
    let (style_after, others_after) = split_export(&after, "global.style", position);
    assert_eq!(
        others_before, others_after,
        "other subcategories are untouched"
    );
    assert_eq!(style_after.len(), style_before.len());
    // Whole samples were remade: a new generation, the old ones kept as superseded.
    let (superseded, accepted) = place.store(async |store, run| {
        let samples = store.samples(&run.id, Some("global.style")).await.unwrap();
        (
            samples
                .iter()
                .filter(|s| s.state == edir_store::SampleState::Superseded)
                .count(),
            samples
                .iter()
                .filter(|s| s.state == edir_store::SampleState::Accepted && s.generation == 1)
                .count(),
        )
    });
    assert!(superseded >= 2, "{superseded}");
    assert_eq!(accepted, 2);

    // From a stage on: the earlier stages' outputs stay, and so does every other subcategory.
    let before = snapshot(place);
    let (_, others_mid) = split_export(&export_files(&place.work()), "attribute.color", 0);
    regen.extend(["--from-stage".to_string(), "query".to_string()]);
    regen[2] = "attribute.color".to_string();
    let out = edir_synth(&regen);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = edir_synth(&place.run_args(&full(), 2, &THREE, &[]));
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let after = snapshot(place);
    let color: BTreeSet<String> = place.store(async |store, run| {
        store
            .samples(&run.id, Some("attribute.color"))
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id.0)
            .collect()
    });
    for (key, old) in &before {
        let remade = color.contains(&key.0) && (key.1 == "query" || key.1 == "judge_query");
        if !remade {
            assert_eq!(*old, after[key], "{key:?} must not change");
        }
    }
    let history = place.store(async |store, run| store.history_count(&run.id).await.unwrap());
    assert!(
        history >= 4,
        "the superseded query and judge outputs are kept: {history}"
    );
    let (_, others_final) = split_export(&export_files(&place.work()), "attribute.color", 0);
    assert_eq!(
        others_mid, others_final,
        "other subcategories are untouched"
    );
    assert_eq!(place.verify(&quotas(&THREE, 2)), Vec::<String>::new());
}

#[test]
fn regen_changes_only_its_subcategory_on_sqlite() {
    regen_changes_only_its_subcategory(&Place::sqlite());
}

#[test]
fn regen_changes_only_its_subcategory_on_postgres() {
    if let Some(place) = Place::postgres() {
        regen_changes_only_its_subcategory(&place);
    }
}

/// `retry` re-queues exactly what it names; the acceptance check keeps the quota exact when
/// more samples come back than the subcategory needs.
fn retry_touches_only_what_it_names(place: &Place) {
    let copy = tempfile::tempdir().unwrap();
    let broken = pipeline_copy(copy.path());
    let schema = copy.path().join("prompts/query.schema.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&schema).unwrap()).unwrap();
    value["required"]
        .as_array_mut()
        .unwrap()
        .push("audience".into());
    value["properties"]["audience"] = serde_json::json!({"type": "string"});
    fs_err::write(&schema, value.to_string()).unwrap();

    let only = ["attribute.color", "object.count"];
    let first = edir_synth(&place.run_args(&broken, 2, &only, &[]));
    assert_eq!(
        first.status.code(),
        Some(1),
        "short of quota: {}",
        text(&first.stdout)
    );
    let plan = plan_json(place, &broken, 2, &only);
    let failed = plan["failed"].as_array().unwrap();
    assert!(!failed.is_empty());
    for f in failed {
        assert_eq!(f["stage"], "query", "{f}");
        assert_eq!(f["class"], "invalid_output", "{f}");
        assert_eq!(
            f["retried"], 0,
            "a schema failure is not retried by `run` on its own: {f}"
        );
    }

    let mut retry = vec!["retry".to_string(), "--failed".to_string()];
    retry.extend(
        place
            .place_args()
            .into_iter()
            .skip(if place.postgres.is_some() { 2 } else { 0 }),
    );
    let before = snapshot(place);
    for (stage, class) in [("judge_edit", "invalid_output"), ("query", "http_500")] {
        let mut args = retry.clone();
        args.extend([
            "--stage".to_string(),
            stage.to_string(),
            "--error".to_string(),
            class.to_string(),
        ]);
        let out = edir_synth(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("re-queued 0 failed tasks"),
            "{}",
            text(&out.stdout)
        );
        assert_eq!(before, snapshot(place), "nothing named, nothing touched");
    }
    let unknown = {
        let mut args = retry.clone();
        args.extend(["--stage".to_string(), "qeury".to_string()]);
        edir_synth(&args)
    };
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("did you mean `query`"),
        "{}",
        text(&unknown.stderr)
    );

    let mut args = retry.clone();
    args.extend([
        "--stage".to_string(),
        "query".to_string(),
        "--error".to_string(),
        "invalid_output".to_string(),
    ]);
    let out = edir_synth(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let after = snapshot(place);
    let mut requeued = 0;
    for (key, old) in &before {
        let new = &after[key];
        if old.0 == "failed" {
            requeued += 1;
            assert_eq!(new.0, "ready", "{key:?}");
            assert_eq!(new.2, None, "the error is cleared (kept in the history)");
        } else if old.0 == "skipped" && old.1.is_none() {
            // Skipped because the sample failed: waiting again.
            assert!(new.0 == "blocked" || new.0 == "ready", "{key:?}: {new:?}");
        } else {
            assert_eq!(old, new, "{key:?} must not change");
        }
    }
    assert!(requeued > 0);
    assert!(text(&out.stdout).contains(&format!("re-queued {requeued} failed tasks")));

    // With the schema fixed, the retried samples complete; the quota stays exact.
    let fixed = edir_synth(&place.run_args(&full(), 2, &only, &[]));
    assert_eq!(fixed.status.code(), Some(0), "{}", text(&fixed.stderr));
    assert_eq!(place.verify(&quotas(&only, 2)), Vec::<String>::new());
    let accepted = place.store(async |store, run| {
        store
            .sample_counts(&run.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.state == edir_store::SampleState::Accepted)
            .map(|c| c.count)
            .sum::<i64>()
    });
    assert_eq!(accepted, 4, "exactly the quota");
}

#[test]
fn retry_touches_only_what_it_names_on_sqlite() {
    retry_touches_only_what_it_names(&Place::sqlite());
}

#[test]
fn retry_touches_only_what_it_names_on_postgres() {
    if let Some(place) = Place::postgres() {
        retry_touches_only_what_it_names(&place);
    }
}

#[test]
fn a_quota_below_the_accepted_stops_the_resume_and_new_starts_afresh() {
    let place = Place::sqlite();
    let first = edir_synth(&place.run_args(&full(), 2, &["attribute.color"], &[]));
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let copy = tempfile::tempdir().unwrap();
    let edited = pipeline_copy(copy.path());
    // Lower the quota below what is accepted.
    let before = snapshot(&place);
    let out = edir_synth(&place.run_args(&edited, 1, &["attribute.color"], &[]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("more than the quota of 1"), "{stderr}");
    assert!(stderr.contains("run --new"), "{stderr}");
    assert_eq!(before, snapshot(&place), "nothing changed");

    // `--new` starts afresh; the old run stays in the store, archived.
    let fresh = edir_synth(&place.run_args(&edited, 1, &["attribute.color"], &["--new"]));
    assert_eq!(fresh.status.code(), Some(0), "{}", text(&fresh.stderr));
    let runs = runtime().block_on(async {
        let store = Store::open(&place.url()).await.unwrap();
        let runs = store.runs().await.unwrap();
        store.close().await;
        runs
    });
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].state, edir_store::RunState::Archived);
    assert!(runs[0].name.starts_with("edir-full@"), "{}", runs[0].name);
}

#[test]
fn a_removed_stage_stops_the_resume_and_changes_nothing() {
    let place = Place::sqlite();
    let first = edir_synth(&place.run_args(&full(), 2, &["attribute.color"], &[]));
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let copy = tempfile::tempdir().unwrap();
    let edited = pipeline_copy(copy.path());
    let yaml = fs_err::read_to_string(&edited).unwrap();
    let start = yaml.find("  # 8. Judge 2").unwrap();
    let end = yaml.find("\nscore:").unwrap();
    fs_err::write(&edited, format!("{}{}", &yaml[..start], &yaml[end + 1..])).unwrap();
    let before = snapshot(&place);
    for command in ["plan", "run"] {
        let args = if command == "run" {
            place.run_args(&edited, 2, &["attribute.color"], &[])
        } else {
            let mut args = vec!["plan".to_string(), edited.display().to_string()];
            args.extend(place.place_args());
            args
        };
        let out = edir_synth(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command}: {}",
            text(&out.stdout)
        );
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            said.contains("stage `judge_query` was removed"),
            "{command}: {said}"
        );
        assert!(said.contains("run --new"), "{command}: {said}");
    }
    assert_eq!(before, snapshot(&place), "nothing changed");
}
