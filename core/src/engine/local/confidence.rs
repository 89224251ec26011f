//! Per-token confidence signals from the raw next-token logits, and their per-response summary.
//!
//! One token costs two passes over the vocabulary: a max pass (tracking the top two logits) and
//! an exp pass accumulating the partition function Z and sum(z * e^z) for the entropy. Both run on
//! eight f32 lanes with a branch-free polynomial exp, so LLVM vectorises them; on x86-64 an AVX2
//! copy is picked at run time. The chosen token's probability comes out of the same numbers.

use crate::types::Confidence;

/// Signals for one generated token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenSignal {
    /// ln p(chosen token).
    pub logprob: f32,
    /// Entropy of the distribution, in nats.
    pub entropy: f32,
    /// p(top-1) - p(top-2).
    pub margin: f32,
}

impl TokenSignal {
    /// p(chosen token).
    pub fn prob(&self) -> f32 {
        self.logprob.exp()
    }
}

const LANES: usize = 8;

/// e^x for x <= 0, relative error about 2e-7; branch-free so it vectorises.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0; // round to nearest
    let r = n.mul_add(-0.693_145_75, x);
    let r = n.mul_add(-1.428_606_8e-6, r);
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67 + r * (0.041_666_52 + r * (0.008_333_45 + r * 0.001_395_4)))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[inline(always)]
fn signal_impl(logits: &[f32], chosen: usize) -> TokenSignal {
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    let mut t1 = [f32::NEG_INFINITY; LANES];
    let mut t2 = [f32::NEG_INFINITY; LANES];
    for c in chunks.clone() {
        for l in 0..LANES {
            let x = c[l];
            t2[l] = t2[l].max(t1[l].min(x));
            t1[l] = t1[l].max(x);
        }
    }
    let (mut m1, mut m2) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in t1.iter().chain(t2.iter()).chain(rest) {
        if x > m1 {
            m2 = m1;
            m1 = x;
        } else if x > m2 {
            m2 = x;
        }
    }
    let mut z = [0f32; LANES];
    let mut ze = [0f32; LANES];
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - m1;
            let e = exp_neg(d);
            z[l] += e;
            ze[l] += d * e;
        }
    }
    let (mut zs, mut zes) = (z.iter().sum::<f32>(), ze.iter().sum::<f32>());
    for &x in rest {
        let d = x - m1;
        let e = exp_neg(d);
        zs += e;
        zes += d * e;
    }
    let log_z = zs.ln();
    let logprob = logits
        .get(chosen)
        .map_or(f32::NEG_INFINITY, |&x| x - m1 - log_z);
    let entropy = (log_z - zes / zs).max(0.0);
    let margin = (1.0 - exp_neg(m2 - m1)) / zs;
    TokenSignal {
        logprob,
        entropy,
        margin,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn signal_avx2(logits: &[f32], chosen: usize) -> TokenSignal {
    signal_impl(logits, chosen)
}

/// Confidence signals of `chosen` under the softmax of `logits`.
pub fn token_signal(logits: &[f32], chosen: usize) -> TokenSignal {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2: OnceLock<bool> = OnceLock::new();
        if *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked above.
            return unsafe { signal_avx2(logits, chosen) };
        }
    }
    signal_impl(logits, chosen)
}

/// Summarises a response's token signals.
pub fn summarize(signals: &[TokenSignal]) -> Confidence {
    if signals.is_empty() {
        return Confidence::default();
    }
    let n = signals.len() as f64;
    let mut probs: Vec<f64> = signals.iter().map(|s| f64::from(s.prob())).collect();
    let first_prob = probs[0];
    probs.sort_by(f64::total_cmp);
    // Nearest-rank 10th percentile.
    let p10 = probs[((0.1 * n).ceil() as usize)
        .saturating_sub(1)
        .min(probs.len() - 1)];
    Confidence {
        mean_logprob: signals.iter().map(|s| f64::from(s.logprob)).sum::<f64>() / n,
        min_prob: probs[0],
        p10_prob: p10,
        mean_entropy: signals.iter().map(|s| f64::from(s.entropy)).sum::<f64>() / n,
        mean_margin: signals.iter().map(|s| f64::from(s.margin)).sum::<f64>() / n,
        first_prob,
        tokens: signals.len() as u32,
    }
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
        };
        let c = summarize(&(1..=10).map(|i| sig(i as f32 / 10.0)).collect::<Vec<_>>());
        assert!((c.min_prob - 0.1).abs() < 1e-6 && (c.p10_prob - 0.1).abs() < 1e-6);
        assert!((c.first_prob - 0.1).abs() < 1e-6 && c.tokens == 10);
        assert_eq!(summarize(&[]).tokens, 0);
    }
}
