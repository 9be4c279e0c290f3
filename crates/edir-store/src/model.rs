//! The records the store keeps, and the inputs of its operations.

use std::fmt;

use serde::Serialize;

/// A run id (uuid v7, time-ordered).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RunId(pub String);

/// A sample id (uuid v7).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SampleId(pub String);

/// A task id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TaskId(pub i64);

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_inner!(RunId, SampleId, TaskId);

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// The text stored in the database.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }

            /// Parses the stored text.
            #[must_use]
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// A run's lifecycle.
    RunState {
        /// Work remains or is going on.
        Running = "running",
        /// Every subcategory reached its quota or its budget.
        Finished = "finished",
        /// Stopped by a signal; `run` resumes it.
        Interrupted = "interrupted",
        /// Put aside by `run --new` (renamed `name@id`); kept for audit.
        Archived = "archived",
    }
}

string_enum! {
    /// A sample's lifecycle.
    SampleState {
        /// Tasks remain.
        Active = "active",
        /// Both judges accepted it; it is in the benchmark.
        Accepted = "accepted",
        /// A judge or filter rejected it (the reason is kept).
        Rejected = "rejected",
        /// A task failed for good.
        Failed = "failed",
        /// Replaced by a newer generation (`regen`); kept for audit.
        Superseded = "superseded",
    }
}

string_enum! {
    /// A task's lifecycle.
    TaskState {
        /// Waiting for dependencies.
        Blocked = "blocked",
        /// Claimable (from `not_before` on).
        Ready = "ready",
        /// Claimed by a worker until `lease_expires_at`.
        Leased = "leased",
        /// Finished with an output.
        Done = "done",
        /// Failed for good (or until `retry`).
        Failed = "failed",
        /// Not needed (sample decided, or fan-out item without input).
        Skipped = "skipped",
    }
}

/// A run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Its id.
    pub id: RunId,
    /// Its name (unique in a store).
    pub name: String,
    /// The pipeline YAML it was created with.
    pub pipeline_yaml: String,
    /// The canonical pipeline hash it was created with.
    pub pipeline_hash: String,
    /// Its state.
    pub state: RunState,
    /// Creation time (ms since the epoch).
    pub created_at: i64,
}

/// A task to create with a sample.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Stage id.
    pub stage: String,
    /// Index within a fan-out stage (0 otherwise).
    pub item: i64,
    /// Tasks of the same sample this one waits for, as (stage, item).
    pub needs: Vec<(String, i64)>,
    /// Cache key of the task's inputs, when known up front.
    pub cache_key: Option<String>,
}

/// A sample to create, with all its tasks.
#[derive(Debug, Clone)]
pub struct NewSample {
    /// Subcategory id.
    pub subcategory: String,
    /// The n-th sample drawn for this subcategory.
    pub ordinal: i64,
    /// 0, or one more than the subcategory's superseded generations (after `regen`).
    pub generation: i64,
    /// Artifact hash of the reference image.
    pub reference: String,
    /// Source name of the reference.
    pub reference_name: String,
    /// The sample's seed.
    pub seed: i64,
    /// Its tasks; dependencies refer to tasks in this list.
    pub tasks: Vec<NewTask>,
}

/// A claimed task: the lease is (`id`, `owner`, `attempt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The task.
    pub id: TaskId,
    /// Its sample.
    pub sample: SampleId,
    /// Stage id.
    pub stage: String,
    /// Fan-out index.
    pub item: i64,
    /// The attempt this claim is (1 for the first); fences late writers.
    pub attempt: i64,
    /// Who holds the lease.
    pub owner: String,
    /// Lease expiry (ms since the epoch).
    pub lease_expires_at: i64,
}

/// How a claimed task finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It produced an output.
    Done,
    /// It was not needed; dependents proceed without it.
    Skipped,
}

/// The result of a claimed task, to checkpoint.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The task.
    pub task: TaskId,
    /// The lease holder.
    pub owner: String,
    /// The attempt of the lease.
    pub attempt: i64,
    /// Done or skipped.
    pub outcome: Outcome,
    /// JSON output.
    pub output_json: Option<String>,
    /// Artifact hash of an output file (an edited image).
    pub output_artifact: Option<String>,
    /// Cache key of the inputs the output was made from.
    pub cache_key: Option<String>,
    /// Which replica answered.
    pub endpoint: Option<String>,
    /// Wall time of the call.
    pub latency_ms: Option<i64>,
    /// Prompt tokens used.
    pub prompt_tokens: Option<i64>,
    /// Completion tokens used.
    pub completion_tokens: Option<i64>,
}

impl Completion {
    /// A completion of `claim` with a JSON output and no accounting.
    #[must_use]
    pub fn done(claim: &Claim, output_json: impl Into<String>) -> Self {
        Self {
            task: claim.id,
            owner: claim.owner.clone(),
            attempt: claim.attempt,
            outcome: Outcome::Done,
            output_json: Some(output_json.into()),
            output_artifact: None,
            cache_key: None,
            endpoint: None,
            latency_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
        }
    }

    /// A skip of `claim`.
    #[must_use]
    pub fn skipped(claim: &Claim) -> Self {
        Self {
            outcome: Outcome::Skipped,
            output_json: None,
            ..Self::done(claim, "")
        }
    }
}

/// A failed attempt of a claimed task.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The task.
    pub task: TaskId,
    /// The lease holder.
    pub owner: String,
    /// The attempt of the lease.
    pub attempt: i64,
    /// Error class, e.g. `timeout`, `invalid_output`, `http_400`.
    pub class: String,
    /// The message (never a secret).
    pub message: String,
    /// `Some(t)`: back to `ready`, claimable from `t` (ms); `None`: failed for good.
    pub retry_at: Option<i64>,
}

/// The result of checkpointing a batch: how many were written, and which leases were lost
/// (those wrote nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Tasks written.
    pub written: usize,
    /// Tasks whose lease was lost; nothing was written for them.
    pub lost: Vec<TaskId>,
}

/// A task as stored, for inspection.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRecord {
    /// Its id.
    pub id: TaskId,
    /// Its sample.
    pub sample: SampleId,
    /// Stage id.
    pub stage: String,
    /// Fan-out index.
    pub item: i64,
    /// State.
    pub state: TaskState,
    /// Unfinished dependencies.
    pub deps_pending: i64,
    /// Claims so far.
    pub attempts: i64,
    /// Lease holder, if leased.
    pub lease_owner: Option<String>,
    /// JSON output.
    pub output_json: Option<String>,
    /// Output artifact.
    pub output_artifact: Option<String>,
    /// Error class of the last failure.
    pub error_class: Option<String>,
    /// Message of the last failure.
    pub error_message: Option<String>,
}

/// A sample as stored.
#[derive(Debug, Clone, Serialize)]
pub struct SampleRecord {
    /// Its id.
    pub id: SampleId,
    /// Subcategory id.
    pub subcategory: String,
    /// Ordinal within the subcategory.
    pub ordinal: i64,
    /// Generation (regen bumps it).
    pub generation: i64,
    /// Reference artifact hash.
    pub reference: String,
    /// Reference source name.
    pub reference_name: String,
    /// Seed.
    pub seed: i64,
    /// State.
    pub state: SampleState,
    /// The stage that decided it.
    pub decided_stage: Option<String>,
    /// Why it was rejected or failed.
    pub reason: Option<String>,
}

/// Tasks per (subcategory, stage, state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskCount {
    /// Subcategory id.
    pub subcategory: String,
    /// Stage id.
    pub stage: String,
    /// State.
    pub state: TaskState,
    /// How many.
    pub count: i64,
}

/// Samples per (subcategory, state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleCount {
    /// Subcategory id.
    pub subcategory: String,
    /// State.
    pub state: SampleState,
    /// How many.
    pub count: i64,
}

/// Rejections per (subcategory, stage, reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    /// Subcategory id.
    pub subcategory: String,
    /// The stage that rejected.
    pub stage: String,
    /// The reason.
    pub reason: String,
    /// How many samples.
    pub count: i64,
}

/// An audit event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When (ms).
    pub at: i64,
    /// Who (a worker id or `cli`).
    pub actor: String,
    /// What, e.g. `run_created`, `sample_rejected`, `task_failed`.
    pub kind: String,
    /// The sample concerned.
    pub sample: Option<String>,
    /// The task concerned.
    pub task: Option<i64>,
    /// Free text or JSON.
    pub detail: Option<String>,
}
