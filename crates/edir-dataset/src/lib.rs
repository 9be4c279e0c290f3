#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod images;
mod read;

pub use images::{Images, TarImages};
pub use read::{Benchmark, CorpusItem, DatasetError, Instance, Problem, Query};
mod write;

pub use write::{Export, ExportImage, write};
