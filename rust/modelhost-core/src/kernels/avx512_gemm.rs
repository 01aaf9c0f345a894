//! The AVX-512 VNNI inner kernels of the blocked GEMM (`panel`): unpacking a task's weight rows, and
//! one tile of weight rows against one panel of 16 activation rows.

use std::arch::x86_64::*;

use super::avx2_kquant::{KQuant, Q2K, Q3K, Q45K, Q6K};
use super::avx2_q32::{Block32, Iq4Nl, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use super::panel::{ActPanels, PackedRows, LANES};
use super::types::{WeightType, QK, QK_K};

/// Weight rows per tile: each activation load feeds this many `vpdpbusd`.
pub const TILE_ROWS: usize = 8;

/// Sum of the 32 signed bytes of `v`, and of each half.
#[inline(always)]
unsafe fn byte_sums(v: __m256i) -> (i32, i32) {
    // sad of the bytes biased to unsigned: four u64 lanes of 8-byte sums.
    let s = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(-128)), _mm256_setzero_si256());
    let lo = _mm256_extract_epi64::<0>(s) + _mm256_extract_epi64::<1>(s);
    let hi = _mm256_extract_epi64::<2>(s) + _mm256_extract_epi64::<3>(s);
    (lo as i32 - 16 * 128, hi as i32 - 16 * 128)
}

#[inline(always)]
unsafe fn pack_q32<B: Block32>(src: &[&[u8]], p: &mut PackedRows) {
    let (cols, nb) = (p.cols, p.nb);
    for (r, row) in src.iter().enumerate() {
        for b in 0..nb {
            let (v, d, m) = B::load(row.as_ptr().add(b * B::BYTES));
            _mm256_storeu_si256(p.q.as_mut_ptr().add(r * cols + b * QK) as *mut __m256i, v);
            let (lo, hi) = byte_sums(v);
            let i = r * nb + b;
            p.d[i] = _mm256_cvtss_f32(d);
            p.m[i] = _mm256_cvtss_f32(m);
            p.corr[i] = -128 * (lo + hi);
        }
    }
}

#[inline(always)]
unsafe fn pack_kquant<K: KQuant>(src: &[&[u8]], p: &mut PackedRows) {
    let (cols, nb) = (p.cols, p.nb);
    for (r, row) in src.iter().enumerate() {
        for b in 0..nb {
            let blk = row.as_ptr().add(b * K::BYTES);
            let scales = K::scales(blk);
            let (sc, mn) = K::int_scales(&scales);
            let mut corr = 0i32;
            for c in 0..QK_K / 32 {
                let (v, _) = K::chunk(blk, &scales, c);
                let v = _mm256_sub_epi8(v, _mm256_set1_epi8(K::OFFSET));
                _mm256_storeu_si256(p.q.as_mut_ptr().add(r * cols + b * QK_K + c * 32) as *mut __m256i, v);
                let (lo, hi) = byte_sums(v);
                corr += if K::SUB == 32 { sc[c] * (lo + hi) } else { sc[2 * c] * lo + sc[2 * c + 1] * hi };
            }
            let i = r * nb + b;
            let (d, dmin) = K::d_dmin(blk);
            (p.d[i], p.m[i]) = (_mm256_cvtss_f32(d), _mm256_cvtss_f32(dmin));
            p.corr[i] = -128 * corr;
            p.sc[i * 16..i * 16 + 16].copy_from_slice(&sc);
            for pair in 0..8 {
                let (lo, hi) = if K::SUB == 16 { (mn[2 * pair], mn[2 * pair + 1]) } else { (mn[pair], mn[pair]) };
                p.mins[i * 8 + pair] = (lo & 0xffff) | (hi << 16);
            }
        }
    }
}

/// Unpack `src` (rows of `ty`, `p.cols` values each) into `p` (already sized by `reset`).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI (and AVX2, FMA, F16C); every row holds `p.cols` values of `ty`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn pack(ty: WeightType, src: &[&[u8]], p: &mut PackedRows) {
    match ty {
        WeightType::Q4_0 => pack_q32::<Q4_0>(src, p),
        WeightType::Q4_1 => pack_q32::<Q4_1>(src, p),
        WeightType::Q5_0 => pack_q32::<Q5_0>(src, p),
        WeightType::Q5_1 => pack_q32::<Q5_1>(src, p),
        WeightType::Q8_0 => pack_q32::<Q8_0>(src, p),
        WeightType::IQ4_NL => pack_q32::<Iq4Nl>(src, p),
        WeightType::Q2_K => pack_kquant::<Q2K>(src, p),
        WeightType::Q3_K => pack_kquant::<Q3K>(src, p),
        WeightType::Q4_K => pack_kquant::<Q45K<false>>(src, p),
        WeightType::Q5_K => pack_kquant::<Q45K<true>>(src, p),
        WeightType::Q6_K => pack_kquant::<Q6K>(src, p),
        WeightType::F32 | WeightType::F16 | WeightType::BF16 => unreachable!("float types have no panel path"),
    }
}

/// The 4 weight bytes at `p`, broadcast.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// Rows `r0..r0+TILE_ROWS` (the last `count`-th repeated) of a 32-element type against panel `g`.
#[inline(always)]
unsafe fn tile_q32<const MIN: bool>(
    p: &PackedRows,
    r0: usize,
    count: usize,
    a: &ActPanels,
    g: usize,
    out: &mut [[f32; LANES]; TILE_ROWS],
) {
    let (cols, nb) = (p.cols, p.nb);
    let rows: [usize; TILE_ROWS] = std::array::from_fn(|t| r0 + t.min(count - 1));
    let aq = a.q.as_ptr().add(g * cols * LANES);
    let ad = a.d.as_ptr().add(g * nb * LANES);
    let mut acc = [_mm512_setzero_ps(); TILE_ROWS];
    for b in 0..nb {
        let mut sums: [__m512i; TILE_ROWS] = std::array::from_fn(|t| _mm512_set1_epi32(p.corr[rows[t] * nb + b]));
        for g4 in 0..QK / 4 {
            let av = _mm512_loadu_si512(aq.add((b * 8 + g4) * 64) as *const __m512i);
            for t in 0..TILE_ROWS {
                let w = bcast4(p.q.as_ptr().add(rows[t] * cols + b * QK + g4 * 4));
                sums[t] = _mm512_dpbusd_epi32(sums[t], av, w);
            }
        }
        let da = _mm512_loadu_ps(ad.add(b * LANES));
        for t in 0..TILE_ROWS {
            let scale = _mm512_mul_ps(da, _mm512_set1_ps(p.d[rows[t] * nb + b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t]), scale, acc[t]);
        }
        if MIN {
            let s = _mm512_loadu_ps(a.s.as_ptr().add((g * nb + b) * LANES));
            for t in 0..TILE_ROWS {
                acc[t] = _mm512_fmadd_ps(s, _mm512_set1_ps(p.m[rows[t] * nb + b]), acc[t]);
            }
        }
    }
    for t in 0..TILE_ROWS {
        _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
}

/// Rows `r0..r0+TILE_ROWS` of a K-quant against panel `g`: per super-block, each sub-block's integer sum
/// is scaled (`vpmulld`) into one exact integer, converted once.
#[inline(always)]
unsafe fn tile_kquant<const SUB: usize, const MIN: bool>(
    p: &PackedRows,
    r0: usize,
    count: usize,
    a: &ActPanels,
    g: usize,
    out: &mut [[f32; LANES]; TILE_ROWS],
) {
    let (cols, nb) = (p.cols, p.nb);
    let rows: [usize; TILE_ROWS] = std::array::from_fn(|t| r0 + t.min(count - 1));
    let aq = a.q.as_ptr().add(g * cols * LANES);
    let ad = a.d.as_ptr().add(g * nb * LANES);
    let mut acc = [_mm512_setzero_ps(); TILE_ROWS];
    for b in 0..nb {
        let mut total: [__m512i; TILE_ROWS] = std::array::from_fn(|t| _mm512_set1_epi32(p.corr[rows[t] * nb + b]));
        for j in 0..QK_K / SUB {
            let mut sums = [_mm512_setzero_si512(); TILE_ROWS];
            for g4 in 0..SUB / 4 {
                let av = _mm512_loadu_si512(aq.add((b * (QK_K / 4) + j * (SUB / 4) + g4) * 64) as *const __m512i);
                for t in 0..TILE_ROWS {
                    let w = bcast4(p.q.as_ptr().add(rows[t] * cols + b * QK_K + j * SUB + g4 * 4));
                    sums[t] = _mm512_dpbusd_epi32(sums[t], av, w);
                }
            }
            for t in 0..TILE_ROWS {
                let scale = _mm512_set1_epi32(p.sc[(rows[t] * nb + b) * 16 + j]);
                total[t] = _mm512_add_epi32(total[t], _mm512_mullo_epi32(sums[t], scale));
            }
        }
        let da = _mm512_loadu_ps(ad.add(b * LANES));
        for t in 0..TILE_ROWS {
            let scale = _mm512_mul_ps(da, _mm512_set1_ps(p.d[rows[t] * nb + b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total[t]), scale, acc[t]);
        }
        if MIN {
            let mut mins = [_mm512_setzero_si512(); TILE_ROWS];
            let bsum = a.bsum.as_ptr().add((g * nb + b) * 8 * 2 * LANES);
            for pair in 0..8 {
                let bv = _mm512_loadu_si512(bsum.add(pair * 2 * LANES) as *const __m512i);
                for t in 0..TILE_ROWS {
                    let m = _mm512_set1_epi32(p.mins[(rows[t] * nb + b) * 8 + pair]);
                    mins[t] = _mm512_dpwssd_epi32(mins[t], bv, m);
                }
            }
            for t in 0..TILE_ROWS {
                let scale = _mm512_mul_ps(da, _mm512_set1_ps(p.m[rows[t] * nb + b]));
                acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins[t]), scale, acc[t]);
            }
        }
    }
    for t in 0..TILE_ROWS {
        _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
}

/// Packed rows `r0..r0+count` (`count <= TILE_ROWS`) against activation panel `g`: `out[t][l]` is row
/// `r0+t` · activation row `16g+l`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI; `p` holds rows `r0..r0+count` of `ty`, `g < a.groups`, and `a`
/// was built from the activation format of `ty` with `p.cols` columns.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile(
    ty: WeightType,
    p: &PackedRows,
    r0: usize,
    count: usize,
    a: &ActPanels,
    g: usize,
    out: &mut [[f32; LANES]; TILE_ROWS],
) {
    match ty {
        WeightType::Q4_1 | WeightType::Q5_1 => tile_q32::<true>(p, r0, count, a, g, out),
        WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 | WeightType::IQ4_NL => {
            tile_q32::<false>(p, r0, count, a, g, out)
        }
        WeightType::Q2_K => tile_kquant::<16, true>(p, r0, count, a, g, out),
        WeightType::Q3_K | WeightType::Q6_K => tile_kquant::<16, false>(p, r0, count, a, g, out),
        WeightType::Q4_K | WeightType::Q5_K => tile_kquant::<32, true>(p, r0, count, a, g, out),
        WeightType::F32 | WeightType::F16 | WeightType::BF16 => unreachable!("float types have no panel path"),
    }
}
