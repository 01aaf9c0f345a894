//! Q4_1 and Q8_0 dot products in AVX2/FMA, as ggml's `vec_dot_q4_1_q8_1` and `vec_dot_q8_0_q8_0` do them:
//! 32 weights against 32 quantized activations per step, f32 accumulation. The kernels are generic over the
//! instruction that multiplies the bytes (`ByteDot`), so `vnni` compiles the same code with AVX-VNNI's.

use std::arch::x86_64::*;

use super::{f16_at, BlockQ8, QuantKind};

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// u8 × i8 products summed in fours into i32 lanes.
pub(super) trait ByteDot {
    /// The byte products of `u` (unsigned) and `s` (signed), summed in fours.
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
}

struct Avx2;
impl ByteDot for Avx2 {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
}

/// Each Q4_1 weight row against N activation rows (ggml's `vec_dot_q4_1_q8_1`).
#[inline(always)]
pub(super) unsafe fn q4_1<D: ByteDot, const N: usize>(w: &[u8], row_len: usize, a: &[&[BlockQ8]; N], out: &mut [f32]) {
    for (w, out) in w.chunks_exact(row_len).zip(out.chunks_exact_mut(N)) {
        q4_1_row::<D, N>(w, a, out);
    }
}

#[inline(always)]
unsafe fn q4_1_row<D: ByteDot, const N: usize>(w: &[u8], a: &[&[BlockQ8]; N], out: &mut [f32]) {
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [0f32; N];
    for (b, wb) in w.chunks_exact(QuantKind::Q4_1.block_bytes()).enumerate() {
        let (d, m) = (f16_at(wb, 0), f16_at(wb, 2));
        // 16 bytes of nibbles → 32 bytes: low nibbles first, then high nibbles (ggml's order).
        let packed = _mm_loadu_si128(wb.as_ptr().add(4) as *const __m128i);
        let qw = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
        for t in 0..N {
            let ab = a[t].get_unchecked(b);
            let qa = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            let dot = _mm256_cvtepi32_ps(D::dot(qw, qa));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), dot, acc[t]);
            mins[t] += m * ab.s;
        }
    }
    for t in 0..N {
        out[t] = hsum(acc[t]) + mins[t];
    }
}

/// Each Q8_0 weight row against N activation rows (ggml's `vec_dot_q8_0_q8_0`).
#[inline(always)]
pub(super) unsafe fn q8_0<D: ByteDot, const N: usize>(w: &[u8], row_len: usize, a: &[&[BlockQ8]; N], out: &mut [f32]) {
    for (w, out) in w.chunks_exact(row_len).zip(out.chunks_exact_mut(N)) {
        q8_0_row::<D, N>(w, a, out);
    }
}

#[inline(always)]
unsafe fn q8_0_row<D: ByteDot, const N: usize>(w: &[u8], a: &[&[BlockQ8]; N], out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, wb) in w.chunks_exact(QuantKind::Q8_0.block_bytes()).enumerate() {
        let d = f16_at(wb, 0);
        let qw = _mm256_loadu_si256(wb.as_ptr().add(2) as *const __m256i);
        // The byte dot wants unsigned × signed: |w| × (a with w's sign), as ggml does.
        let abs_w = _mm256_sign_epi8(qw, qw);
        for t in 0..N {
            let ab = a[t].get_unchecked(b);
            let qa = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            let dot = _mm256_cvtepi32_ps(D::dot(abs_w, _mm256_sign_epi8(qa, qw)));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), dot, acc[t]);
        }
    }
    for t in 0..N {
        out[t] = hsum(acc[t]);
    }
}

// The entry points. Each is compiled with its features so the inlined body uses them (`vnni` has the
// AVX-VNNI ones).

/// # Safety
/// Needs AVX2 and FMA; `w` must hold rows of as many Q4_1 blocks as each activation row.
pub(super) unsafe fn q4_1_avx2<const N: usize>(w: &[u8], row_len: usize, a: &[&[BlockQ8]; N], out: &mut [f32]) {
    q4_1::<Avx2, N>(w, row_len, a, out)
}

/// # Safety
/// Needs AVX2 and FMA; `w` must hold rows of as many Q8_0 blocks as each activation row.
pub(super) unsafe fn q8_0_avx2<const N: usize>(w: &[u8], row_len: usize, a: &[&[BlockQ8]; N], out: &mut [f32]) {
    q8_0::<Avx2, N>(w, row_len, a, out)
}
