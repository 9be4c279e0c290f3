#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod artifact;
mod checkpoint;
mod clock;
mod embeddings;
mod error;
mod model;
mod resume;
mod rows;
mod runs;
mod samples;
mod status;
mod store;
mod tasks;
mod url;

pub use artifact::{ArtifactHash, ArtifactStore};
pub use checkpoint::{CheckpointOutcome, HandOff, Step, Then};
pub use clock::Clock;
pub use error::StoreError;
pub use model::{
    BatchOutcome, Claim, Completion, Event, Failure, NewSample, NewTask, Outcome, ReasonCount, Run,
    RunId, RunState, SampleCount, SampleId, SampleRecord, SampleState, TaskCount, TaskId,
    TaskRecord, TaskState,
};
pub use resume::{FailedTask, KeyGroup, STAGE_KEY_LEN, Worker};
pub use status::{FailureCount, StageUsage};
pub use store::{POSTGRES_MIGRATOR, SQLITE_MIGRATOR, Store, StoreOptions};
pub use url::{Backend, StoreUrl, redact};
