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
pub fn edgecascade() -> Command {
    static DATA: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let data = DATA.get_or_init(|| tempfile::tempdir().expect("temporary folder"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgecascade"));
    c.env("XDG_DATA_HOME", data.path())
        .env("EDGECASCADE_LEDGER", data.path().join("ledger.jsonl"));
    c
}

/// A listener on 127.0.0.1 that counts connections and answers each with HTTP 401, echoing
/// the request's Authorization header in its error body (as a careless proxy might), so a test
/// can prove both that a request never connected and that a key sent was never shown.
#[allow(dead_code)]
pub fn counting_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let c = std::sync::Arc::clone(&count);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let mut auth = String::new();
            let mut body_len = 0;
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("authorization:") {
                    line.trim().clone_into(&mut auth);
                } else if let Some(n) = lower.strip_prefix("content-length:") {
                    body_len = n.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            // Read the request body before answering: closing a socket with unread bytes sends
            // a reset, and the client may then lose the answer (seen once in CI on a slow VM).
            let mut request_body = vec![0; body_len];
            let _ = std::io::Read::read_exact(&mut reader, &mut request_body);
            let body = format!(r#"{{"error":{{"message":"rejected {auth}"}}}}"#);
            let _ = write!(
                s,
                "HTTP/1.1 401 X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, count)
}

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
