//! Why a model download failed.

use std::path::PathBuf;

/// Why a pull failed. Nothing is left at the destination.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    /// The request is unusable (a URL, a hash).
    #[error("{0}")]
    Invalid(String),
    /// The server refused (404, 401, ...): retrying will not help.
    #[error("{url}: HTTP {status}; nothing was saved")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The host could not be reached, or kept failing, until the deadline.
    #[error(
        "{url}: {detail} (after {requests} requests); the partial file is kept for a later resume"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// The last failure.
        detail: String,
        /// Requests made.
        requests: u32,
    },
    /// The whole file's sha256 is not the expected one.
    #[error("{url}: checksum mismatch: expected sha256 {expected}, got {actual}; the download was deleted")]
    Mismatch {
        /// The URL.
        url: String,
        /// Expected.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Not enough room: the quota or the disk.
    #[error("{0}")]
    Storage(String),
    /// A file could not be read or written.
    #[error("{path}: {detail}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The host cannot be used, and waiting will not change that: its name does not resolve,
    /// its TLS certificate or handshake fails, it redirects badly.
    #[error("{url}: {detail}; not retried")]
    Refused {
        /// The URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// Another pull (in this process or another) is writing the same file.
    #[error("{0}: another download of this file is in progress")]
    InProgress(PathBuf),
    /// The caller cancelled; the partial file is kept for a later resume.
    #[error("cancelled; the partial file is kept for a later resume")]
    Cancelled,
    /// A bug: the download panicked (caught on its thread).
    #[error("the download panicked: {0}")]
    Panicked(String),
}
