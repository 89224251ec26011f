//! Cost of the per-token confidence signals at real vocabulary sizes (run: cargo bench -p
//! edgecascade --bench confidence). Compare with decode time per token: the target is < 1%.
//! Every kernel this CPU runs is timed side by side, alternated: AVX-512 and AVX2 (x86-64 picks
//! the best at run time) and the portable one that ARM phones (NEON) and older x86 CPUs run.

use std::hint::black_box;
use std::time::Instant;

use edgecascade::engine::local::confidence::{
    kernel_name, stats_avx2, stats_avx512, stats_portable, Stats,
};

type Kernel = fn(&[f32]) -> Stats;

fn time<R>(f: impl Fn(&[f32]) -> R, logits: &[f32]) -> f64 {
    let iters = 500;
    let t = Instant::now();
    for _ in 0..iters {
        black_box(f(black_box(logits)));
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
}

fn main() {
    let mut kernels: Vec<(&str, Kernel)> = Vec::new();
    if stats_avx512(&[0.0]).is_some() {
        kernels.push(("avx512", |l| stats_avx512(l).expect("checked")));
    }
    if stats_avx2(&[0.0]).is_some() {
        kernels.push(("avx2", |l| stats_avx2(l).expect("checked")));
    }
    kernels.push(("portable", stats_portable));
    println!("run-time pick on this CPU: {}", kernel_name());
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
        // The kernels agree.
        let want = stats_portable(&logits);
        for (k, f) in &kernels {
            let got = f(&logits);
            assert!(
                (got.log_z - want.log_z).abs() < 1e-3 && (got.entropy - want.entropy).abs() < 1e-3,
                "{k} disagrees with the portable kernel"
            );
        }
        for _ in 0..50 {
            for (_, f) in &kernels {
                black_box(f(black_box(&logits)));
            }
        }
        let mut times = vec![Vec::new(); kernels.len()];
        for _ in 0..7 {
            for (t, (_, f)) in times.iter_mut().zip(&kernels) {
                t.push(time(*f, &logits));
            }
        }
        let medians: Vec<f64> = times
            .iter_mut()
            .map(|t| {
                t.sort_by(f64::total_cmp);
                t[t.len() / 2]
            })
            .collect();
        let cells: Vec<String> = kernels
            .iter()
            .zip(&medians)
            .map(|((k, _), m)| format!("{k} {m:6.1} us ({:.2}x)", m / medians[0]))
            .collect();
        println!("{name:8} vocab {n:>7}: {}", cells.join(", "));
        argmax_times(n, logits);
    }
}

/// The greedy token's scan, the block scan against a plain `position`, with the largest logit
/// three quarters of the way along the vocabulary.
#[allow(clippy::float_cmp)]
fn argmax_times(n: usize, mut logits: Vec<f32>) {
    logits[n * 3 / 4] = 99.0;
    let s = stats_portable(&logits);
    assert_eq!(s.argmax(&logits), n * 3 / 4);
    let block = |l: &[f32]| s.argmax(l);
    let plain = |l: &[f32]| l.iter().position(|&x| x == 99.0);
    let (mut b, mut p) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        b.push(time(block, &logits));
        p.push(time(plain, &logits));
    }
    b.sort_by(f64::total_cmp);
    p.sort_by(f64::total_cmp);
    let (b, p) = (b[3], p[3]);
    println!(
        "{:8} argmax at 3/4: block scan {b:6.1} us, plain position {p:6.1} us ({:.2}x)",
        "",
        p / b
    );
}
