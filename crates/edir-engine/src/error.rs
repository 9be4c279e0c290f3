//! Engine errors: what stops a run (a per-sample problem never does; it is recorded instead).

use std::path::PathBuf;

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The reference source cannot be used at all.
    #[error("reference source `{}`: {message}", path.display())]
    Source {
        /// The folder or manifest.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] edir_store::StoreError),
    /// An endpoint could not be set up or reached at start.
    #[error(transparent)]
    Model(#[from] edir_model::ModelError),
    /// The run in the store does not fit this pipeline or these options.
    #[error("{message}")]
    Conflict {
        /// What, and how to proceed.
        message: String,
    },
    /// Writing the export failed.
    #[error("cannot export to `{}`: {message}", path.display())]
    Export {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An internal invariant broke (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}
