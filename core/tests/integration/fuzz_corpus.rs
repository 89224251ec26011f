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
