//! Causal grouped-query attention over an f16 KV cache, with llama.cpp's arithmetic: its default context
//! (llama-cpp-python 0.3.36 turns flash attention off) keeps K and V in f16 and multiplies `K·Q` with Q
//! converted to f16 (the F16 matmul's activation type), takes the softmax in f32 with ggml's vector `exp`
//! (the sum in double, a vector at a time), and multiplies `V·P` with the probabilities converted to f16.
//! Both products sum in the order of llama.cpp's batched F16 matmul (tinyBLAS: one accumulator per vector
//! lane, then the lanes reduced), so a prompt's attention gives llama.cpp's values bit for bit.
//!
//! The cache of one layer is `(n_kv, ctx, hd)` per K and V, head-major: writing a position touches one
//! run of `hd` values per head, so its pages are faulted in as the context fills, not up front.

use half::f16;
use rayon::prelude::*;

use super::ggml_rows;
use super::matrix::SharedOut;

/// Query rows whose scores are held at a time.
const ROW_TILE: usize = 64;

/// The head layout of an attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (`n_head` is a multiple).
    pub n_kv: usize,
    /// Values per head.
    pub head_dim: usize,
}

/// Write `seq` positions of keys and values (`(n_kv, seq, hd)` each, f32) at `pos` of one layer's cache
/// (`(n_kv, ctx, hd)`), rounded to f16.
#[allow(clippy::too_many_arguments)]
pub fn store(
    h: Heads,
    k: &[f32],
    v: &[f32],
    k_cache: &mut [f16],
    v_cache: &mut [f16],
    ctx: usize,
    pos: usize,
    seq: usize,
) {
    assert!(pos + seq <= ctx && k.len() == seq * h.n_kv * h.head_dim && v.len() == k.len(), "cache write out of range");
    assert!(k_cache.len() == h.n_kv * ctx * h.head_dim && v_cache.len() == k_cache.len(), "cache size");
    let run = seq * h.head_dim;
    for g in 0..h.n_kv {
        let (src, dst) = (g * run, (g * ctx + pos) * h.head_dim);
        half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut k_cache[dst..dst + run], &k[src..src + run]);
        half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut v_cache[dst..dst + run], &v[src..src + run]);
    }
}

/// `a · b` in the order of llama.cpp's batched F16 matmul (tinyBLAS): one accumulator per vector lane
/// (16 with AVX-512, else 8), lane `i % lanes` taking element `i`, then the lanes summed as the vector
/// reduction does. Products of two f16 values are exact in f32, so fused or not makes no difference.
/// (A head size that is not a multiple of the lanes, where llama.cpp takes another kernel, adds the rest
/// at the end.)
#[inline(always)]
fn dot(a: &[f32], b: &[f32], wide: bool) -> f32 {
    fn lanes<const L: usize>(a: &[f32], b: &[f32]) -> ([f32; L], f32) {
        let mut acc = [0f32; L];
        let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
        let tail = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for l in 0..L {
                acc[l] += x[l] * y[l];
            }
        }
        (acc, tail)
    }
    if wide {
        let (acc, tail) = lanes::<16>(a, b);
        ggml_rows::reduce16(&acc) + tail
    } else {
        let (acc, tail) = lanes::<8>(a, b);
        ggml_rows::reduce8(&acc) + tail
    }
}

/// `s[j] = dot(q, key j)` for the first `s.len()` keys (rows of `q.len()` values in `keys`).
fn score_row(q: &[f32], keys: &[f32], s: &mut [f32], wide: bool) {
    let hd = q.len();
    assert!(keys.len() >= s.len() * hd);
    #[cfg(target_arch = "x86_64")]
    if wide && hd.is_multiple_of(16) && !s.is_empty() {
        // SAFETY: `wide` only where the CPU has AVX-512F (`ggml_rows::avx512`); the sizes were asserted.
        unsafe { score_row_avx512(q, keys, s) };
        return;
    }
    for (j, s) in s.iter_mut().enumerate() {
        *s = dot(q, &keys[j * hd..(j + 1) * hd], wide);
    }
}

/// Keys whose dot products run at once in `score_row_avx512`: independent FMA chains.
#[cfg(target_arch = "x86_64")]
const KEYS_AT_ONCE: usize = 4;

/// `score_row` with AVX-512F for a head size that is a multiple of 16: each dot product is `dot`'s, one
/// register of 16 lane sums (the products are exact, so the FMA rounds as `dot`'s add does), reduced by
/// `reduce16`; `KEYS_AT_ONCE` keys at a time.
///
/// # Safety
/// AVX-512F; `q.len()` a multiple of 16, `s` not empty, `keys` holding `s.len()` rows of `q.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn score_row_avx512(q: &[f32], keys: &[f32], s: &mut [f32]) {
    use std::arch::x86_64::*;
    let (hd, last) = (q.len(), s.len() - 1);
    for j0 in (0..s.len()).step_by(KEYS_AT_ONCE) {
        // Past the last key, the last key again: computed, not stored.
        let rows: [*const f32; KEYS_AT_ONCE] = std::array::from_fn(|c| keys.as_ptr().add((j0 + c).min(last) * hd));
        let mut acc = [_mm512_setzero_ps(); KEYS_AT_ONCE];
        for i in (0..hd).step_by(16) {
            let qv = _mm512_loadu_ps(q.as_ptr().add(i));
            for (a, row) in acc.iter_mut().zip(&rows) {
                *a = _mm512_fmadd_ps(qv, _mm512_loadu_ps(row.add(i)), *a);
            }
        }
        for (c, a) in acc.iter().enumerate().take(s.len() - j0) {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), *a);
            s[j0 + c] = ggml_rows::reduce16(&lanes);
        }
    }
}

/// Attention of `seq` queries at positions `pos..pos + seq` over keys and values `0..pos + seq` of one
/// layer: `q` is `(n_head, seq, hd)` (RoPE applied), the caches `(n_kv, ctx, hd)` with those positions
/// written, `out` `(seq, n_head, hd)`, i.e. `(seq, n_head · hd)` as the output projection reads it. `window`: a query sees only the keys less than this many positions
/// behind it (llama.cpp's standard sliding window).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    h: Heads,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    ctx: usize,
    pos: usize,
    seq: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    let (hd, group) = (h.head_dim, h.n_head / h.n_kv);
    let total = pos + seq;
    assert!(total <= ctx && q.len() == seq * h.n_head * hd && out.len() == q.len(), "attention sizes");
    assert!(k_cache.len() == h.n_kv * ctx * hd && v_cache.len() == k_cache.len(), "cache size");
    let wide = ggml_rows::avx512();
    let lanes = if wide { 16 } else { 8 };
    let shared = SharedOut(out.as_mut_ptr());
    (0..h.n_kv).into_par_iter().for_each(|g| {
        let to_f32 = |cache: &[f16]| -> Vec<f32> {
            let mut buf = vec![0f32; total * hd];
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(
                &cache[g * ctx * hd..(g * ctx + total) * hd],
                &mut buf,
            );
            buf
        };
        let (keys, values) = (to_f32(k_cache), to_f32(v_cache));
        // Rows r = (head in the group) · seq + query, a tile at a time and the tiles in parallel (a model with
        // one key/value head would otherwise run its attention on one thread): the scores of a tile are all
        // that is held besides this head's keys and values.
        let rows = group * seq;
        // A worker's buffers, for every tile it runs: a tile's queries, scores, output rows and lane sums.
        let buffers = || {
            (vec![0f32; ROW_TILE * hd], vec![0f32; ROW_TILE * total], vec![0f32; ROW_TILE * hd], vec![0f32; lanes * hd])
        };
        (0..rows.div_ceil(ROW_TILE)).into_par_iter().for_each_init(buffers, |(qs, scores, o, acc), tile| {
            let r0 = tile * ROW_TILE;
            let n = (rows - r0).min(ROW_TILE);
            let (qs, scores, o) = (&mut qs[..n * hd], &mut scores[..n * total], &mut o[..n * hd]);
            // The queries, as f16 values (llama.cpp converts them for the F16 matmul).
            for (t, row) in qs.chunks_exact_mut(hd).enumerate() {
                let (head, i) = (g * group + (r0 + t) / seq, (r0 + t) % seq);
                for (d, s) in row.iter_mut().zip(&q[(head * seq + i) * hd..]) {
                    *d = f16::from_f32(*s).to_f32();
                }
            }
            // One path for every query row, however many the pass holds: a token's scores must not depend on
            // how the prompt was split into passes or on the model's group size (a tiled GEMM sums in another
            // order, and this model family amplifies such roundings into different greedy tokens).
            for (t, s) in scores.chunks_exact_mut(total).enumerate() {
                let qr = &qs[t * hd..(t + 1) * hd];
                score_row(qr, &keys, &mut s[..pos + (r0 + t) % seq + 1], wide);
            }
            // Softmax over the visible keys; the probabilities rounded to f16 (the V matmul's activation type).
            for (t, s) in scores.chunks_exact_mut(total).enumerate() {
                let p = pos + (r0 + t) % seq;
                let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let visible = lo..p + 1;
                let mut max = f32::NEG_INFINITY;
                for x in &mut s[visible.clone()] {
                    *x *= scale;
                    max = max.max(*x);
                }
                // ggml's vector exp, summed a vector at a time (as `ggml_vec_soft_max_f32` over rows of
                // llama.cpp's padded cache, where hidden keys give 0).
                let end = (p + 1).next_multiple_of(lanes).min(s.len());
                ggml_rows::exp_minus_max(&mut s[visible.clone()], max);
                s[..visible.start].fill(0.0);
                s[p + 1..end].fill(0.0);
                let mut sum = 0f64;
                for chunk in s[..end].chunks(lanes) {
                    sum += f64::from(ggml_rows::reduce_lanes(chunk, wide));
                }
                let inv = (1.0 / sum) as f32;
                for (j, x) in s.iter_mut().enumerate() {
                    *x = if visible.contains(&j) { f16::from_f32(*x * inv).to_f32() } else { 0.0 };
                }
            }
            // `V·P` in tinyBLAS's order: lane `j % lanes` of each output sums the positions `j` it takes.
            for (t, orow) in o.chunks_exact_mut(hd).enumerate() {
                acc.fill(0.0);
                for (j, &p) in scores[t * total..(t + 1) * total].iter().enumerate() {
                    if p != 0.0 {
                        let lane = &mut acc[(j % lanes) * hd..(j % lanes + 1) * hd];
                        for (d, v) in lane.iter_mut().zip(&values[j * hd..(j + 1) * hd]) {
                            *d += p * v;
                        }
                    }
                }
                // The lanes' reduction, done for every output at once: halves added pairwise, as the
                // vector reduction adds its registers' halves.
                let mut width = lanes;
                while width > 1 {
                    width /= 2;
                    let (low, high) = acc.split_at_mut(width * hd);
                    for (a, b) in low.iter_mut().zip(&high[..width * hd]) {
                        *a += *b;
                    }
                }
                orow.copy_from_slice(&acc[..hd]);
            }
            for (t, orow) in o.chunks_exact(hd).enumerate() {
                let (head, i) = (g * group + (r0 + t) / seq, (r0 + t) % seq);
                for (d, &v) in orow.iter().enumerate() {
                    // SAFETY: each (query, head) row belongs to one task and tile; the index is inside `out`.
                    unsafe { shared.write((i * h.n_head + head) * hd + d, v) };
                }
            }
        });
    });
}

/// Bytes `attend` holds besides its inputs and output, per worker thread, for a context of `ctx` positions and
/// heads of `hd` values: one head's keys and values widened to f32, and one tile of scores.
pub fn working_bytes_per_thread(ctx: usize, hd: usize) -> u64 {
    ((2 * ctx * hd + ROW_TILE * ctx + 2 * ROW_TILE * hd) * std::mem::size_of::<f32>()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(i: usize, salt: usize) -> f32 {
        (((i * 7919 + salt * 104729) % 2003) as f32 - 1001.0) / 400.0
    }

    /// The straightforward computation, in f64, of the same rounded inputs.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        h: Heads,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        pos: usize,
        seq: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32> {
        let r16 = |x: f32| f16::from_f32(x).to_f32() as f64;
        let total = pos + seq;
        let mut out = vec![0f32; seq * h.n_head * h.head_dim];
        for i in 0..seq {
            for head in 0..h.n_head {
                let g = head / (h.n_head / h.n_kv);
                let qv = |d: usize| r16(q[(head * seq + i) * h.head_dim + d]);
                let kv = |j: usize, d: usize, x: &[f32]| r16(x[(j * h.n_kv + g) * h.head_dim + d]);
                let p = pos + i;
                let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let s: Vec<f64> = (lo..=p)
                    .map(|j| (0..h.head_dim).map(|d| qv(d) * kv(j, d, k)).sum::<f64>() * f64::from(scale))
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..h.head_dim {
                    let o: f64 = (lo..=p).zip(&e).map(|(j, e)| r16((e / sum) as f32) * kv(j, d, v)).sum();
                    out[(i * h.n_head + head) * h.head_dim + d] = o as f32;
                }
                let _ = total;
            }
        }
        out
    }

    fn run(h: Heads, ctx: usize, steps: &[usize], window: Option<usize>) {
        let mut kc = vec![f16::ZERO; h.n_kv * ctx * h.head_dim];
        let mut vc = kc.clone();
        let (mut all_k, mut all_v) = (Vec::new(), Vec::new());
        let scale = 1.0 / (h.head_dim as f32).sqrt();
        let mut pos = 0;
        for (step, &seq) in steps.iter().enumerate() {
            let n = seq * h.n_kv * h.head_dim;
            let k: Vec<f32> = (0..n).map(|i| value(i, step * 3 + 1)).collect();
            let v: Vec<f32> = (0..n).map(|i| value(i, step * 3 + 2)).collect();
            let q: Vec<f32> = (0..seq * h.n_head * h.head_dim).map(|i| value(i, step * 3)).collect();
            store(h, &k, &v, &mut kc, &mut vc, ctx, pos, seq);
            // The reference reads keys and values position-major: (position, kv head, hd).
            for i in 0..seq {
                for g in 0..h.n_kv {
                    all_k.extend(&k[(g * seq + i) * h.head_dim..(g * seq + i + 1) * h.head_dim]);
                    all_v.extend(&v[(g * seq + i) * h.head_dim..(g * seq + i + 1) * h.head_dim]);
                }
            }
            let mut out = vec![0f32; q.len()];
            attend(h, &q, &kc, &vc, ctx, pos, seq, scale, window, &mut out);
            let expected = reference(h, &q, &all_k, &all_v, pos, seq, scale, window);
            for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
                assert!((a - b).abs() < 2e-3 * b.abs().max(1.0), "{h:?} step {step} [{i}]: {a} vs {b}");
            }
            pos += seq;
        }
    }

    /// The AVX-512 score rows give `dot`'s values bit for bit (the order llama.cpp sums in), for key counts
    /// around `KEYS_AT_ONCE` and head sizes of one and several registers.
    #[test]
    fn score_rows_sum_as_dot_does() {
        let wide = ggml_rows::avx512();
        if !wide {
            eprintln!("no AVX-512 on this CPU: the rows take `dot` itself, nothing to compare");
            return;
        }
        for hd in [16, 64, 256] {
            let r16 = |x: f32| f16::from_f32(x).to_f32();
            let q: Vec<f32> = (0..hd).map(|i| r16(value(i, 1))).collect();
            for n in [1, 3, 4, 5, 9] {
                let keys: Vec<f32> = (0..n * hd).map(|i| r16(value(i, 2))).collect();
                let mut got = vec![f32::NAN; n];
                score_row(&q, &keys, &mut got, wide);
                for (j, g) in got.iter().enumerate() {
                    let want = dot(&q, &keys[j * hd..(j + 1) * hd], wide);
                    assert_eq!(g.to_bits(), want.to_bits(), "hd {hd} keys {n} [{j}]: {g} vs {want}");
                }
            }
        }
    }

    #[test]
    fn matches_a_direct_computation() {
        // Prompt chunks then single tokens, grouped and plain heads, with and without a sliding window.
        run(Heads { n_head: 6, n_kv: 2, head_dim: 16 }, 64, &[9, 1, 1, 5, 1], None);
        run(Heads { n_head: 4, n_kv: 4, head_dim: 64 }, 40, &[17, 1, 2, 1], None);
        run(Heads { n_head: 2, n_kv: 1, head_dim: 8 }, 32, &[12, 1, 1, 7], Some(5));
        // More query rows than one tile holds (3 heads · 40 queries).
        run(Heads { n_head: 6, n_kv: 2, head_dim: 16 }, 96, &[40, 1, 45], Some(50));
    }

    #[test]
    fn stores_round_to_f16_in_head_major_order() {
        let h = Heads { n_head: 2, n_kv: 2, head_dim: 2 };
        let mut kc = vec![f16::ZERO; 2 * 3 * 2];
        let mut vc = kc.clone();
        store(h, &[1.0, 2.0, 3.0, 1.0 / 3.0], &[0.0; 4], &mut kc, &mut vc, 3, 1, 1); // (n_kv, seq, hd)
        assert_eq!(kc[2..4], [f16::from_f32(1.0), f16::from_f32(2.0)]); // head 0, position 1
        assert_eq!(kc[8..10], [f16::from_f32(3.0), f16::from_f32(1.0 / 3.0)]); // head 1, position 1
    }
}
