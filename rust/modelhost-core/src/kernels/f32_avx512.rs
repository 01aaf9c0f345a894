//! AVX-512 f32 kernels for the embedding encoder, used where the CPU has AVX-512F (checked once at run time, so the
//! wheel keeps its x86-64-v3 baseline), as torch's oneDNN picks its AVX-512 kernels: the matrix products
//! `act(x · wᵀ + b)` with `w` in PyTorch's `[out, in]` layout, attention and layer norm, all on one layout.
//!
//! The lanes run over tokens, not over the inner dimension: activations live in panels of 16 tokens
//! (`[panel][column][lane]`, made by `pack_tokens` or written so by the previous product), and each weight element
//! is broadcast against a panel. So no output needs a horizontal sum, each output starts from its bias, and the
//! activation runs on the tile while it is in L1. A tile is one panel × 24 outputs: 24
//! accumulators, each activation load feeding 24 FMAs. The weights are packed once (`PackedWeights`) in the
//! order the tiles broadcast them, so every call reads them front to back: with several panels one inner
//! block at a time, which stays in L1 while every panel's block of activations streams past it (from L2) and
//! the next block is fetched; with one or two panels each panel streams a tile's whole weights.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::f32_ops::{gelu, gelu_tanh, Activation};

/// Tokens per panel: one AVX-512 register of f32.
pub(crate) const LANES: usize = 16;
/// Outputs per tile: 24 of the 32 vector registers accumulate, so each activation load feeds 24 FMAs.
const FEATURES: usize = 24;
/// Outputs per rayon task (whole tiles), so a 384-wide matrix splits into eight tasks for two workers.
const FEATURES_PER_TASK: usize = 2 * FEATURES;

/// Whether this CPU runs the AVX-512 kernels; `MODELHOST_NO_AVX512` turns them off (to compare).
pub(crate) fn available() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| std::env::var_os("MODELHOST_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f"))
}

/// Transpose the `t` rows of `x` (`[t, k]`) into panels of `LANES` tokens, `[panel][k][lane]`, zero past the
/// last token.
pub(crate) fn pack_tokens(x: &[f32], t: usize, k: usize, out: &mut Vec<f32>) {
    assert!(available() && x.len() >= t * k);
    out.resize(t.div_ceil(LANES) * k * LANES, 0.0); // every value is overwritten by the packing
    out.par_chunks_mut(k * LANES).enumerate().for_each(|(p, panel)| {
        let rows = LANES.min(t - p * LANES);
        // SAFETY: AVX-512F is present (asserted); the panel's rows are inside x and the panel holds k·LANES floats.
        unsafe { pack_block(x[p * LANES * k..].as_ptr(), rows, k, k, panel.as_mut_ptr(), LANES, LANES) };
    });
}

/// The rows of the `t` tokens packed in `xp` (`[panel][k][lane]`), into `dst` (`[t, k]`).
pub(crate) fn unpack_tokens(xp: &[f32], t: usize, k: usize, dst: &mut [f32]) {
    assert!(available() && xp.len() == t.div_ceil(LANES) * k * LANES && dst.len() >= t * k);
    dst[..t * k].par_chunks_mut(LANES * k).zip(xp.par_chunks(k * LANES)).for_each(|(rows, panel)| {
        // SAFETY: AVX-512F is present (asserted); the panel holds k·LANES floats and `rows` whole rows of k.
        unsafe { unpack_block(panel.as_ptr(), k, rows.len() / k, rows.as_mut_ptr(), k) };
    });
}

/// `out[c·out_stride + r] = x[r·stride + c]` for `rows` ≤ `LANES` rows and `cols` columns, zero for the rows past
/// `rows`, writing the first `out_lanes` of each output row: 16 × 16 blocks transposed in registers.
///
/// # Safety
/// AVX-512F; `x` valid for `rows` rows of `cols` floats, `stride` apart; `out` for `cols` rows of `out_lanes`
/// floats, `out_stride` apart.
#[target_feature(enable = "avx512f")]
unsafe fn pack_block(
    x: *const f32,
    rows: usize,
    cols: usize,
    stride: usize,
    out: *mut f32,
    out_stride: usize,
    out_lanes: usize,
) {
    let written = lanes_below(out_lanes);
    for c0 in (0..cols).step_by(LANES) {
        let mask = lanes_below(cols - c0);
        let block: [__m512; LANES] = std::array::from_fn(|r| {
            if r < rows {
                _mm512_maskz_loadu_ps(mask, x.add(r * stride + c0))
            } else {
                _mm512_setzero_ps()
            }
        });
        for (j, v) in transpose(block).into_iter().enumerate().take(LANES.min(cols - c0)) {
            _mm512_mask_storeu_ps(out.add((c0 + j) * out_stride), written, v);
        }
    }
}

/// `dst[lane·dst_rs + c] = src[c·LANES + lane]` for the first `rows` lanes and `cols` columns: the inverse of
/// `pack_block`.
///
/// # Safety
/// AVX-512F; `src` valid for `cols·LANES` floats; `dst` for `rows` rows of `cols` floats, `dst_rs` apart.
#[target_feature(enable = "avx512f")]
unsafe fn unpack_block(src: *const f32, cols: usize, rows: usize, dst: *mut f32, dst_rs: usize) {
    for c0 in (0..cols).step_by(LANES) {
        let block: [__m512; LANES] = std::array::from_fn(|j| {
            if c0 + j < cols {
                _mm512_loadu_ps(src.add((c0 + j) * LANES))
            } else {
                _mm512_setzero_ps()
            }
        });
        let mask = lanes_below(cols - c0);
        for (lane, v) in transpose(block).into_iter().enumerate().take(rows) {
            _mm512_mask_storeu_ps(dst.add(lane * dst_rs + c0), mask, v);
        }
    }
}

/// The 16 × 16 transpose of `r` (row `i` of the result holds element `i` of every input row).
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose(r: [__m512; LANES]) -> [__m512; LANES] {
    let (lo, hi) = (|a, b| _mm512_unpacklo_ps(a, b), |a, b| _mm512_unpackhi_ps(a, b));
    let pd = |f: fn(__m512d, __m512d) -> __m512d, a: __m512, b: __m512| {
        _mm512_castpd_ps(f(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    };
    let t: [__m512; LANES] = std::array::from_fn(|i| if i % 2 == 0 { lo(r[i], r[i + 1]) } else { hi(r[i - 1], r[i]) });
    let u: [__m512; LANES] = std::array::from_fn(|i| {
        let (base, j) = (i / 4 * 4, i % 4);
        let (a, b) = (t[base + j / 2], t[base + j / 2 + 2]);
        if j % 2 == 0 {
            pd(_mm512_unpacklo_pd, a, b)
        } else {
            pd(_mm512_unpackhi_pd, a, b)
        }
    });
    let v: [__m512; LANES] = std::array::from_fn(|i| {
        let (half, j) = (i / 8 * 8, i % 8);
        let (a, b) = (u[half + j % 4], u[half + j % 4 + 4]);
        if j < 4 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    std::array::from_fn(|i| {
        let (a, b) = (v[i % 8], v[i % 8 + 8]);
        if i < 8 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    })
}

/// `dst` shared by the tasks, each of which writes only its own columns.
#[derive(Clone, Copy)]
struct SharedDst(*mut f32);
// SAFETY: tasks write disjoint columns of `dst` (see `linear`), and the pointer outlives the parallel loop.
unsafe impl Send for SharedDst {}
// SAFETY: as above.
unsafe impl Sync for SharedDst {}

/// A weight matrix `[n, k]` (PyTorch's `[out, in]`) in the order `linear` broadcasts it: tiles of `FEATURES`
/// outputs, each `[k][FEATURES]`, the rows past `n` zero. Packed once, so every call streams it in order.
pub(crate) struct PackedWeights {
    data: Vec<f32>,
    n: usize,
    k: usize,
}

impl PackedWeights {
    /// Pack the `n` rows of `k` floats of `w`.
    ///
    /// Panics unless `available()`, or if `w` is not `n·k` floats.
    pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert!(available() && w.len() == n * k && k > 0);
        let mut data = vec![0f32; n.div_ceil(FEATURES) * k * FEATURES];
        data.par_chunks_mut(k * FEATURES).enumerate().for_each(|(tile, out)| {
            for j0 in (0..FEATURES).step_by(LANES) {
                let first = tile * FEATURES + j0;
                let rows = n.saturating_sub(first).min(LANES);
                let at = w[(first * k).min(w.len())..].as_ptr();
                // SAFETY: AVX-512F is present (asserted); `rows` rows of k floats from `at` are inside w, and
                // `out` holds k rows of FEATURES floats, of which this writes lanes j0.. (at most FEATURES).
                unsafe { pack_block(at, rows, k, k, out.as_mut_ptr().add(j0), FEATURES, FEATURES - j0) };
            }
        });
        PackedWeights { data, n, k }
    }
}

/// One matrix of a `linear` call: `dst[r, col0..col0 + n] = act(x[r] · wᵀ + b)`.
pub(crate) struct PanelProjection<'a> {
    pub w: &'a PackedWeights,
    pub b: &'a [f32],
    pub col0: usize,
}

/// For each projection: `dst[r, col0..col0 + n] = act(x[r] · wᵀ + b)` for the `t` tokens packed in `xp`
/// (`pack_tokens` of `[t, k]`), `dst` being panels of `dst_rs` columns (`[panel][dst_rs][lane]`, as `pack_tokens`
/// makes them, so the next step reads them as they are). All projections' tiles run in one parallel loop. Past
/// the last token, panel lanes hold values that mean nothing.
///
/// Panics unless `available()`, or if a shape disagrees.
pub(crate) fn linear(
    xp: &[f32],
    t: usize,
    k: usize,
    projections: &[PanelProjection<'_>],
    dst: &mut [f32],
    dst_rs: usize,
    act: Option<Activation>,
) {
    assert!(available(), "the AVX-512 kernels need a CPU with AVX-512F");
    let panels = t.div_ceil(LANES);
    assert!(xp.len() == panels * k * LANES && dst.len() == panels * dst_rs * LANES && k > 0);
    for p in projections {
        assert!(p.w.k == k && p.b.len() == p.w.n && p.col0 + p.w.n <= dst_rs);
    }
    let tasks: Vec<(usize, usize)> = projections
        .iter()
        .enumerate()
        .flat_map(|(j, p)| (0..p.w.n).step_by(FEATURES_PER_TASK).map(move |f0| (j, f0)))
        .collect();
    let out = SharedDst(dst.as_mut_ptr());
    tasks.par_iter().for_each(|&(j, f0)| {
        let p = &projections[j];
        let f1 = (f0 + FEATURES_PER_TASK).min(p.w.n);
        // SAFETY: AVX-512F is present (asserted); the shapes were asserted above, and this task writes only
        // columns col0 + [f0, f1) of every token, which no other task writes.
        unsafe { task(xp, p, f0, f1, out, dst_rs, act) };
    });
}

/// Inner-dimension block: a tile's weights over `KC` (12 KiB) stay in L1 while every token panel's block of
/// the same `KC` streams past, and the partial sums wait in the task's tile buffer.
const KC: usize = 128;
/// Token panels from which the inner dimension is blocked; below, each panel streams a tile's whole weights.
const BLOCK_FROM_PANELS: usize = 3;
/// Bytes of packed activations per token block, which stays in L2 while every tile of the task reads it.
const BLOCK_BYTES: usize = 1 << 20;

/// One panel's accumulators: `FEATURES` outputs × `LANES` tokens.
type Tile = [[f32; LANES]; FEATURES];

/// Outputs `[f0, f1)` of one projection for every token.
///
/// # Safety
/// AVX-512F; the shapes as `linear` asserts them; no other thread touches these columns of `dst`.
#[target_feature(enable = "avx512f")]
unsafe fn task(
    xp: &[f32],
    p: &PanelProjection<'_>,
    f0: usize,
    f1: usize,
    dst: SharedDst,
    dst_rs: usize,
    act: Option<Activation>,
) {
    let k = p.w.k;
    let panel_len = k * LANES;
    let panels = xp.len() / panel_len;
    let block = (BLOCK_BYTES / (panel_len * 4)).clamp(1, panels.max(1));
    let blocked = k > KC && block >= BLOCK_FROM_PANELS;
    let mut partial = vec![[[0f32; LANES]; FEATURES]; if blocked { block } else { 0 }];
    let mut bias = [[0f32; LANES]; FEATURES];
    let mut out = [[0f32; LANES]; FEATURES];
    for q0 in (0..panels).step_by(block) {
        let q1 = (q0 + block).min(panels);
        let block_k = if q1 - q0 >= BLOCK_FROM_PANELS { KC } else { k };
        for f in (f0..f1).step_by(FEATURES) {
            let width = FEATURES.min(f1 - f);
            for (j, row) in bias.iter_mut().enumerate() {
                *row = [if j < width { p.b[f + j] } else { 0.0 }; LANES];
            }
            let tile = p.w.data.as_ptr().add(f * k);
            for k0 in (0..k).step_by(block_k) {
                let kc = block_k.min(k - k0);
                let w = tile.add(k0 * FEATURES);
                let last = k0 + kc == k;
                // The next block of weights (the next inner block, or the next tile: the packing makes it the
                // next bytes) is fetched into L2 a few lines per panel while these panels run, so no panel waits
                // on memory for it, and it does not push this block or the panels out of L1.
                let next = w.add(kc * FEATURES);
                let next_lines = kc * FEATURES / LANES;
                let lines_per_panel = next_lines.div_ceil(q1 - q0);
                for q in q0..q1 {
                    if block_k == KC {
                        let first = (q - q0) * lines_per_panel;
                        for line in first..(first + lines_per_panel).min(next_lines) {
                            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(line * LANES) as *const i8);
                        }
                    }
                    let xq = xp.as_ptr().add(q * panel_len + k0 * LANES);
                    let init: *const Tile = if k0 == 0 { &bias } else { &partial[q - q0] };
                    // A whole tile of panel output is the panel's own memory: the kernel ends there.
                    let direct = last && width == FEATURES;
                    let end: *mut Tile = match (last, direct) {
                        (true, true) => dst.0.add((q * dst_rs + p.col0 + f) * LANES).cast(),
                        (true, false) => &mut out,
                        (false, _) => &mut partial[q - q0],
                    };
                    if block_k == KC {
                        tile_kernel::<true>(xq, panel_len, kc, w, init, end);
                    } else {
                        tile_kernel::<false>(xq, panel_len, kc, w, init, end);
                    }
                    if last {
                        if let Some(act) = act {
                            activate(std::slice::from_mut(&mut *end), act);
                        }
                        if direct {
                            continue;
                        }
                        let at = dst.0.add((q * dst_rs + p.col0 + f) * LANES);
                        std::ptr::copy_nonoverlapping(out.as_ptr() as *const f32, at, width * LANES);
                    }
                }
            }
        }
    }
}

/// Steps of weights prefetched ahead when a panel streams a tile's whole weights.
const WEIGHTS_AHEAD: usize = 8;

/// `end[f][lane] = init[f][lane] + Σ_kk xp[kk][lane] · w[kk·FEATURES + f]` over `kc` steps for one token panel
/// (`w` a tile of `PackedWeights`, from its step `k0`). `NEXT_PANEL`: the weights are a block other panels
/// reuse from L1, and the next panel's activations (in L2) are prefetched; otherwise this panel streams the
/// weights, and they are prefetched ahead.
///
/// # Safety
/// AVX-512F; `xp` points at `kc·LANES` floats, `w` at `kc·FEATURES`; `init` and `end` are tiles (possibly the
/// same one). Prefetches only hint.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_kernel<const NEXT_PANEL: bool>(
    xp: *const f32,
    panel_len: usize,
    kc: usize,
    w: *const f32,
    init: *const Tile,
    end: *mut Tile,
) {
    let mut acc: [__m512; FEATURES] = std::array::from_fn(|f| _mm512_loadu_ps((*init)[f].as_ptr()));
    for kk in 0..kc {
        if NEXT_PANEL {
            _mm_prefetch::<_MM_HINT_T0>(xp.wrapping_add(panel_len + kk * LANES) as *const i8);
        } else {
            let ahead = w.wrapping_add((kk + WEIGHTS_AHEAD) * FEATURES);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(LANES) as *const i8);
        }
        let x = _mm512_loadu_ps(xp.add(kk * LANES));
        for (f, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(x, _mm512_set1_ps(*w.add(kk * FEATURES + f)), *a);
        }
    }
    for (f, a) in acc.iter().enumerate() {
        _mm512_storeu_ps((*end)[f].as_mut_ptr(), *a);
    }
}

/// `x = LN(x + delta)` for every token, `x` and `delta` in panels of `h` = `g.len()` columns: sixteen tokens at a
/// time, one per lane.
pub(crate) fn add_layer_norm_panels(xp: &mut [f32], delta: &[f32], g: &[f32], b: &[f32], eps: f32) {
    let h = g.len();
    assert!(available() && h > 0 && b.len() == h && xp.len() == delta.len() && xp.len().is_multiple_of(h * LANES));
    xp.par_chunks_mut(h * LANES).zip(delta.par_chunks(h * LANES)).for_each(|(x, d)| {
        // SAFETY: AVX-512F is present (asserted); x and d hold h·LANES floats, g and b h floats.
        unsafe { layer_norm_panel(x, d, g, b, eps) }
    });
}

/// One panel of `add_layer_norm_panels`, with `f32_ops::layer_norm_row`'s formula.
///
/// # Safety
/// AVX-512F; `x` and `d` hold `g.len()·LANES` floats, `b` `g.len()`.
#[target_feature(enable = "avx512f")]
unsafe fn layer_norm_panel(x: &mut [f32], d: &[f32], g: &[f32], b: &[f32], eps: f32) {
    let h = g.len();
    let (x, d) = (x.as_mut_ptr(), d.as_ptr());
    let n = _mm512_set1_ps(h as f32);
    // Four partial sums, so the adds do not wait on one another.
    let mut sum = [_mm512_setzero_ps(); 4];
    for c in 0..h {
        let v = _mm512_add_ps(_mm512_loadu_ps(x.add(c * LANES)), _mm512_loadu_ps(d.add(c * LANES)));
        _mm512_storeu_ps(x.add(c * LANES), v);
        sum[c % 4] = _mm512_add_ps(sum[c % 4], v);
    }
    let mean = _mm512_div_ps(_mm512_add_ps(_mm512_add_ps(sum[0], sum[1]), _mm512_add_ps(sum[2], sum[3])), n);
    let mut sq = [_mm512_setzero_ps(); 4];
    for c in 0..h {
        let dev = _mm512_sub_ps(_mm512_loadu_ps(x.add(c * LANES)), mean);
        sq[c % 4] = _mm512_fmadd_ps(dev, dev, sq[c % 4]);
    }
    let sq = _mm512_add_ps(_mm512_add_ps(sq[0], sq[1]), _mm512_add_ps(sq[2], sq[3]));
    let inv =
        _mm512_div_ps(_mm512_set1_ps(1.0), _mm512_sqrt_ps(_mm512_add_ps(_mm512_div_ps(sq, n), _mm512_set1_ps(eps))));
    for c in 0..h {
        let v = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x.add(c * LANES)), mean), inv);
        _mm512_storeu_ps(x.add(c * LANES), _mm512_fmadd_ps(v, _mm512_set1_ps(g[c]), _mm512_set1_ps(b[c])));
    }
}

/// The activation over whole tiles, compiled with AVX-512 so the branch-free math vectorises 16 wide.
#[target_feature(enable = "avx512f")]
fn activate(tiles: &mut [Tile], act: Activation) {
    let v = tiles.as_flattened_mut().as_flattened_mut();
    match act {
        Activation::Gelu => v.iter_mut().for_each(|x| *x = gelu(*x)),
        Activation::GeluTanh => v.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
        Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        Activation::Silu => v.iter_mut().for_each(|x| *x = *x / (1.0 + super::f32_ops::exp(-*x))),
    }
}

/// Multi-head self-attention of each sequence (`spans` = (first token, length), in token order), on panels: the
/// QKV product's output (`[panel][3h][lane]`) in, the attention output as panels of `h` columns out, ready for the
/// output projection. The lanes are queries: a panel's queries of one sequence share its keys, so their scores,
/// softmax and weighted values are all lane-wise (no transposes, no horizontal sums); a panel holding the end of
/// one sequence and the start of the next attends once per sequence, each writing its own lanes.
///
/// Panics unless `available()`, or if a shape disagrees.
pub(crate) fn attention_panels(
    qkv: &[f32],
    t: usize,
    spans: &[(usize, usize)],
    n_heads: usize,
    h: usize,
    ctx: &mut [f32],
) {
    let panels = t.div_ceil(LANES);
    assert!(available() && n_heads > 0 && h.is_multiple_of(n_heads) && h > 0);
    assert!(qkv.len() == panels * 3 * h * LANES && ctx.len() == panels * h * LANES);
    assert!(spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0) && spans.iter().all(|&(s, l)| s + l <= t));
    let d = h / n_heads;
    let scale = 1.0 / (d as f32).sqrt();
    ctx.par_chunks_mut(h * LANES).enumerate().for_each_init(Vec::new, |scores, (p, out)| {
        let (first, end) = (p * LANES, ((p + 1) * LANES).min(t));
        out.fill(0.0); // lanes of no sequence stay zero
        let overlapping = spans.partition_point(|&(s, l)| s + l <= first);
        for &(start, len) in spans[overlapping..].iter().take_while(|&&(s, _)| s < end) {
            let (from, to) = (start.max(first) - first, (start + len).min(end) - first);
            let lanes = lanes_below(to) & !lanes_below(from);
            scores.resize(len * LANES, 0.0);
            for head in 0..n_heads {
                // SAFETY: AVX-512F is present (asserted); the panels' sizes, the spans inside [0, t) and d > 0
                // were asserted, scores holds len·LANES floats and out one panel of h columns.
                unsafe { attend_panel(qkv, h, d, head, p, start, len, scale, lanes, scores, out) };
            }
        }
    });
}

/// Keys at a time for the scores, values' columns at a time for the output: independent FMA chains.
const KEYS_AT_ONCE: usize = 8;

/// One head of `attention_panels` for the queries of panel `p` in `lanes`, all of one sequence (`start`, `len`).
///
/// # Safety
/// AVX-512F; `qkv` holds the panels of `start + len` tokens with `3h` columns, `scores` `len·LANES` floats, `out`
/// one panel of `h` columns; `d > 0` and `(head + 1)·d ≤ h`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_panel(
    qkv: &[f32],
    h: usize,
    d: usize,
    head: usize,
    p: usize,
    start: usize,
    len: usize,
    scale: f32,
    lanes: __mmask16,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let panel = 3 * h * LANES;
    // Column `col` of token `tok`.
    let at = |tok: usize, col: usize| qkv.as_ptr().add(tok / LANES * panel + col * LANES + tok % LANES);
    let queries = qkv.as_ptr().add(p * panel + head * d * LANES);
    let (keys, values) = (h + head * d, 2 * h + head * d);
    let s = scores.as_mut_ptr();
    for c0 in (0..len).step_by(KEYS_AT_ONCE) {
        // Past the sequence's last key, its last key again: computed, not stored.
        let key: [usize; KEYS_AT_ONCE] = std::array::from_fn(|j| start + (c0 + j).min(len - 1));
        let mut acc = [_mm512_setzero_ps(); KEYS_AT_ONCE];
        for dd in 0..d {
            let q = _mm512_loadu_ps(queries.add(dd * LANES));
            for (a, &tok) in acc.iter_mut().zip(&key) {
                *a = _mm512_fmadd_ps(q, _mm512_set1_ps(*at(tok, keys + dd)), *a);
            }
        }
        for (j, a) in acc.iter().enumerate().take(len - c0) {
            _mm512_storeu_ps(s.add((c0 + j) * LANES), _mm512_mul_ps(*a, _mm512_set1_ps(scale)));
        }
    }
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in 0..len {
        max = _mm512_max_ps(max, _mm512_loadu_ps(s.add(c * LANES)));
    }
    let mut sum = _mm512_setzero_ps();
    for c in 0..len {
        let e = exp(_mm512_sub_ps(_mm512_loadu_ps(s.add(c * LANES)), max));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(s.add(c * LANES), e);
    }
    let inv = _mm512_div_ps(_mm512_set1_ps(1.0), sum);
    for d0 in (0..d).step_by(LANES) {
        // Past the head's last column, its last column again: computed, not stored.
        let col: [usize; LANES] = std::array::from_fn(|j| values + (d0 + j).min(d - 1));
        let mut acc = [_mm512_setzero_ps(); LANES];
        for c in 0..len {
            let e = _mm512_loadu_ps(s.add(c * LANES));
            for (a, &col) in acc.iter_mut().zip(&col) {
                *a = _mm512_fmadd_ps(e, _mm512_set1_ps(*at(start + c, col)), *a);
            }
        }
        for (j, a) in acc.iter().enumerate().take(d - d0) {
            let o = out.as_mut_ptr().add((head * d + d0 + j) * LANES);
            _mm512_mask_storeu_ps(o, lanes, _mm512_mul_ps(*a, inv));
        }
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
    /// the tile, weights streamed and blocked: every output against an f64 reference, and the columns no
    /// projection owns left alone.
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
            // Blocked tiles over several inner blocks, and (k = 1536) several token blocks.
            (50, 300, 48, None),
            (170, 1536, 30, Some(Activation::Gelu)),
        ] {
            let x = random(t * k, 1);
            let (w1, b1) = (random(n * k, 2), random(n, 3));
            let (w2, b2) = (random(n * k, 4), random(n, 5));
            // One projection with an activation fills whole rows; without, two fill parts of wider rows.
            let (p1, p2) = (PackedWeights::pack(&w1, n, k), PackedWeights::pack(&w2, n, k));
            let projections: Vec<(PanelProjection<'_>, &[f32])> = match act {
                Some(_) => vec![(PanelProjection { w: &p1, b: &b1, col0: 0 }, &w1)],
                None => vec![
                    (PanelProjection { w: &p1, b: &b1, col0: 1 }, &w1),
                    (PanelProjection { w: &p2, b: &b2, col0: n + 3 }, &w2),
                ],
            };
            let dst_rs = if act.is_some() { n } else { 2 * n + 5 };
            pack_tokens(&x, t, k, &mut packed);
            let mut panels = vec![f32::NAN; t.div_ceil(LANES) * dst_rs * LANES];
            let panel_projections: Vec<PanelProjection<'_>> =
                projections.iter().map(|(p, _)| PanelProjection { w: p.w, b: p.b, col0: p.col0 }).collect();
            linear(&packed, t, k, &panel_projections, &mut panels, dst_rs, act);
            let mut dst = vec![f32::NAN; t * dst_rs];
            unpack_tokens(&panels, t, dst_rs, &mut dst);
            let mut owned = vec![false; dst_rs];
            for (p, w) in &projections {
                owned[p.col0..p.col0 + n].iter_mut().for_each(|o| *o = true);
                for r in 0..t {
                    for f in 0..n {
                        let dot: f64 = (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(w[f * k + i])).sum();
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

    /// Layer norm over panels against the row kernel, for token counts around a panel.
    #[test]
    fn panel_layer_norm_matches_the_row_kernel() {
        if !available() {
            eprintln!("no AVX-512F on this CPU: the kernels are not used, nothing to check");
            return;
        }
        let h = 40;
        let (g, b) = (random(h, 7), random(h, 8));
        for t in [1, 16, 21] {
            let (x, d) = (random(t * h, 9), random(t * h, 10));
            let (mut xp, mut dp) = (Vec::new(), Vec::new());
            pack_tokens(&x, t, h, &mut xp);
            pack_tokens(&d, t, h, &mut dp);
            add_layer_norm_panels(&mut xp, &dp, &g, &b, 1e-12);
            let mut got = vec![0f32; t * h];
            unpack_tokens(&xp, t, h, &mut got);
            let mut want = x.clone();
            super::super::f32_ops::add_layer_norm(&mut want, &d, &g, &b, 1e-12);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-5, "t {t} element {i}: {a} vs {b}");
            }
        }
    }

    /// Sequences of several lengths packed back to back (one token, panel-sized, crossing panels, long), and
    /// a head size that is not a multiple of the lanes: every output against f64 attention, padding lanes zero.
    #[test]
    fn panel_attention_matches_an_f64_reference() {
        if !available() {
            eprintln!("no AVX-512F on this CPU: the kernels are not used, nothing to check");
            return;
        }
        for (n_heads, d, lens) in [(3, 32, vec![1, 13, 16, 17, 2, 40]), (2, 20, vec![5, 30, 1])] {
            let h = n_heads * d;
            let spans: Vec<(usize, usize)> = lens
                .iter()
                .scan(0, |start, &len| {
                    *start += len;
                    Some((*start - len, len))
                })
                .collect();
            let t: usize = lens.iter().sum();
            let rows = random(t * 3 * h, d as u64);
            let (mut qkv, mut ctx_rows) = (Vec::new(), vec![0f32; t * h]);
            pack_tokens(&rows, t, 3 * h, &mut qkv);
            let mut ctx = vec![f32::NAN; t.div_ceil(LANES) * h * LANES];
            attention_panels(&qkv, t, &spans, n_heads, h, &mut ctx);
            unpack_tokens(&ctx, t, h, &mut ctx_rows);
            assert!(ctx.iter().all(|v| v.is_finite()), "padding lanes are written");
            let scale = 1.0 / (d as f64).sqrt();
            for &(start, len) in &spans {
                for head in 0..n_heads {
                    let at = |r: usize, part: usize, i: usize| {
                        f64::from(rows[(start + r) * 3 * h + part * h + head * d + i])
                    };
                    for r in 0..len {
                        let s: Vec<f64> =
                            (0..len).map(|c| (0..d).map(|i| at(r, 0, i) * at(c, 1, i)).sum::<f64>() * scale).collect();
                        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                        let total: f64 = e.iter().sum();
                        for i in 0..d {
                            let want: f64 = (0..len).map(|c| e[c] / total * at(c, 2, i)).sum();
                            let got = f64::from(ctx_rows[(start + r) * h + head * d + i]);
                            assert!((got - want).abs() < 1e-5, "len {len} head {head} row {r}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::super::f32_matmul::{project, Projection};
    use super::*;

    /// GFLOP/s of MiniLM's products for `T` tokens (448 by default, a batch of 32 sentences), panels in and out,
    /// against `gemm` on rows (`--ignored --nocapture`).
    #[test]
    #[ignore = "timing report, not a check"]
    fn projection_speed_report() {
        let t: usize = std::env::var("T").ok().and_then(|v| v.parse().ok()).unwrap_or(448);
        let x = vec![0.5f32; t * 1536];
        let w = vec![0.25f32; 1536 * 1536];
        let b = vec![0.1f32; 1536];
        let mut packed = Vec::new();
        for (k, n, parts, act) in
            [(384, 384, 3, None), (384, 384, 1, None), (384, 1536, 1, Some(Activation::Gelu)), (1536, 384, 1, None)]
        {
            let rows: Vec<Projection<'_>> =
                (0..parts).map(|j| Projection { w: &w[..n * k], b: &b[..n], col0: j * n }).collect();
            let packed_w = PackedWeights::pack(&w[..n * k], n, k);
            let projections: Vec<PanelProjection<'_>> =
                (0..parts).map(|j| PanelProjection { w: &packed_w, b: &b[..n], col0: j * n }).collect();
            pack_tokens(&x[..t * k], t, k, &mut packed);
            let mut dst = vec![0f32; t.div_ceil(LANES) * LANES * n * parts];
            let median = |run: &mut (dyn FnMut() + Send)| {
                let mut times: Vec<f64> = (0..31)
                    .map(|_| {
                        let start = std::time::Instant::now();
                        crate::kernels::run_pass(crate::kernels::Pass::Encode, &mut *run);
                        start.elapsed().as_secs_f64()
                    })
                    .collect();
                times.sort_by(f64::total_cmp);
                2.0 * (t * k * n * parts) as f64 / times[15] / 1e9
            };
            let ours = median(&mut || linear(&packed, t, k, &projections, &mut dst, n * parts, act));
            let theirs = median(&mut || project(&x[..t * k], t, k, &rows, &mut dst, n * parts, act));
            println!("t {t} k {k} n {}: panels {ours:.0} GFLOP/s, gemm on rows {theirs:.0} GFLOP/s", n * parts);
        }
    }
}
