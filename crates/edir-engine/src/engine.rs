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
use edir_store::{ArtifactStore, Claim, RunId, RunState, SampleId, SampleState, Step, Store};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::{ContextCache, SampleContext};
use crate::error::EngineError;
use crate::operator::Operators;
use crate::plan::StagePlan;
use crate::progress::{Progress, SubcategoryProgress};
use crate::source::ReferencePool;

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
pub(crate) struct Written {
    pub(crate) step: Step,
    pub(crate) stage: usize,
    pub(crate) sample: SampleId,
    pub(crate) context: Option<Arc<SampleContext>>,
    pub(crate) error_class: Option<String>,
    pub(crate) rejected: bool,
    pub(crate) skipped: bool,
    pub(crate) latency_s: Option<f64>,
}

pub(crate) struct Shared {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) store: Store,
    /// The store thread's runtime: store calls made from the busy runtime go through it.
    pub(crate) store_thread: tokio::runtime::Handle,
    pub(crate) artifacts: ArtifactStore,
    pub(crate) run: RunId,
    pub(crate) owner: String,
    pub(crate) options: RunOptions,
    pub(crate) plan: StagePlan,
    pub(crate) needs: Vec<Vec<(String, i64)>>,
    /// By stage position: the stage part of its tasks' cache keys.
    pub(crate) stage_keys: Vec<String>,
    /// Accepted-sample quota per subcategory (checked when a sample is accepted).
    pub(crate) quotas: HashMap<String, u64>,
    pub(crate) operators: Operators,
    pub(crate) cache: ContextCache,
    pub(crate) progress: Arc<Progress>,
    pub(crate) wake: Vec<Notify>,
    /// Per stage: tasks the writer leased in its checkpoint and hands straight on.
    pub(crate) handoff: Vec<mpsc::UnboundedSender<Claim>>,
    pub(crate) drawer: Notify,
    pub(crate) intake: CancellationToken,
    pub(crate) hard: CancellationToken,
}

impl Shared {
    /// Lease what a transaction makes ready to this worker, unless the intake has stopped
    /// (then it stays `ready` for the next run).
    pub(crate) fn hand_off(&self) -> Option<edir_store::HandOff> {
        (!self.intake.is_cancelled()).then(|| edir_store::HandOff {
            owner: self.owner.clone(),
            lease: self.options.lease,
        })
    }
}

/// A thread of its own for the tasks that talk to the store on the engine's behalf (the
/// writer, the drawer, the lease renewer, claims) on SQLite. A checkpoint is a dozen
/// statements, each a round trip to SQLite's connection thread; on the shared runtime every
/// reply queued behind hundreds of model-call tasks, so the one connection was held mostly by
/// tasks waiting to be polled, and the writer, not the models, set the pace. Here each reply is
/// polled as soon as it comes. On Postgres the tasks stay on the shared runtime: a pooled
/// connection belongs to the runtime that opened it, and this one ends with the run.
struct StoreThread {
    handle: tokio::runtime::Handle,
    /// Dropped (with the engine's run) to end the thread.
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl StoreThread {
    fn start(backend: edir_store::Backend) -> Result<Self, EngineError> {
        if backend != edir_store::Backend::Sqlite {
            return Ok(Self {
                handle: tokio::runtime::Handle::current(),
                _stop: None,
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EngineError::Internal(format!("cannot start the store thread: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("edir-store".to_string())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| EngineError::Internal(format!("cannot start the store thread: {e}")))?;
        Ok(Self {
            handle,
            _stop: Some(stop),
        })
    }
}

/// Makes the artifacts written so far durable (an fdatasync of the open pack, off the async
/// threads) before a transaction that refers to them commits.
pub(crate) async fn sync_artifacts(artifacts: &ArtifactStore) -> Result<(), EngineError> {
    if !artifacts.unsynced() {
        return Ok(());
    }
    let artifacts = artifacts.clone();
    tokio::task::spawn_blocking(move || artifacts.sync())
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
    Ok(())
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
        let store_thread = StoreThread::start(self.store.backend())?;
        let shared = Arc::new(Shared {
            store_thread: store_thread.handle.clone(),
            stage_keys,
            quotas,
            pipeline: pipeline.clone(),
            store: self.store.clone(),
            artifacts: self.artifacts.clone(),
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
        let writer = store_thread
            .handle
            .spawn(crate::writer::writer(shared.clone(), rx));
        let renewer = store_thread
            .handle
            .spawn(crate::dispatch::renew(shared.clone()));
        let mut dispatchers = Vec::new();
        for (index, handed) in handoff_rx.drain(..).enumerate() {
            dispatchers.push(tokio::spawn(crate::dispatch::dispatch(
                shared.clone(),
                index,
                handed,
                tx.clone(),
                tracker.clone(),
            )));
        }
        drop(tx);
        let drawer = crate::drawer::Drawer {
            shared: shared.clone(),
            pool,
            bad,
            used,
            loaded: HashMap::new(),
            cursors: HashMap::new(),
            generations,
            max_active,
        };
        let finished = store_thread
            .handle
            .spawn(drawer.run())
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))
            .and_then(|finished| finished);
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
