//! The AVX-512 VNNI inner kernels of the blocked GEMM (`panel`): unpacking a task's weight rows, and
//! one tile of weight rows against one panel of 16 activation rows.

use std::arch::x86_64::*;

use super::avx2_kquant::{KQuant, Q2K, Q3K, Q45K, Q6K};
use super::avx2_q32::{Block32, Iq4Nl, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use super::panel::{ActPanels, PackedRows, LANES};
use super::types::{WeightType, QK, QK_K};

/// Weight rows per tile: each activation load feeds this many `vpdpbusd` per panel.
pub const TILE_ROWS: usize = 4;
/// Activation panels per tile at most: each broadcast of 4 weight bytes feeds this many `vpdpbusd` (with
/// one panel, the broadcasts alone kept the load ports busier than the multiply units).
pub const TILE_PANELS: usize = 2;
/// One tile's results: per weight row, the activation rows of its panels.
pub type Tile = [[f32; TILE_PANELS * LANES]; TILE_ROWS];

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
            let i = r * nb + b;
            p.d[i] = _mm256_cvtss_f32(d);
            p.m[i] = _mm256_cvtss_f32(m);
            if B::GROUPS_APART {
                // Per group of 4 values: `MAGIC_BITS − 128 · Σw`, the start of the group's `vpdpbusd`.
                let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
                let corr = _mm256_sub_epi32(_mm256_set1_epi32(MAGIC_BITS), _mm256_slli_epi32::<7>(sums));
                _mm256_storeu_si256(p.corr4.as_mut_ptr().add(i * 8) as *mut __m256i, corr);
            } else {
                let (lo, hi) = byte_sums(v);
                p.corr[i] = -128 * (lo + hi);
            }
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
                if !p.repacked {
                    let (lo, hi) = byte_sums(v);
                    corr += if K::SUB == 32 { sc[c] * (lo + hi) } else { sc[2 * c] * lo + sc[2 * c + 1] * hi };
                }
            }
            let i = r * nb + b;
            let (d, dmin) = K::d_dmin(blk);
            (p.d[i], p.m[i]) = (_mm256_cvtss_f32(d), _mm256_cvtss_f32(dmin));
            p.corr[i] = -128 * corr;
            p.sc[i * 16..i * 16 + 16].copy_from_slice(&sc);
            for pair in 0..QK_K / K::SUB / 2 {
                p.mins[i * 8 + pair] = (mn[2 * pair] & 0xffff) | (mn[2 * pair + 1] << 16);
            }
        }
    }
}

/// Q3_K, Q5_K and Q6_K for `tile_kquant_lanes`: the unsigned values `vec_dot` multiplies, the scales as `(scale, 0)`
/// pairs, Q5_K's minimums and Q6_K's offsets (`−32 · scale` of sub-blocks 2l and 2l+1) as pairs.
#[inline(always)]
unsafe fn pack_kquant_lanes<K: KQuant>(src: &[&[u8]], p: &mut PackedRows) {
    let (cols, nb) = (p.cols, p.nb);
    let pair = |lo: i32, hi: i32| (lo & 0xffff) | (hi << 16);
    for (r, row) in src.iter().enumerate() {
        for b in 0..nb {
            let blk = row.as_ptr().add(b * K::BYTES);
            let scales = K::scales(blk);
            let (sc, mn) = K::int_scales(&scales);
            for c in 0..QK_K / 32 {
                let (v, _) = K::chunk(blk, &scales, c);
                _mm256_storeu_si256(p.q.as_mut_ptr().add(r * cols + b * QK_K + c * 32) as *mut __m256i, v);
            }
            let i = r * nb + b;
            let (d, dmin) = K::d_dmin(blk);
            (p.d[i], p.m[i]) = (_mm256_cvtss_f32(d), _mm256_cvtss_f32(dmin));
            for (to, s) in p.sc[i * 16..i * 16 + 16].iter_mut().zip(sc) {
                *to = pair(s, 0);
            }
            for l in 0..8 {
                p.mins[i * 8 + l] = match (K::HAS_MIN, K::SUB) {
                    (true, _) if l < 4 => pair(mn[2 * l], mn[2 * l + 1]),
                    (false, 16) => pair(-32 * sc[2 * l], -32 * sc[2 * l + 1]),
                    _ => 0,
                };
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
        WeightType::Q3_K if p.vec_dot_lanes => pack_kquant_lanes::<Q3K>(src, p),
        WeightType::Q5_K if p.vec_dot_lanes => pack_kquant_lanes::<Q5K>(src, p),
        WeightType::Q6_K if p.vec_dot_lanes => pack_kquant_lanes::<Q6K>(src, p),
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

/// Rows `r0..r0+TILE_ROWS` (the last `count`-th repeated) of a 32-element type against panels `g..g+P`.
#[inline(always)]
unsafe fn tile_q32<const MIN: bool, const P: usize>(
    p: &PackedRows,
    r0: usize,
    count: usize,
    a: &ActPanels,
    g: usize,
    out: &mut Tile,
) {
    let (cols, nb) = (p.cols, p.nb);
    let rows: [usize; TILE_ROWS] = std::array::from_fn(|t| r0 + t.min(count - 1));
    let aq: [*const u8; P] = std::array::from_fn(|k| a.q.as_ptr().add((g + k) * cols * LANES));
    let ad: [*const f32; P] = std::array::from_fn(|k| a.d.as_ptr().add((g + k) * nb * LANES));
    let mut acc = [[_mm512_setzero_ps(); P]; TILE_ROWS];
    for b in 0..nb {
        let mut sums: [[__m512i; P]; TILE_ROWS] =
            std::array::from_fn(|t| [_mm512_set1_epi32(p.corr[rows[t] * nb + b]); P]);
        for g4 in 0..QK / 4 {
            let av: [__m512i; P] =
                std::array::from_fn(|k| _mm512_loadu_si512(aq[k].add((b * 8 + g4) * 64) as *const __m512i));
            for t in 0..TILE_ROWS {
                let w = bcast4(p.q.as_ptr().add(rows[t] * cols + b * QK + g4 * 4));
                for k in 0..P {
                    sums[t][k] = _mm512_dpbusd_epi32(sums[t][k], av[k], w);
                }
            }
        }
        for k in 0..P {
            let da = _mm512_loadu_ps(ad[k].add(b * LANES));
            for t in 0..TILE_ROWS {
                let scale = _mm512_mul_ps(da, _mm512_set1_ps(p.d[rows[t] * nb + b]));
                acc[t][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t][k]), scale, acc[t][k]);
            }
            if MIN {
                let s = _mm512_loadu_ps(a.s.as_ptr().add(((g + k) * nb + b) * LANES));
                for t in 0..TILE_ROWS {
                    acc[t][k] = _mm512_fmadd_ps(s, _mm512_set1_ps(p.m[rows[t] * nb + b]), acc[t][k]);
                }
            }
        }
    }
    for t in 0..TILE_ROWS {
        for k in 0..P {
            _mm512_storeu_ps(out[t][k * LANES..].as_mut_ptr(), acc[t][k]);
        }
    }
}

/// Per lane, the 8 accumulators reduced as `hsum(__m256)` / `hsum_float_8` reduce a vector's 8 lanes: lanes `l` and
/// `l + 4` first, then `(0 + 2) + (1 + 3)`.
#[inline(always)]
unsafe fn hsum8(l: &[__m512; 8]) -> __m512 {
    let h: [__m512; 4] = std::array::from_fn(|j| _mm512_add_ps(l[j + 4], l[j]));
    _mm512_add_ps(_mm512_add_ps(h[0], h[2]), _mm512_add_ps(h[1], h[3]))
}

/// `1.5 · 2²³` as a float's bits: with an integer `n` (|n| < 2²²) added to them, the float is exactly `1.5 · 2²³ + n`.
const MAGIC_BITS: i32 = 0x4B40_0000;
const MAGIC: f32 = 12_582_912.0;

/// Rows `r0..r0+count` of Q8_0 or Q5_0 against panels `g..g+P`, summed as llama.cpp's batched path
/// (tinyBLAS) sums them: per output, 8 float accumulators, one per group of 4 values of each block, each adding
/// `d_w·d_a · (group's integer sum)` with one fused multiply-add per block, then reduced as `hsum(__m256)`.
///
/// Each group's `vpdpbusd` starts from its correction plus `MAGIC_BITS`, so the float conversion is one subtraction
/// (either vector port) instead of `vcvtdq2ps` (the port `vpdpbusd` needs).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // rows, groups and panels index the accumulators and the output alike
unsafe fn tile_q32_groups<const P: usize>(
    p: &PackedRows,
    r0: usize,
    count: usize,
    a: &ActPanels,
    g: usize,
    out: &mut Tile,
) {
    // Rows at a time against one panel: 8 accumulators each, every activation load feeding all of them.
    const R: usize = 2;
    let (cols, nb) = (p.cols, p.nb);
    let magic = _mm512_set1_ps(MAGIC);
    for k in 0..P {
        let aq = a.q.as_ptr().add((g + k) * cols * LANES);
        let ad = a.d.as_ptr().add((g + k) * nb * LANES);
        for t0 in (0..count).step_by(R) {
            let rows: [usize; R] = std::array::from_fn(|i| r0 + (t0 + i).min(count - 1));
            let mut acc = [[_mm512_setzero_ps(); 8]; R];
            for b in 0..nb {
                let da = _mm512_loadu_ps(ad.add(b * LANES));
                let scale: [__m512; R] =
                    std::array::from_fn(|i| _mm512_mul_ps(da, _mm512_set1_ps(p.d[rows[i] * nb + b])));
                let corr: [*const i32; R] = std::array::from_fn(|i| p.corr4.as_ptr().add((rows[i] * nb + b) * 8));
                for g4 in 0..QK / 4 {
                    let av = _mm512_loadu_si512(aq.add((b * 8 + g4) * 64) as *const __m512i);
                    for i in 0..R {
                        let w = bcast4(p.q.as_ptr().add(rows[i] * cols + b * QK + g4 * 4));
                        let s = _mm512_dpbusd_epi32(_mm512_set1_epi32(*corr[i].add(g4)), av, w);
                        let sum = _mm512_sub_ps(_mm512_castsi512_ps(s), magic);
                        acc[i][g4] = _mm512_fmadd_ps(scale[i], sum, acc[i][g4]);
                    }
                }
            }
            for i in 0..R.min(count - t0) {
                _mm512_storeu_ps(out[t0 + i][k * LANES..].as_mut_ptr(), hsum8(&acc[i]));
            }
        }
    }
}

/// Rows `r0..r0+TILE_ROWS` of a K-quant against panels `g..g+P`: per super-block, each sub-block's integer
/// sum is scaled (`vpmulld`) into one exact integer, converted once.
#[inline(always)]
unsafe fn tile_kquant<const SUB: usize, const MIN: bool, const P: usize>(
    p: &PackedRows,
    r0: usize,
    count: usize,
    a: &ActPanels,
    g: usize,
    out: &mut Tile,
) {
    let (cols, nb) = (p.cols, p.nb);
    let rows: [usize; TILE_ROWS] = std::array::from_fn(|t| r0 + t.min(count - 1));
    let aq: [*const u8; P] = std::array::from_fn(|k| a.q.as_ptr().add((g + k) * cols * LANES));
    let ad: [*const f32; P] = std::array::from_fn(|k| a.d.as_ptr().add((g + k) * nb * LANES));
    let mut acc = [[_mm512_setzero_ps(); P]; TILE_ROWS];
    for b in 0..nb {
        let mut total: [[__m512i; P]; TILE_ROWS] =
            std::array::from_fn(|t| [_mm512_set1_epi32(p.corr[rows[t] * nb + b]); P]);
        for j in 0..QK_K / SUB {
            let mut sums = [[_mm512_setzero_si512(); P]; TILE_ROWS];
            for g4 in 0..SUB / 4 {
                let at = (b * (QK_K / 4) + j * (SUB / 4) + g4) * 64;
                let av: [__m512i; P] = std::array::from_fn(|k| _mm512_loadu_si512(aq[k].add(at) as *const __m512i));
                for t in 0..TILE_ROWS {
                    let w = bcast4(p.q.as_ptr().add(rows[t] * cols + b * QK_K + j * SUB + g4 * 4));
                    for k in 0..P {
                        sums[t][k] = _mm512_dpbusd_epi32(sums[t][k], av[k], w);
                    }
                }
            }
            for t in 0..TILE_ROWS {
                let scale = _mm512_set1_epi32(p.sc[(rows[t] * nb + b) * 16 + j]);
                for k in 0..P {
                    total[t][k] = _mm512_add_epi32(total[t][k], _mm512_mullo_epi32(sums[t][k], scale));
                }
            }
        }
        for k in 0..P {
            // As llama.cpp's batched K-quant products round: `d_w · Σ` first (less `dmin · Σ min · sum`, fused), then
            // `fma(d_a, ·, acc)`.
            let mut v: [__m512; TILE_ROWS] = std::array::from_fn(|t| {
                _mm512_mul_ps(_mm512_set1_ps(p.d[rows[t] * nb + b]), _mm512_cvtepi32_ps(total[t][k]))
            });
            if MIN {
                // Σ min · (sum of the activations under it), a pair of sub-blocks per `vpdpwssd`.
                let pairs = QK_K / SUB / 2;
                let mut mins = [_mm512_setzero_si512(); TILE_ROWS];
                let sums = if SUB == 32 { &a.bsum32 } else { &a.bsum };
                let bsum = sums.as_ptr().add(((g + k) * nb + b) * pairs * 2 * LANES);
                for pair in 0..pairs {
                    let bv = _mm512_loadu_si512(bsum.add(pair * 2 * LANES) as *const __m512i);
                    for t in 0..TILE_ROWS {
                        let m = _mm512_set1_epi32(p.mins[(rows[t] * nb + b) * 8 + pair]);
                        mins[t] = _mm512_dpwssd_epi32(mins[t], bv, m);
                    }
                }
                for t in 0..TILE_ROWS {
                    let dmin = _mm512_set1_ps(p.m[rows[t] * nb + b]);
                    v[t] = _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(mins[t]), v[t]);
                }
            }
            let da = _mm512_loadu_ps(ad[k].add(b * LANES));
            for t in 0..TILE_ROWS {
                acc[t][k] = _mm512_fmadd_ps(da, v[t], acc[t][k]);
            }
        }
    }
    for t in 0..TILE_ROWS {
        for k in 0..P {
            _mm512_storeu_ps(out[t][k * LANES..].as_mut_ptr(), acc[t][k]);
        }
    }
}

/// Q5_K, as one type name (for `tile`'s dispatch).
type Q5K = Q45K<true>;

/// Rows `r0..r0+count` of Q3_K, Q5_K or Q6_K against panels `g..g+P` for prompts of fewer than 8 activation rows,
/// where llama.cpp takes `vec_dot_q{3,5,6}_K_q8_K` (AVX2): per super-block 8 integer lanes, lane `l` adding values
/// `4l..4l+4` of every 32 times their sub-block's scale (Q3_K's values signed; Q6_K's unsigned, its lanes less
/// `32 · scale · sum` of sub-blocks `2l` and `2l+1`); each lane converted and added as `fma(d_a·d_w, lane, acc)`;
/// at the end the lanes reduced as `hsum_float_8`, plus Q5_K's minimums, summed apart as
/// `fma(−d_a·dmin, Σ min · sum, summs)`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lanes index the integer and the float accumulators alike
unsafe fn tile_kquant_lanes<K: KQuant, const P: usize>(
    p: &PackedRows,
    r0: usize,
    count: usize,
    a: &ActPanels,
    g: usize,
    out: &mut Tile,
) {
    let (cols, nb) = (p.cols, p.nb);
    let (q3k, q6k) = (K::OFFSET == 4, K::OFFSET == 32);
    // `vec_dot` multiplies unsigned weights by signed activations (the panel's signed copy).
    let fours = _mm512_set1_epi8(4);
    for k in 0..P {
        let aq = a.signed.as_ptr().add((g + k) * cols * LANES);
        let ad = a.d.as_ptr().add((g + k) * nb * LANES);
        for t in 0..count {
            let row = r0 + t;
            let mut acc = [_mm512_setzero_ps(); 8];
            let mut summs = _mm512_setzero_ps();
            for b in 0..nb {
                let i = row * nb + b;
                let mut lanes = [_mm512_setzero_si512(); 8];
                if q6k {
                    let bsum = a.bsum.as_ptr().add(((g + k) * nb + b) * 8 * 2 * LANES);
                    for l in 0..8 {
                        let bv = _mm512_loadu_si512(bsum.add(l * 2 * LANES) as *const __m512i);
                        lanes[l] = _mm512_dpwssd_epi32(lanes[l], bv, _mm512_set1_epi32(p.mins[i * 8 + l]));
                    }
                }
                for c in 0..QK_K / 32 {
                    for l in 0..8 {
                        let g4 = c * 8 + l;
                        let av = _mm512_loadu_si512(aq.add((b * (QK_K / 4) + g4) * 64) as *const __m512i);
                        let w = bcast4(p.q.as_ptr().add(row * cols + b * QK_K + g4 * 4));
                        let mut sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, av);
                        if q3k {
                            // Q3_K's values are the unsigned ones less 4.
                            sum = _mm512_sub_epi32(sum, _mm512_dpbusd_epi32(_mm512_setzero_si512(), fours, av));
                        }
                        let s = if K::SUB == 32 { c } else { 2 * c + l / 4 };
                        lanes[l] = _mm512_dpwssd_epi32(lanes[l], sum, _mm512_set1_epi32(p.sc[i * 16 + s]));
                    }
                }
                let da = _mm512_loadu_ps(ad.add(b * LANES));
                let scale = _mm512_mul_ps(da, _mm512_set1_ps(p.d[i]));
                for l in 0..8 {
                    acc[l] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes[l]), acc[l]);
                }
                if K::HAS_MIN {
                    let bsum = a.bsum32.as_ptr().add(((g + k) * nb + b) * 4 * 2 * LANES);
                    let mut mins = _mm512_setzero_si512();
                    for pair in 0..4 {
                        let bv = _mm512_loadu_si512(bsum.add(pair * 2 * LANES) as *const __m512i);
                        mins = _mm512_dpwssd_epi32(mins, bv, _mm512_set1_epi32(p.mins[i * 8 + pair]));
                    }
                    let dmin = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), da), _mm512_set1_ps(p.m[i]));
                    summs = _mm512_fmadd_ps(dmin, _mm512_cvtepi32_ps(mins), summs);
                }
            }
            let mut sum = hsum8(&acc);
            if K::HAS_MIN {
                sum = _mm512_add_ps(sum, summs);
            }
            _mm512_storeu_ps(out[t][k * LANES..].as_mut_ptr(), sum);
        }
    }
}

/// Rows `r0..r0+TILE_ROWS` of Q4_K (`SUB` 32) or Q2_K (`SUB` 16) against panels `g..g+P`, summed as llama.cpp's
/// repacked GEMMs (`ggml_gemm_q{4,2}_K_8x8_q8_K`) sum them: one integer per part of a super-block (Q4_K: 64 values,
/// Q2_K: 128), added as `fma(·, d_w·d_a, acc)`; the minimums' integer over the same part into an accumulator of
/// their own with `dmin·d_a`; the result `acc − acc_min`. The last `rows % 4` rows of its batch (`p.gemv_from`) go
/// through its GEMVs instead, which add one integer per super-block.
///
/// The integers are formed in floats: with the activations signed (the weights are unsigned), each sub-block's sum,
/// each `scale · sum` and each part's total stays below 2²⁴, so every float is an exact integer, with no `vpmulld`
/// (two uops on the port `vpdpbusd` needs) and no correction. A super-block's total, which may not fit, is summed
/// as an integer.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // rows and panels index the accumulators and the output alike
unsafe fn tile_kquant_repacked<const SUB: usize, const P: usize>(
    p: &PackedRows,
    r0: usize,
    count: usize,
    a: &ActPanels,
    g: usize,
    out: &mut Tile,
) {
    let (cols, nb) = (p.cols, p.nb);
    let subs = repacked_part(SUB) / SUB;
    let (pairs, bsums) = if SUB == 32 { (4, &a.bsum32) } else { (8, &a.bsum) };
    let rows: [usize; TILE_ROWS] = std::array::from_fn(|t| r0 + t.min(count - 1));
    let aq: [*const i8; P] = std::array::from_fn(|k| a.signed.as_ptr().add((g + k) * cols * LANES));
    let ad: [*const f32; P] = std::array::from_fn(|k| a.d.as_ptr().add((g + k) * nb * LANES));
    // Lanes (activation rows) of each panel that llama.cpp's GEMV computes.
    let gemv_lanes: [__mmask16; P] = std::array::from_fn(|k| {
        let first = (g + k) * LANES;
        if first + LANES > p.gemv_from && p.gemv_from < a.rows {
            !0u16 << p.gemv_from.saturating_sub(first).min(LANES - 1)
        } else {
            0
        }
    });
    let gemv = gemv_lanes.iter().any(|&l| l != 0);
    let zero = _mm512_setzero_ps();
    // Per row and panel: the GEMM's acc and acc_min, the GEMV's.
    let mut acc = [[[zero; 4]; P]; TILE_ROWS];
    for b in 0..nb {
        let mut scales = [[[zero; 2]; P]; TILE_ROWS];
        for k in 0..P {
            let da = _mm512_loadu_ps(ad[k].add(b * LANES));
            for t in 0..TILE_ROWS {
                let i = rows[t] * nb + b;
                scales[t][k] = [_mm512_mul_ps(da, _mm512_set1_ps(p.d[i])), _mm512_mul_ps(da, _mm512_set1_ps(p.m[i]))];
            }
        }
        let mut whole = [[[_mm512_setzero_si512(); 2]; P]; TILE_ROWS];
        for part in 0..QK_K / repacked_part(SUB) {
            let mut total = [[zero; P]; TILE_ROWS];
            for j in part * subs..(part + 1) * subs {
                let mut sums = [[_mm512_setzero_si512(); P]; TILE_ROWS];
                for g4 in 0..SUB / 4 {
                    let at = (b * (QK_K / 4) + j * (SUB / 4) + g4) * 64;
                    let av: [__m512i; P] = std::array::from_fn(|k| _mm512_loadu_si512(aq[k].add(at) as *const __m512i));
                    for t in 0..TILE_ROWS {
                        let w = bcast4(p.q.as_ptr().add(rows[t] * cols + b * QK_K + j * SUB + g4 * 4));
                        for k in 0..P {
                            sums[t][k] = _mm512_dpbusd_epi32(sums[t][k], w, av[k]);
                        }
                    }
                }
                for t in 0..TILE_ROWS {
                    let sc = _mm512_set1_ps(p.sc[(rows[t] * nb + b) * 16 + j] as f32);
                    for k in 0..P {
                        total[t][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t][k]), sc, total[t][k]);
                    }
                }
            }
            for k in 0..P {
                let bsum = bsums.as_ptr().add(((g + k) * nb + b) * pairs * 2 * LANES);
                for t in 0..TILE_ROWS {
                    let i = rows[t] * nb + b;
                    let mut mins = _mm512_setzero_si512();
                    for pair in part * subs / 2..(part + 1) * subs / 2 {
                        let bv = _mm512_loadu_si512(bsum.add(pair * 2 * LANES) as *const __m512i);
                        mins = _mm512_dpwssd_epi32(mins, bv, _mm512_set1_epi32(p.mins[i * 8 + pair]));
                    }
                    let [scale, scale_min] = scales[t][k];
                    acc[t][k][0] = _mm512_fmadd_ps(total[t][k], scale, acc[t][k][0]);
                    acc[t][k][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins), scale_min, acc[t][k][1]);
                    if gemv {
                        let [sum, sum_min] = whole[t][k];
                        let exact = _mm512_cvtps_epi32(total[t][k]);
                        whole[t][k] = [_mm512_add_epi32(sum, exact), _mm512_add_epi32(sum_min, mins)];
                    }
                }
            }
        }
        if gemv {
            for t in 0..TILE_ROWS {
                for k in 0..P {
                    let ([scale, scale_min], [sum, sum_min]) = (scales[t][k], whole[t][k]);
                    acc[t][k][2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[t][k][2]);
                    acc[t][k][3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum_min), scale_min, acc[t][k][3]);
                }
            }
        }
    }
    for t in 0..TILE_ROWS {
        for k in 0..P {
            let [sum, sum_min, whole, whole_min] = acc[t][k];
            let v = _mm512_mask_blend_ps(gemv_lanes[k], _mm512_sub_ps(sum, sum_min), _mm512_sub_ps(whole, whole_min));
            _mm512_storeu_ps(out[t][k * LANES..].as_mut_ptr(), v);
        }
    }
}

/// Values per part of a super-block that llama.cpp's repacked GEMM converts at once: Q4_K (sub-blocks of 32) 64,
/// Q2_K (of 16) 128.
const fn repacked_part(sub: usize) -> usize {
    if sub == 32 {
        64
    } else {
        128
    }
}

/// Packed rows `r0..r0+count` (`count <= TILE_ROWS`) against activation panels `g..g+panels` (1 or 2):
/// `out[t][16k + l]` is row `r0+t` · activation row `16(g+k)+l`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI; `p` holds rows `r0..r0+count` of `ty`, `g + panels <= a.groups`,
/// and `a` was built from the activation format of `ty` with `p.cols` columns.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile(
    ty: WeightType,
    p: &PackedRows,
    r0: usize,
    count: usize,
    a: &ActPanels,
    g: usize,
    panels: usize,
    out: &mut Tile,
) {
    macro_rules! run {
        ($f:ident) => {
            if panels == 2 {
                $f::<2>(p, r0, count, a, g, out)
            } else {
                $f::<1>(p, r0, count, a, g, out)
            }
        };
        ($f:ident::<$($c:tt),*>) => {
            if panels == 2 {
                $f::<$($c,)* 2>(p, r0, count, a, g, out)
            } else {
                $f::<$($c,)* 1>(p, r0, count, a, g, out)
            }
        };
    }
    match ty {
        WeightType::Q4_1 | WeightType::Q5_1 => run!(tile_q32::<true>),
        WeightType::Q4_0 | WeightType::IQ4_NL => run!(tile_q32::<false>),
        WeightType::Q5_0 | WeightType::Q8_0 => run!(tile_q32_groups),
        // llama.cpp sums these types another way for fewer than 8 activation rows (`PackedRows::vec_dot_lanes`).
        WeightType::Q3_K if p.vec_dot_lanes => run!(tile_kquant_lanes::<Q3K>),
        WeightType::Q5_K if p.vec_dot_lanes => run!(tile_kquant_lanes::<Q5K>),
        WeightType::Q6_K if p.vec_dot_lanes => run!(tile_kquant_lanes::<Q6K>),
        WeightType::Q3_K | WeightType::Q6_K => run!(tile_kquant::<16, false>),
        // llama.cpp repacks Q4_K and (with AVX-512) Q2_K for its GEMM when the matrix has a multiple of 8 rows.
        WeightType::Q4_K if p.repacked => run!(tile_kquant_repacked::<32>),
        WeightType::Q2_K if p.repacked => run!(tile_kquant_repacked::<16>),
        WeightType::Q2_K => run!(tile_kquant::<16, true>),
        WeightType::Q4_K | WeightType::Q5_K => run!(tile_kquant::<32, true>),
        WeightType::F32 | WeightType::F16 | WeightType::BF16 => unreachable!("float types have no panel path"),
    }
}
