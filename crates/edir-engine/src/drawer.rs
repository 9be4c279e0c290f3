//! The drawer: keeps every subcategory supplied with new samples while it needs them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use edir_store::NewSample;
use serde_json::json;

use crate::context::SampleContext;
use crate::error::EngineError;
use crate::progress::SubcategoryProgress;
use crate::source::{self, Reference, ReferencePool};

use crate::engine::Shared;

/// Draws new samples while subcategories need them.
pub(crate) struct Drawer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) pool: ReferencePool,
    /// References that cannot be used.
    pub(crate) bad: HashSet<String>,
    /// Per subcategory, how often each reference was drawn (replayed on resume).
    pub(crate) used: HashMap<String, HashMap<String, u32>>,
    /// Reference name -> (artifact hash) of references already loaded.
    pub(crate) loaded: HashMap<String, String>,
    /// Per subcategory: (pass, position) in its permutation walk.
    pub(crate) cursors: HashMap<String, (u64, usize, Vec<usize>)>,
    /// Per subcategory regenerated whole: the generation its new samples get.
    pub(crate) generations: BTreeMap<String, i64>,
    pub(crate) max_active: usize,
}

/// Samples added per transaction.
const DRAW_BATCH: usize = 64;

impl Drawer {
    /// Returns `Ok(true)` when every subcategory finished, `Ok(false)` when interrupted.
    pub(crate) async fn run(mut self) -> Result<bool, EngineError> {
        let shared = self.shared.clone();
        loop {
            if shared.intake.is_cancelled() {
                return Ok(false);
            }
            let subs = shared.progress.subcategories();
            if subs.iter().all(SubcategoryProgress::finished) {
                return Ok(true);
            }
            let active: u64 = subs.iter().map(|s| s.active).sum();
            let mut room = u64::try_from(self.max_active)
                .unwrap_or(u64::MAX)
                .saturating_sub(active);
            // Round-robin over subcategories, one sample each per turn.
            let mut demand: Vec<(String, u64, u64)> = subs
                .iter()
                .filter(|s| s.demand() > 0)
                .map(|s| (s.id.clone(), s.demand(), s.drawn))
                .collect();
            let mut drawn: Vec<NewSample> = Vec::new();
            while room > 0 && demand.iter().any(|d| d.1 > 0) {
                for (id, want, next) in &mut demand {
                    if *want == 0 || room == 0 {
                        continue;
                    }
                    let ordinal = *next;
                    match self.draw(id, ordinal).await? {
                        Some(sample) => {
                            drawn.push(sample);
                            *want -= 1;
                            *next += 1;
                            room -= 1;
                        }
                        None => {
                            // No usable reference is left: this subcategory's budget ends
                            // here; it finishes with what it has.
                            *want = 0;
                            tracing::warn!(subcategory = %id, "no usable reference image left");
                            let mut subs = shared
                                .progress
                                .subcategories
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner);
                            if let Some(sub) = subs.iter_mut().find(|s| s.id == *id) {
                                sub.budget = ordinal;
                            }
                        }
                    }
                }
                if drawn.len() >= DRAW_BATCH {
                    self.add(std::mem::take(&mut drawn)).await?;
                }
            }
            if !drawn.is_empty() {
                self.add(drawn).await?;
            }
            tokio::select! {
                () = shared.drawer.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shared.intake.cancelled() => return Ok(false),
            }
        }
    }

    async fn add(&self, samples: Vec<NewSample>) -> Result<(), EngineError> {
        let shared = &self.shared;
        crate::engine::sync_artifacts(&shared.artifacts).await?;
        // The first stages' tasks are leased to us in the same transaction (no claim).
        let hand_off = shared.hand_off();
        let (ids, leased) = shared
            .store
            .add_samples_handing_off(&shared.run, &samples, hand_off.as_ref())
            .await?;
        {
            let mut subs = shared
                .progress
                .subcategories
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (id, sample) in ids.iter().zip(&samples) {
                shared.cache.insert(Arc::new(SampleContext::new(
                    id.clone(),
                    sample.subcategory.clone(),
                    crate::context::effective_seed(sample.seed, sample.generation),
                    sample.reference.clone(),
                    sample.reference_name.clone(),
                )));
                if let Some(sub) = subs.iter_mut().find(|s| s.id == sample.subcategory) {
                    sub.active += 1;
                    sub.drawn = sub
                        .drawn
                        .max(u64::try_from(sample.ordinal + 1).unwrap_or(0));
                }
            }
        }
        // (The contexts are cached before any of their tasks can start.)
        let handed = leased.len();
        for claim in leased {
            if let Some(&i) = shared.plan.position.get(&claim.stage) {
                let _ = shared.handoff[i].send(claim);
            }
        }
        if handed == 0 {
            for root in &shared.plan.roots {
                if let Some(&i) = shared.plan.position.get(root) {
                    shared.wake[i].notify_one();
                }
            }
        }
        Ok(())
    }

    /// The sample with this ordinal, or `None` when no usable reference is left.
    async fn draw(
        &mut self,
        subcategory: &str,
        ordinal: u64,
    ) -> Result<Option<NewSample>, EngineError> {
        let pipeline = self.shared.pipeline.clone();
        let seed = pipeline.seed.to_string();
        loop {
            let Some(reference) = self.next_reference(subcategory, ordinal, &seed) else {
                return Ok(None);
            };
            let hash = match self.loaded.get(&reference.name) {
                Some(hash) => hash.clone(),
                None => {
                    let (max_side, max_mb) =
                        (pipeline.source.max_side, pipeline.source.max_file_mb);
                    let artifacts = self.shared.artifacts.clone();
                    let r = reference.clone();
                    let loaded = tokio::task::spawn_blocking(move || {
                        source::load_reference(&r, max_side, max_mb).and_then(|loaded| {
                            artifacts.put(&loaded.bytes).map_err(|e| e.to_string())
                        })
                    })
                    .await
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                    match loaded {
                        Ok(hash) => {
                            self.loaded.insert(reference.name.clone(), hash.clone());
                            hash
                        }
                        Err(message) => {
                            tracing::warn!(reference = %reference.path.display(), %message, "skipping an unusable reference image");
                            let detail = json!({"name": reference.name, "path": reference.path, "error": message});
                            self.shared
                                .store
                                .record_event(
                                    &self.shared.run,
                                    &self.shared.owner,
                                    "reference_skipped",
                                    Some(&detail.to_string()),
                                )
                                .await?;
                            self.shared
                                .progress
                                .bad_references
                                .fetch_add(1, Ordering::Relaxed);
                            self.bad.insert(reference.name.clone());
                            continue;
                        }
                    }
                }
            };
            let ordinal_text = ordinal.to_string();
            let sample_seed = source::derive_seed(&[&seed, subcategory, &ordinal_text]);
            return Ok(Some(NewSample {
                subcategory: subcategory.to_string(),
                ordinal: i64::try_from(ordinal).unwrap_or(i64::MAX),
                generation: self.generations.get(subcategory).copied().unwrap_or(0),
                reference: hash,
                reference_name: reference.name.clone(),
                seed: i64::try_from(sample_seed).unwrap_or(0),
                tasks: self.shared.plan.tasks(&pipeline),
            }));
        }
    }

    /// The next reference for `subcategory` (see the module docs of `source`).
    fn next_reference(&mut self, subcategory: &str, ordinal: u64, seed: &str) -> Option<Reference> {
        let n = self.pool.len();
        if self.bad.len() >= n {
            return None;
        }
        if self.shared.pipeline.source.reuse_per_subcategory {
            // Independent draws with replacement.
            let mut attempt = 0u64;
            loop {
                let key = format!("{ordinal}/{attempt}");
                let index = usize::try_from(
                    source::derive_seed(&[seed, subcategory, "draw", &key]) % n as u64,
                )
                .unwrap_or(0);
                let reference = &self.pool.references[index];
                if !self.bad.contains(&reference.name) {
                    return Some(reference.clone());
                }
                attempt += 1;
            }
        }
        let used = self.used.entry(subcategory.to_string()).or_default();
        let cursor = self
            .cursors
            .entry(subcategory.to_string())
            .or_insert_with(|| {
                let pass_seed = source::derive_seed(&[seed, subcategory, "pass", "0"]);
                (0, 0, source::permutation(n, pass_seed))
            });
        let mut scanned = 0usize;
        loop {
            if cursor.1 >= n {
                cursor.0 += 1;
                cursor.1 = 0;
                let pass = cursor.0.to_string();
                cursor.2 = source::permutation(
                    n,
                    source::derive_seed(&[seed, subcategory, "pass", &pass]),
                );
                tracing::info!(
                    subcategory,
                    pass = cursor.0,
                    "the reference pool ran out; reusing references"
                );
            }
            let reference = &self.pool.references[cursor.2[cursor.1]];
            cursor.1 += 1;
            scanned += 1;
            if scanned > 4 * n + 4 {
                return None;
            }
            if self.bad.contains(&reference.name) {
                continue;
            }
            // Replay earlier draws (a resumed run): a use recorded in the store consumes
            // this position.
            if let Some(count) = used.get_mut(&reference.name)
                && *count > 0
            {
                *count -= 1;
                continue;
            }
            return Some(reference.clone());
        }
    }
}
