//! Cost of the per-token confidence signals at real vocabulary sizes (run: cargo bench -p
//! edgecascade --bench confidence). Compare with decode time per token: the target is < 1%.

use std::hint::black_box;
use std::time::Instant;

use edgecascade::engine::local::confidence::token_signal;

fn main() {
    for (name, n) in [
        ("SmolLM2", 49_152usize),
        ("Qwen2.5", 151_936),
        ("gemma-3", 262_144),
    ] {
        let mut x = 7u64;
        let logits: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 3000) as f32 / 100.0 - 15.0
            })
            .collect();
        for _ in 0..50 {
            black_box(token_signal(black_box(&logits), 17));
        }
        let iters = 2000;
        let t = Instant::now();
        for i in 0..iters {
            black_box(token_signal(black_box(&logits), i % n));
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        println!("{name:8} vocab {n:>7}: {us:7.1} us per token");
    }
}
