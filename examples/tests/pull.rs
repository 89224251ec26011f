//! `edgecascade models pull` as a process: killed mid-transfer and run again, it resumes with
//! `Range`; refusals exit 1 and leave nothing; a URL without --sha256 is a usage error.
#![allow(missing_docs)]

mod common;
use common::edgecascade;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A host serving `file` (honouring `Range`), slowly while `slow` is set; 404 for other paths.
fn host(file: Arc<Vec<u8>>, slow: Arc<AtomicBool>) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ranges);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let (file, slow, seen) = (Arc::clone(&file), Arc::clone(&slow), Arc::clone(&seen));
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let (mut first, mut range) = (String::new(), None);
                let _ = r.read_line(&mut first);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
                        range = Some(v.trim().to_owned());
                    }
                }
                seen.lock().unwrap().push(range.clone());
                if !first.contains("/model.gguf") {
                    let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                let n = file.len();
                let start: usize = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.split('-').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let head = if start > 0 {
                    format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{n}\r\nConnection: close\r\n\r\n", n - start, n - 1)
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n")
                };
                let _ = s.write_all(head.as_bytes());
                for chunk in file[start..].chunks(32 * 1024) {
                    if s.write_all(chunk).is_err() {
                        return;
                    }
                    if slow.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        }
    });
    (base, ranges)
}

#[test]
fn a_killed_pull_resumes_and_refusals_leave_nothing() {
    let file: Arc<Vec<u8>> = Arc::new(
        (0..4_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    );
    let sha = format!("{:x}", Sha256::digest(&*file));
    let slow = Arc::new(AtomicBool::new(true));
    let (base, ranges) = host(Arc::clone(&file), Arc::clone(&slow));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let part = dir.path().join("m.gguf.part");
    let url = format!("{base}/model.gguf");
    let dest_s = dest.to_str().unwrap();

    // Killed (SIGKILL) once part of the file is on disk.
    let mut child = edgecascade()
        .args([
            "models", "pull", &url, "--sha256", &sha, "--to", dest_s, "--json",
        ])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < 300_000 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the pull never started writing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !dest.exists(),
        "nothing at the destination before verification"
    );
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept >= 300_000 && kept < 4_000_000, "{kept}");

    // Run again: it resumes where the killed one stopped.
    slow.store(false, Ordering::SeqCst);
    let out = edgecascade()
        .args([
            "models", "pull", &url, "--sha256", &sha, "--to", dest_s, "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resumed = v["resumed_from"].as_u64().unwrap();
    assert!(resumed >= kept, "{v}");
    assert_eq!(
        v["bytes_transferred"].as_u64().unwrap(),
        4_000_000 - resumed,
        "{v}"
    );
    assert_eq!(v["sha256"], sha.as_str());
    assert_eq!(std::fs::read(&dest).unwrap(), *file);
    assert!(!part.exists());
    assert_eq!(
        ranges.lock().unwrap().last().unwrap().as_deref(),
        Some(format!("bytes={resumed}-").as_str())
    );

    // 404: exit 1, the status named, nothing left.
    let missing = dir.path().join("missing.gguf");
    let out = edgecascade()
        .args([
            "models",
            "pull",
            &format!("{base}/nope.gguf"),
            "--sha256",
            &sha,
            "--to",
            missing.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 404"));
    assert!(!missing.exists() && !dir.path().join("missing.gguf.part").exists());

    // A wrong hash: exit 1, says so, deletes the download.
    let wrong = dir.path().join("wrong.gguf");
    let out = edgecascade()
        .args([
            "models",
            "pull",
            &url,
            "--sha256",
            &"0".repeat(64),
            "--to",
            wrong.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
    assert!(!wrong.exists() && !dir.path().join("wrong.gguf.part").exists());

    // Usage errors: exit 2.
    for args in [
        vec!["models", "pull", url.as_str()],
        vec!["models", "pull", url.as_str(), "--sha256", "xyz"],
        vec!["models", "pull", "no-such-model"],
        vec![
            "models",
            "pull",
            "http://example.com/m.gguf",
            "--sha256",
            sha.as_str(),
        ],
    ] {
        let out = edgecascade().args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // `models list` shows it verified; `models rm` removes it.
    let out = edgecascade()
        .env("EDGECASCADE_MODELS", dir.path())
        .args(["models", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("m.gguf (4.0 MB, verified"), "{text}");
    let out = edgecascade()
        .env("EDGECASCADE_MODELS", dir.path())
        .args(["models", "rm", "m.gguf"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!dest.exists());
}
