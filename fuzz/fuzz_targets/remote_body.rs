//! The remote tier's response reader (SSE events and whole JSON answers) on arbitrary bytes:
//! never a panic, never unbounded work; text is only ever what the body held.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let req = edgecascade::ChatRequest::user("q");
    let mut streamed = String::new();
    let out = edgecascade::engine::remote::decode_body(body, mode & 1 == 0, &req, &mut |t| {
        streamed.push_str(t)
    });
    if let Ok(out) = out {
        // What streamed is what the answer says, and nothing is invented (invalid UTF-8 becomes
        // U+FFFD, three bytes for one, so characters are counted).
        assert_eq!(out.text, streamed);
        assert!(out.text.chars().count() <= body.len());
    }
});
