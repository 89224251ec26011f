//! Errors from the remote tier.

/// Errors from the remote tier. None of them carries the API key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The `[remote]` section is unusable.
    #[error("invalid [remote] config: {0}")]
    Config(String),
    /// No connection (refused, DNS, TLS, connect timeout).
    #[error("cannot reach {url}: {detail}")]
    Connect {
        /// Endpoint.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// Endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the error body.
        body: String,
    },
    /// A timeout fired.
    #[error("{url}: {phase} timeout after {seconds:.1} s")]
    Timeout {
        /// Endpoint.
        url: String,
        /// Which limit fired.
        phase: TimeoutPhase,
        /// The limit.
        seconds: f64,
    },
    /// The response is not what the protocol promises.
    #[error("{url}: malformed response: {detail}")]
    Malformed {
        /// Endpoint.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The stream ended before it was complete.
    #[error("{url}: stream cut off before completion ({detail})")]
    Cut {
        /// Endpoint.
        url: String,
        /// Where.
        detail: String,
    },
    /// The breaker is open after repeated failures.
    #[error("remote tier skipped for {seconds:.0} s more after {failures} consecutive failures")]
    CircuitOpen {
        /// Seconds until it is tried again.
        seconds: f64,
        /// Consecutive failures that opened it.
        failures: u32,
    },
    /// The caller cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl RemoteError {
    /// Whether a retry might succeed (and nothing has been streamed yet).
    pub(crate) fn retryable(&self) -> bool {
        match self {
            RemoteError::Connect { .. } | RemoteError::Timeout { .. } | RemoteError::Cut { .. } => {
                true
            }
            RemoteError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether the error is a failure of the remote tier itself (unreachable, timing out,
    /// cutting streams, sending garbage, overloaded or broken), which the breaker counts;
    /// not a refusal of one request (4xx other than 429) or a cancel.
    pub(crate) fn is_tier_fault(&self) -> bool {
        match self {
            RemoteError::Status { status, .. } => *status == 429 || *status >= 500,
            RemoteError::Connect { .. }
            | RemoteError::Timeout { .. }
            | RemoteError::Cut { .. }
            | RemoteError::Malformed { .. } => true,
            RemoteError::Config(_) | RemoteError::CircuitOpen { .. } | RemoteError::Cancelled => {
                false
            }
        }
    }
}

/// Which of the remote tier's time limits fired. Its `Display` is the phrase in error messages
/// ("first byte", "chunk gap", "total").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutPhase {
    /// No response headers within `first_byte_timeout_s`.
    FirstByte,
    /// No stream chunk within `chunk_gap_timeout_s`.
    ChunkGap,
    /// The whole request took longer than `total_timeout_s`.
    Total,
}

impl TimeoutPhase {
    /// The phrase used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::FirstByte => "first byte",
            TimeoutPhase::ChunkGap => "chunk gap",
            TimeoutPhase::Total => "total",
        }
    }
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
