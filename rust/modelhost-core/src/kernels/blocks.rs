//! ggml's block layouts (ggml-common.h), decoded one block at a time into the integer values and scales
//! the dot products use, and `dequantize_row` with ggml-quants.c's arithmetic (token-embedding lookups).
//! The SIMD kernels decode the same layouts in registers; these are their reference.

use half::{bf16, f16};

use super::types::{WeightType, QK, QK_K};

/// llama.cpp's IQ4_NL table (`kvalues_iq4nl`).
pub const IQ4_NL_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// The f16 at byte `at`, as f32.
#[inline(always)]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 32 values of a Q4_0 / Q4_1 / IQ4_NL block's nibbles (low nibbles first), before any offset.
#[inline(always)]
pub fn nibbles(qs: &[u8]) -> [u8; QK] {
    std::array::from_fn(|i| if i < 16 { qs[i] & 0x0f } else { qs[i - 16] >> 4 })
}

/// The 32 five-bit values of a Q5_0 / Q5_1 block (`qh` holds the fifth bits, little-endian).
#[inline(always)]
pub fn five_bits(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let low = nibbles(qs);
    std::array::from_fn(|i| low[i] | ((((h >> i) & 1) as u8) << 4))
}

/// The signed values a 32-element block's dot product multiplies (`Q4_0`: q − 8, `Q4_1`: q, …), and the
/// block's f16 scale and (Q4_1, Q5_1) minimum.
pub fn block32(ty: WeightType, b: &[u8]) -> ([i8; QK], f32, f32) {
    match ty {
        WeightType::Q4_0 => (nibbles(&b[2..18]).map(|q| q as i8 - 8), f16_at(b, 0), 0.0),
        WeightType::Q4_1 => (nibbles(&b[4..20]).map(|q| q as i8), f16_at(b, 0), f16_at(b, 2)),
        WeightType::Q5_0 => (five_bits(&b[2..6], &b[6..22]).map(|q| q as i8 - 16), f16_at(b, 0), 0.0),
        WeightType::Q5_1 => (five_bits(&b[4..8], &b[8..24]).map(|q| q as i8), f16_at(b, 0), f16_at(b, 2)),
        WeightType::Q8_0 => (std::array::from_fn(|i| b[2 + i] as i8), f16_at(b, 0), 0.0),
        WeightType::IQ4_NL => (nibbles(&b[2..18]).map(|q| IQ4_NL_VALUES[q as usize]), f16_at(b, 0), 0.0),
        _ => unreachable!("{ty:?} is not a 32-element block type"),
    }
}

/// A K-quant super-block decoded: value `i` is `d · scale[i / sub] · q[i] − dmin · min[i / sub]`.
pub struct SuperBlock {
    /// The signed values the dot product multiplies.
    pub q: [i8; QK_K],
    /// Elements per sub-block (16 or 32).
    pub sub: usize,
    /// Integer scale per sub-block (signed for Q3_K and Q6_K).
    pub scale: [i32; 16],
    /// Integer minimum per sub-block (zero for Q3_K and Q6_K).
    pub min: [i32; 16],
    /// Super-block scale.
    pub d: f32,
    /// Super-block scale of the minimums.
    pub dmin: f32,
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K block.
#[inline(always)]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The sixteen 6-bit scales of a Q3_K block, minus 32.
pub fn q3k_scales(s: &[u8]) -> [i32; 16] {
    std::array::from_fn(|j| {
        let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        i32::from(low | (high << 4)) - 32
    })
}

/// Decode a K-quant super-block.
pub fn super_block(ty: WeightType, b: &[u8]) -> SuperBlock {
    let mut q = [0i8; QK_K];
    let (mut scale, mut min) = ([0i32; 16], [0i32; 16]);
    let (sub, d, dmin);
    match ty {
        WeightType::Q2_K => {
            // scales[16], qs[64], d, dmin
            let qs = &b[16..80];
            for (e, v) in q.iter_mut().enumerate() {
                let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
                *v = ((qs[n * 32 + l] >> (2 * j)) & 3) as i8;
            }
            for j in 0..16 {
                (scale[j], min[j]) = (i32::from(b[j] & 0x0f), i32::from(b[j] >> 4));
            }
            (sub, d, dmin) = (16, f16_at(b, 80), f16_at(b, 82));
        }
        WeightType::Q3_K => {
            // hmask[32], qs[64], scales[12], d
            let (hm, qs) = (&b[0..32], &b[32..96]);
            for (e, v) in q.iter_mut().enumerate() {
                let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
                let low = ((qs[n * 32 + l] >> (2 * j)) & 3) as i8;
                *v = low - if hm[l] & (1 << (n * 4 + j)) != 0 { 0 } else { 4 };
            }
            scale = q3k_scales(&b[96..108]);
            (sub, d, dmin) = (16, f16_at(b, 108), 0.0);
        }
        WeightType::Q4_K | WeightType::Q5_K => {
            // d, dmin, scales[12], (Q5_K: qh[32]), qs[128]
            let five = ty == WeightType::Q5_K;
            let qs = if five { &b[48..176] } else { &b[16..144] };
            for (e, v) in q.iter_mut().enumerate() {
                let (j, half, l) = (e / 64, (e % 64) / 32, e % 32);
                let byte = qs[j * 32 + l];
                let mut x = if half == 0 { byte & 0x0f } else { byte >> 4 };
                if five && b[16 + l] & (1 << (2 * j + half)) != 0 {
                    x += 16;
                }
                *v = x as i8;
            }
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, &b[4..16]);
                (scale[j], min[j]) = (i32::from(s), i32::from(m));
            }
            (sub, d, dmin) = (32, f16_at(b, 0), f16_at(b, 2));
        }
        WeightType::Q6_K => {
            // ql[128], qh[64], scales[16] (i8), d
            let (ql, qh) = (&b[0..128], &b[128..192]);
            for (e, v) in q.iter_mut().enumerate() {
                let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
                let low = ql[n * 64 + (k % 2) * 32 + l];
                let low = if k < 2 { low & 0x0f } else { low >> 4 };
                let high = (qh[n * 32 + l] >> (2 * k)) & 3;
                *v = (low | (high << 4)) as i8 - 32;
            }
            for j in 0..16 {
                scale[j] = i32::from(b[192 + j] as i8);
            }
            (sub, d, dmin) = (16, f16_at(b, 208), 0.0);
        }
        _ => unreachable!("{ty:?} is not a K-quant"),
    }
    SuperBlock { q, sub, scale, min, d, dmin }
}

/// Convert one row (`out.len()` elements) from its stored form, with ggml-quants.c's arithmetic (its
/// `dequantize_row_*` / `to_float`), so looked-up embedding rows match llama.cpp's bit for bit.
pub fn dequantize_row(ty: WeightType, row: &[u8], out: &mut [f32]) {
    let bb = ty.block_bytes();
    assert_eq!(Some(row.len()), ty.row_bytes(out.len()), "row size");
    match ty {
        WeightType::F32 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        WeightType::F16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        WeightType::BF16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_0 | WeightType::Q5_1 | WeightType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(row.chunks_exact(bb)) {
                let (q, d, m) = block32(ty, b);
                let with_min = matches!(ty, WeightType::Q4_1 | WeightType::Q5_1);
                for (o, &q) in o.iter_mut().zip(&q) {
                    *o = if with_min { f32::from(q) * d + m } else { f32::from(q) * d };
                }
            }
        }
        WeightType::IQ4_NL => {
            for (o, b) in out.chunks_exact_mut(QK).zip(row.chunks_exact(bb)) {
                let (q, d, _) = block32(ty, b);
                for (o, &q) in o.iter_mut().zip(&q) {
                    *o = d * f32::from(q);
                }
            }
        }
        WeightType::Q2_K | WeightType::Q3_K | WeightType::Q4_K | WeightType::Q5_K | WeightType::Q6_K => {
            for (o, b) in out.chunks_exact_mut(QK_K).zip(row.chunks_exact(bb)) {
                let s = super_block(ty, b);
                for (i, o) in o.iter_mut().enumerate() {
                    let (sc, q) = (s.scale[i / s.sub] as f32, f32::from(s.q[i]));
                    *o = match ty {
                        // dl · q − ml, with dl = d · scale and ml = dmin · min
                        WeightType::Q2_K | WeightType::Q4_K | WeightType::Q5_K => {
                            (s.d * sc) * q - s.dmin * s.min[i / s.sub] as f32
                        }
                        WeightType::Q3_K | WeightType::Q6_K => s.d * sc * q,
                        _ => unreachable!(),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::kernel_tests::random_row;
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
    use candle_core::Device;

    #[test]
    fn dequantize_agrees_with_candle_where_candle_has_the_type() {
        let cases = [
            (WeightType::Q4_0, GgmlDType::Q4_0),
            (WeightType::Q4_1, GgmlDType::Q4_1),
            (WeightType::Q5_0, GgmlDType::Q5_0),
            (WeightType::Q5_1, GgmlDType::Q5_1),
            (WeightType::Q8_0, GgmlDType::Q8_0),
            (WeightType::Q2_K, GgmlDType::Q2K),
            (WeightType::Q3_K, GgmlDType::Q3K),
            (WeightType::Q4_K, GgmlDType::Q4K),
            (WeightType::Q5_K, GgmlDType::Q5K),
            (WeightType::Q6_K, GgmlDType::Q6K),
            (WeightType::F16, GgmlDType::F16),
            (WeightType::BF16, GgmlDType::BF16),
            (WeightType::F32, GgmlDType::F32),
        ];
        for (ty, dtype) in cases {
            let cols = 512;
            let row = random_row(ty, cols, 3);
            let mut ours = vec![0f32; cols];
            dequantize_row(ty, &row, &mut ours);
            let theirs: Vec<f32> = qtensor_from_ggml(dtype, &row, vec![cols], &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec1()
                .unwrap();
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{ty:?} [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn iq4_nl_uses_the_table() {
        let mut block = vec![0u8; 18];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block[2] = 0xf0; // element 0 → index 0, element 16 → index 15
        let mut out = vec![0f32; 32];
        dequantize_row(WeightType::IQ4_NL, &block, &mut out);
        assert_eq!((out[0], out[16], out[1]), (-63.5, 56.5, -63.5));
    }
}
