//! The portable dot products: one weight row against one activation row, in llama.cpp's arithmetic
//! (ggml-cpu's `ggml_vec_dot_*` on x86). Every block's integer sum is exact; the float steps are the ones
//! llama.cpp takes per block (`d_w·d_a·Σ`, the minimum terms). The SIMD kernels are tested against these.

use super::act::ActRow;
use super::blocks::{block32, f16_at, super_block};
use super::types::{WeightType, QK, QK_K};

/// `w` (one row, stored form) · `a` (the same row length in `w.act_format()`).
pub fn dot_quant(ty: WeightType, w: &[u8], a: ActRow<'_>) -> f32 {
    let bb = ty.block_bytes();
    let mut sum = 0f32;
    match ty {
        WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 | WeightType::IQ4_NL => {
            for (b, wb) in w.chunks_exact(bb).enumerate() {
                let (q, d, _) = block32(ty, wb);
                let isum: i32 = q.iter().zip(&a.qs[b * QK..]).map(|(&w, &x)| i32::from(w) * i32::from(x)).sum();
                sum += (d * a.d[b]) * isum as f32;
            }
        }
        WeightType::Q4_1 | WeightType::Q5_1 => {
            for (b, wb) in w.chunks_exact(bb).enumerate() {
                let (q, d, m) = block32(ty, wb);
                let isum: i32 = q.iter().zip(&a.qs[b * QK..]).map(|(&w, &x)| i32::from(w) * i32::from(x)).sum();
                sum += (d * a.d[b]) * isum as f32 + m * a.s[b];
            }
        }
        WeightType::Q2_K | WeightType::Q3_K | WeightType::Q4_K | WeightType::Q5_K | WeightType::Q6_K => {
            for (b, wb) in w.chunks_exact(bb).enumerate() {
                let s = super_block(ty, wb);
                let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
                let mut isum = 0i32;
                for (j, (qw, qa)) in s.q.chunks_exact(s.sub).zip(qa.chunks_exact(s.sub)).enumerate() {
                    let part: i32 = qw.iter().zip(qa).map(|(&w, &x)| i32::from(w) * i32::from(x)).sum();
                    isum += s.scale[j] * part;
                }
                let d = s.d * a.d[b];
                sum += d * isum as f32;
                if matches!(ty, WeightType::Q2_K | WeightType::Q4_K | WeightType::Q5_K) {
                    // Σ min · (sum of the activations under it), from Q8_K's sums per 16.
                    let bsums = &a.sums[b * 16..(b + 1) * 16];
                    let per = s.sub / 16;
                    let mins: i32 = (0..16).map(|k| bsums[k] * s.min[k / per]).sum();
                    sum -= (s.dmin * a.d[b]) * mins as f32;
                }
            }
        }
        WeightType::F32 | WeightType::F16 | WeightType::BF16 => unreachable!("float weights use dot_float"),
    }
    sum
}

/// Float weights · float activations (already rounded to the weights' activation format).
pub fn dot_float(ty: WeightType, w: &[u8], a: &[f32]) -> f32 {
    let mut sum = 0f32;
    match ty {
        WeightType::F32 => {
            for (b, &x) in w.chunks_exact(4).zip(a) {
                sum += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x;
            }
        }
        WeightType::F16 => {
            for (i, &x) in a.iter().enumerate() {
                sum += f16_at(w, 2 * i) * x;
            }
        }
        WeightType::BF16 => {
            for (b, &x) in w.chunks_exact(2).zip(a) {
                sum += f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16) * x;
            }
        }
        _ => unreachable!("{ty:?} is quantized"),
    }
    sum
}
