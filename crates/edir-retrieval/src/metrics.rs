//! Recall@k as trec_eval computes `recall_k` (qrels from `pos` only): the share of a query's
//! positives in its top k; averaged over queries, per category and per subcategory.

use std::collections::{BTreeMap, HashMap};

use edir_dataset::Benchmark;
use serde::Serialize;

use crate::topk::Ranked;

/// The cut-offs reported.
pub const CUTOFFS: [usize; 4] = [1, 3, 5, 10];

/// EDIR's categories of its subcategory labels, for benchmarks whose metadata has no category.
#[must_use]
pub fn category_of(subcategory: &str) -> &'static str {
    match subcategory {
        "color" | "material" | "shape" | "texture" => "attribute",
        "addition" | "remove" | "replace" | "count" => "object",
        "spatial" | "action" | "viewpoint" => "relationship",
        "style" | "time" | "weather" => "global",
        "complex" => "complex",
        _ => "other",
    }
}

/// Recall at each cut-off for a group of queries.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    /// Queries in the group.
    pub queries: usize,
    /// `recall@1`, `recall@3`, ... (fractions).
    #[serde(flatten)]
    pub recall: BTreeMap<String, f64>,
}

/// A model's scores on a benchmark.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelResult {
    /// The model.
    pub model: String,
    /// Queries scored.
    pub queries: usize,
    /// Corpus size.
    pub corpus: usize,
    /// Over all queries.
    pub overall: Group,
    /// Per category.
    pub by_category: BTreeMap<String, Group>,
    /// Per subcategory label.
    pub by_subcategory: BTreeMap<String, Group>,
    /// Queries with a positive tied in score with a non-positive in its ranking.
    pub ties: usize,
}

/// Corpus id -> index.
fn corpus_index(bench: &Benchmark) -> HashMap<&str, u32> {
    bench
        .corpus
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), u32::try_from(i).unwrap_or(u32::MAX)))
        .collect()
}

/// The corpus indices of an instance's positives.
fn positives(index: &HashMap<&str, u32>, instance: &edir_dataset::Instance) -> Vec<u32> {
    instance
        .pos
        .iter()
        .filter_map(|p| index.get(p.as_str()).copied())
        .collect()
}

/// Per-query recall at each cut-off.
#[must_use]
pub fn per_query(bench: &Benchmark, ranked: &[Vec<Ranked>]) -> Vec<[f64; CUTOFFS.len()]> {
    let index = corpus_index(bench);
    bench
        .instances
        .iter()
        .zip(ranked)
        .map(|(instance, list)| {
            let positives = positives(&index, instance);
            let mut out = [0.0; CUTOFFS.len()];
            for (slot, &k) in CUTOFFS.iter().enumerate() {
                let hits = list
                    .iter()
                    .take(k)
                    .filter(|r| positives.contains(&r.index))
                    .count();
                #[expect(clippy::cast_precision_loss, reason = "counts")]
                let recall = hits as f64 / positives.len().max(1) as f64;
                out[slot] = recall;
            }
            out
        })
        .collect()
}

fn group(values: &[[f64; CUTOFFS.len()]]) -> Group {
    let mut recall = BTreeMap::new();
    for (slot, k) in CUTOFFS.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "counts")]
        let mean = if values.is_empty() {
            0.0
        } else {
            values.iter().map(|v| v[slot]).sum::<f64>() / values.len() as f64
        };
        recall.insert(format!("recall@{k}"), mean);
    }
    Group {
        queries: values.len(),
        recall,
    }
}

/// Scores one model's rankings.
#[expect(
    clippy::float_cmp,
    reason = "a tie is exact equality, as trec_eval sees it"
)]
#[must_use]
pub fn evaluate(model: &str, bench: &Benchmark, ranked: &[Vec<Ranked>]) -> ModelResult {
    let values = per_query(bench, ranked);
    let mut by_category: BTreeMap<String, Vec<[f64; CUTOFFS.len()]>> = BTreeMap::new();
    let mut by_subcategory: BTreeMap<String, Vec<[f64; CUTOFFS.len()]>> = BTreeMap::new();
    for (query, value) in bench.queries.iter().zip(&values) {
        let sub = query.subcategory();
        let category = query.category().unwrap_or_else(|| category_of(sub));
        by_category
            .entry(category.to_string())
            .or_default()
            .push(*value);
        by_subcategory
            .entry(sub.to_string())
            .or_default()
            .push(*value);
    }
    let index = corpus_index(bench);
    let ties = bench
        .instances
        .iter()
        .zip(ranked)
        .filter(|(instance, list)| {
            let positives = positives(&index, instance);
            list.iter()
                .filter(|r| positives.contains(&r.index))
                .any(|p| {
                    list.iter()
                        .any(|o| !positives.contains(&o.index) && o.score == p.score)
                })
        })
        .count();
    ModelResult {
        model: model.to_string(),
        queries: bench.queries.len(),
        corpus: bench.corpus.len(),
        overall: group(&values),
        by_category: by_category
            .into_iter()
            .map(|(k, v)| (k, group(&v)))
            .collect(),
        by_subcategory: by_subcategory
            .into_iter()
            .map(|(k, v)| (k, group(&v)))
            .collect(),
        ties,
    }
}
