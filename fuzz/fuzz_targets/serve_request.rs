//! `serve`'s OpenAI request parser (the file itself, included from the CLI's sources) and the
//! core's request validation on arbitrary bodies: a request or a 400, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code, clippy::all, clippy::pedantic)]
#[path = "../../examples/src/serve/openai.rs"]
mod openai;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = serde_json::from_slice::<openai::CompletionRequest>(data) else {
        return;
    };
    match parsed.into_chat() {
        Ok((req, _, _)) => {
            let _ = req.validate();
        }
        Err(e) => {
            assert!((400..500).contains(&e.status));
            let _ = e.body().to_string();
        }
    }
});
