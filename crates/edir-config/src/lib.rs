#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod compile;
mod diagnostic;
mod file;
mod node;
mod pipeline;
mod source;
mod suggest;
mod taxonomy;

pub use compile::{Compiled, compile_file, compile_str, compile_taxonomy_file};
pub use diagnostic::{Diagnostic, Severity, render_all};
pub use pipeline::{
    Api, Endpoint, FieldRef, ImageRef, Operator, Pipeline, Prompt, Quota, RetryPolicy, Sampling,
    Schema, Score, Source, SourceKind, Stage,
};
pub use source::{SourceFile, SourceId, Sources, Span, Spanned};
pub use suggest::did_you_mean;
pub use taxonomy::{Category, Subcategory, Taxonomy};
