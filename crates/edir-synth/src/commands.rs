//! One function per command; each returns the exit code or an error (exit 2).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use edir_config::{Compiled, Taxonomy};
use edir_sim::{SimConfig, SimServer};

use crate::cli::{Cli, Command};
use crate::output;
use crate::{EXIT_ERROR, EXIT_OK};

pub(crate) fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Check { pipeline } => check(&pipeline),
        Command::Run(args) => crate::run::run(args),
        Command::Status {
            workdir,
            store,
            run,
            json,
        } => crate::status::status(workdir.as_deref(), store.as_deref(), run.as_deref(), json),
        Command::Plan {
            pipeline,
            workdir,
            store,
            quota,
            only,
            json,
        } => crate::resume::plan(
            &pipeline,
            workdir.as_deref(),
            store.as_deref(),
            quota,
            &only,
            json,
        ),
        Command::Retry {
            workdir,
            store,
            run,
            failed: _,
            stage,
            error,
        } => crate::resume::retry(
            workdir.as_deref(),
            store.as_deref(),
            run.as_deref(),
            stage.as_deref(),
            error.as_deref(),
        ),
        Command::Regen {
            workdir,
            store,
            run,
            subcategory,
            from_stage,
        } => crate::resume::regen(
            workdir.as_deref(),
            store.as_deref(),
            run.as_deref(),
            &subcategory,
            from_stage.as_deref(),
        ),
        Command::Export {
            pipeline,
            workdir,
            store,
            out,
        } => export(&pipeline, workdir.as_deref(), store.as_deref(), &out),
        Command::Taxonomy { file, json } => taxonomy(&file, json),
        Command::Score(args) => score(&args),
        Command::Sim {
            port,
            host,
            config,
            faults,
            seed,
            scenes,
            out,
            sizes,
        } => match (scenes, out) {
            (Some(count), Some(out)) => write_scenes(count, &out, seed.unwrap_or(0), &sizes),
            _ => serve_sim(SocketAddr::new(host, port), config.as_deref(), faults, seed),
        },
    }
}

fn write_scenes(count: usize, out: &Path, seed: u64, sizes: &[u32]) -> anyhow::Result<u8> {
    let paths = edir_sim::write_scenes(out, count, seed, sizes)
        .with_context(|| format!("cannot write scenes to `{}`", out.display()))?;
    output::stdout(&format!(
        "wrote {} reference scenes to `{}`\n",
        paths.len(),
        out.display()
    ))?;
    Ok(EXIT_OK)
}

fn serve_sim(
    addr: SocketAddr,
    config: Option<&Path>,
    faults: Option<f64>,
    seed: Option<u64>,
) -> anyhow::Result<u8> {
    let mut sim_config = match config {
        Some(path) => {
            let text = fs_err::read_to_string(path).context("cannot read the simulator config")?;
            SimConfig::from_yaml(&text).map_err(|message| {
                anyhow::anyhow!("invalid simulator config `{}`: {message}", path.display())
            })?
        }
        None => SimConfig::default_models(),
    };
    if let Some(rate) = faults {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "`--faults` must be between 0 and 1, got {rate}"
        );
        sim_config = sim_config.with_faults(rate);
    }
    if let Some(seed) = seed {
        sim_config.seed = seed;
    }
    let names: Vec<String> = sim_config.models.iter().map(|m| m.name.clone()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = SimServer::start(sim_config, addr)
            .await
            .with_context(|| format!("cannot listen on `{addr}`"))?;
        output::stdout(&format!(
            "edir-sim listening on {} (a simulator, not a model server)\nmodels: {}\n",
            server.base_url(),
            names.join(", ")
        ))?;
        tokio::select! {
            () = async { let _ = tokio::signal::ctrl_c().await; } => {}
            () = server.wait() => {}
        }
        Ok::<u8, anyhow::Error>(EXIT_OK)
    })
}

fn check(path: &Path) -> anyhow::Result<u8> {
    let compiled = edir_config::compile_file(path);
    if !compiled.diagnostics.is_empty() {
        output::stderr(&compiled.render());
    }
    let Some(pipeline) = compiled.pipeline else {
        return Ok(EXIT_ERROR);
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "`{}` is valid: {} stages, {} subcategories, {} accepted samples wanted, {} endpoints",
        path.display(),
        pipeline.stages.len(),
        pipeline.subcategories.len(),
        pipeline.total_quota(),
        pipeline.endpoints.len(),
    );
    for stage in &pipeline.stages {
        let target = stage
            .op
            .endpoint()
            .map(|e| format!(" {e}"))
            .unwrap_or_default();
        let needs = if stage.needs.is_empty() {
            String::new()
        } else {
            format!(" <- {}", stage.needs.join(", "))
        };
        let _ = writeln!(
            text,
            "  {:<12} {}{target}{needs}",
            stage.id,
            stage.op.kind()
        );
    }
    output::stdout(&text)?;
    Ok(EXIT_OK)
}

fn taxonomy(path: &Path, json: bool) -> anyhow::Result<u8> {
    let text = fs_err::read_to_string(path).context("cannot read the taxonomy")?;
    // A pipeline names its taxonomy and may select subcategories; a taxonomy file has
    // `categories` at the top.
    let is_taxonomy = text.lines().any(|line| line.starts_with("categories:"));
    let (taxonomy, selected, compiled) = if is_taxonomy {
        let (taxonomy, diagnostics, sources) = edir_config::compile_taxonomy_file(path);
        let compiled = Compiled {
            pipeline: None,
            diagnostics,
            sources,
        };
        let selected = taxonomy
            .as_ref()
            .map(|t| t.subcategories.iter().map(|s| s.id.clone()).collect());
        (taxonomy, selected, compiled)
    } else {
        let mut compiled = edir_config::compile_file(path);
        let pipeline = compiled.pipeline.take();
        let selected = pipeline.as_ref().map(|p| p.subcategories.clone());
        (pipeline.map(|p| p.taxonomy), selected, compiled)
    };
    if compiled.has_errors() {
        output::stderr(&compiled.render());
        return Ok(EXIT_ERROR);
    }
    let (Some(taxonomy), Some(selected)) = (taxonomy, selected) else {
        return Ok(EXIT_ERROR);
    };
    let taxonomy = Taxonomy {
        categories: taxonomy.categories.clone(),
        subcategories: taxonomy
            .subcategories
            .into_iter()
            .filter(|s| selected.contains(&s.id))
            .collect(),
    };
    if json {
        output::stdout(&(serde_json::to_string_pretty(&taxonomy)? + "\n"))?;
    } else {
        output::stdout(&render_taxonomy(&taxonomy))?;
    }
    Ok(EXIT_OK)
}

fn render_taxonomy(taxonomy: &Taxonomy) -> String {
    let mut text = String::new();
    let id_width = taxonomy
        .subcategories
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(0);
    let label_width = taxonomy
        .subcategories
        .iter()
        .map(|s| s.label.len())
        .max()
        .unwrap_or(0);
    for category in &taxonomy.categories {
        let subs: Vec<_> = taxonomy
            .subcategories
            .iter()
            .filter(|s| s.category == category.id)
            .collect();
        if subs.is_empty() {
            continue;
        }
        let _ = writeln!(text, "{} ({})", category.label, category.id);
        for sub in subs {
            let _ = writeln!(
                text,
                "  {:<id_width$}  {:<label_width$}  {}",
                sub.id, sub.label, sub.definition
            );
        }
    }
    let _ = writeln!(
        text,
        "{} categories, {} subcategories",
        taxonomy
            .categories
            .iter()
            .filter(|c| taxonomy.subcategories.iter().any(|s| s.category == c.id))
            .count(),
        taxonomy.subcategories.len()
    );
    text
}

fn score(args: &crate::cli::ScoreArgs) -> anyhow::Result<u8> {
    let bench_dir = args.bench.as_path();
    let check_images = args.check_images || !args.model.is_empty();
    let bench = match edir_dataset::Benchmark::read(bench_dir, args.images.as_deref(), check_images)
    {
        Ok(bench) => bench,
        Err(error) => {
            output::stderr(&format!("error: {error}\n"));
            return Ok(EXIT_ERROR);
        }
    };
    let options = edir_retrieval::ScoreOptions {
        candidates_only: args.candidates_only,
        exclude_reference: args.exclude_reference,
        gpu: !args.cpu,
        ..edir_retrieval::ScoreOptions::default()
    };
    let mut results = Vec::new();
    for spec in &args.embeddings {
        let (name, dir) = match spec.split_once('=') {
            Some((name, dir)) => (name.to_string(), Path::new(dir).to_path_buf()),
            None => {
                let dir = Path::new(spec).to_path_buf();
                let name = dir
                    .file_name()
                    .map_or_else(|| spec.clone(), |n| n.to_string_lossy().into_owned());
                (name, dir)
            }
        };
        let started = std::time::Instant::now();
        match edir_retrieval::score_files(&name, &bench, &dir, &options) {
            Ok(result) => {
                tracing::info!(model = %name, seconds = started.elapsed().as_secs_f64(), "scored");
                results.push(result);
            }
            Err(error) => {
                output::stderr(&format!(
                    "error: cannot score `{name}` on `{}`\n  Caused by: {error}\n",
                    bench_dir.display()
                ));
                return Ok(EXIT_ERROR);
            }
        }
    }
    if !args.model.is_empty() {
        match score_endpoints(args, &bench, &options)? {
            Ok(more) => results.extend(more),
            Err(message) => {
                output::stderr(&format!("error: {message}\n"));
                return Ok(EXIT_ERROR);
            }
        }
    }
    let summaries: Vec<edir_retrieval::ModelResult> =
        results.iter().map(|(r, _)| r.clone()).collect();
    output::stdout(&edir_retrieval::markdown(&summaries))?;
    if let Some(out) = &args.out {
        edir_retrieval::write(out, &bench, &results)
            .with_context(|| format!("cannot write reports to `{}`", out.display()))?;
    }
    Ok(EXIT_OK)
}

/// The `--query-instruction` / `--corpus-instruction` for `model`: a `MODEL=TEXT` naming it
/// wins over a plain `TEXT` (the last of each kind); `OTHER=TEXT` for another of the `models`
/// scored is not for this one; any other text is plain, `=` and all.
fn pick(specs: &[String], model: &str, models: &[&str]) -> Option<String> {
    let mut plain = None;
    let mut own = None;
    for spec in specs {
        match spec.split_once('=') {
            Some((name, text)) if name == model => own = Some(text.to_string()),
            Some((name, _)) if models.contains(&name) => {}
            _ => plain = Some(spec.clone()),
        }
    }
    own.or(plain)
}

/// Embeds and scores `--model` specs through their endpoints; `Err(message)` for a model that
/// cannot be reached or embedded (exit 2).
fn score_endpoints(
    args: &crate::cli::ScoreArgs,
    bench: &edir_dataset::Benchmark,
    options: &edir_retrieval::ScoreOptions,
) -> anyhow::Result<Result<Vec<crate::run::Scored>, String>> {
    let pipeline = match &args.pipeline {
        Some(path) => match crate::run::compile(path, true) {
            Some(p) => Some(p),
            None => return Ok(Err(format!("invalid pipeline `{}`", path.display()))),
        },
        None => None,
    };
    let lookup = |var: &str| std::env::var(var).ok();
    let configs = pipeline
        .as_ref()
        .map(|p| edir_engine::endpoint_configs(p, Some(edir_config::Api::Embeddings), &lookup))
        .unwrap_or_default();
    let names: Vec<&str> = args
        .model
        .iter()
        .map(|spec| spec.split_once('=').map_or(spec.as_str(), |(name, _)| name))
        .collect();
    let mut endpoints = Vec::new();
    for spec in &args.model {
        let (name, url) = match spec.split_once('=') {
            Some((name, url)) => (
                name.to_string(),
                Some(url.trim_end_matches('/').to_string()),
            ),
            None => (spec.clone(), None),
        };
        let from_pipeline = configs.iter().find(|c| c.name == name || c.model == name);
        let config = match (
            url,
            std::env::var("EDIR_EMBED_URL")
                .ok()
                .filter(|u| !u.is_empty()),
            from_pipeline,
        ) {
            (Some(url), _, _) => edir_model::EndpointConfig::new(&name, &name, vec![url]),
            (None, _, Some(config)) => config.clone(),
            (None, Some(env), None) => edir_model::EndpointConfig::new(
                &name,
                &name,
                env.split(',')
                    .map(|u| u.trim().trim_end_matches('/').to_string())
                    .collect(),
            ),
            (None, None, None) => {
                return Ok(Err(format!(
                    "no URL for model `{name}`: give `--model {name}=URL`, set EDIR_EMBED_URL, or `--pipeline` with an endpoint serving it"
                )));
            }
        };
        let mut instructions = crate::run::Instructions::of(pipeline.as_ref(), &name);
        if let Some(text) = pick(&args.query_instruction, &name, &names) {
            instructions.query = text;
        }
        if let Some(text) = pick(&args.corpus_instruction, &name, &names) {
            instructions.corpus = text;
        }
        endpoints.push((config, instructions));
    }
    let url = match &args.store {
        Some(url) => edir_store::StoreUrl::parse(url)?,
        None => edir_store::StoreUrl::sqlite(Path::new("runs/score-cache/store.sqlite")),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = edir_store::Store::open(&url).await?;
        let mut scored = Vec::new();
        for (config, instructions) in endpoints {
            match crate::run::score_endpoint(bench, config, &instructions, &store, options).await {
                Ok(result) => scored.push(result),
                Err(message) => return Ok(Err(message)),
            }
        }
        store.close().await;
        Ok(Ok(scored))
    })
}

fn export(
    path: &Path,
    workdir: Option<&Path>,
    store: Option<&str>,
    out: &Path,
) -> anyhow::Result<u8> {
    let Some(pipeline) = crate::run::compile(path, true) else {
        return Ok(EXIT_ERROR);
    };
    let (workdir, _) = crate::run::locate(&pipeline, workdir, store)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = crate::status::open_existing(Some(&workdir), store).await?;
        let run = store
            .find_run(&pipeline.name)
            .await?
            .with_context(|| format!("no run `{}` in this store yet", pipeline.name))?;
        let artifacts = edir_store::ArtifactStore::open(workdir.join("artifacts"))?;
        let summary = edir_engine::export(&pipeline, &store, &artifacts, &run.id, out).await?;
        store.close().await;
        output::stdout(&format!(
            "exported {} queries and {} corpus images to `{}`\n",
            summary.queries,
            summary.corpus,
            out.display()
        ))?;
        Ok(EXIT_OK)
    })
}
