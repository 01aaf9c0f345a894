//! Layer inputs converted to the activation formats the weight types read, exactly as llama.cpp's x86
//! build converts them (`quantize_row_q8_0` / `_q8_1` of arch/x86/quants.c, `quantize_row_q8_K_ref`,
//! `ggml_cpu_fp32_to_fp16` / `_bf16`): the rounding, where the scale is rounded to f16, Q8_1's sum term
//! and Q8_K's sums per 16 all follow it, so the integer dot products see the same bytes llama.cpp's do.
//!
//! A `LayerInput` converts lazily and once per format: Q, K and V (and gate and up) read one copy.

use std::sync::OnceLock;

use half::{bf16, f16};
use rayon::prelude::*;

use super::types::{ActFormat, QK, QK_K};

/// Activation rows per task when quantizing.
const MIN_ROWS: usize = 8;

/// Activations quantized to 8 bits per element in blocks: Q8_0, Q8_1 or Q8_K, stored by field (one
/// array per field) so a kernel loads a row's bytes contiguously.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedActs {
    /// Which block format.
    pub format: ActFormat,
    /// Activation rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// The quantized values, `rows × cols`.
    pub qs: Vec<i8>,
    /// Each block's scale (`rows × blocks`): Q8_0/Q8_1's are the f16 value llama.cpp stores, widened.
    pub d: Vec<f32>,
    /// Q8_1 only: each block's f16 `d × Σq` (what Q4_1/Q5_1 multiply their minimum by), widened.
    pub s: Vec<f32>,
    /// Q8_K: the sum of each 16 values (`rows × cols/16`); Q8_0: the sum of each block (`rows × blocks`).
    pub sums: Vec<i32>,
}

impl QuantizedActs {
    /// Elements per block.
    pub fn block(&self) -> usize {
        self.format.block_elems()
    }

    /// Row `r`'s view.
    #[inline(always)]
    pub fn row(&self, r: usize) -> ActRow<'_> {
        let nb = self.cols / self.block();
        let per_sum = if self.format == ActFormat::Q8_K { self.cols / 16 } else { nb };
        ActRow {
            qs: &self.qs[r * self.cols..(r + 1) * self.cols],
            d: &self.d[r * nb..(r + 1) * nb],
            s: if self.s.is_empty() { &[] } else { &self.s[r * nb..(r + 1) * nb] },
            sums: if self.sums.is_empty() { &[] } else { &self.sums[r * per_sum..(r + 1) * per_sum] },
        }
    }
}

/// One row of quantized activations.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    /// Values.
    pub qs: &'a [i8],
    /// Block scales.
    pub d: &'a [f32],
    /// Q8_1 sum terms.
    pub s: &'a [f32],
    /// Sums per 16 (Q8_K) or per block (Q8_0).
    pub sums: &'a [i32],
}

/// Round through f16, as llama.cpp stores a block scale.
#[inline(always)]
fn through_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// x86 `quantize_row_q8_0` / `_q8_1` for one block: scale amax/127 (stored as f16), multiplier
/// 127/amax, rounded to nearest even (`_mm256_round_ps`), saturated to i8 (`packs`). Returns the f16
/// scale widened, and the f32 scale and the sum of the values (for Q8_1's sum term).
#[inline(always)]
fn quantize_block32(x: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let r = (v * id).round_ties_even();
        *q = r.clamp(-128.0, 127.0) as i8;
        sum += i32::from(*q);
    }
    (through_f16(d), d, sum)
}

/// ggml's `nearest_int`: round to nearest, ties to even, through the float magic number.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12582912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// `quantize_row_q8_K_ref` for one super-block: the scale follows the sign of the largest-magnitude
/// value (the first one, on ties), and the sums per 16 are kept for the K-quants' minimums.
fn quantize_block_k(x: &[f32], q: &mut [i8], sums: &mut [i32]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            (amax, max) = (v.abs(), v);
        }
    }
    if amax == 0.0 {
        q.fill(0);
        sums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (s, q) in sums.iter_mut().zip(q.chunks_exact(16)) {
        *s = q.iter().map(|&v| i32::from(v)).sum();
    }
    1.0 / iscale
}

/// Quantize `rows × cols` activations into a Q8 format.
pub fn quantize(format: ActFormat, x: &[f32], rows: usize, cols: usize) -> QuantizedActs {
    assert_eq!(x.len(), rows * cols, "activation size");
    let block = format.block_elems();
    assert!(cols.is_multiple_of(block) && block > 1, "{cols} columns in {format:?} blocks");
    let nb = rows * cols / block;
    let mut out = QuantizedActs {
        format,
        rows,
        cols,
        qs: vec![0; rows * cols],
        d: vec![0.0; nb],
        s: if format == ActFormat::Q8_1 { vec![0.0; nb] } else { Vec::new() },
        sums: vec![0; if format == ActFormat::Q8_K { rows * cols / 16 } else { nb }],
    };
    if rows == 0 || cols == 0 {
        return out;
    }
    // Rows in parallel: a prompt's layer inputs are quantized between matrix products, and one thread doing it
    // left the other idle.
    let nb_row = cols / block;
    let sums_row = out.sums.len() / rows;
    let rows_iter = x.par_chunks(cols).zip(out.qs.par_chunks_mut(cols)).zip(out.d.par_chunks_mut(nb_row));
    match format {
        ActFormat::Q8_0 | ActFormat::Q8_1 => {
            let q8_1 = format == ActFormat::Q8_1;
            let mut s_rows: Vec<&mut [f32]> =
                if q8_1 { out.s.chunks_mut(nb_row).collect() } else { (0..rows).map(|_| Default::default()).collect() };
            rows_iter
                .zip(out.sums.par_chunks_mut(sums_row))
                .zip(s_rows.par_iter_mut())
                .with_min_len(MIN_ROWS)
                .for_each(|((((x, q), d), sums), s)| {
                    for (b, (x, q)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
                        let (d16, unrounded, sum) = quantize_block32(x, q);
                        d[b] = d16;
                        sums[b] = sum;
                        if q8_1 {
                            // `d * sum` in f32 with the unrounded d, then stored as f16.
                            s[b] = through_f16(unrounded * sum as f32);
                        }
                    }
                });
        }
        ActFormat::Q8_K => {
            rows_iter.zip(out.sums.par_chunks_mut(sums_row)).with_min_len(MIN_ROWS).for_each(|(((x, q), d), sums)| {
                let chunks = x.chunks_exact(QK_K).zip(q.chunks_exact_mut(QK_K)).zip(sums.chunks_exact_mut(16));
                for (b, ((x, q), sums)) in chunks.enumerate() {
                    d[b] = quantize_block_k(x, q, sums);
                }
            });
        }
        ActFormat::F32 | ActFormat::F16 | ActFormat::BF16 => unreachable!("not a block format"),
    }
    out
}

/// llama.cpp's `ggml_compute_fp32_to_bf16`: round to nearest even; NaN stays a quiet NaN.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let u = x.to_bits();
    let bits =
        if (u & 0x7fff_ffff) > 0x7f80_0000 { (u >> 16) | 64 } else { (u.wrapping_add(0x7fff + ((u >> 16) & 1))) >> 16 };
    bf16::from_bits(bits as u16).to_f32()
}

/// A layer's input (`rows × cols` f32), converted on first use to each activation format a matrix
/// reading it needs, and kept: every matrix of the same format reads the same copy.
#[derive(Debug)]
pub struct LayerInput {
    rows: usize,
    cols: usize,
    x: Vec<f32>,
    f16: OnceLock<Vec<f32>>,
    bf16: OnceLock<Vec<f32>>,
    q8: [OnceLock<QuantizedActs>; 3],
    #[cfg(target_arch = "x86_64")]
    pub(super) panels: [OnceLock<super::panel::ActPanels>; 3],
}

impl LayerInput {
    /// Wrap `rows × cols` activations, row-major.
    pub fn new(x: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(x.len(), rows * cols, "activation size");
        LayerInput {
            rows,
            cols,
            x,
            f16: OnceLock::new(),
            bf16: OnceLock::new(),
            q8: Default::default(),
            #[cfg(target_arch = "x86_64")]
            panels: Default::default(),
        }
    }

    /// Rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Elements per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The f32 values.
    pub fn values(&self) -> &[f32] {
        &self.x
    }

    /// The values rounded to a float format's precision (still f32).
    pub fn floats(&self, format: ActFormat) -> &[f32] {
        match format {
            ActFormat::F32 => &self.x,
            ActFormat::F16 => self.f16.get_or_init(|| self.x.iter().map(|&v| through_f16(v)).collect()),
            ActFormat::BF16 => self.bf16.get_or_init(|| self.x.iter().map(|&v| round_bf16(v)).collect()),
            _ => panic!("{format:?} is a block format"),
        }
    }

    /// The values quantized to a block format.
    pub fn quantized(&self, format: ActFormat) -> &QuantizedActs {
        assert!(format.block_elems() > 1, "{format:?} is not a block format");
        self.q8[Self::slot(format)].get_or_init(|| quantize(format, &self.x, self.rows, self.cols))
    }

    /// The index of a Q8 format among the cached copies.
    pub(super) fn slot(format: ActFormat) -> usize {
        match format {
            ActFormat::Q8_0 => 0,
            ActFormat::Q8_1 => 1,
            _ => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rounds_to_even_with_the_x86_multiplier() {
        // 127/amax with amax = 127 is exactly 1: 0.5 and 2.5 round to even, -1.5 to -2.
        let mut x = [0f32; QK];
        x[..4].copy_from_slice(&[127.0, 0.5, 2.5, -1.5]);
        let q = quantize(ActFormat::Q8_0, &x, 1, QK);
        assert_eq!(&q.qs[..4], &[127, 0, 2, -2]);
        assert_eq!(q.d[0], 1.0);
        assert_eq!(q.sums[0], 127);
    }

    #[test]
    fn q8_1_sum_term_uses_the_unrounded_scale() {
        let x: Vec<f32> = (0..QK).map(|i| (i as f32 - 10.3) * 0.0137).collect();
        let q = quantize(ActFormat::Q8_1, &x, 1, QK);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let sum: i32 = q.qs.iter().map(|&v| i32::from(v)).sum();
        assert_eq!(q.s[0], f16::from_f32(amax / 127.0 * sum as f32).to_f32());
        assert_eq!(q.d[0], f16::from_f32(amax / 127.0).to_f32());
    }

    #[test]
    fn q8_k_follows_the_sign_of_the_largest_value() {
        let mut x = vec![0.25f32; QK_K];
        x[7] = -2.0;
        let q = quantize(ActFormat::Q8_K, &x, 1, QK_K);
        // iscale = -127 / -2 = 63.5: positive, d = 1/63.5.
        assert_eq!(q.d[0], 1.0 / 63.5);
        assert_eq!(q.qs[7], -127);
        assert_eq!(q.qs[0], 16); // 15.875 → 16
        assert_eq!(q.sums[0], 15 * 16 - 127);
        let zeros = quantize(ActFormat::Q8_K, &[0.0; QK_K], 1, QK_K);
        assert_eq!((zeros.d[0], zeros.sums[3]), (0.0, 0));
    }

    #[test]
    fn nearest_int_is_ties_to_even() {
        for (v, r) in [(0.5f32, 0), (1.5, 2), (-2.5, -2), (126.6, 127), (-0.49, 0)] {
            assert_eq!(nearest_int(v), r, "{v}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let up = f32::from_bits(0x3f80_8001); // just above the midpoint between two bf16 values
        assert_eq!(round_bf16(up).to_bits(), 0x3f81_0000);
        let tie = f32::from_bits(0x3f80_8000); // tie: even is 0x3f80
        assert_eq!(round_bf16(tie).to_bits(), 0x3f80_0000);
        assert!(round_bf16(f32::NAN).is_nan());
    }

    #[test]
    fn a_layer_input_converts_once_per_format() {
        let input = LayerInput::new((0..64).map(|i| i as f32 / 7.0).collect(), 2, 32);
        let a = input.quantized(ActFormat::Q8_0) as *const QuantizedActs;
        let b = input.quantized(ActFormat::Q8_0) as *const QuantizedActs;
        assert_eq!(a, b);
        assert_eq!(input.floats(ActFormat::F16)[1], through_f16(1.0 / 7.0));
        assert_eq!(input.quantized(ActFormat::Q8_0).row(1).qs.len(), 32);
    }
}
