//! Cost of the per-token confidence signals at real vocabulary sizes (run: cargo bench -p
//! edgecascade --bench confidence). Compare with decode time per token: the target is < 1%.
//! Both kernels run side by side, alternated: the AVX2 one x86-64 picks at run time, and the
//! portable one ARM phones (NEON) and older x86 CPUs run.

use std::hint::black_box;
use std::time::Instant;

use edgecascade::engine::local::confidence::{stats, stats_portable};

fn time(f: fn(&[f32]) -> edgecascade::engine::local::confidence::Stats, logits: &[f32]) -> f64 {
    let iters = 500;
    let t = Instant::now();
    for _ in 0..iters {
        black_box(f(black_box(logits)));
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
}

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
        // The two kernels agree.
        let (a, b) = (stats(&logits), stats_portable(&logits));
        assert!((a.log_z - b.log_z).abs() < 1e-3 && (a.entropy - b.entropy).abs() < 1e-3);
        for _ in 0..50 {
            black_box(stats(black_box(&logits)));
            black_box(stats_portable(black_box(&logits)));
        }
        let (mut fast, mut portable) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            fast.push(time(stats, &logits));
            portable.push(time(stats_portable, &logits));
        }
        fast.sort_by(f64::total_cmp);
        portable.sort_by(f64::total_cmp);
        println!(
            "{name:8} vocab {n:>7}: {:7.1} us per token (run-time pick), {:7.1} us portable kernel ({:.2}x)",
            fast[2],
            portable[2],
            portable[2] / fast[2]
        );
    }
}
