//! Bidirectional multi-head self-attention over packed sequences (no padding, no mask): each sequence
//! attends only to itself. Long sequences go through `gemm`, short ones through SIMD dot products.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::f32_ops::{exp, MIN_ROWS};
use super::f32_simd::{dot, sum};

/// Sequences at least this long compute attention with `gemm`.
pub(crate) const ATTENTION_GEMM_LEN: usize = 48;

/// Multi-head self-attention of each sequence (`spans` = (first token, length)) over the packed
/// `[T, 3h]` query/key/value rows. Heads run in parallel into the head-major `heads` buffer
/// (`[n_heads, T, d]`), which is then interleaved into `ctx` (`[T, h]`). (CPUs with AVX-512 run the encoder's
/// attention on `f32_avx512::attention_panels`.)
pub(crate) fn attention(
    qkv: &[f32],
    spans: &[(usize, usize)],
    n_heads: usize,
    h: usize,
    heads: &mut [f32],
    ctx: &mut [f32],
) {
    let d = h / n_heads;
    let t = ctx.len() / h;
    assert!(qkv.len() >= t * 3 * h && heads.len() >= t * h && spans.iter().all(|&(s, l)| s + l <= t));
    let scale = 1.0 / (d as f32).sqrt();
    heads[..t * h].par_chunks_mut(t * d).enumerate().for_each(|(head, out)| {
        let mut scores = Vec::new();
        for &(start, len) in spans {
            let out = &mut out[start * d..(start + len) * d];
            scores.clear();
            scores.resize(len * len, 0.0);
            attend(qkv, h, d, head * d, start, len, scale, &mut scores, out);
        }
    });
    ctx.par_chunks_mut(h).enumerate().with_min_len(MIN_ROWS).for_each(|(tok, row)| {
        for (head, dst) in row.chunks_exact_mut(d).enumerate() {
            dst.copy_from_slice(&heads[(head * t + tok) * d..][..d]);
        }
    });
}

/// One head of one sequence: `out = softmax(q kᵀ · scale) v`, `scores` holding `len²` floats.
#[allow(clippy::too_many_arguments)]
fn attend(
    qkv: &[f32],
    h: usize,
    d: usize,
    col: usize,
    start: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let stride = 3 * h;
    let row = |r: usize, part: usize| &qkv[(start + r) * stride + part * h + col..][..d];
    if len >= ATTENTION_GEMM_LEN {
        let base = start * stride + col;
        // SAFETY: the caller checked start + len <= T and qkv holds T rows of 3h; row r's query,
        // key and value at base + r·stride + {0, h, 2h} + [0, d) stay inside it. scores holds
        // len², out len·d floats, and nothing else borrows them.
        unsafe {
            gemm(
                len,
                len,
                d,
                scores.as_mut_ptr(),
                1,
                len as isize,
                false,
                qkv.as_ptr().add(base),
                1,
                stride as isize,
                qkv.as_ptr().add(base + h),
                stride as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        scores.chunks_exact_mut(len).for_each(softmax);
        // SAFETY: as above.
        unsafe {
            gemm(
                len,
                d,
                len,
                out.as_mut_ptr(),
                1,
                d as isize,
                false,
                scores.as_ptr(),
                1,
                len as isize,
                qkv.as_ptr().add(base + 2 * h),
                1,
                stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        return;
    }
    for (r, (p, o)) in scores.chunks_exact_mut(len).zip(out.chunks_exact_mut(d)).enumerate() {
        let q = row(r, 0);
        for (c, s) in p.iter_mut().enumerate() {
            *s = dot(q, row(c, 1)) * scale;
        }
        softmax(p);
        o.fill(0.0);
        for (c, &w) in p.iter().enumerate() {
            for (a, &v) in o.iter_mut().zip(row(c, 2)) {
                *a = w.mul_add(v, *a);
            }
        }
    }
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}
