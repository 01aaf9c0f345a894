//! The portable quantized dot products, for builds without AVX2/FMA and as the tests' reference.

use super::{f16_at, BlockQ8, QuantKind, BLOCK};

/// The portable reference: ggml's `vec_dot_q4_1_q8_1` and `vec_dot_q8_0_q8_0`.
pub(super) fn dot_scalar(kind: QuantKind, w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(kind.block_bytes()).zip(a) {
        let d = f16_at(wb, 0);
        let mut isum = 0i32;
        match kind {
            QuantKind::Q4_1 => {
                for j in 0..BLOCK / 2 {
                    let q = wb[4 + j];
                    isum += i32::from(q & 0x0f) * i32::from(ab.qs[j]) + i32::from(q >> 4) * i32::from(ab.qs[j + 16]);
                }
                sum += d * ab.d * isum as f32 + f16_at(wb, 2) * ab.s;
            }
            QuantKind::Q8_0 => {
                for j in 0..BLOCK {
                    isum += i32::from(wb[2 + j] as i8) * i32::from(ab.qs[j]);
                }
                sum += d * ab.d * isum as f32;
            }
        }
    }
    sum
}
