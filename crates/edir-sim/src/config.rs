//! Simulator configuration: which model names it answers to, each model's capacity (slots,
//! queue, service time) and fault rates. `edir-synth sim --config FILE` reads it from YAML;
//! the defaults answer to the model names of `pipelines/full.yaml` at zero latency.

use serde::{Deserialize, Serialize};

use crate::embed::EmbedStyle;

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/images/edits`.
    Edit,
    /// `/v1/embeddings`.
    Embed,
}

/// Fault rates (each a probability per request, drawn from the model's seeded stream).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// 429 with `Retry-After`.
    pub rate_limit: f64,
    /// 500.
    pub server_error: f64,
    /// 503 with `Retry-After`.
    pub unavailable: f64,
    /// Hold the request far past any client timeout.
    pub hang: f64,
    /// Send headers and part of the body, then cut the connection.
    pub cut: f64,
    /// Reply content that is not JSON at all.
    pub invalid_json: f64,
    /// Reply content that is JSON cut short.
    pub truncated_json: f64,
    /// Reply JSON that violates the schema (a required field missing).
    pub schema_violation: f64,
    /// Reply JSON wrapped in a Markdown code fence.
    pub code_fence: f64,
    /// Instruction writer: claim the edit is infeasible.
    pub infeasible: f64,
    /// Editor: change the wrong thing.
    pub wrong_edit: f64,
    /// Seconds a `Retry-After` asks for.
    pub retry_after_s: u64,
    /// Seconds a hung request is held.
    pub hang_s: u64,
}

impl Faults {
    /// Every kind at an equal share of `total` (what `--faults RATE` sets).
    #[must_use]
    pub fn mixed(total: f64) -> Self {
        let each = total / 11.0;
        Self {
            rate_limit: each,
            server_error: each,
            unavailable: each,
            hang: each,
            cut: each,
            invalid_json: each,
            truncated_json: each,
            schema_violation: each,
            code_fence: each,
            infeasible: each,
            wrong_edit: each,
            retry_after_s: 1,
            hang_s: 600,
        }
    }
}

/// A model's capacity: like a GPU server, `slots` requests run at once, up to `queue` more
/// wait, the rest get 503; each takes `base_ms` plus a part per token or per megapixel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capacity {
    /// Concurrent requests (the batch limit).
    pub slots: usize,
    /// Requests that may wait for a slot.
    pub queue: usize,
    /// Fixed service time.
    pub base_ms: f64,
    /// Service time per completion token (chat).
    pub per_token_ms: f64,
    /// Service time per output megapixel (edits).
    pub per_megapixel_ms: f64,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            slots: 4096,
            queue: 65_536,
            base_ms: 0.0,
            per_token_ms: 0.0,
            per_megapixel_ms: 0.0,
        }
    }
}

/// One simulated model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The `model` name it answers to.
    pub name: String,
    /// What it serves.
    pub role: Role,
    /// For embedding models: how they read queries.
    #[serde(default)]
    pub embed_style: Option<EmbedStyle>,
    /// For embedding models: dimension.
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// For embedding models: noise level (0 = none).
    #[serde(default = "default_noise")]
    pub noise: f32,
    /// Capacity.
    #[serde(default)]
    pub capacity: Capacity,
    /// Faults.
    #[serde(default)]
    pub faults: Faults,
}

fn default_dim() -> usize {
    256
}
fn default_noise() -> f32 {
    0.35
}

/// The whole simulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of every random choice (faults, phrasings, edits).
    #[serde(default)]
    pub seed: u64,
    /// The models.
    pub models: Vec<ModelConfig>,
}

impl SimConfig {
    fn model(name: &str, role: Role) -> ModelConfig {
        ModelConfig {
            name: name.to_string(),
            role,
            embed_style: None,
            dim: default_dim(),
            noise: default_noise(),
            capacity: Capacity::default(),
            faults: Faults::default(),
        }
    }

    /// Answers to the models of `pipelines/full.yaml`, plus two extra embedding models of
    /// different strength (`sim/embed-image`, `sim/embed-compose`), at zero latency, no faults.
    #[must_use]
    pub fn default_models() -> Self {
        let mut embed = Self::model("Qwen/Qwen3-VL-Embedding-8B", Role::Embed);
        embed.embed_style = Some(EmbedStyle::Compose);
        let mut image = Self::model("sim/embed-image", Role::Embed);
        image.embed_style = Some(EmbedStyle::Image);
        let mut compose = Self::model("sim/embed-compose", Role::Embed);
        compose.embed_style = Some(EmbedStyle::Compose);
        compose.noise = 0.2;
        Self {
            seed: 0,
            models: vec![
                Self::model("Qwen/Qwen2.5-VL-32B-Instruct", Role::Chat),
                Self::model("Qwen/Qwen3-32B", Role::Chat),
                Self::model("Qwen/Qwen-Image-Edit", Role::Edit),
                embed,
                image,
                compose,
            ],
        }
    }

    /// Sets every model's faults to `Faults::mixed(rate)`.
    #[must_use]
    pub fn with_faults(mut self, rate: f64) -> Self {
        for model in &mut self.models {
            model.faults = Faults::mixed(rate);
        }
        self
    }

    /// Parses YAML.
    ///
    /// # Errors
    /// The parser's message, with its location.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }
}
