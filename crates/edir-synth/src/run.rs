//! `edir-synth run`: compile, open the store, connect (or simulate) the endpoints, run the
//! engine with a live display, then export the benchmark and score it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use edir_config::{Api, Pipeline, Severity, SourceKind};
use edir_engine::{Engine, Progress, RunOptions, RunSummary};
use edir_sim::{SimConfig, SimServer};
use edir_store::{ArtifactStore, Store, StoreUrl};

use crate::cli::RunArgs;
use crate::output;
use crate::{EXIT_ERROR, EXIT_FAILED_SAMPLES, EXIT_INTERRUPTED, EXIT_OK};

/// Request timeout under `--sim`, seconds.
const SIM_TIMEOUT_S: f64 = 30.0;

/// The most threads the run's blocking pool starts (see `run`).
const BLOCKING_THREADS: usize = 16;

/// Reads an environment variable (or what stands in for one under `--sim`).
type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The work directory and store of a pipeline, with command-line overrides.
pub(crate) fn locate(
    pipeline: &Pipeline,
    workdir: Option<&Path>,
    store: Option<&str>,
) -> anyhow::Result<(PathBuf, StoreUrl)> {
    let workdir = workdir.map_or_else(|| pipeline.workdir.clone(), Path::to_path_buf);
    let url = match store.or(pipeline.store.as_deref()) {
        Some(url) => StoreUrl::parse(url)?,
        None => StoreUrl::sqlite(&workdir.join("store.sqlite")),
    };
    Ok((workdir, url))
}

/// Compiles a pipeline, printing its diagnostics; `None` when it has errors.
pub(crate) fn compile(path: &Path, quiet_source: bool) -> Option<Pipeline> {
    let mut compiled = edir_config::compile_file(path);
    if quiet_source {
        // `--sim` or `--source` replace the pipeline's source: its absence is no news.
        compiled
            .diagnostics
            .retain(|d| d.severity == Severity::Error || !d.message.starts_with("source "));
    }
    if !compiled.diagnostics.is_empty() {
        output::stderr(&compiled.render());
    }
    compiled.pipeline
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<u8> {
    let Some(mut pipeline) = compile(&args.pipeline, args.sim || args.source.is_some()) else {
        return Ok(EXIT_ERROR);
    };
    if args.sim {
        // The simulator answers in milliseconds (seconds with `--sim-config`): a request it
        // holds as a `hang` fault should not stall the run for the pipeline's GPU timeouts.
        for endpoint in pipeline.endpoints.values_mut() {
            endpoint.timeout_s = endpoint.timeout_s.min(SIM_TIMEOUT_S);
        }
    }
    if let Some(rate) = args.sim_faults {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "`--sim-faults` must be between 0 and 1, got {rate}"
        );
    }
    let (workdir, url) = locate(&pipeline, args.workdir.as_deref(), args.store.as_deref())?;
    fs_err::create_dir_all(workdir.join("logs")).context("cannot create the work directory")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let log = workdir.join("logs").join(format!("run-{stamp}.jsonl"));
    output::log_to(&log).with_context(|| format!("cannot open the log `{}`", log.display()))?;
    // The blocking pool runs filters, large artifact writes, pack syncs and the simulator's
    // large renders. Tokio's default lets it grow to 512 threads: on a busy machine queued
    // filters each started a thread (155 in a 100,000-sample run), and every thread's
    // allocator heap kept pages (peak RSS 324 MiB there). The work is CPU or disk bound, so
    // more threads than a few per core only queue in the kernel instead of in tokio.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(args, Arc::new(pipeline), workdir, url))
}

async fn run_async(
    args: RunArgs,
    pipeline: Arc<Pipeline>,
    workdir: PathBuf,
    url: StoreUrl,
) -> anyhow::Result<u8> {
    let store = Store::open(&url).await?;
    let artifacts = ArtifactStore::open(workdir.join("artifacts"))?;
    let mut source = args.source.clone();
    let (sim, lookup): (Option<SimServer>, Box<Lookup>) = if args.sim {
        let server = start_sim(&pipeline, &args).await?;
        let base = server.base_url();
        let vars: Vec<String> = pipeline
            .endpoints
            .values()
            .map(|e| e.url_env.clone())
            .collect();
        if source.is_none() && !source_exists(&pipeline) {
            source = Some(sim_scenes(&pipeline, &args, &workdir)?);
        }
        let lookup = move |var: &str| {
            if vars.iter().any(|v| v == var) {
                Some(base.clone())
            } else {
                std::env::var(var).ok()
            }
        };
        (Some(server), Box::new(lookup))
    } else {
        (None, Box::new(|var: &str| std::env::var(var).ok()))
    };
    let endpoints = edir_engine::connect(&pipeline, &*lookup)
        .await
        .context("cannot start the run")?;
    let monitors: Vec<_> = endpoints
        .values()
        .map(|e| e.spawn_monitor(Duration::from_secs(5)))
        .collect();
    let options = RunOptions {
        only: args.only.clone(),
        quota: args.quota,
        source,
        max_active: args.max_active,
        grace: Duration::from_secs_f64(args.grace_period.max(0.0)),
        fresh: args.new,
        ..RunOptions::default()
    };
    let engine = Engine::new(
        pipeline.clone(),
        store.clone(),
        artifacts.clone(),
        endpoints,
        options,
    );
    let progress = engine.progress();
    let (intake, hard) = (engine.intake(), engine.hard());
    let grace = args.grace_period.max(0.0);
    let watched = progress.clone();
    let signals = tokio::spawn(async move {
        let mut stop = Signals::new();
        stop.next().await;
        output::stderr(&format!(
            "\nstopping: no new work is claimed; waiting up to {grace:.0} s for the calls in flight: {} \
             (Ctrl-C again to drop them; the next `run` redoes them)\n",
            in_flight(&watched)
        ));
        intake.cancel();
        loop {
            tokio::select! {
                () = stop.next() => {
                    output::stderr("dropping the calls in flight\n");
                    hard.cancel();
                    return;
                }
                () = tokio::time::sleep(Duration::from_secs(5)) => {
                    output::stderr(&format!("still waiting for: {}\n", in_flight(&watched)));
                }
            }
        }
    });
    let metrics = match args.metrics {
        Some(addr) => Some(serve_metrics(addr, progress.clone()).await?),
        None => None,
    };
    let display = tokio::spawn(display(progress.clone()));
    let summary = engine.run().await;
    display.abort();
    let _ = display.await;
    signals.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    let summary = summary.context("the run stopped")?;
    output::stdout(&render_summary(&summary, &progress))?;
    if summary.interrupted {
        output::stdout("interrupted: run the same command again to resume\n")?;
        store.close().await;
        return Ok(EXIT_INTERRUPTED);
    }
    if !args.no_export {
        let out = workdir.join("benchmark");
        let exported =
            edir_engine::export(&pipeline, &store, &artifacts, &summary.run, &out).await?;
        output::stdout(&format!(
            "exported {} queries and {} corpus images to `{}`\n",
            exported.queries,
            exported.corpus,
            out.display()
        ))?;
        if !args.no_score {
            let mut models: Vec<String> = pipeline.score.models.clone();
            if sim.is_some() {
                models.push("sim/embed-image".into());
                models.push("sim/embed-compose".into());
            }
            score(
                &pipeline,
                &store,
                &out,
                &workdir.join("report"),
                &models,
                &*lookup,
            )
            .await?;
        }
    }
    for monitor in monitors {
        monitor.abort();
    }
    store.close().await;
    drop(sim);
    Ok(if summary.short().is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED_SAMPLES
    })
}

fn source_exists(pipeline: &Pipeline) -> bool {
    match &pipeline.source.kind {
        SourceKind::Folder(p) => p.is_dir(),
        SourceKind::Manifest(p) => p.is_file(),
    }
}

/// The simulator for this pipeline: the default models plus any model the pipeline names.
async fn start_sim(pipeline: &Pipeline, args: &RunArgs) -> anyhow::Result<SimServer> {
    let mut config = match &args.sim_config {
        Some(path) => {
            let text = fs_err::read_to_string(path).context("cannot read the simulator config")?;
            SimConfig::from_yaml(&text).map_err(|message| {
                anyhow::anyhow!("invalid simulator config `{}`: {message}", path.display())
            })?
        }
        None => SimConfig::default_models(),
    };
    for endpoint in pipeline.endpoints.values() {
        if config.models.iter().any(|m| m.name == endpoint.model) {
            continue;
        }
        let role = match endpoint.api {
            Api::Chat => edir_sim::Role::Chat,
            Api::ImageEdit => edir_sim::Role::Edit,
            Api::Embeddings => edir_sim::Role::Embed,
            Api::Unused => continue,
        };
        let mut model = SimConfig::default_models()
            .models
            .into_iter()
            .find(|m| m.role == role)
            .context("the simulator has no model of this role")?;
        model.name.clone_from(&endpoint.model);
        config.models.push(model);
    }
    if let Some(rate) = args.sim_faults {
        config = config.with_faults(rate);
        for model in &mut config.models {
            // Past the client's timeout, not ten minutes past it.
            model.faults.hang_s = 40;
        }
    }
    config.seed = pipeline.seed;
    let server = SimServer::start(config, "127.0.0.1:0".parse()?)
        .await
        .context("cannot start the simulator")?;
    tracing::info!(url = %server.base_url(), "simulator started (a test double, not a model server)");
    Ok(server)
}

/// Ctrl-C and SIGTERM, as one stream of stop requests.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    /// The next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(term) = &mut self.term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `instruct 3, target 5` (stages with calls in flight), or `none`.
fn in_flight(progress: &Progress) -> String {
    let busy: Vec<String> = progress
        .stages
        .iter()
        .filter_map(|s| {
            let n = s.in_flight.load(std::sync::atomic::Ordering::Relaxed);
            (n > 0).then(|| format!("{} {n}", s.id))
        })
        .collect();
    if busy.is_empty() {
        "none".to_string()
    } else {
        busy.join(", ")
    }
}

/// Writes (once) enough simulator scenes for the run into `<workdir>/sim-scenes`.
fn sim_scenes(pipeline: &Pipeline, args: &RunArgs, workdir: &Path) -> anyhow::Result<PathBuf> {
    let quota = pipeline
        .subcategories
        .iter()
        .map(|s| args.quota.unwrap_or_else(|| pipeline.quota_for(s)))
        .max()
        .unwrap_or(1);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "small positive counts"
    )]
    let count = ((f64::from(quota) * pipeline.quota.overgenerate.max(1.0)).ceil() as usize).max(32);
    let sizes: Vec<String> = args.sim_sizes.iter().map(ToString::to_string).collect();
    let dir = workdir.join(format!("sim-scenes-{}-{}", count, sizes.join("_")));
    let complete = dir.join(".complete");
    if !complete.is_file() {
        edir_sim::write_scenes(&dir, count, pipeline.seed, &args.sim_sizes)
            .with_context(|| format!("cannot write scenes to `{}`", dir.display()))?;
        fs_err::write(&complete, b"")?;
    }
    Ok(dir)
}

async fn serve_metrics(
    addr: std::net::SocketAddr,
    progress: Arc<Progress>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let progress = progress.clone();
            async move { progress.prometheus() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on `{addr}`"))?;
    tracing::info!(%addr, "serving metrics on /metrics");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}

/// A live display on a terminal (one bar per stage, accepted / quota, rates, ETA, errors);
/// plain lines every 10 s otherwise.
async fn display(progress: Arc<Progress>) {
    if std::io::stderr().is_terminal() {
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>12} {bar:30} {pos:>7}/{len:<7} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let total = multi.add(indicatif::ProgressBar::new(1));
        total.set_style(style.clone());
        total.set_prefix("accepted");
        let bars: Vec<_> = progress
            .stages
            .iter()
            .map(|s| {
                let bar = multi.add(indicatif::ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(s.id.clone());
                bar
            })
            .collect();
        let subs_line = multi.add(indicatif::ProgressBar::new(0));
        subs_line.set_style(
            indicatif::ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            let subs = progress.subcategories();
            let quota: u64 = subs.iter().map(|s| s.quota).sum();
            let accepted: u64 = subs.iter().map(|s| s.accepted).sum();
            total.set_length(quota.max(1));
            total.set_position(accepted);
            total.set_message(rate_line(&progress, accepted, quota));
            let drawn: u64 = subs.iter().map(|s| s.drawn).sum();
            for (bar, stage) in bars.iter().zip(&progress.stages) {
                let done = stage.done.load(Ordering::Relaxed)
                    + stage.skipped.load(Ordering::Relaxed)
                    + stage.failed.load(Ordering::Relaxed);
                bar.set_length(drawn.max(done));
                bar.set_position(done);
                bar.set_message(stage_line(stage));
            }
            subs_line.set_message(subcategory_line(&subs));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let subs = progress.subcategories();
            let quota: u64 = subs.iter().map(|s| s.quota).sum();
            let accepted: u64 = subs.iter().map(|s| s.accepted).sum();
            let _ = output::stdout(&format!(
                "[{:>5.0}s] accepted {accepted}/{quota} · {}\n",
                progress.started.elapsed().as_secs_f64(),
                rate_line(&progress, accepted, quota)
            ));
        }
    }
}

fn rate_line(progress: &Progress, accepted: u64, quota: u64) -> String {
    let secs = progress.started.elapsed().as_secs_f64().max(1e-3);
    let calls = progress.calls();
    #[expect(clippy::cast_precision_loss, reason = "rates for display")]
    let (call_rate, accept_rate) = (calls as f64 / secs, accepted as f64 / secs);
    let eta = if accept_rate > 0.0 && quota > accepted {
        #[expect(clippy::cast_precision_loss, reason = "an estimate")]
        let left = (quota - accepted) as f64 / accept_rate;
        format!(" · ETA {}", human(left))
    } else {
        String::new()
    };
    let errors: u64 = progress
        .stages
        .iter()
        .map(|s| s.failed.load(Ordering::Relaxed))
        .sum();
    format!("{calls} calls ({call_rate:.0}/s) · {accept_rate:.1} accepted/s · {errors} failed{eta}")
}

fn stage_line(stage: &edir_engine::StageProgress) -> String {
    let mut line = format!(
        "in flight {} · rejected {}",
        stage.in_flight.load(Ordering::Relaxed),
        stage.rejected.load(Ordering::Relaxed)
    );
    let errors = stage
        .errors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !errors.is_empty() {
        let classes: Vec<String> = errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = write!(line, " · failed: {}", classes.join(", "));
    }
    line
}

fn subcategory_line(subs: &[edir_engine::SubcategoryProgress]) -> String {
    subs.iter()
        .map(|s| format!("{} {}/{}", s.label, s.accepted, s.quota))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn human(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0}s")
    } else if seconds < 5400.0 {
        format!("{:.0}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

fn render_summary(summary: &RunSummary, progress: &Progress) -> String {
    let mut text = String::new();
    let secs = summary.elapsed.as_secs_f64().max(1e-3);
    #[expect(clippy::cast_precision_loss, reason = "rates for display")]
    let rate = summary.calls as f64 / secs;
    let _ = writeln!(
        text,
        "run `{}`: {} model calls in {:.1} s ({rate:.0}/s), {} checkpoints",
        summary.run,
        summary.calls,
        secs,
        progress.checkpoints.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        text,
        "{:<14} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "subcategory", "accepted", "quota", "rejected", "failed", "drawn"
    );
    for s in &summary.subcategories {
        let _ = writeln!(
            text,
            "{:<14} {:>8} {:>8} {:>8} {:>8} {:>8}",
            s.label, s.accepted, s.quota, s.rejected, s.failed, s.drawn
        );
    }
    if summary.bad_references > 0 {
        let _ = writeln!(
            text,
            "{} reference images could not be used (see `edir-synth status`)",
            summary.bad_references
        );
    }
    let short = summary.short();
    if !short.is_empty() && !summary.interrupted {
        let names: Vec<String> = short
            .iter()
            .map(|s| format!("{} ({}/{})", s.label, s.accepted, s.quota))
            .collect();
        let _ = writeln!(
            text,
            "short of quota: {}; the over-generation budget is spent. `edir-synth status` shows why samples were rejected or failed",
            names.join(", ")
        );
    }
    text
}

/// Scores `models` (embedding endpoint names of the pipeline, or simulator model names) on the
/// exported benchmark into `report/`.
async fn score(
    pipeline: &Pipeline,
    store: &Store,
    bench_dir: &Path,
    report: &Path,
    models: &[String],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    if models.is_empty() {
        return Ok(());
    }
    let bench =
        edir_dataset::Benchmark::read(bench_dir, None, true).map_err(|e| anyhow::anyhow!("{e}"))?;
    if bench.queries.is_empty() {
        return Ok(());
    }
    let configs: HashMap<String, edir_model::EndpointConfig> =
        edir_engine::endpoint_configs(pipeline, Some(Api::Embeddings), lookup)
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
    let mut results = Vec::new();
    for name in models {
        let config = match configs.get(name) {
            Some(config) => config.clone(),
            None => {
                // A simulator model on the embedding endpoint's server.
                let Some(base) = configs.values().next() else {
                    continue;
                };
                let mut config = base.clone();
                config.name.clone_from(name);
                config.model.clone_from(name);
                config
            }
        };
        let instructions = Instructions::of(Some(pipeline), name);
        results.push(
            score_endpoint(
                &bench,
                config,
                &instructions,
                store,
                &edir_retrieval::ScoreOptions::default(),
            )
            .await
            .map_err(|message| anyhow::anyhow!(message))?,
        );
    }
    if results.is_empty() {
        return Ok(());
    }
    edir_retrieval::write(report, &bench, &results)
        .with_context(|| format!("cannot write reports to `{}`", report.display()))?;
    let summaries: Vec<edir_retrieval::ModelResult> =
        results.iter().map(|(r, _)| r.clone()).collect();
    output::stdout(&format!(
        "scored {} models into `{}`:\n{}",
        summaries.len(),
        report.display(),
        edir_retrieval::markdown(&summaries)
    ))?;
    Ok(())
}

/// One model's result and its rankings.
pub(crate) type Scored = (
    edir_retrieval::ModelResult,
    Vec<Vec<edir_retrieval::Ranked>>,
);

/// The instructions an embedding model is scored with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instructions {
    /// Before each query text.
    pub(crate) query: String,
    /// For corpus images.
    pub(crate) corpus: String,
}

impl Instructions {
    /// The pipeline endpoint's (`name` is its name or model), else the official evaluation's.
    pub(crate) fn of(pipeline: Option<&Pipeline>, name: &str) -> Self {
        let endpoint = pipeline.and_then(|p| {
            p.endpoints
                .values()
                .find(|e| e.name == name || e.model == name)
        });
        Self {
            query: endpoint
                .and_then(|e| e.query_instruction.clone())
                .unwrap_or_else(|| edir_retrieval::QUERY_INSTRUCTION.to_string()),
            corpus: endpoint
                .and_then(|e| e.corpus_instruction.clone())
                .unwrap_or_else(|| edir_retrieval::CORPUS_INSTRUCTION.to_string()),
        }
    }
}

/// Connects one embedding endpoint, embeds `bench` through it with `instructions` (vectors
/// cached in `store`) and ranks it; `Err` says which model failed and why.
pub(crate) async fn score_endpoint(
    bench: &edir_dataset::Benchmark,
    config: edir_model::EndpointConfig,
    instructions: &Instructions,
    store: &Store,
    options: &edir_retrieval::ScoreOptions,
) -> Result<Scored, String> {
    let label = config.model.clone();
    let endpoint = edir_model::Endpoint::connect(config)
        .await
        .map_err(|error| format!("cannot score `{label}`\n  Caused by: {error}"))?;
    let started = std::time::Instant::now();
    let (queries, corpus) = edir_retrieval::embed_benchmark(
        bench,
        &endpoint,
        Some(store),
        &instructions.query,
        &instructions.corpus,
    )
    .await
    .map_err(|error| format!("cannot embed the benchmark with `{label}`\n  Caused by: {error}"))?;
    let ranked = edir_retrieval::rank(
        bench,
        &queries,
        &corpus,
        options,
        &std::sync::atomic::AtomicBool::new(false),
    )
    .map_err(|error| format!("cannot score `{label}`: {error}"))?;
    tracing::info!(model = %label, seconds = started.elapsed().as_secs_f64(), "embedded and scored");
    Ok((edir_retrieval::evaluate(&label, bench, &ranked), ranked))
}
