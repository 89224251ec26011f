//! Create, generate with and close a runtime through the FFI 50 times in one process: resident
//! memory returns to within 10% of the first iteration's. A test binary of its own, so no other
//! test's threads move the figure.

use edgecascade_ffi::{default_config, Runtime};

fn rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// The model file is mapped into this process.
fn mapped(model: &std::path::Path) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let name = model.to_string_lossy();
    maps.lines().any(|l| l.ends_with(name.as_ref()))
}

#[test]
fn fifty_runtimes_leave_resident_memory_flat() {
    let dir = std::env::var("EDGECASCADE_MODELS").unwrap_or_else(|_| "../models".into());
    let model = std::path::Path::new(&dir).join("smollm2-135m-instruct-q4_1.gguf");
    assert!(model.exists(), "missing {}", model.display());
    let mut after = Vec::new();
    for i in 0..50 {
        let mut c = default_config();
        c.local.model = Some(model.clone());
        c.local.n_ctx = Some(512);
        c.local.threads = Some(2);
        let rt = Runtime::new(c).unwrap();
        let mut req = edgecascade::ChatRequest::user(format!("Say a word about the number {i}."));
        req.max_tokens = 8;
        req.sampling.temperature = 0.0;
        let r = rt.chat(req).unwrap();
        assert!(r.usage.completion_tokens > 0);
        rt.shutdown();
        drop(rt);
        // A request's thread may drop its share of the runtime just after answering: wait for
        // the state that matters, the model file unmapped, before measuring.
        let since = std::time::Instant::now();
        while mapped(&model) {
            assert!(
                since.elapsed() < std::time::Duration::from_secs(30),
                "iteration {i}: the model is still mapped 30 s after its runtime was dropped"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Give freed memory back to the system first, so what is measured is what is still
        // held, not what glibc keeps cached for reuse.
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe { libc::malloc_trim(0) };
        after.push(rss_kb());
    }
    // A leak grows with the iterations; one short-lived thread's pages do not last. The last
    // five iterations' lowest figure is compared with the first.
    let first = after[0] as f64;
    let last = *after[45..].iter().min().unwrap() as f64;
    eprintln!(
        "RSS after iteration 1: {first} KiB; 10: {}; 25: {}; lowest of 46-50: {last} KiB ({:+.1}%)",
        after[9],
        after[24],
        (last / first - 1.0) * 100.0
    );
    assert!(
        last <= first * 1.10,
        "RSS grew from {first} KiB to {last} KiB over 50 runtimes: {after:?}"
    );
}
