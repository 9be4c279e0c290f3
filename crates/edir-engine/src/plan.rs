//! The task graph of one sample, derived from the pipeline: one task per stage, one per item
//! for fan-out stages (`quota.negatives` items; items beyond the upstream list are skipped).

use std::collections::{BTreeMap, BTreeSet};

use edir_config::{Pipeline, Stage};
use edir_store::NewTask;

/// Static facts about the stages that the dispatchers and the writer need.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Items per stage (1, or `quota.negatives` for fan-out stages).
    pub items: BTreeMap<String, i64>,
    /// For each stage, the stages that need it directly.
    pub dependents: BTreeMap<String, Vec<String>>,
    /// Stages nothing depends on: finishing one may complete the sample.
    pub sinks: BTreeSet<String>,
    /// Stages with no needs: ready as soon as a sample is drawn.
    pub roots: Vec<String>,
    /// Position of each stage in `pipeline.stages`.
    pub position: BTreeMap<String, usize>,
    /// By stage position: the positions of the stages that need it directly.
    pub dependents_at: Vec<Vec<usize>>,
}

impl StagePlan {
    /// Derives the plan of `pipeline`.
    #[must_use]
    pub fn new(pipeline: &Pipeline) -> Self {
        let items = pipeline
            .stages
            .iter()
            .map(|s| (s.id.clone(), items_of(pipeline, s)))
            .collect();
        let mut dependents: BTreeMap<String, Vec<String>> = pipeline
            .stages
            .iter()
            .map(|s| (s.id.clone(), Vec::new()))
            .collect();
        for stage in &pipeline.stages {
            for need in &stage.needs {
                dependents
                    .entry(need.clone())
                    .or_default()
                    .push(stage.id.clone());
            }
        }
        let sinks = dependents
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        let roots = pipeline
            .stages
            .iter()
            .filter(|s| s.needs.is_empty())
            .map(|s| s.id.clone())
            .collect();
        let position: BTreeMap<String, usize> = pipeline
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let dependents_at = pipeline
            .stages
            .iter()
            .map(|s| {
                dependents[&s.id]
                    .iter()
                    .filter_map(|d| position.get(d).copied())
                    .collect()
            })
            .collect();
        Self {
            items,
            dependents,
            sinks,
            roots,
            position,
            dependents_at,
        }
    }

    /// The tasks of one sample, with their dependencies.
    #[must_use]
    pub fn tasks(&self, pipeline: &Pipeline) -> Vec<NewTask> {
        let mut tasks = Vec::new();
        for stage in &pipeline.stages {
            let needs: Vec<(String, i64)> = stage
                .needs
                .iter()
                .flat_map(|need| {
                    let n = self.items.get(need).copied().unwrap_or(1);
                    (0..n).map(move |item| (need.clone(), item))
                })
                .collect();
            for item in 0..self.items[&stage.id] {
                tasks.push(NewTask {
                    stage: stage.id.clone(),
                    item,
                    needs: needs.clone(),
                    cache_key: None,
                });
            }
        }
        tasks
    }
}

fn items_of(pipeline: &Pipeline, stage: &Stage) -> i64 {
    if stage.for_each.is_some() {
        i64::from(pipeline.quota.negatives.max(1))
    } else {
        1
    }
}
