//! AVX-512 f32 matrix products for the embedding encoder, `act(x · wᵀ + b)` with `w` in PyTorch's `[out, in]`
//! layout, used where the CPU has AVX-512F (checked once at run time, so the wheel keeps its x86-64-v3 baseline),
//! as torch's oneDNN picks its AVX-512 kernels.
//!
//! The lanes run over tokens, not over the inner dimension: the activations are transposed once into panels of
//! 16 tokens (`pack_tokens`, shared by every matrix that reads the same input), and each weight element is
//! broadcast against a panel. So the weights are read in their stored layout straight from the mapping (nothing
//! packed, nothing copied), no output needs a horizontal sum, each output starts from its bias, and the
//! activation runs on the tile while it is in cache. A tile is two panels × 12 outputs: 24 accumulators, each
//! weight load feeding two FMAs.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::f32_matmul::Projection;
use super::f32_ops::{gelu, gelu_tanh, Activation};

/// Tokens per panel: one AVX-512 register of f32.
pub(crate) const LANES: usize = 16;
/// Outputs per tile: with two panels, 24 of the 32 vector registers accumulate.
const FEATURES: usize = 12;
/// Outputs per rayon task (whole tiles), so a 384-wide matrix splits into eight tasks for two workers.
const FEATURES_PER_TASK: usize = 4 * FEATURES;

/// Whether this CPU runs the AVX-512 kernels; `MODELHOST_NO_AVX512` turns them off (to compare).
pub(crate) fn available() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| std::env::var_os("MODELHOST_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f"))
}

/// Transpose the `t` rows of `x` (`[t, k]`) into panels of `LANES` tokens, `[panel][k][lane]`, zero past the
/// last token.
pub(crate) fn pack_tokens(x: &[f32], t: usize, k: usize, out: &mut Vec<f32>) {
    let panels = t.div_ceil(LANES);
    out.clear();
    out.resize(panels * k * LANES, 0.0);
    out.par_chunks_mut(k * LANES).enumerate().for_each(|(p, panel)| {
        for lane in 0..LANES.min(t - p * LANES) {
            let row = &x[(p * LANES + lane) * k..][..k];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * LANES + lane] = v;
            }
        }
    });
}

/// `dst` shared by the tasks, each of which writes only its own columns.
#[derive(Clone, Copy)]
struct SharedDst(*mut f32);
// SAFETY: tasks write disjoint columns of `dst` (see `linear`), and the pointer outlives the parallel loop.
unsafe impl Send for SharedDst {}
// SAFETY: as above.
unsafe impl Sync for SharedDst {}

/// For each projection: `dst[r, col0..col0 + n] = act(x[r] · wᵀ + b)` for the `t` tokens packed in `xp`
/// (`pack_tokens` of `[t, k]`), `dst` rows `dst_rs` apart. All projections' tiles run in one parallel loop.
///
/// Panics unless `available()`, or if a shape disagrees.
pub(crate) fn linear(
    xp: &[f32],
    t: usize,
    k: usize,
    projections: &[Projection<'_>],
    dst: &mut [f32],
    dst_rs: usize,
    act: Option<Activation>,
) {
    assert!(available(), "the AVX-512 kernels need a CPU with AVX-512F");
    let panels = t.div_ceil(LANES);
    assert!(xp.len() == panels * k * LANES && dst.len() >= t * dst_rs && k > 0);
    for p in projections {
        let n = p.b.len();
        assert!(p.w.len() == n * k && p.col0 + n <= dst_rs);
    }
    let tasks: Vec<(usize, usize)> = projections
        .iter()
        .enumerate()
        .flat_map(|(j, p)| (0..p.b.len()).step_by(FEATURES_PER_TASK).map(move |f0| (j, f0)))
        .collect();
    let out = SharedDst(dst.as_mut_ptr());
    tasks.par_iter().for_each(|&(j, f0)| {
        let p = &projections[j];
        let f1 = (f0 + FEATURES_PER_TASK).min(p.b.len());
        // SAFETY: AVX-512F is present (asserted); the shapes were asserted above, and this task writes only
        // columns col0 + [f0, f1) of the first t rows, which no other task writes.
        unsafe { task(xp, t, k, p, f0, f1, out, dst_rs, act) };
    });
}

/// Outputs `[f0, f1)` of one projection for every token.
///
/// # Safety
/// AVX-512F; the shapes as `linear` asserts them; no other thread touches these columns of `dst`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn task(
    xp: &[f32],
    t: usize,
    k: usize,
    p: &Projection<'_>,
    f0: usize,
    f1: usize,
    dst: SharedDst,
    dst_rs: usize,
    act: Option<Activation>,
) {
    let panels = t.div_ceil(LANES);
    let panel_len = k * LANES;
    let mut f = f0;
    while f < f1 {
        let width = FEATURES.min(f1 - f);
        let (w, b) = (p.w.as_ptr().add(f * k), p.b.as_ptr().add(f));
        let mut q = 0;
        while q < panels {
            let pair = panels - q >= 2;
            let mut tile = [[[0f32; LANES]; FEATURES]; 2];
            let xq = xp.as_ptr().add(q * panel_len);
            match (pair, width == FEATURES) {
                (true, true) => tile_kernel::<2, FEATURES>(xq, panel_len, k, w, b, &mut tile, 0),
                (false, true) => tile_kernel::<1, FEATURES>(xq, panel_len, k, w, b, &mut tile, 0),
                (true, false) => narrow::<2>(xq, panel_len, k, w, b, width, &mut tile),
                (false, false) => narrow::<1>(xq, panel_len, k, w, b, width, &mut tile),
            }
            let used = if pair { 2 } else { 1 };
            if let Some(act) = act {
                activate(&mut tile[..used], act);
            }
            for (g, outs) in tile.iter().enumerate().take(used) {
                let first = (q + g) * LANES;
                for lane in 0..LANES.min(t - first) {
                    let row = dst.0.add((first + lane) * dst_rs + p.col0 + f);
                    for (j, out) in outs.iter().enumerate().take(width) {
                        *row.add(j) = out[lane];
                    }
                }
            }
            q += used;
        }
        f += width;
    }
}

/// A tile narrower than `FEATURES` (the last outputs of a matrix whose size is not a multiple of it), one
/// output at a time.
///
/// # Safety
/// As `tile_kernel`, for `width` ≤ `FEATURES` rows of `w`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn narrow<const G: usize>(
    xp: *const f32,
    panel_len: usize,
    k: usize,
    w: *const f32,
    b: *const f32,
    width: usize,
    tile: &mut [[[f32; LANES]; FEATURES]; 2],
) {
    for j in 0..width {
        tile_kernel::<G, 1>(xp, panel_len, k, w.add(j * k), b.add(j), tile, j);
    }
}

/// `tile[g][j0 + f][lane] = b[f] + Σ_kk xp[g][kk][lane] · w[f][kk]` for `G` panels and `F` outputs.
///
/// # Safety
/// AVX-512F; `xp` points at `G` panels of `panel_len` = `k·LANES` floats, `w` at `F` rows of `k` floats and
/// `b` at `F` floats; `G` ≤ 2 and `j0 + F` ≤ `FEATURES`.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // indices over const bounds unroll into registers
unsafe fn tile_kernel<const G: usize, const F: usize>(
    xp: *const f32,
    panel_len: usize,
    k: usize,
    w: *const f32,
    b: *const f32,
    tile: &mut [[[f32; LANES]; FEATURES]; 2],
    j0: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); F]; G];
    for f in 0..F {
        let bias = _mm512_set1_ps(*b.add(f));
        for a in acc.iter_mut() {
            a[f] = bias;
        }
    }
    // The weights are streamed once per call when there are few tokens: fetch the next tile's rows (the
    // `F·k` floats after these) while this one computes, `F` floats per step.
    let next = w.wrapping_add(F * k);
    for kk in 0..k {
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(kk * F) as *const i8);
        let mut xv = [_mm512_setzero_ps(); G];
        for (g, v) in xv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(xp.add(g * panel_len + kk * LANES));
        }
        for f in 0..F {
            let wv = _mm512_set1_ps(*w.add(f * k + kk));
            for g in 0..G {
                acc[g][f] = _mm512_fmadd_ps(xv[g], wv, acc[g][f]);
            }
        }
    }
    for g in 0..G {
        for f in 0..F {
            _mm512_storeu_ps(tile[g][j0 + f].as_mut_ptr(), acc[g][f]);
        }
    }
}

/// The activation over whole tiles, compiled with AVX-512 so the branch-free math vectorises 16 wide.
#[target_feature(enable = "avx512f")]
fn activate(tiles: &mut [[[f32; LANES]; FEATURES]], act: Activation) {
    let v = tiles.as_flattened_mut().as_flattened_mut();
    match act {
        Activation::Gelu => v.iter_mut().for_each(|x| *x = gelu(*x)),
        Activation::GeluTanh => v.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
        Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        Activation::Silu => v.iter_mut().for_each(|x| *x = *x / (1.0 + super::f32_ops::exp(-*x))),
    }
}

/// One head of one short sequence: `out = softmax(q kᵀ · scale) v`, with the lanes over keys for the scores
/// (keys transposed into `kt`, so a query's scores are broadcast-FMAs, no horizontal sums) and over the head's
/// dimensions for the weighted values. `q`, `k` and `v` of row `r` are at `qkv[(start + r)·stride + col + {0, h,
/// 2h}]`.
///
/// Panics unless `available()`, `d` is a multiple of `LANES` and the rows are inside `qkv`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_short(
    qkv: &[f32],
    stride: usize,
    h: usize,
    d: usize,
    col: usize,
    start: usize,
    len: usize,
    scale: f32,
    kt: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert!(available() && d.is_multiple_of(LANES) && d > 0 && len > 0);
    assert!(col + 2 * h + d <= stride && (start + len) * stride <= qkv.len() && out.len() == len * d);
    let keys = len.div_ceil(LANES) * LANES;
    kt.clear();
    kt.resize(d * keys + keys, 0.0);
    let (kt, probs) = kt.split_at_mut(d * keys);
    for c in 0..len {
        let key = &qkv[(start + c) * stride + h + col..][..d];
        for (dd, &v) in key.iter().enumerate() {
            kt[dd * keys + c] = v;
        }
    }
    for (r, o) in out.chunks_exact_mut(d).enumerate() {
        let q = &qkv[(start + r) * stride + col..][..d];
        // SAFETY: AVX-512F is present (asserted); kt holds d·keys floats, probs keys floats, q d floats, o d
        // floats, and each value row read is inside qkv (asserted above).
        unsafe {
            scores_row(q, kt, keys, len, scale, probs);
            weighted_values(qkv, stride, 2 * h + col + start * stride, d, len, probs, o);
        }
    }
}

/// `probs[c] = softmax_c(q · k_c · scale)` for the `len` keys of `kt` (`[d][keys]`), zero past `len`.
///
/// # Safety
/// AVX-512F; `kt.len()` = `q.len()·keys`, `probs.len()` = `keys`, `keys` a multiple of `LANES` ≥ `len`.
#[target_feature(enable = "avx512f")]
unsafe fn scores_row(q: &[f32], kt: &[f32], keys: usize, len: usize, scale: f32, probs: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for c0 in (0..keys).step_by(LANES) {
        let mut acc = _mm512_setzero_ps();
        for (dd, &qd) in q.iter().enumerate() {
            acc = _mm512_fmadd_ps(_mm512_set1_ps(qd), _mm512_loadu_ps(kt.as_ptr().add(dd * keys + c0)), acc);
        }
        let valid = lanes_below(len.saturating_sub(c0));
        let s = _mm512_mul_ps(acc, _mm512_set1_ps(scale));
        max = max.max(_mm512_mask_reduce_max_ps(valid, s));
        _mm512_storeu_ps(probs.as_mut_ptr().add(c0), s);
    }
    let mut sum = _mm512_setzero_ps();
    for c0 in (0..keys).step_by(LANES) {
        let valid = lanes_below(len.saturating_sub(c0));
        let s = _mm512_loadu_ps(probs.as_ptr().add(c0));
        let e = _mm512_maskz_mov_ps(valid, exp(_mm512_sub_ps(s, _mm512_set1_ps(max))));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(probs.as_mut_ptr().add(c0), e);
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for c0 in (0..keys).step_by(LANES) {
        let p = probs.as_mut_ptr().add(c0);
        _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_loadu_ps(p), inv));
    }
}

/// `o = Σ_c probs[c] · v_c` over `len` value rows of `d` floats at `qkv[first + c·stride]`.
///
/// # Safety
/// AVX-512F; `d` a multiple of `LANES` and `o.len()` = `d`; every value row inside `qkv`; `probs.len()` ≥ `len`.
#[target_feature(enable = "avx512f")]
unsafe fn weighted_values(
    qkv: &[f32],
    stride: usize,
    first: usize,
    d: usize,
    len: usize,
    probs: &[f32],
    o: &mut [f32],
) {
    for d0 in (0..d).step_by(LANES) {
        let mut acc = _mm512_setzero_ps();
        for (c, &p) in probs[..len].iter().enumerate() {
            let v = _mm512_loadu_ps(qkv.as_ptr().add(first + c * stride + d0));
            acc = _mm512_fmadd_ps(_mm512_set1_ps(p), v, acc);
        }
        _mm512_storeu_ps(o.as_mut_ptr().add(d0), acc);
    }
}

/// The mask of the first `n` lanes (all of them from `LANES` on).
#[inline(always)]
fn lanes_below(n: usize) -> __mmask16 {
    if n >= LANES {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// `f32_ops::exp` sixteen lanes at a time: the same Cephes reduction and polynomial, the same clamp.
#[target_feature(enable = "avx512f")]
#[inline]
fn exp(x: __m512) -> __m512 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let c = _mm512_set1_ps;
    let x = _mm512_min_ps(_mm512_max_ps(x, c(-87.3)), c(88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_ps(
        x,
        c(std::f32::consts::LOG2_E),
        c(0.5),
    ));
    let r = _mm512_fmadd_ps(n, c(-LN2_LO), _mm512_fmadd_ps(n, c(-LN2_HI), x));
    let mut p = c(1.987_569_1e-4);
    for k in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm512_fmadd_ps(p, r, c(k));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), c(1.0));
    _mm512_scalef_ps(y, n)
}

#[cfg(test)]
mod tests {
    use super::super::f32_ops::reference::act64;
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// Tokens around the panel and tile edges, inner sizes of MiniLM and odd ones, outputs not a multiple of
    /// the tile: every output against an f64 reference, and the columns no projection owns left alone.
    #[test]
    fn projections_match_an_f64_reference() {
        if !available() {
            eprintln!("no AVX-512F on this CPU: the kernels are not used, nothing to check");
            return;
        }
        let mut packed = Vec::new();
        for (t, k, n, act) in [
            (1, 384, 384, None),
            (14, 384, 1536, Some(Activation::Gelu)),
            (16, 40, 13, None),
            (17, 1536, 384, None),
            (33, 7, 25, Some(Activation::GeluTanh)),
            (64, 96, 36, Some(Activation::Silu)),
            (47, 64, 12, Some(Activation::Relu)),
        ] {
            let x = random(t * k, 1);
            let (w1, b1) = (random(n * k, 2), random(n, 3));
            let (w2, b2) = (random(n * k, 4), random(n, 5));
            // One projection with an activation fills whole rows; without, two fill parts of wider rows.
            let projections: Vec<Projection<'_>> = match act {
                Some(_) => vec![Projection { w: &w1, b: &b1, col0: 0 }],
                None => vec![Projection { w: &w1, b: &b1, col0: 1 }, Projection { w: &w2, b: &b2, col0: n + 3 }],
            };
            let dst_rs = if act.is_some() { n } else { 2 * n + 5 };
            let mut dst = vec![f32::NAN; t * dst_rs];
            pack_tokens(&x, t, k, &mut packed);
            linear(&packed, t, k, &projections, &mut dst, dst_rs, act);
            let mut owned = vec![false; dst_rs];
            for p in &projections {
                owned[p.col0..p.col0 + n].iter_mut().for_each(|o| *o = true);
                for r in 0..t {
                    for f in 0..n {
                        let dot: f64 = (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(p.w[f * k + i])).sum();
                        let pre = dot + f64::from(p.b[f]);
                        let want = match act {
                            None => pre,
                            Some(Activation::Gelu) => act64(pre, "gelu"),
                            Some(Activation::GeluTanh) => act64(pre, "gelu_new"),
                            Some(Activation::Relu) => act64(pre, "relu"),
                            Some(Activation::Silu) => act64(pre, "silu"),
                        };
                        let got = f64::from(dst[r * dst_rs + p.col0 + f]);
                        assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "t {t} k {k} n {n}: {got} vs {want}");
                    }
                }
            }
            for r in 0..t {
                for (c, _) in owned.iter().enumerate().filter(|(_, o)| !**o) {
                    assert!(dst[r * dst_rs + c].is_nan(), "t {t} k {k} n {n}: column {c} was written");
                }
            }
        }
    }

    /// Short sequences of several lengths (one key, a panel's worth, past one panel) against f64 attention.
    #[test]
    fn short_attention_matches_an_f64_reference() {
        if !available() {
            eprintln!("no AVX-512F on this CPU: the kernels are not used, nothing to check");
            return;
        }
        let (n_heads, d) = (3, 32);
        let h = n_heads * d;
        let stride = 3 * h;
        let mut kt = Vec::new();
        for (start, len) in [(0, 1), (2, 13), (1, 16), (5, 17), (0, 40)] {
            let qkv = random((start + len) * stride, len as u64);
            let scale = 1.0 / (d as f32).sqrt();
            for head in 0..n_heads {
                let col = head * d;
                let mut out = vec![0f32; len * d];
                attend_short(&qkv, stride, h, d, col, start, len, scale, &mut kt, &mut out);
                let at = |r: usize, part: usize, i: usize| f64::from(qkv[(start + r) * stride + part * h + col + i]);
                for r in 0..len {
                    let s: Vec<f64> = (0..len)
                        .map(|c| (0..d).map(|i| at(r, 0, i) * at(c, 1, i)).sum::<f64>() * f64::from(scale))
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for i in 0..d {
                        let want: f64 = (0..len).map(|c| e[c] / total * at(c, 2, i)).sum();
                        let got = f64::from(out[r * d + i]);
                        assert!((got - want).abs() < 1e-5, "len {len} head {head} row {r}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
