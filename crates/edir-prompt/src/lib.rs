#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod error;
mod expression;
mod hash;
mod template;

pub use error::PromptError;
pub use expression::expression_variables;
pub use hash::content_hash;
pub use template::{Template, VariableUse};
