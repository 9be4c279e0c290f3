//! Store errors; each names the operation, and the task or URL at fault.

use std::path::PathBuf;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not a store URL this build understands.
    #[error("unsupported store URL `{url}`")]
    UnsupportedUrl {
        /// The URL with any password hidden.
        url: String,
    },
    /// The database could not be opened.
    #[error("cannot open store `{url}`")]
    Connect {
        /// The URL with any password hidden.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the migrations failed.
    #[error("cannot migrate store `{url}`")]
    Migrate {
        /// The URL with any password hidden.
        url: String,
        /// Why.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error("store operation `{operation}` failed")]
    Query {
        /// Which operation.
        operation: &'static str,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// The task's lease expired or was taken over; nothing was written.
    #[error(
        "lease on task {task} (attempt {attempt}) was lost: it expired or another worker holds it"
    )]
    LeaseLost {
        /// The task.
        task: i64,
        /// The attempt whose lease was lost.
        attempt: i64,
    },
    /// No such record.
    #[error("{what} `{id}` does not exist")]
    NotFound {
        /// What kind of record.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A stored value does not decode.
    #[error("corrupt {what} in the store: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A file of the artifact store could not be read or written.
    #[error("artifact store I/O failed on `{}`", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for mapping a sqlx error to [`StoreError::Query`].
pub(crate) fn query(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { operation, source }
}
