//! Live counters of a run, shared by the engine, the progress display and the metrics page.
//! Everything here is in memory and advisory; the store is the record.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// Upper bounds (seconds) of the latency histogram buckets (Prometheus `le`).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Counters of one stage.
#[derive(Debug)]
pub struct StageProgress {
    /// Stage id.
    pub id: String,
    /// Its endpoint, if it calls one.
    pub endpoint: Option<String>,
    /// Tasks finished with an output.
    pub done: AtomicU64,
    /// Tasks skipped (fan-out items without input, decided samples).
    pub skipped: AtomicU64,
    /// Tasks failed for good.
    pub failed: AtomicU64,
    /// Samples this stage rejected.
    pub rejected: AtomicU64,
    /// Tasks running now.
    pub in_flight: AtomicI64,
    /// Latency histogram counts, one per bucket plus `+Inf`.
    pub latency_buckets: Vec<AtomicU64>,
    /// Sum of latencies, in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Failures by error class.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl StageProgress {
    fn new(id: &str, endpoint: Option<&str>) -> Self {
        Self {
            id: id.to_string(),
            endpoint: endpoint.map(ToString::to_string),
            done: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            latency_buckets: (0..=LATENCY_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency_sum_us: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one call's latency.
    pub fn observe(&self, seconds: f64) {
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "latencies are small and positive"
        )]
        self.latency_sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records a failure of `class`.
    pub fn error(&self, class: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(class.to_string())
            .or_default() += 1;
    }
}

/// Where one subcategory stands.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SubcategoryProgress {
    /// Subcategory id.
    pub id: String,
    /// Its label.
    pub label: String,
    /// Accepted samples wanted.
    pub quota: u64,
    /// Most samples this run may draw.
    pub budget: u64,
    /// Samples drawn so far (next ordinal).
    pub drawn: u64,
    /// Samples in progress.
    pub active: u64,
    /// Accepted.
    pub accepted: u64,
    /// Rejected by a judge or filter.
    pub rejected: u64,
    /// Failed for good.
    pub failed: u64,
}

impl SubcategoryProgress {
    /// Whether this subcategory needs no more work: quota met, or budget spent, and nothing
    /// in progress.
    #[must_use]
    pub fn finished(&self) -> bool {
        self.active == 0 && (self.accepted >= self.quota || self.drawn >= self.budget)
    }

    /// How many more samples to draw now.
    #[must_use]
    pub fn demand(&self) -> u64 {
        let want = self
            .quota
            .saturating_sub(self.accepted)
            .saturating_sub(self.active);
        want.min(self.budget.saturating_sub(self.drawn))
    }
}

/// A per-stage counter of the metrics page: name, help, how to read it.
type Counter = (&'static str, &'static str, fn(&StageProgress) -> u64);

/// A run's live counters.
#[derive(Debug)]
pub struct Progress {
    /// Per stage, in pipeline order.
    pub stages: Vec<StageProgress>,
    /// Per subcategory, in taxonomy order.
    pub subcategories: Mutex<Vec<SubcategoryProgress>>,
    /// References that could not be used.
    pub bad_references: AtomicU64,
    /// Checkpoint transactions written.
    pub checkpoints: AtomicU64,
    /// When the run started in this process.
    pub started: Instant,
}

impl Progress {
    /// Counters for these stages, as (id, endpoint).
    #[must_use]
    pub fn new(stages: &[(String, Option<String>)]) -> Self {
        Self {
            stages: stages
                .iter()
                .map(|(id, endpoint)| StageProgress::new(id, endpoint.as_deref()))
                .collect(),
            subcategories: Mutex::new(Vec::new()),
            bad_references: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The stage's counters.
    #[must_use]
    pub fn stage(&self, id: &str) -> Option<&StageProgress> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// A copy of the subcategory counters.
    #[must_use]
    pub fn subcategories(&self) -> Vec<SubcategoryProgress> {
        self.subcategories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Model calls finished so far (done tasks of stages with an endpoint, failures included).
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.stages
            .iter()
            .filter(|s| s.endpoint.is_some())
            .map(|s| s.done.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed))
            .sum()
    }

    /// Prometheus text exposition of the counters.
    #[must_use]
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let counters: [Counter; 4] = [
            (
                "edir_tasks_done_total",
                "tasks finished with an output",
                |s| s.done.load(Ordering::Relaxed),
            ),
            ("edir_tasks_skipped_total", "tasks skipped", |s| {
                s.skipped.load(Ordering::Relaxed)
            }),
            (
                "edir_samples_rejected_total",
                "samples rejected by this stage",
                |s| s.rejected.load(Ordering::Relaxed),
            ),
            ("edir_tasks_in_flight", "tasks running now", |s| {
                u64::try_from(s.in_flight.load(Ordering::Relaxed)).unwrap_or(0)
            }),
        ];
        for (name, help, get) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in &self.stages {
                let _ = writeln!(
                    out,
                    "{name}{{stage=\"{}\",endpoint=\"{}\"}} {}",
                    s.id,
                    s.endpoint.as_deref().unwrap_or(""),
                    get(s)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP edir_tasks_failed_total tasks failed for good, by error class\n# TYPE edir_tasks_failed_total counter"
        );
        for s in &self.stages {
            for (class, n) in s
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                let _ = writeln!(
                    out,
                    "edir_tasks_failed_total{{stage=\"{}\",endpoint=\"{}\",class=\"{class}\"}} {n}",
                    s.id,
                    s.endpoint.as_deref().unwrap_or("")
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP edir_task_latency_seconds latency of model calls\n# TYPE edir_task_latency_seconds histogram"
        );
        for s in &self.stages {
            let labels = format!(
                "stage=\"{}\",endpoint=\"{}\"",
                s.id,
                s.endpoint.as_deref().unwrap_or("")
            );
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += s.latency_buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "edir_task_latency_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += s.latency_buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "edir_task_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            );
            #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
            let sum = s.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "edir_task_latency_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(
                out,
                "edir_task_latency_seconds_count{{{labels}}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP edir_samples samples per subcategory and state\n# TYPE edir_samples gauge"
        );
        for sub in self.subcategories() {
            for (state, n) in [
                ("accepted", sub.accepted),
                ("active", sub.active),
                ("rejected", sub.rejected),
                ("failed", sub.failed),
            ] {
                let _ = writeln!(
                    out,
                    "edir_samples{{subcategory=\"{}\",state=\"{state}\"}} {n}",
                    sub.id
                );
            }
            let _ = writeln!(
                out,
                "edir_quota{{subcategory=\"{}\"}} {}",
                sub.id, sub.quota
            );
            let decided = sub.accepted + sub.rejected + sub.failed;
            #[expect(clippy::cast_precision_loss, reason = "a ratio")]
            let rate = if decided == 0 {
                0.0
            } else {
                sub.accepted as f64 / decided as f64
            };
            let _ = writeln!(
                out,
                "edir_acceptance_rate{{subcategory=\"{}\"}} {rate}",
                sub.id
            );
        }
        out
    }
}
