#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod context;
mod dispatch;
mod drawer;
mod endpoints;
mod engine;
mod error;
mod export;
pub mod key;
pub mod operator;
mod plan;
pub mod progress;
pub mod resume;
pub mod source;
mod writer;

pub use endpoints::{connect, endpoint_configs};
pub use engine::{Engine, RunOptions, RunSummary, select};
pub use error::EngineError;
pub use export::{ExportSummary, export};
pub use plan::StagePlan;
pub use progress::{Progress, StageProgress, SubcategoryProgress};
