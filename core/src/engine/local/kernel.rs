//! The portable confidence kernel: the max pass (top two logits) and the exp pass (Z and
//! sum z e^z) on eight f32 lanes, written so LLVM vectorises it: NEON on aarch64 (checked in the
//! generated assembly by scripts/check-neon.sh), SSE2 on x86-64 without AVX2. No crate
//! dependencies, so that script can compile this file alone.

// Math kernels read best with math names.
#![allow(clippy::many_single_char_names)]

pub(super) const LANES: usize = 8;

/// a * b + c: fused where the hardware has it (aarch64, x86-64 built with FMA), plain
/// elsewhere. `f32::mul_add` without hardware FMA is a call into libm per element.
#[inline(always)]
#[allow(clippy::inline_always, clippy::suboptimal_flops)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_arch = "aarch64", target_feature = "fma")) {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// e^x for x <= 0, relative error about 2e-7. Branch-free and integer-only for the exponent
/// (a saturating float-to-int cast would stop LLVM from vectorising the loop).
#[inline(always)]
pub(super) fn exp_neg(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low bits
    let x = x.max(-87.0);
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = fma(n, -0.693_145_75, x);
    let r = fma(n, -1.428_606_8e-6, r);
    // Horner's rule with fused steps where the hardware fuses (fmla on NEON).
    let mut p = 0.001_395_4;
    for c in [0.008_333_45, 0.041_666_52, 0.166_666_67, 0.5, 1.0, 1.0] {
        p = fma(p, r, c);
    }
    // t's bit pattern is 0x4B40_0000 + n for n in [-126, 0]: build 2^n from it directly.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    p * scale
}

#[inline(always)] // inlined into the target-feature wrapper, so it gets its codegen
#[allow(clippy::inline_always)]
pub(super) fn stats_impl(logits: &[f32]) -> Stats {
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    let mut t1 = [f32::NEG_INFINITY; LANES];
    let mut t2 = [f32::NEG_INFINITY; LANES];
    for c in chunks.clone() {
        let c: &[f32; LANES] = c.try_into().expect("chunk of LANES");
        for l in 0..LANES {
            let x = c[l];
            // min/max, not compare-and-select: they map to single vector instructions
            // (fminnm/fmaxnm on NEON, minps/maxps on x86).
            t2[l] = t2[l].max(t1[l].min(x));
            t1[l] = t1[l].max(x);
        }
    }
    let (m1, m2) = top_two(t1.iter().chain(t2.iter()).chain(rest));
    let mut z = [0f32; LANES];
    let mut ze = [0f32; LANES];
    for c in chunks {
        let c: &[f32; LANES] = c.try_into().expect("chunk of LANES");
        for l in 0..LANES {
            let d = c[l] - m1;
            let e = exp_neg(d);
            z[l] += e;
            ze[l] = fma(d, e, ze[l]);
        }
    }
    let (zs, zes) = exp_tail(rest, m1, z.iter().sum::<f32>(), ze.iter().sum::<f32>());
    finish(m1, m2, zs, zes)
}

/// The largest and second largest of `xs` (a repeated maximum is its own runner-up): merges
/// each kernel's per-lane top two and the tail past the last full vector.
#[inline(always)] // one copy per kernel, in its target-feature context
#[allow(clippy::inline_always)]
pub(super) fn top_two<'a>(xs: impl Iterator<Item = &'a f32>) -> (f32, f32) {
    let (mut m1, mut m2) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in xs {
        if x > m1 {
            m2 = m1;
            m1 = x;
        } else if x > m2 {
            m2 = x;
        }
    }
    (m1, m2)
}

/// Adds the logits past the last full vector to Z and sum z e^z.
#[inline(always)]
#[allow(clippy::inline_always)]
pub(super) fn exp_tail(rest: &[f32], m1: f32, mut zs: f32, mut zes: f32) -> (f32, f32) {
    for &x in rest {
        let d = x - m1;
        let e = exp_neg(d);
        zs += e;
        zes += d * e;
    }
    (zs, zes)
}

/// The stats from the max, runner-up, Z = sum e^(x - max) and sum (x - max) e^(x - max).
pub(super) fn finish(m1: f32, m2: f32, zs: f32, zes: f32) -> Stats {
    let log_z = zs.ln();
    Stats {
        max: m1,
        log_z,
        entropy: (log_z - zes / zs).max(0.0),
        margin: (1.0 - exp_neg(m2 - m1)) / zs,
    }
}

/// One next-token distribution, summarised: enough to score any token, and to find the greedy one.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// The largest logit.
    pub max: f32,
    /// ln Z, with Z = sum e^(x - max).
    pub log_z: f32,
    /// Entropy in nats.
    pub entropy: f32,
    /// p(top-1) - p(top-2).
    pub margin: f32,
}
