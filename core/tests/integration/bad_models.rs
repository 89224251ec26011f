//! Bad model files: every one is a clear error naming the file, and the process survives.

use std::io::Write;

use edgecascade::{Error, LocalError, Runtime};

use crate::{config_for, smollm2};

fn load_err(bytes: &[u8]) -> String {
    let mut f = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    let err = Runtime::new(config_for(f.path().to_owned())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&f.path().display().to_string()),
        "error must name the file: {msg}"
    );
    assert!(
        matches!(
            err,
            Error::Local(LocalError::InvalidModel(_) | LocalError::Load { .. })
        ),
        "{err:?}"
    );
    msg
}

#[test]
fn empty_file() {
    assert!(load_err(b"").contains("empty"));
}

#[test]
fn wrong_magic() {
    assert!(load_err(b"PK\x03\x04 this is a zip, not a model").contains("not a GGUF"));
}

#[test]
fn random_bytes() {
    let mut x = 99u64;
    let bytes: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    load_err(&bytes);
    // Random bytes behind a valid magic and version.
    let mut b = b"GGUF\x03\0\0\0".to_vec();
    b.extend_from_slice(&bytes);
    load_err(&b);
}

#[test]
fn truncated_real_model_at_many_points() {
    let real = std::fs::read(smollm2()).unwrap();
    // Inside the header, inside the tensor infos, and inside the tensor data.
    for cut in [
        10,
        100,
        5_000,
        500_000,
        3_000_000,
        real.len() / 2,
        real.len() - 1,
    ] {
        let msg = load_err(&real[..cut]);
        assert!(
            msg.contains("truncated") || msg.contains("malformed"),
            "cut {cut}: {msg}"
        );
    }
}

#[test]
fn a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = Runtime::new(config_for(dir.path().to_owned()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_missing_file() {
    let err = Runtime::new(config_for("/nonexistent/model.gguf".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn corrupted_metadata_types() {
    // Retype tokenizer.ggml.token_type in a real model from an array of i32 to an array of f32:
    // the same size, so the rest of the header still parses, and llama.cpp would read the values
    // through an asserting accessor. The validator must catch exactly that.
    let mut real = std::fs::read(smollm2()).unwrap();
    let key = b"tokenizer.ggml.token_type";
    let at = real.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // After the key: u32 value type (9 = array), u32 element type (5 = i32).
    assert_eq!(&real[at..at + 4], &9u32.to_le_bytes());
    assert_eq!(&real[at + 4..at + 8], &5u32.to_le_bytes());
    real[at + 4..at + 8].copy_from_slice(&6u32.to_le_bytes());
    let msg = load_err(&real);
    assert!(
        msg.contains("tokenizer.ggml.token_type must be an array of i32"),
        "{msg}"
    );
}

#[test]
fn a_panicking_load_progress_callback_fails_the_load_instead_of_aborting() {
    let progress = Box::new(|p: f32| {
        assert!(p < 0.5, "a progress bar bug");
    });
    let err = Runtime::with_progress(config_for(smollm2()), Some(progress)).unwrap_err();
    assert_eq!(err.kind(), edgecascade::ErrorKind::ModelLoad, "{err}");
    // The process is alive and the model still loads.
    assert!(Runtime::new(config_for(smollm2())).is_ok());
}

#[test]
fn a_model_too_big_for_the_stated_memory_is_refused_before_llama_cpp_sees_it() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let calls = Arc::new(AtomicU32::new(0));
    let load = |limit_mb: u64| {
        let mut cfg = config_for(smollm2());
        cfg.local.memory_limit_mb = Some(limit_mb);
        let seen = Arc::clone(&calls);
        Runtime::with_progress(
            cfg,
            Some(Box::new(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            })),
        )
    };
    // SmolLM2 at its default context needs about 300 MB (97 weights, 94 KV, 110 compute).
    let err = load(150).unwrap_err();
    assert_eq!(
        err.kind(),
        edgecascade::ErrorKind::InsufficientMemory,
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("150 MB may be used") && msg.contains("smollm2"),
        "{msg}"
    );
    // llama.cpp never started loading: its progress callback was never called.
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The control: with room, the same model loads (and llama.cpp reports progress).
    let rt = load(2000).expect("fits in 2 GB");
    assert!(rt.local_model().is_some());
    assert!(calls.load(Ordering::SeqCst) > 0);
}
