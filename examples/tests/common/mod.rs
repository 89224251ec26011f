//! What the CLI's test binaries share.

use std::process::Command;

/// The binary with its default ledger in a temporary folder: tests never write the user's own
/// ledger (a config's `[ledger] path` still wins where a test sets one).
pub fn edgecascade() -> Command {
    static DATA: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let data = DATA.get_or_init(|| tempfile::tempdir().expect("temporary folder"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgecascade"));
    c.env("XDG_DATA_HOME", data.path())
        .env("EDGECASCADE_LEDGER", data.path().join("ledger.jsonl"));
    c
}
