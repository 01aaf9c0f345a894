//! AVX2 / VNNI dot products of the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) against
//! Q8_0 / Q8_1 activations: one weight row against up to four activation rows, each block unpacked
//! once. Per block and activation row this is llama.cpp's `ggml_vec_dot_*_q8_*` on x86: an exact integer
//! dot product in eight i32 lanes, converted and accumulated with `fma(d_w·d_a, Σ, acc)`, plus `m·s`
//! for the types with a minimum.

use std::arch::x86_64::*;

use super::act::ActRow;
use super::avx2_common::{
    bytes_from_bits, f16x8, hsum_ps, nibbles, prefetch_ahead, Avx2, Avx512Vnni, AvxVnni, ByteDot,
};
use super::types::QK;

/// How one 32-element block type is laid out and unpacked into 32 bytes.
pub trait Block32 {
    /// Bytes per block.
    const BYTES: usize;
    /// Whether the unpacked values are signed (the u8 × i8 product then takes |w| and a·sign(w)).
    const SIGNED: bool;
    /// Whether the block has a minimum (its dot product adds `m · s`).
    const MIN: bool;
    /// Whether llama.cpp's batched path keeps each group of 4 values' sum apart (tinyBLAS's types; Q4_0 and IQ4_NL
    /// it repacks instead, into GEMMs with one integer per block), so the blocked GEMM packs a correction per group.
    const GROUPS_APART: bool = false;
    /// The 32 values, and the scale and the minimum (broadcast) of the block at `b`.
    unsafe fn load(b: *const u8) -> (__m256i, __m256, __m256);
}

/// Q4_0: values q − 8.
pub struct Q4_0;
impl Block32 for Q4_0 {
    const BYTES: usize = 18;
    const SIGNED: bool = true;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn load(b: *const u8) -> (__m256i, __m256, __m256) {
        (_mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8)), f16x8(b), _mm256_setzero_ps())
    }
}

/// Q4_1: values q, minimum m.
pub struct Q4_1;
impl Block32 for Q4_1 {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn load(b: *const u8) -> (__m256i, __m256, __m256) {
        (nibbles(b.add(4)), f16x8(b), f16x8(b.add(2)))
    }
}

/// Q5_0: values q − 16, the fifth bit from `qh`.
pub struct Q5_0;
impl Block32 for Q5_0 {
    const GROUPS_APART: bool = true;
    const BYTES: usize = 22;
    const SIGNED: bool = true;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn load(b: *const u8) -> (__m256i, __m256, __m256) {
        // Where the fifth bit is clear, or-ing 0xf0 makes the byte q − 16; where it is set, q + 16 − 16 = q.
        let high = _mm256_andnot_si256(bytes_from_bits(b.add(2)), _mm256_set1_epi8(0xf0u8 as i8));
        (_mm256_or_si256(nibbles(b.add(6)), high), f16x8(b), _mm256_setzero_ps())
    }
}

/// Q5_1: values q (five bits), minimum m.
pub struct Q5_1;
impl Block32 for Q5_1 {
    const BYTES: usize = 24;
    const SIGNED: bool = false;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn load(b: *const u8) -> (__m256i, __m256, __m256) {
        let high = _mm256_and_si256(bytes_from_bits(b.add(4)), _mm256_set1_epi8(0x10));
        (_mm256_or_si256(nibbles(b.add(8)), high), f16x8(b), f16x8(b.add(2)))
    }
}

/// Q8_0: signed bytes.
pub struct Q8_0;
impl Block32 for Q8_0 {
    const GROUPS_APART: bool = true;
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn load(b: *const u8) -> (__m256i, __m256, __m256) {
        (_mm256_loadu_si256(b.add(2) as *const __m256i), f16x8(b), _mm256_setzero_ps())
    }
}

/// IQ4_NL: nibbles looked up in the non-linear table.
pub struct Iq4Nl;
impl Block32 for Iq4Nl {
    const BYTES: usize = 18;
    const SIGNED: bool = true;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn load(b: *const u8) -> (__m256i, __m256, __m256) {
        let table = _mm_loadu_si128(super::blocks::IQ4_NL_VALUES.as_ptr() as *const __m128i);
        let table = _mm256_set_m128i(table, table);
        (_mm256_shuffle_epi8(table, nibbles(b.add(2))), f16x8(b), _mm256_setzero_ps())
    }
}

/// One weight row (`w`) against C activation rows, into `out[..C]`.
#[inline(always)]
unsafe fn rows<B: Block32, D: ByteDot, const C: usize>(w: &[u8], a: &[ActRow<'_>; C], out: &mut [f32]) {
    let nb = w.len() / B::BYTES;
    let mut acc = [_mm256_setzero_ps(); C];
    // Σ m·s in every lane (lane 0 is read).
    let mut mins = [_mm256_setzero_ps(); C];
    for b in 0..nb {
        prefetch_ahead(w.as_ptr().add(b * B::BYTES));
        let (v, d, m) = B::load(w.as_ptr().add(b * B::BYTES));
        let u = if B::SIGNED { _mm256_sign_epi8(v, v) } else { v };
        for c in 0..C {
            let qa = _mm256_loadu_si256(a[c].qs.as_ptr().add(b * QK) as *const __m256i);
            let qa = if B::SIGNED { _mm256_sign_epi8(qa, v) } else { qa };
            let p = _mm256_cvtepi32_ps(D::dot(u, qa));
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(*a[c].d.get_unchecked(b)));
            acc[c] = _mm256_fmadd_ps(scale, p, acc[c]);
            if B::MIN {
                mins[c] = _mm256_fmadd_ps(m, _mm256_set1_ps(*a[c].s.get_unchecked(b)), mins[c]);
            }
        }
    }
    for c in 0..C {
        out[c] = hsum_ps(acc[c]) + _mm256_cvtss_f32(mins[c]);
    }
}

macro_rules! entry {
    ($name:ident, $block:ty, $dot:ty, $features:literal) => {
        /// One weight row against 1-4 activation rows.
        ///
        /// # Safety
        /// The CPU must have the enabled features; `w` is one row of the block type, every activation row
        /// has as many blocks, and `out.len() == a.len()`.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
            match a.len() {
                1 => rows::<$block, $dot, 1>(w, a.try_into().unwrap(), out),
                2 => rows::<$block, $dot, 2>(w, a.try_into().unwrap(), out),
                3 => rows::<$block, $dot, 3>(w, a.try_into().unwrap(), out),
                _ => rows::<$block, $dot, 4>(w, a.try_into().unwrap(), out),
            }
        }
    };
}

macro_rules! flavours {
    ($block:ty, $avx2:ident, $avxvnni:ident, $avx512:ident) => {
        entry!($avx2, $block, Avx2, "avx2,fma,f16c");
        entry!($avxvnni, $block, AvxVnni, "avx2,fma,f16c,avxvnni");
        entry!($avx512, $block, Avx512Vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni");
    };
}

flavours!(Q4_0, q4_0_avx2, q4_0_avxvnni, q4_0_avx512);
flavours!(Q4_1, q4_1_avx2, q4_1_avxvnni, q4_1_avx512);
flavours!(Q5_0, q5_0_avx2, q5_0_avxvnni, q5_0_avx512);
flavours!(Q5_1, q5_1_avx2, q5_1_avxvnni, q5_1_avx512);
flavours!(Q8_0, q8_0_avx2, q8_0_avxvnni, q8_0_avx512);
flavours!(Iq4Nl, iq4_nl_avx2, iq4_nl_avxvnni, iq4_nl_avx512);
