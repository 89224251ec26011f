//! Per-token confidence signals from the raw next-token logits, and their per-response summary.
//!
//! One token costs two passes over the vocabulary: a max pass (tracking the top two logits) and
//! an exp pass accumulating the partition function Z and sum(z * e^z) for the entropy. Both run on
//! eight f32 lanes with a branch-free polynomial exp: explicit AVX-512 (sixteen lanes) or AVX2/FMA
//! on x86-64 (picked at run time), and a lane-array form elsewhere that LLVM vectorises to NEON. The chosen token's
//! probability comes out of the same numbers.

// Math kernels read best with math names.
#![allow(clippy::many_single_char_names)]

pub use crate::signal::{summarize, TokenSignal};

// The portable kernel (the max and exp passes, `finish`) lives in `kernel.rs`, free of crate
// dependencies, so scripts/check-neon.sh can compile it alone for aarch64 and check that it
// vectorises to NEON.
#[path = "kernel.rs"]
mod kernel;
use kernel::stats_impl;
pub use kernel::Stats;

/// The portable kernel that runs where AVX2 does not (ARM phones, older x86), exposed so the
/// bench can time it beside the AVX2 one.
#[doc(hidden)]
pub fn stats_portable(logits: &[f32]) -> Stats {
    stats_impl(logits)
}

impl Stats {
    /// The signals of `chosen`.
    pub fn signal(&self, logits: &[f32], chosen: usize) -> TokenSignal {
        let logprob = logits
            .get(chosen)
            .map_or(f32::NEG_INFINITY, |&x| x - self.max - self.log_z);
        TokenSignal {
            logprob,
            entropy: self.entropy,
            margin: self.margin,
            top_logprob: -self.log_z,
        }
    }

    /// The greedy token: the first index holding the largest logit (llama.cpp's tie rule).
    ///
    /// Scanned a block at a time: the test over a block has no early exit, so LLVM vectorises
    /// it, and only the block holding the max is searched logit by logit. A plain `position`
    /// compares one logit per step (cargo bench --bench confidence times both).
    #[allow(clippy::float_cmp)] // the max is one of these values, bit for bit
    pub fn argmax(&self, logits: &[f32]) -> usize {
        const BLOCK: usize = 64;
        let m = self.max;
        for (b, block) in logits.chunks(BLOCK).enumerate() {
            if block.iter().fold(false, |hit, &x| hit | (x == m)) {
                return b * BLOCK + block.iter().position(|&x| x == m).unwrap_or(0);
            }
        }
        0
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_add_epi32, _mm256_add_ps, _mm256_castps_si256, _mm256_castsi256_ps,
        _mm256_fmadd_ps, _mm256_fnmadd_ps, _mm256_loadu_ps, _mm256_max_ps, _mm256_min_ps,
        _mm256_mul_ps, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_ps, _mm256_slli_epi32,
        _mm256_storeu_ps, _mm256_sub_epi32, _mm256_sub_ps,
    };

    use super::kernel::{exp_tail, finish, top_two, LANES};

    /// Eight lanes of `exp_neg`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let shift = _mm256_set1_ps(12_582_912.0);
        let t = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), shift);
        let n = _mm256_sub_ps(t, shift);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(0.001_395_4);
        for c in [0.008_333_45, 0.041_666_52, 0.166_666_67, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let bits = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B40_0000));
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            bits,
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(p, scale)
    }

    fn lanes(v: __m256) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        // SAFETY: `out` has room for eight f32; unaligned store.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn stats(logits: &[f32]) -> super::Stats {
        let n = logits.len() / LANES * LANES;
        let p = logits.as_ptr();
        let mut t1 = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut t2 = t1;
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= logits.len().
            let x = unsafe { _mm256_loadu_ps(p.add(i)) };
            t2 = _mm256_max_ps(t2, _mm256_min_ps(t1, x));
            t1 = _mm256_max_ps(t1, x);
            i += LANES;
        }
        let (m1, m2) = top_two(lanes(t1).iter().chain(lanes(t2).iter()).chain(&logits[n..]));
        let vm = _mm256_set1_ps(m1);
        let (mut z0, mut z1, mut ze0, mut ze1) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        i = 0;
        while i + 2 * LANES <= n {
            // SAFETY: i + 16 <= logits.len().
            let (a, b) = unsafe { (_mm256_loadu_ps(p.add(i)), _mm256_loadu_ps(p.add(i + LANES))) };
            let (da, db) = (_mm256_sub_ps(a, vm), _mm256_sub_ps(b, vm));
            let (ea, eb) = (exp8(da), exp8(db));
            z0 = _mm256_add_ps(z0, ea);
            z1 = _mm256_add_ps(z1, eb);
            ze0 = _mm256_fmadd_ps(da, ea, ze0);
            ze1 = _mm256_fmadd_ps(db, eb, ze1);
            i += 2 * LANES;
        }
        let zs: f32 = lanes(_mm256_add_ps(z0, z1)).iter().sum();
        let zes: f32 = lanes(_mm256_add_ps(ze0, ze1)).iter().sum();
        let (zs, zes) = exp_tail(&logits[i..], m1, zs, zes);
        finish(m1, m2, zs, zes)
    }
}

/// The AVX2 kernel on sixteen lanes: half the instructions per logit, which matters at gemma's
/// 262k-token vocabulary (the exp pass is bound by arithmetic, not by memory: 1 MB of logits
/// stays in L2 between the passes).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _mm512_add_epi32, _mm512_add_ps, _mm512_castps_si512, _mm512_castsi512_ps,
        _mm512_fmadd_ps, _mm512_fnmadd_ps, _mm512_loadu_ps, _mm512_max_ps, _mm512_min_ps,
        _mm512_mul_ps, _mm512_reduce_add_ps, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_slli_epi32, _mm512_storeu_ps, _mm512_sub_epi32, _mm512_sub_ps,
    };

    use super::kernel::{exp_tail, finish, top_two};

    const W: usize = 16;

    /// Sixteen lanes of `exp_neg`, the same steps as `exp8`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let shift = _mm512_set1_ps(12_582_912.0);
        let t = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), shift);
        let n = _mm512_sub_ps(t, shift);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(0.001_395_4);
        for c in [0.008_333_45, 0.041_666_52, 0.166_666_67, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let bits = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B40_0000));
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            bits,
            _mm512_set1_epi32(127),
        )));
        _mm512_mul_ps(p, scale)
    }

    #[target_feature(enable = "avx512f")]
    fn lanes(v: __m512) -> [f32; W] {
        let mut out = [0f32; W];
        // SAFETY: `out` has room for sixteen f32; unaligned store.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn stats(logits: &[f32]) -> super::Stats {
        let n = logits.len() / W * W;
        let p = logits.as_ptr();
        let mut t1 = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut t2 = t1;
        let mut i = 0;
        while i < n {
            // SAFETY: i + 16 <= logits.len().
            let x = unsafe { _mm512_loadu_ps(p.add(i)) };
            t2 = _mm512_max_ps(t2, _mm512_min_ps(t1, x));
            t1 = _mm512_max_ps(t1, x);
            i += W;
        }
        let (m1, m2) = top_two(lanes(t1).iter().chain(lanes(t2).iter()).chain(&logits[n..]));
        let vm = _mm512_set1_ps(m1);
        let (mut z0, mut z1, mut ze0, mut ze1) = (
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
        );
        i = 0;
        while i + 2 * W <= n {
            // SAFETY: i + 32 <= logits.len().
            let (a, b) = unsafe { (_mm512_loadu_ps(p.add(i)), _mm512_loadu_ps(p.add(i + W))) };
            let (da, db) = (_mm512_sub_ps(a, vm), _mm512_sub_ps(b, vm));
            let (ea, eb) = (exp16(da), exp16(db));
            z0 = _mm512_add_ps(z0, ea);
            z1 = _mm512_add_ps(z1, eb);
            ze0 = _mm512_fmadd_ps(da, ea, ze0);
            ze1 = _mm512_fmadd_ps(db, eb, ze1);
            i += 2 * W;
        }
        let zs = _mm512_reduce_add_ps(_mm512_add_ps(z0, z1));
        let zes = _mm512_reduce_add_ps(_mm512_add_ps(ze0, ze1));
        let (zs, zes) = exp_tail(&logits[i..], m1, zs, zes);
        finish(m1, m2, zs, zes)
    }
}

/// Confidence signals of `chosen` under the softmax of `logits`.
pub fn token_signal(logits: &[f32], chosen: usize) -> TokenSignal {
    stats(logits).signal(logits, chosen)
}

/// The x86-64 kernels this CPU can run, best first.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Portable,
    Avx2,
    Avx512,
}

#[cfg(target_arch = "x86_64")]
fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if is_x86_feature_detected!("avx512f") {
            Level::Avx512
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Level::Avx2
        } else {
            Level::Portable
        }
    })
}

/// Summary of the softmax of `logits`, by the best kernel this CPU runs.
pub fn stats(logits: &[f32]) -> Stats {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU supports AVX-512F, checked by `level`.
        Level::Avx512 => return unsafe { avx512::stats(logits) },
        // SAFETY: the CPU supports AVX2 and FMA, checked by `level`.
        Level::Avx2 => return unsafe { avx2::stats(logits) },
        Level::Portable => {}
    }
    stats_impl(logits)
}

/// The name of the kernel `stats` runs on this CPU (for the bench and `--verbose`).
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    match level() {
        Level::Avx512 => return "avx512",
        Level::Avx2 => return "avx2",
        Level::Portable => {}
    }
    "portable"
}

/// The AVX2 kernel, when this CPU runs it, exposed so the bench and the tests can run it beside
/// the AVX-512 one.
#[doc(hidden)]
pub fn stats_avx2(logits: &[f32]) -> Option<Stats> {
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: the CPU supports AVX2 and FMA (every AVX-512 CPU does), checked by `level`.
        return Some(unsafe { avx2::stats(logits) });
    }
    let _ = logits;
    None
}

/// The AVX-512 kernel, when this CPU runs it.
#[doc(hidden)]
pub fn stats_avx512(logits: &[f32]) -> Option<Stats> {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: the CPU supports AVX-512F, checked by `level`.
        return Some(unsafe { avx512::stats(logits) });
    }
    let _ = logits;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(logits: &[f32], chosen: usize) -> (f64, f64, f64) {
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = logits.iter().map(|&x| (x as f64 - m).exp()).sum();
        let p: Vec<f64> = logits.iter().map(|&x| (x as f64 - m).exp() / z).collect();
        let h = -p
            .iter()
            .filter(|&&q| q > 0.0)
            .map(|q| q * q.ln())
            .sum::<f64>();
        let mut s = p.clone();
        s.sort_by(|a, b| b.total_cmp(a));
        (p[chosen].ln(), h, s[0] - s.get(1).copied().unwrap_or(0.0))
    }

    #[test]
    fn matches_f64_reference() {
        check_against_reference(token_signal);
    }

    /// The portable kernel (NEON on phones) on this machine too, whatever it picks at run time.
    #[test]
    fn portable_kernel_matches_f64_reference() {
        check_against_reference(|l, c| stats_portable(l).signal(l, c));
    }

    /// Each x86 kernel this CPU runs, whichever `stats` picks. AVX2 is required of every
    /// x86-64 machine we test on (llama.cpp's default build needs it too): its absence fails
    /// rather than passing untested. AVX-512 is tested where the CPU has it (the AMD and Intel
    /// CI machines do; an AVX2-only CPU says so). On aarch64 the portable kernel is the one
    /// that runs, and `portable_kernel_matches_f64_reference` tests it.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn each_x86_kernel_matches_f64_reference() {
        assert!(
            stats_avx2(&[0.0]).is_some(),
            "no AVX2 on this x86-64 CPU: its kernel cannot be tested here"
        );
        check_against_reference(|l, c| stats_avx2(l).unwrap().signal(l, c));
        assert_eq!(
            kernel_name(),
            if stats_avx512(&[0.0]).is_some() {
                "avx512"
            } else {
                "avx2"
            },
            "stats picks the best kernel this CPU runs"
        );
        if stats_avx512(&[0.0]).is_some() {
            check_against_reference(|l, c| stats_avx512(l).unwrap().signal(l, c));
        } else {
            eprintln!("no AVX-512 on this CPU: its kernel is not tested here");
        }
    }

    /// The block scan finds the first largest logit wherever it lies: in the first or last
    /// block, on a block edge, in a short tail, tied with a later one, or when every logit is -inf.
    #[test]
    #[allow(clippy::float_cmp)]
    fn argmax_is_the_first_largest_logit() {
        for n in [1usize, 2, 63, 64, 65, 127, 128, 129, 1000, 49_152] {
            for at in [0, 1, 62, 63, 64, 65, 127, 128, n / 2, n - 1] {
                if at >= n {
                    continue;
                }
                let mut logits: Vec<f32> = (0..n).map(|i| ((i * 29) % 13) as f32 - 6.0).collect();
                logits[at] = 7.5;
                let plain = logits.iter().position(|&x| x == 7.5).unwrap();
                assert_eq!(stats(&logits).argmax(&logits), plain, "n={n} at={at}");
                // A later tie does not move it; an earlier one does.
                logits[n - 1] = 7.5;
                assert_eq!(stats(&logits).argmax(&logits), at, "n={n} at={at}");
                logits[0] = 7.5;
                assert_eq!(stats(&logits).argmax(&logits), 0, "n={n} at={at}");
            }
        }
        let all_low = vec![f32::NEG_INFINITY; 130];
        assert_eq!(stats(&all_low).argmax(&all_low), 0);
    }

    /// The kernels find the same top two and the same greedy token on ties and odd lengths
    /// (a duplicate maximum gives a zero margin in every kernel).
    #[test]
    #[allow(clippy::float_cmp)] // the max is one of the logits, bit for bit, in every kernel
    fn kernels_agree_on_ties_and_tails() {
        for n in [1usize, 15, 16, 17, 31, 32, 33, 47, 1000] {
            for dup in [false, true] {
                let mut logits: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
                logits[n / 3] = 9.0;
                if dup && n > 1 {
                    logits[n - 1] = 9.0;
                }
                let want = stats_portable(&logits);
                for got in [stats_avx2(&logits), stats_avx512(&logits)]
                    .into_iter()
                    .flatten()
                {
                    assert_eq!((got.max, got.argmax(&logits)), (want.max, n / 3), "n={n}");
                    assert!((got.margin - want.margin).abs() < 1e-5, "n={n} dup={dup}");
                    assert!((got.log_z - want.log_z).abs() < 1e-4, "n={n} dup={dup}");
                }
            }
        }
    }

    fn check_against_reference(token_signal: fn(&[f32], usize) -> TokenSignal) {
        let mut x = 12345u64;
        for n in [1usize, 2, 7, 8, 9, 100, 49_152, 151_936] {
            let logits: Vec<f32> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 4000) as f32 / 100.0 - 20.0
                })
                .collect();
            for chosen in [0, n / 2, n - 1] {
                let s = token_signal(&logits, chosen);
                let (lp, h, m) = reference(&logits, chosen);
                assert!(
                    (s.logprob as f64 - lp).abs() < 1e-3 * lp.abs().max(1.0),
                    "n={n} lp {} vs {lp}",
                    s.logprob
                );
                assert!(
                    (s.entropy as f64 - h).abs() < 1e-3 * h.max(1.0),
                    "n={n} h {} vs {h}",
                    s.entropy
                );
                assert!(
                    (s.margin as f64 - m).abs() < 1e-4,
                    "n={n} margin {} vs {m}",
                    s.margin
                );
            }
        }
    }

    #[test]
    fn peaked_distribution() {
        let mut logits = vec![0.0f32; 1000];
        logits[3] = 50.0;
        let s = token_signal(&logits, 3);
        assert!(s.logprob > -1e-6 && s.entropy < 1e-3 && s.margin > 0.999);
        let s = token_signal(&logits, 4);
        assert!(s.logprob < -49.0);
    }

    #[test]
    fn summary() {
        let sig = |p: f32| TokenSignal {
            logprob: p.ln(),
            entropy: 1.0,
            margin: 0.5,
            top_logprob: p.ln(),
        };
        let c = summarize(&(1..=10).map(|i| sig(i as f32 / 10.0)).collect::<Vec<_>>());
        assert!((c.min_prob - 0.1).abs() < 1e-6 && (c.p10_prob - 0.1).abs() < 1e-6);
        assert!((c.first_prob - 0.1).abs() < 1e-6 && c.tokens == 10);
        assert_eq!(summarize(&[]).tokens, 0);
        // Every token the model's first choice: nothing forced.
        assert_eq!(c.max_forced, 0.0);
        // A grammar wrote a token at 0.1 where the model's top token had 0.7: forced by 0.6.
        let mut forced = sig(0.1);
        forced.top_logprob = 0.7f32.ln();
        let c = summarize(&[sig(0.9), forced, sig(0.8)]);
        assert!((c.max_forced - 0.6).abs() < 1e-6, "{}", c.max_forced);
    }
}
