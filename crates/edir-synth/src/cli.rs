//! The command line (the contract users and tests rely on; see the README).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Synthesize fine-grained composed-image-retrieval benchmarks by image editing, and score
/// embedding models on them.
#[derive(Debug, Parser)]
#[command(name = "edir-synth", version, propagate_version = true)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate a pipeline without calling any endpoint; report every problem at once.
    Check {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// List the taxonomy's categories and subcategories with their ids and definitions.
    Taxonomy {
        /// A pipeline (its taxonomy and selected subcategories) or a taxonomy file.
        #[arg(default_value = "pipelines/taxonomy.yaml")]
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run (or resume) a pipeline until every subcategory has its quota; then export and score.
    Run(RunArgs),
    /// Where a run stands: per subcategory and stage, rejections, failures, usage and cost.
    Status {
        /// The work directory (default: the only one under `runs/`).
        #[arg(long, conflicts_with = "store")]
        workdir: Option<PathBuf>,
        /// The store URL (`postgres://...` or `sqlite://...`).
        #[arg(long)]
        store: Option<String>,
        /// The run name, when the store holds several.
        #[arg(long)]
        run: Option<String>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// What a `run` would compute: samples to draw, failed tasks it retries, stale tasks (and
    /// which input of their cache key changed), and what would stop it from resuming.
    Plan {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The work directory (default: the pipeline's, `runs/<name>`).
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// The store URL (default: the work directory's SQLite file).
        #[arg(long)]
        store: Option<String>,
        /// Accepted samples per subcategory (as `run --quota`).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        quota: Option<u32>,
        /// Only these subcategories (as `run --only`).
        #[arg(long)]
        only: Vec<String>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Re-queue failed tasks (a fresh attempt budget each); the next `run` redoes them.
    Retry {
        /// The work directory (default: the only one under `runs/`).
        #[arg(long, conflicts_with = "store")]
        workdir: Option<PathBuf>,
        /// The store URL (`postgres://...` or `sqlite://...`).
        #[arg(long)]
        store: Option<String>,
        /// The run name, when the store holds several.
        #[arg(long)]
        run: Option<String>,
        /// Re-queue failed tasks (required: says what is retried).
        #[arg(long, required = true)]
        failed: bool,
        /// Only the failed tasks of this stage.
        #[arg(long)]
        stage: Option<String>,
        /// Only the failed tasks of this error class (as `status` shows them, e.g. `timeout`).
        #[arg(long)]
        error: Option<String>,
    },
    /// Supersede a subcategory's outputs (kept for audit); the next `run` remakes them and
    /// leaves every other subcategory untouched.
    Regen {
        /// The work directory (default: the only one under `runs/`).
        #[arg(long, conflicts_with = "store")]
        workdir: Option<PathBuf>,
        /// The store URL (`postgres://...` or `sqlite://...`).
        #[arg(long)]
        store: Option<String>,
        /// The run name, when the store holds several.
        #[arg(long)]
        run: Option<String>,
        /// The subcategory (id or label).
        #[arg(long)]
        subcategory: String,
        /// Keep the outputs of the stages before this one (default: remake whole samples).
        #[arg(long)]
        from_stage: Option<String>,
    },
    /// Write the accepted samples in the EDIR layout.
    Export {
        /// The pipeline (for the taxonomy and the stage roles).
        pipeline: PathBuf,
        /// The work directory (default: the pipeline's, `runs/<name>`).
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// The store URL (default: the work directory's SQLite file).
        #[arg(long)]
        store: Option<String>,
        /// Where to write the benchmark.
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve the OpenAI-compatible simulator, or write reference scenes with `--scenes N --out DIR`.
    Sim {
        /// Port to listen on (0 picks a free one; the URL is printed).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// Simulator configuration (YAML: seed, models, capacity, faults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Inject every fault kind, mixed, at this total rate (0 to 1).
        #[arg(long)]
        faults: Option<f64>,
        /// Seed of faults, phrasings and edits (overrides the config's).
        #[arg(long)]
        seed: Option<u64>,
        /// Write this many reference scenes instead of serving.
        #[arg(long, requires = "out")]
        scenes: Option<usize>,
        /// Folder for `--scenes`.
        #[arg(long, requires = "scenes")]
        out: Option<PathBuf>,
        /// Image sizes (longer side, pixels) to draw scenes from.
        #[arg(long, value_delimiter = ',', default_value = "256,384,512,768,1024")]
        sizes: Vec<u32>,
    },
    /// Score embedding models on any EDIR-layout benchmark (vectors from files or endpoints).
    Score(ScoreArgs),
}

/// Options of `run`.
#[derive(Debug, clap::Args)]
#[expect(clippy::struct_excessive_bools, reason = "command-line flags")]
pub(crate) struct RunArgs {
    /// The pipeline file.
    pub(crate) pipeline: PathBuf,
    /// Run against the built-in simulator (in process) instead of the pipeline's endpoints.
    #[arg(long)]
    pub(crate) sim: bool,
    /// With `--sim`: inject the simulator's faults at this total rate (0 to 1).
    #[arg(long, requires = "sim")]
    pub(crate) sim_faults: Option<f64>,
    /// With `--sim`: simulator configuration (YAML; e.g. `pipelines/sim-gpu.yaml` for GPU-like
    /// latencies and capacities).
    #[arg(long, requires = "sim")]
    pub(crate) sim_config: Option<PathBuf>,
    /// With `--sim` and no source folder: sizes (longer side, pixels) of the generated scenes.
    #[arg(
        long,
        requires = "sim",
        value_delimiter = ',',
        default_value = "256,320,384"
    )]
    pub(crate) sim_sizes: Vec<u32>,
    /// Reference images: a folder or a JSONL manifest (overrides the pipeline's source).
    #[arg(long)]
    pub(crate) source: Option<PathBuf>,
    /// The work directory (default: the pipeline's, `runs/<name>`).
    #[arg(long)]
    pub(crate) workdir: Option<PathBuf>,
    /// The store URL (default: `sqlite://<workdir>/store.sqlite`).
    #[arg(long)]
    pub(crate) store: Option<String>,
    /// Accepted samples per subcategory (overrides the pipeline's quota).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) quota: Option<u32>,
    /// Run only these subcategories (id or label; repeatable).
    #[arg(long)]
    pub(crate) only: Vec<String>,
    /// Serve Prometheus metrics on this address (e.g. `127.0.0.1:9184`).
    #[arg(long)]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// Most samples in progress at once (default: twice the endpoints' concurrency).
    #[arg(long)]
    pub(crate) max_active: Option<usize>,
    /// Seconds in-flight calls may take to finish after Ctrl-C.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) grace_period: f64,
    /// Skip the export and scoring at the end.
    #[arg(long)]
    pub(crate) no_export: bool,
    /// Skip scoring at the end (the export is still written).
    #[arg(long)]
    pub(crate) no_score: bool,
    /// Start a fresh run instead of resuming (the existing one is kept in the store, archived).
    #[arg(long)]
    pub(crate) new: bool,
}

/// Options of `score`.
#[derive(Debug, clap::Args)]
#[expect(clippy::struct_excessive_bools, reason = "command-line flags")]
pub(crate) struct ScoreArgs {
    /// The benchmark folder (`queries.jsonl`, `corpus.jsonl`, `instances.jsonl`).
    pub(crate) bench: PathBuf,
    /// A folder with `queries.npy` and `corpus.npy` (float32, rows in file order), as
    /// `[NAME=]DIR`; repeat to score several models at once.
    #[arg(long = "embeddings", required_unless_present = "model")]
    pub(crate) embeddings: Vec<String>,
    /// An embedding model served at `URL` (an OpenAI-compatible base URL, `.../v1`); without
    /// `=URL`: `EDIR_EMBED_URL`, else the `--pipeline` endpoint serving that model (or named
    /// so). Repeatable.
    #[arg(long = "model")]
    pub(crate) model: Vec<String>,
    /// The instruction before each query text, `[MODEL=]TEXT` (repeatable; with `MODEL=` for
    /// that model only). Default: the pipeline endpoint's `query_instruction`, else the
    /// official evaluation's.
    #[arg(long = "query-instruction")]
    pub(crate) query_instruction: Vec<String>,
    /// The instruction for corpus images, `[MODEL=]TEXT` (as `--query-instruction`).
    #[arg(long = "corpus-instruction")]
    pub(crate) corpus_instruction: Vec<String>,
    /// A pipeline whose embedding endpoints `--model` names refer to.
    #[arg(long)]
    pub(crate) pipeline: Option<PathBuf>,
    /// Where embeddings are cached (default: `sqlite://runs/score-cache/store.sqlite`).
    #[arg(long)]
    pub(crate) store: Option<String>,
    /// Where to write `results.json`, `results.md` and `predictions.json`.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Images folder (default: `BENCH/images`, else `BENCH`), checked to exist with `--check-images`.
    #[arg(long)]
    pub(crate) images: Option<PathBuf>,
    /// Check that every referenced image exists.
    #[arg(long)]
    pub(crate) check_images: bool,
    /// Rank only each query's own `pos` + `neg` (MMEB-style).
    #[arg(long)]
    pub(crate) candidates_only: bool,
    /// Remove a query's reference image from its own ranking (CIRR-style).
    #[arg(long)]
    pub(crate) exclude_reference: bool,
    /// Rank on the CPU even when a GPU is usable (builds with the `cuda` feature only).
    #[arg(long)]
    pub(crate) cpu: bool,
}
