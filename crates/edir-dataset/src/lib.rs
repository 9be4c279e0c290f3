#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod read;

pub use read::{Benchmark, CorpusItem, DatasetError, Instance, Problem, Query};
mod write;

pub use write::{Export, ExportImage, write};
