//! The validated pipeline: what the engine runs. Every reference is resolved, every file loaded.
//!
//! Invariants: `stages` is in a topological order of `needs` (file order among equals); every
//! endpoint a stage names exists and is used for one API only; every template variable is
//! provided by the sample or an upstream stage; `hash` is the BLAKE3 of the canonical JSON of
//! everything that affects outputs (templates and schemas by content, not by path).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use edir_prompt::Template;
use serde::Serialize;

use crate::taxonomy::{Subcategory, Taxonomy};

/// A validated pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    /// The run name; also the default work directory `runs/<name>`.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The pipeline file as given on the command line.
    #[serde(skip)]
    pub path: PathBuf,
    /// The pipeline YAML exactly as written (stored with the run).
    #[serde(skip)]
    pub text: String,
    /// Canonical hash (see the module docs).
    #[serde(skip)]
    pub hash: String,
    /// Master seed; each sample's seed derives from it.
    pub seed: u64,
    /// Work directory (relative paths are relative to the current directory).
    #[serde(skip)]
    pub workdir: PathBuf,
    /// Store URL; `None` means `sqlite://<workdir>/store.sqlite`.
    #[serde(skip)]
    pub store: Option<String>,
    /// The taxonomy.
    pub taxonomy: Taxonomy,
    /// Ids of the subcategories this pipeline synthesizes, in taxonomy order.
    pub subcategories: Vec<String>,
    /// Where reference images come from.
    pub source: Source,
    /// Accepted samples wanted, and limits.
    pub quota: Quota,
    /// Default retry policy (endpoints may override).
    pub retry: RetryPolicy,
    /// Endpoints by name.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Stages in topological order.
    pub stages: Vec<Stage>,
    /// Which embedding endpoints score the export.
    pub score: Score,
}

impl Pipeline {
    /// The stage with this id.
    #[must_use]
    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// The subcategories synthesized, in order.
    pub fn selected_subcategories(&self) -> impl Iterator<Item = &Subcategory> {
        self.subcategories
            .iter()
            .filter_map(|id| self.taxonomy.find(id))
    }

    /// The accepted quota for a subcategory id.
    #[must_use]
    pub fn quota_for(&self, subcategory: &str) -> u32 {
        self.quota
            .overrides
            .get(subcategory)
            .copied()
            .unwrap_or(self.quota.per_subcategory)
    }

    /// Total accepted samples wanted.
    #[must_use]
    pub fn total_quota(&self) -> u64 {
        self.subcategories
            .iter()
            .map(|s| u64::from(self.quota_for(s)))
            .sum()
    }
}

/// Where reference images come from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Source {
    /// A folder (read recursively) or a JSONL manifest.
    pub kind: SourceKind,
    /// Longest side, in pixels, an image is downscaled to before it is sent.
    pub max_side: u32,
    /// Files larger than this are recorded and skipped.
    pub max_file_mb: f64,
    /// Whether a reference may be reused within one subcategory before the pool runs out.
    pub reuse_per_subcategory: bool,
}

/// The two kinds of source.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A folder of images, searched recursively.
    Folder(PathBuf),
    /// A JSONL file, one `{"image": PATH, ...}` per line.
    Manifest(PathBuf),
}

/// Quotas.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quota {
    /// Accepted samples per subcategory.
    pub per_subcategory: u32,
    /// Per-subcategory exceptions, by subcategory id.
    pub overrides: BTreeMap<String, u32>,
    /// At most `overgenerate x quota` samples are drawn per subcategory.
    pub overgenerate: f64,
    /// Hard negatives per query.
    pub negatives: u32,
}

/// Retries of one model call.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// First back-off; doubles each try, with full jitter.
    pub initial_backoff_ms: u64,
    /// Cap on one back-off.
    pub max_backoff_ms: u64,
    /// Overall deadline of one task, all tries together.
    pub task_deadline_s: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            task_deadline_s: 1800.0,
        }
    }
}

/// Which API an endpoint serves; decided by how the pipeline uses it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `/v1/chat/completions` (chat and judge stages).
    Chat,
    /// `/v1/images/edits` (edit stages).
    ImageEdit,
    /// `/v1/embeddings` (scoring).
    Embeddings,
    /// Declared but not used by this pipeline.
    Unused,
}

/// One logical endpoint: a model served by one or more replicas.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// The name stages use.
    pub name: String,
    /// Model id sent in requests and checked against `/v1/models`.
    pub model: String,
    /// Replica base URLs from the pipeline (`.../v1`).
    #[serde(skip)]
    pub urls: Vec<String>,
    /// Environment variable that overrides `urls` (comma-separated).
    #[serde(skip)]
    pub url_env: String,
    /// Environment variable holding the API key, if any. The key itself is never stored.
    #[serde(skip)]
    pub api_key_env: Option<String>,
    /// Upper bound on concurrent requests (all replicas together).
    pub max_in_flight: u32,
    /// Floor of the adaptive concurrency limit.
    pub min_in_flight: u32,
    /// Per-request timeout.
    pub timeout_s: f64,
    /// GPUs behind this endpoint, for cost accounting.
    #[serde(skip)]
    pub gpus: Option<f64>,
    /// Price of one GPU-hour, for cost accounting.
    #[serde(skip)]
    pub gpu_hour_usd: Option<f64>,
    /// Optional request rate limit for hosted APIs.
    #[serde(skip)]
    pub requests_per_minute: Option<u32>,
    /// Optional token rate limit for hosted APIs.
    #[serde(skip)]
    pub tokens_per_minute: Option<u32>,
    /// Retry policy of calls to this endpoint.
    #[serde(skip)]
    pub retry: RetryPolicy,
    /// For an embedding model being scored: the instruction before each query (default: the
    /// official evaluation's).
    #[serde(skip)]
    pub query_instruction: Option<String>,
    /// For an embedding model being scored: the instruction for corpus images.
    #[serde(skip)]
    pub corpus_instruction: Option<String>,
    /// What the pipeline uses it for.
    pub api: Api,
}

impl Endpoint {
    /// The replica URLs in effect: the environment variable's comma-separated list when it is
    /// set and not empty, else the pipeline's.
    pub fn effective_urls(&self, lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
        match lookup(&self.url_env) {
            Some(value) if !value.trim().is_empty() => value
                .split(',')
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            _ => self.urls.clone(),
        }
    }
}

/// A stage: one model call (or check) per sample, or per item for fan-out stages.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// The stage id (`instruct`).
    pub id: String,
    /// What it does.
    pub op: Operator,
    /// Direct dependencies.
    pub needs: Vec<String>,
    /// The user-message template (chat, judge) or the edit prompt (edit).
    pub prompt: Option<Prompt>,
    /// An optional system-message template.
    pub system: Option<Prompt>,
    /// The JSON schema the reply must satisfy.
    pub schema: Option<Schema>,
    /// Images sent with a chat or judge call, in order.
    pub images: Vec<ImageRef>,
    /// Fan-out: one task per element of this upstream list field.
    pub for_each: Option<FieldRef>,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Rejection reason recorded when a filter fails.
    pub reason: Option<String>,
    /// BLAKE3 of this stage's canonical definition (part of every task's cache key).
    pub definition_hash: String,
}

/// The operator of a stage.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Operator {
    /// A chat call whose reply is parsed as JSON (with a schema) or kept as text.
    Chat {
        /// Endpoint name.
        endpoint: String,
    },
    /// A chat call whose `verdict` accepts or rejects the sample.
    Judge {
        /// Endpoint name.
        endpoint: String,
    },
    /// An image edit of `image`.
    Edit {
        /// Endpoint name.
        endpoint: String,
        /// The image to edit.
        image: ImageRef,
    },
    /// An expression over earlier outputs; false rejects the sample.
    Filter {
        /// A minijinja expression, e.g. `image_distance(reference, target.image) > 0.02`.
        expression: String,
    },
}

impl Operator {
    /// The endpoint the stage calls, if any.
    #[must_use]
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Self::Chat { endpoint } | Self::Judge { endpoint } | Self::Edit { endpoint, .. } => {
                Some(endpoint)
            }
            Self::Filter { .. } => None,
        }
    }

    /// `chat`, `judge`, `edit` or `filter`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Chat { .. } => "chat",
            Self::Judge { .. } => "judge",
            Self::Edit { .. } => "edit",
            Self::Filter { .. } => "filter",
        }
    }
}

/// A loaded template.
#[derive(Debug, Clone, Serialize)]
pub struct Prompt {
    /// The file it came from; `None` for inline templates.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// Content hash of the template text.
    pub hash: String,
    /// The parsed template.
    #[serde(skip)]
    pub template: Arc<Template>,
}

/// A loaded JSON schema.
#[derive(Debug, Clone, Serialize)]
pub struct Schema {
    /// The file.
    #[serde(skip)]
    pub path: PathBuf,
    /// The schema's `title`, or the file stem: the name sent as `json_schema.name`.
    pub name: String,
    /// Content hash of the file.
    pub hash: String,
    /// The schema.
    #[serde(skip)]
    pub value: serde_json::Value,
}

/// An image input: the sample's reference, or an edit stage's output(s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageRef {
    /// The reference image.
    Reference,
    /// `stage.image` (one) or `stage.images` (all items of a fan-out stage).
    Stage {
        /// The edit stage.
        stage: String,
        /// Whether all items (`images`) or the single output (`image`).
        many: bool,
    },
}

/// `stage.field`: a field of an upstream stage's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldRef {
    /// The stage.
    pub stage: String,
    /// The field.
    pub field: String,
}

/// Sampling parameters; `None` leaves the server's default.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Sampling {
    /// Chat temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
    /// Presence penalty.
    pub presence_penalty: Option<f64>,
    /// vLLM repetition penalty.
    pub repetition_penalty: Option<f64>,
    /// Qwen3 thinking mode (`chat_template_kwargs.enable_thinking`).
    pub thinking: Option<bool>,
    /// Diffusion steps for edits.
    pub steps: Option<u32>,
    /// Guidance scale for edits (`true_cfg_scale`).
    pub guidance: Option<f64>,
    /// Output size for edits, `WxH`.
    pub size: Option<String>,
    /// Negative prompt for edits.
    pub negative_prompt: Option<String>,
}

/// Scoring after export.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Score {
    /// Embedding endpoints to score.
    pub models: Vec<String>,
    /// Recall cut-offs.
    pub k: Vec<u32>,
}
