//! The GGUF validator on arbitrary bytes: it must return (never panic), and never allocate in
//! proportion to a count it has not checked (libFuzzer's -rss_limit_mb catches that).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = edgecascade::engine::local::gguf::validate_bytes(data);
});
