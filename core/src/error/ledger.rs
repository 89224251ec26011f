//! Cost ledger failures.

use std::path::PathBuf;

/// Ledger failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The file could not be opened, locked, read or written.
    #[error("cost ledger {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::sync::Arc<std::io::Error>,
    },
}
