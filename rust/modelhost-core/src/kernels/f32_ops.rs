//! Row-wise f32 kernels: layer norm, feed-forward activations, and the branch-free `exp`/`erf` they use.
//! Rows are tokens; every buffer is row-major.

use rayon::prelude::*;

use super::f32_simd::{sum, sum_sq_dev};

/// Rows per task for the row-wise kernels (layer norm, embeddings, activations).
pub(crate) const MIN_ROWS: usize = 16;

/// A feed-forward activation (BERT's `hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// Exact GELU, `x Φ(x)` with erf.
    Gelu,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
    Silu,
}

#[inline(always)]
pub(crate) fn layer_norm_row(row: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let var = sum_sq_dev(row, mean) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(g).zip(b) {
        *v = ((*v - mean) * inv).mul_add(*g, *b);
    }
}

/// `x = LN(x + delta)`, row by row.
pub(crate) fn add_layer_norm(x: &mut [f32], delta: &[f32], g: &[f32], b: &[f32], eps: f32) {
    let h = g.len();
    x.par_chunks_mut(h).zip(delta.par_chunks(h)).with_min_len(MIN_ROWS).for_each(|(row, d)| {
        for (v, d) in row.iter_mut().zip(d) {
            *v += d;
        }
        layer_norm_row(row, g, b, eps);
    });
}

/// The feed-forward activation, in place.
pub(crate) fn activate(v: &mut [f32], act: Activation) {
    v.par_chunks_mut(4096).for_each(|chunk| match act {
        Activation::Gelu => chunk.iter_mut().for_each(|x| *x = gelu(*x)),
        Activation::GeluTanh => chunk.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
        Activation::Relu => chunk.iter_mut().for_each(|x| *x = x.max(0.0)),
        Activation::Silu => chunk.iter_mut().for_each(|x| *x = *x / (1.0 + exp(-*x))),
    });
}

/// `e^x` for f32, branch-free so loops over it vectorise (Cephes `expf`: 2^n · e^r with
/// |r| ≤ ln2/2 and a degree-7 polynomial; relative error about 1e-7). Inputs are clamped to the
/// normal range, so very negative ones give ~1e-38 rather than 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.0);
    let n = x.mul_add(std::f32::consts::LOG2_E, 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf for f32, branch-free (Eigen's rational approximation, within a few ulp; beyond |x| = 3.92
/// erf rounds to ±1 in f32, which the approximation misses by an ulp, so it is selected exactly).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const SATURATED: f32 = 3.92;
    let saturated = 1f32.copysign(x);
    let big = x.abs() >= SATURATED;
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.9546e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    if big {
        saturated
    } else {
        x * p / q
    }
}

/// Exact GELU, `x/2 · (1 + erf(x/√2))`, as PyTorch's default.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    let y = C * x.mul_add(0.044_715 * x * x, x);
    // tanh(y) = 1 - 2 / (e^{2y} + 1), saturating cleanly at ±1.
    let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// Textbook f64 versions of the activations, the reference the tests measure the f32 kernels against.
#[cfg(test)]
pub(crate) mod reference {
    pub(crate) fn erf64(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        // Maclaurin series; exact to ~1e-12 for |x| <= 5 in f64.
        let (mut term, mut total, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            total += term / (2.0 * n + 1.0);
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    pub(crate) fn act64(x: f64, act: &str) -> f64 {
        match act {
            "gelu" => 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2)),
            "gelu_new" => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh()),
            "relu" => x.max(0.0),
            "silu" => x / (1.0 + (-x).exp()),
            other => panic!("{other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reference::{act64, erf64};
    use super::*;

    #[test]
    fn math_kernels_are_accurate() {
        let mut worst = (0f64, 0f64, 0f64, 0f64);
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.0005; // [-10, 10]
            let e = f64::from(x).exp();
            worst.0 = worst.0.max((f64::from(exp(x)) - e).abs() / e);
            worst.1 = worst.1.max((f64::from(erf(x)) - erf64(f64::from(x))).abs());
            worst.2 = worst.2.max((f64::from(gelu(x)) - act64(f64::from(x), "gelu")).abs());
            worst.3 = worst.3.max((f64::from(gelu_tanh(x)) - act64(f64::from(x), "gelu_new")).abs());
        }
        assert!(worst.0 < 3e-7, "exp relative error {}", worst.0);
        // Eigen's approximation is a few ulp off near |x| = 3.3 (4e-7), harmless at 1e-4 tolerances.
        assert!(worst.1 < 5e-7, "erf abs error {}", worst.1);
        assert!(worst.2 < 2e-6, "gelu abs error {}", worst.2);
        assert!(worst.3 < 2e-6, "gelu_tanh abs error {}", worst.3);
        assert_eq!(exp(-1000.0).to_bits(), exp(-87.3).to_bits());
        assert!(exp(1000.0).is_finite());
        assert_eq!(gelu(-20.0), 0.0);
        assert_eq!(erf(3.95), 1.0);
        assert_eq!(gelu(20.0), 20.0);
    }
}
