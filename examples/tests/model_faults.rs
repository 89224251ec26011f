//! Random byte flips in the header, metadata and tensor-info region of a real model, each file
//! verified by `edgecascade models verify` (our validator, then a trial load in a child
//! process): every mutant either loads and answers or is a clear error. Never a crash in
//! llama.cpp (a signal, an abort), a panic, or a hang. Deterministic: a failure names its seed.
#![allow(missing_docs)]

mod common;
use common::edgecascade;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn model() -> PathBuf {
    // EDGECASCADE_FLIP_MODEL names another file in the models folder for a longer hand run.
    let file = std::env::var("EDGECASCADE_FLIP_MODEL")
        .unwrap_or_else(|_| "smollm2-135m-instruct-q4_1.gguf".into());
    common::model_file(&file, "smollm2")
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn random_header_byte_flips_never_crash_panic_or_hang() {
    let src = model();
    let info = edgecascade::engine::local::verify_model(&src).unwrap();
    let header_end = info.file_len - info.data_bytes;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.gguf");
    std::fs::copy(&src, &path).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let n: u64 = std::env::var("EDGECASCADE_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let (mut loaded, mut refused) = (0, 0);
    let mut bad = Vec::new();
    for seed in 1..=n {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        // A third anywhere in the header, a third in its first 8 KiB (the counts, the general.*
        // metadata), a third in the last 32 KiB (the tensor infos).
        let (lo, hi) = match seed % 3 {
            0 => (0, header_end),
            1 => (0, 8192.min(header_end)),
            _ => (header_end.saturating_sub(32 * 1024), header_end),
        };
        let flips = 1 + rng.below(3);
        let mut saved = Vec::new();
        for _ in 0..flips {
            let off = lo + rng.below(hi - lo);
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, off).unwrap();
            saved.push((off, b[0]));
            let x = (1 + rng.below(255)) as u8;
            file.write_all_at(&[b[0] ^ x], off).unwrap();
        }
        file.sync_data().unwrap();
        let mut child = edgecascade()
            .args(["models", "verify"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read stderr while it runs: a child blocked on a full pipe would look like a hang.
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if t.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let err = reader.join().unwrap();
        let where_ = format!("seed {seed}, flips {saved:?}");
        match status.and_then(|s| s.code()) {
            None => bad.push(format!("{where_}: hung or killed by a signal")),
            Some(0) => loaded += 1,
            Some(1) if err.contains("crashed") => bad.push(format!("{where_}: {}", err.trim())),
            Some(1) if err.len() > 4096 => {
                bad.push(format!("{where_}: a {}-byte error message", err.len()));
            }
            Some(1) if err.lines().filter(|l| !l.trim().is_empty()).count() == 1 => refused += 1,
            Some(c) => bad.push(format!("{where_}: exit {c}: {}", err.trim())),
        }
        for (off, b) in saved.into_iter().rev() {
            file.write_all_at(&[b], off).unwrap();
        }
    }
    let mut f = &file;
    f.seek(SeekFrom::Start(0)).unwrap();
    f.flush().unwrap();
    eprintln!(
        "{n} mutants: {loaded} loaded and answered, {refused} refused with a clear error, {} bad",
        bad.len()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert_eq!(loaded + refused, n);
}

/// Where the bytes of `key`'s value (or a tensor's info) start: the GGUF string (u64 length,
/// then the bytes) names it once in the header.
fn locate(header: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    let at = header
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .unwrap_or_else(|| panic!("{name} is not in the header"));
    at + pat.len()
}

/// Metadata and shapes that look plausible but contradict the weights (an embedding width, head
/// counts, a feed-forward width, a tensor's dimensions swapped): each a clear one-line error
/// naming the cause from llama.cpp's own checks, never an abort.
#[test]
fn plausible_but_wrong_metadata_is_a_clear_error() {
    let src = std::path::PathBuf::from(std::env::var_os("EDGECASCADE_MODELS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    ))
    .join("smollm2-135m-instruct-q4_1.gguf");
    let original = std::fs::read(&src).unwrap();
    let info = edgecascade::engine::local::verify_model(&src).unwrap();
    let header_len = usize::try_from(info.file_len - info.data_bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // (what, key or tensor, change)
    let u32_at = |key: &str, v: u32| {
        let at = locate(&original[..header_len], key) + 4; // the value type, then the value
        (at, v.to_le_bytes().to_vec())
    };
    let swapped = |tensor: &str| {
        let at = locate(&original[..header_len], tensor) + 4; // n_dims, then ne[0], ne[1]
        let mut dims = original[at + 8..at + 16].to_vec();
        dims.extend_from_slice(&original[at..at + 8]);
        (at, dims)
    };
    let cases = [
        (
            "embedding width 512",
            u32_at("llama.embedding_length", 512),
            "n_rot",
        ),
        ("7 heads", u32_at("llama.attention.head_count", 7), ""),
        ("0 heads", u32_at("llama.attention.head_count", 0), ""),
        ("0 KV heads", u32_at("llama.attention.head_count_kv", 0), ""),
        (
            "feed-forward width 100",
            u32_at("llama.feed_forward_length", 100),
            "ffn",
        ),
        (
            "token_embd dims swapped",
            swapped("token_embd.weight"),
            "token_embd.weight",
        ),
        (
            "ffn_up dims swapped",
            swapped("blk.0.ffn_up.weight"),
            "blk.0.ffn_up.weight",
        ),
    ];
    for (what, (at, bytes), names) in cases {
        let mut m = original.clone();
        m[at..at + bytes.len()].copy_from_slice(&bytes);
        let path = dir.path().join("mutant.gguf");
        std::fs::write(&path, &m).unwrap();
        let out = edgecascade()
            .args(["models", "verify"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
        assert!(!err.contains("crashed"), "{what}: {err}");
        assert!(
            err.contains(names),
            "{what}: the error does not name {names:?}: {err}"
        );
    }
}
