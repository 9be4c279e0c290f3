//! What a `run` on an existing work directory will do, and the commands that change it.
//!
//! [`assess`] reads the store and the pipeline and says what is missing (samples to draw,
//! tasks waiting), what failed (and whether the run retries it on its own), what is stale (and
//! which input of the cache key changed), and what makes the run impossible to resume (a stage
//! removed or added, a fan-out width or a dependency changed, a quota lowered below what is
//! accepted). It changes nothing: `plan` prints it; `run` applies it with [`apply`].
//!
//! The rules, decided here and documented in the README:
//! - Stale detection covers live samples (active or accepted): those are the benchmark. A
//!   rejected or failed sample keeps its decision (and its audit trail) even when a prompt it
//!   saw changes; `regen` remakes a whole subcategory when that is wanted.
//! - A failed task is retried by `run` on its own when its error class is transient
//!   (connection, timeout, 408, 429, 5xx, no replica, deadline) and it has used fewer than
//!   [`RESUME_ATTEMPTS`] attempts since its last retry, and only while its subcategory still
//!   needs samples (lowest ordinals first). `retry --failed` re-queues what it names whatever
//!   the class, with a fresh attempt budget; the quota check at acceptance keeps the count exact.

use std::collections::{BTreeMap, BTreeSet};

use edir_config::Pipeline;
use edir_store::{Run, RunId, SampleId, SampleState, Store, Worker};
use serde::Serialize;

use crate::error::EngineError;
use crate::key::{self, StageKey};
use crate::plan::StagePlan;

/// Attempts (claims) a failed task may have used since its last retry for `run` to retry it
/// on its own.
pub const RESUME_ATTEMPTS: i64 = 3;

/// Whether a failure of this class may go away by trying again later.
#[must_use]
pub fn retryable_class(class: &str) -> bool {
    matches!(
        class,
        "connect"
            | "timeout"
            | "body_cut"
            | "no_replica"
            | "deadline"
            | "http_408"
            | "http_429"
            | "http_500"
            | "http_502"
            | "http_503"
            | "http_504"
    )
}

/// Per subcategory: what the run still has to make.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Missing {
    /// Subcategory id.
    pub subcategory: String,
    /// Its quota.
    pub quota: u64,
    /// Accepted so far.
    pub accepted: u64,
    /// In progress (after the reopening this plan does).
    pub active: u64,
    /// New samples the run will draw at least (more when judges reject), within the budget.
    pub to_draw: u64,
    /// Samples drawn so far (the budget counts them).
    pub drawn: u64,
    /// The over-generation budget.
    pub budget: u64,
}

/// Stale tasks of one stage and subcategory.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stale {
    /// Stage id.
    pub stage: String,
    /// Subcategory id.
    pub subcategory: String,
    /// Samples affected.
    pub samples: u64,
    /// Tasks to recompute.
    pub tasks: u64,
    /// Why: which input of the key changed, or which upstream stage is stale.
    pub reason: String,
}

/// Failed tasks of one stage, subcategory and error class.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failed {
    /// Stage id.
    pub stage: String,
    /// Subcategory id.
    pub subcategory: String,
    /// Error class.
    pub class: String,
    /// Failed tasks.
    pub tasks: u64,
    /// How many of them `run` retries on its own.
    pub retried: u64,
    /// One of their messages.
    pub example: String,
}

/// What a run on this store would compute (see the module docs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Assessment {
    /// The run, if the store has one by the pipeline's name.
    #[serde(skip)]
    pub run: Option<RunId>,
    /// Per selected subcategory.
    pub missing: Vec<Missing>,
    /// Stale tasks (live samples only).
    pub stale: Vec<Stale>,
    /// Failed tasks.
    pub failed: Vec<Failed>,
    /// Why the run cannot be resumed with this pipeline (empty: it can).
    pub blockers: Vec<String>,
    /// Reopenings `apply` does: (samples, stages, why).
    #[serde(skip)]
    reopen: Vec<(Vec<SampleId>, Vec<String>, &'static str)>,
}

impl Assessment {
    /// Tasks `apply` reopens because they are stale.
    #[must_use]
    pub fn stale_tasks(&self) -> u64 {
        self.stale.iter().map(|s| s.tasks).sum()
    }

    /// Failed tasks `apply` re-queues.
    #[must_use]
    pub fn retried_tasks(&self) -> u64 {
        self.failed.iter().map(|f| f.retried).sum()
    }
}

/// Every stage downstream of `stages` (transitively), with them.
fn closure(
    dependents: &BTreeMap<String, Vec<String>>,
    stages: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut out = stages.clone();
    let mut todo: Vec<String> = stages.iter().cloned().collect();
    while let Some(stage) = todo.pop() {
        for next in dependents.get(&stage).into_iter().flatten() {
            if out.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    out
}

/// Samples grouped by the set of stages to reopen in them (one reopen per group).
fn group_by_stages(
    by_sample: BTreeMap<SampleId, BTreeSet<String>>,
) -> BTreeMap<Vec<String>, Vec<SampleId>> {
    let mut groups: BTreeMap<Vec<String>, Vec<SampleId>> = BTreeMap::new();
    for (sample, stages) in by_sample {
        groups
            .entry(stages.into_iter().collect())
            .or_default()
            .push(sample);
    }
    groups
}

/// The stage keys recorded by the run's starts: key -> components.
async fn recorded_keys(
    store: &Store,
    run: &RunId,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, EngineError> {
    let mut out = BTreeMap::new();
    for event in store.events_of_kind(run, "run_started").await? {
        let Some(detail) = event
            .detail
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
        else {
            continue;
        };
        let Some(keys) = detail.get("keys").and_then(|k| k.as_object()) else {
            continue;
        };
        for entry in keys.values() {
            let (Some(key), Some(components)) = (
                entry.get("key").and_then(|k| k.as_str()),
                entry.get("components").and_then(|c| {
                    serde_json::from_value::<BTreeMap<String, String>>(c.clone()).ok()
                }),
            ) else {
                continue;
            };
            out.insert(key.to_string(), components);
        }
    }
    Ok(out)
}

/// A field of the settings recorded by the run's most recent start that has it.
async fn recorded<T: serde::de::DeserializeOwned>(
    store: &Store,
    run: &RunId,
    field: &str,
) -> Result<Option<T>, EngineError> {
    let events = store.events_of_kind(run, "run_started").await?;
    Ok(events.into_iter().rev().find_map(|event| {
        let detail: serde_json::Value = serde_json::from_str(event.detail.as_deref()?).ok()?;
        serde_json::from_value(detail.get(field)?.clone()).ok()
    }))
}

/// The stage graph the run's tasks were made with (stage -> needs), from its last start.
async fn recorded_needs(
    store: &Store,
    run: &RunId,
) -> Result<Option<BTreeMap<String, Vec<String>>>, EngineError> {
    recorded(store, run, "needs").await
}

/// What a first run of `pipeline` would do.
#[must_use]
pub fn assess_new(pipeline: &Pipeline, selected: &[String], quota: Option<u32>) -> Assessment {
    let missing = selected
        .iter()
        .map(|id| {
            let quota = u64::from(quota.unwrap_or_else(|| pipeline.quota_for(id)));
            Missing {
                subcategory: id.clone(),
                quota,
                accepted: 0,
                active: 0,
                to_draw: quota,
                drawn: 0,
                budget: budget(pipeline, quota),
            }
        })
        .collect();
    Assessment {
        missing,
        ..Assessment::default()
    }
}

/// The over-generation budget of a subcategory with this quota.
fn budget(pipeline: &Pipeline, quota: u64) -> u64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "budgets are small positive counts"
    )]
    let budget = ((quota as f64) * pipeline.quota.overgenerate.max(1.0)).ceil() as u64;
    budget
}

/// Assesses `run` (or a run not made yet) against `pipeline` for the `selected` subcategories
/// with their quotas. Reads only.
///
/// # Errors
/// Store failures.
pub async fn assess(
    store: &Store,
    pipeline: &Pipeline,
    run: Option<&Run>,
    selected: &[String],
    quota: Option<u32>,
) -> Result<Assessment, EngineError> {
    let plan = StagePlan::new(pipeline);
    let quota_of = |id: &str| u64::from(quota.unwrap_or_else(|| pipeline.quota_for(id)));
    let Some(run) = run else {
        return Ok(assess_new(pipeline, selected, quota));
    };
    let mut out = Assessment {
        run: Some(run.id.clone()),
        ..Assessment::default()
    };
    let chosen: BTreeSet<&str> = selected.iter().map(String::as_str).collect();

    // Structure: the stages, their fan-out widths and their dependencies.
    let shape = store.task_shape(&run.id).await?;
    if !shape.is_empty() {
        for (stage, items) in &shape {
            match plan.items.get(stage) {
                None => out.blockers.push(format!(
                    "stage `{stage}` was removed from the pipeline, but the run has its tasks"
                )),
                Some(now) if now != items => out.blockers.push(format!(
                    "stage `{stage}` now fans out to {now} items; the run's samples have {items}"
                )),
                Some(_) => {}
            }
        }
        for stage in plan.items.keys() {
            if !shape.contains_key(stage) {
                out.blockers.push(format!(
                    "stage `{stage}` is new; the run's samples have no tasks for it"
                ));
            }
        }
    }
    if let Some(needs) = recorded_needs(store, &run.id).await? {
        for stage in &pipeline.stages {
            if let Some(old) = needs.get(&stage.id)
                && *old != stage.needs
            {
                out.blockers.push(format!(
                    "stage `{}` now needs [{}]; the run's tasks were made needing [{}]",
                    stage.id,
                    stage.needs.join(", "),
                    old.join(", ")
                ));
            }
        }
    }

    // Where each subcategory stands.
    let samples = store.samples(&run.id, None).await?;
    let mut counts: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new(); // accepted, active, drawn
    for sample in &samples {
        if sample.state == SampleState::Superseded {
            continue;
        }
        let entry = counts.entry(sample.subcategory.as_str()).or_default();
        match sample.state {
            SampleState::Accepted => entry.0 += 1,
            SampleState::Active => entry.1 += 1,
            _ => {}
        }
        entry.2 = entry.2.max(u64::try_from(sample.ordinal + 1).unwrap_or(0));
    }
    for id in selected {
        let (accepted, _, _) = counts.get(id.as_str()).copied().unwrap_or_default();
        let quota = quota_of(id);
        if accepted > quota {
            out.blockers.push(format!(
                "subcategory `{id}` has {accepted} accepted samples, more than the quota of {quota} now asked for"
            ));
        }
    }

    // Stale: finished tasks of live samples whose stage key is not the pipeline's.
    let keys: BTreeMap<String, StageKey> = key::stage_keys(pipeline);
    let recorded = recorded_keys(store, &run.id).await?;
    let subcategory_of: BTreeMap<&SampleId, &str> = samples
        .iter()
        .map(|s| (&s.id, s.subcategory.as_str()))
        .collect();
    let mut roots: BTreeMap<SampleId, BTreeSet<String>> = BTreeMap::new();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    // One lookup per (stage, old key), whatever the subcategories it spans.
    let mut old_keys: BTreeSet<(String, String)> = BTreeSet::new();
    for group in store.key_groups(&run.id).await? {
        let Some(old) = group.key else { continue };
        let Some(current) = keys.get(&group.stage) else {
            continue;
        };
        if old == current.key || !chosen.contains(group.subcategory.as_str()) {
            continue;
        }
        reasons
            .entry(group.stage.clone())
            .or_insert_with(|| key::describe_change(recorded.get(&old), &current.components));
        old_keys.insert((group.stage, old));
    }
    for (stage, old) in old_keys {
        for sample in store.samples_with_key(&run.id, &stage, &old).await? {
            if subcategory_of
                .get(&sample)
                .is_some_and(|s| chosen.contains(s))
            {
                roots.entry(sample).or_default().insert(stage.clone());
            }
        }
    }
    let mut reopen: BTreeMap<SampleId, BTreeSet<String>> = BTreeMap::new();
    let mut stale: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    for (sample, root) in roots {
        let all = closure(&plan.dependents, &root);
        let subcategory = subcategory_of.get(&sample).copied().unwrap_or_default();
        for stage in &all {
            let reason = if root.contains(stage) {
                reasons.get(stage).cloned().unwrap_or_default()
            } else {
                let upstream: Vec<&str> = root.iter().map(String::as_str).collect();
                format!("downstream of stale `{}`", upstream.join("`, `"))
            };
            let entry = stale
                .entry((stage.clone(), subcategory.to_string()))
                .or_insert((0, reason));
            entry.0 += 1;
        }
        reopen.insert(sample, all);
    }
    out.stale = stale
        .into_iter()
        .map(|((stage, subcategory), (samples, reason))| Stale {
            tasks: samples
                * u64::try_from(plan.items.get(&stage).copied().unwrap_or(1)).unwrap_or(1),
            stage,
            subcategory,
            samples,
            reason,
        })
        .collect();
    // In pipeline order, subcategories in taxonomy order.
    let rank = |stage: &str, subcategory: &str| {
        (
            plan.position.get(stage).copied().unwrap_or(usize::MAX),
            selected
                .iter()
                .position(|s| s == subcategory)
                .unwrap_or(usize::MAX),
        )
    };
    out.stale.sort_by_key(|s| rank(&s.stage, &s.subcategory));
    for (stages, samples) in group_by_stages(reopen) {
        out.reopen.push((samples, stages, "stale"));
    }

    // Failed: transient failures are retried while their subcategory needs samples.
    let mut need: BTreeMap<&str, u64> = selected
        .iter()
        .map(|id| {
            let (accepted, active, _) = counts.get(id.as_str()).copied().unwrap_or_default();
            (id.as_str(), quota_of(id).saturating_sub(accepted + active))
        })
        .collect();
    let mut failed: BTreeMap<(String, String, String), Failed> = BTreeMap::new();
    let mut retry: BTreeMap<SampleId, BTreeSet<String>> = BTreeMap::new();
    for task in store.failed_tasks(&run.id).await? {
        if !chosen.contains(task.subcategory.as_str()) {
            continue;
        }
        let entry = failed
            .entry((
                task.stage.clone(),
                task.subcategory.clone(),
                task.class.clone(),
            ))
            .or_insert_with(|| Failed {
                stage: task.stage.clone(),
                subcategory: task.subcategory.clone(),
                class: task.class.clone(),
                tasks: 0,
                retried: 0,
                example: task.message.chars().take(200).collect(),
            });
        entry.tasks += 1;
        let already = retry.contains_key(&task.sample);
        let room = need.get_mut(task.subcategory.as_str());
        if retryable_class(&task.class)
            && task.attempts < RESUME_ATTEMPTS
            && let Some(room) = room
            && (already || *room > 0)
        {
            if !already {
                *room -= 1;
            }
            entry.retried += 1;
            retry.entry(task.sample).or_default().insert(task.stage);
        }
    }
    out.failed = failed.into_values().collect();
    out.failed.sort_by_key(|f| rank(&f.stage, &f.subcategory));
    for (stages, samples) in group_by_stages(retry) {
        out.reopen.push((samples, stages, "retry"));
    }

    out.missing = selected
        .iter()
        .map(|id| {
            let (accepted, active, drawn) = counts.get(id.as_str()).copied().unwrap_or_default();
            let quota = quota_of(id);
            let budget = budget(pipeline, quota);
            let revived = quota.saturating_sub(accepted + active)
                - need.get(id.as_str()).copied().unwrap_or(0);
            let active = active + revived;
            let want = quota.saturating_sub(accepted + active);
            Missing {
                subcategory: id.clone(),
                quota,
                accepted,
                active,
                to_draw: want.min(budget.saturating_sub(drawn)),
                drawn,
                budget,
            }
        })
        .collect();
    Ok(out)
}

/// Applies what [`assess`] found: reopens the stale and the retried tasks. Returns the tasks
/// reset.
///
/// # Errors
/// Store failures.
pub async fn apply(
    store: &Store,
    assessment: &Assessment,
    actor: &str,
) -> Result<u64, EngineError> {
    let Some(run) = &assessment.run else {
        return Ok(0);
    };
    let mut reset = 0;
    for (samples, stages, why) in &assessment.reopen {
        reset += store
            .reopen(run, actor, samples, stages, why, false)
            .await?;
    }
    Ok(reset)
}

/// What `retry` re-queued.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Retried {
    /// Tasks re-queued.
    pub tasks: u64,
    /// Their samples (now active again).
    pub samples: u64,
}

/// Re-queues exactly the failed tasks of `run` that match `stage` and `class` (all when
/// `None`), with a fresh attempt budget; their samples become active again.
///
/// # Errors
/// [`EngineError::Conflict`] for a stage the pipeline does not have; store failures.
pub async fn retry(
    store: &Store,
    run: &RunId,
    stage: Option<&str>,
    class: Option<&str>,
    actor: &str,
) -> Result<Retried, EngineError> {
    let stages: Vec<String> = store.task_shape(run).await?.into_keys().collect();
    if let Some(stage) = stage {
        known_stage(&stages, stage)?;
    }
    let mut by_sample: BTreeMap<SampleId, BTreeSet<String>> = BTreeMap::new();
    let mut tasks = 0;
    for task in store.failed_tasks(run).await? {
        if stage.is_some_and(|s| s != task.stage) || class.is_some_and(|c| c != task.class) {
            continue;
        }
        tasks += 1;
        by_sample.entry(task.sample).or_default().insert(task.stage);
    }
    let samples = by_sample.len() as u64;
    for (stages, samples) in group_by_stages(by_sample) {
        store
            .reopen(run, actor, &samples, &stages, "retry", false)
            .await?;
    }
    Ok(Retried { tasks, samples })
}

/// What `regen` superseded.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Regenerated {
    /// Subcategory id.
    pub subcategory: String,
    /// Samples superseded (whole) or reopened (from a stage on).
    pub samples: u64,
    /// Tasks reopened (from a stage on; 0 for whole samples).
    pub tasks: u64,
}

/// Supersedes `subcategory`'s outputs: without `from_stage`, every sample (the next run draws
/// the subcategory afresh, one generation up, from the same references); with it, the outputs
/// of that stage and everything downstream, for the samples that reached it (accepted, active,
/// or decided at or after it), which become active again one generation up. Old outputs stay
/// in the store for audit. Other subcategories are not touched.
///
/// # Errors
/// [`EngineError::Conflict`] for an unknown subcategory or stage; store failures.
pub async fn regen(
    store: &Store,
    run: &RunId,
    subcategory: &str,
    from_stage: Option<&str>,
    actor: &str,
) -> Result<Regenerated, EngineError> {
    // What the run was made with: its subcategories (id -> label) and its stage graph.
    let labels: BTreeMap<String, String> = recorded(store, run, "subcategories")
        .await?
        .unwrap_or_default();
    let needs = recorded_needs(store, run).await?.unwrap_or_default();
    let found = labels
        .iter()
        .find(|(id, label)| *id == subcategory || *label == subcategory)
        .map(|(id, _)| id.clone());
    let Some(id) = found else {
        let hint = edir_config::did_you_mean(
            subcategory,
            labels.keys().chain(labels.values()).map(String::as_str),
        )
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
        return Err(EngineError::Conflict {
            message: format!(
                "`--subcategory {subcategory}`: this run has no such subcategory{hint} (it has: {})",
                labels.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    };
    let Some(from) = from_stage else {
        let (samples, _) = store.supersede_subcategory(run, actor, &id).await?;
        return Ok(Regenerated {
            subcategory: id,
            samples,
            tasks: 0,
        });
    };
    let stages: Vec<String> = needs.keys().cloned().collect();
    known_stage(&stages, from)?;
    let mut dependents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (stage, upstream) in &needs {
        for u in upstream {
            dependents.entry(u.clone()).or_default().push(stage.clone());
        }
    }
    let stages = closure(&dependents, &BTreeSet::from([from.to_string()]));
    // A sample decided by a stage before `from` keeps its decision.
    let downstream: BTreeSet<&str> = stages.iter().map(String::as_str).collect();
    let samples: Vec<SampleId> = store
        .samples(run, Some(&id))
        .await?
        .into_iter()
        .filter(|s| match s.state {
            SampleState::Accepted | SampleState::Active => true,
            SampleState::Rejected | SampleState::Failed => s
                .decided_stage
                .as_deref()
                .is_some_and(|d| downstream.contains(d)),
            SampleState::Superseded => false,
        })
        .map(|s| s.id)
        .collect();
    let stages: Vec<String> = stages.into_iter().collect();
    let tasks = store
        .reopen(run, actor, &samples, &stages, "regen", true)
        .await?;
    Ok(Regenerated {
        subcategory: id,
        samples: samples.len() as u64,
        tasks,
    })
}

fn known_stage(stages: &[String], stage: &str) -> Result<(), EngineError> {
    if stages.iter().any(|s| s == stage) {
        return Ok(());
    }
    let hint = edir_config::did_you_mean(stage, stages.iter().map(String::as_str))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Err(EngineError::Conflict {
        message: format!(
            "this run has no stage `{stage}`{hint} (its stages: {})",
            stages.join(", ")
        ),
    })
}

/// This host's name (for worker records).
#[must_use]
pub fn host_name() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Whether a worker record belongs to a live process: its heartbeat is recent and, on this
/// host, its process still exists (so a killed run is recognised at once, not after its lease).
#[must_use]
pub fn is_alive(worker: &Worker, now_ms: i64, lease_ms: i64) -> bool {
    if now_ms - worker.heartbeat_at > lease_ms {
        return false;
    }
    if worker.host == host_name() && std::path::Path::new("/proc/self").exists() {
        return std::path::Path::new(&format!("/proc/{}", worker.pid)).exists();
    }
    true
}

/// Fails when another live process works on `run`; forgets dead workers and puts back their
/// leases (what they had in flight is redone at once).
///
/// # Errors
/// [`EngineError::Conflict`] naming the live process; store failures.
pub async fn claim_run(
    store: &Store,
    run: &RunId,
    me: &str,
    lease: std::time::Duration,
) -> Result<(), EngineError> {
    let now = store.clock().now_ms();
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    for worker in store.workers(run).await? {
        if worker.owner == me {
            continue;
        }
        if is_alive(&worker, now, lease_ms) {
            let ago = (now - worker.heartbeat_at).max(0) / 1000;
            return Err(EngineError::Conflict {
                message: format!(
                    "this run is in use by process {} on host {} (last heartbeat {ago} s ago); \
                     stop it first (Ctrl-C), or wait for it to finish; if it died on another host, \
                     its claim expires {} s after its last heartbeat",
                    worker.pid,
                    worker.host,
                    lease_ms / 1000
                ),
            });
        }
        let released = store.release_leases(run, &worker.owner).await?;
        tracing::info!(owner = %worker.owner, pid = worker.pid, host = %worker.host, tasks = released,
            "an earlier worker of this run is gone; its tasks in flight are redone");
        store.unregister_worker(&worker.owner).await?;
    }
    Ok(())
}
