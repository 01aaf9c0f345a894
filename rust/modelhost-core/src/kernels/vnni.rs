//! AVX-VNNI: `vpdpbusd` does the u8 × i8 multiply-add in one instruction where AVX2 needs two. The kernels
//! are `avx2`'s, compiled with the feature enabled; the CPU is checked at run time (`InstructionSet::detect`),
//! so the wheel keeps its x86-64-v3 baseline.

use std::arch::x86_64::*;

use super::avx2::{q4_1, q8_0, ByteDot};
use super::BlockQ8;

struct Vnni;
impl ByteDot for Vnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }
}

/// # Safety
/// As `q4_1_avx2`, and the CPU must have AVX-VNNI.
#[target_feature(enable = "avxvnni")]
pub(super) unsafe fn q4_1_vnni<const N: usize>(w: &[u8], row_len: usize, a: &[&[BlockQ8]; N], out: &mut [f32]) {
    q4_1::<Vnni, N>(w, row_len, a, out)
}

/// # Safety
/// As `q8_0_avx2`, and the CPU must have AVX-VNNI.
#[target_feature(enable = "avxvnni")]
pub(super) unsafe fn q8_0_vnni<const N: usize>(w: &[u8], row_len: usize, a: &[&[BlockQ8]; N], out: &mut [f32]) {
    q8_0::<Vnni, N>(w, row_len, a, out)
}
