//! AVX2 dot products of float weights (F32, F16, BF16): one weight row against up to four activation
//! rows already rounded to the weights' activation format (so F16 · F16 and BF16 · BF16 products, as
//! llama.cpp's `ggml_vec_dot_f16` / `_bf16`, computed in f32 with FMA), 16 elements per step.

use std::arch::x86_64::*;

use super::avx2_common::{hsum_ps, prefetch_ahead};

/// How a float weight type widens 8 values to f32.
pub trait FloatRow {
    /// Bytes per value.
    const BYTES: usize;
    /// The 8 values at `p`.
    unsafe fn load8(p: *const u8) -> __m256;
    /// The value at `p`.
    unsafe fn load1(p: *const u8) -> f32;
}

/// f32 weights.
pub struct F32;
impl FloatRow for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        std::ptr::read_unaligned(p as *const f32)
    }
}

/// f16 weights.
pub struct F16;
impl FloatRow for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        half::f16::from_bits(std::ptr::read_unaligned(p as *const u16)).to_f32()
    }
}

/// bf16 weights: the upper half of an f32.
pub struct Bf16;
impl FloatRow for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        f32::from_bits(u32::from(std::ptr::read_unaligned(p as *const u16)) << 16)
    }
}

#[inline(always)]
unsafe fn rows<W: FloatRow, const C: usize>(w: &[u8], a: &[&[f32]; C], out: &mut [f32]) {
    let n = w.len() / W::BYTES;
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    let mut i = 0;
    while i + 16 <= n {
        prefetch_ahead(w.as_ptr().add(i * W::BYTES));
        let w0 = W::load8(w.as_ptr().add(i * W::BYTES));
        let w1 = W::load8(w.as_ptr().add((i + 8) * W::BYTES));
        for c in 0..C {
            let x = a[c].as_ptr().add(i);
            acc[c][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc[c][0]);
            acc[c][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), acc[c][1]);
        }
        i += 16;
    }
    for c in 0..C {
        let mut s = hsum_ps(_mm256_add_ps(acc[c][0], acc[c][1]));
        for (j, x) in a[c].iter().enumerate().take(n).skip(i) {
            s += W::load1(w.as_ptr().add(j * W::BYTES)) * x;
        }
        out[c] = s;
    }
}

macro_rules! entry {
    ($name:ident, $w:ty) => {
        /// One weight row against 1-4 activation rows.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA and F16C; every activation row has as many values as `w`, and
        /// `out.len() == a.len()`.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(w: &[u8], a: &[&[f32]], out: &mut [f32]) {
            match a.len() {
                1 => rows::<$w, 1>(w, a.try_into().unwrap(), out),
                2 => rows::<$w, 2>(w, a.try_into().unwrap(), out),
                3 => rows::<$w, 3>(w, a.try_into().unwrap(), out),
                _ => rows::<$w, 4>(w, a.try_into().unwrap(), out),
            }
        }
    };
}

entry!(f32_avx2, F32);
entry!(f16_avx2, F16);
entry!(bf16_avx2, Bf16);
