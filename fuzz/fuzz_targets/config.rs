//! The config parser and its validation on arbitrary text: an error or a config that
//! validates, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = edgecascade::Config::from_toml(text) {
        // from_toml validates; validating again agrees.
        assert!(c.validate().is_ok());
        let _ = format!("{c:?}");
    }
});
