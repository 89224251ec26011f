//! Replays the `serve_request` fuzzer's seeds and minimised corpus (fuzz/seeds, fuzz/corpus)
//! through `serve`'s OpenAI request parser (its own source file, included here) and the core's
//! request validation: each input is a request or a 4xx, never a panic.
#![allow(missing_docs)]

#[allow(dead_code, clippy::all, clippy::pedantic)]
#[path = "../src/serve/openai.rs"]
mod openai;

#[test]
fn serve_request_corpus_replays_without_panics() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files: Vec<_> = ["seeds", "corpus"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(root.join(d).join("serve_request"))
                .into_iter()
                .flatten()
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the seeds are missing: {files:?}");
    let mut valid = 0;
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let Ok(parsed) = serde_json::from_slice::<openai::CompletionRequest>(&data) else {
            continue;
        };
        match parsed.into_chat() {
            Ok((req, _, _)) => {
                if req.validate().is_ok() {
                    valid += 1;
                }
            }
            Err(e) => assert!((400..500).contains(&e.status), "{}", f.display()),
        }
    }
    assert!(valid >= 3, "{valid} valid of {}", files.len());
}
