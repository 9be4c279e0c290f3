//! The run loop. One dispatcher per stage claims ready tasks in batches (with leases, renewed
//! while they run), runs them within the stage's concurrency, and sends each result to the
//! writer; the writer checkpoints whole batches in one transaction, then wakes the stages that
//! depend on what it wrote and the drawer. The drawer keeps every subcategory supplied:
//! accepted + active < quota, within the over-generation budget and the active-sample window
//! (which bounds memory). Every stage runs at once, so a slow editor never idles the VLM.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use edir_config::Pipeline;
use edir_model::Endpoint;
use edir_store::{
    ArtifactStore, Claim, Completion, Failure, HandOff, NewSample, Outcome, RunId, RunState,
    SampleId, SampleState, Step, Store, Then,
};
use serde_json::json;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::{ContextCache, Output, SampleContext};
use crate::error::EngineError;
use crate::operator::{Operators, TaskError, Verdict};
use crate::plan::StagePlan;
use crate::progress::{Progress, SubcategoryProgress};
use crate::source::{self, Reference, ReferencePool};

/// How a run is to be done; the pipeline says what.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Who claims (unique per process).
    pub owner: String,
    /// Restrict the run to these subcategories (ids or labels); empty: all of the pipeline's.
    pub only: Vec<String>,
    /// Accepted samples per subcategory, overriding the pipeline.
    pub quota: Option<u32>,
    /// Reference folder or manifest, overriding the pipeline.
    pub source: Option<PathBuf>,
    /// Most samples in progress at once (bounds memory); `None`: twice the endpoints'
    /// concurrency.
    pub max_active: Option<usize>,
    /// Lease of a claimed task; renewed every third of it while the task runs.
    pub lease: Duration,
    /// Most tasks claimed, or results written, in one transaction.
    pub batch: usize,
    /// How often an idle stage looks for work it was not told about (other hosts, back-off).
    pub poll: Duration,
    /// Concurrency of `filter` stages (CPU work).
    pub filter_concurrency: usize,
    /// How long in-flight calls may finish after the intake stops (Ctrl-C).
    pub grace: Duration,
    /// Start a fresh run (`run --new`): the existing run of this name is archived, not resumed.
    pub fresh: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            owner: default_owner(),
            only: Vec::new(),
            quota: None,
            source: None,
            max_active: None,
            lease: Duration::from_secs(60),
            batch: 256,
            poll: Duration::from_millis(250),
            filter_concurrency: 4,
            grace: Duration::from_secs(30),
            fresh: false,
        }
    }
}

/// `host:pid:nonce`: unique per process, readable in `status` and in lease owners.
fn default_owner() -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}:{}:{nonce:08x}",
        crate::resume::host_name(),
        std::process::id()
    )
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run.
    pub run: RunId,
    /// Per subcategory.
    pub subcategories: Vec<SubcategoryProgress>,
    /// Whether the intake was stopped before the run finished.
    pub interrupted: bool,
    /// Model calls made by this process.
    pub calls: u64,
    /// Wall time of this process's work.
    pub elapsed: Duration,
    /// References that could not be used.
    pub bad_references: u64,
}

impl RunSummary {
    /// Subcategories below their quota.
    #[must_use]
    pub fn short(&self) -> Vec<&SubcategoryProgress> {
        self.subcategories
            .iter()
            .filter(|s| s.accepted < s.quota)
            .collect()
    }
}

/// A result on its way to the writer.
struct Written {
    step: Step,
    stage: usize,
    sample: SampleId,
    context: Option<Arc<SampleContext>>,
    error_class: Option<String>,
    rejected: bool,
    skipped: bool,
    latency_s: Option<f64>,
}

struct Shared {
    pipeline: Arc<Pipeline>,
    store: Store,
    run: RunId,
    owner: String,
    options: RunOptions,
    plan: StagePlan,
    needs: Vec<Vec<(String, i64)>>,
    /// By stage position: the stage part of its tasks' cache keys.
    stage_keys: Vec<String>,
    /// Accepted-sample quota per subcategory (checked when a sample is accepted).
    quotas: HashMap<String, u64>,
    operators: Operators,
    cache: ContextCache,
    progress: Arc<Progress>,
    wake: Vec<Notify>,
    /// Per stage: tasks the writer leased in its checkpoint and hands straight on.
    handoff: Vec<mpsc::UnboundedSender<Claim>>,
    drawer: Notify,
    intake: CancellationToken,
    hard: CancellationToken,
}

/// The engine: a pipeline, a store, and the connected endpoints.
pub struct Engine {
    pipeline: Arc<Pipeline>,
    store: Store,
    artifacts: ArtifactStore,
    endpoints: HashMap<String, Arc<Endpoint>>,
    options: RunOptions,
    progress: Arc<Progress>,
    intake: CancellationToken,
    hard: CancellationToken,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pipeline", &self.pipeline.name)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over connected endpoints (by pipeline endpoint name).
    #[must_use]
    pub fn new(
        pipeline: Arc<Pipeline>,
        store: Store,
        artifacts: ArtifactStore,
        endpoints: HashMap<String, Arc<Endpoint>>,
        options: RunOptions,
    ) -> Self {
        let stages: Vec<(String, Option<String>)> = pipeline
            .stages
            .iter()
            .map(|s| (s.id.clone(), s.op.endpoint().map(ToString::to_string)))
            .collect();
        Self {
            pipeline,
            store,
            artifacts,
            endpoints,
            options,
            progress: Arc::new(Progress::new(&stages)),
            intake: CancellationToken::new(),
            hard: CancellationToken::new(),
        }
    }

    /// The live counters (for a display or a metrics page).
    #[must_use]
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Cancelling this stops claiming and drawing; in-flight calls finish (within the grace
    /// period, then they are dropped and their leases expire).
    #[must_use]
    pub fn intake(&self) -> CancellationToken {
        self.intake.clone()
    }

    /// Cancelling this drops in-flight calls at once (their leases expire; resume redoes them).
    #[must_use]
    pub fn hard(&self) -> CancellationToken {
        self.hard.clone()
    }

    /// The subcategory ids this run covers, in taxonomy order.
    ///
    /// # Errors
    /// [`EngineError::Conflict`] for an `--only` name that is not in the pipeline.
    pub fn selected(&self) -> Result<Vec<String>, EngineError> {
        select(&self.pipeline, &self.options.only)
    }

    /// Opens (or reopens) the run and works until every subcategory has its quota or spent
    /// its budget, or the intake is cancelled.
    ///
    /// # Errors
    /// Store failures, an unusable source; per-sample problems are recorded, not returned.
    pub async fn run(self) -> Result<RunSummary, EngineError> {
        let selected = self.selected()?;
        let pipeline = self.pipeline.clone();
        let owner = self.options.owner.clone();
        let lease = self.options.lease;
        if self.options.fresh
            && let Some(old) = self.store.find_run(&pipeline.name).await?
        {
            crate::resume::claim_run(&self.store, &old.id, &owner, lease).await?;
            self.store.archive_run(&pipeline.name, &owner).await?;
            tracing::info!(old = %old.id, "started a fresh run; the earlier one is kept in the store, archived");
        }
        let (run, _created) = self
            .store
            .open_run(&pipeline.name, &pipeline.text, &pipeline.hash, &owner)
            .await?;
        crate::resume::claim_run(&self.store, &run.id, &owner, lease).await?;
        let assessment = crate::resume::assess(
            &self.store,
            &pipeline,
            Some(&run),
            &selected,
            self.options.quota,
        )
        .await?;
        if !assessment.blockers.is_empty() {
            return Err(EngineError::Conflict {
                message: format!(
                    "the run `{}` cannot be resumed with this pipeline:\n  - {}\nnothing was changed; \
                     restore the pipeline, or start a fresh run with `run --new` (the old one stays in the store, archived)",
                    pipeline.name,
                    assessment.blockers.join("\n  - ")
                ),
            });
        }
        self.store
            .register_worker(
                &run.id,
                &owner,
                &crate::resume::host_name(),
                std::process::id(),
            )
            .await?;
        let reopened = crate::resume::apply(&self.store, &assessment, &owner).await?;
        if reopened > 0 {
            tracing::info!(
                stale = assessment.stale_tasks(),
                retried = assessment.retried_tasks(),
                "reopened tasks: stale ones are recomputed, transient failures retried"
            );
        }
        self.store
            .set_run_state(&run.id, RunState::Running, &owner)
            .await?;
        self.store.reclaim_expired(&run.id, &owner).await?;
        let settings = run_settings(&pipeline, &selected, self.options.quota);
        self.store
            .record_event(&run.id, &owner, "run_started", Some(&settings.to_string()))
            .await?;

        let source_path = match (&self.options.source, &pipeline.source.kind) {
            (Some(path), _) => path.clone(),
            (None, edir_config::SourceKind::Folder(p) | edir_config::SourceKind::Manifest(p)) => {
                p.clone()
            }
        };
        let pool = {
            let path = source_path.clone();
            tokio::task::spawn_blocking(move || ReferencePool::open(&path))
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))??
        };
        tracing::info!(references = pool.len(), source = %source_path.display(), "reference pool");

        let plan = StagePlan::new(&pipeline);
        let items: HashMap<String, i64> = plan.items.clone().into_iter().collect();
        let needs: Vec<Vec<(String, i64)>> = pipeline
            .stages
            .iter()
            .map(|stage| {
                stage
                    .needs
                    .iter()
                    .flat_map(|n| (0..items[n]).map(move |i| (n.clone(), i)))
                    .collect()
            })
            .collect();
        let operators = Operators::new(
            pipeline.clone(),
            self.endpoints.clone(),
            self.artifacts.clone(),
            items,
        )
        .map_err(EngineError::Internal)?;

        // Where each subcategory stands, from the store (a resumed run continues).
        let existing = self.store.samples(&run.id, None).await?;
        let mut counts: BTreeMap<String, SubcategoryProgress> = BTreeMap::new();
        let mut used: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for id in &selected {
            let sub = pipeline
                .taxonomy
                .find(id)
                .expect("selected from the taxonomy");
            let quota = u64::from(self.options.quota.unwrap_or_else(|| pipeline.quota_for(id)));
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "budgets are small positive counts"
            )]
            let budget = ((quota as f64) * pipeline.quota.overgenerate.max(1.0)).ceil() as u64;
            counts.insert(
                id.clone(),
                SubcategoryProgress {
                    id: id.clone(),
                    label: sub.label.clone(),
                    quota,
                    budget,
                    ..SubcategoryProgress::default()
                },
            );
        }
        for sample in &existing {
            let Some(count) = counts.get_mut(&sample.subcategory) else {
                continue;
            };
            if sample.state == SampleState::Superseded {
                continue;
            }
            count.drawn = count
                .drawn
                .max(u64::try_from(sample.ordinal + 1).unwrap_or(0));
            match sample.state {
                SampleState::Active => count.active += 1,
                SampleState::Accepted => count.accepted += 1,
                SampleState::Rejected => count.rejected += 1,
                SampleState::Failed => count.failed += 1,
                SampleState::Superseded => {}
            }
            *used
                .entry(sample.subcategory.clone())
                .or_default()
                .entry(sample.reference_name.clone())
                .or_default() += 1;
        }
        drop(existing);
        *self
            .progress
            .subcategories
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = counts.values().cloned().collect();
        let bad: HashSet<String> = self
            .store
            .events_of_kind(&run.id, "reference_skipped")
            .await?
            .into_iter()
            .filter_map(|e| e.detail)
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .filter_map(|v| v.get("name").and_then(|n| n.as_str()).map(String::from))
            .collect();

        let max_active = self.options.max_active.unwrap_or_else(|| {
            let sum: usize = self
                .pipeline
                .endpoints
                .values()
                .filter(|e| e.api != edir_config::Api::Unused)
                .map(|e| e.max_in_flight as usize)
                .sum();
            (2 * sum).max(32)
        });

        let (handoff, mut handoff_rx): (Vec<_>, Vec<_>) = pipeline
            .stages
            .iter()
            .map(|_| mpsc::unbounded_channel::<Claim>())
            .unzip();
        let keys = crate::key::stage_keys(&pipeline);
        let stage_keys = pipeline
            .stages
            .iter()
            .map(|s| keys[&s.id].key.clone())
            .collect();
        let quotas = counts.iter().map(|(id, c)| (id.clone(), c.quota)).collect();
        let generations = self.store.next_generations(&run.id).await?;
        let shared = Arc::new(Shared {
            stage_keys,
            quotas,
            pipeline: pipeline.clone(),
            store: self.store.clone(),
            run: run.id.clone(),
            owner: owner.clone(),
            options: self.options.clone(),
            wake: pipeline.stages.iter().map(|_| Notify::new()).collect(),
            handoff,
            plan,
            needs,
            operators,
            cache: ContextCache::default(),
            progress: self.progress.clone(),
            drawer: Notify::new(),
            intake: self.intake.clone(),
            hard: self.hard.clone(),
        });

        let (tx, rx) = mpsc::channel::<Written>(shared.options.batch * 8);
        let tracker = TaskTracker::new();
        let writer = tokio::spawn(writer(shared.clone(), rx));
        let renewer = tokio::spawn(renew(shared.clone()));
        let mut dispatchers = Vec::new();
        for (index, handed) in handoff_rx.drain(..).enumerate() {
            dispatchers.push(tokio::spawn(dispatch(
                shared.clone(),
                index,
                handed,
                tx.clone(),
                tracker.clone(),
            )));
        }
        drop(tx);
        let drawer = Drawer {
            shared: shared.clone(),
            artifacts: self.artifacts.clone(),
            pool,
            bad,
            used,
            loaded: HashMap::new(),
            cursors: HashMap::new(),
            generations,
            max_active,
        };
        let finished = drawer.run().await;
        // Stop the intake (finished, or interrupted), let in-flight work finish.
        shared.intake.cancel();
        for d in dispatchers {
            let _ = d.await;
        }
        tracker.close();
        tokio::select! {
            () = tracker.wait() => {}
            () = tokio::time::sleep(shared.options.grace) => {
                tracing::warn!("in-flight calls did not finish within the grace period; dropping them");
                shared.hard.cancel();
                tracker.wait().await;
            }
            () = shared.hard.cancelled() => { tracker.wait().await; }
        }
        let written = writer
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        renewer.abort();
        written?;
        // Tasks handed over or claimed but never started go back to `ready` for the next run.
        let released = self.store.release_leases(&run.id, &owner).await?;
        if released > 0 {
            tracing::info!(
                tasks = released,
                "released tasks that were claimed but not started"
            );
        }
        self.store.unregister_worker(&owner).await?;
        let finished = finished?;
        let state = if finished {
            RunState::Finished
        } else {
            RunState::Interrupted
        };
        self.store.set_run_state(&run.id, state, &owner).await?;
        Ok(RunSummary {
            run: run.id,
            subcategories: self.progress.subcategories(),
            interrupted: !finished,
            calls: self.progress.calls(),
            elapsed: self.progress.started.elapsed(),
            bad_references: self.progress.bad_references.load(Ordering::Relaxed),
        })
    }
}

/// The subcategory ids of `only` (ids or labels), or all the pipeline's.
///
/// # Errors
/// [`EngineError::Conflict`] for a name that is not in the pipeline.
pub fn select(pipeline: &Pipeline, only: &[String]) -> Result<Vec<String>, EngineError> {
    if only.is_empty() {
        return Ok(pipeline.subcategories.clone());
    }
    let mut chosen = HashSet::new();
    for name in only {
        let found = pipeline
            .selected_subcategories()
            .find(|s| s.id == *name || s.label == *name);
        match found {
            Some(s) => {
                chosen.insert(s.id.clone());
            }
            None => {
                let hint = pipeline
                    .taxonomy
                    .suggest(name)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                return Err(EngineError::Conflict {
                    message: format!(
                        "`--only {name}`: no such subcategory in this pipeline{hint} (see `edir-synth taxonomy`)"
                    ),
                });
            }
        }
    }
    Ok(pipeline
        .subcategories
        .iter()
        .filter(|s| chosen.contains(*s))
        .cloned()
        .collect())
}

/// What `status` needs to know about the run's setup (recorded at every start).
fn run_settings(pipeline: &Pipeline, selected: &[String], quota: Option<u32>) -> serde_json::Value {
    let stages: BTreeMap<&str, Option<&str>> = pipeline
        .stages
        .iter()
        .map(|s| (s.id.as_str(), s.op.endpoint()))
        .collect();
    let endpoints: BTreeMap<&str, serde_json::Value> = pipeline
        .endpoints
        .values()
        .map(|e| {
            (
                e.name.as_str(),
                json!({"model": e.model, "gpus": e.gpus, "gpu_hour_usd": e.gpu_hour_usd}),
            )
        })
        .collect();
    let quotas: BTreeMap<&str, u32> = selected
        .iter()
        .map(|s| (s.as_str(), quota.unwrap_or_else(|| pipeline.quota_for(s))))
        .collect();
    let prompts: BTreeMap<&str, serde_json::Value> = pipeline
        .stages
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                json!({
                    "prompt": s.prompt.as_ref().map(|p| &p.hash),
                    "system": s.system.as_ref().map(|p| &p.hash),
                    "schema": s.schema.as_ref().map(|p| &p.hash),
                    "definition": s.definition_hash,
                }),
            )
        })
        .collect();
    let keys: BTreeMap<String, serde_json::Value> = crate::key::stage_keys(pipeline)
        .into_iter()
        .map(|(stage, key)| (stage, json!({"key": key.key, "components": key.components})))
        .collect();
    let needs: BTreeMap<&str, &Vec<String>> = pipeline
        .stages
        .iter()
        .map(|s| (s.id.as_str(), &s.needs))
        .collect();
    let labels: BTreeMap<&str, &str> = pipeline
        .selected_subcategories()
        .map(|s| (s.id.as_str(), s.label.as_str()))
        .collect();
    json!({
        "pipeline_hash": pipeline.hash,
        "subcategories": labels,
        "keys": keys,
        "needs": needs,
        "stages": stages,
        "endpoints": endpoints,
        "quota": quotas,
        "prompts": prompts,
    })
}

/// Extends this owner's leases while it works, so a lease outlives slow calls, and puts
/// expired leases (a crashed worker's) back to `ready`, so they are redone within a lease
/// and a third.
async fn renew(shared: Arc<Shared>) {
    let every = shared.options.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        if let Err(error) = shared.store.heartbeat(&shared.owner).await {
            tracing::warn!(%error, "cannot record this worker's heartbeat");
        }
        if let Err(error) = shared
            .store
            .renew_leases(&shared.run, &shared.owner, shared.options.lease)
            .await
        {
            tracing::warn!(%error, "cannot renew leases");
        }
        // Tasks of a worker that died become claimable again once their lease expired.
        match shared
            .store
            .reclaim_expired(&shared.run, &shared.owner)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(tasks = n, "reclaimed tasks whose lease expired");
                for wake in &shared.wake {
                    wake.notify_one();
                }
            }
            Err(error) => tracing::warn!(%error, "cannot reclaim expired leases"),
        }
    }
}

async fn dispatch(
    shared: Arc<Shared>,
    index: usize,
    mut handed: mpsc::UnboundedReceiver<Claim>,
    tx: mpsc::Sender<Written>,
    tracker: TaskTracker,
) {
    let stage = &shared.pipeline.stages[index];
    let capacity = match stage.op.endpoint() {
        Some(name) => shared
            .pipeline
            .endpoints
            .get(name)
            .map_or(16, |e| e.max_in_flight as usize),
        None => shared.options.filter_concurrency,
    }
    .max(1);
    let permits = Arc::new(Semaphore::new(capacity));
    let mut pending: std::collections::VecDeque<Claim> = std::collections::VecDeque::new();
    let mut look = true;
    loop {
        if shared.intake.is_cancelled() {
            return;
        }
        while let Ok(claim) = handed.try_recv() {
            pending.push_back(claim);
        }
        while permits.available_permits() > 0
            && let Some(claim) = pending.pop_front()
        {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            spawn_task(&shared, index, claim, permit, &tx, &tracker);
        }
        if !pending.is_empty() {
            tokio::select! {
                permit = permits.clone().acquire_owned() => drop(permit),
                () = shared.intake.cancelled() => return,
            }
            continue;
        }
        let free = permits.available_permits();
        if look && free > 0 {
            let limit = u32::try_from(free.min(shared.options.batch)).unwrap_or(u32::MAX);
            let started = std::time::Instant::now();
            match shared
                .store
                .claim(
                    &shared.run,
                    &stage.id,
                    &shared.owner,
                    limit,
                    shared.options.lease,
                )
                .await
            {
                Ok(claims) => {
                    tracing::debug!(stage = %stage.id, claimed = claims.len(), ms = started.elapsed().as_secs_f64() * 1e3, "claim");
                    // A full batch: there may be more.
                    look = claims.len() == limit as usize;
                    pending.extend(claims);
                }
                Err(error) => {
                    tracing::error!(stage = %stage.id, %error, "cannot claim tasks");
                    look = false;
                }
            }
            continue;
        }
        tokio::select! {
            claim = handed.recv() => match claim {
                Some(claim) => pending.push_back(claim),
                None => return,
            },
            () = shared.wake[index].notified() => look = true,
            () = tokio::time::sleep(shared.options.poll) => look = true,
            () = shared.intake.cancelled() => return,
        }
    }
}

fn spawn_task(
    shared: &Arc<Shared>,
    index: usize,
    claim: Claim,
    permit: tokio::sync::OwnedSemaphorePermit,
    tx: &mpsc::Sender<Written>,
    tracker: &TaskTracker,
) {
    let shared = shared.clone();
    let tx = tx.clone();
    tracker.spawn(async move {
        let progress = &shared.progress.stages[index];
        progress.in_flight.fetch_add(1, Ordering::Relaxed);
        let written = tokio::select! {
            written = execute(&shared, index, claim) => Some(written),
            () = shared.hard.cancelled() => None,
        };
        progress.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(written) = written {
            let _ = tx.send(written).await;
        }
        drop(permit);
    });
}

async fn execute(shared: &Shared, index: usize, claim: Claim) -> Written {
    let stage = &shared.pipeline.stages[index];
    let sink = shared.plan.sinks.contains(&stage.id);
    let context = shared
        .cache
        .get(&shared.store, &claim.sample, &shared.needs[index])
        .await;
    let result = match &context {
        Ok(context) => shared.operators.run(stage, claim.item, context).await,
        Err(error) => Err(TaskError {
            class: "internal".into(),
            message: error.to_string(),
        }),
    };
    let context = context.ok();
    let quota = context
        .as_ref()
        .and_then(|c| shared.quotas.get(&c.subcategory))
        .copied()
        .unwrap_or(u64::MAX);
    match result {
        Ok(output) => {
            let (then, rejected) = match &output.verdict {
                Verdict::Reject(reason) => (
                    Then::Decide {
                        state: SampleState::Rejected,
                        reason: reason.clone(),
                    },
                    true,
                ),
                Verdict::Continue if sink => (Then::AcceptIfComplete { quota }, false),
                Verdict::Continue => (Then::Continue, false),
            };
            let cache_key = context.as_ref().map(|context| {
                let upstream: Vec<(&str, i64, Option<Output>)> = shared.needs[index]
                    .iter()
                    .map(|(s, i)| (s.as_str(), *i, context.get(s, *i)))
                    .collect();
                crate::key::task_key(
                    &shared.stage_keys[index],
                    context.seed,
                    claim.item,
                    &upstream,
                )
            });
            if let Some(context) = &context {
                context.put(
                    &stage.id,
                    claim.item,
                    Output {
                        json: output.json.clone(),
                        artifact: output.artifact.clone(),
                        skipped: output.skipped,
                    },
                );
            }
            #[expect(clippy::cast_precision_loss, reason = "seconds for metrics")]
            let latency_s = output.latency_ms.map(|ms| ms as f64 / 1000.0);
            let completion = Completion {
                task: claim.id,
                owner: claim.owner.clone(),
                attempt: claim.attempt,
                outcome: if output.skipped {
                    Outcome::Skipped
                } else {
                    Outcome::Done
                },
                output_json: (!output.skipped).then(|| output.json.to_string()),
                output_artifact: output.artifact,
                cache_key,
                endpoint: output.replica,
                latency_ms: output.latency_ms,
                prompt_tokens: output.prompt_tokens,
                completion_tokens: output.completion_tokens,
            };
            Written {
                step: Step::Complete {
                    completion,
                    sample: claim.sample.clone(),
                    stage: stage.id.clone(),
                    then,
                },
                stage: index,
                sample: claim.sample,
                context,
                error_class: None,
                rejected,
                skipped: output.skipped,
                latency_s,
            }
        }
        Err(error) => {
            tracing::debug!(stage = %stage.id, sample = %claim.sample, class = %error.class, message = %error.message, "task failed");
            let reason = format!("{}: {}: {}", stage.id, error.class, error.message);
            Written {
                step: Step::Fail {
                    failure: Failure {
                        task: claim.id,
                        owner: claim.owner.clone(),
                        attempt: claim.attempt,
                        class: error.class.clone(),
                        message: error.message,
                        retry_at: None,
                    },
                    sample: claim.sample.clone(),
                    stage: stage.id.clone(),
                    then: Then::Decide {
                        state: SampleState::Failed,
                        reason,
                    },
                },
                stage: index,
                sample: claim.sample,
                context,
                error_class: Some(error.class),
                rejected: false,
                skipped: false,
                latency_s: None,
            }
        }
    }
}

/// Checkpoints results in batches; returns when every sender is gone and the queue is empty.
async fn writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<Written>) -> Result<(), EngineError> {
    let mut batch: Vec<Written> = Vec::with_capacity(shared.options.batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < shared.options.batch {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let steps: Vec<Step> = batch.iter().map(|w| w.step.clone()).collect();
        let mut attempt = 0;
        let started = std::time::Instant::now();
        let outcome = loop {
            let hand_off = (!shared.intake.is_cancelled()).then(|| HandOff {
                owner: shared.owner.clone(),
                lease: shared.options.lease,
            });
            match shared
                .store
                .checkpoint(&shared.run, &shared.owner, &steps, hand_off.as_ref())
                .await
            {
                Ok(outcome) => {
                    tracing::debug!(
                        results = steps.len(),
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "checkpoint"
                    );
                    break outcome;
                }
                Err(error) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "checkpoint failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(error) => {
                    // Nothing of this batch is written; stop the run (resume redoes it).
                    tracing::error!(%error, "checkpoint failed for good; stopping the run");
                    shared.intake.cancel();
                    shared.hard.cancel();
                    return Err(error.into());
                }
            }
        };
        shared.progress.checkpoints.fetch_add(1, Ordering::Relaxed);
        let lost: HashSet<_> = outcome.lost.iter().copied().collect();
        let mut woken = vec![false; shared.pipeline.stages.len()];
        // Which subcategory each sample of the batch belongs to, and which stage rejected it.
        let mut subcategory_of: HashMap<&SampleId, String> = HashMap::new();
        let mut rejected_by: HashMap<&SampleId, usize> = HashMap::new();
        for w in &batch {
            let task = match &w.step {
                Step::Complete { completion, .. } => completion.task,
                Step::Fail { failure, .. } => failure.task,
            };
            let progress = &shared.progress.stages[w.stage];
            if lost.contains(&task) {
                tracing::warn!(task = %task, sample = %w.sample, "lease lost; the result was not written");
                shared.cache.remove(&w.sample);
                continue;
            }
            if let Some(class) = &w.error_class {
                progress.error(class);
            } else if w.skipped {
                progress.skipped.fetch_add(1, Ordering::Relaxed);
            } else {
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(latency) = w.latency_s {
                progress.observe(latency);
            }
            if let Some(context) = &w.context {
                subcategory_of.insert(&w.sample, context.subcategory.clone());
            }
            if w.rejected {
                rejected_by.insert(&w.sample, w.stage);
            }
            for &i in &shared.plan.dependents_at[w.stage] {
                woken[i] = true;
            }
        }
        // Each decision counts once, however many results of its sample the batch holds.
        for (sample, state) in &outcome.decided {
            let subcategory = match subcategory_of.get(sample) {
                Some(s) => s.clone(),
                None => shared.store.sample(sample).await?.subcategory,
            };
            if *state == SampleState::Rejected
                && let Some(stage) = rejected_by.get(sample)
            {
                shared.progress.stages[*stage]
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
            }
            let mut subs = shared
                .progress
                .subcategories
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(sub) = subs.iter_mut().find(|s| s.id == subcategory) {
                sub.active = sub.active.saturating_sub(1);
                match state {
                    SampleState::Accepted => sub.accepted += 1,
                    SampleState::Rejected => sub.rejected += 1,
                    _ => sub.failed += 1,
                }
            }
            drop(subs);
            shared.cache.remove(sample);
        }
        // What the checkpoint made ready is leased to us: hand it straight on.
        let handed = outcome.leased.len();
        for claim in outcome.leased {
            if let Some(&i) = shared.plan.position.get(&claim.stage) {
                let _ = shared.handoff[i].send(claim);
            }
        }
        if handed == 0 {
            for (i, wake) in woken.iter().enumerate() {
                if *wake {
                    shared.wake[i].notify_one();
                }
            }
        }
        if !outcome.decided.is_empty() {
            shared.drawer.notify_one();
        }
        batch.clear();
    }
    Ok(())
}

/// Draws new samples while subcategories need them.
struct Drawer {
    shared: Arc<Shared>,
    artifacts: ArtifactStore,
    pool: ReferencePool,
    /// References that cannot be used.
    bad: HashSet<String>,
    /// Per subcategory, how often each reference was drawn (replayed on resume).
    used: HashMap<String, HashMap<String, u32>>,
    /// Reference name -> (artifact hash) of references already loaded.
    loaded: HashMap<String, String>,
    /// Per subcategory: (pass, position) in its permutation walk.
    cursors: HashMap<String, (u64, usize, Vec<usize>)>,
    /// Per subcategory regenerated whole: the generation its new samples get.
    generations: BTreeMap<String, i64>,
    max_active: usize,
}

/// Samples added per transaction.
const DRAW_BATCH: usize = 64;

impl Drawer {
    /// Returns `Ok(true)` when every subcategory finished, `Ok(false)` when interrupted.
    async fn run(mut self) -> Result<bool, EngineError> {
        let shared = self.shared.clone();
        loop {
            if shared.intake.is_cancelled() {
                return Ok(false);
            }
            let subs = shared.progress.subcategories();
            if subs.iter().all(SubcategoryProgress::finished) {
                return Ok(true);
            }
            let active: u64 = subs.iter().map(|s| s.active).sum();
            let mut room = u64::try_from(self.max_active)
                .unwrap_or(u64::MAX)
                .saturating_sub(active);
            // Round-robin over subcategories, one sample each per turn.
            let mut demand: Vec<(String, u64, u64)> = subs
                .iter()
                .filter(|s| s.demand() > 0)
                .map(|s| (s.id.clone(), s.demand(), s.drawn))
                .collect();
            let mut drawn: Vec<NewSample> = Vec::new();
            while room > 0 && demand.iter().any(|d| d.1 > 0) {
                for (id, want, next) in &mut demand {
                    if *want == 0 || room == 0 {
                        continue;
                    }
                    let ordinal = *next;
                    match self.draw(id, ordinal).await? {
                        Some(sample) => {
                            drawn.push(sample);
                            *want -= 1;
                            *next += 1;
                            room -= 1;
                        }
                        None => {
                            // No usable reference is left: this subcategory's budget ends
                            // here; it finishes with what it has.
                            *want = 0;
                            tracing::warn!(subcategory = %id, "no usable reference image left");
                            let mut subs = shared
                                .progress
                                .subcategories
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner);
                            if let Some(sub) = subs.iter_mut().find(|s| s.id == *id) {
                                sub.budget = ordinal;
                            }
                        }
                    }
                }
                if drawn.len() >= DRAW_BATCH {
                    self.add(std::mem::take(&mut drawn)).await?;
                }
            }
            if !drawn.is_empty() {
                self.add(drawn).await?;
            }
            tokio::select! {
                () = shared.drawer.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shared.intake.cancelled() => return Ok(false),
            }
        }
    }

    async fn add(&self, samples: Vec<NewSample>) -> Result<(), EngineError> {
        let shared = &self.shared;
        let ids = shared.store.add_samples(&shared.run, &samples).await?;
        {
            let mut subs = shared
                .progress
                .subcategories
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (id, sample) in ids.iter().zip(&samples) {
                shared.cache.insert(Arc::new(SampleContext::new(
                    id.clone(),
                    sample.subcategory.clone(),
                    crate::context::effective_seed(sample.seed, sample.generation),
                    sample.reference.clone(),
                    sample.reference_name.clone(),
                )));
                if let Some(sub) = subs.iter_mut().find(|s| s.id == sample.subcategory) {
                    sub.active += 1;
                    sub.drawn = sub
                        .drawn
                        .max(u64::try_from(sample.ordinal + 1).unwrap_or(0));
                }
            }
        }
        for root in &shared.plan.roots {
            if let Some(&i) = shared.plan.position.get(root) {
                shared.wake[i].notify_one();
            }
        }
        Ok(())
    }

    /// The sample with this ordinal, or `None` when no usable reference is left.
    async fn draw(
        &mut self,
        subcategory: &str,
        ordinal: u64,
    ) -> Result<Option<NewSample>, EngineError> {
        let pipeline = self.shared.pipeline.clone();
        let seed = pipeline.seed.to_string();
        loop {
            let Some(reference) = self.next_reference(subcategory, ordinal, &seed) else {
                return Ok(None);
            };
            let hash = match self.loaded.get(&reference.name) {
                Some(hash) => hash.clone(),
                None => {
                    let (max_side, max_mb) =
                        (pipeline.source.max_side, pipeline.source.max_file_mb);
                    let artifacts = self.artifacts.clone();
                    let r = reference.clone();
                    let loaded = tokio::task::spawn_blocking(move || {
                        source::load_reference(&r, max_side, max_mb).and_then(|loaded| {
                            artifacts.put(&loaded.bytes).map_err(|e| e.to_string())
                        })
                    })
                    .await
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                    match loaded {
                        Ok(hash) => {
                            self.loaded.insert(reference.name.clone(), hash.clone());
                            hash
                        }
                        Err(message) => {
                            tracing::warn!(reference = %reference.path.display(), %message, "skipping an unusable reference image");
                            let detail = json!({"name": reference.name, "path": reference.path, "error": message});
                            self.shared
                                .store
                                .record_event(
                                    &self.shared.run,
                                    &self.shared.owner,
                                    "reference_skipped",
                                    Some(&detail.to_string()),
                                )
                                .await?;
                            self.shared
                                .progress
                                .bad_references
                                .fetch_add(1, Ordering::Relaxed);
                            self.bad.insert(reference.name.clone());
                            continue;
                        }
                    }
                }
            };
            let ordinal_text = ordinal.to_string();
            let sample_seed = source::derive_seed(&[&seed, subcategory, &ordinal_text]);
            return Ok(Some(NewSample {
                subcategory: subcategory.to_string(),
                ordinal: i64::try_from(ordinal).unwrap_or(i64::MAX),
                generation: self.generations.get(subcategory).copied().unwrap_or(0),
                reference: hash,
                reference_name: reference.name.clone(),
                seed: i64::try_from(sample_seed).unwrap_or(0),
                tasks: self.shared.plan.tasks(&pipeline),
            }));
        }
    }

    /// The next reference for `subcategory` (see the module docs of `source`).
    fn next_reference(&mut self, subcategory: &str, ordinal: u64, seed: &str) -> Option<Reference> {
        let n = self.pool.len();
        if self.bad.len() >= n {
            return None;
        }
        if self.shared.pipeline.source.reuse_per_subcategory {
            // Independent draws with replacement.
            let mut attempt = 0u64;
            loop {
                let key = format!("{ordinal}/{attempt}");
                let index = usize::try_from(
                    source::derive_seed(&[seed, subcategory, "draw", &key]) % n as u64,
                )
                .unwrap_or(0);
                let reference = &self.pool.references[index];
                if !self.bad.contains(&reference.name) {
                    return Some(reference.clone());
                }
                attempt += 1;
            }
        }
        let used = self.used.entry(subcategory.to_string()).or_default();
        let cursor = self
            .cursors
            .entry(subcategory.to_string())
            .or_insert_with(|| {
                let pass_seed = source::derive_seed(&[seed, subcategory, "pass", "0"]);
                (0, 0, source::permutation(n, pass_seed))
            });
        let mut scanned = 0usize;
        loop {
            if cursor.1 >= n {
                cursor.0 += 1;
                cursor.1 = 0;
                let pass = cursor.0.to_string();
                cursor.2 = source::permutation(
                    n,
                    source::derive_seed(&[seed, subcategory, "pass", &pass]),
                );
                tracing::info!(
                    subcategory,
                    pass = cursor.0,
                    "the reference pool ran out; reusing references"
                );
            }
            let reference = &self.pool.references[cursor.2[cursor.1]];
            cursor.1 += 1;
            scanned += 1;
            if scanned > 4 * n + 4 {
                return None;
            }
            if self.bad.contains(&reference.name) {
                continue;
            }
            // Replay earlier draws (a resumed run): a use recorded in the store consumes
            // this position.
            if let Some(count) = used.get_mut(&reference.name)
                && *count > 0
            {
                *count -= 1;
                continue;
            }
            return Some(reference.clone());
        }
    }
}
