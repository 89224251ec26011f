//! Replays the fuzzers' seeds and minimised corpus (fuzz/seeds, fuzz/corpus) through the code
//! they fuzz, so CI keeps every finding: each input must return, never panic.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files: Vec<PathBuf> = ["seeds", "corpus"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(root.join(d).join(target))
                .into_iter()
                .flatten()
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn gguf_corpus_replays_without_panics() {
    let files = inputs("gguf");
    assert!(files.len() >= 4, "the seeds are missing: {files:?}");
    let mut valid = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        if edgecascade::engine::local::gguf::validate_bytes(&bytes).is_ok() {
            valid += 1;
        }
    }
    // The hand-made seeds are well-formed; the corpus holds the fuzzer's variations.
    assert!(valid >= 4, "{valid} valid of {}", files.len());
}

#[test]
fn remote_body_corpus_replays_without_panics() {
    let files = inputs("remote_body");
    assert!(files.len() >= 6, "the seeds are missing: {files:?}");
    let req = edgecascade::ChatRequest::user("q");
    let mut answered = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let Some((&mode, body)) = bytes.split_first() else {
            continue;
        };
        let mut streamed = String::new();
        let out = edgecascade::engine::remote::decode_body(body, mode & 1 == 0, &req, &mut |t| {
            streamed.push_str(t)
        });
        if let Ok(out) = out {
            assert_eq!(out.text, streamed, "{}", f.display());
            answered += 1;
        }
    }
    // The seeds' good answers, with and without tool calls, streamed and whole.
    assert!(answered >= 5, "{answered} of {}", files.len());
}

#[test]
fn config_corpus_replays_without_panics() {
    let files = inputs("config");
    assert!(files.len() >= 2, "the seeds are missing: {files:?}");
    let mut valid = 0;
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        if edgecascade::Config::from_toml(&text).is_ok() {
            valid += 1;
        }
    }
    assert!(valid >= 2, "{valid} valid of {}", files.len());
}

#[test]
#[cfg(feature = "eval")]
fn score_corpus_replays_without_panics() {
    let files = inputs("score");
    assert!(files.len() >= 4, "the seeds are missing: {files:?}");
    let correct = files
        .iter()
        .filter(|f| edgecascade::eval::score::score_fuzz_input(&std::fs::read(f).unwrap()))
        .count();
    // The four seeds are right answers in each kind's phrasing.
    assert!(correct >= 4, "{correct} of {}", files.len());
}
