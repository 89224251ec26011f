//! The ways a model file can fail validation before llama.cpp sees it.

use std::path::PathBuf;

/// The ways a file can fail GGUF validation. Every message names the file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GgufError {
    /// The path could not be opened or read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::sync::Arc<std::io::Error>,
    },
    /// The path is a directory, or not a regular file.
    #[error("model path {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is empty.
    #[error("model file {path} is empty (0 bytes)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The first four bytes are not `GGUF`.
    #[error(
        "model file {path} is not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\""
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The bytes found.
        found: Vec<u8>,
    },
    /// The GGUF version is not one llama.cpp reads.
    #[error("model file {path} has GGUF version {version}; supported are 2 and 3")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// The file ends inside the header.
    #[error("model file {path} is truncated: the header needs more than its {file_len} bytes (while reading {what})")]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// Its length.
        file_len: u64,
        /// What was being read.
        what: String,
    },
    /// The header is structurally wrong.
    #[error("model file {path} has a malformed header at byte {offset}: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Byte offset where the problem was found.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// The file is shorter than the tensor data it declares.
    #[error("model file {path} is truncated: tensor data needs {needed} bytes but the file has {file_len} (missing {missing} bytes)")]
    TruncatedData {
        /// The file.
        path: PathBuf,
        /// Bytes the file must have.
        needed: u64,
        /// Bytes it has.
        file_len: u64,
        /// The difference.
        missing: u64,
    },
}
