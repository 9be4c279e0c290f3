//! Embedding a benchmark through an endpoint (vLLM's `messages` form: reference image + query
//! text for queries, the image alone for the corpus), with the EDIR instructions, batched and
//! concurrent, L2-normalised, and cached in the store by (model, instruction, content hash):
//! scoring the same benchmark again costs no call.

use std::collections::HashMap;
use std::sync::Arc;

use edir_dataset::Benchmark;
use edir_model::{EmbedInput, Endpoint};
use edir_store::Store;
use futures_util::StreamExt as _;

use crate::matrix::Matrix;

/// The query instruction of the official evaluation (ends with a space).
pub const QUERY_INSTRUCTION: &str =
    "Given an image, find a similar everyday image with the described changes: ";
/// The corpus instruction of the official evaluation (ends with a space).
pub const CORPUS_INSTRUCTION: &str = "Represent the given image. ";

/// Inputs per embedding request batch (image inputs go one per request, concurrently).
const BATCH: usize = 32;
/// Batches in flight at once.
const CONCURRENT_BATCHES: usize = 8;

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// An image could not be read.
    #[error("cannot read image `{path}`: {message}")]
    Image {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The endpoint failed.
    #[error(transparent)]
    Model(#[from] edir_model::ModelError),
    /// The cache failed.
    #[error(transparent)]
    Store(#[from] edir_store::StoreError),
    /// A vector is unusable.
    #[error("{0}")]
    Vector(String),
}

struct Item {
    key: String,
    image: Arc<Vec<u8>>,
    mime: &'static str,
    text: String,
}

fn mime(path: &str) -> &'static str {
    let extension = std::path::Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "image/png",
    }
}

/// Embeds the queries and the corpus of `bench` with `endpoint`; returns (queries, corpus),
/// rows in benchmark order, L2-normalised.
///
/// # Errors
/// [`EmbedError`] naming the image, the endpoint or the store at fault.
pub async fn embed_benchmark(
    bench: &Benchmark,
    endpoint: &Endpoint,
    store: Option<&Store>,
    query_instruction: &str,
    corpus_instruction: &str,
) -> Result<(Matrix, Matrix), EmbedError> {
    let read = |name: &str| -> Result<Arc<Vec<u8>>, EmbedError> {
        bench
            .images
            .read(name)
            .map(Arc::new)
            .map_err(|message| EmbedError::Image {
                path: name.to_string(),
                message: format!("{message} (images: {})", bench.images.describe()),
            })
    };
    let mut queries = Vec::with_capacity(bench.queries.len());
    for q in &bench.queries {
        let image = read(&q.image)?;
        let text = format!("{query_instruction}{}", q.text);
        let mut hasher = blake3::Hasher::new();
        hasher.update(&image);
        hasher.update(&[0]);
        hasher.update(text.as_bytes());
        queries.push(Item {
            key: hasher.finalize().to_hex().to_string(),
            image,
            mime: mime(&q.image),
            text,
        });
    }
    let mut corpus = Vec::with_capacity(bench.corpus.len());
    for c in &bench.corpus {
        let image = read(&c.image)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&image);
        hasher.update(&[0]);
        hasher.update(corpus_instruction.as_bytes());
        corpus.push(Item {
            key: hasher.finalize().to_hex().to_string(),
            image,
            mime: mime(&c.image),
            text: corpus_instruction.to_string(),
        });
    }
    let q = embed_items(endpoint, store, query_instruction, &queries).await?;
    let c = embed_items(endpoint, store, corpus_instruction, &corpus).await?;
    Ok((q, c))
}

async fn embed_items(
    endpoint: &Endpoint,
    store: Option<&Store>,
    instruction: &str,
    items: &[Item],
) -> Result<Matrix, EmbedError> {
    let model = endpoint.config.model.clone();
    let instruction_key = blake3::hash(instruction.as_bytes()).to_hex().to_string();
    let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let mut found: HashMap<String, Vec<f32>> = match store {
        Some(store) => {
            store
                .get_embeddings(&model, &instruction_key, &keys)
                .await?
        }
        None => HashMap::new(),
    };
    let missing: Vec<&Item> = items
        .iter()
        .filter(|i| !found.contains_key(&i.key))
        .collect();
    let batches = missing.chunks(BATCH).map(|chunk| async move {
        let inputs: Vec<EmbedInput> = chunk
            .iter()
            .map(|i| EmbedInput::ImageText {
                image: i.image.clone(),
                mime: i.mime.to_string(),
                text: i.text.clone(),
            })
            .collect();
        let vectors = endpoint.embed(&inputs).await?;
        Ok::<_, EmbedError>(
            chunk
                .iter()
                .map(|i| i.key.clone())
                .zip(vectors)
                .collect::<Vec<_>>(),
        )
    });
    let mut stream = futures_util::stream::iter(batches).buffer_unordered(CONCURRENT_BATCHES);
    while let Some(result) = stream.next().await {
        let pairs = result?;
        if let Some(store) = store {
            store
                .put_embeddings(&model, &instruction_key, &pairs)
                .await?;
        }
        found.extend(pairs);
    }
    let dim = found.values().next().map_or(0, Vec::len);
    let mut data = Vec::with_capacity(items.len() * dim);
    for item in items {
        let v = &found[&item.key];
        if v.len() != dim {
            return Err(EmbedError::Vector(format!(
                "model `{model}` returned vectors of dimension {} and {dim}",
                v.len()
            )));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(EmbedError::Vector(format!(
                "model `{model}` returned a vector with NaN or infinite values"
            )));
        }
        data.extend_from_slice(v);
    }
    let mut matrix = Matrix::new(items.len(), dim, data);
    matrix.normalize_rows();
    Ok(matrix)
}
