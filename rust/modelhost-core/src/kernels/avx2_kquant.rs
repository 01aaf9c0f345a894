//! AVX2 / VNNI dot products of the K-quants (Q2_K … Q6_K) against Q8_K activations: one weight row
//! against up to four activation rows. As llama.cpp's `ggml_vec_dot_q*_K_q8_K` on x86, each super-block's
//! sum is an exact integer (`maddubs` of unsigned values × activations, then `madd` with the sub-block
//! scales), converted once and accumulated with `fma(d_w·d_a, Σ, acc)`; the minimums come from Q8_K's
//! sums per 16. Q3_K's and Q6_K's signed values are taken as unsigned plus an offset (4, 32) whose
//! contribution, `offset · Σ scale · sum`, is subtracted from the same integer.

use std::arch::x86_64::*;

use super::act::ActRow;
use super::avx2_common::{f16x8, hsum_ps, prefetch_ahead, scale_pair, Avx2, Avx512Vnni, AvxVnni, ByteDot};
use super::blocks::{q3k_scales, scale_min_k4};
use super::types::QK_K;

#[inline(always)]
unsafe fn srl16(v: __m256i, n: usize) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32))
}

#[inline(always)]
unsafe fn sll16(v: __m256i, n: usize) -> __m256i {
    _mm256_sll_epi16(v, _mm_cvtsi32_si128(n as i32))
}

/// Bit `bit` of each of 32 bytes, moved to bit `to` (the other bits cleared).
#[inline(always)]
unsafe fn bit_to(v: __m256i, bit: usize, to: usize) -> __m256i {
    let moved = if bit >= to { srl16(v, bit - to) } else { sll16(v, to - bit) };
    _mm256_and_si256(moved, _mm256_set1_epi8(1 << to))
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// One K-quant type: its per-super-block scales and its 32-element chunks as unsigned bytes.
pub trait KQuant {
    /// Bytes per super-block.
    const BYTES: usize;
    /// Whether it has minimums (`d·Σ − dmin·Σ min·sum`).
    const HAS_MIN: bool;
    /// The decoded scales of one super-block.
    type Scales;
    /// Decode the scales of the block at `b`.
    unsafe fn scales(b: *const u8) -> Self::Scales;
    /// Chunk `k` (elements 32k..32k+32): the unsigned values and the i16 scale of each pair of them.
    unsafe fn chunk(b: *const u8, s: &Self::Scales, k: usize) -> (__m256i, __m256i);
    /// From Q8_K's 16 sums: the integer to subtract from the scaled sum (offset types) and Σ min·sum.
    fn offset_and_mins(s: &Self::Scales, bsums: &[i32]) -> (i32, i32);
    /// Super-block scale and minimum scale, broadcast.
    unsafe fn d_dmin(b: *const u8) -> (__m256, __m256);
    /// What `chunk`'s unsigned values are above the signed ones the format means (Q3_K: 4, Q6_K: 32).
    const OFFSET: i8;
    /// Elements per sub-block (per scale).
    const SUB: usize;
    /// Integer scale and minimum of each sub-block (16 entries; 8 used when `SUB` is 32).
    fn int_scales(s: &Self::Scales) -> ([i32; 16], [i32; 16]);
}

/// Q2_K: 2-bit values, 4-bit scale and minimum per 16.
pub struct Q2K;
impl KQuant for Q2K {
    const BYTES: usize = 84;
    const HAS_MIN: bool = true;
    type Scales = [u8; 16];
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> [u8; 16] {
        std::ptr::read_unaligned(b as *const [u8; 16])
    }
    #[inline(always)]
    unsafe fn chunk(b: *const u8, s: &[u8; 16], k: usize) -> (__m256i, __m256i) {
        let q = srl16(load(b.add(16 + (k / 4) * 32)), 2 * (k % 4));
        let v = _mm256_and_si256(q, _mm256_set1_epi8(3));
        (v, scale_pair(i32::from(s[2 * k] & 0x0f), i32::from(s[2 * k + 1] & 0x0f)))
    }
    #[inline(always)]
    fn offset_and_mins(s: &[u8; 16], bsums: &[i32]) -> (i32, i32) {
        (0, (0..16).map(|j| i32::from(s[j] >> 4) * bsums[j]).sum())
    }
    #[inline(always)]
    unsafe fn d_dmin(b: *const u8) -> (__m256, __m256) {
        (f16x8(b.add(80)), f16x8(b.add(82)))
    }
    const OFFSET: i8 = 0;
    const SUB: usize = 16;
    #[inline(always)]
    fn int_scales(s: &[u8; 16]) -> ([i32; 16], [i32; 16]) {
        (s.map(|v| i32::from(v & 0x0f)), s.map(|v| i32::from(v >> 4)))
    }
}

/// Q3_K: 3-bit values (low two bits in `qs`, the third in `hmask`, value − 4), 6-bit signed scales per 16.
pub struct Q3K;
impl KQuant for Q3K {
    const BYTES: usize = 110;
    const HAS_MIN: bool = false;
    type Scales = [i32; 16];
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> [i32; 16] {
        q3k_scales(std::slice::from_raw_parts(b.add(96), 12))
    }
    #[inline(always)]
    unsafe fn chunk(b: *const u8, s: &[i32; 16], k: usize) -> (__m256i, __m256i) {
        let (n, j) = (k / 4, k % 4);
        let low = _mm256_and_si256(srl16(load(b.add(32 + n * 32)), 2 * j), _mm256_set1_epi8(3));
        let high = bit_to(load(b), n * 4 + j, 2);
        (_mm256_or_si256(low, high), scale_pair(s[2 * k], s[2 * k + 1]))
    }
    #[inline(always)]
    fn offset_and_mins(s: &[i32; 16], bsums: &[i32]) -> (i32, i32) {
        (4 * (0..16).map(|j| s[j] * bsums[j]).sum::<i32>(), 0)
    }
    #[inline(always)]
    unsafe fn d_dmin(b: *const u8) -> (__m256, __m256) {
        (f16x8(b.add(108)), _mm256_setzero_ps())
    }
    const OFFSET: i8 = 4;
    const SUB: usize = 16;
    #[inline(always)]
    fn int_scales(s: &[i32; 16]) -> ([i32; 16], [i32; 16]) {
        (*s, [0; 16])
    }
}

/// Q4_K and Q5_K: 4-bit values (Q5_K: plus a fifth bit from `qh`), 6-bit scale and minimum per 32.
pub struct Q45K<const FIVE: bool>;
impl<const FIVE: bool> KQuant for Q45K<FIVE> {
    const BYTES: usize = if FIVE { 176 } else { 144 };
    const HAS_MIN: bool = true;
    type Scales = ([u8; 8], [u8; 8]);
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> ([u8; 8], [u8; 8]) {
        let raw = std::slice::from_raw_parts(b.add(4), 12);
        let mut out = ([0u8; 8], [0u8; 8]);
        for j in 0..8 {
            (out.0[j], out.1[j]) = scale_min_k4(j, raw);
        }
        out
    }
    #[inline(always)]
    unsafe fn chunk(b: *const u8, s: &([u8; 8], [u8; 8]), k: usize) -> (__m256i, __m256i) {
        let qs = if FIVE { 48 } else { 16 };
        let raw = load(b.add(qs + (k / 2) * 32));
        let mut v = _mm256_and_si256(srl16(raw, 4 * (k % 2)), _mm256_set1_epi8(0x0f));
        if FIVE {
            v = _mm256_or_si256(v, bit_to(load(b.add(16)), k, 4));
        }
        (v, _mm256_set1_epi16(i16::from(s.0[k])))
    }
    #[inline(always)]
    fn offset_and_mins(s: &([u8; 8], [u8; 8]), bsums: &[i32]) -> (i32, i32) {
        (0, (0..16).map(|j| i32::from(s.1[j / 2]) * bsums[j]).sum())
    }
    #[inline(always)]
    unsafe fn d_dmin(b: *const u8) -> (__m256, __m256) {
        (f16x8(b), f16x8(b.add(2)))
    }
    const OFFSET: i8 = 0;
    const SUB: usize = 32;
    #[inline(always)]
    fn int_scales(s: &([u8; 8], [u8; 8])) -> ([i32; 16], [i32; 16]) {
        let widen = |v: &[u8; 8]| std::array::from_fn(|j| if j < 8 { i32::from(v[j]) } else { 0 });
        (widen(&s.0), widen(&s.1))
    }
}

/// Q6_K: 6-bit values (low four bits in `ql`, two more in `qh`, value − 32), 8-bit signed scales per 16.
pub struct Q6K;
impl KQuant for Q6K {
    const BYTES: usize = 210;
    const HAS_MIN: bool = false;
    type Scales = [i32; 16];
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> [i32; 16] {
        std::array::from_fn(|j| i32::from(*b.add(192 + j) as i8))
    }
    #[inline(always)]
    unsafe fn chunk(b: *const u8, s: &[i32; 16], k: usize) -> (__m256i, __m256i) {
        let (n, kk) = (k / 4, k % 4);
        let ql = load(b.add(n * 64 + (kk % 2) * 32));
        let low = _mm256_and_si256(srl16(ql, 4 * (kk / 2)), _mm256_set1_epi8(0x0f));
        let qh = srl16(load(b.add(128 + n * 32)), 2 * kk);
        let high = _mm256_and_si256(_mm256_slli_epi16(qh, 4), _mm256_set1_epi8(0x30));
        (_mm256_or_si256(low, high), scale_pair(s[2 * k], s[2 * k + 1]))
    }
    #[inline(always)]
    fn offset_and_mins(s: &[i32; 16], bsums: &[i32]) -> (i32, i32) {
        (32 * (0..16).map(|j| s[j] * bsums[j]).sum::<i32>(), 0)
    }
    #[inline(always)]
    unsafe fn d_dmin(b: *const u8) -> (__m256, __m256) {
        (f16x8(b.add(208)), _mm256_setzero_ps())
    }
    const OFFSET: i8 = 32;
    const SUB: usize = 16;
    #[inline(always)]
    fn int_scales(s: &[i32; 16]) -> ([i32; 16], [i32; 16]) {
        (*s, [0; 16])
    }
}

/// One weight row against C activation rows, into `out[..C]`.
#[inline(always)]
unsafe fn rows<K: KQuant, D: ByteDot, const C: usize>(w: &[u8], a: &[ActRow<'_>; C], out: &mut [f32]) {
    let nb = w.len() / K::BYTES;
    let mut acc = [_mm256_setzero_ps(); C];
    // Σ dmin·d_a·Σ min·sum in every lane (lane 0 is read).
    let mut mins = [_mm256_setzero_ps(); C];
    for b in 0..nb {
        let blk = w.as_ptr().add(b * K::BYTES);
        for line in (0..K::BYTES).step_by(64) {
            prefetch_ahead(blk.wrapping_add(line));
        }
        let scales = K::scales(blk);
        let mut sumi = [_mm256_setzero_si256(); C];
        for k in 0..QK_K / 32 {
            let (v, sc) = K::chunk(blk, &scales, k);
            for c in 0..C {
                let qa = _mm256_loadu_si256(a[c].qs.as_ptr().add(b * QK_K + k * 32) as *const __m256i);
                sumi[c] = D::madd_acc(sumi[c], _mm256_maddubs_epi16(v, qa), sc);
            }
        }
        let (d, dmin) = K::d_dmin(blk);
        for c in 0..C {
            let da = *a[c].d.get_unchecked(b);
            let (offset, min) = K::offset_and_mins(&scales, a[c].sums.get_unchecked(b * 16..b * 16 + 16));
            let total = _mm256_sub_epi32(sumi[c], _mm256_castsi128_si256(_mm_cvtsi32_si128(offset)));
            let dv = _mm256_set1_ps(da);
            acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(d, dv), _mm256_cvtepi32_ps(total), acc[c]);
            if K::HAS_MIN {
                mins[c] = _mm256_fmadd_ps(_mm256_mul_ps(dmin, dv), _mm256_set1_ps(min as f32), mins[c]);
            }
        }
    }
    for c in 0..C {
        out[c] = hsum_ps(acc[c]) - _mm256_cvtss_f32(mins[c]);
    }
}

macro_rules! entry {
    ($name:ident, $k:ty, $dot:ty, $features:literal) => {
        /// One weight row against 1-4 activation rows.
        ///
        /// # Safety
        /// The CPU must have the enabled features; `w` is one row of the type, every activation row has as
        /// many super-blocks, and `out.len() == a.len()`.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
            match a.len() {
                1 => rows::<$k, $dot, 1>(w, a.try_into().unwrap(), out),
                2 => rows::<$k, $dot, 2>(w, a.try_into().unwrap(), out),
                3 => rows::<$k, $dot, 3>(w, a.try_into().unwrap(), out),
                _ => rows::<$k, $dot, 4>(w, a.try_into().unwrap(), out),
            }
        }
    };
}

macro_rules! flavours {
    ($k:ty, $avx2:ident, $avxvnni:ident, $avx512:ident) => {
        entry!($avx2, $k, Avx2, "avx2,fma,f16c");
        entry!($avxvnni, $k, AvxVnni, "avx2,fma,f16c,avxvnni");
        entry!($avx512, $k, Avx512Vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni");
    };
}

flavours!(Q2K, q2_k_avx2, q2_k_avxvnni, q2_k_avx512);
flavours!(Q3K, q3_k_avx2, q3_k_avxvnni, q3_k_avx512);
flavours!(Q45K<false>, q4_k_avx2, q4_k_avxvnni, q4_k_avx512);
flavours!(Q45K<true>, q5_k_avx2, q5_k_avxvnni, q5_k_avx512);
flavours!(Q6K, q6_k_avx2, q6_k_avxvnni, q6_k_avx512);
