//! The edir-synth scorer: read an EDIR-layout benchmark and embeddings, rank the whole corpus
//! by dot product with an exact blocked top-k, and report trec_eval-compatible recall overall,
//! per category and per subcategory.
#![warn(missing_docs)]

mod chart;
mod embed;
#[cfg(feature = "cuda")]
pub mod gpu;
mod matrix;
mod metrics;
mod report;
mod tile;
mod topk;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use edir_dataset::Benchmark;

pub use embed::{CORPUS_INSTRUCTION, EmbedError, QUERY_INSTRUCTION, embed_benchmark};
pub use matrix::{Matrix, MatrixError};
pub use metrics::{CUTOFFS, Group, ModelResult, category_of, evaluate, per_query};
pub use report::{PREDICTIONS_TOP, markdown, predictions, write};
pub use topk::{
    CORPUS_BLOCK, Cancelled, QUERY_BLOCK, Ranked, search, search_candidates, tie_ranks, tiles_only,
};

/// How to score.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Rank only each query's `pos` + `neg` (MMEB-style) instead of the whole corpus.
    pub candidates_only: bool,
    /// Remove a query's own reference image from its ranking (CIRR-style), when it is in the corpus.
    pub exclude_reference: bool,
    /// Threads.
    pub threads: usize,
    /// Rank on the GPU when one is usable (builds with the `cuda` feature; otherwise, and
    /// where CUDA cannot be loaded, the CPU ranks).
    pub gpu: bool,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            candidates_only: false,
            exclude_reference: false,
            threads: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            gpu: true,
        }
    }
}

/// Why scoring failed.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A vector file is unusable.
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    /// Vectors and benchmark disagree.
    #[error("{0}")]
    Mismatch(String),
    /// Cancelled.
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// Ranks with precomputed, L2-normalised vectors (rows in benchmark order).
///
/// # Errors
/// [`ScoreError::Mismatch`] when the row counts or dimensions disagree with the benchmark.
pub fn rank(
    bench: &Benchmark,
    queries: &Matrix,
    corpus: &Matrix,
    options: &ScoreOptions,
    cancel: &AtomicBool,
) -> Result<Vec<Vec<Ranked>>, ScoreError> {
    if queries.rows != bench.queries.len() {
        return Err(ScoreError::Mismatch(format!(
            "queries.npy has {} rows but the benchmark has {} queries",
            queries.rows,
            bench.queries.len()
        )));
    }
    if corpus.rows != bench.corpus.len() {
        return Err(ScoreError::Mismatch(format!(
            "corpus.npy has {} rows but the benchmark has {} corpus items",
            corpus.rows,
            bench.corpus.len()
        )));
    }
    if queries.dim != corpus.dim {
        return Err(ScoreError::Mismatch(format!(
            "query vectors have dimension {} but corpus vectors {}",
            queries.dim, corpus.dim
        )));
    }
    let ids: Vec<String> = bench.corpus.iter().map(|c| c.id.clone()).collect();
    let ranks = tie_ranks(&ids);
    let index: std::collections::HashMap<&str, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    let k = PREDICTIONS_TOP.max(*CUTOFFS.last().unwrap_or(&10));
    if options.candidates_only {
        let candidates: Vec<Vec<u32>> = bench
            .instances
            .iter()
            .map(|i| {
                i.pos
                    .iter()
                    .chain(&i.neg)
                    .filter_map(|id| index.get(id.as_str()).copied())
                    .collect()
            })
            .collect();
        return Ok(search_candidates(queries, corpus, &ranks, &candidates, k));
    }
    let exclude: Option<Vec<Option<u32>>> = options.exclude_reference.then(|| {
        let by_image: std::collections::HashMap<&str, u32> = bench
            .corpus
            .iter()
            .enumerate()
            .map(|(i, c)| (c.image.as_str(), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        bench
            .queries
            .iter()
            .map(|q| by_image.get(q.image.as_str()).copied())
            .collect()
    });
    #[cfg(feature = "cuda")]
    if options.gpu {
        match gpu::shared() {
            Ok(gpu) => {
                let gpu = gpu
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match gpu.search(queries, corpus, &ranks, k, exclude.as_deref()) {
                    Ok(ranked) => return Ok(ranked),
                    Err(error) => {
                        tracing::warn!(gpu = gpu.name(), %error, "the GPU scorer failed; ranking on the CPU");
                    }
                }
            }
            Err(why) => tracing::info!(%why, "no GPU for scoring; ranking on the CPU"),
        }
    }
    Ok(search(
        queries,
        corpus,
        &ranks,
        k,
        exclude.as_deref(),
        options.threads,
        cancel,
    )?)
}

/// Scores vectors from `dir/queries.npy` and `dir/corpus.npy`.
///
/// # Errors
/// [`ScoreError`] for unreadable or mismatched vectors.
pub fn score_files(
    model: &str,
    bench: &Benchmark,
    dir: &Path,
    options: &ScoreOptions,
) -> Result<(ModelResult, Vec<Vec<Ranked>>), ScoreError> {
    let mut queries = Matrix::read_npy(&dir.join("queries.npy"))?;
    let mut corpus = Matrix::read_npy(&dir.join("corpus.npy"))?;
    queries.normalize_rows();
    corpus.normalize_rows();
    let ranked = rank(bench, &queries, &corpus, options, &AtomicBool::new(false))?;
    Ok((evaluate(model, bench, &ranked), ranked))
}
