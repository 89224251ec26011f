//! The eval answer scorer on arbitrary model text, gold answers, aliases and choices
//! (fields separated by NUL bytes; see `score_fuzz_input`): never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgecascade::eval::score::score_fuzz_input(data);
});
