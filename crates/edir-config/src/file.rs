//! The pipeline file as written: every section with spans, before any reference is resolved.
//!
//! Only [`crate::Pipeline`] (validated) leaves this crate; these types exist so that the
//! compiler can point at the key or value at fault.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::source::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceSection {
    #[serde(default)]
    pub(crate) images: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) manifest: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) max_side: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) max_file_mb: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) reuse_per_subcategory: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuotaSection {
    pub(crate) per_subcategory: Spanned<i64>,
    #[serde(default)]
    pub(crate) overrides: BTreeMap<Spanned<String>, Spanned<i64>>,
    #[serde(default)]
    pub(crate) overgenerate: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) negatives: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrySection {
    #[serde(default)]
    pub(crate) attempts: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) initial_backoff_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) max_backoff_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) task_deadline_s: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointSection {
    pub(crate) model: Spanned<String>,
    pub(crate) urls: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) url_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) api_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) max_in_flight: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) min_in_flight: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) timeout_s: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) gpus: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) gpu_hour_usd: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) requests_per_minute: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) tokens_per_minute: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) retry: Option<Spanned<RetrySection>>,
    #[serde(default)]
    pub(crate) query_instruction: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) corpus_instruction: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct SamplingSection {
    #[serde(default)]
    pub(crate) temperature: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) top_p: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) max_tokens: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) presence_penalty: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) repetition_penalty: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) thinking: Option<bool>,
    #[serde(default)]
    pub(crate) steps: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) guidance: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) size: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) negative_prompt: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StageSection {
    #[serde(default)]
    pub(crate) chat: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) judge: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) edit: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) filter: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) needs: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) prompt: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) template: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) system: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) schema: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) images: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) image: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) for_each: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) sampling: Option<SamplingSection>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScoreSection {
    #[serde(default)]
    pub(crate) models: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) k: Option<Spanned<Vec<i64>>>,
}
