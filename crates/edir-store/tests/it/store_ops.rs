//! Claim, lease, complete, fail, expire, decide and count, on both backends.

use std::collections::HashSet;
use std::time::Duration;

use edir_store::{
    Completion, Failure, NewSample, NewTask, RunId, SampleState, Store, StoreError, TaskState,
};

const LEASE: Duration = Duration::from_secs(60);

crate::on_both_backends!(
    open_run_creates_once,
    claim_takes_only_ready_tasks,
    completing_readies_dependents_in_order,
    skipped_task_resolves_its_dependents,
    late_completion_after_expiry_is_refused,
    reclaimed_lease_fences_the_old_owner,
    retryable_failure_waits_for_its_back_off,
    final_failure_is_recorded_with_an_event,
    reclaim_expired_returns_tasks_to_ready,
    batch_completion_writes_all_but_lost_leases,
    sample_is_decided_once_and_skips_the_rest,
    counts_by_subcategory_stage_and_state,
    bad_dependency_writes_nothing,
    embeddings_round_trip,
    concurrent_claimers_never_share_a_task,
);

fn task(stage: &str, item: i64, needs: &[(&str, i64)]) -> NewTask {
    NewTask {
        stage: stage.to_string(),
        item,
        needs: needs.iter().map(|(s, i)| ((*s).to_string(), *i)).collect(),
        cache_key: None,
    }
}

/// The shape of an EDIR sample: instruct -> target, negatives[0..2] -> judge.
fn sample(subcategory: &str, ordinal: i64) -> NewSample {
    NewSample {
        subcategory: subcategory.to_string(),
        ordinal,
        generation: 0,
        reference: format!("ref-{ordinal}"),
        reference_name: format!("img_{ordinal}.png"),
        seed: ordinal,
        tasks: vec![
            task("instruct", 0, &[]),
            task("target", 0, &[("instruct", 0)]),
            task("negatives", 0, &[("instruct", 0)]),
            task("negatives", 1, &[("instruct", 0)]),
            task(
                "judge",
                0,
                &[("target", 0), ("negatives", 0), ("negatives", 1)],
            ),
        ],
    }
}

async fn new_run(store: &Store) -> RunId {
    let (run, created) = store
        .open_run("test-run", "name: test-run\n", "hash-1", "test")
        .await
        .unwrap();
    assert!(created);
    run.id
}

async fn open_run_creates_once(store: Store) {
    let (first, created) = store.open_run("edir", "yaml", "h1", "cli").await.unwrap();
    assert!(created);
    let (again, created_again) = store
        .open_run("edir", "other yaml", "h2", "cli")
        .await
        .unwrap();
    assert!(!created_again);
    assert_eq!(first.id, again.id);
    assert_eq!(
        again.pipeline_hash, "h1",
        "reopening keeps the original pipeline"
    );
    assert_eq!(store.runs().await.unwrap().len(), 1);
    let events = store.events(&first.id, 10).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "run_created").count(), 1);
}

async fn claim_takes_only_ready_tasks(store: Store) {
    let run = new_run(&store).await;
    store
        .add_samples(
            &run,
            &[sample("attribute.color", 0), sample("attribute.color", 1)],
        )
        .await
        .unwrap();
    // Only `instruct` has no dependencies.
    assert!(
        store
            .claim(&run, "target", "w1", 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let claims = store
        .claim(&run, "instruct", "w1", 10, LEASE)
        .await
        .unwrap();
    assert_eq!(claims.len(), 2);
    assert!(claims.iter().all(|c| c.attempt == 1 && c.owner == "w1"));
    // Leased tasks are not claimable again while the lease holds.
    assert!(
        store
            .claim(&run, "instruct", "w2", 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let limited = store.claim(&run, "instruct", "w2", 1, LEASE).await.unwrap();
    assert!(limited.is_empty());
    let record = store.task(claims[0].id).await.unwrap();
    assert_eq!(record.state, TaskState::Leased);
    assert_eq!(record.lease_owner.as_deref(), Some("w1"));
}

async fn completing_readies_dependents_in_order(store: Store) {
    let run = new_run(&store).await;
    let ids = store
        .add_samples(&run, &[sample("object.count", 0)])
        .await
        .unwrap();
    let instruct = store.claim(&run, "instruct", "w", 5, LEASE).await.unwrap();
    store
        .complete(&Completion::done(&instruct[0], r#"{"edit":"add a cup"}"#))
        .await
        .unwrap();
    let targets = store.claim(&run, "target", "w", 5, LEASE).await.unwrap();
    let negatives = store.claim(&run, "negatives", "w", 5, LEASE).await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(negatives.iter().map(|c| c.item).collect::<Vec<_>>(), [0, 1]);
    // The judge waits for all three.
    store
        .complete(&Completion::done(&targets[0], "{}"))
        .await
        .unwrap();
    store
        .complete(&Completion::done(&negatives[0], "{}"))
        .await
        .unwrap();
    assert!(
        store
            .claim(&run, "judge", "w", 5, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let tasks = store.tasks_of_sample(&ids[0]).await.unwrap();
    let judge = tasks.iter().find(|t| t.stage == "judge").unwrap();
    assert_eq!((judge.state, judge.deps_pending), (TaskState::Blocked, 1));
    store
        .complete(&Completion::done(&negatives[1], "{}"))
        .await
        .unwrap();
    let judge = store.claim(&run, "judge", "w", 5, LEASE).await.unwrap();
    assert_eq!(judge.len(), 1);
    let done = store.task(instruct[0].id).await.unwrap();
    assert_eq!(done.state, TaskState::Done);
    assert_eq!(done.output_json.as_deref(), Some(r#"{"edit":"add a cup"}"#));
    assert_eq!(done.lease_owner, None);
}

async fn skipped_task_resolves_its_dependents(store: Store) {
    let run = new_run(&store).await;
    store
        .add_samples(&run, &[sample("object.remove", 0)])
        .await
        .unwrap();
    let instruct = store.claim(&run, "instruct", "w", 1, LEASE).await.unwrap();
    store
        .complete(&Completion::done(&instruct[0], "{}"))
        .await
        .unwrap();
    for claim in store.claim(&run, "target", "w", 5, LEASE).await.unwrap() {
        store
            .complete(&Completion::done(&claim, "{}"))
            .await
            .unwrap();
    }
    // Only one extra change came back: the second negative is skipped, not failed.
    let negatives = store.claim(&run, "negatives", "w", 5, LEASE).await.unwrap();
    store
        .complete(&Completion::done(&negatives[0], "{}"))
        .await
        .unwrap();
    store
        .complete(&Completion::skipped(&negatives[1]))
        .await
        .unwrap();
    assert_eq!(
        store.task(negatives[1].id).await.unwrap().state,
        TaskState::Skipped
    );
    assert_eq!(
        store
            .claim(&run, "judge", "w", 5, LEASE)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn late_completion_after_expiry_is_refused(store: Store) {
    let run = new_run(&store).await;
    store
        .add_samples(&run, &[sample("global.time", 0)])
        .await
        .unwrap();
    let claim = store
        .claim(&run, "instruct", "slow", 1, Duration::from_secs(5))
        .await
        .unwrap()
        .remove(0);
    store.clock().advance_ms(5_001);
    let error = store
        .complete(&Completion::done(&claim, "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::LeaseLost { task, attempt: 1 } if task == claim.id.0),
        "{error:?}"
    );
    let record = store.task(claim.id).await.unwrap();
    assert_eq!(record.state, TaskState::Leased, "nothing was written");
    assert_eq!(record.output_json, None);
    assert!(error.to_string().contains("was lost"));
}

async fn reclaimed_lease_fences_the_old_owner(store: Store) {
    let run = new_run(&store).await;
    store
        .add_samples(&run, &[sample("global.weather", 0)])
        .await
        .unwrap();
    let old = store
        .claim(&run, "instruct", "old", 1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    store.clock().advance_ms(1_500);
    assert!(
        store
            .claim(&run, "instruct", "new", 1, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "an expired lease is claimable only once reclaimed"
    );
    assert_eq!(store.reclaim_expired(&run, "new").await.unwrap(), 1);
    let new = store
        .claim(&run, "instruct", "new", 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    assert_eq!((new.id, new.attempt), (old.id, 2));
    assert!(matches!(
        store.complete(&Completion::done(&old, r#""old""#)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    store
        .complete(&Completion::done(&new, r#""new""#))
        .await
        .unwrap();
    // Done once, by the new owner; the old owner can never write again.
    assert!(matches!(
        store.complete(&Completion::done(&old, r#""old""#)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store.complete(&Completion::done(&new, r#""again""#)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        store.task(new.id).await.unwrap().output_json.as_deref(),
        Some(r#""new""#)
    );
}

async fn retryable_failure_waits_for_its_back_off(store: Store) {
    let run = new_run(&store).await;
    store
        .add_samples(&run, &[sample("attribute.shape", 0)])
        .await
        .unwrap();
    let claim = store
        .claim(&run, "instruct", "w", 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let retry_at = store.clock().now_ms() + 2_000;
    store
        .fail(&Failure {
            task: claim.id,
            owner: claim.owner.clone(),
            attempt: claim.attempt,
            class: "http_503".into(),
            message: "endpoint `vlm` returned 503".into(),
            retry_at: Some(retry_at),
        })
        .await
        .unwrap();
    let record = store.task(claim.id).await.unwrap();
    assert_eq!(record.state, TaskState::Ready);
    assert_eq!(record.error_class.as_deref(), Some("http_503"));
    assert!(
        store
            .claim(&run, "instruct", "w", 1, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "not before its back-off"
    );
    store.clock().advance_ms(2_000);
    let again = store.claim(&run, "instruct", "w", 1, LEASE).await.unwrap();
    assert_eq!(again[0].attempt, 2);
}

async fn final_failure_is_recorded_with_an_event(store: Store) {
    let run = new_run(&store).await;
    store
        .add_samples(&run, &[sample("attribute.texture", 0)])
        .await
        .unwrap();
    let claim = store
        .claim(&run, "instruct", "w", 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let long = "x".repeat(10_000);
    store
        .fail(&Failure {
            task: claim.id,
            owner: "w".into(),
            attempt: 1,
            class: "invalid_output".into(),
            message: long,
            retry_at: None,
        })
        .await
        .unwrap();
    let record = store.task(claim.id).await.unwrap();
    assert_eq!(record.state, TaskState::Failed);
    assert!(
        record.error_message.unwrap().len() <= 2_000,
        "messages are capped"
    );
    assert!(
        store
            .claim(&run, "instruct", "w", 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let events = store.events(&run, 10).await.unwrap();
    let failed = events
        .iter()
        .find(|e| e.kind == "task_failed")
        .expect("an event");
    assert_eq!(failed.task, Some(claim.id.0));
    assert!(
        failed
            .detail
            .as_deref()
            .unwrap()
            .starts_with("invalid_output: ")
    );
    // Failing again with the same (now finished) lease is refused.
    let again = store
        .fail(&Failure {
            task: claim.id,
            owner: "w".into(),
            attempt: 1,
            class: "x".into(),
            message: String::new(),
            retry_at: None,
        })
        .await;
    assert!(matches!(again, Err(StoreError::LeaseLost { .. })));
}

async fn reclaim_expired_returns_tasks_to_ready(store: Store) {
    let run = new_run(&store).await;
    store
        .add_samples(
            &run,
            &[
                sample("relationship.spatial", 0),
                sample("relationship.spatial", 1),
            ],
        )
        .await
        .unwrap();
    let claims = store
        .claim(&run, "instruct", "crashed", 2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(store.reclaim_expired(&run, "test").await.unwrap(), 0);
    store.clock().advance_ms(10_001);
    assert_eq!(store.reclaim_expired(&run, "test").await.unwrap(), 2);
    for claim in &claims {
        let record = store.task(claim.id).await.unwrap();
        assert_eq!((record.state, record.lease_owner), (TaskState::Ready, None));
    }
    let events = store.events(&run, 10).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "leases_reclaimed" && e.detail.as_deref() == Some("2"))
    );
}

async fn batch_completion_writes_all_but_lost_leases(store: Store) {
    let run = new_run(&store).await;
    let samples: Vec<NewSample> = (0..3).map(|i| sample("object.addition", i)).collect();
    store.add_samples(&run, &samples).await.unwrap();
    let claims = store.claim(&run, "instruct", "w", 3, LEASE).await.unwrap();
    let mut stale = Completion::done(&claims[1], "{}");
    stale.attempt = 7;
    let batch = vec![
        Completion::done(&claims[0], "{}"),
        stale,
        Completion::done(&claims[2], "{}"),
    ];
    let outcome = store.complete_batch(&batch).await.unwrap();
    assert_eq!(outcome.written, 2);
    assert_eq!(outcome.lost, vec![claims[1].id]);
    assert_eq!(
        store.task(claims[1].id).await.unwrap().state,
        TaskState::Leased
    );
    assert_eq!(
        store
            .claim(&run, "target", "w", 10, LEASE)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn sample_is_decided_once_and_skips_the_rest(store: Store) {
    let run = new_run(&store).await;
    let ids = store
        .add_samples(&run, &[sample("complex.complex", 0)])
        .await
        .unwrap();
    let claim = store
        .claim(&run, "instruct", "w", 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    store
        .complete(&Completion::done(&claim, "{}"))
        .await
        .unwrap();
    let decided = store
        .decide_sample(
            &ids[0],
            SampleState::Rejected,
            Some("judge_edit"),
            Some("edit not visible"),
            "w",
        )
        .await
        .unwrap();
    assert!(decided);
    let again = store
        .decide_sample(&ids[0], SampleState::Accepted, None, None, "w")
        .await
        .unwrap();
    assert!(!again, "a decision is taken once");
    let record = store.sample(&ids[0]).await.unwrap();
    assert_eq!(record.state, SampleState::Rejected);
    assert_eq!(record.reason.as_deref(), Some("edit not visible"));
    let tasks = store.tasks_of_sample(&ids[0]).await.unwrap();
    assert!(
        tasks
            .iter()
            .filter(|t| t.stage != "instruct")
            .all(|t| t.state == TaskState::Skipped)
    );
    assert!(
        store
            .claim(&run, "target", "w", 5, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn counts_by_subcategory_stage_and_state(store: Store) {
    let run = new_run(&store).await;
    let ids = store
        .add_samples(
            &run,
            &[
                sample("attribute.color", 0),
                sample("attribute.color", 1),
                sample("object.count", 0),
            ],
        )
        .await
        .unwrap();
    let claims = store.claim(&run, "instruct", "w", 1, LEASE).await.unwrap();
    store
        .complete(&Completion::done(&claims[0], "{}"))
        .await
        .unwrap();
    store
        .decide_sample(
            &ids[2],
            SampleState::Rejected,
            Some("instruct"),
            Some("nothing to count"),
            "w",
        )
        .await
        .unwrap();
    let tasks = store.task_counts(&run).await.unwrap();
    let count = |sub: &str, stage: &str, state: TaskState| {
        tasks
            .iter()
            .find(|c| c.subcategory == sub && c.stage == stage && c.state == state)
            .map_or(0, |c| c.count)
    };
    assert_eq!(count("attribute.color", "instruct", TaskState::Done), 1);
    assert_eq!(count("attribute.color", "instruct", TaskState::Ready), 1);
    assert_eq!(count("attribute.color", "target", TaskState::Ready), 1);
    assert_eq!(count("attribute.color", "target", TaskState::Blocked), 1);
    assert_eq!(count("object.count", "instruct", TaskState::Skipped), 1);
    let samples = store.sample_counts(&run).await.unwrap();
    assert!(samples.iter().any(|c| c.subcategory == "attribute.color"
        && c.state == SampleState::Active
        && c.count == 2));
    let reasons = store.reason_counts(&run).await.unwrap();
    assert_eq!(reasons.len(), 1);
    assert_eq!(
        (
            reasons[0].stage.as_str(),
            reasons[0].reason.as_str(),
            reasons[0].count
        ),
        ("instruct", "nothing to count", 1)
    );
}

async fn bad_dependency_writes_nothing(store: Store) {
    let run = new_run(&store).await;
    let mut bad = sample("object.replace", 1);
    bad.tasks.push(task("query", 0, &[("missing", 0)]));
    let error = store
        .add_samples(&run, &[sample("object.replace", 0), bad])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("missing[0]"), "{error}");
    assert!(
        store.samples(&run, None).await.unwrap().is_empty(),
        "the batch is one transaction"
    );
}

async fn embeddings_round_trip(store: Store) {
    let vectors = vec![
        ("a".to_string(), vec![0.5_f32, -1.0, 2.25]),
        ("b".to_string(), vec![1.0, 0.0, 0.0]),
    ];
    store
        .put_embeddings("model-x", "instr-hash", &vectors)
        .await
        .unwrap();
    store
        .put_embeddings("model-x", "instr-hash", &vectors)
        .await
        .unwrap();
    let found = store
        .get_embeddings(
            "model-x",
            "instr-hash",
            &["a".into(), "b".into(), "c".into()],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found["a"], vec![0.5, -1.0, 2.25]);
    assert!(
        store
            .get_embeddings("model-y", "instr-hash", &["a".into()])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Several claimers (each with its own connection pool, as separate processes would have)
/// drain one queue at once; every task is claimed exactly once.
async fn concurrent_claimers_never_share_a_task(store: Store) {
    const SAMPLES: i64 = 60;
    const CLAIMERS: usize = 6;
    let run = new_run(&store).await;
    let samples: Vec<NewSample> = (0..SAMPLES)
        .map(|i| sample("relationship.action", i))
        .collect();
    store.add_samples(&run, &samples).await.unwrap();
    let mut handles = Vec::new();
    for worker in 0..CLAIMERS {
        let handle = crate::harness::reopen(&store).await;
        let run = run.clone();
        handles.push(tokio::spawn(async move {
            let owner = format!("w{worker}");
            let mut mine = Vec::new();
            // Bounded: at most SAMPLES rounds, each claiming at least one task or ending.
            for _ in 0..SAMPLES {
                let claims = handle
                    .claim(&run, "instruct", &owner, 3, LEASE)
                    .await
                    .unwrap();
                if claims.is_empty() {
                    break;
                }
                for claim in &claims {
                    handle
                        .complete(&Completion::done(claim, "{}"))
                        .await
                        .unwrap();
                }
                mine.extend(claims.into_iter().map(|c| c.id));
                tokio::task::yield_now().await;
            }
            handle.close().await;
            mine
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "a task was claimed twice");
    assert_eq!(
        all.len(),
        usize::try_from(SAMPLES).unwrap(),
        "every task was claimed"
    );
}
