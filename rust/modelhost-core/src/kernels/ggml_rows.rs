//! Row-wise ops of the decoder at llama.cpp's exact numerics (`ggml-cpu`'s `ops.cpp`, `vec.h`, and the
//! summation orders of `llamafile/sgemm.cpp`). Files whose layer inputs are quantized to 8 bits turn any
//! last-bit difference before a quantization into different roundings downstream, which this model family
//! amplifies into logits that differ by as much as llama.cpp's batched and token-by-token paths differ from
//! each other; so these follow ggml's arithmetic operation by operation, for the x86 build it compiles on
//! this CPU (AVX-512 F/DQ or AVX2 + FMA: the two have different `exp` approximations).

use rayon::prelude::*;

/// Rows per task.
const MIN_ROWS: usize = 8;

/// Whether llama.cpp's x86 build on this CPU takes its AVX-512 paths (`__AVX512F__ && __AVX512DQ__`).
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x / rms(x) · w` for each row of `x` (rows of `w.len()` values), in place, as
/// `ggml_compute_forward_rms_norm_f32` followed by `ggml_mul`: squares summed in double, then
/// `x · (1/sqrt(mean + eps)) · w`.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    x.par_chunks_mut(n).with_min_len(MIN_ROWS).for_each(|row| {
        let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, w) in row.iter_mut().zip(w) {
            *v = *v * scale * w;
        }
    });
}

/// `-(a·b) + c`, fused (`vfnmadd`).
#[inline(always)]
fn fnmadd(a: f32, b: f32, c: f32) -> f32 {
    (-a).mul_add(b, c)
}

/// ggml's vector `exp` (`ggml_v_expf`, ARM's optimized routine), one lane of it: the AVX-512 flavour, or
/// the AVX2 one, which rounds differently.
#[inline(always)]
pub fn expf(x: f32, avx512: bool) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    let b = fnmadd(n, f32::from_bits(0x35bf_be8e), fnmadd(n, f32::from_bits(0x3f31_7200), x)); // 0x1.7f7d1cp-20, 0x1.62e4p-1
    let u = b * b;
    let (c1, c2, c3, c4, c5) = (
        f32::from_bits(0x3c07_2010), // 0x1.0e4020p-7
        f32::from_bits(0x3d2b_9f17), // 0x1.573e2ep-5
        f32::from_bits(0x3e2a_af33), // 0x1.555e66p-3
        f32::from_bits(0x3eff_fedb), // 0x1.fffdb6p-2
        f32::from_bits(0x3f7f_fff6), // 0x1.ffffecp-1
    );
    let poly = c1.mul_add(b, c2).mul_add(u, c3.mul_add(b, c4));
    if avx512 {
        let j = poly.mul_add(u, c5.mul_add(b, 1.0));
        if n.abs() > 192.0 {
            return if n <= 0.0 { 0.0 } else { f32::INFINITY };
        }
        // scalef: j · 2^n, rounded once.
        (f64::from(j) * f64::from_bits(((n as i64 + 1023) as u64) << 52)) as f32
    } else {
        let j = poly.mul_add(u, c5 * b);
        let e = z.to_bits() << 23;
        let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
        if n.abs() <= 126.0 {
            return k.mul_add(j, k);
        }
        let g = if n <= 0.0 { 0x8200_0000u32 } else { 0 };
        let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
        let s2 = f32::from_bits(e.wrapping_sub(g));
        if n.abs() > 192.0 {
            s1 * s1
        } else {
            s2.mul_add(j, s2) * s1
        }
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// ggml's `ggml_v_expf` for AVX-512 (vec.h), transcribed intrinsic by intrinsic.
///
/// # Safety
/// The CPU has AVX-512 F and DQ.
#[target_feature(enable = "avx512f,avx512dq")]
pub unsafe fn exp_avx512(x: __m512) -> __m512 {
    let r = _mm512_set1_ps(f32::from_bits(0x4b40_0000));
    let z = _mm512_fmadd_ps(x, _mm512_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
    let n = _mm512_sub_ps(z, r);
    let b = _mm512_fnmadd_ps(
        n,
        _mm512_set1_ps(f32::from_bits(0x35bf_be8e)),
        _mm512_fnmadd_ps(n, _mm512_set1_ps(f32::from_bits(0x3f31_7200)), x),
    );
    let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_set1_ps(f32::from_bits(0x3c07_2010)),
                b,
                _mm512_set1_ps(f32::from_bits(0x3d2b_9f17)),
            ),
            u,
            _mm512_fmadd_ps(
                _mm512_set1_ps(f32::from_bits(0x3e2a_af33)),
                b,
                _mm512_set1_ps(f32::from_bits(0x3eff_fedb)),
            ),
        ),
        u,
        _mm512_fmadd_ps(_mm512_set1_ps(f32::from_bits(0x3f7f_fff6)), b, _mm512_set1_ps(1.0)),
    );
    let res = _mm512_scalef_ps(j, n);
    let alt = _mm512_mask_blend_ps(
        _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps()),
        _mm512_set1_ps(f32::INFINITY),
        _mm512_setzero_ps(),
    );
    _mm512_mask_blend_ps(d, res, alt)
}

/// ggml's `ggml_v_expf` for AVX2 + FMA (vec.h), transcribed.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_avx2(x: __m256) -> __m256 {
    let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000));
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        _mm256_set1_ps(f32::from_bits(0x35bf_be8e)),
        _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x),
    );
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let c = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0)));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_set1_ps(f32::from_bits(0x3c07_2010)),
                b,
                _mm256_set1_ps(f32::from_bits(0x3d2b_9f17)),
            ),
            u,
            _mm256_fmadd_ps(
                _mm256_set1_ps(f32::from_bits(0x3e2a_af33)),
                b,
                _mm256_set1_ps(f32::from_bits(0x3eff_fedb)),
            ),
        ),
        u,
        _mm256_mul_ps(_mm256_set1_ps(f32::from_bits(0x3f7f_fff6)), b),
    );
    if _mm256_movemask_ps(_mm256_castsi256_ps(c)) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let d = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0)));
    _mm256_or_ps(
        _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            _mm256_castsi256_ps(d),
            _mm256_or_ps(
                _mm256_and_ps(_mm256_castsi256_ps(c), _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// `silu(gate) · up` over one row, in place in `gate`, as `ggml_vec_swiglu_f32`: the vector `exp` over
/// whole vectors, libm's `expf` over the rest of the row.
pub fn swiglu_row(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features are checked (AVX2 and FMA are the wheel's baseline); the slices hold whole vectors.
    let done = unsafe {
        let lanes = if avx512() { 16 } else { 8 };
        let done = gate.len() / lanes * lanes;
        if lanes == 16 {
            swiglu_avx512(&mut gate[..done], &up[..done]);
        } else {
            swiglu_avx2(&mut gate[..done], &up[..done]);
        }
        done
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (g, u) in gate[done..].iter_mut().zip(&up[done..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn swiglu_avx512(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.chunks_exact_mut(16).zip(up.chunks_exact(16)) {
        let x = _mm512_loadu_ps(g.as_ptr());
        let e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        let silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e));
        _mm512_storeu_ps(g.as_mut_ptr(), _mm512_mul_ps(silu, _mm512_loadu_ps(u.as_ptr())));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.chunks_exact_mut(8).zip(up.chunks_exact(8)) {
        let x = _mm256_loadu_ps(g.as_ptr());
        let e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
        let silu = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        _mm256_storeu_ps(g.as_mut_ptr(), _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr())));
    }
}

/// `exp(x - max)` over `x` in place, as `ggml_vec_soft_max_f32` computes it (the vector `exp`; the scalar
/// transcription for a last partial vector gives the same bits).
pub fn exp_minus_max(x: &mut [f32], max: f32) {
    let wide = avx512();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features are checked (AVX2 and FMA are the wheel's baseline); loads and stores are of whole
    // vectors inside `x`.
    let done = unsafe {
        let lanes = if wide { 16 } else { 8 };
        let done = x.len() / lanes * lanes;
        if wide {
            exp_minus_max_avx512(&mut x[..done], max);
        } else {
            exp_minus_max_avx2(&mut x[..done], max);
        }
        done
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for v in &mut x[done..] {
        *v = expf(*v - max, wide);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn exp_minus_max_avx512(x: &mut [f32], max: f32) {
    for v in x.chunks_exact_mut(16) {
        let e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(v.as_ptr()), _mm512_set1_ps(max)));
        _mm512_storeu_ps(v.as_mut_ptr(), e);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_minus_max_avx2(x: &mut [f32], max: f32) {
    for v in x.chunks_exact_mut(8) {
        let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(v.as_ptr()), _mm256_set1_ps(max)));
        _mm256_storeu_ps(v.as_mut_ptr(), e);
    }
}

/// `silu(gate) · up` for rows of `n` values.
pub fn swiglu(gate: &mut [f32], up: &[f32], n: usize) {
    gate.par_chunks_mut(n).zip(up.par_chunks(n)).with_min_len(MIN_ROWS).for_each(|(g, u)| swiglu_row(g, u));
}

/// Rotate the pairs `(x[a], x[a + offset])` of one head by `(cos, sin)` per pair, as ggml's `rotate_pairs`
/// compiles on x86 (GCC contracts `x0·c − x1·s` into `fma(x0, c, −(x1·s))`).
#[inline(always)]
pub fn rotate_pairs(x: &mut [f32], cos: &[f32], sin: &[f32], offset: usize, stride: usize) {
    for (i, (&c, &s)) in cos.iter().zip(sin).enumerate() {
        let a = i * stride;
        let (x0, x1) = (x[a], x[a + offset]);
        x[a] = x0.mul_add(c, -(x1 * s));
        x[a + offset] = x0.mul_add(s, x1 * c);
    }
}

/// Sum of 16 lanes in the order of GCC's `_mm512_reduce_add_ps`.
#[inline(always)]
pub fn reduce16(l: &[f32; 16]) -> f32 {
    let t3: [f32; 8] = std::array::from_fn(|i| l[i + 8] + l[i]);
    let t6: [f32; 4] = std::array::from_fn(|i| t3[i + 4] + t3[i]);
    let (a, b) = (t6[0] + t6[2], t6[1] + t6[3]);
    a + b
}

/// Sum of 8 lanes in the order of ggml's `hsum_float_8` / tinyBLAS's `hsum(__m256)`.
#[inline(always)]
pub fn reduce8(l: &[f32; 8]) -> f32 {
    let a: [f32; 4] = std::array::from_fn(|i| l[i + 4] + l[i]);
    (a[0] + a[2]) + (a[1] + a[3])
}

/// Sum of one vector's lanes (16 with AVX-512, else 8; missing lanes are zeros), in the reduction's order.
#[inline(always)]
pub fn reduce_lanes(v: &[f32], wide: bool) -> f32 {
    if wide {
        let mut l = [0f32; 16];
        l[..v.len()].copy_from_slice(v);
        reduce16(&l)
    } else {
        let mut l = [0f32; 8];
        l[..v.len()].copy_from_slice(v);
        reduce8(&l)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;

    use super::*;

    /// Inputs across exp's whole range, including where it underflows, overflows and goes subnormal.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-120_000..100_000).map(|i| i as f32 * 1e-3 + 1.234_567e-4).collect();
        v.extend([0.0, -0.0, 88.7, 89.0, -87.0, -103.9, -104.5, -150.0, 200.0, -200.0, f32::NEG_INFINITY]);
        v
    }

    #[test]
    fn exp_is_ggmls_vector_exp_bit_for_bit() {
        let xs = inputs();
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
            for chunk in xs.chunks_exact(16) {
                let mut want = [0f32; 16];
                // SAFETY: the features are present; the buffers hold 16 values.
                unsafe { _mm512_storeu_ps(want.as_mut_ptr(), exp_avx512(_mm512_loadu_ps(chunk.as_ptr()))) };
                for (x, w) in chunk.iter().zip(want) {
                    assert_eq!(expf(*x, true).to_bits(), w.to_bits(), "AVX-512 exp({x})");
                }
            }
        }
        for chunk in xs.chunks_exact(8) {
            let mut want = [0f32; 8];
            // SAFETY: the wheel's baseline (x86-64-v3) has AVX2 and FMA; the buffers hold 8 values.
            unsafe { _mm256_storeu_ps(want.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(chunk.as_ptr()))) };
            for (x, w) in chunk.iter().zip(want) {
                assert_eq!(expf(*x, false).to_bits(), w.to_bits(), "AVX2 exp({x})");
            }
        }
        // And it is an exp: within a few units in the last place of the exact value where it is normal.
        for x in [-80.0f32, -10.5, -1.0, -1e-3, 0.0, 0.5, 3.0, 42.0] {
            let exact = f64::from(x).exp();
            for wide in [true, false] {
                assert!((f64::from(expf(x, wide)) - exact).abs() <= 4.0 * exact * f64::from(f32::EPSILON), "exp({x})");
            }
        }
    }

    #[test]
    fn reductions_follow_the_vector_instructions() {
        // Values whose sum depends on the order: each lane a different magnitude.
        let v: [f32; 16] = std::array::from_fn(|i| {
            (if i % 3 == 0 { 1e8 } else { 1.0 }) * (i as f32 + 0.37) * if i % 2 == 0 { 1.0 } else { -1.0 }
        });
        // SAFETY: AVX-512 F is checked; AVX is the wheel's baseline.
        unsafe {
            if is_x86_feature_detected!("avx512f") {
                assert_eq!(reduce16(&v).to_bits(), _mm512_reduce_add_ps(_mm512_loadu_ps(v.as_ptr())).to_bits());
            }
            // ggml's hsum_float_8: add the halves, then movehl, then movehdup.
            let x = _mm256_loadu_ps(v.as_ptr());
            let mut r = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
            r = _mm_add_ps(r, _mm_movehl_ps(r, r));
            r = _mm_add_ss(r, _mm_movehdup_ps(r));
            let eight: [f32; 8] = v[..8].try_into().unwrap();
            assert_eq!(reduce8(&eight).to_bits(), _mm_cvtss_f32(r).to_bits());
        }
    }

    #[test]
    fn swiglu_uses_the_vector_exp_on_whole_vectors_and_libm_on_the_rest() {
        let n = 37; // two AVX-512 vectors (or four AVX2 ones) and a tail
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 18.3) * 0.41).collect();
        let up: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.07).collect();
        let mut out = gate.clone();
        swiglu_row(&mut out, &up);
        let wide = avx512();
        let vector = 32; // whole vectors of 16 or of 8
        for i in 0..n {
            let e = if i < vector { expf(0.0 - gate[i], wide) } else { (-gate[i]).exp() };
            assert_eq!(out[i].to_bits(), (gate[i] / (1.0 + e) * up[i]).to_bits(), "element {i}");
            let exact = f64::from(gate[i]) / (1.0 + (-f64::from(gate[i])).exp()) * f64::from(up[i]);
            assert!((f64::from(out[i]) - exact).abs() <= 1e-6 * exact.abs().max(1.0), "element {i}");
        }
    }

    #[test]
    fn rms_norm_sums_in_double_and_multiplies_by_the_inverse() {
        let w: Vec<f32> = (0..576).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        let x: Vec<f32> = (0..2 * 576).map(|i| ((i * 7919 % 1001) as f32 - 500.0) * 1.3e-3).collect();
        let mut y = x.clone();
        rms_norm(&mut y, &w, 1e-5);
        for (row, out) in x.chunks(576).zip(y.chunks(576)) {
            let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
            let scale = 1.0 / ((sum / 576.0) as f32 + 1e-5).sqrt();
            for ((v, o), w) in row.iter().zip(out).zip(&w) {
                assert_eq!(o.to_bits(), (v * scale * w).to_bits());
                let exact = f64::from(*v) / (sum / 576.0 + 1e-5).sqrt() * f64::from(*w);
                assert!((f64::from(*o) - exact).abs() <= 1e-6 * exact.abs().max(1e-3));
            }
        }
    }
}
