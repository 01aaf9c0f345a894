//! Dense f32 matrix products, `x · wᵀ + b` with `w` in PyTorch's `[out, in]` layout: on CPUs with AVX-512 the
//! kernels of `f32_avx512`; otherwise `gemm` (candle's CPU matmul kernel) for many rows, and a register-tiled
//! kernel for a few rows, which streams each weight row once where `gemm` would first pack the weights.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::f32_ops::{self, Activation};
use super::f32_simd::{dot, dots};

/// At most this many tokens use the register-tiled kernel instead of `gemm`, whose packing of the
/// weights costs more than it saves for a few rows.
pub(crate) const SMALL_T: usize = 16;
/// Output features per task in the small kernel.
const FEATURE_BLOCK: usize = 64;

/// One matrix of a product: `dst[r, col0..col0 + n] = x[r] · wᵀ + b`, `w` being `[n, k]` and `n = b.len()`.
pub(crate) struct Projection<'a> {
    pub(crate) w: &'a [f32],
    pub(crate) b: &'a [f32],
    pub(crate) col0: usize,
}

/// Every projection of one input `x` (`[t, k]`) into its columns of `dst` (rows `dst_rs` apart), then `act` over
/// the result (`act` needs a single projection filling whole rows). CPUs with AVX-512 run the encoder on
/// `f32_avx512` instead.
pub(crate) fn project(
    x: &[f32],
    t: usize,
    k: usize,
    projections: &[Projection<'_>],
    dst: &mut [f32],
    dst_rs: usize,
    act: Option<Activation>,
) {
    assert!(act.is_none() || (projections.len() == 1 && projections[0].col0 == 0 && projections[0].b.len() == dst_rs));
    for p in projections {
        linear(x, t, k, p.w, p.b, p.b.len(), dst, dst_rs, p.col0);
    }
    if let Some(act) = act {
        f32_ops::activate(&mut dst[..t * dst_rs], act);
    }
}

/// `gemm`'s threading: rayon's workers, or none when there is only one.
fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst[r, col0..col0 + n] = x[r, ..k] · wᵀ + b` for the `t` rows of `x`, with `w` in PyTorch's
/// `[n, k]` layout and `dst` rows `dst_rs` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    x: &[f32],
    t: usize,
    k: usize,
    w: &[f32],
    b: &[f32],
    n: usize,
    dst: &mut [f32],
    dst_rs: usize,
    col0: usize,
) {
    // The bounds `gemm` relies on; shapes were validated at load, so these never fire.
    assert!(x.len() >= t * k && w.len() == n * k && b.len() == n && col0 + n <= dst_rs && dst.len() >= t * dst_rs);
    if t == 0 || n == 0 {
        return;
    }
    if t <= SMALL_T {
        return linear_small(x, t, k, w, b, n, dst, dst_rs, col0);
    }
    for row in dst.chunks_mut(dst_rs).take(t) {
        row[col0..col0 + n].copy_from_slice(b);
    }
    // SAFETY: the assert above keeps every access in bounds: lhs rows r < t of length k at stride k,
    // rhs element (i, j) = w[j·k + i] with i < k, j < n, dst element (r, j) at r·dst_rs + col0 + j
    // with j < n ≤ dst_rs - col0. No other reference to `dst` is alive.
    unsafe {
        gemm(
            t,
            n,
            k,
            dst.as_mut_ptr().add(col0),
            1,
            dst_rs as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
    }
}

/// A few rows: each output feature's weight row is read once from memory and dotted with up to
/// eight rows of `x` at a time in registers (weights stream at memory speed; `gemm` would first
/// pack them).
#[allow(clippy::too_many_arguments)]
fn linear_small(
    x: &[f32],
    t: usize,
    k: usize,
    w: &[f32],
    b: &[f32],
    n: usize,
    dst: &mut [f32],
    dst_rs: usize,
    col0: usize,
) {
    let blocks: Vec<usize> = (0..n).step_by(FEATURE_BLOCK).collect();
    // Each task fills a [features, t] tile; tiles are then written out row by row.
    let tiles: Vec<Vec<f32>> = blocks
        .par_iter()
        .map(|&f0| {
            let f1 = (f0 + FEATURE_BLOCK).min(n);
            let mut tile = vec![0f32; (f1 - f0) * t];
            let xr = |r: usize| &x[r * k..(r + 1) * k];
            let wr = |f: usize| &w[f * k..(f + 1) * k];
            for f in f0..f1 {
                let wf = wr(f);
                let out = &mut tile[(f - f0) * t..(f - f0 + 1) * t];
                let mut r = 0;
                while r + 8 <= t {
                    let d = dots::<1, 8>([wf], std::array::from_fn(|i| xr(r + i)));
                    out[r..r + 8].copy_from_slice(&d[0]);
                    r += 8;
                }
                if r + 4 <= t {
                    let d = dots::<1, 4>([wf], std::array::from_fn(|i| xr(r + i)));
                    out[r..r + 4].copy_from_slice(&d[0]);
                    r += 4;
                }
                for (r, o) in out.iter_mut().enumerate().skip(r) {
                    *o = dot(wf, xr(r));
                }
            }
            tile
        })
        .collect();
    for (&f0, tile) in blocks.iter().zip(&tiles) {
        let width = tile.len() / t;
        for (r, row) in dst.chunks_mut(dst_rs).take(t).enumerate() {
            for (j, out) in row[col0 + f0..col0 + f0 + width].iter_mut().enumerate() {
                *out = tile[j * t + r] + b[f0 + j];
            }
        }
    }
}
