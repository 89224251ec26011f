//! What the CLI's test binaries share.

use std::path::PathBuf;
use std::process::Command;

/// A test model in `$EDGECASCADE_MODELS` (else `models/`); a missing one fails the test with the
/// command that fetches it (`name` for `scripts/fetch_models.py`).
#[allow(dead_code)]
pub fn model_file(file: &str, name: &str) -> PathBuf {
    let dir = std::env::var_os("EDGECASCADE_MODELS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    );
    let p = dir.join(file);
    assert!(
        p.exists(),
        "missing {}: run scripts/fetch_models.py {name}",
        p.display()
    );
    p
}

/// SmolLM2-135M, the CI model.
#[allow(dead_code)]
pub fn smollm2() -> PathBuf {
    model_file("smollm2-135m-instruct-q4_1.gguf", "smollm2")
}

/// The binary with its default ledger in a temporary folder: tests never write the user's own
/// ledger (a config's `[ledger] path` still wins where a test sets one).
#[allow(dead_code)]
pub fn edgecascade() -> Command {
    static DATA: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let data = DATA.get_or_init(|| tempfile::tempdir().expect("temporary folder"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgecascade"));
    c.env("XDG_DATA_HOME", data.path())
        .env("EDGECASCADE_LEDGER", data.path().join("ledger.jsonl"));
    c
}

#[allow(dead_code)]
mod counting_server;
#[allow(unused_imports)]
pub use counting_server::{counting_server, counting_server_answering};

/// A config file (in `dir`) with SmolLM2 local, the remote tier at `url` with `key`, every
/// answer escalating unless private, and the ledger in `dir`.
#[allow(dead_code)]
pub fn escalating_config(
    dir: &std::path::Path,
    model: &std::path::Path,
    url: &str,
    key: &str,
) -> std::path::PathBuf {
    let cfg = dir.join("edgecascade.toml");
    std::fs::write(
        &cfg,
        format!(
            "[local]\nmodel = {:?}\nn_ctx = 512\n[remote]\nbase_url = {url:?}\nmodel = \"remote-model\"\napi_key = {key:?}\nmax_retries = 0\n[cascade]\nthreshold = 0.0\n[ledger]\npath = {:?}\n",
            model.to_str().unwrap(),
            dir.join("ledger.jsonl").to_str().unwrap()
        ),
    )
    .unwrap();
    cfg
}
