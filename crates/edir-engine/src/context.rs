//! What a task sees: its sample (reference, subcategory, seed) and the outputs of the stages
//! before it, kept in memory for active samples so handing work on costs no store read.
//!
//! The cache is an optimisation, never the record: a sample missing from it (a resumed run, a
//! task another host finished) is loaded from the store, and an output the cache lacks is
//! looked up there before a task gives up on it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use edir_config::{ImageRef, Pipeline};
use edir_store::{ArtifactStore, SampleId, Store, TaskState};
use serde_json::{Value, json};

use crate::error::EngineError;
use crate::source;

/// A finished task's output as later stages see it.
#[derive(Debug, Clone)]
pub struct Output {
    /// The JSON output (`null` for a skipped task).
    pub json: Value,
    /// The artifact (an edited image), if any.
    pub artifact: Option<String>,
    /// Whether the task was skipped (a fan-out item without input).
    pub skipped: bool,
}

/// The seed a sample's tasks use: its drawn seed, mixed with its generation after a `regen`, so
/// a regenerated sample gets fresh samples from the models, not the same ones again.
#[must_use]
pub fn effective_seed(seed: i64, generation: i64) -> i64 {
    if generation == 0 {
        return seed;
    }
    #[expect(clippy::cast_possible_wrap, reason = "a bit pattern for mixing")]
    let mix = generation.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64);
    (seed ^ mix) & i64::MAX
}

/// An active sample.
#[derive(Debug)]
pub struct SampleContext {
    /// Its id.
    pub id: SampleId,
    /// Subcategory id.
    pub subcategory: String,
    /// Its seed.
    pub seed: i64,
    /// Reference artifact hash.
    pub reference: String,
    /// Reference source name.
    pub reference_name: String,
    /// The reference's width and height, read once per sample.
    dims: OnceLock<Option<(u32, u32)>>,
    /// Stage -> item -> output (nested, so a lookup by `&str` allocates nothing).
    outputs: Mutex<HashMap<String, HashMap<i64, Output>>>,
}

impl SampleContext {
    /// A new context with no outputs yet.
    #[must_use]
    pub fn new(
        id: SampleId,
        subcategory: String,
        seed: i64,
        reference: String,
        reference_name: String,
    ) -> Self {
        Self {
            id,
            subcategory,
            seed,
            reference,
            reference_name,
            dims: OnceLock::new(),
            outputs: Mutex::new(HashMap::new()),
        }
    }

    /// The reference's width and height (`None` when its header cannot be read), read from
    /// the artifact the first time a task of this sample asks.
    ///
    /// # Errors
    /// The store's error when the artifact cannot be read.
    pub fn reference_dims(
        &self,
        artifacts: &ArtifactStore,
    ) -> Result<Option<(u32, u32)>, edir_store::StoreError> {
        if let Some(dims) = self.dims.get() {
            return Ok(*dims);
        }
        let dims = source::dimensions(&artifacts.get(&self.reference)?);
        Ok(*self.dims.get_or_init(|| dims))
    }

    /// Records an output.
    pub fn put(&self, stage: &str, item: i64, output: Output) {
        self.outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(stage.to_string())
            .or_default()
            .insert(item, output);
    }

    /// An output, if known.
    #[must_use]
    pub fn get(&self, stage: &str, item: i64) -> Option<Output> {
        self.outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stage)
            .and_then(|items| items.get(&item))
            .cloned()
    }

    /// What a task's cache key needs of an output (see [`crate::key::task_key`]), computed
    /// under the lock without copying the output.
    #[must_use]
    pub fn digest(&self, stage: &str, item: i64) -> Option<crate::key::OutputDigest> {
        self.outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stage)
            .and_then(|items| items.get(&item))
            .map(crate::key::OutputDigest::of)
    }

    fn has_all(&self, needs: &[(String, i64)]) -> bool {
        let outputs = self.outputs.lock().unwrap_or_else(PoisonError::into_inner);
        needs
            .iter()
            .all(|(s, i)| outputs.get(s).is_some_and(|items| items.contains_key(i)))
    }

    /// Loads every finished output of this sample from the store (what the cache missed).
    async fn refresh(&self, store: &Store) -> Result<(), EngineError> {
        for task in store.tasks_of_sample(&self.id).await? {
            let output = match task.state {
                TaskState::Done => Output {
                    json: task
                        .output_json
                        .as_deref()
                        .and_then(|t| serde_json::from_str(t).ok())
                        .unwrap_or(Value::Null),
                    artifact: task.output_artifact,
                    skipped: false,
                },
                TaskState::Skipped => Output {
                    json: Value::Null,
                    artifact: None,
                    skipped: true,
                },
                _ => continue,
            };
            self.put(&task.stage, task.item, output);
        }
        Ok(())
    }
}

/// Active samples by id.
#[derive(Debug, Default)]
pub struct ContextCache {
    samples: Mutex<HashMap<SampleId, Arc<SampleContext>>>,
}

impl ContextCache {
    /// Adds a sample.
    pub fn insert(&self, context: Arc<SampleContext>) {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(context.id.clone(), context);
    }

    /// Forgets a sample (decided, or its state is uncertain).
    pub fn remove(&self, sample: &SampleId) {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(sample);
    }

    /// How many samples are cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the cache is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The context of `sample` with the outputs of `needs` present, loading from the store
    /// what the cache does not have.
    ///
    /// # Errors
    /// Store errors; [`EngineError::Internal`] when a needed output is not in the store either.
    pub async fn get(
        &self,
        store: &Store,
        sample: &SampleId,
        needs: &[(String, i64)],
    ) -> Result<Arc<SampleContext>, EngineError> {
        let cached = self
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sample)
            .cloned();
        let Some(context) = cached else {
            {
                let record = store.sample(sample).await?;
                let context = Arc::new(SampleContext::new(
                    record.id,
                    record.subcategory,
                    effective_seed(record.seed, record.generation),
                    record.reference,
                    record.reference_name,
                ));
                context.refresh(store).await?;
                self.insert(context.clone());
                return check(context, needs);
            }
        };
        if !context.has_all(needs) {
            context.refresh(store).await?;
        }
        check(context, needs)
    }
}

fn check(
    context: Arc<SampleContext>,
    needs: &[(String, i64)],
) -> Result<Arc<SampleContext>, EngineError> {
    if context.has_all(needs) {
        Ok(context)
    } else {
        Err(EngineError::Internal(format!(
            "sample `{}`: a task became ready before the outputs it needs were stored",
            context.id
        )))
    }
}

/// Builds the template variables of one task: the sample's and the upstream outputs (a
/// fan-out task adds its `item`). With `reads`, only those top-level names are built (what
/// the task's templates read; the rest would be copied for nothing).
pub fn variables(
    pipeline: &Pipeline,
    items: &HashMap<String, i64, impl std::hash::BuildHasher>,
    context: &SampleContext,
    reference_dims: Option<(u32, u32)>,
    reads: Option<&HashSet<String, impl std::hash::BuildHasher>>,
) -> Value {
    let wanted = |name: &str| reads.is_none_or(|reads| reads.contains(name));
    let mut map = serde_json::Map::new();
    if wanted("reference") {
        let (width, height) = reference_dims.unwrap_or((0, 0));
        map.insert(
            "reference".into(),
            json!({
                "name": context.reference_name,
                "width": width,
                "height": height,
                "hash": context.reference,
            }),
        );
    }
    let subcategory = pipeline.taxonomy.find(&context.subcategory);
    if wanted("subcategory") {
        map.insert("subcategory".into(), json!(subcategory));
    }
    if wanted("category") {
        let category = subcategory.and_then(|s| pipeline.taxonomy.category(&s.category));
        map.insert("category".into(), json!(category));
    }
    if wanted("num_negatives") {
        map.insert("num_negatives".into(), json!(pipeline.quota.negatives));
    }
    if wanted("seed") {
        map.insert("seed".into(), json!(context.seed));
    }
    if wanted("sample_id") {
        map.insert("sample_id".into(), json!(context.id.0));
    }
    for stage in &pipeline.stages {
        if !wanted(&stage.id) {
            continue;
        }
        let n = items.get(&stage.id).copied().unwrap_or(1);
        if stage.for_each.is_some() {
            let mut images = Vec::new();
            let mut texts = Vec::new();
            let mut any = false;
            for i in 0..n {
                if let Some(output) = context.get(&stage.id, i) {
                    any = true;
                    if output.skipped {
                        continue;
                    }
                    if let Some(image) = output.json.get("image") {
                        images.push(image.clone());
                    }
                    if let Some(text) = output.json.get("item") {
                        texts.push(text.clone());
                    }
                }
            }
            if any {
                map.insert(stage.id.clone(), json!({"images": images, "items": texts}));
            }
        } else if let Some(output) = context.get(&stage.id, 0) {
            map.insert(stage.id.clone(), output.json);
        }
    }
    Value::Object(map)
}

/// The artifact hashes an image reference stands for, in order.
#[must_use]
pub fn image_hashes(
    image: &ImageRef,
    items: &HashMap<String, i64, impl std::hash::BuildHasher>,
    context: &SampleContext,
) -> Vec<String> {
    match image {
        ImageRef::Reference => vec![context.reference.clone()],
        ImageRef::Stage { stage, many } => {
            let n = if *many {
                items.get(stage).copied().unwrap_or(1)
            } else {
                1
            };
            (0..n)
                .filter_map(|i| context.get(stage, i))
                .filter_map(|o| o.artifact)
                .collect()
        }
    }
}

/// Reads an artifact, with its MIME type.
///
/// # Errors
/// The store's error when the file is missing or unreadable.
pub fn read_image(
    artifacts: &ArtifactStore,
    hash: &str,
) -> Result<(Arc<Vec<u8>>, &'static str), edir_store::StoreError> {
    let bytes = artifacts.get(hash)?;
    let mime = source::mime_of(&bytes);
    Ok((Arc::new(bytes), mime))
}
