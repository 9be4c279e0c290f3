//! The stage operators: `chat`, `judge`, `edit` (with fan-out) and `filter`, each turning a
//! claimed task and its sample's context into an output, a verdict, or a classed error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use edir_config::{Operator, Pipeline, Stage};
use edir_model::{ChatRequest, EditRequest, Endpoint, Message, Part, Role, SchemaCheck};
use edir_store::ArtifactStore;
use serde_json::{Value, json};

use crate::context::{self, SampleContext};
use crate::source;

/// What a finished task means for its sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The sample goes on.
    Continue,
    /// A judge or filter rejected the sample, with the reason.
    Reject(String),
}

/// A task's result.
#[derive(Debug, Clone)]
pub struct TaskOutput {
    /// JSON output.
    pub json: Value,
    /// Output artifact (an edited image).
    pub artifact: Option<String>,
    /// Whether the task was skipped (a fan-out item without input); no call was made.
    pub skipped: bool,
    /// The replica that answered.
    pub replica: Option<String>,
    /// Latency of the call.
    pub latency_ms: Option<i64>,
    /// Prompt tokens.
    pub prompt_tokens: Option<i64>,
    /// Completion tokens.
    pub completion_tokens: Option<i64>,
    /// Accept or reject.
    pub verdict: Verdict,
}

impl TaskOutput {
    fn local(json: Value, verdict: Verdict) -> Self {
        Self {
            json,
            artifact: None,
            skipped: false,
            replica: None,
            latency_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            verdict,
        }
    }
}

/// A task that failed for good (the endpoint already retried what could be retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// The class, e.g. `timeout`, `http_500`, `invalid_output`, `template`, `filter`.
    pub class: String,
    /// What happened (never a secret).
    pub message: String,
}

impl TaskError {
    fn new(class: &str, message: impl Into<String>) -> Self {
        Self {
            class: class.to_string(),
            message: message.into(),
        }
    }
}

impl From<edir_model::ModelError> for TaskError {
    fn from(error: edir_model::ModelError) -> Self {
        Self {
            class: error.class(),
            message: error.to_string(),
        }
    }
}

/// Everything the operators need, shared by all tasks.
pub struct Operators {
    pipeline: Arc<Pipeline>,
    endpoints: HashMap<String, Arc<Endpoint>>,
    artifacts: ArtifactStore,
    schemas: HashMap<String, SchemaCheck>,
    items: HashMap<String, i64>,
    filters: Arc<minijinja::Environment<'static>>,
    /// Per stage, the top-level variables its templates and fan-out read (`None`: all of them,
    /// for a filter, whose expression may name anything).
    reads: HashMap<String, Option<HashSet<String>>>,
}

impl std::fmt::Debug for Operators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operators")
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Operators {
    /// Prepares the operators: schema validators, the filter environment.
    ///
    /// # Errors
    /// A message when a schema cannot be compiled (the config checked it, so this is rare).
    pub fn new(
        pipeline: Arc<Pipeline>,
        endpoints: HashMap<String, Arc<Endpoint>>,
        artifacts: ArtifactStore,
        items: HashMap<String, i64>,
    ) -> Result<Self, String> {
        let mut schemas = HashMap::new();
        for stage in &pipeline.stages {
            if let Some(schema) = &stage.schema {
                let check = SchemaCheck::new(&schema.value)
                    .map_err(|e| format!("stage `{}`: schema: {e}", stage.id))?;
                schemas.insert(stage.id.clone(), check);
            }
        }
        let filters = Arc::new(filter_environment(artifacts.clone()));
        let reads = pipeline
            .stages
            .iter()
            .map(|stage| (stage.id.clone(), stage_reads(stage)))
            .collect();
        Ok(Self {
            pipeline,
            endpoints,
            artifacts,
            schemas,
            items,
            filters,
            reads,
        })
    }

    /// Items per stage.
    #[must_use]
    pub fn items(&self) -> &HashMap<String, i64> {
        &self.items
    }

    /// Runs one task of `stage` for `context`.
    ///
    /// # Errors
    /// A classed [`TaskError`] when the task failed for good.
    pub async fn run(
        &self,
        stage: &Stage,
        item: i64,
        context: &SampleContext,
    ) -> Result<TaskOutput, TaskError> {
        let dims = context
            .reference_dims(&self.artifacts)
            .map_err(|e| TaskError::new("artifact", e.to_string()))?;
        let reads = self.reads.get(&stage.id).and_then(Option::as_ref);
        let mut vars = context::variables(&self.pipeline, &self.items, context, dims, reads);
        let mut item_value = None;
        if let Some(field) = &stage.for_each {
            let value = vars
                .get(&field.stage)
                .and_then(|o| o.get(&field.field))
                .and_then(Value::as_array)
                .and_then(|list| usize::try_from(item).ok().and_then(|i| list.get(i)))
                .cloned();
            let Some(value) = value else {
                return Ok(TaskOutput {
                    skipped: true,
                    ..TaskOutput::local(Value::Null, Verdict::Continue)
                });
            };
            vars["item"] = value.clone();
            item_value = Some(value);
        }
        let seed = u64::try_from(context.seed)
            .unwrap_or(0)
            .wrapping_add(u64::try_from(item).unwrap_or(0));
        match &stage.op {
            Operator::Chat { endpoint } => self.chat(stage, endpoint, &vars, context, seed).await,
            Operator::Judge { endpoint } => {
                let mut output = self.chat(stage, endpoint, &vars, context, seed).await?;
                output.verdict = judge_verdict(&output.json);
                Ok(output)
            }
            Operator::Edit { endpoint, image } => {
                self.edit(stage, endpoint, image, &vars, context, seed, item_value)
                    .await
            }
            Operator::Filter { expression } => {
                let env = self.filters.clone();
                let expression = expression.clone();
                let reason = stage.reason.clone();
                tokio::task::spawn_blocking(move || filter(&env, &expression, reason, &vars))
                    .await
                    .map_err(|e| TaskError::new("internal", e.to_string()))?
            }
        }
    }

    fn endpoint(&self, name: &str) -> Result<&Arc<Endpoint>, TaskError> {
        self.endpoints
            .get(name)
            .ok_or_else(|| TaskError::new("internal", format!("endpoint `{name}` not connected")))
    }

    async fn chat(
        &self,
        stage: &Stage,
        endpoint: &str,
        vars: &Value,
        context: &SampleContext,
        seed: u64,
    ) -> Result<TaskOutput, TaskError> {
        let endpoint = self.endpoint(endpoint)?;
        let mut messages = Vec::new();
        if let Some(system) = &stage.system {
            let text = system
                .template
                .render(vars)
                .map_err(|e| TaskError::new("template", e.to_string()))?;
            messages.push(Message::text(Role::System, text));
        }
        let mut parts = Vec::new();
        for image in &stage.images {
            for hash in context::image_hashes(image, &self.items, context) {
                let (bytes, mime) = context::read_image(&self.artifacts, &hash)
                    .map_err(|e| TaskError::new("artifact", e.to_string()))?;
                parts.push(Part::Image {
                    bytes,
                    mime: mime.to_string(),
                });
            }
        }
        if let Some(prompt) = &stage.prompt {
            let text = prompt
                .template
                .render(vars)
                .map_err(|e| TaskError::new("template", e.to_string()))?;
            parts.push(Part::Text(text));
        }
        messages.push(Message {
            role: Role::User,
            parts,
        });
        let s = &stage.sampling;
        let request = ChatRequest {
            messages,
            schema: stage
                .schema
                .as_ref()
                .map(|schema| (schema.name.clone(), schema.value.clone())),
            temperature: s.temperature,
            top_p: s.top_p,
            max_tokens: s.max_tokens,
            presence_penalty: s.presence_penalty,
            repetition_penalty: s.repetition_penalty,
            seed: Some(seed),
            thinking: s.thinking,
            ..ChatRequest::default()
        };
        let (json, reply, prompt_tokens, completion_tokens) = match self.schemas.get(&stage.id) {
            Some(check) => {
                let structured = endpoint.chat_json(&request, check).await?;
                (
                    structured.value,
                    structured.reply,
                    structured.prompt_tokens,
                    structured.completion_tokens,
                )
            }
            None => {
                let reply = endpoint.chat(&request).await?;
                let json = json!({"text": reply.content, "reasoning": reply.reasoning});
                let (p, c) = (reply.prompt_tokens, reply.completion_tokens);
                (json, reply, p, c)
            }
        };
        Ok(TaskOutput {
            json,
            artifact: None,
            skipped: false,
            replica: Some(reply.replica),
            latency_ms: Some(millis(reply.latency)),
            prompt_tokens: i64::try_from(prompt_tokens).ok(),
            completion_tokens: i64::try_from(completion_tokens).ok(),
            verdict: Verdict::Continue,
        })
    }

    #[expect(clippy::too_many_arguments, reason = "one task's inputs")]
    async fn edit(
        &self,
        stage: &Stage,
        endpoint: &str,
        image: &edir_config::ImageRef,
        vars: &Value,
        context: &SampleContext,
        seed: u64,
        item: Option<Value>,
    ) -> Result<TaskOutput, TaskError> {
        let endpoint = self.endpoint(endpoint)?;
        let hash = context::image_hashes(image, &self.items, context)
            .into_iter()
            .next()
            .ok_or_else(|| TaskError::new("internal", "the image to edit is missing"))?;
        let (bytes, mime) = context::read_image(&self.artifacts, &hash)
            .map_err(|e| TaskError::new("artifact", e.to_string()))?;
        let prompt = match &stage.prompt {
            Some(prompt) => prompt
                .template
                .render(vars)
                .map_err(|e| TaskError::new("template", e.to_string()))?,
            None => String::new(),
        };
        let s = &stage.sampling;
        let file_name = format!("image.{}", source::extension_of(&bytes));
        let request = EditRequest {
            // The only reference to the bytes: moved, not copied.
            image: bytes::Bytes::from(
                Arc::try_unwrap(bytes).unwrap_or_else(|b| b.as_ref().clone()),
            ),
            file_name,
            mime: mime.to_string(),
            prompt,
            seed: Some(seed),
            steps: s.steps,
            guidance: s.guidance,
            size: s.size.clone(),
            negative_prompt: s.negative_prompt.clone(),
        };
        let reply = endpoint.edit(&request).await?;
        if source::dimensions(&reply.image).is_none() {
            return Err(TaskError::new(
                "bad_image",
                format!(
                    "endpoint `{}` returned {} bytes that are not a readable image",
                    endpoint.config.name,
                    reply.image.len()
                ),
            ));
        }
        // Writing the file blocks (briefly: durability waits for the writer's sync): a small
        // one is written right here, a large one off the async workers.
        let image = reply.image;
        let artifact = if image.len() <= INLINE_PUT_BYTES {
            self.artifacts.put(&image)
        } else {
            let artifacts = self.artifacts.clone();
            tokio::task::spawn_blocking(move || artifacts.put(&image))
                .await
                .map_err(|e| TaskError::new("internal", e.to_string()))?
        }
        .map_err(|e| TaskError::new("artifact", e.to_string()))?;
        let mut json = json!({"image": artifact});
        if let Some(item) = item {
            json["item"] = item;
        }
        Ok(TaskOutput {
            json,
            artifact: Some(artifact),
            skipped: false,
            replica: Some(reply.replica),
            latency_ms: Some(millis(reply.latency)),
            prompt_tokens: None,
            completion_tokens: None,
            verdict: Verdict::Continue,
        })
    }
}

/// The top-level variables `stage` reads: its templates' names and its fan-out's stage;
/// `None` (all) for a filter.
fn stage_reads(stage: &Stage) -> Option<HashSet<String>> {
    if matches!(stage.op, Operator::Filter { .. }) {
        return None;
    }
    let mut reads: HashSet<String> = [&stage.system, &stage.prompt]
        .into_iter()
        .flatten()
        .flat_map(|prompt| prompt.template.heads().iter().cloned())
        .collect();
    if let Some(field) = &stage.for_each {
        reads.insert(field.stage.clone());
    }
    Some(reads)
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A judge's reply: `verdict` "accept" (or `true`) continues; anything else rejects with the
/// judge's `reason`.
fn judge_verdict(reply: &Value) -> Verdict {
    let accepted = match reply.get("verdict") {
        Some(Value::String(v)) => v.eq_ignore_ascii_case("accept"),
        Some(Value::Bool(b)) => *b,
        _ => false,
    };
    if accepted {
        Verdict::Continue
    } else {
        let reason = reply
            .get("reason")
            .and_then(Value::as_str)
            .filter(|r| !r.trim().is_empty())
            .unwrap_or("rejected by the judge");
        Verdict::Reject(reason.to_string())
    }
}

fn filter(
    env: &minijinja::Environment<'static>,
    expression: &str,
    reason: Option<String>,
    vars: &Value,
) -> Result<TaskOutput, TaskError> {
    let compiled = env
        .compile_expression(expression)
        .map_err(|e| TaskError::new("filter", format!("`{expression}`: {e}")))?;
    let value = compiled
        .eval(minijinja::Value::from(minijinja::value::Serde(vars)))
        .map_err(|e| TaskError::new("filter", format!("`{expression}`: {e}")))?;
    let passed = value.is_true();
    let json_value = serde_json::to_value(&value).unwrap_or(Value::Null);
    let verdict = if passed {
        Verdict::Continue
    } else {
        Verdict::Reject(reason.unwrap_or_else(|| format!("filter `{expression}` is false")))
    };
    Ok(TaskOutput::local(
        json!({"passed": passed, "value": json_value}),
        verdict,
    ))
}

/// The environment filter expressions run in, with `image_distance(a, b)`: the share of pixels
/// that visibly changed, in [0, 1] (see [`image_distance`]). Images are artifact hashes, or objects with a `hash` field (`reference`).
fn filter_environment(artifacts: ArtifactStore) -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_function(
        "image_distance",
        move |a: minijinja::Value, b: minijinja::Value| -> Result<f64, minijinja::Error> {
            let load = |v: &minijinja::Value| -> Result<image::RgbImage, minijinja::Error> {
                let hash = match v.as_str() {
                    Some(h) => h.to_string(),
                    None => v
                        .get_attr("hash")?
                        .as_str()
                        .map(ToString::to_string)
                        .ok_or_else(|| {
                            minijinja::Error::new(
                                minijinja::ErrorKind::InvalidOperation,
                                "image_distance takes images (an edit's `image`, or `reference`)",
                            )
                        })?,
                };
                let bytes = artifacts.get(&hash).map_err(|e| {
                    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
                })?;
                image::load_from_memory(&bytes)
                    .map(|i| i.to_rgb8())
                    .map_err(|e| {
                        minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            format!("cannot decode image `{hash}`: {e}"),
                        )
                    })
            };
            Ok(image_distance(&load(&a)?, &load(&b)?))
        },
    );
    env
}

/// Edited images up to this size are stored on the async thread (see `edit`).
const INLINE_PUT_BYTES: usize = 64 * 1024;

/// A pixel counts as changed when some channel differs by more than this (of 255): well
/// above JPEG and resampling noise, well below any visible edit.
const CHANGED_PIXEL: u8 = 24;

/// The share of pixels that visibly changed between two RGB images, in [0, 1] (the second is
/// resized to the first's size when they differ). A mean difference would call a clear edit
/// of one small object "nearly identical"; the share of changed pixels does not.
#[must_use]
pub fn image_distance(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let resized;
    let b = if a.dimensions() == b.dimensions() {
        b
    } else {
        resized = image::imageops::resize(
            b,
            a.width(),
            a.height(),
            image::imageops::FilterType::Triangle,
        );
        &resized
    };
    let changed = a
        .pixels()
        .zip(b.pixels())
        .filter(|(p, q)| {
            p.0.iter()
                .zip(q.0.iter())
                .any(|(x, y)| x.abs_diff(*y) > CHANGED_PIXEL)
        })
        .count();
    let n = (a.width() as usize * a.height() as usize).max(1);
    #[expect(clippy::cast_precision_loss, reason = "a ratio")]
    let distance = changed as f64 / n as f64;
    distance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_reads_its_templates_names_and_its_fan_out_and_a_filter_reads_all() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/full.yaml");
        let pipeline = edir_config::compile_file(&path)
            .pipeline
            .expect("full.yaml compiles");
        let reads = |id: &str| stage_reads(pipeline.stages.iter().find(|s| s.id == id).unwrap());
        let query = reads("query").unwrap();
        assert!(query.contains("instruct"), "{query:?}");
        assert!(
            !query.contains("judge_edit") && !query.contains("negatives"),
            "{query:?}"
        );
        // `negatives` fans out over `instruct.extra_changes` and renders `item`.
        let negatives = reads("negatives").unwrap();
        assert!(
            negatives.contains("instruct") && negatives.contains("item"),
            "{negatives:?}"
        );
        assert_eq!(reads("no_op"), None);
        assert_eq!(reads("feasible"), None);
        // Every name a template reads is among them.
        for stage in &pipeline.stages {
            if let Some(reads) = stage_reads(stage) {
                for prompt in [&stage.system, &stage.prompt].into_iter().flatten() {
                    assert!(
                        prompt
                            .template
                            .heads()
                            .is_subset(&reads.iter().cloned().collect())
                    );
                }
            }
        }
    }

    #[test]
    fn judges_accept_only_an_explicit_accept() {
        assert_eq!(
            judge_verdict(&json!({"verdict": "accept", "reason": "ok"})),
            Verdict::Continue
        );
        assert_eq!(
            judge_verdict(&json!({"verdict": "reject", "reason": "the car is still blue"})),
            Verdict::Reject("the car is still blue".into())
        );
        assert_eq!(
            judge_verdict(&json!({"reason": ""})),
            Verdict::Reject("rejected by the judge".into())
        );
    }

    #[test]
    fn image_distance_is_the_share_of_visibly_changed_pixels() {
        let black = image::RgbImage::new(8, 8);
        let white = image::RgbImage::from_pixel(4, 4, image::Rgb([255, 255, 255]));
        assert!(image_distance(&black, &black).abs() < 1e-12);
        assert!((image_distance(&black, &white) - 1.0).abs() < 1e-12);
        let mut noisy = black.clone();
        noisy.put_pixel(0, 0, image::Rgb([10, 10, 10]));
        assert!(
            image_distance(&black, &noisy).abs() < 1e-12,
            "noise is no change"
        );
        let mut one = black.clone();
        for x in 0..4 {
            one.put_pixel(x, 0, image::Rgb([200, 0, 0]));
        }
        assert!((image_distance(&black, &one) - 4.0 / 64.0).abs() < 1e-12);
    }
}
