//! BF16 weights times BF16-rounded activations with `vdpbf16ps` (AVX-512 BF16), in llama.cpp's orders: its batched
//! product (tinyBLAS) keeps one accumulator per output and adds each 32 values with one `vdpbf16ps`; its
//! `ggml_vec_dot_bf16`, which it takes for one activation row, keeps two, over alternate 32s, and adds their
//! reductions and the last values' products in double.

use std::arch::x86_64::*;

use super::ggml_rows::reduce16;

/// Whether this CPU has the instructions.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}

/// The 32 bf16 weights at `w` and the 32 activations at `x` (bf16 values held as f32), as `vdpbf16ps` operands.
#[inline(always)]
unsafe fn operands(w: *const u8, x: *const f32) -> (__m512bh, __m512bh) {
    let w: __m512bh = std::mem::transmute(_mm512_loadu_si512(w as *const __m512i));
    (w, _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x.add(16)), _mm512_loadu_ps(x)))
}

#[inline(always)]
unsafe fn reduce(v: __m512) -> f32 {
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), v);
    reduce16(&lanes)
}

/// `w · x` for a row of bf16 weights (`x.len()` of them, a multiple of 32) and activations already rounded to
/// bf16: as llama.cpp's batched product (`single` false) or its `ggml_vec_dot_bf16` (`single` true).
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16 (`available`); `w` holds `x.len()` bf16 values.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn dot(w: &[u8], x: &[f32], single: bool) -> f32 {
    let mut out = [0f32];
    if single {
        dot_single(w, x, &mut out[0]);
    } else {
        dot_rows::<1>(w, &[x], &mut out);
    }
    out[0]
}

/// The batched product of one weight row with `R` activation rows, their accumulator chains interleaved.
///
/// # Safety
/// As `dot`; every row of `xs` has the same length.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn dot_rows<const R: usize>(w: &[u8], xs: &[&[f32]; R], out: &mut [f32]) {
    let n = xs[0].len();
    debug_assert!(n.is_multiple_of(32) && w.len() >= 2 * n);
    let mut acc = [_mm512_setzero_ps(); R];
    for i in (0..n).step_by(32) {
        let wv: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.as_ptr().add(2 * i) as *const __m512i));
        for (a, x) in acc.iter_mut().zip(xs) {
            let xv = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x.as_ptr().add(i + 16)), _mm512_loadu_ps(x.as_ptr().add(i)));
            *a = _mm512_dpbf16_ps(*a, wv, xv);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = reduce(a);
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_single(w: &[u8], x: &[f32], out: &mut f32) {
    let n = x.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let (mut c1, mut c2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i + 64 <= n {
        let (a, b) = operands(wp.add(2 * i), xp.add(i));
        c1 = _mm512_dpbf16_ps(c1, a, b);
        let (a, b) = operands(wp.add(2 * (i + 32)), xp.add(i + 32));
        c2 = _mm512_dpbf16_ps(c2, a, b);
        i += 64;
    }
    let mut sum = f64::from(reduce(c1)) + f64::from(reduce(c2));
    for j in i..n {
        let wj = f32::from_bits(u32::from(u16::from_le_bytes([w[2 * j], w[2 * j + 1]])) << 16);
        sum += f64::from(wj * x[j]);
    }
    *out = sum as f32;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vdpbf16ps`, as Intel describes it: per lane, the odd pair's product then the even one's, each added with one
    /// rounding (the products of two bf16 values are exact in f32).
    fn dpbf16(acc: &mut [f32; 16], w: &[f32], x: &[f32]) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = w[2 * j + 1].mul_add(x[2 * j + 1], *a);
            *a = w[2 * j].mul_add(x[2 * j], *a);
        }
    }

    #[test]
    fn follows_llama_cpps_two_orders() {
        if !available() {
            return; // the kernel is for CPUs with AVX-512 BF16; others take the float row kernels
        }
        let bf = |i: usize, s: f32| f32::from_bits((((i * 7919 % 2003) as f32 - 1001.0) * s).to_bits() & 0xffff_0000);
        for n in [32, 64, 96, 160, 576] {
            let w: Vec<f32> = (0..n).map(|i| bf(i, 0.013)).collect();
            let x: Vec<f32> = (0..n).map(|i| bf(i * 3 + 1, 0.7)).collect();
            let bytes: Vec<u8> = w.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
            let mut acc = [0f32; 16];
            for c in (0..n).step_by(32) {
                dpbf16(&mut acc, &w[c..c + 32], &x[c..c + 32]);
            }
            // SAFETY: checked above; `bytes` holds n bf16 values.
            assert_eq!(unsafe { dot(&bytes, &x, false) }.to_bits(), reduce16(&acc).to_bits(), "batched, n={n}");
            let (mut c1, mut c2) = ([0f32; 16], [0f32; 16]);
            let whole = n / 64 * 64;
            for c in (0..whole).step_by(64) {
                dpbf16(&mut c1, &w[c..c + 32], &x[c..c + 32]);
                dpbf16(&mut c2, &w[c + 32..c + 64], &x[c + 32..c + 64]);
            }
            let mut sum = f64::from(reduce16(&c1)) + f64::from(reduce16(&c2));
            for j in whole..n {
                sum += f64::from(w[j] * x[j]);
            }
            // SAFETY: as above.
            assert_eq!(unsafe { dot(&bytes, &x, true) }.to_bits(), (sum as f32).to_bits(), "one row, n={n}");
        }
    }
}
