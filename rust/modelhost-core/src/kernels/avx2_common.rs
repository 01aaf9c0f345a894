//! Shared AVX2 pieces of the row kernels: horizontal sums, the byte dot product with and without VNNI,
//! and the bit/nibble unpacking of ggml's blocks (arch/x86/quants.c's helpers, written out again).
//!
//! Everything here is `#[inline(always)]` and is compiled into the callers' `#[target_feature]` entry
//! points: the VNNI flavours only ever run inside functions that enable it.

use std::arch::x86_64::*;

/// How far ahead of the block in use the row kernels prefetch the weights. Decoding streams every matrix
/// from memory once per token; the hardware prefetcher alone left a third of the bandwidth unused. The rows
/// of a matrix are contiguous, so this runs on into the next row. A prefetch never faults, so it may point
/// past the end.
pub const PREFETCH: usize = 3072;

/// Prefetch the cache line `PREFETCH` bytes after `p`.
#[inline(always)]
pub unsafe fn prefetch_ahead(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
}

/// Sum of 8 f32 lanes.
#[inline(always)]
pub unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The integer multiply-adds, in two flavours: AVX2 (`maddubs` + `madd`) and VNNI (`vpdpbusd`,
/// `vpdpwssd`: one instruction each). The sums are the same integers either way.
pub trait ByteDot {
    /// u8 × i8 products summed in fours into i32 lanes.
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
    /// `acc + (i16 pairs of p · i16 pairs of scale)`, pairs summed into i32 lanes.
    unsafe fn madd_acc(acc: __m256i, p: __m256i, scale: __m256i) -> __m256i;
}

/// Plain AVX2.
pub struct Avx2;
impl ByteDot for Avx2 {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, p: __m256i, scale: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, scale))
    }
}

/// AVX-VNNI (VEX encoded: Alder Lake and later, Zen 5).
pub struct AvxVnni;
impl ByteDot for AvxVnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }
    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, p: __m256i, scale: __m256i) -> __m256i {
        _mm256_dpwssd_avx_epi32(acc, p, scale)
    }
}

/// AVX-512 VNNI on 256-bit registers (EVEX encoded: Ice Lake, Sapphire Rapids, Zen 4).
pub struct Avx512Vnni;
impl ByteDot for Avx512Vnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, p: __m256i, scale: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, p, scale)
    }
}

/// 16 bytes of nibbles → 32 bytes: the low nibbles, then the high nibbles (ggml's element order).
#[inline(always)]
pub unsafe fn nibbles(p: *const u8) -> __m256i {
    let packed = _mm_loadu_si128(p as *const __m128i);
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0f))
}

/// 32 bits → 32 bytes of 0xff (bit set) or 0x00 (`bytes_from_bits_32`).
#[inline(always)]
pub unsafe fn bytes_from_bits(p: *const u8) -> __m256i {
    let bits = i32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
    let shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits), shuffle);
    let bit = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bit, _mm256_set1_epi64x(-1))
}

/// The f16 at `p`, widened into all 8 lanes (F16C: the callers enable it). A vector on purpose: converting
/// a scalar through a register leaves its other lanes "don't care", and the compiler then fills them from
/// whatever register is at hand (the accumulator), chaining every block to the previous one.
#[inline(always)]
pub unsafe fn f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(std::ptr::read_unaligned(p as *const i16)))
}

/// i16 lanes 0-7 = `lo`, 8-15 = `hi`: the scales of two 16-element sub-blocks for one 32-byte vector.
#[inline(always)]
pub unsafe fn scale_pair(lo: i32, hi: i32) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16))
}
